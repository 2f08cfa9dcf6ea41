//! `apiary cas`: trees in the daemon's content-addressed store. `archive`
//! uploads files and directories (only what the store lacks) and prints the
//! root digest; `download` writes the tree a digest names into a directory,
//! every blob checked against its digest.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use apiary_protocol::cas::Digest;
use apiary_protocol::cas::transfer::{self, Call, TransferError};
use apiary_protocol::cas::tree::Archive;

use crate::error::CliError;
use crate::sink::Sink;

/// What `archive` reads: each path under its own name, or a directory's contents as the root.
pub(crate) enum ArchiveFrom<'a> {
    Paths(&'a [PathBuf]),
    DirectoryContents(&'a Path),
}

/// Reads the tree, uploads what the store lacks, prints the root digest on
/// stdout and a summary on stderr.
pub(crate) fn archive(
    daemon: &mut impl Call,
    from: ArchiveFrom<'_>,
    stdout: &mut Sink<impl Write>,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    let archive = match from {
        ArchiveFrom::Paths(paths) => Archive::of_paths(paths),
        ArchiveFrom::DirectoryContents(dir) => Archive::of_directory_contents(dir),
    }
    .map_err(|error| CliError::ArchiveRead(error.to_string()))?;
    let counts = transfer::upload(daemon, &archive).map_err(|source| match source {
        // Reading a file of the tree failed: the paths given, not the daemon.
        TransferError::Io { .. } | TransferError::Changed { .. } => CliError::ArchiveRead(source.to_string()),
        source => CliError::Transfer { action: "upload the tree".into(), source: Box::new(source) },
    })?;
    stdout.write_all(format!("{}\n", archive.root).as_bytes())?;
    // The digest first, then the summary, when both go to one terminal.
    stdout.flush()?;
    let _ = writeln!(
        stderr,
        "{} files, {} bytes in the tree; uploaded {} blobs ({} bytes); {} blobs ({} bytes) already there",
        archive.file_count,
        archive.file_bytes,
        counts.uploaded_blobs,
        counts.uploaded_bytes,
        counts.blobs - counts.uploaded_blobs,
        counts.blob_bytes - counts.uploaded_bytes,
    );
    Ok(crate::exit_codes::SUCCESS)
}

/// Writes the tree `root` names into `dir` (created if missing; what is
/// already there stays, and a name the tree also has fails the download).
pub(crate) fn download(
    daemon: &mut impl Call,
    root: Digest,
    dir: &Path,
    stderr: &mut dyn Write,
) -> Result<i32, CliError> {
    fs::create_dir_all(dir).map_err(|source| CliError::WriteFile { path: dir.display().to_string(), source })?;
    let counts = transfer::download(daemon, root, dir)
        .map_err(|source| CliError::Transfer { action: format!("download {root}"), source: Box::new(source) })?;
    let _ = writeln!(
        stderr,
        "{} files ({} bytes), {} directories, {} symlinks written to {}",
        counts.files,
        counts.file_bytes,
        counts.directories,
        counts.symlinks,
        dir.display()
    );
    Ok(crate::exit_codes::SUCCESS)
}

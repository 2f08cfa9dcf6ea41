//! Moving trees between a client and the daemon's store, on the binary
//! protocol: what the CLI uses, and what the bot will use for a task's inputs
//! and outputs.
//!
//! Uploading asks which blobs the store lacks (`CasFindMissing`), sends the
//! small ones in batches (`CasBatchUpload`, up to `MAX_CAS_BATCH_BYTES`) and
//! the large ones in chunks (`CasUploadStart` then `CasUploadChunk`), which
//! continue an upload that was interrupted. Downloading checks every blob
//! against its digest as it arrives; a file is written a chunk at a time and
//! hashed as it is written, never held whole.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::materialize::{MaterializeError, TreeCounts, TreeSource, materialize};
use super::tree::Archive;
use crate::client::{Client, ClientError};
use crate::limits::{MAX_CAS_BATCH_BYTES, MAX_CAS_CHUNK_BYTES, MAX_CAS_DIGESTS};
use crate::messages::{CasBlob, Reply, Request};

/// What the transfer needs of a connection to the daemon.
pub trait Call {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError>;
}

impl Call for Client {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        Client::call(self, request)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Daemon(#[from] ClientError),
    #[error("the daemon answered a {request} with an unexpected reply")]
    Unexpected { request: &'static str },
    #[error("blob {expected} came back as {actual}: its bytes do not match its digest")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("{path} changed while it was archived: it now has digest {actual}, not {expected}")]
    Changed { path: PathBuf, expected: Digest, actual: Digest },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Materialize(#[from] MaterializeError),
}

/// What an upload moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadCounts {
    /// Distinct blobs in the tree (files and directories), and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Those the store lacked and that were sent.
    pub uploaded_blobs: u64,
    pub uploaded_bytes: u64,
}

/// Uploads every blob of `archive` that the store lacks.
pub fn upload(daemon: &mut impl Call, archive: &Archive) -> Result<UploadCounts, TransferError> {
    let digests: BTreeSet<Digest> = archive.directories.keys().chain(archive.files.keys()).copied().collect();
    let digests: Vec<Digest> = digests.into_iter().collect();
    let mut counts = UploadCounts {
        blobs: digests.len() as u64,
        blob_bytes: digests.iter().map(|digest| digest.size_bytes).sum(),
        ..UploadCounts::default()
    };
    let missing = find_missing(daemon, &digests)?;
    let (small, large): (Vec<Digest>, Vec<Digest>) =
        missing.iter().partition(|digest| digest.size_bytes <= MAX_CAS_CHUNK_BYTES as u64);
    let mut batch = Batch::default();
    for digest in small {
        if !batch.has_room_for(digest) {
            batch.send(daemon)?;
        }
        batch.blobs.push(CasBlob { digest, data: blob_bytes(archive, digest)? });
        batch.bytes += digest.size_bytes as usize;
    }
    batch.send(daemon)?;
    for digest in large {
        let path = archive.files.get(&digest).expect("only files are larger than a chunk");
        upload_in_chunks(daemon, digest, path)?;
    }
    counts.uploaded_blobs = missing.len() as u64;
    counts.uploaded_bytes = missing.iter().map(|digest| digest.size_bytes).sum();
    Ok(counts)
}

/// Those of `digests` the store lacks, asked in requests of at most `MAX_CAS_DIGESTS`.
pub fn find_missing(daemon: &mut impl Call, digests: &[Digest]) -> Result<Vec<Digest>, TransferError> {
    let mut missing = Vec::new();
    for part in digests.chunks(MAX_CAS_DIGESTS) {
        match daemon.call(&Request::CasFindMissing { digests: part.to_vec() })? {
            Reply::CasMissing { digests } => missing.extend(digests),
            _ => return Err(TransferError::Unexpected { request: "CasFindMissing" }),
        }
    }
    Ok(missing)
}

/// Small blobs gathered for one `CasBatchUpload`.
#[derive(Default)]
struct Batch {
    blobs: Vec<CasBlob>,
    bytes: usize,
}

impl Batch {
    fn has_room_for(&self, digest: Digest) -> bool {
        self.blobs.len() < MAX_CAS_DIGESTS && self.bytes + digest.size_bytes as usize <= MAX_CAS_BATCH_BYTES
    }

    fn send(&mut self, daemon: &mut impl Call) -> Result<(), TransferError> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let blobs = std::mem::take(&mut self.blobs);
        self.bytes = 0;
        match daemon.call(&Request::CasBatchUpload { blobs })? {
            Reply::CasStored => Ok(()),
            _ => Err(TransferError::Unexpected { request: "CasBatchUpload" }),
        }
    }
}

/// The bytes of a small blob: a directory's encoding, or a file read whole
/// and checked against the digest it had when the tree was read.
fn blob_bytes(archive: &Archive, digest: Digest) -> Result<Vec<u8>, TransferError> {
    if let Some(bytes) = archive.directories.get(&digest) {
        return Ok(bytes.clone());
    }
    let path = archive.files.get(&digest).expect("every digest of an archive is a directory or a file");
    let bytes = fs::read(path).map_err(|source| TransferError::Io { path: path.clone(), source })?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(TransferError::Changed { path: path.clone(), expected: digest, actual });
    }
    Ok(bytes)
}

/// Sends a large file in chunks, from where the store says its upload stands.
pub fn upload_in_chunks(daemon: &mut impl Call, digest: Digest, path: &Path) -> Result<(), TransferError> {
    let io_error = |source| TransferError::Io { path: path.to_path_buf(), source };
    let mut offset = match daemon.call(&Request::CasUploadStart { digest })? {
        Reply::CasUploadOffset { offset } => offset,
        _ => return Err(TransferError::Unexpected { request: "CasUploadStart" }),
    };
    let mut file = File::open(path).map_err(io_error)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    while offset < digest.size_bytes {
        let wanted = (digest.size_bytes - offset).min(MAX_CAS_CHUNK_BYTES as u64) as usize;
        let mut data = vec![0u8; wanted];
        file.read_exact(&mut data).map_err(io_error)?;
        // A file that changed since it was archived is refused by the store,
        // which checks the whole upload against its digest.
        match daemon.call(&Request::CasUploadChunk { digest, offset, data })? {
            Reply::CasUploadOffset { offset: next } if next > offset => offset = next,
            _ => return Err(TransferError::Unexpected { request: "CasUploadChunk" }),
        }
    }
    Ok(())
}

/// Reads a whole blob into memory, checked: for directory blobs.
pub fn fetch_blob(daemon: &mut impl Call, digest: Digest) -> Result<Vec<u8>, TransferError> {
    let mut bytes = Vec::new();
    fetch_into(daemon, digest, &mut bytes).map_err(|error| error.into_transfer(Path::new("(memory)")))?;
    Ok(bytes)
}

/// A failure while fetching into a writer: the daemon's, or the writer's.
enum FetchError {
    Transfer(TransferError),
    Write(io::Error),
}

impl FetchError {
    fn into_transfer(self, path: &Path) -> TransferError {
        match self {
            FetchError::Transfer(error) => error,
            FetchError::Write(source) => TransferError::Io { path: path.to_path_buf(), source },
        }
    }
}

/// Streams a blob into `out` a chunk at a time, hashing it as it goes; fails
/// (after writing) when the bytes do not match the digest.
fn fetch_into(daemon: &mut impl Call, digest: Digest, out: &mut impl Write) -> Result<(), FetchError> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < digest.size_bytes {
        let max_bytes = (digest.size_bytes - offset).min(MAX_CAS_CHUNK_BYTES as u64) as u32;
        let request = Request::CasRead { digest, offset, max_bytes };
        let data = match daemon.call(&request).map_err(|error| FetchError::Transfer(error.into()))? {
            Reply::CasData { data } if !data.is_empty() => data,
            _ => return Err(FetchError::Transfer(TransferError::Unexpected { request: "CasRead" })),
        };
        hasher.update(&data);
        out.write_all(&data).map_err(FetchError::Write)?;
        offset += data.len() as u64;
    }
    let actual = Digest { hash: hasher.finalize().into(), size_bytes: offset };
    if actual != digest {
        return Err(FetchError::Transfer(TransferError::Mismatch { expected: digest, actual }));
    }
    Ok(())
}

/// Writes the tree `root` names into `dest` (an existing, empty directory).
pub fn download(daemon: &mut impl Call, root: Digest, dest: &Path) -> Result<TreeCounts, TransferError> {
    materialize(&mut StoreSource { daemon }, root, dest)
}

/// A tree's blobs, fetched from the daemon's store.
struct StoreSource<'a, D: Call> {
    daemon: &'a mut D,
}

impl<D: Call> TreeSource for StoreSource<'_, D> {
    type Error = TransferError;

    fn directory(&mut self, digest: Digest) -> Result<Vec<u8>, TransferError> {
        fetch_blob(self.daemon, digest)
    }

    fn place_file(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<(), TransferError> {
        let io_error = |source| TransferError::Io { path: path.to_path_buf(), source };
        let mut file = File::create_new(path).map_err(io_error)?;
        if let Err(error) = fetch_into(self.daemon, digest, &mut file) {
            let _ = fs::remove_file(path);
            return Err(error.into_transfer(path));
        }
        let mode = if executable { 0o755 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_error)
    }
}

//! Writing a tree out: the directories and symlinks a root digest names are
//! created under a destination, and each file is placed by the caller (from a
//! local cache, or downloaded). Every `Directory` blob is checked
//! (`Directory::decode_checked`), so no name can reach outside the
//! destination, and the walk is bounded: a tree may name the same directory
//! many times, so a small tree of blobs could otherwise stand for more files
//! than any disk holds.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::reapi::{Directory, DirectoryError};

/// The most entries (files, directories, symlinks) one tree may put on disk.
pub const MAX_TREE_ENTRIES: u64 = 1_000_000;
/// The deepest directory nesting a tree may have.
pub const MAX_TREE_DEPTH: usize = 128;
/// The largest `Directory` blob read whole (about 600,000 entries of short names).
pub const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// Where the blobs of a tree come from.
pub trait TreeSource {
    type Error: From<MaterializeError>;

    /// The bytes of a `Directory` blob.
    fn directory(&mut self, digest: Digest) -> Result<Vec<u8>, Self::Error>;

    /// Puts a file with these contents at `path` (which does not exist yet),
    /// executable or not.
    fn place_file(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<(), Self::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("directory {digest}: {source}")]
    BadDirectory { digest: Digest, source: DirectoryError },
    #[error("the tree has more than {MAX_TREE_ENTRIES} entries")]
    TooManyEntries,
    #[error("the tree is nested deeper than {MAX_TREE_DEPTH} directories")]
    TooDeep,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What was put on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeCounts {
    pub files: u64,
    pub file_bytes: u64,
    pub directories: u64,
    pub symlinks: u64,
}

/// Creates the tree `root` names inside `dest` (an existing directory). Every
/// directory blob is read and the tree's size checked before anything is
/// written.
pub fn materialize<S: TreeSource>(source: &mut S, root: Digest, dest: &Path) -> Result<TreeCounts, S::Error> {
    let mut tree = Tree::default();
    tree.measure(source, root)?;
    let mut counts = TreeCounts::default();
    tree.fill(source, root, dest, &mut counts)?;
    Ok(counts)
}

/// The directories of a tree, each read and checked once, with what each holds.
#[derive(Default)]
struct Tree {
    directories: HashMap<Digest, Measured>,
}

struct Measured {
    directory: Directory,
    /// Entries under it, all levels down (saturating).
    entries: u64,
    /// How many directory levels it holds (0 for one without subdirectories).
    height: usize,
}

impl Tree {
    /// Reads the directory and those under it (each distinct one once), and
    /// refuses a tree over `MAX_TREE_ENTRIES` or `MAX_TREE_DEPTH`.
    fn measure<S: TreeSource>(&mut self, source: &mut S, digest: Digest) -> Result<(u64, usize), S::Error> {
        if let Some(measured) = self.directories.get(&digest) {
            return Ok((measured.entries, measured.height));
        }
        if self.directories.len() as u64 > MAX_TREE_ENTRIES {
            return Err(MaterializeError::TooManyEntries.into());
        }
        let bytes = source.directory(digest)?;
        let directory =
            Directory::decode_checked(&bytes).map_err(|source| MaterializeError::BadDirectory { digest, source })?;
        let mut entries = (directory.files.len() + directory.directories.len() + directory.symlinks.len()) as u64;
        let mut height = 0;
        for sub in &directory.directories {
            let (below, sub_height) = self.measure(source, checked_digest(sub.digest.as_ref()))?;
            entries = entries.saturating_add(below);
            height = height.max(sub_height + 1);
            if entries > MAX_TREE_ENTRIES {
                return Err(MaterializeError::TooManyEntries.into());
            }
            if height > MAX_TREE_DEPTH {
                return Err(MaterializeError::TooDeep.into());
            }
        }
        self.directories.insert(digest, Measured { directory, entries, height });
        Ok((entries, height))
    }

    fn fill<S: TreeSource>(
        &self,
        source: &mut S,
        digest: Digest,
        dir: &Path,
        counts: &mut TreeCounts,
    ) -> Result<(), S::Error> {
        let directory = &self.directories[&digest].directory;
        for file in &directory.files {
            let digest = checked_digest(file.digest.as_ref());
            source.place_file(digest, file.is_executable, &dir.join(&file.name))?;
            counts.files += 1;
            counts.file_bytes += digest.size_bytes;
        }
        for link in &directory.symlinks {
            let path = dir.join(&link.name);
            symlink(&link.target, &path).map_err(|source| MaterializeError::Io { path, source })?;
            counts.symlinks += 1;
        }
        for sub in &directory.directories {
            let path = dir.join(&sub.name);
            fs::create_dir(&path).map_err(|source| MaterializeError::Io { path: path.clone(), source })?;
            counts.directories += 1;
            self.fill(source, checked_digest(sub.digest.as_ref()), &path, counts)?;
        }
        Ok(())
    }
}

/// A digest `decode_checked` already found well formed.
fn checked_digest(digest: Option<&super::reapi::DigestProto>) -> Digest {
    digest.and_then(|digest| digest.to_digest().ok()).expect("decode_checked checks every digest")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cas::reapi::{DirectoryNode, FileNode};
    use crate::cas::tree::Archive;

    /// Blobs in memory, as a store would hold them.
    #[derive(Default)]
    struct Blobs(HashMap<Digest, Vec<u8>>);

    impl TreeSource for Blobs {
        type Error = MaterializeError;

        fn directory(&mut self, digest: Digest) -> Result<Vec<u8>, MaterializeError> {
            Ok(self.0[&digest].clone())
        }

        fn place_file(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<(), MaterializeError> {
            let io = |source| MaterializeError::Io { path: path.to_path_buf(), source };
            fs::write(path, &self.0[&digest]).map_err(io)?;
            fs::set_permissions(path, fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 })).map_err(io)
        }
    }

    #[test]
    fn an_archived_tree_comes_back_the_same() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::create_dir_all(from.path().join("a/b")).unwrap();
        fs::write(from.path().join("a/b/data"), b"bytes").unwrap();
        fs::write(from.path().join("run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(from.path().join("run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(from.path().join("empty"), b"").unwrap();
        symlink("a/b/data", from.path().join("link")).unwrap();
        let archive = Archive::of_directory_contents(from.path()).unwrap();
        let mut blobs = Blobs::default();
        blobs.0.extend(archive.directories.clone());
        for (digest, path) in &archive.files {
            blobs.0.insert(*digest, fs::read(path).unwrap());
        }

        let counts = materialize(&mut blobs, archive.root, to.path()).unwrap();
        assert_eq!(counts, TreeCounts { files: 3, file_bytes: 15, directories: 2, symlinks: 1 });
        assert_eq!(Archive::of_directory_contents(to.path()).unwrap().root, archive.root, "the same tree");
        assert_eq!(fs::read_link(to.path().join("link")).unwrap(), Path::new("a/b/data"));
    }

    #[test]
    fn a_tree_that_names_one_directory_many_times_is_bounded() {
        // Each level holds the level below twice: 2^40 files from 41 small blobs.
        let mut blobs = Blobs::default();
        let file = Digest::of(b"x");
        blobs.0.insert(file, b"x".to_vec());
        let leaf = Directory {
            files: vec![FileNode { name: "f".into(), digest: Some(file.into()), is_executable: false }],
            ..Directory::default()
        };
        let (bytes, mut digest) = leaf.encode_canonical();
        blobs.0.insert(digest, bytes);
        for _ in 0..40 {
            let node = |name: &str| DirectoryNode { name: name.into(), digest: Some(digest.into()) };
            let (bytes, next) =
                Directory { directories: vec![node("a"), node("b")], ..Directory::default() }.encode_canonical();
            blobs.0.insert(next, bytes);
            digest = next;
        }
        let to = tempfile::tempdir().unwrap();
        let error = materialize(&mut blobs, digest, to.path()).unwrap_err();
        assert!(matches!(error, MaterializeError::TooManyEntries), "{error}");
        assert_eq!(fs::read_dir(to.path()).unwrap().count(), 0, "refused before anything was written");
    }

    #[test]
    fn a_tree_nested_too_deep_is_refused_before_anything_is_written() {
        let mut blobs = Blobs::default();
        let (bytes, mut digest) = Directory::default().encode_canonical();
        blobs.0.insert(digest, bytes);
        for _ in 0..=MAX_TREE_DEPTH {
            let node = DirectoryNode { name: "d".into(), digest: Some(digest.into()) };
            let (bytes, next) = Directory { directories: vec![node], ..Directory::default() }.encode_canonical();
            blobs.0.insert(next, bytes);
            digest = next;
        }
        let to = tempfile::tempdir().unwrap();
        let error = materialize(&mut blobs, digest, to.path()).unwrap_err();
        assert!(matches!(error, MaterializeError::TooDeep), "{error}");
        assert_eq!(fs::read_dir(to.path()).unwrap().count(), 0);
    }
}

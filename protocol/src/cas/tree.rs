//! A tree on disk read into REAPI's form: every directory encoded as a
//! canonical `Directory` blob, every file hashed where it lies (never held
//! whole in memory), and the root's digest, which names the whole tree.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::reapi::{self, Directory, DirectoryNode, FileNode, SymlinkNode};

/// A tree read from disk: its root and the blobs under it, each once.
#[derive(Debug)]
pub struct Archive {
    pub root: Digest,
    /// Directory blobs, by digest (small: their bytes are kept).
    pub directories: BTreeMap<Digest, Vec<u8>>,
    /// File blobs, by digest: one path that holds those bytes.
    pub files: BTreeMap<Digest, PathBuf>,
    /// Entries read, counting every file, directory and symlink (a file whose
    /// bytes appear twice counts twice).
    pub entries: u64,
    /// The bytes of every file read, counting repeated contents each time.
    pub file_bytes: u64,
    /// The files read (a file whose bytes appear twice counts twice).
    pub file_count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{name:?} is given twice for the tree's root ({first} and {second})")]
    DuplicateName { name: String, first: PathBuf, second: PathBuf },
}

impl Archive {
    /// The tree whose root holds the contents of `dir` (as a task's output
    /// directory is archived).
    pub fn of_directory_contents(dir: &Path) -> Result<Archive, TreeError> {
        let mut archive = Archive::empty();
        archive.root = archive.add_directory(dir)?;
        Ok(archive)
    }

    /// The tree whose root holds each path under its own name (its last
    /// component): `apiary cas archive a/b c` gives a root with `b` and `c`.
    pub fn of_paths(paths: &[PathBuf]) -> Result<Archive, TreeError> {
        let mut named: BTreeMap<String, &PathBuf> = BTreeMap::new();
        for path in paths {
            let name = root_name(path)?;
            if let Some(first) = named.insert(name.clone(), path) {
                let (first, second) = (first.clone(), path.clone());
                return Err(TreeError::DuplicateName { name, first, second });
            }
        }
        let mut archive = Archive::empty();
        let mut root = Directory::default();
        for (name, path) in named {
            let metadata = fs::symlink_metadata(path).map_err(|source| io_error(path, source))?;
            archive.add_entry(&mut root, name, path, &metadata)?;
        }
        archive.root = archive.add_encoded(&root);
        Ok(archive)
    }

    /// No blobs yet; the root is set once the tree is read.
    fn empty() -> Archive {
        let (directories, files) = (BTreeMap::new(), BTreeMap::new());
        Archive { root: Digest::of_empty(), directories, files, entries: 0, file_bytes: 0, file_count: 0 }
    }

    /// Reads `dir` and what is under it; returns its `Directory`'s digest.
    fn add_directory(&mut self, dir: &Path) -> Result<Digest, TreeError> {
        let mut directory = Directory::default();
        let mut children = Vec::new();
        for entry in fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
            let entry = entry.map_err(|source| io_error(dir, source))?;
            children.push(entry.path());
        }
        for path in children {
            let name = entry_name(&path)?;
            let metadata = fs::symlink_metadata(&path).map_err(|source| io_error(&path, source))?;
            self.add_entry(&mut directory, name, &path, &metadata)?;
        }
        Ok(self.add_encoded(&directory))
    }

    fn add_entry(
        &mut self,
        parent: &mut Directory,
        name: String,
        path: &Path,
        metadata: &Metadata,
    ) -> Result<(), TreeError> {
        self.entries += 1;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(|source| io_error(path, source))?;
            let target = target.into_os_string().into_string().map_err(|_| TreeError::Unsupported {
                path: path.to_path_buf(),
                reason: "the symlink's target is not UTF-8, which REAPI names must be".into(),
            })?;
            parent.symlinks.push(SymlinkNode { name, target });
        } else if file_type.is_dir() {
            let digest = self.add_directory(path)?;
            parent.directories.push(DirectoryNode { name, digest: Some(digest.into()) });
        } else if file_type.is_file() {
            let file = File::open(path).map_err(|source| io_error(path, source))?;
            let digest = Digest::of_reader(file).map_err(|source| io_error(path, source))?;
            self.file_bytes += digest.size_bytes;
            self.file_count += 1;
            self.files.entry(digest).or_insert_with(|| path.to_path_buf());
            let is_executable = metadata.permissions().mode() & 0o111 != 0;
            parent.files.push(FileNode { name, digest: Some(digest.into()), is_executable });
        } else {
            return Err(TreeError::Unsupported {
                path: path.to_path_buf(),
                reason: "only files, directories and symlinks can be archived".into(),
            });
        }
        Ok(())
    }

    /// Sorts the directory's entries, encodes it and keeps its blob.
    fn add_encoded(&mut self, directory: &Directory) -> Digest {
        let mut directory = directory.clone();
        directory.files.sort_by(|a, b| a.name.cmp(&b.name));
        directory.directories.sort_by(|a, b| a.name.cmp(&b.name));
        directory.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        let (bytes, digest) = directory.encode_canonical();
        self.directories.entry(digest).or_insert(bytes);
        digest
    }
}

/// The name a path takes in the root: its last component.
fn root_name(path: &Path) -> Result<String, TreeError> {
    let unsupported = |reason: &str| TreeError::Unsupported { path: path.to_path_buf(), reason: reason.into() };
    let absolute = std::path::absolute(path).map_err(|source| io_error(path, source))?;
    let name = absolute.file_name().ok_or_else(|| unsupported("the path has no last component to name it by"))?;
    let name = name.to_str().ok_or_else(|| unsupported("the name is not UTF-8, which REAPI names must be"))?;
    reapi::check_name(name).map_err(unsupported)?;
    Ok(name.to_string())
}

fn entry_name(path: &Path) -> Result<String, TreeError> {
    let name = path.file_name().and_then(|name| name.to_str());
    name.map(str::to_string).ok_or_else(|| TreeError::Unsupported {
        path: path.to_path_buf(),
        reason: "the name is not UTF-8, which REAPI names must be".into(),
    })
}

fn io_error(path: &Path, source: io::Error) -> TreeError {
    TreeError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use sha2::{Digest as _, Sha256};

    use super::*;

    /// Protobuf's wire format written out by hand, to check prost's canonical
    /// bytes against REAPI's definition independently.
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn field_bytes(number: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn digest_message(bytes: &[u8]) -> Vec<u8> {
        let hash: String = Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect();
        let mut out = Vec::new();
        field_bytes(1, hash.as_bytes(), &mut out);
        if !bytes.is_empty() {
            varint(2 << 3, &mut out); // size_bytes, a varint; 0 is left out
            varint(bytes.len() as u64, &mut out);
        }
        out
    }

    fn file_node(name: &str, contents: &[u8], executable: bool) -> Vec<u8> {
        let mut out = Vec::new();
        field_bytes(1, name.as_bytes(), &mut out);
        field_bytes(2, &digest_message(contents), &mut out);
        if executable {
            varint(4 << 3, &mut out);
            varint(1, &mut out);
        }
        out
    }

    fn named_digest(name: &str, blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        field_bytes(1, name.as_bytes(), &mut out);
        field_bytes(2, &digest_message(blob), &mut out);
        out
    }

    fn symlink_node(name: &str, target: &str) -> Vec<u8> {
        let mut out = Vec::new();
        field_bytes(1, name.as_bytes(), &mut out);
        field_bytes(2, target.as_bytes(), &mut out);
        out
    }

    fn hex_sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// root/: `b.txt` ("hello\n"), `a.sh` (executable), `link` -> `b.txt`,
    /// `sub/` holding the empty file `empty`.
    fn make_tree(root: &Path) {
        fs::write(root.join("b.txt"), b"hello\n").unwrap();
        fs::write(root.join("a.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("a.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("b.txt", root.join("link")).unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/empty"), b"").unwrap();
    }

    #[test]
    fn the_root_digest_is_the_one_reapi_defines() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(dir.path());
        let archive = Archive::of_directory_contents(dir.path()).unwrap();

        let mut sub = Vec::new();
        field_bytes(1, &file_node("empty", b"", false), &mut sub);
        let mut root = Vec::new();
        field_bytes(1, &file_node("a.sh", b"#!/bin/sh\necho hi\n", true), &mut root);
        field_bytes(1, &file_node("b.txt", b"hello\n", false), &mut root);
        field_bytes(2, &named_digest("sub", &sub), &mut root);
        field_bytes(3, &symlink_node("link", "b.txt"), &mut root);

        assert_eq!(archive.root.hex(), hex_sha256(&root));
        assert_eq!(archive.root.size_bytes, root.len() as u64);
        assert_eq!(archive.directories.get(&archive.root), Some(&root));
        assert_eq!(archive.directories.len(), 2);
        // The empty file and three more blobs of file bytes.
        assert_eq!(archive.files.len(), 3);
        assert_eq!((archive.entries, archive.file_bytes), (5, 6 + 18));
    }

    #[test]
    fn equal_trees_have_equal_digests_and_the_executable_bit_counts() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make_tree(first.path());
        make_tree(second.path());
        let digest = |dir: &Path| Archive::of_directory_contents(dir).unwrap().root;
        assert_eq!(digest(first.path()), digest(second.path()));
        fs::set_permissions(second.path().join("a.sh"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_ne!(digest(first.path()), digest(second.path()));
    }

    #[test]
    fn paths_go_into_the_root_under_their_own_names() {
        let dir = tempfile::tempdir().unwrap();
        make_tree(dir.path());
        let paths = [dir.path().join("sub"), dir.path().join("b.txt")];
        let archive = Archive::of_paths(&paths).unwrap();
        let root = Directory::decode_checked(&archive.directories[&archive.root]).unwrap();
        let names: Vec<&str> = root
            .files
            .iter()
            .map(|f| f.name.as_str())
            .chain(root.directories.iter().map(|d| d.name.as_str()))
            .collect();
        assert_eq!(names, ["b.txt", "sub"]);

        let twice = [dir.path().join("sub"), dir.path().join("sub/../sub")];
        let error = Archive::of_paths(&twice).unwrap_err().to_string();
        assert!(error.contains("\"sub\" is given twice"), "{error}");
    }

    #[test]
    fn special_files_are_refused_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let error = Archive::of_directory_contents(dir.path()).unwrap_err().to_string();
        assert!(error.contains("socket") && error.contains("only files, directories and symlinks"), "{error}");
    }

    #[test]
    fn directories_that_could_escape_or_are_not_canonical_are_refused() {
        let digest = Some(Digest::of(b"x").into());
        let file = |name: &str| FileNode { name: name.into(), digest: digest.clone(), is_executable: false };
        let cases = [
            (Directory { files: vec![file("..")], ..Directory::default() }, "\"..\""),
            (Directory { files: vec![file("a/b")], ..Directory::default() }, "one path component"),
            (Directory { files: vec![file("b"), file("a")], ..Directory::default() }, "not sorted"),
            (
                Directory {
                    files: vec![file("a")],
                    directories: vec![DirectoryNode { name: "a".into(), digest: digest.clone() }],
                    ..Directory::default()
                },
                "appears twice",
            ),
            (Directory { files: vec![FileNode { digest: None, ..file("a") }], ..Directory::default() }, "no digest"),
            (
                Directory {
                    symlinks: vec![SymlinkNode { name: "l".into(), target: String::new() }],
                    ..Directory::default()
                },
                "non-empty",
            ),
        ];
        for (directory, expected) in cases {
            let (bytes, _) = directory.encode_canonical();
            let error = Directory::decode_checked(&bytes).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} does not say {expected:?}");
        }
        assert!(Directory::decode_checked(b"\xff\xff").is_err());
    }
}

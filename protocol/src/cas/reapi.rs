//! The messages of REAPI v2 (`build.bazel.remote.execution.v2`) that name a
//! tree, with their field numbers, and their canonical encoding: a
//! `Directory`'s files, subdirectories and symlinks each sorted by name (as
//! UTF-8 bytes, which is code point order), no name twice, default values left
//! out (proto3). Encoded with prost, which writes fields in number order, as
//! every REAPI client does, so the bytes (and digests) are the same as theirs.
//! `node_properties` (mtime, mode) are never set: REAPI leaves them optional,
//! and setting them would make equal trees differ by when they were written.

use super::digest::{Digest, DigestError};

/// `Digest { string hash = 1; int64 size_bytes = 2; }`
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DigestProto {
    #[prost(string, tag = "1")]
    pub hash: String,
    #[prost(int64, tag = "2")]
    pub size_bytes: i64,
}

/// `FileNode { string name = 1; Digest digest = 2; bool is_executable = 4; }`
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FileNode {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub digest: Option<DigestProto>,
    #[prost(bool, tag = "4")]
    pub is_executable: bool,
}

/// `DirectoryNode { string name = 1; Digest digest = 2; }`
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DirectoryNode {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub digest: Option<DigestProto>,
}

/// `SymlinkNode { string name = 1; string target = 2; }`
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SymlinkNode {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub target: String,
}

/// `Directory { repeated FileNode files = 1; repeated DirectoryNode directories = 2;
/// repeated SymlinkNode symlinks = 3; }`
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Directory {
    #[prost(message, repeated, tag = "1")]
    pub files: Vec<FileNode>,
    #[prost(message, repeated, tag = "2")]
    pub directories: Vec<DirectoryNode>,
    #[prost(message, repeated, tag = "3")]
    pub symlinks: Vec<SymlinkNode>,
}

impl From<Digest> for DigestProto {
    fn from(digest: Digest) -> DigestProto {
        // Sizes past i64::MAX cannot exist on a file system.
        DigestProto { hash: digest.hex(), size_bytes: digest.size_bytes as i64 }
    }
}

impl DigestProto {
    pub fn to_digest(&self) -> Result<Digest, DigestError> {
        let size_bytes = u64::try_from(self.size_bytes)
            .map_err(|_| DigestError::Malformed(format!("{}/{}", self.hash, self.size_bytes)))?;
        Digest::from_parts(&self.hash, size_bytes)
    }
}

/// Why a `Directory` blob is not one Apiary will materialize.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("not a Directory message: {0}")]
    Undecodable(String),
    #[error("entry {name:?}: {reason}")]
    BadEntry { name: String, reason: String },
    #[error("entries are not sorted by name: {before:?} comes before {after:?}")]
    Unsorted { before: String, after: String },
    #[error("the name {0:?} appears twice")]
    Duplicate(String),
}

impl Directory {
    /// The canonical bytes and their digest.
    pub fn encode_canonical(&self) -> (Vec<u8>, Digest) {
        let bytes = prost::Message::encode_to_vec(self);
        let digest = Digest::of(&bytes);
        (bytes, digest)
    }

    /// Decodes a `Directory` blob and checks what materializing it relies on:
    /// every name is one path component, each list is sorted, no name appears
    /// twice, every digest is well formed, and symlink targets are not empty.
    pub fn decode_checked(bytes: &[u8]) -> Result<Directory, DirectoryError> {
        let directory: Directory =
            prost::Message::decode(bytes).map_err(|error| DirectoryError::Undecodable(error.to_string()))?;
        directory.check()?;
        Ok(directory)
    }

    fn check(&self) -> Result<(), DirectoryError> {
        let bad = |name: &str, reason: &str| DirectoryError::BadEntry { name: name.into(), reason: reason.into() };
        for file in &self.files {
            check_digest(&file.name, file.digest.as_ref())?;
        }
        for directory in &self.directories {
            check_digest(&directory.name, directory.digest.as_ref())?;
        }
        for symlink in &self.symlinks {
            if symlink.target.is_empty() || symlink.target.contains('\0') {
                return Err(bad(&symlink.name, "a symlink's target must be a non-empty path without NUL"));
            }
        }
        check_sorted(self.files.iter().map(|file| file.name.as_str()))?;
        check_sorted(self.directories.iter().map(|directory| directory.name.as_str()))?;
        check_sorted(self.symlinks.iter().map(|symlink| symlink.name.as_str()))?;
        let mut names: Vec<&str> = self
            .files
            .iter()
            .map(|file| file.name.as_str())
            .chain(self.directories.iter().map(|directory| directory.name.as_str()))
            .chain(self.symlinks.iter().map(|symlink| symlink.name.as_str()))
            .collect();
        for name in &names {
            check_name(name).map_err(|reason| bad(name, reason))?;
        }
        names.sort_unstable();
        match names.windows(2).find(|pair| pair[0] == pair[1]) {
            Some(pair) => Err(DirectoryError::Duplicate(pair[0].to_string())),
            None => Ok(()),
        }
    }
}

/// A name in a `Directory`: one path component, so that materializing a tree
/// can never write outside the directory it fills.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("a name must not be empty, \".\" or \"..\"");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("a name must be one path component, without '/' or NUL");
    }
    Ok(())
}

fn check_digest(name: &str, digest: Option<&DigestProto>) -> Result<(), DirectoryError> {
    let reason = match digest.map(DigestProto::to_digest) {
        Some(Ok(_)) => return Ok(()),
        Some(Err(error)) => error.to_string(),
        None => "it has no digest".to_string(),
    };
    Err(DirectoryError::BadEntry { name: name.to_string(), reason })
}

fn check_sorted<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), DirectoryError> {
    let mut previous: Option<&str> = None;
    for name in names {
        if let Some(before) = previous
            && before > name
        {
            return Err(DirectoryError::Unsorted { before: before.to_string(), after: name.to_string() });
        }
        previous = Some(name);
    }
    Ok(())
}

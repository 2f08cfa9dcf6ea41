//! Snapshot files (docs/state.md, section 1): the daemon's state after log record
//! `covered_seq`, as one self-contained, CRC-checked file. The payload is the daemon's
//! archive; this module only seals it, finds it and checks it.
//!
//! A snapshot is named `<covered_seq as 20 decimal digits>.snap`. It is written as
//! `<name>.tmp`, synced, renamed and the directory synced, so a snapshot's name always
//! holds a whole file; a crash leaves at most a `.tmp` file, which `open` removes. A file
//! found damaged can be set aside as `<name>.damaged` for an operator to look at.
//!
//! Invariants: a snapshot file never changes after its rename (so reading it through a
//! read-only mapping is sound, see `wal/mmap.rs`); the payload starts at a 64-byte offset
//! of a page-aligned mapping, so it is 16-byte aligned as `rkyv` needs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::large_files::{WriteBehind, remove_gradually};
use crate::wal::mmap::ReadOnlyMap;

const SNAPSHOT_MAGIC: [u8; 8] = *b"APIARYSN";
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// The payload starts here: a multiple of 16, for the archive's alignment.
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
const _: () = assert!(SNAPSHOT_HEADER_BYTES.is_multiple_of(16));
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMPORARY_SUFFIX: &str = ".snap.tmp";
const DAMAGED_SUFFIX: &str = ".damaged";

/// What went wrong with a snapshot; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("failed to {context}: {source}")]
    Io { context: String, source: io::Error },
    /// The file is not a whole, intact snapshot.
    #[error("snapshot {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

fn io_error(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { context: context(), source }
}

/// A snapshot file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotHeader {
    covered_seq: u64,
    created_ms: u64,
    payload_len: u64,
    payload_crc: u32,
}

impl SnapshotHeader {
    /// Layout (all integers little-endian), 64 bytes:
    ///
    /// ```text
    /// offset  size  field
    ///      0     8  magic         "APIARYSN"
    ///      8     4  version       u32, SNAPSHOT_FORMAT_VERSION
    ///     12     4  reserved      zero
    ///     16     8  covered_seq   u64: every log record up to it is in the snapshot
    ///     24     8  created_ms    u64: Unix milliseconds when it was written
    ///     32     8  payload_len   u64
    ///     40     4  payload_crc   u32: CRC-32 of the payload
    ///     44     4  header_crc    u32: CRC-32 of bytes 0..44
    ///     48    16  reserved      zero
    ///     64        payload
    /// ```
    fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut bytes = [0u8; SNAPSHOT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        bytes[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.covered_seq.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&bytes[0..44]);
        bytes[44..48].copy_from_slice(&header_crc.to_le_bytes());
        debug_assert_eq!(SnapshotHeader::decode(&bytes), Ok(*self));
        bytes
    }

    /// Decodes and checks a header; the error is the reason it is not one.
    fn decode(bytes: &[u8]) -> Result<SnapshotHeader, String> {
        let Some(bytes) = bytes.get(..SNAPSHOT_HEADER_BYTES) else {
            return Err(format!("the file is {} bytes, shorter than a snapshot header", bytes.len()));
        };
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[0..44]) != u32_at(44) {
            return Err("header CRC mismatch".into());
        }
        if bytes[0..8] != SNAPSHOT_MAGIC {
            return Err("not a snapshot file (bad magic)".into());
        }
        if u32_at(8) != SNAPSHOT_FORMAT_VERSION {
            return Err(format!("unknown snapshot format version {}", u32_at(8)));
        }
        if bytes[12..16].iter().chain(&bytes[48..64]).any(|&byte| byte != 0) {
            return Err("reserved header bytes are not zero".into());
        }
        Ok(SnapshotHeader {
            covered_seq: u64_at(16),
            created_ms: u64_at(24),
            payload_len: u64_at(32),
            payload_crc: u32_at(40),
        })
    }
}

/// A snapshot file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub covered_seq: u64,
    pub path: PathBuf,
}

/// A snapshot read back whole: its payload, checked against its CRC, through a read-only
/// mapping of the file.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub covered_seq: u64,
    pub created_ms: u64,
    map: ReadOnlyMap,
    payload_len: usize,
    payload_crc: u32,
    path: String,
}

impl LoadedSnapshot {
    /// Checks the payload against the CRC in the header.
    pub fn check_crc(&self) -> Result<(), SnapshotError> {
        if crc32fast::hash(self) != self.payload_crc {
            return Err(SnapshotError::Damaged { path: self.path.clone(), reason: "payload CRC mismatch".into() });
        }
        Ok(())
    }
}

impl Deref for LoadedSnapshot {
    type Target = [u8];

    /// The payload, 16-byte aligned.
    fn deref(&self) -> &[u8] {
        &self.map.stable_prefix(SNAPSHOT_HEADER_BYTES + self.payload_len)[SNAPSHOT_HEADER_BYTES..]
    }
}

/// The snapshot directory. Cheap to clone: a snapshot thread writes through its own copy.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens `dir` (creating it), removing what interrupted writes left.
    pub fn open(dir: &Path) -> Result<SnapshotStore, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_error(|| format!("create snapshot directory {}", dir.display())))?;
        let store = SnapshotStore { dir: dir.to_path_buf() };
        for entry in store.entries()? {
            if entry.to_string_lossy().ends_with(TEMPORARY_SUFFIX) {
                let path = dir.join(&entry);
                fs::remove_file(&path)
                    .map_err(io_error(|| format!("remove unfinished snapshot {}", path.display())))?;
            }
        }
        Ok(store)
    }

    /// The snapshots in the directory, newest first (damaged ones included: reading tells).
    pub fn list(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        let mut files: Vec<SnapshotFile> = self
            .entries()?
            .into_iter()
            .filter_map(|name| {
                let covered_seq = parse_name(&name.to_string_lossy())?;
                Some(SnapshotFile { covered_seq, path: self.dir.join(name) })
            })
            .collect();
        files.sort_unstable_by_key(|file| std::cmp::Reverse(file.covered_seq));
        Ok(files)
    }

    /// Writes a snapshot of the state after record `covered_seq`, durably: a temporary
    /// file, synced, renamed into place, the directory synced.
    pub fn write(&self, covered_seq: u64, created_ms: u64, payload: &[u8]) -> Result<SnapshotFile, SnapshotError> {
        let path = self.path(covered_seq);
        let temporary = self.dir.join(format!("{covered_seq:020}{TEMPORARY_SUFFIX}"));
        let payload_crc = crc32fast::hash(payload);
        let header = SnapshotHeader { covered_seq, created_ms, payload_len: payload.len() as u64, payload_crc };
        write_synced(&temporary, &header.encode(), payload)
            .map_err(io_error(|| format!("write snapshot {}", temporary.display())))?;
        fs::rename(&temporary, &path).map_err(io_error(|| format!("rename snapshot {} into place", path.display())))?;
        self.sync_dir()?;
        Ok(SnapshotFile { covered_seq, path })
    }

    /// Reads a snapshot back and checks it whole: header, length, payload CRC.
    pub fn read(&self, file: &SnapshotFile) -> Result<LoadedSnapshot, SnapshotError> {
        let loaded = self.map(file)?;
        loaded.check_crc()?;
        Ok(loaded)
    }

    /// Maps a snapshot and checks its header and length, not yet its payload:
    /// `check_crc` must pass before the payload is trusted. Apart, so that a
    /// caller can check the CRC on one core while it validates the payload's
    /// structure on another.
    pub fn map(&self, file: &SnapshotFile) -> Result<LoadedSnapshot, SnapshotError> {
        let path = file.path.display().to_string();
        let damaged = |reason: String| SnapshotError::Damaged { path: path.clone(), reason };
        let handle = File::open(&file.path).map_err(io_error(|| format!("open snapshot {path}")))?;
        let len = handle.metadata().map_err(io_error(|| format!("stat snapshot {path}")))?.len();
        if len < SNAPSHOT_HEADER_BYTES as u64 {
            return Err(damaged(format!("the file is {len} bytes, shorter than a snapshot header")));
        }
        let map = ReadOnlyMap::map(&handle).map_err(io_error(|| format!("map snapshot {path}")))?;
        let header = SnapshotHeader::decode(map.stable_prefix(SNAPSHOT_HEADER_BYTES)).map_err(damaged)?;
        if header.covered_seq != file.covered_seq {
            return Err(damaged(format!(
                "its header covers record {}, its name says {}",
                header.covered_seq, file.covered_seq
            )));
        }
        let expected_len = SNAPSHOT_HEADER_BYTES as u64 + header.payload_len;
        if len != expected_len {
            return Err(damaged(format!("the file is {len} bytes; its header says {expected_len}")));
        }
        Ok(LoadedSnapshot {
            covered_seq: header.covered_seq,
            created_ms: header.created_ms,
            map,
            payload_len: header.payload_len as usize,
            payload_crc: header.payload_crc,
            path,
        })
    }

    /// Renames a damaged snapshot to `<name>.damaged`, out of the way of later starts.
    pub fn set_aside(&self, file: &SnapshotFile) -> Result<PathBuf, SnapshotError> {
        let mut aside = file.path.clone().into_os_string();
        aside.push(DAMAGED_SUFFIX);
        let aside = PathBuf::from(aside);
        fs::rename(&file.path, &aside).map_err(io_error(|| format!("set aside snapshot {}", file.path.display())))?;
        self.sync_dir()?;
        Ok(aside)
    }

    /// Removes the snapshots that cover less than `covered_seq`, oldest first.
    pub fn remove_older_than(&self, covered_seq: u64) -> Result<usize, SnapshotError> {
        let mut older: Vec<SnapshotFile> =
            self.list()?.into_iter().filter(|file| file.covered_seq < covered_seq).collect();
        older.reverse();
        for file in &older {
            // No process maps an older snapshot: the daemon and the snapshot job map the newest.
            remove_gradually(&file.path).map_err(io_error(|| format!("remove snapshot {}", file.path.display())))?;
        }
        if !older.is_empty() {
            self.sync_dir()?;
        }
        Ok(older.len())
    }

    pub fn path(&self, covered_seq: u64) -> PathBuf {
        self.dir.join(format!("{covered_seq:020}{SNAPSHOT_SUFFIX}"))
    }

    fn entries(&self) -> Result<Vec<std::ffi::OsString>, SnapshotError> {
        let context = || format!("list snapshot directory {}", self.dir.display());
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(context))? {
            names.push(entry.map_err(io_error(context))?.file_name());
        }
        Ok(names)
    }

    fn sync_dir(&self) -> Result<(), SnapshotError> {
        crate::sync_dir(&self.dir).map_err(io_error(|| format!("sync snapshot directory {}", self.dir.display())))
    }
}

/// The covered sequence number in a snapshot's file name.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn write_synced(path: &Path, header: &[u8], payload: &[u8]) -> io::Result<()> {
    // Only the daemon's user may read it: a snapshot holds the secret bytes of waiting tasks.
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    let mut file = WriteBehind::new(file);
    file.write_all(header)?;
    file.write_all(payload)?;
    file.into_inner().sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let header = SnapshotHeader { covered_seq: 9, created_ms: 1_700_000_000_000, payload_len: 3, payload_crc: 7 };
        let bytes = header.encode();
        assert_eq!(SnapshotHeader::decode(&bytes), Ok(header));
        for at in 0..SNAPSHOT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x04;
            assert!(SnapshotHeader::decode(&damaged).is_err(), "a flip at {at} went unnoticed");
        }
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("00000000000000000042.snap"), Some(42));
        assert_eq!(parse_name("00000000000000000042.snap.tmp"), None);
        assert_eq!(parse_name("00000000000000000042.snap.damaged"), None);
        assert_eq!(parse_name("42.snap"), None);
    }
}

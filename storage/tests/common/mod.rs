//! Helpers shared by the WAL tests: scratch directories, the documented on-disk layout
//! (written out again here, independently of the crate), and a reference model.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use apiary_storage::{LogStart, Wal, WalOptions};

/// Documented layout: a segment starts with a 48-byte header, a record with a 32-byte one.
pub const SEGMENT_HEADER_BYTES: usize = 48;
pub const RECORD_HEADER_BYTES: usize = 32;

/// A directory for a test log. On tmpfs when there is one: these tests check what the log
/// does with the bytes it finds, and real fsyncs would only make them slow.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("apiary-storage-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("create a temporary directory")
}

pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.wal"))
}

/// A record as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub seq: u64,
    pub kind: u16,
    pub payload: Vec<u8>,
}

pub fn options(segment_bytes: u64) -> WalOptions {
    WalOptions { segment_bytes }
}

/// Every record of the log, copied out, after checking payload alignment.
pub fn read_all(wal: &Wal) -> Vec<ModelRecord> {
    wal.records()
        .map(|record| {
            assert_eq!(record.payload.as_ptr() as usize % 16, 0, "payload of record {} is not aligned", record.seq);
            ModelRecord { seq: record.seq, kind: record.kind, payload: record.payload.to_vec() }
        })
        .collect()
}

/// A payload that tells records apart: its bytes depend on the seq and the length.
pub fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i * 7 + len) as u8).collect()
}

/// Where a record sits: segment, start offset, end of its payload (padding excluded).
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub segment: u64,
    pub start: usize,
    pub payload_end: usize,
}

/// The documented placement of records with these payload lengths in segments of
/// `segment_bytes`, starting in segment 0.
pub fn placements(payload_lengths: &[usize], segment_bytes: usize) -> Vec<Placement> {
    let mut segment = 0;
    let mut offset = SEGMENT_HEADER_BYTES;
    payload_lengths
        .iter()
        .map(|&len| {
            let size = RECORD_HEADER_BYTES + len.next_multiple_of(16);
            if offset + size > segment_bytes {
                segment += 1;
                offset = SEGMENT_HEADER_BYTES;
            }
            let placement = Placement { segment, start: offset, payload_end: offset + RECORD_HEADER_BYTES + len };
            offset += size;
            placement
        })
        .collect()
}

/// Encodes a record the way the layout comment says, for planting stale records.
pub fn encode_record(kind: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; RECORD_HEADER_BYTES];
    bytes[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes[4..6].copy_from_slice(&kind.to_le_bytes());
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..28]);
    hasher.update(payload);
    bytes[28..32].copy_from_slice(&hasher.finalize().to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(bytes.len().next_multiple_of(16), 0);
    bytes
}

/// Writes a log of records with these payload lengths (kinds `seq % 7`), syncs it, closes
/// it, and returns the model.
pub fn write_log(dir: &Path, segment_bytes: u64, payload_lengths: &[usize]) -> Vec<ModelRecord> {
    let (mut wal, recovery) =
        Wal::open(dir, options(segment_bytes), LogStart::FROM_FIRST_RECORD).expect("open a new log");
    assert_eq!(recovery.records, 0);
    let mut model = Vec::new();
    for &len in payload_lengths {
        let seq = wal.last_seq() + 1;
        let record = ModelRecord { seq, kind: (seq % 7) as u16, payload: payload_for(seq, len) };
        assert_eq!(wal.append(record.kind, &record.payload).expect("append"), seq);
        model.push(record);
    }
    if let Some(job) = wal.take_sync_job() {
        job.run().expect("sync");
    }
    wal.check_invariants();
    model
}

/// The log's segment files and their bytes, in order.
pub fn snapshot_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for index in 0.. {
        let path = segment_path(dir, index);
        let Ok(bytes) = std::fs::read(&path) else { break };
        files.push((path, bytes));
    }
    files
}

/// Puts the files back the way they were (as a fresh copy in `dir`).
pub fn restore_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for entry in std::fs::read_dir(dir).expect("list the log") {
        let path = entry.expect("list the log").path();
        if path.extension().is_some_and(|extension| extension == "wal") {
            std::fs::remove_file(&path).expect("remove a segment");
        }
    }
    for (path, bytes) in files {
        std::fs::write(dir.join(path.file_name().expect("a segment file name")), bytes).expect("restore a segment");
    }
}

/// Writes HEAD the way the layout comment says: magic, segment index, CRC of both, zeros.
pub fn write_head(dir: &Path, index: u64) {
    let mut bytes = [0u8; 24];
    bytes[0..8].copy_from_slice(b"APIARYHD");
    bytes[8..16].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join("HEAD"), bytes).expect("write HEAD");
}

/// Every file and directory name in the log directory, sorted (to check nothing changed).
pub fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list the log")
        .map(|entry| {
            let entry = entry.expect("list the log");
            let bytes = if entry.path().is_file() { std::fs::read(entry.path()).expect("read") } else { Vec::new() };
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .filter(|(name, _)| !name.ends_with(".tmp"))
        .collect();
    entries.sort();
    entries
}

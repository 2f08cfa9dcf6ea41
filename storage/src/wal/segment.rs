//! Segment files: their header, their names, their creation, and a mapped segment's
//! bookkeeping.
//!
//! A segment is named `<index as 20 decimal digits>.wal`. It only gets that name once its
//! header is on disk: it is made as zeros over its whole length under a temporary name
//! (`<name>.tmp` at open, `<name>.spare.tmp` for a spare the preparer made), synced, given
//! its header, and renamed into place (by the sync job, for a spare). Files ending in
//! `.tmp` never hold an acknowledged record. Segment `n + 1`'s first sequence number is one
//! more than segment `n`'s last, unless its header says a loss was accepted before it. The
//! header records the file's length as created, so a file cut short is noticed. Bytes of a
//! segment after its last record are zero.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::WalError;
use super::mmap::{SegmentMap, page_bytes};
use super::record::RECORD_ALIGNMENT;
use crate::large_files::{allocate, write_back};

pub(crate) const SEGMENT_HEADER_BYTES: usize = 48;
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGNMENT));
const SEGMENT_MAGIC: [u8; 8] = *b"APIARYWL";
/// Version 1 had no capacity; version 2 adds it and the flags, and its CRC covers them.
const SEGMENT_FORMAT_VERSION_1: u32 = 1;
const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Flag bit: a loss was accepted just before this segment (see `SegmentHeader::after_loss`).
const FLAG_AFTER_ACCEPTED_LOSS: u32 = 1;
const SEGMENT_SUFFIX: &str = ".wal";
/// Files being made (a segment created in place, a spare, HEAD): never holding an
/// acknowledged record, removed at open.
const TEMPORARY_SUFFIX: &str = ".tmp";
const SPARE_SUFFIX: &str = ".wal.spare.tmp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub index: u64,
    pub first_seq: u64,
    /// The file's length as created; `None` for a version 1 header, which did not say.
    pub capacity: Option<u64>,
    /// An operator accepted the loss of the records before `first_seq` that the log does
    /// not hold: the previous segment (if any) may end before `first_seq - 1`, and the log
    /// may start after the first record it was asked for.
    pub after_loss: bool,
}

impl SegmentHeader {
    pub(crate) fn new(index: u64, first_seq: u64, capacity: usize) -> SegmentHeader {
        SegmentHeader { index, first_seq, capacity: Some(capacity as u64), after_loss: false }
    }

    /// Layout (all integers little-endian), 48 bytes, version 2:
    ///
    /// ```text
    /// offset  size  field
    ///      0     8  magic       "APIARYWL"
    ///      8     4  version     u32, 2 (1: no flags, capacity zero, CRC of bytes 0..32 only)
    ///     12     4  flags       u32, bit 0: a loss was accepted just before this segment
    ///     16     8  index       u64, the number in the file name
    ///     24     8  first_seq   u64, sequence number of the segment's first record
    ///     32     4  crc         CRC-32 of bytes 0..32, then bytes 36..48
    ///     36     8  capacity    u64, the file's length as created
    ///     44     4  reserved    zero
    ///     48        first record
    /// ```
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let capacity = self.capacity.expect("new segments record their capacity");
        let flags = if self.after_loss { FLAG_AFTER_ACCEPTED_LOSS } else { 0 };
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&flags.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.index.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        bytes[36..44].copy_from_slice(&capacity.to_le_bytes());
        let crc = header_crc(&bytes, SEGMENT_FORMAT_VERSION);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(SegmentHeader::decode(&bytes), Ok(*self));
        bytes
    }

    /// Decodes and checks a segment header (version 1 or 2); the error is the reason it is
    /// not one.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(format!("segment file is {} bytes, shorter than its header", bytes.len()));
        };
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a segment file (bad magic)".to_string());
        }
        let version = u32_at(8);
        if version != SEGMENT_FORMAT_VERSION && version != SEGMENT_FORMAT_VERSION_1 {
            return Err(format!("unknown segment format version {version}"));
        }
        if header_crc(bytes, version) != u32_at(32) {
            return Err("segment header CRC mismatch".to_string());
        }
        let flags = u32_at(12);
        let reserved_is_zero = if version == SEGMENT_FORMAT_VERSION_1 {
            flags == 0 && bytes[36..48].iter().all(|&byte| byte == 0)
        } else {
            flags & !FLAG_AFTER_ACCEPTED_LOSS == 0 && bytes[44..48].iter().all(|&byte| byte == 0)
        };
        if !reserved_is_zero {
            return Err("reserved segment header bytes are not zero".to_string());
        }
        let capacity = (version == SEGMENT_FORMAT_VERSION).then(|| u64_at(36));
        let after_loss = flags & FLAG_AFTER_ACCEPTED_LOSS != 0;
        let header = SegmentHeader { index: u64_at(16), first_seq: u64_at(24), capacity, after_loss };
        if header.first_seq == 0 {
            return Err("segment's first sequence number is 0".to_string());
        }
        if capacity.is_some_and(|capacity| capacity < SEGMENT_HEADER_BYTES as u64) {
            return Err("segment capacity is smaller than its header".to_string());
        }
        Ok(header)
    }
}

fn header_crc(bytes: &[u8], version: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..32]);
    if version != SEGMENT_FORMAT_VERSION_1 {
        hasher.update(&bytes[36..48]);
    }
    hasher.finalize()
}

pub(crate) fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}{SEGMENT_SUFFIX}"))
}

/// Where a segment created in one go (at open) is written before its rename.
pub(crate) fn temporary_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}{SEGMENT_SUFFIX}{TEMPORARY_SUFFIX}"))
}

/// Where the spare for segment `index` is prepared and waits for its rename into place.
pub(crate) fn spare_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}{SPARE_SUFFIX}"))
}

/// Whether a file is a spare segment (a temporary file too).
pub(crate) fn is_spare(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name.to_string_lossy().ends_with(SPARE_SUFFIX))
}

/// What a directory entry is to the log.
pub(crate) enum EntryName {
    Segment(u64),
    /// A file being made (a segment, a spare, HEAD) that was never renamed into place: it
    /// holds no acknowledged record.
    Temporary,
    Other,
}

pub(crate) fn classify(file_name: &str) -> EntryName {
    if file_name.ends_with(TEMPORARY_SUFFIX) {
        return EntryName::Temporary;
    }
    let Some(digits) = file_name.strip_suffix(SEGMENT_SUFFIX) else { return EntryName::Other };
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return EntryName::Other;
    }
    digits.parse().map_or(EntryName::Other, EntryName::Segment)
}

/// A mapped segment file and how far it is written.
#[derive(Debug)]
pub(crate) struct Segment {
    pub index: u64,
    pub first_seq: u64,
    pub map: SegmentMap,
    /// Offset just past the last record; bytes from here to `capacity` are zero.
    pub end: usize,
    /// Usable length: the file length rounded down to a multiple of 16.
    pub capacity: usize,
    /// Records in the segment; the last one's seq is `first_seq + records - 1`.
    pub records: u64,
    /// A loss was accepted just before this segment: its first record need not follow the
    /// previous segment's last.
    pub after_loss: bool,
    /// Where the file still lies when it was made from a spare and the sync job that
    /// renames it into place has not been taken yet.
    pub pending_rename: Option<PathBuf>,
}

impl Segment {
    /// Maps an existing segment file; its header and records are checked by recovery.
    pub(crate) fn map_existing(dir: &Path, index: u64) -> Result<SegmentMap, WalError> {
        let path = segment_path(dir, index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(WalError::io(|| format!("open segment {index} ({})", path.display())))?;
        let len = file.metadata().map_err(WalError::io(|| format!("stat segment {index}")))?.len();
        if len < SEGMENT_HEADER_BYTES as u64 {
            return Err(WalError::corrupted(index, 0, format!("segment file is {len} bytes, shorter than its header")));
        }
        SegmentMap::map(&file).map_err(WalError::io(|| format!("map segment {index}")))
    }

    /// Creates the segment `header` names, of `segment_bytes` zeros with its header,
    /// durably and in place (used at open, never on the append path), and maps it.
    pub(crate) fn create(dir: &Path, header: SegmentHeader, segment_bytes: usize) -> Result<Segment, WalError> {
        let index = header.index;
        let temporary = temporary_path(dir, index);
        let file = create_zeroed_file(&temporary, segment_bytes, Pace::Fast)
            .map_err(WalError::io(|| format!("create segment {index} ({})", temporary.display())))?;
        let mut segment = Segment::start_in(&file, temporary, header)?;
        segment.map.sync_range(0, SEGMENT_HEADER_BYTES).map_err(WalError::io(|| format!("sync segment {index}")))?;
        let temporary = segment.pending_rename.take().expect("just started");
        fs::rename(&temporary, segment_path(dir, index))
            .map_err(WalError::io(|| format!("rename new segment {index} into place")))?;
        sync_dir(dir)?;
        Ok(segment)
    }

    /// Maps a zero-filled file (a spare, not yet in place at `path`) as segment
    /// `header.index` and writes its header. The file is renamed into
    /// place by a sync job, after the header is synced.
    pub(crate) fn start_in(file: &File, path: PathBuf, header: SegmentHeader) -> Result<Segment, WalError> {
        let index = header.index;
        let map = SegmentMap::map(file).map_err(WalError::io(|| format!("map segment {index}")))?;
        let capacity = map.len() / RECORD_ALIGNMENT * RECORD_ALIGNMENT;
        assert!(capacity >= SEGMENT_HEADER_BYTES, "a spare holds at least a header");
        let header = SegmentHeader { capacity: Some(map.len() as u64), ..header };
        let mut segment = Segment {
            index,
            first_seq: header.first_seq,
            map,
            end: SEGMENT_HEADER_BYTES,
            capacity,
            records: 0,
            after_loss: header.after_loss,
            pending_rename: Some(path),
        };
        segment
            .map
            .write_through_file(0, &header.encode())
            .map_err(WalError::io(|| format!("write the header of segment {index}")))?;
        Ok(segment)
    }

    /// Sequence number of the segment's last record, or `first_seq - 1` when it has none.
    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + self.records - 1
    }

    /// Bytes of the segment up to its usable end.
    pub(crate) fn usable_bytes(&self) -> &[u8] {
        &self.map.bytes()[..self.capacity]
    }
}

/// How `create_zeroed_file` goes about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// As fast as the disk takes it: at open, where nothing else waits on the disk.
    Fast,
    /// A mebibyte at a time, each written back (not synced), with a pause after it: in the
    /// background while the log syncs. One flush of a whole segment would hold the disk for
    /// hundreds of milliseconds, and every acknowledgement waiting on the log's sync with
    /// it; a sync of each mebibyte put a flush of the disk's cache ahead of the log's own.
    Gentle,
}

/// Bytes written and written back at a time when preparing a segment gently.
const GENTLE_CHUNK_BYTES: usize = 1 << 20;
/// The pause after each chunk, which leaves the disk to the log's syncs.
const GENTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Creates `path` as `segment_bytes` zeros, synced. Zeros are written (not a sparse file)
/// so later syncs write over allocated, written blocks (much faster than syncing
/// unwritten extents). They are written a page at a time, so that the page cache holds
/// them in single pages: a write of a few hundred bytes into a large folio would make the
/// next sync write the whole folio (64 KiB and more) back, and dropping the pages instead
/// would make every append that starts a page read it from the disk first.
pub(crate) fn create_zeroed_file(path: &Path, segment_bytes: usize, pace: Pace) -> std::io::Result<File> {
    assert!(segment_bytes >= SEGMENT_HEADER_BYTES && segment_bytes.is_multiple_of(RECORD_ALIGNMENT));
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let zeros = vec![0u8; page_bytes()];
    let mut written = 0;
    while written < segment_bytes {
        let chunk = zeros.len().min(segment_bytes - written);
        file.write_all(&zeros[..chunk])?;
        written += chunk;
        if pace == Pace::Gentle && written.is_multiple_of(GENTLE_CHUNK_BYTES) {
            write_back(&file, (written - GENTLE_CHUNK_BYTES) as u64, GENTLE_CHUNK_BYTES as u64)?;
            std::thread::sleep(GENTLE_PAUSE);
        }
    }
    file.sync_all()?;
    Ok(file)
}

/// Creates `path` with `segment_bytes` allocated but not written (`fallocate`), synced:
/// for a rotation that found no spare ready, on the writer's thread. It takes under a
/// millisecond where writing the zeros took 80-120 ms for 64 MiB on this project's
/// machine, and every reply waits for the writer's thread; the price is paid by this
/// segment's syncs, which also commit the conversion of the blocks they wrote. Reads of
/// unwritten blocks return zeros, as a zero-filled file's do. Where `fallocate` is not
/// supported, zeros are written.
pub(crate) fn create_allocated_file(path: &Path, segment_bytes: usize) -> std::io::Result<File> {
    assert!(segment_bytes >= SEGMENT_HEADER_BYTES && segment_bytes.is_multiple_of(RECORD_ALIGNMENT));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    match allocate(&file, segment_bytes as u64) {
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            drop(file);
            create_zeroed_file(path, segment_bytes, Pace::Fast)
        }
        result => {
            result?;
            file.sync_all()?;
            Ok(file)
        }
    }
}

/// Makes the directory's entries (created, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    crate::sync_dir(dir).map_err(WalError::io(|| format!("sync WAL directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader { index: 3, first_seq: 77, capacity: Some(4096), after_loss: true };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert_eq!(&bytes[36..44], &4096u64.to_le_bytes(), "capacity sits at 36..44");
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert!(SegmentHeader::decode(&damaged).is_err(), "flip at {at} went unnoticed");
        }
        assert!(SegmentHeader::decode(&bytes[..20]).is_err());
    }

    #[test]
    fn version_1_headers_are_still_read_without_a_capacity() {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(b"APIARYWL");
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&5u64.to_le_bytes());
        bytes[24..32].copy_from_slice(&9u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..32]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        let header = SegmentHeader { index: 5, first_seq: 9, capacity: None, after_loss: false };
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
    }

    #[test]
    fn names() {
        let dir = Path::new("/x");
        let name = segment_path(dir, 12).file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, "00000000000000000012.wal");
        assert!(matches!(classify(&name), EntryName::Segment(12)));
        assert!(matches!(classify("00000000000000000012.wal.tmp"), EntryName::Temporary));
        let spare = spare_path(dir, 12).file_name().unwrap().to_str().unwrap().to_string();
        assert!(matches!(classify(&spare), EntryName::Temporary));
        assert!(matches!(classify("HEAD.tmp"), EntryName::Temporary));
        assert!(matches!(classify("LOCK"), EntryName::Other));
        assert!(matches!(classify("12.wal"), EntryName::Other));
    }
}

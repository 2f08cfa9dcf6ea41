//! Segment files: their header, their names, their creation, and a mapped segment's
//! bookkeeping.
//!
//! A segment is named `<index as 20 decimal digits>.wal`. It is created complete or not at
//! all: written as `<name>.tmp` (zeros over its whole length, then its header), synced,
//! renamed, and the directory synced. Segment `n + 1`'s first sequence number is one more
//! than segment `n`'s last. Bytes of a segment after its last record are zero.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::WalError;
use super::mmap::SegmentMap;
use super::record::RECORD_ALIGNMENT;

pub(crate) const SEGMENT_HEADER_BYTES: usize = 48;
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGNMENT));
const SEGMENT_MAGIC: [u8; 8] = *b"APIARYWL";
const SEGMENT_FORMAT_VERSION: u32 = 1;
const SEGMENT_SUFFIX: &str = ".wal";
const TEMPORARY_SUFFIX: &str = ".wal.tmp";
/// Preallocation writes zeros in chunks of this size.
const ZERO_CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub index: u64,
    pub first_seq: u64,
}

impl SegmentHeader {
    /// Layout (all integers little-endian), 48 bytes:
    ///
    /// ```text
    /// offset  size  field
    ///      0     8  magic       "APIARYWL"
    ///      8     4  version     u32, SEGMENT_FORMAT_VERSION
    ///     12     4  reserved    zero
    ///     16     8  index       u64, the number in the file name
    ///     24     8  first_seq   u64, sequence number of the segment's first record
    ///     32     4  crc         CRC-32 of bytes 0..32
    ///     36    12  reserved    zero
    ///     48        first record
    /// ```
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.index.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..32]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(SegmentHeader::decode(&bytes), Ok(*self));
        bytes
    }

    /// Decodes and checks a segment header; the error is the reason it is not one.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(format!("segment file is {} bytes, shorter than its header", bytes.len()));
        };
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[0..32]) != crc {
            return Err("segment header CRC mismatch".to_string());
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a segment file (bad magic)".to_string());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SEGMENT_FORMAT_VERSION {
            return Err(format!("unknown segment format version {version}"));
        }
        if bytes[12..16].iter().chain(&bytes[36..48]).any(|&byte| byte != 0) {
            return Err("reserved segment header bytes are not zero".to_string());
        }
        let header = SegmentHeader { index: u64_at(16), first_seq: u64_at(24) };
        if header.first_seq == 0 {
            return Err("segment's first sequence number is 0".to_string());
        }
        Ok(header)
    }
}

pub(crate) fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}{SEGMENT_SUFFIX}"))
}

/// What a directory entry is to the log.
pub(crate) enum EntryName {
    Segment(u64),
    /// A segment whose creation did not finish; it holds no records.
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

    /// Creates segment `index` of `segment_bytes` zeros with its header, durably, and maps it.
    pub(crate) fn create(dir: &Path, index: u64, first_seq: u64, segment_bytes: usize) -> Result<Segment, WalError> {
        assert!(segment_bytes >= SEGMENT_HEADER_BYTES && segment_bytes.is_multiple_of(RECORD_ALIGNMENT));
        let path = segment_path(dir, index);
        let temporary = path.with_extension("wal.tmp");
        let file = write_new_segment(&temporary, SegmentHeader { index, first_seq }, segment_bytes)
            .map_err(WalError::io(|| format!("create segment {index} ({})", temporary.display())))?;
        fs::rename(&temporary, &path).map_err(WalError::io(|| format!("rename new segment {index} into place")))?;
        sync_dir(dir)?;
        let map = SegmentMap::map(&file).map_err(WalError::io(|| format!("map segment {index}")))?;
        assert_eq!(map.len(), segment_bytes);
        let end = SEGMENT_HEADER_BYTES;
        Ok(Segment { index, first_seq, map, end, capacity: segment_bytes, records: 0 })
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

/// Zeros first, over the whole file, so later syncs of the mapping write over allocated,
/// written blocks (much faster than syncing unwritten extents); then the header; then sync.
fn write_new_segment(path: &Path, header: SegmentHeader, segment_bytes: usize) -> std::io::Result<File> {
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut written = 0;
    while written < segment_bytes {
        let chunk = ZERO_CHUNK_BYTES.min(segment_bytes - written);
        file.write_all(&zeros[..chunk])?;
        written += chunk;
    }
    std::os::unix::fs::FileExt::write_all_at(&file, &header.encode(), 0)?;
    file.sync_all()?;
    Ok(file)
}

/// Makes the directory's entries (created, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(WalError::io(|| format!("sync WAL directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader { index: 3, first_seq: 77 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for at in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert!(SegmentHeader::decode(&damaged).is_err(), "flip at {at} went unnoticed");
        }
        assert!(SegmentHeader::decode(&bytes[..20]).is_err());
    }

    #[test]
    fn names() {
        let dir = Path::new("/x");
        let name = segment_path(dir, 12).file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, "00000000000000000012.wal");
        assert!(matches!(classify(&name), EntryName::Segment(12)));
        assert!(matches!(classify("00000000000000000012.wal.tmp"), EntryName::Temporary));
        assert!(matches!(classify("LOCK"), EntryName::Other));
        assert!(matches!(classify("12.wal"), EntryName::Other));
    }
}

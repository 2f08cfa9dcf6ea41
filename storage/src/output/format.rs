//! The bytes of the output store's files: pack and index names, the chunk header, the
//! index header and index entries. Each layout is drawn next to its encoder; decoders check
//! everything they can and say why a field is refused.

use std::path::{Path, PathBuf};

use super::MAX_OUTPUT_BYTES_PER_TASK;

pub(crate) const CHUNK_HEADER_BYTES: usize = 32;
pub(crate) const INDEX_HEADER_BYTES: usize = 64;
pub(crate) const INDEX_ENTRY_BYTES: usize = 32;
/// The most data one chunk holds; a longer write becomes several chunks.
pub(crate) const MAX_CHUNK_DATA_BYTES: usize = 1 << 20;
const _: () = assert!(MAX_CHUNK_DATA_BYTES as u64 <= u32::MAX as u64);
const _: () = assert!(MAX_CHUNK_DATA_BYTES as u64 <= MAX_OUTPUT_BYTES_PER_TASK);

const CHUNK_MAGIC: [u8; 4] = *b"APCK";
const INDEX_MAGIC: [u8; 8] = *b"APIARYOX";
const INDEX_FORMAT_VERSION: u32 = 1;
const PACK_SUFFIX: &str = ".pack";
const INDEX_SUFFIX: &str = ".idx";
/// Files being made (an index before its rename): never trusted, removed at open.
const TEMPORARY_SUFFIX: &str = ".tmp";
/// Decimal digits of a pack number in file names.
const NUMBER_DIGITS: usize = 10;

pub(crate) fn pack_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:010}{PACK_SUFFIX}"))
}

pub(crate) fn index_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:010}{INDEX_SUFFIX}"))
}

/// Where an index is written before it is synced and renamed into place.
pub(crate) fn temporary_index_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:010}{INDEX_SUFFIX}{TEMPORARY_SUFFIX}"))
}

/// What a directory entry is to the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryName {
    Pack(u64),
    Index(u64),
    /// An index being written when the store stopped: never trusted.
    Temporary,
    Other,
}

pub(crate) fn classify(file_name: &str) -> EntryName {
    if file_name.ends_with(TEMPORARY_SUFFIX) {
        return EntryName::Temporary;
    }
    let number = |digits: &str| {
        (digits.len() == NUMBER_DIGITS && digits.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
    };
    if let Some(number) = file_name.strip_suffix(PACK_SUFFIX).and_then(number) {
        return EntryName::Pack(number);
    }
    if let Some(number) = file_name.strip_suffix(INDEX_SUFFIX).and_then(number) {
        return EntryName::Index(number);
    }
    EntryName::Other
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The header in front of every chunk of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub run_id: u64,
    /// Where the chunk's first byte lies in the run's output.
    pub run_offset: u64,
    pub data_len: u32,
    pub crc: u32,
}

impl ChunkHeader {
    /// Layout (integers little-endian), 32 bytes, then `data_len` bytes of data; the next
    /// chunk starts right after the data (no padding):
    ///
    /// ```text
    /// offset  size  field
    ///      0     4  magic       "APCK"
    ///      4     4  data_len    u32, 1..=1 MiB
    ///      8     8  run_id      u64
    ///     16     8  run_offset  u64, where the data starts in the run's output
    ///     24     4  crc         CRC-32 of bytes 0..24, bytes 28..32, then the data
    ///     28     4  reserved    zero
    ///     32        data
    /// ```
    pub(crate) fn encode(run_id: u64, run_offset: u64, data: &[u8], out: &mut Vec<u8>) {
        assert!(!data.is_empty() && data.len() <= MAX_CHUNK_DATA_BYTES);
        let start = out.len();
        out.extend_from_slice(&CHUNK_MAGIC);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&run_id.to_le_bytes());
        out.extend_from_slice(&run_offset.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        let crc = chunk_crc(&out[start..start + CHUNK_HEADER_BYTES], data);
        out[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(data);
    }

    /// Decodes a chunk header; the data's CRC is checked by [`ChunkHeader::check_data`].
    pub(crate) fn decode(bytes: &[u8; CHUNK_HEADER_BYTES]) -> Result<ChunkHeader, String> {
        if bytes[0..4] != CHUNK_MAGIC {
            return Err("not a chunk header (bad magic)".to_string());
        }
        if bytes[28..32] != [0; 4] {
            return Err("reserved chunk header bytes are not zero".to_string());
        }
        let header = ChunkHeader {
            run_id: u64_at(bytes, 8),
            run_offset: u64_at(bytes, 16),
            data_len: u32_at(bytes, 4),
            crc: u32_at(bytes, 24),
        };
        if header.data_len == 0 || header.data_len as usize > MAX_CHUNK_DATA_BYTES {
            return Err(format!("chunk length {} is not in 1..={MAX_CHUNK_DATA_BYTES}", header.data_len));
        }
        let end = header.run_offset.checked_add(u64::from(header.data_len));
        if end.is_none_or(|end| end > MAX_OUTPUT_BYTES_PER_TASK) {
            return Err(format!("chunk ends past the output limit of {MAX_OUTPUT_BYTES_PER_TASK} bytes"));
        }
        Ok(header)
    }

    /// Checks the CRC over the header (as read) and the chunk's data.
    pub(crate) fn check_data(&self, header_bytes: &[u8; CHUNK_HEADER_BYTES], data: &[u8]) -> Result<(), String> {
        if chunk_crc(header_bytes, data) == self.crc { Ok(()) } else { Err("chunk CRC mismatch".to_string()) }
    }
}

fn chunk_crc(header_bytes: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_bytes[0..24]);
    hasher.update(&header_bytes[28..32]);
    hasher.update(data);
    hasher.finalize()
}

/// One chunk of a pack as its index lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct IndexEntry {
    pub run_id: u64,
    pub run_offset: u64,
    /// Where the chunk's header starts in the pack; its data follows the header.
    pub pack_offset: u64,
    pub data_len: u32,
}

impl IndexEntry {
    /// Layout (integers little-endian), 32 bytes; entries are sorted by (run_id,
    /// run_offset), and no two share both:
    ///
    /// ```text
    /// offset  size  field
    ///      0     8  run_id
    ///      8     8  run_offset
    ///     16     8  pack_offset  u64, of the chunk's header
    ///     24     4  data_len     u32
    ///     28     4  crc          CRC-32 of bytes 0..28
    /// ```
    pub(crate) fn encode(&self) -> [u8; INDEX_ENTRY_BYTES] {
        let mut bytes = [0u8; INDEX_ENTRY_BYTES];
        bytes[0..8].copy_from_slice(&self.run_id.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.run_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.pack_offset.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.data_len.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<IndexEntry, String> {
        if crc32fast::hash(&bytes[0..28]) != u32_at(bytes, 28) {
            return Err("index entry CRC mismatch".to_string());
        }
        Ok(IndexEntry {
            run_id: u64_at(bytes, 0),
            run_offset: u64_at(bytes, 8),
            pack_offset: u64_at(bytes, 16),
            data_len: u32_at(bytes, 24),
        })
    }

    /// Where the chunk's data starts in the pack.
    pub(crate) fn data_offset(&self) -> u64 {
        self.pack_offset + CHUNK_HEADER_BYTES as u64
    }
}

/// What an index says about its pack as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexHeader {
    pub pack_number: u64,
    /// The pack file's length: every byte of it is a whole, checked chunk.
    pub pack_bytes: u64,
    pub entry_count: u64,
    /// Smallest and largest run id among the entries; `u64::MAX` and 0 when there are none.
    pub min_run_id: u64,
    pub max_run_id: u64,
}

impl IndexHeader {
    /// Layout (integers little-endian), 64 bytes, then `entry_count` entries:
    ///
    /// ```text
    /// offset  size  field
    ///      0     8  magic        "APIARYOX"
    ///      8     4  version      u32, 1
    ///     12     4  crc          CRC-32 of bytes 0..12, then bytes 16..64
    ///     16     8  pack_number  u64, the number in both file names
    ///     24     8  pack_bytes   u64, the pack file's length
    ///     32     8  entry_count  u64
    ///     40     8  min_run_id   u64
    ///     48     8  max_run_id   u64
    ///     56     8  reserved     zero
    ///     64        entries
    /// ```
    pub(crate) fn encode(&self) -> [u8; INDEX_HEADER_BYTES] {
        let mut bytes = [0u8; INDEX_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&INDEX_MAGIC);
        bytes[8..12].copy_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.pack_number.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.pack_bytes.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.entry_count.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.min_run_id.to_le_bytes());
        bytes[48..56].copy_from_slice(&self.max_run_id.to_le_bytes());
        let crc = index_header_crc(&bytes);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(IndexHeader::decode(&bytes), Ok(*self));
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<IndexHeader, String> {
        let Some(bytes) = bytes.get(..INDEX_HEADER_BYTES) else {
            return Err(format!("index file is {} bytes, shorter than its header", bytes.len()));
        };
        if bytes[0..8] != INDEX_MAGIC {
            return Err("not an index file (bad magic)".to_string());
        }
        if u32_at(bytes, 8) != INDEX_FORMAT_VERSION {
            return Err(format!("unknown index format version {}", u32_at(bytes, 8)));
        }
        if index_header_crc(bytes) != u32_at(bytes, 12) {
            return Err("index header CRC mismatch".to_string());
        }
        if bytes[56..64] != [0; 8] {
            return Err("reserved index header bytes are not zero".to_string());
        }
        Ok(IndexHeader {
            pack_number: u64_at(bytes, 16),
            pack_bytes: u64_at(bytes, 24),
            entry_count: u64_at(bytes, 32),
            min_run_id: u64_at(bytes, 40),
            max_run_id: u64_at(bytes, 48),
        })
    }

    /// The index file's length this header implies.
    pub(crate) fn file_bytes(&self) -> u64 {
        INDEX_HEADER_BYTES as u64 + self.entry_count * INDEX_ENTRY_BYTES as u64
    }
}

fn index_header_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..12]);
    hasher.update(&bytes[16..64]);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/x");
        let name = |path: PathBuf| path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name(pack_path(dir, 12)), "0000000012.pack");
        assert_eq!(classify(&name(pack_path(dir, 12))), EntryName::Pack(12));
        assert_eq!(classify(&name(index_path(dir, 12))), EntryName::Index(12));
        assert_eq!(classify(&name(temporary_index_path(dir, 12))), EntryName::Temporary);
        assert_eq!(classify("12.pack"), EntryName::Other);
        assert_eq!(classify("000000"), EntryName::Other);
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_chunk_is_noticed() {
        let mut bytes = Vec::new();
        ChunkHeader::encode(7, 100, b"hello", &mut bytes);
        assert_eq!(bytes.len(), CHUNK_HEADER_BYTES + 5);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            let header_bytes: [u8; CHUNK_HEADER_BYTES] = damaged[..CHUNK_HEADER_BYTES].try_into().unwrap();
            let checked = ChunkHeader::decode(&header_bytes)
                .and_then(|header| header.check_data(&header_bytes, &damaged[CHUNK_HEADER_BYTES..]));
            assert!(checked.is_err(), "flip at {at} went unnoticed");
        }
        let header_bytes: [u8; CHUNK_HEADER_BYTES] = bytes[..CHUNK_HEADER_BYTES].try_into().unwrap();
        let header = ChunkHeader::decode(&header_bytes).unwrap();
        assert_eq!((header.run_id, header.run_offset, header.data_len), (7, 100, 5));
        header.check_data(&header_bytes, b"hello").unwrap();
    }

    #[test]
    fn index_header_and_entries_round_trip_and_notice_damage() {
        let header = IndexHeader { pack_number: 3, pack_bytes: 4096, entry_count: 2, min_run_id: 5, max_run_id: 9 };
        let bytes = header.encode();
        assert_eq!(IndexHeader::decode(&bytes), Ok(header));
        for at in 0..INDEX_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x01;
            assert!(IndexHeader::decode(&damaged).is_err(), "flip at {at} went unnoticed");
        }
        let entry = IndexEntry { run_id: 5, run_offset: 10, pack_offset: 64, data_len: 3 };
        let bytes = entry.encode();
        assert_eq!(IndexEntry::decode(&bytes), Ok(entry));
        for at in 0..INDEX_ENTRY_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x01;
            assert!(IndexEntry::decode(&damaged).is_err(), "flip at {at} went unnoticed");
        }
    }
}

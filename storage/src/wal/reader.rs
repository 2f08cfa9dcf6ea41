//! [`read_records`]: reading durable records of a log directory from another thread while
//! the writer is live (a snapshot thread replaying records `from_seq..=upto_seq`).
//!
//! It takes no lock and opens the segment files read-only, with its own mappings. That is
//! sound because the records it reads never change: the caller asks only for records that
//! are durable (`upto_seq <= Wal::durable_seq()`), which the writer never writes again;
//! the writer never shrinks a file; a segment holding a durable record is already renamed
//! into place (the job that made it durable did that); and deletion only removes segments
//! whose records all come before what the caller asks for. The reader never forms a slice
//! past the last record it needs (see `ReadOnlyMap`). Every record's CRC and sequence
//! number is checked.

use std::fmt;
use std::fs::{self, File};
use std::path::Path;

use super::error::WalError;
use super::mmap::ReadOnlyMap;
use super::record::{Decoded, RECORD_ALIGNMENT, RECORD_HEADER_BYTES, RecordRef, decode, record_bytes};
use super::segment::{self, EntryName, SEGMENT_HEADER_BYTES, SegmentHeader};

/// Why [`read_records`] stopped.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The log could not be read, or does not hold the records asked for.
    Wal(WalError),
    /// The visitor returned an error.
    Visit(E),
}

impl<E: fmt::Display> fmt::Display for ReadError<E> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Wal(error) => write!(formatter, "reading the WAL failed: {error}"),
            ReadError::Visit(error) => write!(formatter, "a visited WAL record was refused: {error}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ReadError<E> {}

/// Calls `visit` with each record `from_seq..=upto_seq` of the log in `dir`, in order, with
/// 16-byte-aligned payloads. The records must be durable (at most `Wal::durable_seq`) and
/// not given up by `Wal::remove_segments_through`. Fails with `WalError::Corrupted` when a
/// record is damaged or out of sequence, or when the log does not hold them all.
pub fn read_records<E>(
    dir: &Path,
    from_seq: u64,
    upto_seq: u64,
    mut visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    assert!(from_seq >= 1, "sequence numbers start at 1");
    if from_seq > upto_seq {
        return Ok(());
    }
    let indices = list_segments(dir).map_err(ReadError::Wal)?;
    let start = find_start(dir, &indices, from_seq).map_err(ReadError::Wal)?;
    let mut next_seq = from_seq;
    for &index in &indices[start..] {
        let (map, header) = open_segment(dir, index).map_err(ReadError::Wal)?;
        if header.first_seq > next_seq {
            let reason = format!("records {next_seq}..{} are not in the log", header.first_seq);
            return Err(ReadError::Wal(WalError::corrupted(index, 0, reason)));
        }
        next_seq = read_segment(&map, index, header.first_seq, next_seq, upto_seq, &mut visit)?;
        if next_seq > upto_seq {
            return Ok(());
        }
    }
    let reason = format!("the log ends before record {next_seq} (asked for up to {upto_seq})");
    Err(ReadError::Wal(WalError::corrupted(indices.last().copied().unwrap_or(0), 0, reason)))
}

/// Visits the records of one segment from `next_seq` to `upto_seq`; returns the sequence
/// number after the last record read (the segment's end, or `upto_seq + 1`).
fn read_segment<E>(
    map: &ReadOnlyMap,
    index: u64,
    first_seq: u64,
    mut next_seq: u64,
    upto_seq: u64,
    visit: &mut impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<u64, ReadError<E>> {
    let usable = map.len() / RECORD_ALIGNMENT * RECORD_ALIGNMENT;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut seq = first_seq;
    // Only read a header when the record it starts is one we need: it is durable, so stable.
    while seq <= upto_seq && offset + RECORD_HEADER_BYTES <= usable {
        let header = map.stable_prefix(offset + RECORD_HEADER_BYTES);
        let payload_len = u32::from_le_bytes(header[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let record_end = (offset + record_bytes(payload_len)).min(usable);
        let record = match decode(map.stable_prefix(record_end), offset) {
            Decoded::End => break,
            Decoded::Record(record) if record.seq == seq => record,
            Decoded::Record(record) => {
                let reason = format!("record has sequence number {} where {seq} was expected", record.seq);
                return Err(ReadError::Wal(WalError::corrupted(index, offset, reason)));
            }
            Decoded::Invalid(reason) => return Err(ReadError::Wal(WalError::corrupted(index, offset, reason))),
        };
        if seq >= next_seq {
            visit(record).map_err(ReadError::Visit)?;
            next_seq = seq + 1;
        }
        offset += record_bytes(record.payload.len());
        seq += 1;
    }
    Ok(next_seq.max(seq))
}

/// The position of the newest segment starting at or before `from_seq`. Older segments are
/// never opened: deletion may be removing them.
fn find_start(dir: &Path, indices: &[u64], from_seq: u64) -> Result<usize, WalError> {
    for position in (0..indices.len()).rev() {
        let (_, header) = open_segment(dir, indices[position])?;
        if header.first_seq <= from_seq {
            return Ok(position);
        }
    }
    Ok(0)
}

fn open_segment(dir: &Path, index: u64) -> Result<(ReadOnlyMap, SegmentHeader), WalError> {
    let path = segment::segment_path(dir, index);
    let file = File::open(&path).map_err(WalError::io(|| format!("open segment {index} ({})", path.display())))?;
    let len = file.metadata().map_err(WalError::io(|| format!("stat segment {index}")))?.len();
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Err(WalError::corrupted(index, 0, "segment file is shorter than its header"));
    }
    let map = ReadOnlyMap::map(&file).map_err(WalError::io(|| format!("map segment {index}")))?;
    // A segment in place has its header on disk, never written again.
    let header = SegmentHeader::decode(map.stable_prefix(SEGMENT_HEADER_BYTES))
        .map_err(|reason| WalError::corrupted(index, 0, reason))?;
    Ok((map, header))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let entries = fs::read_dir(dir).map_err(WalError::io(|| format!("list WAL directory {}", dir.display())))?;
    let mut indices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(WalError::io(|| format!("list WAL directory {}", dir.display())))?;
        if let EntryName::Segment(index) = segment::classify(&entry.file_name().to_string_lossy()) {
            indices.push(index);
        }
    }
    indices.sort_unstable();
    Ok(indices)
}

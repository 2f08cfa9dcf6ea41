//! Opening an existing log: every segment's header and every record is verified; a torn
//! tail is cut (zeroed on disk and synced); anything else that is wrong is corruption.
//!
//! The rules, for a log whose segments are numbered `a..=z`:
//!
//! - Segment numbers are contiguous, and each segment's first sequence number follows the
//!   previous segment's last record.
//! - In a segment, records follow each other with sequence numbers `first_seq, first_seq + 1,
//!   ...` until a header of zeros, or until there is no room for another header.
//! - Segments before the last were synced in full before the writer moved on, so any
//!   non-zero byte after their last valid record is corruption.
//! - In the last segment, the first bad spot (failed CRC, length past the end, a sequence
//!   number that is not the next one, or non-zero bytes after a header of zeros) starts a torn
//!   tail, unless a valid record with a sequence number at least the expected one follows in
//!   the segment: then the bad spot sits in front of records that may have been acknowledged,
//!   and it is corruption. Stale records with lower sequence numbers (an older generation)
//!   are part of the tail.
//! - Trailing segments whose header is unreadable but whose body is all zeros hold nothing:
//!   their creation was interrupted. They are removed (and reported with the tail) if an
//!   earlier segment, or being segment 0, says where the log resumes.
//!
//! The trade-off: if power fails while a sync is writing pages back, a later page can land
//! while an earlier one does not. The earlier record then looks corrupt, with a valid later
//! record behind it, and opening refuses the log. That costs an operator's attention; the
//! other choice, silently dropping records that may have been acknowledged, costs data.

use std::fmt;
use std::fs;
use std::path::Path;

use super::error::WalError;
use super::mmap::SegmentMap;
use super::record::{Decoded, RECORD_ALIGNMENT, RECORD_HEADER_BYTES, decode, peek_seq, record_bytes};
use super::segment::{self, EntryName, SEGMENT_HEADER_BYTES, Segment, SegmentHeader};

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records in the log.
    pub records: u64,
    /// Sequence number of the last record (0 for an empty log).
    pub last_seq: u64,
    /// Where the log was cut, if it ended in a torn write.
    pub torn_tail: Option<TornTail>,
}

/// A torn tail cut from the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    /// Offset in the segment where the cut starts; appending resumes here.
    pub offset: u64,
    /// Non-zero bytes that were zeroed from `offset` on (in later segments too).
    pub bytes_cut: u64,
}

impl fmt::Display for TornTail {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "segment {} at offset {}: {} bytes cut", self.segment, self.offset, self.bytes_cut)
    }
}

/// What verifying one segment found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    pub records: u64,
    /// Offset just past the last valid record.
    pub end: usize,
    /// Non-zero bytes from `end` on that belong to a torn tail and must be zeroed.
    pub bytes_to_cut: usize,
}

/// Verifies segment `index`, whose usable bytes (header included, length a multiple of 16)
/// are `bytes` and whose first record should have sequence number `first_seq`.
pub(crate) fn scan_segment(bytes: &[u8], index: u64, first_seq: u64, is_last: bool) -> Result<SegmentScan, WalError> {
    assert!(bytes.len() >= SEGMENT_HEADER_BYTES && bytes.len().is_multiple_of(RECORD_ALIGNMENT));
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected_seq = first_seq;
    let stop_reason = loop {
        match decode(bytes, offset) {
            Decoded::End => break None,
            Decoded::Record(record) if record.seq == expected_seq => {
                offset += record_bytes(record.payload.len());
                expected_seq += 1;
            }
            Decoded::Record(record) => {
                break Some(format!("record has sequence number {} where {expected_seq} was expected", record.seq));
            }
            Decoded::Invalid(reason) => break Some(reason),
        }
    };
    let records = expected_seq - first_seq;
    let bytes_to_cut = bytes[offset..].iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    if bytes_to_cut == 0 {
        return Ok(SegmentScan { records, end: offset, bytes_to_cut: 0 });
    }
    let reason = stop_reason.unwrap_or_else(|| "non-zero bytes after the last record".to_string());
    if !is_last {
        return Err(WalError::corrupted(index, offset, format!("{reason} (in a segment that was fully synced)")));
    }
    if let Some((later_offset, later_seq)) = find_record_at_or_after(bytes, offset, expected_seq) {
        let reason = format!("{reason}, but a valid record {later_seq} follows at offset {later_offset}");
        return Err(WalError::corrupted(index, offset, reason));
    }
    Ok(SegmentScan { records, end: offset, bytes_to_cut })
}

/// Finds a valid record at or after `from` whose sequence number is at least `expected_seq`.
fn find_record_at_or_after(bytes: &[u8], from: usize, expected_seq: u64) -> Option<(usize, u64)> {
    // A segment cannot hold more records than this, so no valid record of this segment has
    // a larger sequence number; checking the range first skips the CRC of random bytes.
    let max_seq = expected_seq.saturating_add((bytes.len() / RECORD_HEADER_BYTES) as u64);
    (from..bytes.len()).step_by(RECORD_ALIGNMENT).find_map(|offset| {
        let seq = peek_seq(bytes, offset)?;
        if !(expected_seq..=max_seq).contains(&seq) {
            return None;
        }
        match decode(bytes, offset) {
            Decoded::Record(record) if record.seq >= expected_seq => Some((offset, record.seq)),
            _ => None,
        }
    })
}

/// Verifies the log in `dir` and maps its segments. Returns no segments for an empty log.
pub(crate) fn recover(dir: &Path) -> Result<(Vec<Segment>, Recovery), WalError> {
    let mut indices = list_segments(dir)?;
    let dropped_bytes = drop_uncreated_last_segments(dir, &mut indices)?;
    check_contiguous(&indices)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(indices.len());
    let mut torn_tail = None;
    for (position, &index) in indices.iter().enumerate() {
        let is_last = position + 1 == indices.len();
        let expected_first_seq = segments.last().map(|previous| previous.last_seq() + 1);
        let (segment, bytes_cut) = recover_segment(dir, index, expected_first_seq, is_last)?;
        if bytes_cut > 0 || (is_last && dropped_bytes.is_some()) {
            let bytes_cut = (bytes_cut + dropped_bytes.unwrap_or(0)) as u64;
            torn_tail = Some(TornTail { segment: index, offset: segment.end as u64, bytes_cut });
        }
        segments.push(segment);
    }
    if let (None, Some(bytes_cut)) = (indices.last(), dropped_bytes) {
        // The only segment, number 0, was unfinished; the writer starts the log afresh.
        torn_tail = Some(TornTail { segment: 0, offset: SEGMENT_HEADER_BYTES as u64, bytes_cut: bytes_cut as u64 });
    }
    let records = segments.iter().map(|segment| segment.records).sum();
    let last_seq = segments.last().map_or(0, Segment::last_seq);
    Ok((segments, Recovery { records, last_seq, torn_tail }))
}

/// Maps and verifies one segment, cutting its torn tail if it has one.
fn recover_segment(
    dir: &Path,
    index: u64,
    expected_first_seq: Option<u64>,
    is_last: bool,
) -> Result<(Segment, usize), WalError> {
    let Some(map) = map_segment(dir, index)? else {
        return Err(WalError::corrupted(index, 0, "segment file is shorter than its header"));
    };
    let header = SegmentHeader::decode(map.bytes()).map_err(|reason| WalError::corrupted(index, 0, reason))?;
    if header.index != index {
        return Err(WalError::corrupted(index, 0, format!("segment header says it is segment {}", header.index)));
    }
    if let Some(expected) = expected_first_seq.filter(|&expected| expected != header.first_seq) {
        let reason = format!("segment starts at sequence number {} where {expected} was expected", header.first_seq);
        return Err(WalError::corrupted(index, 0, reason));
    }
    let capacity = map.len() / RECORD_ALIGNMENT * RECORD_ALIGNMENT;
    let scan = scan_segment(&map.bytes()[..capacity], index, header.first_seq, is_last)?;
    let mut segment =
        Segment { index, first_seq: header.first_seq, map, end: scan.end, capacity, records: scan.records };
    if scan.bytes_to_cut > 0 {
        segment.map.zero(scan.end, scan.bytes_to_cut);
        segment
            .map
            .sync_range(scan.end, scan.bytes_to_cut)
            .map_err(WalError::io(|| format!("sync the torn tail cut from segment {index}")))?;
    }
    Ok((segment, scan.bytes_to_cut))
}

/// Maps segment `index`, or returns `None` if its file is too short to hold a header.
fn map_segment(dir: &Path, index: u64) -> Result<Option<SegmentMap>, WalError> {
    let path = segment::segment_path(dir, index);
    let len = fs::metadata(&path).map_err(WalError::io(|| format!("stat segment {index}")))?.len();
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Ok(None);
    }
    Segment::map_existing(dir, index).map(Some)
}

/// Segment numbers in `dir`, sorted; removes leftovers of interrupted segment creations.
fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let entries = fs::read_dir(dir).map_err(WalError::io(|| format!("list WAL directory {}", dir.display())))?;
    let mut indices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(WalError::io(|| format!("list WAL directory {}", dir.display())))?;
        let name = entry.file_name();
        match segment::classify(&name.to_string_lossy()) {
            EntryName::Segment(index) => indices.push(index),
            EntryName::Temporary => {
                let path = entry.path();
                fs::remove_file(&path)
                    .map_err(WalError::io(|| format!("remove unfinished segment {}", path.display())))?;
            }
            EntryName::Other => {}
        }
    }
    indices.sort_unstable();
    Ok(indices)
}

fn check_contiguous(indices: &[u64]) -> Result<(), WalError> {
    for pair in indices.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(WalError::corrupted(pair[0] + 1, 0, "segment file is missing"));
        }
    }
    Ok(())
}

/// Removes trailing segments whose header is unreadable and whose body is all zeros (their
/// creation never finished, or a test zeroed them: either way they hold no record), as long
/// as the log still knows where to resume: an earlier segment, or being segment 0.
/// Returns the non-zero bytes the removed files held, if any file was removed.
fn drop_uncreated_last_segments(dir: &Path, indices: &mut Vec<u64>) -> Result<Option<usize>, WalError> {
    let mut dropped_bytes = None;
    while let Some(&index) = indices.last() {
        let path = segment::segment_path(dir, index);
        let bytes = fs::read(&path).map_err(WalError::io(|| format!("read segment {index}")))?;
        let header_error = match SegmentHeader::decode(&bytes) {
            Ok(_) => break,
            Err(reason) => reason,
        };
        let body_is_zero = bytes.get(SEGMENT_HEADER_BYTES..).is_none_or(|body| body.iter().all(|&byte| byte == 0));
        if !body_is_zero || (indices.len() == 1 && index != 0) {
            return Err(WalError::corrupted(index, 0, header_error));
        }
        fs::remove_file(&path).map_err(WalError::io(|| format!("remove unfinished segment {index}")))?;
        segment::sync_dir(dir)?;
        indices.pop();
        let non_zero = bytes.iter().filter(|&&byte| byte != 0).count();
        dropped_bytes = Some(dropped_bytes.unwrap_or(0) + non_zero);
    }
    Ok(dropped_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::encode_header;

    fn segment_with(records: &[(u64, &[u8])], len: usize) -> Vec<u8> {
        let mut bytes = SegmentHeader { index: 0, first_seq: 1 }.encode().to_vec();
        for &(seq, payload) in records {
            bytes.extend_from_slice(&encode_header(1, seq, payload));
            bytes.extend_from_slice(payload);
            bytes.resize(bytes.len().next_multiple_of(RECORD_ALIGNMENT), 0);
        }
        bytes.resize(len, 0);
        bytes
    }

    #[test]
    fn clean_segment() {
        let bytes = segment_with(&[(1, b"a"), (2, b"bb")], 512);
        assert_eq!(
            scan_segment(&bytes, 0, 1, true).unwrap(),
            SegmentScan { records: 2, end: 48 + 96, bytes_to_cut: 0 }
        );
        assert!(scan_segment(&bytes, 0, 1, false).is_ok());
    }

    #[test]
    fn stale_lower_records_are_a_tail_but_a_gap_is_corruption() {
        let bytes = segment_with(&[(1, b"a"), (2, b"bb"), (1, b"old")], 512);
        let scan = scan_segment(&bytes, 0, 1, true).unwrap();
        assert_eq!((scan.records, scan.end, scan.bytes_to_cut > 0), (2, 48 + 96, true));
        let bytes = segment_with(&[(1, b"a"), (3, b"bb")], 512);
        assert!(matches!(scan_segment(&bytes, 0, 1, true), Err(WalError::Corrupted { offset: 96, .. })));
    }

    #[test]
    fn non_zero_bytes_after_the_end_of_a_full_segment_are_corruption() {
        let mut bytes = segment_with(&[(1, b"a")], 512);
        bytes[300] = 1;
        assert!(matches!(scan_segment(&bytes, 4, 1, false), Err(WalError::Corrupted { segment: 4, offset: 96, .. })));
        assert_eq!(scan_segment(&bytes, 4, 1, true).unwrap().bytes_to_cut, 300 - 96 + 1);
    }

    #[test]
    fn display_of_a_torn_tail() {
        let tail = TornTail { segment: 3, offset: 4096, bytes_cut: 120 };
        assert_eq!(tail.to_string(), "segment 3 at offset 4096: 120 bytes cut");
    }
}

//! Opening an existing log as a whole: every segment's header and every record is
//! verified; a torn tail is cut (zeroed on disk and synced); a missing or shortened part is
//! a [`LogLoss`], refused unless the caller accepts it; anything else that is wrong is
//! corruption.
//!
//! The rules, for a log whose segments are numbered `a..=z`:
//!
//! - Segment numbers are contiguous, and each segment's first sequence number follows the
//!   previous segment's last record (unless its header says a loss was accepted before it).
//!   A missing number or a sequence gap is a loss.
//! - `HEAD` names a segment that exists durably: segments `a..=HEAD` must all exist. Later
//!   ones may (their rename was durable, HEAD's update not yet). No HEAD with segments is a
//!   missing last segment, except for a log of version 1 segments, written before HEAD
//!   existed: it gets one.
//! - The caller says which record it needs first (`LogStart::first_needed_seq`, one past
//!   its snapshot). Segments whose records all come before it, except the last, are
//!   leftovers of an interrupted deletion and are removed. A first segment that starts
//!   after it means records are missing; a log that ends before `first_needed_seq - 1`
//!   is missing its end.
//! - A segment file shorter than its header's capacity was cut short: its records after
//!   the cut are missing.
//! - In a segment, records follow each other with sequence numbers `first_seq, first_seq + 1,
//!   ...` until a header of zeros, or until there is no room for another header.
//! - Segments before the last are on disk in full: a segment only gets its name (the sync
//!   job renames its spare into place) after the previous segment's last bytes were synced.
//!   So any non-zero byte after their last valid record is corruption.
//! - In the last segment, the first bad spot (failed CRC, length past the end, a sequence
//!   number that is not the next one, or non-zero bytes after a header of zeros) starts a torn
//!   tail, unless a valid record with a sequence number at least the expected one follows in
//!   the segment: then the bad spot sits in front of records that may have been acknowledged,
//!   and it is corruption. Stale records with lower sequence numbers (an older generation)
//!   are part of the tail.
//! - Files ending in `.tmp` (a spare never renamed into place, an unfinished creation,
//!   `HEAD.tmp`) hold no acknowledged record: they are removed (a spare by the preparer
//!   thread, before it makes a new one: unlinking one is slow).
//!
//! Nothing on disk changes until the whole log was checked: a refused log is left as found.
//!
//! Accepting a loss keeps the consistent prefix: the records from `first_needed_seq` up to
//! the first loss (none if the first needed record is missing). Segments after it are
//! moved to `dropped/` for an operator to look at. The log then continues in a new segment
//! flagged "after an accepted loss" whose first sequence number lies after every record that
//! existed: the highest one found, plus, for each segment whose end is unknown (missing
//! after the last present one, cut short at the end, or any after the last when HEAD is
//! gone), the most records a segment can hold. New records therefore never reuse a number
//! an older record had, and the flag lets the next open accept the gap without asking
//! again. (With neither a segment nor HEAD left, nothing bounds the old numbers: the log
//! continues at `first_needed_seq`.)
//!
//! The trade-off: if power fails while a sync is writing pages back, a later page can land
//! while an earlier one does not. The earlier record then looks corrupt, with a valid later
//! record behind it, and opening refuses the log. That costs an operator's attention; the
//! other choice, silently dropping records that may have been acknowledged, costs data.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::error::WalError;
use super::head::{read_head, write_head};
use super::mmap::SegmentMap;
use super::record::{Decoded, RECORD_ALIGNMENT, RECORD_HEADER_BYTES, decode, peek_seq, record_bytes};
use super::segment::{self, EntryName, SEGMENT_HEADER_BYTES, Segment, SegmentHeader, is_spare, segment_path, sync_dir};
use super::writer::MAX_SEGMENT_BYTES;

/// No segment holds more records than this (each takes at least a record header): the
/// sequence numbers skipped for each segment whose end is unknown after an accepted loss.
const MAX_RECORDS_PER_SEGMENT: u64 = MAX_SEGMENT_BYTES / RECORD_HEADER_BYTES as u64;
/// Where segments dropped by an accepted loss are moved, inside the log directory.
pub(crate) const DROPPED_DIR_NAME: &str = "dropped";

/// What the log must cover, from the caller's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStart {
    /// The first record the caller needs: 1 without a snapshot, `S + 1` after a snapshot
    /// taken at sequence number `S`. Older records may be in the log; they are skipped.
    pub first_needed_seq: u64,
    /// Open a log with missing parts anyway, keeping the records up to the first loss, and
    /// report what was dropped in [`Recovery::dropped`].
    pub accept_loss: bool,
}

impl LogStart {
    /// A log replayed from its first record, refusing any loss.
    pub const FROM_FIRST_RECORD: LogStart = LogStart { first_needed_seq: 1, accept_loss: false };

    /// A log replayed after a snapshot taken at `snapshot_seq`, refusing any loss.
    pub fn after_snapshot(snapshot_seq: u64) -> LogStart {
        LogStart { first_needed_seq: snapshot_seq + 1, accept_loss: false }
    }
}

/// What kind of loss a [`LogLoss`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// The first segment starts after the first needed record.
    MissingFirst,
    /// A segment number is missing between two that exist.
    MissingMiddle,
    /// Segments HEAD says exist are not there (or HEAD is missing, or the log ends before
    /// the first needed record).
    MissingLast,
    /// Two consecutive segments do not chain: records between them are missing.
    SequenceGap,
    /// A segment file is shorter than it was made.
    Shortened,
    /// Segments that exist but follow a loss: moved to `dropped/` when the loss is accepted.
    AfterLoss,
}

/// Records missing from the log, or dropped from it, and the segment files concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLoss {
    pub kind: LossKind,
    /// The segment files concerned, by file name.
    pub segments: String,
    /// The first record concerned.
    pub first_seq: u64,
    /// The last record concerned; `None` when nobody can tell where it ended.
    pub last_seq: Option<u64>,
    /// What was found, e.g. "is shorter than it was made (300 of 512 bytes)".
    pub reason: String,
}

impl fmt::Display for LogLoss {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records = match self.last_seq {
            Some(last_seq) => format!("records {}..={last_seq}", self.first_seq),
            None => format!("records from {} on", self.first_seq),
        };
        match self.kind {
            LossKind::AfterLoss => write!(formatter, "{records} in {} {}", self.segments, self.reason),
            _ => write!(formatter, "{records} are missing: {} {}", self.segments, self.reason),
        }
    }
}

fn segment_name(index: u64) -> String {
    format!("{index:020}.wal")
}

fn segment_names(first: u64, last: u64) -> String {
    if first == last { segment_name(first) } else { format!("{}..={}", segment_name(first), segment_name(last)) }
}

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records kept from `first_needed_seq` on: what `Wal::records` yields.
    pub records: u64,
    /// The sequence number appends continue after: the last record kept (0 for an empty
    /// log), or after an accepted loss a number past every record that existed.
    pub last_seq: u64,
    /// Where the log was cut, if it ended in a torn write.
    pub torn_tail: Option<TornTail>,
    /// What an accepted loss dropped: the missing range first, then the present segments
    /// after it (moved to `dropped/`). Empty when nothing was lost.
    pub dropped: Vec<LogLoss>,
    /// Segments whose records all came before `first_needed_seq`, left by an interrupted
    /// deletion and removed.
    pub removed_before_start: u64,
}

impl fmt::Display for Recovery {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "recovered {} records, appends continue after {}", self.records, self.last_seq)?;
        if let Some(tail) = &self.torn_tail {
            write!(formatter, "; {tail}")?;
        }
        if !self.dropped.is_empty() {
            let dropped: Vec<String> = self.dropped.iter().map(ToString::to_string).collect();
            write!(formatter, "; accepted the loss and dropped {}", dropped.join("; "))?;
        }
        if self.removed_before_start > 0 {
            write!(formatter, "; removed {} segments older than the snapshot", self.removed_before_start)?;
        }
        Ok(())
    }
}

/// A torn tail cut from the end of the log: bytes written after the last sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    /// Offset in the segment where the cut starts; appending resumes here.
    pub offset: u64,
    /// Non-zero bytes that were zeroed from `offset` on.
    pub bytes_cut: u64,
    /// Whole, valid records found in the cut bytes (unsynced ones, or stale ones of an older
    /// generation); a partly written record is not counted.
    pub records_cut: u64,
}

impl fmt::Display for TornTail {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "cut a torn tail of {} bytes holding {} whole records from segment {} at offset {}",
            self.bytes_cut, self.records_cut, self.segment, self.offset
        )
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
    let bytes_to_cut = last_non_zero(&bytes[offset..]).map_or(0, |last| last + 1);
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

/// Where the last non-zero byte is. A segment's unused end is tens of
/// megabytes of zeros, read at every start: whole blocks at a time (which the
/// compiler turns into vector instructions), not byte by byte.
fn last_non_zero(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let mut end = bytes.len();
    for block in bytes.rchunks(BLOCK) {
        let start = end - block.len();
        if block.iter().fold(0, |any, &byte| any | byte) != 0 {
            return block.iter().rposition(|&byte| byte != 0).map(|last| start + last);
        }
        end = start;
    }
    None
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

/// A segment file as found: mapped and scanned, nothing written yet.
struct Found {
    index: u64,
    header: SegmentHeader,
    map: SegmentMap,
    file_len: u64,
    scan: SegmentScan,
}

impl Found {
    fn last_seq(&self) -> u64 {
        self.header.first_seq + self.scan.records - 1
    }

    fn is_short(&self) -> bool {
        self.header.capacity.is_some_and(|capacity| self.file_len < capacity)
    }
}

/// What opening decided, before anything on disk changes.
struct Plan {
    /// `found[..before_start]` hold only records before the first needed one: removed.
    before_start: usize,
    /// `found[before_start..kept_end]` are kept; later ones follow a loss and are dropped.
    kept_end: usize,
    /// The first loss, if any, and what an accepted loss drops.
    dropped: Vec<LogLoss>,
    /// After an accepted loss, the new segment's first sequence number.
    continue_seq: u64,
}

/// Verifies the log in `dir` as a whole, decides what to keep, and only then changes the
/// disk: returns the kept segments, mapped, or [`WalError::Missing`] with nothing changed.
/// Returns no segments when a new segment must start the log (at `recovery.last_seq + 1`,
/// flagged after a loss when `recovery.dropped` is not empty).
/// A log directory as found, every segment mapped and scanned, nothing changed
/// yet: the slow part of opening a log (the unused end of the last segment is
/// read too), which start-up does while it restores its snapshot.
pub struct LogSurvey {
    listing: Listing,
    head: Option<u64>,
    found: Vec<Found>,
}

pub(crate) fn survey_log(dir: &Path) -> Result<LogSurvey, WalError> {
    let listing = list_dir(dir)?;
    let head = read_head(dir)?;
    let found = survey(dir, &listing.indices)?;
    Ok(LogSurvey { listing, head, found })
}

/// Opens the surveyed log; also returns the leftover spares, which the caller
/// removes later, off the start's path (unlinking a 64 MiB file took 25 ms).
pub(crate) fn recover(
    dir: &Path,
    survey: LogSurvey,
    start: LogStart,
) -> Result<(Vec<Segment>, Recovery, Vec<PathBuf>), WalError> {
    let LogSurvey { listing, head, found } = survey;
    let plan = plan(&found, head, start)?;
    if let Some(loss) = plan.dropped.first()
        && !start.accept_loss
    {
        return Err(WalError::Missing { loss: loss.clone() });
    }
    let (spares, others): (Vec<PathBuf>, Vec<PathBuf>) =
        listing.temporaries.into_iter().partition(|path| is_spare(path));
    let (segments, recovery) = apply(dir, &others, found, &plan, start)?;
    Ok((segments, recovery, spares))
}

/// Maps and scans every segment; changes nothing.
fn survey(dir: &Path, indices: &[u64]) -> Result<Vec<Found>, WalError> {
    let mut found = Vec::with_capacity(indices.len());
    for (position, &index) in indices.iter().enumerate() {
        let is_last = position + 1 == indices.len();
        found.push(survey_segment(dir, index, is_last)?);
    }
    Ok(found)
}

fn survey_segment(dir: &Path, index: u64, is_last: bool) -> Result<Found, WalError> {
    let Some(map) = map_segment(dir, index)? else {
        return Err(WalError::corrupted(index, 0, "segment file is shorter than its header"));
    };
    let header = SegmentHeader::decode(map.bytes()).map_err(|reason| WalError::corrupted(index, 0, reason))?;
    if header.index != index {
        return Err(WalError::corrupted(index, 0, format!("segment header says it is segment {}", header.index)));
    }
    let file_len = map.len() as u64;
    let capacity = map.len() / RECORD_ALIGNMENT * RECORD_ALIGNMENT;
    let is_short = header.capacity.is_some_and(|capacity| file_len < capacity);
    // A segment cut short lost its end: what follows its last whole record is part of the loss.
    let scan = scan_segment(&map.bytes()[..capacity], index, header.first_seq, is_last || is_short)?;
    Ok(Found { index, header, map, file_len, scan })
}

/// Decides what to keep and finds the first loss; changes nothing.
fn plan(found: &[Found], head: Option<u64>, start: LogStart) -> Result<Plan, WalError> {
    let first_needed = start.first_needed_seq;
    let before_start = found
        .iter()
        .take(found.len().saturating_sub(1))
        .take_while(|segment| segment.last_seq() < first_needed)
        .count();
    let kept = &found[before_start..];
    let (kept_len, loss) = match kept.first() {
        None => (0, missing_log(head, first_needed)),
        Some(first) if first.header.first_seq > first_needed && !first.header.after_loss => {
            (0, Some(missing_first(first, first_needed)))
        }
        Some(_) => match find_chain_loss(kept)? {
            Some((kept_len, loss)) => (kept_len, Some(loss)),
            None => (kept.len(), missing_end(kept, head, first_needed)),
        },
    };
    let kept_end = before_start + kept_len;
    let mut dropped: Vec<LogLoss> = loss.into_iter().collect();
    dropped.extend(dropped_after_loss(&found[kept_end..]));
    let continue_seq = first_needed.max(next_unused_seq(found, head));
    Ok(Plan { before_start, kept_end, dropped, continue_seq })
}

/// No segment at all: a new log, unless HEAD or a snapshot says there was one.
fn missing_log(head: Option<u64>, first_needed: u64) -> Option<LogLoss> {
    let (segments, reason) = match head {
        Some(head) => (segment_names(0, head), format!("do not exist (HEAD names segment {head})")),
        None if first_needed > 1 => ("all segments".to_string(), "are gone: the log directory holds none".to_string()),
        None => return None,
    };
    Some(LogLoss { kind: LossKind::MissingLast, segments, first_seq: first_needed, last_seq: None, reason })
}

fn missing_first(first: &Found, first_needed: u64) -> LogLoss {
    LogLoss {
        kind: LossKind::MissingFirst,
        segments: format!("segments before {}", segment_name(first.index)),
        first_seq: first_needed,
        last_seq: Some(first.header.first_seq - 1),
        reason: format!("do not exist (the first segment starts at sequence number {})", first.header.first_seq),
    }
}

/// The first loss inside the kept segments, with how many of them stay in the log.
fn find_chain_loss(kept: &[Found]) -> Result<Option<(usize, LogLoss)>, WalError> {
    for (position, segment) in kept.iter().enumerate() {
        let next = kept.get(position + 1);
        if segment.is_short() {
            return Ok(Some((position + 1, shortened(segment, next))));
        }
        let Some(next) = next else { break };
        let expected = segment.last_seq() + 1;
        if next.index != segment.index + 1 {
            let loss = LogLoss {
                kind: LossKind::MissingMiddle,
                segments: segment_names(segment.index + 1, next.index - 1),
                first_seq: expected,
                last_seq: Some(next.header.first_seq - 1),
                reason: "do not exist".to_string(),
            };
            return Ok(Some((position + 1, loss)));
        }
        if next.header.first_seq < expected {
            let reason =
                format!("segment starts at sequence number {} where {expected} was expected", next.header.first_seq);
            return Err(WalError::corrupted(next.index, 0, reason));
        }
        if next.header.first_seq > expected && !next.header.after_loss {
            let loss = LogLoss {
                kind: LossKind::SequenceGap,
                segments: format!("between {} and {}", segment_name(segment.index), segment_name(next.index)),
                first_seq: expected,
                last_seq: Some(next.header.first_seq - 1),
                reason: format!("(segment {} starts at sequence number {})", next.index, next.header.first_seq),
            };
            return Ok(Some((position + 1, loss)));
        }
    }
    Ok(None)
}

fn shortened(segment: &Found, next: Option<&Found>) -> LogLoss {
    let capacity = segment.header.capacity.expect("only version 2 segments know they are short");
    LogLoss {
        kind: LossKind::Shortened,
        segments: segment_name(segment.index),
        first_seq: segment.last_seq() + 1,
        last_seq: next.map(|next| next.header.first_seq - 1),
        reason: format!("is shorter than it was made ({} of {capacity} bytes)", segment.file_len),
    }
}

/// Segments missing after the last one present (per HEAD), or a log that ends before the
/// first needed record.
fn missing_end(kept: &[Found], head: Option<u64>, first_needed: u64) -> Option<LogLoss> {
    let last = kept.last().expect("called with segments");
    let written_before_head = kept.iter().all(|segment| segment.header.capacity.is_none());
    let (segments, reason) = match head {
        Some(head) if head > last.index => {
            (segment_names(last.index + 1, head), format!("do not exist (HEAD names segment {head})"))
        }
        None if !written_before_head => (
            format!("segments after {}", segment_name(last.index)),
            "may be missing: there is no HEAD file to say which segment is the newest".to_string(),
        ),
        _ if last.last_seq() + 1 < first_needed => (
            format!("segments after {}", segment_name(last.index)),
            format!("do not exist (the log ends at {}, before the first needed record)", last.last_seq()),
        ),
        _ => return None,
    };
    Some(LogLoss { kind: LossKind::MissingLast, segments, first_seq: last.last_seq() + 1, last_seq: None, reason })
}

/// Present segments that follow a loss, as one entry.
fn dropped_after_loss(after: &[Found]) -> Option<LogLoss> {
    let (first, last) = (after.first()?, after.last()?);
    Some(LogLoss {
        kind: LossKind::AfterLoss,
        segments: segment_names(first.index, last.index),
        first_seq: first.header.first_seq,
        last_seq: Some(last.last_seq()),
        reason: format!("follow the loss and are moved to {DROPPED_DIR_NAME}/"),
    })
}

/// A sequence number after every record that existed: the highest found, plus the most a
/// segment can hold for each segment whose end nobody knows (missing after the last one
/// present, cut short at the end, or unknown for want of HEAD).
fn next_unused_seq(found: &[Found], head: Option<u64>) -> u64 {
    let highest_found = found.iter().map(Found::last_seq).max().unwrap_or(0);
    let unknown_segments = match (found.last(), head) {
        (None, Some(head)) => head.saturating_add(1),
        (None, None) => 0,
        (Some(last), head) => {
            let after_last = match head {
                Some(head) => head.saturating_sub(last.index),
                None => u64::from(last.header.capacity.is_some()),
            };
            after_last + u64::from(last.is_short())
        }
    };
    highest_found.saturating_add(1).saturating_add(unknown_segments.saturating_mul(MAX_RECORDS_PER_SEGMENT))
}

/// Carries out the plan: removes leftovers, moves dropped segments away, restores a short
/// kept segment's length, cuts the torn tail, and writes HEAD.
fn apply(
    dir: &Path,
    temporaries: &[PathBuf],
    mut found: Vec<Found>,
    plan: &Plan,
    start: LogStart,
) -> Result<(Vec<Segment>, Recovery), WalError> {
    let head_before = read_head(dir)?;
    remove_files(dir, temporaries, "leftover temporary file")?;
    let after_loss = found.split_off(plan.kept_end);
    let kept = found.split_off(plan.before_start);
    let before_start: Vec<PathBuf> = found.iter().map(|segment| segment_path(dir, segment.index)).collect();
    drop(found);
    remove_files(dir, &before_start, "segment older than the first needed record")?;
    move_to_dropped(dir, after_loss)?;
    let is_last_found = plan.dropped.is_empty();
    let kept_count = kept.len();
    let mut torn_tail = None;
    let mut segments = Vec::with_capacity(kept_count);
    for (position, found) in kept.into_iter().enumerate() {
        let is_last = is_last_found && position + 1 == kept_count;
        let (segment, tail) = finish_segment(dir, found, is_last)?;
        torn_tail = torn_tail.or(tail);
        segments.push(segment);
    }
    let records = segments.iter().map(|segment| records_from(segment, start.first_needed_seq)).sum();
    let last_seq = match segments.last() {
        Some(last) if plan.dropped.is_empty() => last.last_seq(),
        _ if plan.dropped.is_empty() => start.first_needed_seq - 1,
        _ => plan.continue_seq - 1,
    };
    if let Some(last) = segments.last().filter(|last| head_before != Some(last.index) && plan.dropped.is_empty()) {
        // A HEAD that names an earlier segment loses nothing (later segments are allowed),
        // so a full disk that refuses the update must not refuse the start: the next
        // rotation's sync job writes HEAD again.
        let _ = write_head(dir, last.index);
    }
    let removed_before_start = before_start.len() as u64;
    let dropped = plan.dropped.clone();
    Ok((segments, Recovery { records, last_seq, torn_tail, dropped, removed_before_start }))
}

/// Records of `segment` with a sequence number of at least `first_needed`.
fn records_from(segment: &Segment, first_needed: u64) -> u64 {
    let first = segment.first_seq.max(first_needed);
    (segment.last_seq() + 1).saturating_sub(first)
}

/// Turns a checked segment into a log segment: a short one gets its length back (zeros),
/// bytes after its last record are zeroed and synced. Returns the torn tail when the
/// segment is the log's last one.
fn finish_segment(dir: &Path, found: Found, is_last: bool) -> Result<(Segment, Option<TornTail>), WalError> {
    let Found { index, header, mut map, file_len, scan } = found;
    let is_short = header.capacity.is_some_and(|capacity| file_len < capacity);
    // A short file's last bytes may not even fill the 16-byte unit the scan stops at.
    let bytes_cut = if is_short { map.len() - scan.end } else { scan.bytes_to_cut };
    let scanned_end =
        (scan.end + bytes_cut).next_multiple_of(RECORD_ALIGNMENT).min(map.len() / RECORD_ALIGNMENT * RECORD_ALIGNMENT);
    let records_cut = count_whole_records(&map.bytes()[..scanned_end], scan.end);
    if bytes_cut > 0 {
        map.zero(scan.end, bytes_cut);
        map.sync_range(scan.end, bytes_cut)
            .map_err(WalError::io(|| format!("sync the tail cut from segment {index}")))?;
    }
    if let Some(capacity) = header.capacity.filter(|_| is_short) {
        drop(map);
        restore_length(dir, index, capacity)?;
        map = Segment::map_existing(dir, index)?;
    }
    let capacity = map.len() / RECORD_ALIGNMENT * RECORD_ALIGNMENT;
    let tail = (is_last && !is_short && bytes_cut > 0).then_some(TornTail {
        segment: index,
        offset: scan.end as u64,
        bytes_cut: bytes_cut as u64,
        records_cut,
    });
    let segment = Segment {
        index,
        first_seq: header.first_seq,
        map,
        end: scan.end,
        capacity,
        records: scan.records,
        after_loss: header.after_loss,
        pending_rename: None,
    };
    Ok((segment, tail))
}

/// Whole, valid records in `bytes[from..]`, walking over what is not one.
fn count_whole_records(bytes: &[u8], from: usize) -> u64 {
    let mut offset = from;
    let mut records = 0;
    while offset < bytes.len() {
        match decode(bytes, offset) {
            Decoded::Record(record) => {
                records += 1;
                offset += record_bytes(record.payload.len());
            }
            _ => offset += RECORD_ALIGNMENT,
        }
    }
    records
}

fn restore_length(dir: &Path, index: u64, capacity: u64) -> Result<(), WalError> {
    let path = segment_path(dir, index);
    let file = OpenOptions::new().write(true).open(&path).map_err(WalError::io(|| format!("open segment {index}")))?;
    file.set_len(capacity).map_err(WalError::io(|| format!("restore the length of segment {index}")))?;
    file.sync_all().map_err(WalError::io(|| format!("sync segment {index}")))
}

/// Unlinks `paths` in order (oldest first), syncing the directory after each, so a crash
/// leaves a contiguous log.
fn remove_files(dir: &Path, paths: &[PathBuf], what: &str) -> Result<(), WalError> {
    for path in paths {
        fs::remove_file(path).map_err(WalError::io(|| format!("remove {what} {}", path.display())))?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Moves segments that follow an accepted loss into `dropped/`, newest first (so what
/// stays in place is always a contiguous log), never overwriting an earlier drop.
fn move_to_dropped(dir: &Path, after_loss: Vec<Found>) -> Result<(), WalError> {
    if after_loss.is_empty() {
        return Ok(());
    }
    let dropped_dir = dir.join(DROPPED_DIR_NAME);
    fs::create_dir_all(&dropped_dir).map_err(WalError::io(|| format!("create {}", dropped_dir.display())))?;
    for found in after_loss.into_iter().rev() {
        let from = segment_path(dir, found.index);
        drop(found);
        let name = from.file_name().expect("a segment file name").to_string_lossy().into_owned();
        let to = (0..)
            .map(|copy| if copy == 0 { dropped_dir.join(&name) } else { dropped_dir.join(format!("{name}.{copy}")) })
            .find(|candidate| !candidate.exists())
            .expect("some name is free");
        fs::rename(&from, &to).map_err(WalError::io(|| format!("move {} to {}", from.display(), to.display())))?;
    }
    sync_dir(&dropped_dir)?;
    sync_dir(dir)
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

/// The log directory's segments and temporary files.
struct Listing {
    /// Segment numbers, sorted.
    indices: Vec<u64>,
    temporaries: Vec<PathBuf>,
}

fn list_dir(dir: &Path) -> Result<Listing, WalError> {
    let entries = fs::read_dir(dir).map_err(WalError::io(|| format!("list WAL directory {}", dir.display())))?;
    let mut listing = Listing { indices: Vec::new(), temporaries: Vec::new() };
    for entry in entries {
        let entry = entry.map_err(WalError::io(|| format!("list WAL directory {}", dir.display())))?;
        match segment::classify(&entry.file_name().to_string_lossy()) {
            EntryName::Segment(index) => listing.indices.push(index),
            EntryName::Temporary => listing.temporaries.push(entry.path()),
            EntryName::Other => {}
        }
    }
    listing.indices.sort_unstable();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::encode_header;

    #[test]
    fn the_last_non_zero_byte_is_found_in_any_block() {
        let mut bytes = vec![0u8; 3 * 4096 + 100];
        assert_eq!(last_non_zero(&bytes), None);
        for at in [0, 4095, 4096, 5000, 3 * 4096 + 99] {
            bytes[at] = 7;
            assert_eq!(last_non_zero(&bytes), Some(at));
        }
    }

    fn segment_with(records: &[(u64, &[u8])], len: usize) -> Vec<u8> {
        let mut bytes = SegmentHeader::new(0, 1, len).encode().to_vec();
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
        let tail = TornTail { segment: 3, offset: 4096, bytes_cut: 120, records_cut: 2 };
        let expected = "cut a torn tail of 120 bytes holding 2 whole records from segment 3 at offset 4096";
        assert_eq!(tail.to_string(), expected);
    }
}

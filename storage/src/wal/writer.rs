//! [`Wal`]: the appender, owned by the daemon's event-loop thread, and [`Records`], the
//! iterator that replays what the log holds.
//!
//! Invariants (checked by [`Wal::check_invariants`]): segments are contiguous and chained by
//! sequence number (a segment after an accepted loss may start later); in each, records fill
//! `SEGMENT_HEADER_BYTES..end` and bytes from `end` to the segment's capacity are zero;
//! `last_seq` is the last record's sequence number; the next sync job starts right after the
//! bytes the previous one covered; only segments started since the previous job wait for
//! their rename into place.
//!
//! Appends go into the segment file with `pwrite` (one per turn's batch, `append_all`), not
//! through the mapping, which only reads: a store through a mapping dirties its whole
//! page-cache folio, and each sync would write 64 KiB or more for a few hundred bytes of
//! records (measured: 34 KB written per task, against 3 KB this way).
//!
//! The writer does no file creation, fsync, rename or unlink on its thread, except when a
//! rotation finds no spare ready (counted in [`Wal::stalled_rotations`]): rotation takes the
//! spare the preparer made and writes the header into it; the next sync job
//! syncs and installs it; segments given up by [`Wal::remove_segments_through`] are
//! unlinked by the preparer.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::WalError;
use super::head::write_head;
use super::mmap::page_bytes;
use super::preparer::Preparer;
use super::record::{RECORD_ALIGNMENT, RECORD_HEADER_BYTES, RecordRef, decode_trusted, encode_header, record_bytes};
use super::recovery::{LogStart, LogSurvey, Recovery, recover, survey_log};
use super::segment::{
    SEGMENT_HEADER_BYTES, Segment, SegmentHeader, create_allocated_file, segment_path, temporary_path,
};
use super::sync::{SyncJob, SyncState, SyncStep};

/// The largest segment a log may be configured with.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest segment holds its header and one record with an empty payload.
const MIN_SEGMENT_BYTES: u64 = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64;
const _: () = assert!(MIN_SEGMENT_BYTES <= DEFAULT_SEGMENT_BYTES && DEFAULT_SEGMENT_BYTES <= MAX_SEGMENT_BYTES);
// Every payload that fits a segment has a length that fits the header's u32.
const _: () = assert!(MAX_SEGMENT_BYTES <= u32::MAX as u64);
const LOCK_FILE_NAME: &str = "LOCK";
/// A record buffer that grew past this for a large batch is let go once written.
const KEPT_RECORD_BUFFER_BYTES: usize = 1 << 20;

/// How a log is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Size of each new segment file: a multiple of 16 between the size of a segment header
    /// plus one record header and [`MAX_SEGMENT_BYTES`]. Segments written with another size
    /// by an earlier run are read as they are.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions { segment_bytes: DEFAULT_SEGMENT_BYTES }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<usize, WalError> {
        let bytes = self.segment_bytes;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&bytes) || !bytes.is_multiple_of(RECORD_ALIGNMENT as u64) {
            let reason = format!(
                "segment_bytes is {bytes}; it must be a multiple of {RECORD_ALIGNMENT} in \
                 {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}"
            );
            return Err(WalError::InvalidOptions { reason });
        }
        Ok(bytes as usize)
    }
}

/// The write-ahead log's writer. Appends go into the segment's file (read through its
/// mapping); durability comes from [`SyncJob`]s that another thread runs.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_bytes: usize,
    /// The largest payload that fits an empty segment of `segment_bytes`.
    max_payload_bytes: usize,
    /// Mapped segments in order; the last one takes appends. Never empty.
    segments: Vec<Segment>,
    last_seq: u64,
    /// The next sync job starts at this segment and offset, with this sequence number.
    unsynced_segment: u64,
    unsynced_offset: usize,
    unsynced_first_seq: u64,
    sync_state: Arc<SyncState>,
    /// `records()` starts here: older records are covered by the caller's snapshot.
    first_needed_seq: u64,
    /// Rotations that found no spare ready and made the file on the writer's thread.
    stalled_rotations: u64,
    /// Records as they are written: header, payload and padding of each, in one `pwrite`.
    record_buffer: Vec<u8>,
    preparer: Preparer,
    /// Held (locked) for as long as the log is open.
    _lock: File,
}

impl Wal {
    /// Opens or creates the log in `dir` (creating the directory) as a whole: verifies every
    /// record, cuts a torn tail (zeroing it on disk and syncing), checks that the log covers
    /// everything from `start.first_needed_seq` on, and refuses corruption before the tail
    /// with [`WalError::Corrupted`] and a missing part with [`WalError::Missing`] (nothing on
    /// disk changed), unless `start.accept_loss`. Starts the preparer thread, stopped when
    /// the `Wal` is dropped.
    pub fn open(dir: &Path, options: WalOptions, start: LogStart) -> Result<(Wal, Recovery), WalError> {
        Wal::open_surveyed(dir, options, start, Wal::survey(dir)?)
    }

    /// Creates `dir` if needed and reads and checks the log in it, changing
    /// nothing: the first half of `open`, which a caller may run on another
    /// thread while it loads its snapshot (and only then knows `LogStart`).
    /// Nothing else may change the directory before `open_surveyed`.
    pub fn survey(dir: &Path) -> Result<LogSurvey, WalError> {
        fs::create_dir_all(dir).map_err(WalError::io(|| format!("create WAL directory {}", dir.display())))?;
        survey_log(dir)
    }

    /// `open` for a log `survey` read.
    pub fn open_surveyed(
        dir: &Path,
        options: WalOptions,
        start: LogStart,
        survey: LogSurvey,
    ) -> Result<(Wal, Recovery), WalError> {
        let segment_bytes = options.validate()?;
        if start.first_needed_seq == 0 {
            return Err(WalError::InvalidOptions { reason: "first_needed_seq is 0; records start at 1".to_string() });
        }
        let lock = lock_dir(dir)?;
        let (mut segments, recovery, leftover_spares) = recover(dir, survey, start)?;
        if segments.is_empty() || !recovery.dropped.is_empty() {
            segments.push(start_log(dir, &segments, &recovery, segment_bytes)?);
        }
        // What was read back may still sit only in the page cache (the previous process may
        // have died before syncing): make it durable before anyone acts on it.
        for segment in &segments {
            segment
                .map
                .sync_range(0, segment.end)
                .map_err(WalError::io(|| format!("sync segment {} after recovery", segment.index)))?;
        }
        let active = segments.last().expect("a log has a segment");
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            max_payload_bytes: segment_bytes - SEGMENT_HEADER_BYTES - RECORD_HEADER_BYTES,
            last_seq: active.last_seq(),
            unsynced_segment: active.index,
            unsynced_offset: active.end,
            unsynced_first_seq: active.last_seq() + 1,
            sync_state: Arc::new(SyncState::new(active.last_seq())),
            first_needed_seq: start.first_needed_seq,
            stalled_rotations: 0,
            record_buffer: Vec::new(),
            preparer: Preparer::start(dir, segment_bytes, active.index + 1, leftover_spares)?,
            segments,
            _lock: lock,
        };
        assert_eq!(wal.last_seq, recovery.last_seq);
        Ok((wal, recovery))
    }

    /// The records from the `first_needed_seq` given at open on, in order.
    pub fn records(&self) -> Records<'_> {
        Records { segments: &self.segments, position: 0, offset: SEGMENT_HEADER_BYTES, from_seq: self.first_needed_seq }
    }

    /// Releases from the process's resident set the pages that opening the log and replaying
    /// [`records()`](Wal::records) brought in. Recovery reads every byte of every segment;
    /// without this, a sealed segment's pages stay resident until it is removed, the active
    /// one's until it is sealed. Released: every page of each sealed segment; the active
    /// segment's pages before the one holding the write head, marked released so that later
    /// sync jobs continue from there; and the active segment's zeros after that page, which
    /// appends never fault in (they go through the file). Only the page holding the write head stays.
    /// The bytes stay in the files and the page cache: `records()` still reads them,
    /// faulting them back in.
    ///
    /// Meant to be called once at start-up, after the replay and before anyone is served:
    /// one or two `madvise` calls per segment take a few milliseconds for a log of hundreds
    /// of megabytes, too long for a busy event loop but nothing next to the replay. A failed
    /// release leaves pages resident and the log as usable as before (memory, not
    /// durability).
    pub fn release_replayed(&mut self) -> Result<(), WalError> {
        let page = page_bytes();
        let (active, sealed) = self.segments.split_last_mut().expect("a log has a segment");
        for segment in sealed {
            release_before(segment, segment.map.len() / page * page)?;
        }
        let head_page = active.end / page * page;
        release_before(active, head_page)?;
        let unwritten_from = (head_page + page).min(active.map.len() / page * page);
        let unwritten_len = active.map.len() / page * page - unwritten_from;
        let index = active.index;
        active
            .map
            .release_unwritten(unwritten_from, unwritten_len)
            .map_err(WalError::io(|| format!("release the unwritten pages of segment {index}")))
    }

    /// Writes a record into the active segment's file (into the page cache), rotating to a
    /// new segment when the current one is full, and returns its sequence number. The
    /// record is not durable until a sync job taken after this call has run.
    pub fn append(&mut self, kind: u16, payload: &[u8]) -> Result<u64, WalError> {
        self.append_all(kind, [payload])
    }

    /// Appends records in order, as `append` does, with one `pwrite` for all of them that
    /// land in one segment; returns the last one's sequence number (`last_seq()` when
    /// there are none). On an error the records before the one that failed are appended.
    pub fn append_all<'a>(&mut self, kind: u16, payloads: impl IntoIterator<Item = &'a [u8]>) -> Result<u64, WalError> {
        if self.sync_state.is_poisoned() {
            return Err(WalError::Poisoned);
        }
        self.record_buffer.clear();
        let mut buffered = 0;
        for payload in payloads {
            if payload.len() > self.max_payload_bytes {
                self.write_buffered(buffered)?;
                return Err(WalError::RecordTooLarge { len: payload.len(), limit: self.max_payload_bytes });
            }
            let needed = record_bytes(payload.len());
            let active = self.segments.last().expect("a log has a segment");
            if active.end + self.record_buffer.len() + needed > active.capacity {
                self.write_buffered(buffered)?;
                buffered = 0;
                self.rotate()?;
            }
            let seq = self.last_seq + buffered + 1;
            self.record_buffer.extend_from_slice(&encode_header(kind, seq, payload));
            self.record_buffer.extend_from_slice(payload);
            self.record_buffer.resize(self.record_buffer.len() + needed - RECORD_HEADER_BYTES - payload.len(), 0);
            buffered += 1;
        }
        self.write_buffered(buffered)?;
        Ok(self.last_seq)
    }

    /// Writes the `records` encoded in `record_buffer` at the active segment's end.
    fn write_buffered(&mut self, records: u64) -> Result<(), WalError> {
        if records == 0 {
            return Ok(());
        }
        let active = self.segments.last_mut().expect("a log has a segment");
        let offset = active.end;
        if let Err(source) = active.map.write_through_file(offset, &self.record_buffer) {
            // Part of the records may be in the page cache: nothing after them may be trusted.
            self.sync_state.poison();
            let (first, last) = (self.last_seq + 1, self.last_seq + records);
            let context = format!("write records {first}..={last} to segment {} at {offset}", active.index);
            return Err(WalError::Io { context, source });
        }
        active.end += self.record_buffer.len();
        active.records += records;
        self.last_seq += records;
        debug_assert_eq!(active.last_seq(), self.last_seq);
        if self.record_buffer.capacity() > KEPT_RECORD_BUFFER_BYTES {
            self.record_buffer = Vec::new();
        }
        self.record_buffer.clear();
        Ok(())
    }

    /// The sequence number of the last record appended (0 if there is none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The last record known to be durable: recovered at open, or covered by a sync job that
    /// succeeded.
    pub fn durable_seq(&self) -> u64 {
        self.sync_state.durable_seq()
    }

    /// Everything appended and every segment started since the previous job, as work a
    /// different thread can do. Jobs must run in the order they were taken. `None` if there
    /// is nothing to do.
    pub fn take_sync_job(&mut self) -> Option<SyncJob> {
        let active = self.segments.last().expect("a log has a segment");
        if self.last_seq < self.unsynced_first_seq && active.pending_rename.is_none() {
            return None;
        }
        let active_index = active.index;
        let first_position = self.position_of(self.unsynced_segment);
        let mut steps = Vec::new();
        let mut installed = None;
        for segment in &mut self.segments[first_position..] {
            // A segment started since the previous job is synced from its header on.
            let start = if segment.index == self.unsynced_segment { self.unsynced_offset } else { 0 };
            if segment.end > start {
                steps.push(SyncStep::Range {
                    segment: segment.index,
                    handle: segment.map.sync_handle(),
                    offset: start,
                    len: segment.end - start,
                    sealed: segment.index != active_index,
                });
            }
            if let Some(from) = segment.pending_rename.take() {
                let to = segment_path(&self.dir, segment.index);
                steps.push(SyncStep::Install { segment: segment.index, from, to });
                installed = Some(segment.index);
            }
        }
        steps.extend(installed.or(self.sync_state.stale_head()).map(|segment| SyncStep::Head { segment }));
        let job = SyncJob {
            dir: self.dir.clone(),
            steps,
            first_seq: self.unsynced_first_seq,
            upto_seq: self.last_seq,
            state: Arc::clone(&self.sync_state),
        };
        let active = self.segments.last().expect("a log has a segment");
        self.unsynced_segment = active.index;
        self.unsynced_offset = active.end;
        self.unsynced_first_seq = self.last_seq + 1;
        Some(job)
    }

    /// Whether a rotation now would find no spare ready and make the segment file itself,
    /// on the caller's thread, while the preparer is still making one (false while the
    /// preparer cannot make one at all: waiting would not help then).
    pub fn rotation_would_stall(&self) -> bool {
        let next = self.segments.last().expect("a log has a segment").index + 1;
        !self.preparer.has_spare(next) && self.preparer.failing().is_none()
    }

    /// Seals the active segment, if it has records, and continues in a new one: afterwards
    /// every record up to `last_seq()` lies in segments that are no longer written. The new
    /// segment is installed by the next sync job (taken even if nothing else was appended).
    pub fn rotate_now(&mut self) -> Result<(), WalError> {
        if self.sync_state.is_poisoned() {
            return Err(WalError::Poisoned);
        }
        if self.segments.last().expect("a log has a segment").records == 0 {
            return Ok(());
        }
        self.rotate()
    }

    /// Gives up the oldest segments whose records all have a sequence number of at most
    /// `seq` (and are durable), never the active segment or one a pending sync job still
    /// covers. Their files are unlinked oldest first by the preparer thread, which syncs
    /// the directory after each, so a crash leaves a contiguous log; open with the
    /// snapshot's `first_needed_seq` removes any leftover. Returns how many were given up.
    pub fn remove_segments_through(&mut self, seq: u64) -> usize {
        let limit = seq.min(self.durable_seq());
        let removable = self
            .segments
            .iter()
            .take(self.segments.len() - 1)
            .take_while(|segment| {
                segment.index < self.unsynced_segment && segment.pending_rename.is_none() && segment.last_seq() <= limit
            })
            .count();
        let removed: Vec<PathBuf> =
            self.segments.drain(..removable).map(|segment| segment_path(&self.dir, segment.index)).collect();
        if !removed.is_empty() {
            self.preparer.remove(removed);
        }
        removable
    }

    /// Why the log may soon be unable to grow: the next segment could not be prepared (a
    /// full disk, a failing device). The active segment still takes records; the caller
    /// should keep what it appends small until this clears, which it does by itself once
    /// a spare is made again.
    pub fn space_problem(&self) -> Option<String> {
        self.preparer.failing()
    }

    /// Rotations that found no spare ready and created the segment file on the writer's
    /// thread (a stall the daemon may want to log).
    pub fn stalled_rotations(&self) -> u64 {
        self.stalled_rotations
    }

    /// Waits until the preparer thread has the next spare ready and has unlinked every
    /// segment given up; reports the first error it met. For tests and orderly shutdown.
    pub fn wait_for_preparer(&self) -> Result<(), WalError> {
        self.preparer.wait_until_idle()
    }

    /// How many segment files the log holds.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes the log's records take in its segments (with their headers and
    /// padding; without the segments' headers and unused room).
    pub fn record_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.end.saturating_sub(SEGMENT_HEADER_BYTES) as u64).sum()
    }

    /// The segment numbers the log holds, oldest first.
    pub fn segment_indices(&self) -> Vec<u64> {
        self.segments.iter().map(|segment| segment.index).collect()
    }

    /// Panics if an invariant of the log does not hold. Reads every segment: for tests.
    pub fn check_invariants(&self) {
        assert!(!self.segments.is_empty());
        let mut expected_seq = self.segments[0].first_seq;
        for (position, segment) in self.segments.iter().enumerate() {
            assert_eq!(segment.index, self.segments[0].index + position as u64);
            if segment.after_loss {
                assert!(segment.first_seq >= expected_seq, "segment {} goes back", segment.index);
                expected_seq = segment.first_seq;
            }
            assert_eq!(segment.first_seq, expected_seq, "segment {} is not chained", segment.index);
            assert!(
                position + 1 == self.segments.len() || segment.pending_rename.is_none() || {
                    segment.index > self.unsynced_segment
                }
            );
            assert!(SEGMENT_HEADER_BYTES <= segment.end && segment.end <= segment.capacity);
            assert_eq!(segment.end % RECORD_ALIGNMENT, 0);
            assert!(segment.usable_bytes()[segment.end..].iter().all(|&byte| byte == 0), "bytes after the end");
            expected_seq += segment.records;
        }
        assert_eq!(self.last_seq + 1, expected_seq);
        let mut replayed = 0;
        let mut previous_seq = None;
        for record in self.records() {
            assert!(record.seq >= self.first_needed_seq);
            assert!(previous_seq.is_none_or(|previous| previous < record.seq));
            assert_eq!(record.payload.as_ptr() as usize % RECORD_ALIGNMENT, 0);
            previous_seq = Some(record.seq);
            replayed += 1;
        }
        let kept_from =
            |segment: &Segment| (segment.last_seq() + 1).saturating_sub(segment.first_seq.max(self.first_needed_seq));
        assert_eq!(replayed, self.segments.iter().map(kept_from).sum::<u64>());
        assert!(self.durable_seq() <= self.last_seq);
        assert!(self.unsynced_first_seq <= self.last_seq + 1);
        let unsynced = &self.segments[self.position_of(self.unsynced_segment)];
        assert!(self.unsynced_offset <= unsynced.end);
    }

    fn position_of(&self, index: u64) -> usize {
        (index - self.segments[0].index) as usize
    }

    /// Continues in a new segment, made from the preparer's spare (or, if none is ready, a
    /// file made here: a counted stall). Nothing is synced or renamed here: the next sync
    /// job syncs the old segment's last bytes, then the new one's, and only then renames it
    /// into place, so recovery can count on every segment but the last being on disk in
    /// full.
    fn rotate(&mut self) -> Result<(), WalError> {
        let index = self.segments.last().expect("a log has a segment").index + 1;
        let (file, path) = match self.preparer.take_spare(index) {
            Some(spare) => spare,
            None => {
                self.stalled_rotations += 1;
                let path = temporary_path(&self.dir, index);
                let file = create_allocated_file(&path, self.segment_bytes)
                    .map_err(WalError::io(|| format!("create segment {index} ({})", path.display())))?;
                (file, path)
            }
        };
        let header = SegmentHeader::new(index, self.last_seq + 1, self.segment_bytes);
        self.segments.push(Segment::start_in(&file, path, header)?);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn poison_for_test(&self) {
        self.sync_state.poison();
    }

    #[cfg(test)]
    pub(crate) fn discard_spare_for_test(&self) {
        self.preparer.discard_spare_for_test();
    }
}

/// Starts the log's segment when none is kept, or a new one after an accepted loss (flagged
/// so the next open accepts the gap), and points HEAD at it.
fn start_log(dir: &Path, kept: &[Segment], recovery: &Recovery, segment_bytes: usize) -> Result<Segment, WalError> {
    let index = kept.last().map_or(0, |last| last.index + 1);
    let header = SegmentHeader {
        after_loss: !recovery.dropped.is_empty(),
        ..SegmentHeader::new(index, recovery.last_seq + 1, segment_bytes)
    };
    let segment = Segment::create(dir, header, segment_bytes)?;
    write_head(dir, index)?;
    Ok(segment)
}

/// Releases the pages of `segment` before `upto` (page-aligned) that were not released yet,
/// marking them released. The owner no longer writes them: they lie before the write head.
fn release_before(segment: &Segment, upto: usize) -> Result<(), WalError> {
    let handle = segment.map.sync_handle();
    let from = handle.released_upto();
    if upto <= from {
        return Ok(());
    }
    handle
        .release(from, upto - from)
        .map_err(WalError::io(|| format!("release the pages of segment {}", segment.index)))
}

/// Takes the log directory's lock, so no other process writes the segments we map.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(WalError::io(|| format!("open WAL lock file {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(WalError::Locked { dir: dir.display().to_string() }),
        Err(fs::TryLockError::Error(source)) => {
            Err(WalError::Io { context: format!("lock WAL directory {}", dir.display()), source })
        }
    }
}

/// Iterator over a log's records, oldest first.
#[derive(Debug)]
pub struct Records<'a> {
    segments: &'a [Segment],
    position: usize,
    offset: usize,
    /// Records before this one are skipped.
    from_seq: u64,
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        loop {
            let segment = self.segments.get(self.position)?;
            if self.offset < segment.end {
                let record = decode_trusted(segment.usable_bytes(), self.offset);
                self.offset += record_bytes(record.payload.len());
                debug_assert!(self.offset <= segment.end);
                if record.seq >= self.from_seq {
                    return Some(record);
                }
                continue;
            }
            self.position += 1;
            self.offset = SEGMENT_HEADER_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::read_records;
    use crate::wal::segment::segment_path;
    use crate::wal::sync::RELEASE_MIN_BYTES;

    #[test]
    fn options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        for segment_bytes in [0, 17, MIN_SEGMENT_BYTES - 16, MAX_SEGMENT_BYTES + 16] {
            let result = Wal::open(dir.path(), WalOptions { segment_bytes }, LogStart::FROM_FIRST_RECORD);
            assert!(matches!(result, Err(WalError::InvalidOptions { .. })), "{segment_bytes} accepted");
        }
    }

    #[test]
    fn a_poisoned_log_refuses_appends_and_its_jobs_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) =
            Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }, LogStart::FROM_FIRST_RECORD).unwrap();
        wal.append(1, b"a").unwrap();
        let job = wal.take_sync_job().unwrap();
        wal.poison_for_test();
        assert!(matches!(job.run(), Err(WalError::Poisoned)));
        assert!(matches!(wal.append(1, b"b"), Err(WalError::Poisoned)));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_wal, _) = Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }, LogStart::FROM_FIRST_RECORD).unwrap();
        assert!(matches!(
            Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }, LogStart::FROM_FIRST_RECORD),
            Err(WalError::Locked { .. })
        ));
    }

    #[test]
    fn jobs_must_run_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) =
            Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }, LogStart::FROM_FIRST_RECORD).unwrap();
        wal.append(1, b"a").unwrap();
        let first = wal.take_sync_job().unwrap();
        wal.append(1, b"b").unwrap();
        let second = wal.take_sync_job().unwrap();
        assert!(matches!(second.run(), Err(WalError::SyncOutOfOrder { first_seq: 2, upto_seq: 2, durable_seq: 0 })));
        assert_eq!(first.run().unwrap(), 1);
        assert_eq!(wal.durable_seq(), 1);
        assert!(wal.take_sync_job().is_none());
    }

    fn open(dir: &Path) -> Wal {
        Wal::open(dir, WalOptions { segment_bytes: 1024 }, LogStart::FROM_FIRST_RECORD).unwrap().0
    }

    fn append_records(wal: &mut Wal, count: u64) {
        for _ in 0..count {
            let seq = wal.last_seq() + 1;
            wal.append(1, &[seq as u8; 200]).unwrap();
        }
    }

    #[test]
    fn a_rotation_without_a_ready_spare_makes_the_file_itself_and_counts_the_stall() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path());
        wal.discard_spare_for_test();
        assert!(wal.rotation_would_stall(), "no spare, and none on its way");
        append_records(&mut wal, 6);
        assert_eq!(wal.segment_indices(), vec![0, 1]);
        assert_eq!(wal.stalled_rotations(), 1);
        assert!(!segment_path(dir.path(), 1).exists(), "installed by the sync job, not by the rotation");
        wal.take_sync_job().unwrap().run().unwrap();
        assert!(segment_path(dir.path(), 1).exists());
        wal.check_invariants();
        drop(wal);
        let reopened = open(dir.path());
        let payloads: Vec<u8> = reopened.records().map(|record| record.payload[0]).collect();
        assert_eq!(payloads, [1, 2, 3, 4, 5, 6], "the segment made in place reads back, and ends where its records do");
    }

    #[test]
    fn the_log_counts_its_segments_and_the_bytes_its_records_take() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path());
        assert_eq!((wal.segment_count(), wal.record_bytes()), (1, 0));
        append_records(&mut wal, 6);
        let per_record = record_bytes(200) as u64;
        assert_eq!((wal.segment_count(), wal.record_bytes()), (2, 6 * per_record), "six records over two segments");
    }

    #[test]
    fn a_rotation_with_a_ready_spare_does_no_file_work_on_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path());
        wal.wait_for_preparer().unwrap();
        assert!(super::super::segment::spare_path(dir.path(), 1).exists(), "the spare is ready before rotating");
        assert!(!wal.rotation_would_stall());
        append_records(&mut wal, 6);
        assert_eq!((wal.segment_indices(), wal.stalled_rotations()), (vec![0, 1], 0));
        let job = wal.take_sync_job().unwrap();
        let kinds: Vec<&str> = job
            .steps
            .iter()
            .map(|step| match step {
                SyncStep::Range { .. } => "range",
                SyncStep::Install { .. } => "install",
                SyncStep::Head { .. } => "head",
            })
            .collect();
        assert_eq!(kinds, ["range", "range", "install", "head"], "old segment, new segment, rename, HEAD");
        job.run().unwrap();
        assert_eq!(super::super::head::read_head(dir.path()).unwrap(), Some(1));
    }

    const MIB: usize = 1 << 20;

    fn open_with_segments_of(dir: &Path, segment_bytes: usize) -> Wal {
        Wal::open(dir, WalOptions { segment_bytes: segment_bytes as u64 }, LogStart::FROM_FIRST_RECORD).unwrap().0
    }

    /// The payload of record `seq`: its length and bytes follow from `seq`, so a record read
    /// back in the wrong place or with stale bytes does not match.
    fn numbered_payload(seq: u64) -> Vec<u8> {
        let len = 1000 + (seq as usize * 37) % 3000;
        (0..len).map(|at| (seq as usize * 31 + at * 7) as u8).collect()
    }

    /// Appends numbered records until the active segment is written up to at least `end`.
    fn append_numbered_until(wal: &mut Wal, end: usize) {
        while wal.segments.last().unwrap().end < end {
            let seq = wal.last_seq() + 1;
            assert_eq!(wal.append(7, &numbered_payload(seq)).unwrap(), seq);
        }
    }

    fn assert_numbered_records(records: impl Iterator<Item = (u64, u16, Vec<u8>)>, last_seq: u64) {
        let mut expected_seq = 1;
        for (seq, kind, payload) in records {
            assert_eq!((seq, kind), (expected_seq, 7));
            assert!(payload == numbered_payload(seq), "record {seq} reads back different bytes");
            expected_seq += 1;
        }
        assert_eq!(expected_seq, last_seq + 1, "records are missing");
    }

    /// Reads the whole log back through `read_records`, which checks every record's CRC.
    /// The log reopens whole, with records 1..=last_seq as numbered appends wrote them.
    fn assert_reopens_with_records(dir: &Path, segment_bytes: usize, last_seq: u64) {
        let options = WalOptions { segment_bytes: segment_bytes as u64 };
        let (wal, recovery) = Wal::open(dir, options, LogStart::FROM_FIRST_RECORD).unwrap();
        assert_eq!((recovery.last_seq, recovery.torn_tail.is_none()), (last_seq, true));
        let records = wal.records().map(|record| (record.seq, record.kind, record.payload.to_vec()));
        assert_numbered_records(records, last_seq);
    }

    fn assert_numbered_records_on_disk(dir: &Path, last_seq: u64) {
        let mut records = Vec::new();
        read_records(dir, 1, last_seq, |record| {
            records.push((record.seq, record.kind, record.payload.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_numbered_records(records.into_iter(), last_seq);
    }

    fn released_upto(wal: &Wal, position: usize) -> usize {
        wal.segments[position].map.sync_handle().released_upto()
    }

    #[test]
    fn a_batch_of_records_crosses_segments_in_order_and_stops_at_one_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open_with_segments_of(dir.path(), 64 << 10);
        let payloads: Vec<Vec<u8>> = (1..=100).map(numbered_payload).collect();
        assert_eq!(wal.append_all(7, payloads.iter().map(Vec::as_slice)).unwrap(), 100);
        assert!(wal.segment_indices().len() > 3, "the batch filled several segments");
        assert_eq!(wal.append_all(7, std::iter::empty()).unwrap(), 100, "an empty batch appends nothing");
        let too_large = vec![0u8; wal.max_payload_bytes + 1];
        let batch = [numbered_payload(101), too_large, numbered_payload(102)];
        let refused = wal.append_all(7, batch.iter().map(Vec::as_slice)).unwrap_err();
        assert!(matches!(refused, WalError::RecordTooLarge { .. }), "{refused}");
        assert_eq!(wal.last_seq(), 101, "the record before the refused one is appended");
        wal.check_invariants();
        wal.take_sync_job().unwrap().run().unwrap();
        drop(wal);
        assert_reopens_with_records(dir.path(), 64 << 10, 101);
    }

    #[test]
    fn synced_pages_of_a_segment_leave_the_resident_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open_with_segments_of(dir.path(), 16 * MIB);
        append_numbered_until(&mut wal, 6 * MIB);
        // Appends do not touch the mapping; reading the records back does.
        assert_eq!(wal.records().count() as u64, wal.last_seq());
        let resident_before = wal.segments[0].map.resident_bytes();
        assert!(resident_before >= 6 * MIB, "{resident_before} bytes resident after reading 6 MiB");
        wal.take_sync_job().unwrap().run().unwrap();
        let end = wal.segments[0].end;
        assert_eq!(released_upto(&wal, 0), end / page_bytes() * page_bytes(), "released up to the head's page");
        // What stays is the page holding the head and the pages after it that the kernel
        // mapped along with it (a fault may map a whole large folio of the page cache).
        let resident_after = wal.segments[0].map.resident_bytes();
        assert!(resident_after < RELEASE_MIN_BYTES, "{resident_after} bytes still resident after the sync");
        assert_eq!(wal.segment_indices(), vec![0]);
    }

    #[test]
    fn releases_wait_for_a_mebibyte_unless_the_segment_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open_with_segments_of(dir.path(), 16 * MIB);
        append_numbered_until(&mut wal, RELEASE_MIN_BYTES / 2);
        wal.take_sync_job().unwrap().run().unwrap();
        assert_eq!(released_upto(&wal, 0), 0, "less than RELEASE_MIN_BYTES synced");
        append_numbered_until(&mut wal, RELEASE_MIN_BYTES + 8 * page_bytes());
        wal.take_sync_job().unwrap().run().unwrap();
        let first_release = released_upto(&wal, 0);
        assert_eq!(first_release, wal.segments[0].end / page_bytes() * page_bytes());
        append_numbered_until(&mut wal, first_release + RELEASE_MIN_BYTES / 4);
        wal.take_sync_job().unwrap().run().unwrap();
        assert_eq!(released_upto(&wal, 0), first_release, "a quarter of RELEASE_MIN_BYTES waits");
        append_numbered_until(&mut wal, first_release + RELEASE_MIN_BYTES / 2);
        wal.rotate_now().unwrap();
        wal.take_sync_job().unwrap().run().unwrap();
        assert_eq!(wal.segment_indices(), vec![0, 1]);
        let sealed_end = wal.segments[0].end;
        assert_eq!(released_upto(&wal, 0), sealed_end / page_bytes() * page_bytes(), "a sealed segment is released");
        assert_eq!(released_upto(&wal, 1), 0, "the new segment holds its header only");
        wal.check_invariants();
    }

    #[test]
    fn records_read_back_intact_after_their_pages_were_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open_with_segments_of(dir.path(), 16 * MIB);
        append_numbered_until(&mut wal, 5 * MIB);
        wal.take_sync_job().unwrap().run().unwrap();
        assert!(released_upto(&wal, 0) >= 4 * MIB);
        let last_seq = wal.last_seq();
        let records = wal.records().map(|record| (record.seq, record.kind, record.payload.to_vec()));
        assert_numbered_records(records, last_seq);
        wal.check_invariants();
        assert_numbered_records_on_disk(dir.path(), last_seq);
        drop(wal);
        assert_reopens_with_records(dir.path(), 16 * MIB, last_seq);
    }

    #[test]
    fn appends_after_a_release_continue_in_the_same_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open_with_segments_of(dir.path(), 16 * MIB);
        append_numbered_until(&mut wal, 2 * MIB + 100);
        wal.take_sync_job().unwrap().run().unwrap();
        let first_release = released_upto(&wal, 0);
        assert!(first_release >= 2 * MIB);
        // The record after the release starts in the page that held the write head.
        assert!(!wal.segments[0].end.is_multiple_of(page_bytes()));
        append_numbered_until(&mut wal, 4 * MIB + 100);
        wal.take_sync_job().unwrap().run().unwrap();
        assert!(released_upto(&wal, 0) > first_release);
        append_numbered_until(&mut wal, 4 * MIB + 20_000);
        wal.take_sync_job().unwrap().run().unwrap();
        assert_eq!(wal.segment_indices(), vec![0], "all in one segment");
        let last_seq = wal.last_seq();
        wal.check_invariants();
        drop(wal);
        assert_reopens_with_records(dir.path(), 16 * MIB, last_seq);
        assert_numbered_records_on_disk(dir.path(), last_seq);
    }

    /// Appends numbered records until the log has `segments` segments and the active one is
    /// written up to at least `end`.
    fn append_numbered_across(wal: &mut Wal, segments: usize, end: usize) {
        while wal.segments.len() < segments || wal.segments.last().unwrap().end < end {
            let seq = wal.last_seq() + 1;
            assert_eq!(wal.append(7, &numbered_payload(seq)).unwrap(), seq);
        }
    }

    fn resident_bytes(wal: &Wal) -> usize {
        wal.segments.iter().map(|segment| segment.map.resident_bytes()).sum()
    }

    #[test]
    fn a_reopened_log_releases_what_recovery_and_replay_read() {
        let page = page_bytes();
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open_with_segments_of(dir.path(), 4 * MIB);
        append_numbered_across(&mut wal, 3, 2 * MIB + 100);
        wal.take_sync_job().unwrap().run().unwrap();
        let last_seq = wal.last_seq();
        drop(wal);

        let mut wal = open_with_segments_of(dir.path(), 4 * MIB);
        assert_eq!(wal.segment_indices(), vec![0, 1, 2]);
        let records = wal.records().map(|record| (record.seq, record.kind, record.payload.to_vec()));
        assert_numbered_records(records, last_seq);
        // Recovery read every byte of every segment, the zeros after the last record included.
        let resident_before = resident_bytes(&wal);
        assert!(resident_before >= 10 * MIB, "{resident_before} bytes resident after the replay");
        wal.release_replayed().unwrap();
        let end = wal.segments[2].end;
        assert_eq!((released_upto(&wal, 0), released_upto(&wal, 1)), (4 * MIB, 4 * MIB), "sealed: all pages");
        assert_eq!(released_upto(&wal, 2), end / page * page, "active: up to the page holding the head");
        let resident_after = resident_bytes(&wal);
        assert!(resident_after <= page, "{resident_before} -> {resident_after} bytes resident");

        // The next sync job of the active segment releases from where this stopped.
        append_numbered_until(&mut wal, end + RELEASE_MIN_BYTES + 100);
        wal.take_sync_job().unwrap().run().unwrap();
        assert_eq!(wal.segment_indices(), vec![0, 1, 2]);
        assert_eq!(released_upto(&wal, 2), wal.segments[2].end / page * page);
        let last_seq = wal.last_seq();
        let records = wal.records().map(|record| (record.seq, record.kind, record.payload.to_vec()));
        assert_numbered_records(records, last_seq);
        wal.check_invariants();
        drop(wal);
        assert_reopens_with_records(dir.path(), 4 * MIB, last_seq);
        assert_numbered_records_on_disk(dir.path(), last_seq);
    }

    /// A crash after any step of a job that installs segments: the steps not run did not
    /// reach the disk (their bytes are zeroed where the file is in place). The log opens
    /// with every record an earlier job acknowledged.
    #[test]
    fn a_crash_at_any_step_of_a_rotation_keeps_every_acknowledged_record() {
        for steps_run in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let mut wal = open(dir.path());
            append_records(&mut wal, 3);
            let acknowledged = wal.take_sync_job().unwrap().run().unwrap();
            append_records(&mut wal, 10);
            wal.rotate_now().unwrap();
            let job = wal.take_sync_job().unwrap();
            let step_count = job.step_count();
            if steps_run > step_count {
                break;
            }
            let lost: Vec<(u64, usize, usize)> = job.steps[steps_run..]
                .iter()
                .filter_map(|step| match step {
                    SyncStep::Range { segment, offset, len, .. } => Some((*segment, *offset, *len)),
                    _ => None,
                })
                .collect();
            job.run_partly(steps_run).unwrap();
            drop(wal);
            for (segment, offset, len) in lost {
                let path = segment_path(dir.path(), segment);
                if let Ok(mut bytes) = fs::read(&path) {
                    bytes[offset..offset + len].fill(0);
                    fs::write(&path, bytes).unwrap();
                }
            }
            let (wal, recovery) =
                Wal::open(dir.path(), WalOptions { segment_bytes: 1024 }, LogStart::FROM_FIRST_RECORD)
                    .unwrap_or_else(|error| panic!("after {steps_run} steps: {error}"));
            assert!(recovery.last_seq >= acknowledged, "after {steps_run} steps");
            let seqs: Vec<u64> = wal.records().map(|record| record.seq).collect();
            assert_eq!(seqs, (1..=recovery.last_seq).collect::<Vec<u64>>(), "after {steps_run} steps");
            wal.check_invariants();
        }
    }
}

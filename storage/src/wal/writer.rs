//! [`Wal`]: the appender, owned by the daemon's event-loop thread, and [`Records`], the
//! iterator that replays what the log holds.
//!
//! Invariants (checked by [`Wal::check_invariants`]): segments are contiguous and chained by
//! sequence number; in each, records fill `SEGMENT_HEADER_BYTES..end` and bytes from `end` to
//! the segment's capacity are zero; `last_seq` is the last record's sequence number; the
//! next sync job starts right after the bytes the previous one covered.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::WalError;
use super::record::{RECORD_ALIGNMENT, RECORD_HEADER_BYTES, RecordRef, decode_trusted, encode_header, record_bytes};
use super::recovery::{Recovery, recover};
use super::segment::{SEGMENT_HEADER_BYTES, Segment};
use super::sync::{SyncJob, SyncRange, SyncState};

/// The largest segment a log may be configured with.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest segment holds its header and one record with an empty payload.
const MIN_SEGMENT_BYTES: u64 = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64;
const _: () = assert!(MIN_SEGMENT_BYTES <= DEFAULT_SEGMENT_BYTES && DEFAULT_SEGMENT_BYTES <= MAX_SEGMENT_BYTES);
// Every payload that fits a segment has a length that fits the header's u32.
const _: () = assert!(MAX_SEGMENT_BYTES <= u32::MAX as u64);
const LOCK_FILE_NAME: &str = "LOCK";

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

/// The write-ahead log's writer. Appends go into the mapped segment; durability comes from
/// [`SyncJob`]s that another thread runs.
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
    /// Held (locked) for as long as the log is open.
    _lock: File,
}

impl Wal {
    /// Opens or creates the log in `dir` (creating the directory), verifies every record,
    /// cuts a torn tail (zeroing it on disk and syncing), and refuses corruption before the
    /// tail with [`WalError::Corrupted`] naming segment and offset.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
        let segment_bytes = options.validate()?;
        fs::create_dir_all(dir).map_err(WalError::io(|| format!("create WAL directory {}", dir.display())))?;
        let lock = lock_dir(dir)?;
        let (mut segments, recovery) = recover(dir)?;
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, 1, segment_bytes)?);
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
            segments,
            _lock: lock,
        };
        assert_eq!(wal.last_seq, recovery.last_seq.max(wal.segments[0].first_seq - 1));
        Ok((wal, recovery))
    }

    /// Every record in order, starting with the oldest segment's first.
    pub fn records(&self) -> Records<'_> {
        Records { segments: &self.segments, position: 0, offset: SEGMENT_HEADER_BYTES }
    }

    /// Copies a record into the mapped segment, rotating to a new segment when the current
    /// one is full, and returns its sequence number. The record is not durable until a sync
    /// job taken after this call has run.
    pub fn append(&mut self, kind: u16, payload: &[u8]) -> Result<u64, WalError> {
        if self.sync_state.is_poisoned() {
            return Err(WalError::Poisoned);
        }
        if payload.len() > self.max_payload_bytes {
            return Err(WalError::RecordTooLarge { len: payload.len(), limit: self.max_payload_bytes });
        }
        let needed = record_bytes(payload.len());
        let active = self.segments.last().expect("a log has a segment");
        if active.end + needed > active.capacity {
            self.rotate()?;
        }
        let seq = self.last_seq + 1;
        let header = encode_header(kind, seq, payload);
        let active = self.segments.last_mut().expect("a log has a segment");
        let offset = active.end;
        assert!(offset + needed <= active.capacity);
        active.map.write(offset, &header);
        active.map.write(offset + RECORD_HEADER_BYTES, payload);
        let padding_offset = offset + RECORD_HEADER_BYTES + payload.len();
        active.map.zero(padding_offset, offset + needed - padding_offset);
        active.end += needed;
        active.records += 1;
        self.last_seq = seq;
        debug_assert_eq!(active.last_seq(), seq);
        Ok(seq)
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

    /// Everything appended since the previous job, as work a different thread can do.
    /// Jobs must run in the order they were taken. `None` if nothing was appended.
    pub fn take_sync_job(&mut self) -> Option<SyncJob> {
        if self.last_seq < self.unsynced_first_seq {
            return None;
        }
        let first_position = (self.unsynced_segment - self.segments[0].index) as usize;
        let ranges = self.segments[first_position..]
            .iter()
            .filter_map(|segment| {
                let start =
                    if segment.index == self.unsynced_segment { self.unsynced_offset } else { SEGMENT_HEADER_BYTES };
                let handle = segment.map.sync_handle();
                (segment.end > start).then(|| SyncRange {
                    segment: segment.index,
                    handle,
                    offset: start,
                    len: segment.end - start,
                })
            })
            .collect();
        let job = SyncJob {
            ranges,
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

    /// Panics if an invariant of the log does not hold. Reads every segment: for tests.
    pub fn check_invariants(&self) {
        assert!(!self.segments.is_empty());
        let mut expected_seq = self.segments[0].first_seq;
        for (position, segment) in self.segments.iter().enumerate() {
            assert_eq!(segment.index, self.segments[0].index + position as u64);
            assert_eq!(segment.first_seq, expected_seq, "segment {} is not chained", segment.index);
            assert!(SEGMENT_HEADER_BYTES <= segment.end && segment.end <= segment.capacity);
            assert_eq!(segment.end % RECORD_ALIGNMENT, 0);
            assert!(segment.usable_bytes()[segment.end..].iter().all(|&byte| byte == 0), "bytes after the end");
            expected_seq += segment.records;
        }
        assert_eq!(self.last_seq + 1, expected_seq);
        let mut replayed_seq = self.segments[0].first_seq;
        for record in self.records() {
            assert_eq!(record.seq, replayed_seq);
            assert_eq!(record.payload.as_ptr() as usize % RECORD_ALIGNMENT, 0);
            replayed_seq += 1;
        }
        assert_eq!(replayed_seq, expected_seq);
        assert!(self.durable_seq() <= self.last_seq);
        assert!(self.unsynced_first_seq <= self.last_seq + 1);
        let unsynced = &self.segments[(self.unsynced_segment - self.segments[0].index) as usize];
        assert!(self.unsynced_offset <= unsynced.end);
    }

    /// Starts a new segment. The current one is synced first: recovery counts on every
    /// segment but the last being on disk in full, so none of the new segment's pages may
    /// reach the disk before the old segment's last records.
    fn rotate(&mut self) -> Result<(), WalError> {
        let old = self.segments.last().expect("a log has a segment");
        if let Err(source) = old.map.sync_range(0, old.end) {
            self.sync_state.poison();
            return Err(WalError::Io { context: format!("sync segment {} before rotating", old.index), source });
        }
        let new = Segment::create(&self.dir, old.index + 1, self.last_seq + 1, self.segment_bytes)?;
        self.segments.push(new);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn poison_for_test(&self) {
        self.sync_state.poison();
    }
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
                return Some(record);
            }
            self.position += 1;
            self.offset = SEGMENT_HEADER_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        for segment_bytes in [0, 17, MIN_SEGMENT_BYTES - 16, MAX_SEGMENT_BYTES + 16] {
            let result = Wal::open(dir.path(), WalOptions { segment_bytes });
            assert!(matches!(result, Err(WalError::InvalidOptions { .. })), "{segment_bytes} accepted");
        }
    }

    #[test]
    fn a_poisoned_log_refuses_appends_and_its_jobs_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }).unwrap();
        wal.append(1, b"a").unwrap();
        let job = wal.take_sync_job().unwrap();
        wal.poison_for_test();
        assert!(matches!(job.run(), Err(WalError::Poisoned)));
        assert!(matches!(wal.append(1, b"b"), Err(WalError::Poisoned)));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_wal, _) = Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }).unwrap();
        assert!(matches!(Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }), Err(WalError::Locked { .. })));
    }

    #[test]
    fn jobs_must_run_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions { segment_bytes: 4096 }).unwrap();
        wal.append(1, b"a").unwrap();
        let first = wal.take_sync_job().unwrap();
        wal.append(1, b"b").unwrap();
        let second = wal.take_sync_job().unwrap();
        assert!(matches!(second.run(), Err(WalError::SyncOutOfOrder { first_seq: 2, upto_seq: 2, durable_seq: 0 })));
        assert_eq!(first.run().unwrap(), 1);
        assert_eq!(wal.durable_seq(), 1);
        assert!(wal.take_sync_job().is_none());
    }
}

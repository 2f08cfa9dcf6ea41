//! Durability as a job: the writer describes the bytes appended since the previous job, and
//! another thread makes them durable while the writer goes on appending.
//!
//! Invariants: jobs cover consecutive sequence-number ranges and must run in the order they
//! were taken (the daemon's single flusher thread does that); a job only reports success if
//! every earlier job succeeded. After any failure the log is poisoned for good: the kernel
//! may have dropped the dirty pages, so a later successful sync would prove nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::WalError;
use super::mmap::SyncHandle;

/// State shared by the writer and its sync jobs.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    poisoned: AtomicBool,
    /// Every record up to this sequence number is durable.
    durable_seq: AtomicU64,
}

impl SyncState {
    pub(crate) fn new(durable_seq: u64) -> SyncState {
        SyncState { poisoned: AtomicBool::new(false), durable_seq: AtomicU64::new(durable_seq) }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }
}

/// A byte range of one segment to write back.
#[derive(Debug)]
pub(crate) struct SyncRange {
    pub segment: u64,
    pub handle: SyncHandle,
    pub offset: usize,
    pub len: usize,
}

/// Work that makes records `first_seq..=upto_seq` durable, to be run on another thread.
#[derive(Debug)]
#[must_use = "the records it covers are not durable until the job runs"]
pub struct SyncJob {
    pub(crate) ranges: Vec<SyncRange>,
    pub(crate) first_seq: u64,
    pub(crate) upto_seq: u64,
    pub(crate) state: Arc<SyncState>,
}

impl SyncJob {
    /// The last record this job makes durable.
    pub fn upto_seq(&self) -> u64 {
        self.upto_seq
    }

    /// Writes back the job's byte ranges and waits for the disk. On success every record up
    /// to `upto_seq` is durable, and that is returned.
    pub fn run(self) -> Result<u64, WalError> {
        if self.state.is_poisoned() {
            return Err(WalError::Poisoned);
        }
        let durable_seq = self.state.durable_seq();
        if durable_seq + 1 != self.first_seq {
            return Err(WalError::SyncOutOfOrder { first_seq: self.first_seq, upto_seq: self.upto_seq, durable_seq });
        }
        for range in &self.ranges {
            if let Err(source) = range.handle.sync_range(range.offset, range.len) {
                self.state.poison();
                let context = format!(
                    "sync segment {} bytes {}..{} (records up to {})",
                    range.segment,
                    range.offset,
                    range.offset + range.len,
                    self.upto_seq
                );
                return Err(WalError::Io { context, source });
            }
        }
        self.state.durable_seq.store(self.upto_seq, Ordering::Release);
        Ok(self.upto_seq)
    }
}

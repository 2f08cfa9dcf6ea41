//! Durability as a job: the writer describes the work since the previous job (bytes
//! appended, segments started), and another thread does it while the writer goes on
//! appending.
//!
//! A job's steps run in order: for each segment, its written range is synced; a segment
//! started from a spare since the previous job is then renamed into place and the directory
//! synced; last, when a segment was installed, HEAD is updated. So a segment only gets its
//! name once its predecessor's last bytes and its own header are on disk, and HEAD only
//! names a segment whose rename is durable. Only then is durability reported.
//!
//! Once a segment's range is synced, the pages of the segment wholly before the range's end
//! are released from the process's resident set (`SyncHandle::release`): the log never
//! reads them through this mapping again, except when it is opened, and the writer only
//! writes at or after that end. The bytes stay in the file and the page cache. Releases come
//! in steps of at least [`RELEASE_MIN_BYTES`] to keep the system calls few, and all at once
//! when the segment is sealed. A failed release is not a failed sync: the pages just stay
//! resident, as the kernel may keep them anyway. At start-up, `Wal::release_replayed`
//! releases what opening and replaying the log read, and the releases here continue from
//! where it stopped.
//!
//! Invariants: jobs cover consecutive sequence-number ranges and must run in the order they
//! were taken (the daemon's event loop runs them, one at a time); a job only reports success if
//! every earlier job succeeded. After any failure the log is poisoned for good: the kernel
//! may have dropped the dirty pages, so a later successful sync would prove nothing.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::WalError;
use super::head::write_head;
use super::mmap::{SyncHandle, page_bytes};
use super::segment::sync_dir;

/// Synced pages of a segment leave the resident set in steps of at least this many bytes
/// (all that is left at once when the segment is sealed).
pub(crate) const RELEASE_MIN_BYTES: usize = 1 << 20;

/// State shared by the writer and its sync jobs.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    poisoned: AtomicBool,
    /// Every record up to this sequence number is durable.
    durable_seq: AtomicU64,
    /// One more than the segment HEAD should name but does not, after a HEAD update failed
    /// (a full disk); 0 when HEAD is current. A stale HEAD loses nothing: segments after
    /// the one it names are allowed. The next job tries again.
    stale_head: AtomicU64,
}

impl SyncState {
    pub(crate) fn new(durable_seq: u64) -> SyncState {
        SyncState {
            poisoned: AtomicBool::new(false),
            durable_seq: AtomicU64::new(durable_seq),
            stale_head: AtomicU64::new(0),
        }
    }

    /// The segment HEAD should name, when an update of it failed.
    pub(crate) fn stale_head(&self) -> Option<u64> {
        self.stale_head.load(Ordering::Acquire).checked_sub(1)
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

/// One step of a sync job.
#[derive(Debug)]
pub(crate) enum SyncStep {
    /// Write back a byte range of one segment, then release its synced pages. `sealed`: the
    /// segment takes no more appends, so this is its last range.
    Range { segment: u64, handle: SyncHandle, offset: usize, len: usize, sealed: bool },
    /// Rename a segment made from a spare into place, then sync the directory.
    Install { segment: u64, from: PathBuf, to: PathBuf },
    /// Point HEAD at the newest installed segment.
    Head { segment: u64 },
}

/// Work that makes records `first_seq..=upto_seq` durable, to be run on another thread.
#[derive(Debug)]
#[must_use = "the records it covers are not durable until the job runs"]
pub struct SyncJob {
    pub(crate) dir: PathBuf,
    pub(crate) steps: Vec<SyncStep>,
    pub(crate) first_seq: u64,
    pub(crate) upto_seq: u64,
    pub(crate) state: Arc<SyncState>,
}

impl SyncJob {
    /// The last record this job makes durable.
    pub fn upto_seq(&self) -> u64 {
        self.upto_seq
    }

    /// Writes back the job's byte ranges, installs new segments and waits for the disk. On
    /// success every record up to `upto_seq` is durable, and that is returned.
    pub fn run(self) -> Result<u64, WalError> {
        let steps = self.steps.len();
        self.run_steps(steps)?;
        self.state.durable_seq.store(self.upto_seq, Ordering::Release);
        Ok(self.upto_seq)
    }

    /// Runs the first `count` steps, as a crash in the middle of the job would leave them.
    #[cfg(test)]
    pub(crate) fn run_partly(self, count: usize) -> Result<(), WalError> {
        self.run_steps(count)
    }

    #[cfg(test)]
    pub(crate) fn step_count(&self) -> usize {
        self.steps.len()
    }

    fn run_steps(&self, count: usize) -> Result<(), WalError> {
        if self.state.is_poisoned() {
            return Err(WalError::Poisoned);
        }
        let durable_seq = self.state.durable_seq();
        if durable_seq + 1 != self.first_seq {
            return Err(WalError::SyncOutOfOrder { first_seq: self.first_seq, upto_seq: self.upto_seq, durable_seq });
        }
        for step in &self.steps[..count] {
            match (step, self.run_step(step)) {
                (SyncStep::Head { segment }, result) => {
                    let stale = if result.is_ok() { 0 } else { segment + 1 };
                    self.state.stale_head.store(stale, Ordering::Release);
                }
                (_, Ok(())) => {}
                (_, Err(error)) => {
                    self.state.poison();
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn run_step(&self, step: &SyncStep) -> Result<(), WalError> {
        match step {
            SyncStep::Range { segment, handle, offset, len, sealed } => {
                handle.sync_range(*offset, *len).map_err(|source| {
                    let context = format!(
                        "sync segment {segment} bytes {offset}..{} (records up to {})",
                        offset + len,
                        self.upto_seq
                    );
                    WalError::Io { context, source }
                })?;
                release_synced(handle, offset + len, *sealed);
                Ok(())
            }
            SyncStep::Install { segment, from, to } => {
                fs::rename(from, to).map_err(WalError::io(|| format!("rename segment {segment} into place")))?;
                sync_dir(&self.dir)
            }
            SyncStep::Head { segment } => write_head(&self.dir, *segment),
        }
    }
}

/// Releases the pages of a segment that lie wholly before `synced_end` and were not released
/// yet, once they add up to [`RELEASE_MIN_BYTES`] or the segment is sealed. `synced_end` is
/// where the write head was when the job was taken, so the page holding the write head (at
/// or after `synced_end`) stays: the range ends at `synced_end` rounded down to a page.
fn release_synced(handle: &SyncHandle, synced_end: usize, sealed: bool) {
    let from = handle.released_upto();
    let upto = synced_end / page_bytes() * page_bytes();
    if upto <= from || (!sealed && upto - from < RELEASE_MIN_BYTES) {
        return;
    }
    // Memory, not durability: on failure the pages stay resident as they would without
    // releases, and the next job of this segment tries again.
    let _ = handle.release(from, upto - from);
}

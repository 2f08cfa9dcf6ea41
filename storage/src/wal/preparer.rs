//! The preparer: a thread owned by [`Wal`](super::Wal) that does the slow file work the
//! writer must not do on the event loop. It keeps one spare segment file ready (zeros over
//! `segment_bytes`, synced, named `<index>.wal.spare.tmp`) and removes segments the writer
//! gave up and spares an earlier process left (oldest first, each a MiB at a time, see
//! `large_files.rs`, syncing the directory after each). No other thread maps a segment
//! given up (`read_records` opens none older than its first record).
//!
//! A spare that cannot be made (a full disk: ENOSPC, EDQUOT, EIO) is tried again every
//! [`SPARE_RETRY`] (or as soon as a removal may have freed space); meanwhile the log says
//! why through `Wal::space_problem`, so the daemon can refuse new work instead of failing
//! at the next rotation, and goes back to normal by itself when space returns.
//!
//! Invariants: the spare is for one segment index, the one after the writer's active
//! segment; a spare made for an index nobody wants any more is removed. A spare holds no
//! record until the writer takes it, and is only renamed into place by a sync job, so
//! recovery may remove any `.tmp` file. The thread stops when the `Wal` is dropped.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::WalError;
use super::segment::{Pace, create_zeroed_file, spare_path, sync_dir};
use crate::large_files::remove_gradually;

/// How long the preparer waits before trying again to make a spare it could not make.
const SPARE_RETRY: Duration = Duration::from_secs(1);

/// What the preparer thread is asked to do and what it has done.
#[derive(Debug, Default)]
struct State {
    /// The segment index the next spare is for; `None` while the writer makes its own.
    wanted: Option<u64>,
    /// A spare ready to take: its index, file and path.
    ready: Option<(u64, File, PathBuf)>,
    /// Segment files to unlink, oldest first.
    removals: VecDeque<PathBuf>,
    /// The thread is working on something (not visible in the fields above).
    busy: bool,
    /// The first error the thread met, for `Wal::wait_for_preparer` to report.
    error: Option<WalError>,
    /// Why the last try to make the spare failed; cleared once one is made.
    failing: Option<String>,
    stop: bool,
}

impl State {
    fn has_work(&self) -> bool {
        !self.removals.is_empty() || self.wanted.is_some_and(|wanted| self.ready.as_ref().is_none_or(|r| r.0 != wanted))
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
pub(crate) struct Preparer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Preparer {
    /// Starts the thread: it removes `leftovers` (spares of an earlier
    /// process), then prepares the spare for segment `first_index`.
    pub(crate) fn start(
        dir: &Path,
        segment_bytes: usize,
        first_index: u64,
        leftovers: Vec<PathBuf>,
    ) -> Result<Preparer, WalError> {
        let shared = Arc::new(Shared::default());
        shared.lock().wanted = Some(first_index);
        shared.lock().removals.extend(leftovers);
        let thread_shared = Arc::clone(&shared);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("wal-preparer".to_string())
            .spawn(move || run(&dir, segment_bytes, &thread_shared))
            .map_err(WalError::io(|| "start the WAL preparer thread".to_string()))?;
        Ok(Preparer { shared, thread: Some(thread) })
    }

    /// Takes the spare for segment `index` if it is ready, and asks for the next one.
    /// Never waits: `None` means the writer must make the file itself.
    pub(crate) fn take_spare(&self, index: u64) -> Option<(File, PathBuf)> {
        let mut state = self.shared.lock();
        let spare = state.ready.take_if(|ready| ready.0 == index).map(|(_, file, path)| (file, path));
        if let Some((_, _, stale)) = state.ready.take() {
            state.removals.push_back(stale);
        }
        state.wanted = Some(index + 1);
        self.shared.changed.notify_all();
        spare
    }

    /// Whether the spare for segment `index` is ready to take.
    pub(crate) fn has_spare(&self, index: u64) -> bool {
        self.shared.lock().ready.as_ref().is_some_and(|ready| ready.0 == index)
    }

    /// Queues segment files for unlinking, oldest first.
    pub(crate) fn remove(&self, paths: Vec<PathBuf>) {
        let mut state = self.shared.lock();
        state.removals.extend(paths);
        self.shared.changed.notify_all();
    }

    /// Waits until the spare is ready and every queued removal is done; reports the first
    /// error the thread met since the last call, or why the spare cannot be made.
    pub(crate) fn wait_until_idle(&self) -> Result<(), WalError> {
        let mut state = self.shared.lock();
        while (state.has_work() || state.busy) && state.error.is_none() && state.failing.is_none() {
            state = self.shared.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if let Some(reason) = &state.failing {
            return Err(WalError::NoSpare { reason: reason.clone() });
        }
        state.error.take().map_or(Ok(()), Err)
    }

    /// Why no spare is ready, when the last try to make one failed.
    pub(crate) fn failing(&self) -> Option<String> {
        let state = self.shared.lock();
        state.ready.is_none().then(|| state.failing.clone()).flatten()
    }

    #[cfg(test)]
    pub(crate) fn discard_spare_for_test(&self) {
        self.wait_until_idle().unwrap();
        let mut state = self.shared.lock();
        if let Some((_, _, path)) = state.ready.take() {
            std::fs::remove_file(path).unwrap();
        }
        state.wanted = None;
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic on the thread was already reported; the log's files stay consistent.
            let _ = thread.join();
        }
    }
}

/// The thread: removals first (they free space), then the spare.
fn run(dir: &Path, segment_bytes: usize, shared: &Shared) {
    let mut state = shared.lock();
    loop {
        while !state.stop && (!state.has_work() || state.error.is_some()) {
            state = shared.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.stop {
            return;
        }
        if state.removals.is_empty() && state.failing.is_some() {
            // The last try failed: wait a while, or for a removal that may free space.
            state =
                shared.changed.wait_timeout(state, SPARE_RETRY).unwrap_or_else(std::sync::PoisonError::into_inner).0;
            if state.stop {
                return;
            }
        }
        state.busy = true;
        if let Some(path) = state.removals.pop_front() {
            drop(state);
            let result = remove_segment(dir, &path);
            state = shared.lock();
            if let Err(error) = result {
                state.error.get_or_insert(error);
            }
        } else if let Some(index) = state.wanted {
            drop(state);
            let result = prepare_spare(dir, segment_bytes, index, shared);
            state = shared.lock();
            state.failing = result.err().map(|error| error.to_string());
        }
        state.busy = false;
        shared.changed.notify_all();
    }
}

fn remove_segment(dir: &Path, path: &Path) -> Result<(), WalError> {
    remove_gradually(path).map_err(WalError::io(|| format!("remove segment {}", path.display())))?;
    sync_dir(dir)
}

/// Makes the spare for `index`; keeps it if it is still wanted, removes it otherwise.
fn prepare_spare(dir: &Path, segment_bytes: usize, index: u64, shared: &Shared) -> Result<(), WalError> {
    let path = spare_path(dir, index);
    let file = create_zeroed_file(&path, segment_bytes, Pace::Gentle)
        .map_err(WalError::io(|| format!("prepare spare segment {}", path.display())))?;
    let mut state = shared.lock();
    if state.wanted == Some(index) {
        state.ready = Some((index, file, path));
        return Ok(());
    }
    drop(state);
    remove_gradually(&path).map_err(WalError::io(|| format!("remove unwanted spare {}", path.display())))
}

//! Snapshots in the shell (docs/state.md, section 1): when to take one, the
//! snapshot thread that makes it from files alone, and what goes afterwards.
//!
//! The event loop never serializes its own state. When a snapshot is due it
//! seals the active log segment at record `S` and waits until `S` is durable;
//! then a thread loads the newest snapshot into a private core, applies the log
//! records after it up to `S`, writes the new snapshot and deletes snapshots of
//! older generations. Back on the loop, the segments the older generation no
//! longer needs are handed to the log's preparer thread for deletion.
//!
//! Invariants: one snapshot at a time; a snapshot covers only durable records;
//! after snapshot `N` the daemon keeps snapshots `N` and `N-1` and the log from
//! `S_{N-1} + 1` (from the first record before the second snapshot), or, when
//! an interval passes with the log unchanged, snapshot `N` and the log after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use apiary_storage::{ReadError, SnapshotFile, SnapshotStore, Wal, read_records};

use super::{log, os, replay};
use crate::core::{Core, CoreConfig, CoreSnapshot};

/// When snapshots are taken: whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotSettings {
    /// Time since the last snapshot, when the log grew at all meanwhile.
    pub interval_ms: u64,
    /// Log bytes written since the last snapshot.
    pub log_bytes: u64,
}

impl Default for SnapshotSettings {
    fn default() -> SnapshotSettings {
        SnapshotSettings { interval_ms: 300_000, log_bytes: 256 << 20 }
    }
}

/// What the snapshot thread reports.
struct Taken {
    file: SnapshotFile,
    tasks: usize,
    bytes: usize,
    took: Duration,
}

enum Phase {
    Idle,
    /// The log was sealed after record `seq`; the thread starts once it is durable.
    Sealed {
        seq: u64,
    },
    Running {
        seq: u64,
        started: Instant,
        result: Receiver<Result<Taken, String>>,
    },
}

pub struct Snapshots {
    settings: SnapshotSettings,
    store: SnapshotStore,
    wal_dir: PathBuf,
    core_config: CoreConfig,
    waker: Arc<mio::Waker>,
    phase: Phase,
    /// The record the newest snapshot covers (0: none), and the one before it.
    newest_seq: u64,
    previous_seq: Option<u64>,
    last_taken_ms: u64,
    log_bytes_since: u64,
    /// The longest event-loop turn while the current snapshot was being made.
    longest_turn: Duration,
}

impl Snapshots {
    pub fn new(
        settings: SnapshotSettings,
        store: SnapshotStore,
        wal_dir: PathBuf,
        core_config: CoreConfig,
        waker: Arc<mio::Waker>,
        newest_seq: u64,
        now_ms: u64,
    ) -> Snapshots {
        Snapshots {
            settings,
            store,
            wal_dir,
            core_config,
            waker,
            phase: Phase::Idle,
            newest_seq,
            previous_seq: None,
            last_taken_ms: now_ms,
            log_bytes_since: 0,
            longest_turn: Duration::ZERO,
        }
    }

    /// Counts log bytes written, for the size trigger.
    pub fn wrote_log_bytes(&mut self, bytes: usize) {
        self.log_bytes_since += bytes as u64;
    }

    /// Notes how long an event-loop turn took, for the report of a snapshot.
    pub fn turn_took(&mut self, turn: Duration) {
        if matches!(self.phase, Phase::Running { .. }) {
            self.longest_turn = self.longest_turn.max(turn);
        }
    }

    /// When the time trigger is next due, while no snapshot is under way.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        matches!(self.phase, Phase::Idle).then_some(self.last_taken_ms + self.settings.interval_ms)
    }

    /// One step of the lifecycle, each turn. Returns true when the log was
    /// sealed and a sync job must run to install the new segment.
    pub fn step(&mut self, now_ms: u64, wal: &mut Wal) -> bool {
        match &self.phase {
            Phase::Idle => self.maybe_start(now_ms, wal),
            Phase::Sealed { seq } => {
                let seq = *seq;
                if wal.durable_seq() >= seq {
                    self.spawn(seq, now_ms);
                }
                false
            }
            Phase::Running { .. } => {
                self.collect(now_ms, wal);
                false
            }
        }
    }

    fn maybe_start(&mut self, now_ms: u64, wal: &mut Wal) -> bool {
        let interval_passed = now_ms >= self.last_taken_ms + self.settings.interval_ms;
        let log_full = self.log_bytes_since >= self.settings.log_bytes;
        if !interval_passed && !log_full {
            return false;
        }
        if wal.last_seq() == self.newest_seq {
            self.trim_to_one_generation(now_ms, wal);
            return false;
        }
        if let Err(error) = wal.rotate_now() {
            log(format!("cannot seal the log for a snapshot: {error}"));
            self.last_taken_ms = now_ms;
            return false;
        }
        self.phase = Phase::Sealed { seq: wal.last_seq() };
        true
    }

    /// Nothing changed for an interval: the older generation goes, so that
    /// what only it holds (secret bytes of tasks that ended) leaves the disk.
    fn trim_to_one_generation(&mut self, now_ms: u64, wal: &mut Wal) {
        self.last_taken_ms = now_ms;
        if self.previous_seq.take().is_none() || self.newest_seq == 0 {
            return;
        }
        wal.remove_segments_through(self.newest_seq);
        let (store, newest_seq) = (self.store.clone(), self.newest_seq);
        thread::spawn(move || {
            if let Err(error) = store.remove_older_than(newest_seq) {
                log(format!("cannot remove older snapshots: {error}"));
            }
        });
    }

    fn spawn(&mut self, seq: u64, now_ms: u64) {
        let job = Job {
            store: self.store.clone(),
            wal_dir: self.wal_dir.clone(),
            core_config: self.core_config.clone(),
            base_seq: self.newest_seq,
            seq,
            keep_from_seq: self.newest_seq,
            created_ms: now_ms,
        };
        let (sender, result) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let spawned = thread::Builder::new().name("apiary-snapshot".into()).spawn(move || {
            if let Err(error) = os::lower_this_thread_priority() {
                log(format!("cannot lower the snapshot thread's priority: {error}"));
            }
            // A send fails only when the loop is gone; nothing left to tell then.
            let _ = sender.send(job.run());
            let _ = waker.wake();
        });
        match spawned {
            Ok(_) => {
                self.longest_turn = Duration::ZERO;
                self.phase = Phase::Running { seq, started: Instant::now(), result };
            }
            Err(error) => {
                log(format!("cannot start the snapshot thread: {error}"));
                self.phase = Phase::Idle;
                self.last_taken_ms = now_ms;
            }
        }
    }

    fn collect(&mut self, now_ms: u64, wal: &mut Wal) {
        let Phase::Running { seq, started, result } = &self.phase else { return };
        let outcome = match result.try_recv() {
            Ok(outcome) => outcome,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err("the snapshot thread stopped without a result".into()),
        };
        let (seq, waited) = (*seq, started.elapsed());
        self.phase = Phase::Idle;
        self.last_taken_ms = now_ms;
        match outcome {
            Ok(taken) => {
                log(format!(
                    "snapshot {} of {} tasks ({} bytes) after record {seq} in {} ms; longest event-loop turn meanwhile {} µs",
                    taken.file.path.display(),
                    taken.tasks,
                    taken.bytes,
                    taken.took.as_millis(),
                    self.longest_turn.as_micros(),
                ));
                let older = std::mem::replace(&mut self.newest_seq, seq);
                self.previous_seq = Some(older);
                self.log_bytes_since = 0;
                if older > 0 {
                    wal.remove_segments_through(older);
                }
            }
            Err(error) => log(format!("snapshot after record {seq} failed after {} ms: {error}", waited.as_millis())),
        }
    }
}

/// The snapshot thread's work: files in, a file out.
struct Job {
    store: SnapshotStore,
    wal_dir: PathBuf,
    core_config: CoreConfig,
    /// The snapshot to start from (0: none, start from an empty core).
    base_seq: u64,
    seq: u64,
    /// Snapshots covering less than this are deleted once the new one is durable.
    keep_from_seq: u64,
    created_ms: u64,
}

impl Job {
    fn run(self) -> Result<Taken, String> {
        let started = Instant::now();
        let mut core = match self.base_seq {
            0 => Core::new(self.core_config.clone()),
            base_seq => {
                let file = SnapshotFile { covered_seq: base_seq, path: self.store.path(base_seq) };
                let loaded = self.store.read(&file).map_err(|error| error.to_string())?;
                let snapshot =
                    CoreSnapshot::decode(&loaded).map_err(|error| format!("{}: {error}", file.path.display()))?;
                Core::restore(self.core_config.clone(), snapshot)
            }
        };
        read_records(&self.wal_dir, self.base_seq + 1, self.seq, |record| replay::apply_record(&mut core, &record))
            .map_err(|error| match error {
                ReadError::Wal(error) => error.to_string(),
                ReadError::Visit(error) => error.to_string(),
            })?;
        let snapshot = core.snapshot();
        drop(core);
        let tasks = snapshot.tasks.len();
        let bytes = snapshot.encode();
        drop(snapshot);
        let file = self.store.write(self.seq, self.created_ms, &bytes).map_err(|error| error.to_string())?;
        if self.keep_from_seq > 0 {
            self.store.remove_older_than(self.keep_from_seq).map_err(|error| error.to_string())?;
        }
        Ok(Taken { file, tasks, bytes: bytes.len(), took: started.elapsed() })
    }
}

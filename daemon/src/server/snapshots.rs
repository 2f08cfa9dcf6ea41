//! Snapshots in the shell (docs/state.md, section 1): when to take one, the
//! snapshot thread that makes it from files alone, and what goes afterwards.
//!
//! The event loop never serializes its own state. When a snapshot is due it
//! seals the active log segment at record `S` and waits until `S` is durable;
//! then a *snapshot job* loads the newest snapshot into a private core, applies
//! the log records after it up to `S`, writes the new snapshot and deletes
//! snapshots of older generations. Back on the loop, the segments the older
//! generation no longer needs are handed to the log's preparer thread for
//! deletion.
//!
//! The job runs in a child process (`apiaryd snapshot-job`, the same binary),
//! at a lower priority, watched by a thread of the daemon. In a thread of the
//! daemon itself, building and freeing a second copy of a large state took the
//! process's memory-map lock often and long enough to stall the event loop for
//! hundreds of milliseconds (measured at 1M pending tasks); a child has its own
//! address space, and its memory goes back to the system when it exits.
//!
//! Invariants: one snapshot at a time; a snapshot covers only durable records;
//! after snapshot `N` the daemon keeps snapshots `N` and `N-1` and the log from
//! `S_{N-1} + 1` (from the first record before the second snapshot), or, when
//! an interval passes with the log unchanged, snapshot `N` and the log after it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use apiary_storage::{HistoryDir, HistoryError, HistoryRun, ReadError, SnapshotFile, SnapshotStore, Wal, read_records};

use super::{log, os, replay};
use crate::core::history::{self, RunEntry};
use crate::core::texts as core_texts;
use crate::core::{Core, CoreConfig, CoreSnapshot};
use crate::logging::{self, Level};

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
    /// Ended tasks written to a new history run (numbered as the snapshot).
    archived: usize,
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
    history: HistoryDir,
    texts: HistoryDir,
    data_dir: PathBuf,
    core_config: CoreConfig,
    waker: Arc<mio::Waker>,
    phase: Phase,
    /// The record the newest snapshot covers (0: none), and the one before it.
    newest_seq: u64,
    previous_seq: Option<u64>,
    /// When the newest snapshot was written (Unix ms), if there is one.
    newest_written_ms: Option<u64>,
    last_taken_ms: u64,
    log_bytes_since: u64,
    /// The longest event-loop turn while the current snapshot was being made,
    /// and between snapshots, to compare with.
    longest_turn: Duration,
    longest_turn_between: Duration,
}

/// Where the state lives on disk.
pub struct StateFiles {
    pub data_dir: PathBuf,
    pub snapshots: SnapshotStore,
    pub history: HistoryDir,
    pub texts: HistoryDir,
}

impl Snapshots {
    pub fn new(
        settings: SnapshotSettings,
        files: StateFiles,
        core_config: CoreConfig,
        waker: Arc<mio::Waker>,
        newest_seq: u64,
        now_ms: u64,
    ) -> Snapshots {
        let newest_written_ms = (newest_seq > 0).then(|| written_ms(&files.snapshots.path(newest_seq))).flatten();
        Snapshots {
            settings,
            store: files.snapshots,
            history: files.history,
            texts: files.texts,
            data_dir: files.data_dir,
            core_config,
            waker,
            phase: Phase::Idle,
            newest_seq,
            // A restarted daemon may have found an older generation on disk: an
            // idle interval trims it as it would its own.
            previous_seq: (newest_seq > 0).then_some(0),
            newest_written_ms,
            last_taken_ms: now_ms,
            log_bytes_since: 0,
            longest_turn: Duration::ZERO,
            longest_turn_between: Duration::ZERO,
        }
    }

    /// Counts log bytes written, for the size trigger.
    pub fn wrote_log_bytes(&mut self, bytes: usize) {
        self.log_bytes_since += bytes as u64;
    }

    /// Notes how long an event-loop turn took, for the report of a snapshot.
    pub fn turn_took(&mut self, turn: Duration) {
        let longest = match self.phase {
            Phase::Running { .. } => &mut self.longest_turn,
            Phase::Idle | Phase::Sealed { .. } => &mut self.longest_turn_between,
        };
        *longest = (*longest).max(turn);
    }

    /// How long ago the newest snapshot was written; `None` before the first.
    pub fn newest_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.newest_written_ms.map(|written_ms| now_ms.saturating_sub(written_ms))
    }

    /// When the time trigger is next due, while no snapshot is under way.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        matches!(self.phase, Phase::Idle).then_some(self.last_taken_ms + self.settings.interval_ms)
    }

    /// One step of the lifecycle, each turn. Returns true when the log was
    /// sealed and a sync job must run to install the new segment.
    pub fn step(&mut self, now_ms: u64, wal: &mut Wal, core: &mut Core) -> bool {
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
                self.collect(now_ms, wal, core);
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
        if wal.rotation_would_stall() {
            // The next spare segment is on its way; sealing now would make this
            // thread make one itself, whose blocks each sync must then convert.
            return false;
        }
        if let Err(error) = wal.rotate_now() {
            logging::error(format!("cannot seal the log for a snapshot: {error}"));
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
        let (store, texts, newest_seq) = (self.store.clone(), self.texts.clone(), self.newest_seq);
        thread::spawn(move || {
            if let Err(error) = store.remove_older_than(newest_seq) {
                logging::warn(format!("cannot remove older snapshots: {error}"));
            }
            // Only older ones: a job started meanwhile may be writing a newer one.
            if let Err(error) = remove_texts(&texts, |number| number < newest_seq) {
                logging::warn(format!("cannot remove older snapshots' text files: {error}"));
            }
        });
    }

    fn spawn(&mut self, seq: u64, now_ms: u64) {
        let job = JobArgs {
            data_dir: self.data_dir.clone(),
            base_seq: self.newest_seq,
            upto_seq: seq,
            keep_from_seq: self.newest_seq,
            created_ms: now_ms,
            parent_pid: std::process::id(),
            log_level: logging::max_level(),
            core: CoreArgs::from(&self.core_config),
        };
        let (sender, result) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let spawned = thread::Builder::new().name("apiary-snapshot".into()).spawn(move || {
            // A send fails only when the loop is gone; nothing left to tell then.
            let _ = sender.send(job.run_in_child());
            let _ = waker.wake();
        });
        match spawned {
            Ok(_) => {
                self.longest_turn = Duration::ZERO;
                self.phase = Phase::Running { seq, started: Instant::now(), result };
            }
            Err(error) => {
                logging::error(format!("cannot start the snapshot thread: {error}"));
                self.phase = Phase::Idle;
                self.last_taken_ms = now_ms;
            }
        }
    }

    fn collect(&mut self, now_ms: u64, wal: &mut Wal, core: &mut Core) {
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
                    "snapshot {} of {} tasks ({} bytes, {} ended tasks to history) after record {seq} in {} ms; \
                     longest event-loop turn meanwhile {} µs (before it, since the last snapshot: {} µs)",
                    taken.file.path.display(),
                    taken.tasks,
                    taken.bytes,
                    taken.archived,
                    taken.took.as_millis(),
                    self.longest_turn.as_micros(),
                    self.longest_turn_between.as_micros(),
                ));
                self.longest_turn_between = Duration::ZERO;
                self.newest_written_ms = Some(now_ms);
                let older = std::mem::replace(&mut self.newest_seq, seq);
                self.previous_seq = Some(older);
                self.log_bytes_since = 0;
                if older > 0 {
                    wal.remove_segments_through(older);
                }
                if taken.archived > 0 {
                    self.adopt_history_run(seq, core);
                }
                self.adopt_texts(seq, core);
            }
            Err(error) => {
                logging::error(format!("snapshot after record {seq} failed after {} ms: {error}", waited.as_millis()))
            }
        }
    }
}

impl Snapshots {
    /// The job wrote the texts of the tasks that had not ended by record `seq`:
    /// the core reads them from there and lets go of its own copies.
    fn adopt_texts(&self, seq: u64, core: &mut Core) {
        match self.texts.open_run(seq) {
            Ok(file) => {
                let file = Arc::new(file);
                check_runs_in_background(vec![Arc::clone(&file)], Some(Arc::clone(&self.waker)));
                core.add_text_file(file);
            }
            // The heap keeps its copies.
            Err(error) => logging::error(format!("cannot open the new snapshot's text file: {error}")),
        }
    }

    /// The job wrote the ended tasks up to `seq` into run `seq`: the core now
    /// reads them from there and lets go of its own copies.
    fn adopt_history_run(&self, seq: u64, core: &mut Core) {
        match self.history.open_run(seq) {
            Ok(run) => {
                let run = Arc::new(run);
                check_runs_in_background(vec![Arc::clone(&run)], Some(Arc::clone(&self.waker)));
                core.add_history_run(RunEntry::of(seq, &run), Some(run));
            }
            // The heap keeps its copies; a restart reads the run again.
            Err(error) => logging::error(format!("cannot open the new history run: {error}")),
        }
    }
}

/// When a snapshot file was last written (Unix ms): the snapshot a restarted
/// daemon found is as old as its file.
fn written_ms(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok()?;
    let since_epoch = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(since_epoch.as_millis() as u64)
}

/// Request texts of a snapshot's tasks: `snapshots/<seq>.text`, beside it.
const TEXT_SUFFIX: &str = ".text";

pub fn open_texts(snapshots_dir: &Path) -> Result<HistoryDir, HistoryError> {
    HistoryDir::open_with_suffix(snapshots_dir, TEXT_SUFFIX)
}

/// Removes the text files whose snapshot number `unwanted` says.
fn remove_texts(texts: &HistoryDir, unwanted: impl Fn(u64) -> bool) -> Result<(), HistoryError> {
    let numbers: Vec<u64> = texts.list()?.into_iter().filter(|&number| unwanted(number)).collect();
    texts.remove(&numbers)
}

/// A core from a snapshot that reads back whole, reading its tasks' texts
/// from the snapshot's text file; the error says why it cannot be used.
pub fn restore_snapshot(
    store: &SnapshotStore,
    texts: &HistoryDir,
    file: &SnapshotFile,
    config: &CoreConfig,
) -> Result<Core, String> {
    let loaded = store.map(file).map_err(|error| error.to_string())?;
    let damaged = |error| format!("snapshot {}: {error}", file.path.display());
    // The CRC first: a damaged payload can still pass the archive's validation
    // and hold what the core takes for a bug (ids out of order), which would
    // stop the daemon instead of passing the snapshot over.
    loaded.check_crc().map_err(|error| error.to_string())?;
    let snapshot = CoreSnapshot::access(&loaded).map_err(damaged)?;
    let mut core = Core::restore(config.clone(), &snapshot).map_err(damaged)?;
    // Unmapping a third of a gigabyte takes milliseconds that start-up need not wait for.
    let _ = thread::Builder::new().name("apiary-unmap".into()).spawn(move || drop(loaded));
    let text_file =
        texts.open_run(file.covered_seq).map_err(|error| format!("snapshot {}: {error}", file.path.display()))?;
    core.add_restored_text_file(Arc::new(text_file));
    Ok(core)
}

/// Checks the runs' indexes on a thread of their own (at a million tasks a
/// run's index is tens of megabytes), so that the first listing or lookup
/// that reaches a run finds it checked instead of checking it on the loop.
/// The loop, woken when they are checked, then lets go of its copies of what
/// they hold.
pub fn check_runs_in_background(runs: Vec<Arc<HistoryRun>>, waker: Option<Arc<mio::Waker>>) {
    let spawned = thread::Builder::new().name("apiary-history-check".into()).spawn(move || {
        let _ = os::lower_this_thread_priority();
        for run in runs {
            if let Err(error) = run.index() {
                logging::error(error);
            }
            // Tens of megabytes a run, read once: the page cache has them for later lookups.
            if let Err(error) = run.release_pages() {
                logging::warn(error);
            }
        }
        if let Some(waker) = waker {
            // Fails only when the loop is gone.
            let _ = waker.wake();
        }
    });
    if let Err(error) = spawned {
        logging::warn(format!("cannot start the history check thread: {error}"));
    }
}

/// Lets the pages of `files` read so far leave the resident set, on a thread
/// of its own (a few milliseconds for tens of megabytes).
pub fn release_pages_in_background(files: Vec<Arc<HistoryRun>>) {
    let spawned = thread::Builder::new().name("apiary-release".into()).spawn(move || {
        for file in files {
            if let Err(error) = file.release_pages() {
                logging::warn(error);
            }
        }
    });
    if let Err(error) = spawned {
        logging::warn(format!("cannot start a thread to release pages: {error}"));
    }
}

/// A snapshot job: files in, a file out. The daemon hands it to a child
/// process as these flags (`apiaryd snapshot-job ...`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct JobArgs {
    /// The daemon's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The snapshot to start from (0: none, start from an empty core).
    #[arg(long)]
    base_seq: u64,
    /// The last log record the new snapshot covers; it is durable.
    #[arg(long)]
    upto_seq: u64,
    /// Snapshots covering less than this are deleted once the new one is durable.
    #[arg(long)]
    keep_from_seq: u64,
    #[arg(long)]
    created_ms: u64,
    /// The daemon that started the job: the job dies with it.
    #[arg(long)]
    parent_pid: u32,
    /// The daemon's `--log-level`, which the job's own lines obey.
    #[arg(long, default_value_t = Level::Info)]
    log_level: Level,
    #[command(flatten)]
    core: CoreArgs,
}

/// The core's settings as flags, so the job applies events as the daemon does.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct CoreArgs {
    #[arg(long)]
    long_poll_ms: u64,
    #[arg(long)]
    dedup_window_ms: u64,
    #[arg(long)]
    bot_death_timeout_ms: u64,
    #[arg(long)]
    bot_events_per_bot: usize,
    #[arg(long)]
    bot_event_max_age_ms: u64,
    #[arg(long)]
    max_output_bytes: u64,
    #[arg(long)]
    task_retention_ms: u64,
}

impl From<&CoreConfig> for CoreArgs {
    fn from(config: &CoreConfig) -> CoreArgs {
        CoreArgs {
            long_poll_ms: config.long_poll_ms,
            dedup_window_ms: config.dedup_window_ms,
            bot_death_timeout_ms: config.bot_death_timeout_ms,
            bot_events_per_bot: config.bot_events_per_bot,
            bot_event_max_age_ms: config.bot_event_max_age_ms,
            max_output_bytes: config.max_output_bytes,
            task_retention_ms: config.task_retention_ms,
        }
    }
}

impl From<&CoreArgs> for CoreConfig {
    fn from(args: &CoreArgs) -> CoreConfig {
        CoreConfig {
            long_poll_ms: args.long_poll_ms,
            dedup_window_ms: args.dedup_window_ms,
            bot_death_timeout_ms: args.bot_death_timeout_ms,
            bot_events_per_bot: args.bot_events_per_bot,
            bot_event_max_age_ms: args.bot_event_max_age_ms,
            max_output_bytes: args.max_output_bytes,
            task_retention_ms: args.task_retention_ms,
            // The store's name only shows in answers and checks of new
            // requests: the job does neither, and no snapshot holds it.
            cas_instance: crate::core::DEFAULT_CAS_INSTANCE.to_string(),
        }
    }
}

/// What a job prints on stdout when it succeeds, one line.
const JOB_DONE: &str = "snapshot-job done:";

impl JobArgs {
    /// The flags that give this job to `apiaryd snapshot-job`.
    fn to_flags(&self) -> Vec<OsString> {
        let core = &self.core;
        let numbers = [
            ("--base-seq", self.base_seq),
            ("--upto-seq", self.upto_seq),
            ("--keep-from-seq", self.keep_from_seq),
            ("--created-ms", self.created_ms),
            ("--parent-pid", u64::from(self.parent_pid)),
            ("--long-poll-ms", core.long_poll_ms),
            ("--dedup-window-ms", core.dedup_window_ms),
            ("--bot-death-timeout-ms", core.bot_death_timeout_ms),
            ("--bot-events-per-bot", core.bot_events_per_bot as u64),
            ("--bot-event-max-age-ms", core.bot_event_max_age_ms),
            ("--max-output-bytes", core.max_output_bytes),
            ("--task-retention-ms", core.task_retention_ms),
        ];
        let mut flags: Vec<OsString> = vec!["snapshot-job".into(), "--data-dir".into(), self.data_dir.clone().into()];
        for (flag, value) in numbers {
            flags.push(flag.into());
            flags.push(value.to_string().into());
        }
        flags.extend(["--log-level".into(), self.log_level.name().into()]);
        flags
    }

    /// Runs the job in a child process of the same binary and waits for it.
    fn run_in_child(&self) -> Result<Taken, String> {
        let started = Instant::now();
        // The running binary itself, even if its file was replaced since.
        let mut command = Command::new("/proc/self/exe");
        // The job speaks for itself only in the log; systemd hears from the daemon.
        for variable in apiary_systemd::SERVICE_MANAGER_VARIABLES {
            command.env_remove(variable);
        }
        let output = command
            .args(self.to_flags())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|error| format!("cannot start the snapshot job: {error}"))?;
        if !output.status.success() {
            return Err(format!("the snapshot job failed ({})", output.status));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line =
            stdout.lines().find_map(|line| line.strip_prefix(JOB_DONE)).ok_or("the snapshot job said nothing")?;
        let said = || format!("the snapshot job said {line:?}");
        let (counts, path) = line.split_once(" path=").ok_or_else(said)?;
        let field = |name: &str| -> Option<usize> {
            counts.split_whitespace().find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        let (Some(tasks), Some(archived), Some(bytes)) = (field("tasks"), field("archived"), field("bytes")) else {
            return Err(said());
        };
        let file = SnapshotFile { covered_seq: self.upto_seq, path: PathBuf::from(path) };
        Ok(Taken { file, tasks, archived, bytes, took: started.elapsed() })
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }

    /// The job itself, in the child (`apiaryd snapshot-job`): prints one line
    /// on success.
    pub fn run(&self) -> Result<(), String> {
        // Its lines go straight to the stderr it shares with the daemon: no log thread here.
        logging::set_max_level(self.log_level);
        os::die_with_parent(self.parent_pid);
        if let Err(error) = os::lower_this_thread_priority() {
            logging::warn(format!("cannot lower the snapshot job's priority: {error}"));
        }
        let store = SnapshotStore::open(&self.snapshots_dir()).map_err(|error| error.to_string())?;
        let texts = open_texts(&self.snapshots_dir()).map_err(|error| error.to_string())?;
        let config = CoreConfig::from(&self.core);
        let mut core = match self.base_seq {
            0 => Core::new(config),
            base_seq => {
                let file = SnapshotFile { covered_seq: base_seq, path: store.path(base_seq) };
                restore_snapshot(&store, &texts, &file, &config)?
            }
        };
        let history = HistoryDir::open(&self.data_dir.join("history")).map_err(|error| error.to_string())?;
        let base_runs: Vec<u64> = core.history_runs().iter().map(|run| run.number).collect();
        read_records(&self.data_dir.join("wal"), self.base_seq + 1, self.upto_seq, |record| {
            replay::apply_record(&mut core, &record)
        })
        .map_err(|error| match error {
            ReadError::Wal(error) => error.to_string(),
            ReadError::Visit(error) => error.to_string(),
        })?;
        let archived = self.write_history_run(&history, &mut core)?;
        self.write_texts(&texts, &core)?;
        let snapshot = core.snapshot();
        let tasks = snapshot.tasks.len();
        let new_runs: Vec<u64> = snapshot.history.iter().map(|run| run.number).collect();
        let bytes = snapshot.encode();
        let file = store.write(self.upto_seq, self.created_ms, &bytes).map_err(|error| error.to_string())?;
        if self.keep_from_seq > 0 {
            store.remove_older_than(self.keep_from_seq).map_err(|error| error.to_string())?;
        }
        // The text files of the two kept snapshots stay; any other (an older
        // snapshot's, or a damaged one's set aside) goes.
        let kept = [self.keep_from_seq, self.upto_seq];
        remove_texts(&texts, |number| !kept.contains(&number)).map_err(|error| error.to_string())?;
        // The runs that neither this snapshot nor the one kept before it lists
        // (let go by retention, or left by a job that died) go now. The daemon let
        // go of them before the older snapshot's record, so none is mapped: their
        // blocks can be freed a MiB at a time (hundreds of MB discarded at once
        // would hold up the log's syncs).
        let listed: Vec<u64> = base_runs.into_iter().chain(new_runs).collect();
        let unlisted: Vec<u64> = history
            .list()
            .map_err(|error| error.to_string())?
            .into_iter()
            .filter(|run| !listed.contains(run))
            .collect();
        history.remove_gradually(&unlisted).map_err(|error| error.to_string())?;
        println!("{JOB_DONE} tasks={tasks} archived={archived} bytes={} path={}", bytes.len(), file.path.display());
        Ok(())
    }

    /// Writes the texts of the tasks that have not ended, durably, next to the
    /// snapshot (before it: a snapshot is only ever read with its text file).
    fn write_texts(&self, texts: &HistoryDir, core: &Core) -> Result<(), String> {
        let mut writer = texts.create(self.upto_seq).map_err(|error| error.to_string())?;
        for (task_id, text) in core.texts_to_file() {
            writer.push(task_id.as_u64(), &core_texts::encode(&text), &[]).map_err(|error| error.to_string())?;
        }
        writer.finish().map_err(|error| error.to_string())?;
        Ok(())
    }

    /// Moves the core's ended tasks into run `upto_seq`, durably, and lists it.
    fn write_history_run(&self, history: &HistoryDir, core: &mut Core) -> Result<usize, String> {
        let ended = core.take_ended_for_history();
        if ended.is_empty() {
            return Ok(0);
        }
        let mut writer = history.create(self.upto_seq).map_err(|error| error.to_string())?;
        for record in &ended {
            let keys = history::keys_of(record);
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            writer.push(record.task_id, &history::encode_record(record), &keys).map_err(|error| error.to_string())?;
        }
        writer.finish().map_err(|error| error.to_string())?;
        let run = history.open_run(self.upto_seq).map_err(|error| error.to_string())?;
        core.add_history_run(RunEntry::of(self.upto_seq, &run), None);
        Ok(ended.len())
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(subcommand)]
        job: Job,
    }

    #[derive(Subcommand)]
    enum Job {
        SnapshotJob(JobArgs),
    }

    /// The child must read every setting the daemon gives it, or no snapshot is ever written.
    #[test]
    fn a_job_reads_back_the_flags_it_is_given() {
        let config = CoreConfig { task_retention_ms: 77, cas_instance: "x".into(), ..CoreConfig::default() };
        let job = JobArgs {
            data_dir: PathBuf::from("/data"),
            base_seq: 1,
            upto_seq: 9,
            keep_from_seq: 2,
            created_ms: 3,
            parent_pid: 4,
            log_level: Level::Debug,
            core: CoreArgs::from(&config),
        };
        let mut argv: Vec<OsString> = vec!["apiaryd".into()];
        argv.extend(job.to_flags());
        let Job::SnapshotJob(parsed) = Command::try_parse_from(argv).expect("the job's flags parse").job;
        assert_eq!(parsed, job);
        assert_eq!(CoreConfig::from(&parsed.core).task_retention_ms, 77);
    }
}

//! The bot's conversation with the daemon: poll for work, run what comes, report
//! its output and outcome, and survive any number of lost connections meanwhile.
//!
//! The session is generic over a `Connector` so tests can drive it with a fake
//! daemon that drops connections and replies at will.
//!
//! Invariants:
//! - one request is in flight at a time; a lost connection is replaced after a
//!   backoff (100 ms doubling to 5 s, plus jitter), forever;
//! - a task keeps running while the daemon is unreachable, and its output is
//!   resent from the daemon's `output_len` after every reply, so no byte is lost
//!   or stored twice (see `output.rs` for the bound on what is kept meanwhile);
//! - the final report is retried until acknowledged (or refused as stale); only a
//!   shutdown bounds that retrying, by `Pacing::shutdown_report_timeout`;
//! - a `StaleRun` refusal stops the command and drops the task without a report;
//! - with a health check, it runs before every poll (see `health.rs`) and the poll
//!   carries its verdict: a quarantined bot says why, a healthy one sends "";
//! - `Reply::Terminate` (sent only to an idle bot) ends the session cleanly;
//! - every poll lists the named caches at rest and their sizes; caches beyond
//!   `--cache-max-bytes` are evicted after each task, least recently used first;
//! - the secret bytes of an assignment go only to the task's file: they are never
//!   logged, and the assignment is never printed whole;
//! - a task's inputs (`cas_input_root`) are written before its command and its
//!   outputs uploaded after it, also when it timed out or was killed, over the
//!   same connection (`StoreLink`), with an update every `liveness_interval`
//!   meanwhile so the daemon hears from the bot.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use apiary_protocol::cas::transfer::Call;
use apiary_protocol::cas::{CasStats, CasTransferStats};
use apiary_protocol::ids::format_task_id;
use apiary_protocol::tls::Security;
use apiary_protocol::{
    Assignment, BotPoll, Client, ClientError, ErrorCode, PackedDimensions, Reply, Request, Role, RunEnd, RunOutcome,
    StringPair, TaskProperties, TaskUpdate, limits,
};

use crate::cache::{CacheError, CacheStore};
use crate::content_cache::{ContentCache, ContentCacheError};
use crate::health::{Health, HealthCheck};
use crate::output::Acknowledged;
use crate::runner::{FinishedTask, RunningTask, TaskSpec};
use crate::task_files;
use crate::task_setup::TaskSetup;
use crate::workdir::{SecretBytes, WorkDirError, WorkRoot};

/// One connection to the daemon: a blocking call with a read timeout.
pub(crate) trait Connection {
    fn call(&mut self, request: &Request, timeout: Duration) -> Result<Reply, ClientError>;
}

/// Makes connections to the daemon.
pub(crate) trait Connector {
    type Connection: Connection;
    fn connect(&mut self) -> Result<Self::Connection, ClientError>;
}

/// The real daemon, over TCP.
pub(crate) struct TcpConnector {
    server: String,
    software: String,
    /// Sent in every hello; empty when there is none.
    token: String,
    security: Security,
}

impl TcpConnector {
    pub(crate) fn new(server: &str, software: &str, token: &str, security: Security) -> TcpConnector {
        TcpConnector { server: server.to_string(), software: software.to_string(), token: token.to_string(), security }
    }
}

impl Connector for TcpConnector {
    type Connection = Client;
    fn connect(&mut self) -> Result<Client, ClientError> {
        Client::connect_secure(&self.server, Role::Bot, &self.software, &self.token, &self.security)
    }
}

impl Connection for Client {
    fn call(&mut self, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
        self.set_read_timeout(Some(timeout))?;
        Client::call(self, request)
    }
}

/// Who the bot is, as the daemon sees it.
#[derive(Clone, Debug)]
pub(crate) struct BotIdentity {
    pub(crate) bot_id: String,
    /// Random per start of the agent: a new session means a restarted bot.
    pub(crate) session_id: u64,
    pub(crate) dimensions: Vec<StringPair>,
    pub(crate) software: String,
    /// The daemon's address, passed to tasks as `APIARY_SERVER`.
    pub(crate) server: String,
}

impl BotIdentity {
    /// The bot file (`${SWARMING_BOT_FILE}`): what a task may want to know of the bot
    /// that runs it, as JSON. Swarming leaves the file to a `bot_config.py` hook; Apiary
    /// has no hooks, so the bot writes its id, dimensions and daemon there itself.
    pub(crate) fn bot_file(&self) -> Vec<u8> {
        let mut dimensions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for pair in &self.dimensions {
            dimensions.entry(pair.key.as_str()).or_default().push(pair.value.as_str());
        }
        let description = serde_json::json!({
            "bot_id": self.bot_id,
            "dimensions": dimensions,
            "server": self.server,
            "software": self.software,
        });
        serde_json::to_vec_pretty(&description).expect("a map of strings serializes")
    }
}

/// Timings and sizes of the session; `Pacing::default()` is what the bot uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacing {
    /// Read timeout of a poll: comfortably above how long the daemon holds one.
    pub(crate) poll_timeout: Duration,
    /// Read timeout of a task update.
    pub(crate) update_timeout: Duration,
    /// Held output is sent at least this often.
    pub(crate) flush_interval: Duration,
    /// An update (maybe empty) is sent at least this often while a task runs:
    /// it proves the bot alive and is how a kill request reaches it.
    pub(crate) liveness_interval: Duration,
    /// Held output of this size is sent at once.
    pub(crate) chunk_bytes: usize,
    /// The most output in one update.
    pub(crate) max_update_bytes: usize,
    /// The most output held for the daemon; past it output is dropped with a marker.
    pub(crate) output_capacity_bytes: usize,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    /// How long a shutting-down bot keeps trying to deliver its final report.
    pub(crate) shutdown_report_timeout: Duration,
}

/// How often a waiting session looks at the shutdown flag.
const SHUTDOWN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const CHUNK_BYTES: usize = 64 << 10;
const OUTPUT_CAPACITY_BYTES: usize = 16 << 20;
const _: () = assert!(CHUNK_BYTES <= limits::MAX_OUTPUT_CHUNK_BYTES);
const _: () = assert!(limits::MAX_OUTPUT_CHUNK_BYTES <= OUTPUT_CAPACITY_BYTES);
/// The default of `--cas-cache-max-bytes`: what the content cache of input files may hold.
pub(crate) const DEFAULT_CONTENT_CACHE_MAX_BYTES: u64 = 20 << 30;
/// Tries of one request to the store over a connection that keeps failing.
const STORE_CALL_ATTEMPTS: u32 = 5;

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            poll_timeout: Duration::from_millis(limits::MAX_LONG_POLL_MS) + Duration::from_secs(30),
            update_timeout: Duration::from_secs(30),
            flush_interval: Duration::from_secs(1),
            // A kill request reaches the bot within a second; the daemon's least
            // bot_ping_tolerance_secs is three of these.
            liveness_interval: Duration::from_secs(limits::BOT_REPORT_INTERVAL_SECS.into()),
            chunk_bytes: CHUNK_BYTES,
            max_update_bytes: limits::MAX_OUTPUT_CHUNK_BYTES,
            output_capacity_bytes: OUTPUT_CAPACITY_BYTES,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            shutdown_report_timeout: Duration::from_secs(20),
        }
    }
}

impl Pacing {
    fn check(&self) {
        assert!(self.chunk_bytes > 0 && self.chunk_bytes <= self.max_update_bytes);
        assert!(self.max_update_bytes <= limits::MAX_OUTPUT_CHUNK_BYTES);
        assert!(self.max_update_bytes <= self.output_capacity_bytes);
        assert!(self.backoff_initial > Duration::ZERO && self.backoff_initial <= self.backoff_max);
        assert!(self.flush_interval <= self.liveness_interval);
    }
}

/// Whether the bot is busy (with a task or a health check) and whether it is shutting
/// down, shared by the session thread and the main thread (which exits at once if the
/// bot is idle, and otherwise waits for the session to stop what runs).
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    phase: Mutex<Phase>,
}

#[derive(Debug, Default)]
struct Phase {
    busy: bool,
    shutting_down: bool,
    /// The session has a connection to the daemon whose hello was accepted.
    connected: bool,
}

impl Lifecycle {
    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().expect("lifecycle lock poisoned")
    }

    /// False when the bot is shutting down: then the task (or check) must not start.
    fn try_begin_task(&self) -> bool {
        let mut phase = self.lock();
        if phase.shutting_down {
            return false;
        }
        phase.busy = true;
        true
    }

    fn end_task(&self) {
        self.lock().busy = false;
    }

    /// Starts the shutdown; true when no task runs, so the process may exit now
    /// (and no task will start any more).
    pub(crate) fn begin_shutdown(&self) -> bool {
        let mut phase = self.lock();
        phase.shutting_down = true;
        !phase.busy
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.lock().connected
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("the daemon refused the bot ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// Another process took over this bot id: coming back would take it over again.
    #[error("another apiary-bot with this id took over; exiting instead of reconnecting: {0}")]
    Superseded(String),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("the content cache: {0}")]
    ContentCache(#[from] ContentCacheError),
}

/// Why a task's command does not run.
#[derive(Debug)]
enum NotRun {
    /// The attempt ends so, and is reported.
    End(RunEnd),
    /// The daemon does not want the attempt any more: nothing is reported.
    Dropped,
}

/// Why a call produced no reply.
#[derive(Debug)]
enum CallError {
    /// No connection, and the backoff has not passed yet (or the call just failed);
    /// the next attempt is at `Session::next_connect_at`.
    NotConnected,
    /// The daemon refused the request for good.
    Refused { code: ErrorCode, message: String },
}

/// The daemon's answer to one task update.
#[derive(Debug)]
enum UpdateResult {
    Acknowledged {
        output_len: u64,
        must_stop: bool,
    },
    NotDelivered,
    /// The daemon does not want this attempt any more (the message says why).
    Dropped(String),
}

/// What became of one update of a running task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    Delivered,
    NotDelivered,
    Dropped,
}

pub(crate) struct Session<C: Connector> {
    identity: BotIdentity,
    pacing: Pacing,
    work_root: WorkRoot,
    connector: C,
    connection: Option<C::Connection>,
    lifecycle: Arc<Lifecycle>,
    backoff: Backoff,
    next_connect_at: Instant,
    health_check: Option<HealthCheck>,
    /// The last check's verdict, as sent in polls: empty when healthy.
    quarantine_reason: String,
    caches: CacheStore,
    content_cache_max_bytes: u64,
    /// Opened when the session starts; taken out while a task's inputs are written.
    content_cache: Option<ContentCache>,
    /// Set when the daemon said another session took over this bot id: the
    /// session stops whatever it does and ends.
    superseded: Option<String>,
}

impl<C: Connector> Session<C> {
    pub(crate) fn new(
        identity: BotIdentity,
        pacing: Pacing,
        work_root: WorkRoot,
        connector: C,
        lifecycle: Arc<Lifecycle>,
    ) -> Session<C> {
        pacing.check();
        let backoff = Backoff::new(pacing.backoff_initial, pacing.backoff_max, identity.session_id);
        let caches = CacheStore::new(work_root.caches_dir(), None);
        Session {
            identity,
            pacing,
            work_root,
            connector,
            connection: None,
            lifecycle,
            backoff,
            next_connect_at: Instant::now(),
            health_check: None,
            quarantine_reason: String::new(),
            caches,
            content_cache_max_bytes: DEFAULT_CONTENT_CACHE_MAX_BYTES,
            content_cache: None,
            superseded: None,
        }
    }

    /// Keeps at most `max_bytes` of input files in the content cache.
    pub(crate) fn with_content_cache_max_bytes(mut self, max_bytes: u64) -> Session<C> {
        self.content_cache_max_bytes = max_bytes;
        self
    }

    /// Evicts named caches beyond `max_bytes` in all after each task.
    pub(crate) fn with_cache_max_bytes(mut self, max_bytes: u64) -> Session<C> {
        self.caches = CacheStore::new(self.work_root.caches_dir(), Some(max_bytes));
        self
    }

    /// Runs `check` before every poll.
    pub(crate) fn with_health_check(mut self, check: HealthCheck) -> Session<C> {
        self.health_check = Some(check);
        self
    }

    /// Polls and runs tasks until the bot shuts down or the daemon tells it to exit.
    pub(crate) fn run(&mut self) -> Result<(), SessionError> {
        self.work_root.prepare()?;
        self.caches.load()?;
        self.trim_caches();
        let content_cache_dir = self.work_root.content_cache_dir();
        self.content_cache = Some(ContentCache::open(&content_cache_dir, self.content_cache_max_bytes)?);
        while !self.lifecycle.is_shutting_down() {
            if let Some(message) = self.superseded.take() {
                return Err(SessionError::Superseded(message));
            }
            if self.connection.is_none() && Instant::now() < self.next_connect_at {
                // No poll can go out yet: no check either.
                self.sleep_until_reconnect();
                continue;
            }
            self.check_health();
            let poll = Request::BotPoll(BotPoll {
                bot_id: self.identity.bot_id.clone(),
                session_id: self.identity.session_id,
                dimensions: PackedDimensions::new(&self.identity.dimensions),
                software: self.identity.software.clone(),
                quarantine_reason: self.quarantine_reason.clone(),
                caches: self.caches.infos(),
            });
            match self.call(&poll, self.pacing.poll_timeout) {
                Ok(Reply::NoWork) => {}
                Ok(Reply::Assignment(assignment)) => self.run_assignment(assignment),
                Ok(Reply::Terminate) => {
                    log_event!("the daemon asked the bot to exit; exiting");
                    return Ok(());
                }
                Ok(_) => self.drop_connection("an unexpected reply to a poll"),
                Err(CallError::NotConnected) => self.sleep_until_reconnect(),
                Err(CallError::Refused { code: ErrorCode::Superseded, .. }) => {}
                Err(CallError::Refused { code, message }) => return Err(SessionError::Refused { code, message }),
            }
        }
        Ok(())
    }

    /// Runs the health check, if there is one, and keeps its verdict for the poll.
    /// Logs only when the bot becomes quarantined or healthy again.
    fn check_health(&mut self) {
        let Some(check) = &self.health_check else { return };
        // Busy while the check runs, so a shutdown waits for it to be stopped.
        if !self.lifecycle.try_begin_task() {
            return;
        }
        let lifecycle = &self.lifecycle;
        let health = check.run(self.work_root.path(), &|| lifecycle.is_shutting_down());
        self.lifecycle.end_task();
        match health {
            Health::Healthy => {
                if !self.quarantine_reason.is_empty() {
                    log_event!("health check passed; healthy again");
                }
                self.quarantine_reason.clear();
            }
            Health::Quarantined(reason) => {
                if self.quarantine_reason.is_empty() {
                    log_event!("quarantined: {reason}");
                }
                self.quarantine_reason = reason;
            }
            Health::Interrupted => {}
        }
    }

    fn run_assignment(&mut self, assignment: Assignment) {
        // Taken apart at once: the secret never sits in anything that may be printed.
        let Assignment { run_id, task_name, slice_index, properties, secret_bytes } = assignment;
        let secret = secret_bytes.map(|secret| SecretBytes::new(secret.0));
        if !self.lifecycle.try_begin_task() {
            log_event!("task {}: not started, the bot is shutting down", format_task_id(run_id));
            return;
        }
        log_event!(
            "task {} started: {task_name:?} (slice {slice_index}) {:?}, {} named caches{}",
            format_task_id(run_id),
            properties.command,
            properties.caches.len(),
            if secret.is_some() { ", with secret bytes" } else { "" }
        );
        if let Some(finished) = self.run_in_task_dir(run_id, &properties, secret) {
            let outcome = &finished.outcome;
            let exit_code = outcome.exit_code.map_or_else(|| "none".to_string(), |code| code.to_string());
            log_event!(
                "task {} ended: {:?}, exit code {exit_code}, setup {} ms, command {} ms, teardown {} ms",
                format_task_id(run_id),
                outcome.end,
                outcome.setup_ms,
                outcome.duration_ms,
                outcome.teardown_ms
            );
            self.report_final(run_id, finished);
        }
        self.trim_caches();
        self.lifecycle.end_task();
    }

    /// Sets up the task's run directory, runs the command, and tears the directory
    /// down, timing each part. None when the daemon dropped the attempt (nothing is
    /// to be reported; the directory is torn down all the same).
    fn run_in_task_dir(
        &mut self,
        run_id: u64,
        properties: &TaskProperties,
        secret: Option<SecretBytes>,
    ) -> Option<FinishedTask> {
        let setup_started = Instant::now();
        let bot_file = self.identity.bot_file();
        let setup =
            TaskSetup::set_up(&self.work_root, &mut self.caches, run_id, properties, secret.as_ref(), &bot_file);
        // Written (or not): the bot keeps no copy.
        drop(secret);
        let setup = match setup {
            Ok(setup) => setup,
            Err(end) => {
                let mut finished = FinishedTask::not_started(end);
                finished.outcome.setup_ms = elapsed_ms(setup_started);
                return Some(finished);
            }
        };
        let mut cas_stats = CasStats::default();
        let inputs = self.fetch_inputs(run_id, properties, setup.work_dir(), &mut cas_stats);
        let spec = TaskSpec {
            run_id,
            properties,
            work_dir: setup.work_dir(),
            out_dir: setup.out_dir(),
            secret_path: setup.secret_path(),
            bot_file: setup.bot_file(),
            bot_id: &self.identity.bot_id,
            server: &self.identity.server,
            output_capacity_bytes: self.pacing.output_capacity_bytes,
        };
        let started = inputs.and_then(|()| RunningTask::start(&spec).map_err(|error| NotRun::End(error.run_end())));
        // Setup ends where the command's time begins, so no millisecond is counted twice.
        let setup_ended = started.as_ref().map_or_else(|_| Instant::now(), RunningTask::started_at);
        let setup_ms = millis(setup_ended.duration_since(setup_started));
        let (mut finished, command_ran) = match started {
            Ok(task) => {
                log_event!("task {}: running as pid {}", format_task_id(run_id), task.pid());
                (self.supervise(run_id, task), true)
            }
            Err(NotRun::End(end)) => (Some(FinishedTask::not_started(end)), false),
            Err(NotRun::Dropped) => (None, false),
        };
        let teardown_started = Instant::now();
        let dropped = match &mut finished {
            Some(finished) if command_ran => !self.upload_outputs(run_id, setup.out_dir(), finished),
            _ => false,
        };
        let torn_down = setup.tear_down(&mut self.caches);
        if let Err(error) = self.caches.save() {
            log_event!("failed to save the named caches' order: {error}");
        }
        let teardown_ms = elapsed_ms(teardown_started);
        let mut finished = finished.filter(|_| !dropped)?;
        if let Err(reason) = torn_down {
            mark_internal_failure(&mut finished, &reason);
        }
        finished.outcome.setup_ms = setup_ms;
        finished.outcome.teardown_ms = teardown_ms;
        if properties.cas_input_root.is_some() {
            finished.outcome.cas_mut().stats.download = cas_stats.download;
        }
        Some(finished)
    }

    /// Writes the task's input tree, if it has one, into its work directory.
    fn fetch_inputs(
        &mut self,
        run_id: u64,
        properties: &TaskProperties,
        work_dir: &std::path::Path,
        cas_stats: &mut CasStats,
    ) -> Result<(), NotRun> {
        let Some(input_root) = &properties.cas_input_root else { return Ok(()) };
        let Some(mut cache) = self.content_cache.take() else {
            return Err(NotRun::End(RunEnd::InternalError("the content cache is not open".to_string())));
        };
        let mut link = StoreLink::new(self, run_id, 0, true);
        let fetched = task_files::fetch_inputs(&mut link, &mut cache, input_root.digest, work_dir);
        let interrupted = link.interrupted.take();
        self.content_cache = Some(cache);
        cas_stats.download = fetched.stats;
        let stats = fetched.stats;
        log_event!(
            "task {}: inputs {}: {} files from the cache ({} bytes), {} downloaded ({} bytes) in {} ms; \
             the cache holds {} bytes",
            format_task_id(run_id),
            input_root.digest,
            stats.items_hot,
            stats.bytes_hot,
            stats.items_cold,
            stats.bytes_cold,
            stats.duration_ms,
            self.content_cache.as_ref().map_or(0, ContentCache::used_bytes)
        );
        match (interrupted, fetched.result) {
            (Some(interruption), _) => Err(interruption),
            (None, result) => result.map_err(NotRun::End),
        }
    }

    /// Uploads what the command left in `out_dir` and records it in the outcome;
    /// false when the daemon dropped the attempt meanwhile.
    fn upload_outputs(&mut self, run_id: u64, out_dir: &std::path::Path, finished: &mut FinishedTask) -> bool {
        let (output_offset, _) = finished.output.peek(0);
        let mut link = StoreLink::new(self, run_id, output_offset, false);
        let uploaded = task_files::upload_outputs(&mut link, out_dir);
        if matches!(link.interrupted, Some(NotRun::Dropped)) {
            return false;
        }
        let stats = uploaded.stats;
        if uploaded.root.is_some() || stats != CasTransferStats::default() {
            let cas = finished.outcome.cas_mut();
            (cas.stats.upload, cas.output_root) = (stats, uploaded.root);
        }
        if let Some(root) = uploaded.root {
            log_event!(
                "task {}: outputs {root}: {} blobs uploaded ({} bytes), {} already stored, in {} ms",
                format_task_id(run_id),
                stats.items_cold,
                stats.bytes_cold,
                stats.items_hot,
                stats.duration_ms
            );
        }
        if let Some(error) = uploaded.error {
            log_event!("task {}: {error}", format_task_id(run_id));
            mark_internal_failure(finished, &error);
        }
        true
    }

    /// Evicts caches beyond the limit (none is lent now) and saves the order.
    fn trim_caches(&mut self) {
        let (evicted, errors) = self.caches.evict();
        for error in &errors {
            log_event!("{error}");
        }
        for cache in &evicted {
            log_event!("evicted named cache {:?} ({} bytes)", cache.name, cache.size_bytes);
        }
        if let Err(error) = self.caches.save() {
            log_event!("failed to save the named caches' order: {error}");
        }
    }

    /// Streams the output of a running task until it ends. None when the daemon
    /// dropped the attempt: the command is stopped and nothing more is reported.
    fn supervise(&mut self, run_id: u64, task: RunningTask) -> Option<FinishedTask> {
        let pacing = self.pacing;
        let mut last_update_at = Instant::now();
        // An update failed: retry as soon as the backoff allows, not at the next flush.
        let mut undelivered = false;
        let mut shutdown_seen = false;
        loop {
            if !shutdown_seen && self.lifecycle.is_shutting_down() {
                shutdown_seen = true;
                log_event!("task {}: stopping it, the bot is shutting down", format_task_id(run_id));
                task.stop(RunEnd::InternalError("the bot was shut down while the task ran".to_string()));
            }
            if task.has_ended() {
                return Some(task.finish());
            }
            let now = Instant::now();
            let held_bytes = task.held_output_len();
            let flush_at =
                last_update_at + if held_bytes > 0 { pacing.flush_interval } else { pacing.liveness_interval };
            let due = undelivered || held_bytes >= pacing.chunk_bytes || now >= flush_at;
            if due && now >= self.next_connect_at {
                last_update_at = now;
                match self.send_running_update(run_id, &task) {
                    Delivery::Delivered => undelivered = false,
                    Delivery::NotDelivered => undelivered = true,
                    Delivery::Dropped => {
                        task.stop(RunEnd::Killed);
                        drop(task.finish());
                        return None;
                    }
                }
                continue;
            }
            // Wake for a full chunk only when it could be sent at once.
            let connected_soon = now >= self.next_connect_at;
            let wake_at = if undelivered { self.next_connect_at } else { flush_at.max(self.next_connect_at) };
            let timeout = wake_at.saturating_duration_since(now).min(SHUTDOWN_CHECK_INTERVAL);
            task.wait(timeout, if connected_soon { pacing.chunk_bytes } else { usize::MAX });
        }
    }

    /// Sends the held output of a running task (or an empty update, for liveness).
    fn send_running_update(&mut self, run_id: u64, task: &RunningTask) -> Delivery {
        let (offset, output) = task.peek_output(self.pacing.max_update_bytes);
        match self.send_update(run_id, offset, output, None) {
            UpdateResult::Acknowledged { output_len, must_stop } => {
                self.note_acknowledged(run_id, task.acknowledge_output(output_len));
                if must_stop {
                    log_event!("task {}: the daemon asked to stop it", format_task_id(run_id));
                    task.stop(RunEnd::Killed);
                }
                Delivery::Delivered
            }
            UpdateResult::NotDelivered => Delivery::NotDelivered,
            UpdateResult::Dropped(reason) => {
                log_event!("task {}: dropped ({reason}); stopping it", format_task_id(run_id));
                Delivery::Dropped
            }
        }
    }

    /// Delivers the rest of the output and the outcome, retrying until the daemon
    /// acknowledges the outcome or drops the attempt.
    fn report_final(&mut self, run_id: u64, mut finished: FinishedTask) {
        let mut give_up_at = None;
        loop {
            let now = Instant::now();
            if self.lifecycle.is_shutting_down() {
                let give_up_at = *give_up_at.get_or_insert(now + self.pacing.shutdown_report_timeout);
                if now >= give_up_at {
                    log_event!(
                        "task {}: giving up on the final report, the bot is shutting down",
                        format_task_id(run_id)
                    );
                    return;
                }
            }
            if now < self.next_connect_at {
                thread::sleep(self.next_connect_at.saturating_duration_since(now).min(SHUTDOWN_CHECK_INTERVAL));
                continue;
            }
            let is_last = finished.output.held_len() <= self.pacing.max_update_bytes;
            let (offset, output) = finished.output.peek(self.pacing.max_update_bytes);
            let sent_end = offset + output.len() as u64;
            let outcome = is_last.then(|| finished.outcome.clone());
            match self.send_update(run_id, offset, output, outcome) {
                UpdateResult::Acknowledged { output_len, .. } => {
                    self.note_acknowledged(run_id, finished.output.acknowledge(output_len));
                    if is_last {
                        if output_len < sent_end {
                            let missing = sent_end - output_len;
                            log_event!(
                                "task {}: the daemon ended it without the last {missing} bytes",
                                format_task_id(run_id)
                            );
                        }
                        log_event!("task {}: reported", format_task_id(run_id));
                        return;
                    }
                }
                UpdateResult::NotDelivered => {}
                UpdateResult::Dropped(reason) => {
                    log_event!("task {}: final report dropped ({reason})", format_task_id(run_id));
                    return;
                }
            }
        }
    }

    fn send_update(&mut self, run_id: u64, offset: u64, output: Vec<u8>, outcome: Option<RunOutcome>) -> UpdateResult {
        let update = Request::TaskUpdate(TaskUpdate {
            bot_id: self.identity.bot_id.clone(),
            session_id: self.identity.session_id,
            run_id,
            output_offset: offset,
            output,
            outcome,
        });
        match self.call(&update, self.pacing.update_timeout) {
            Ok(Reply::UpdateAck { output_len, must_stop }) => UpdateResult::Acknowledged { output_len, must_stop },
            Ok(_) => {
                self.drop_connection("an unexpected reply to a task update");
                UpdateResult::NotDelivered
            }
            Err(CallError::NotConnected) => UpdateResult::NotDelivered,
            Err(CallError::Refused { code: ErrorCode::StaleRun, message }) => {
                UpdateResult::Dropped(format!("the attempt is no longer current: {message}"))
            }
            Err(CallError::Refused { code, message }) => {
                UpdateResult::Dropped(format!("the daemon refused the update ({code:?}): {message}"))
            }
        }
    }

    fn note_acknowledged(&self, run_id: u64, acknowledged: Acknowledged) {
        match acknowledged {
            Acknowledged::InOrder => {}
            Acknowledged::DaemonAhead { extra_bytes } => {
                log_event!("task {}: the daemon holds {extra_bytes} bytes more than sent", format_task_id(run_id));
            }
            Acknowledged::DaemonBehind { lost_bytes } => {
                log_event!("task {}: the daemon lost {lost_bytes} acknowledged bytes", format_task_id(run_id));
            }
        }
    }

    /// One call, connecting first if the backoff allows. A failed connection is
    /// dropped and the next attempt scheduled; a refusal that may pass (the daemon
    /// busy or failing) is treated the same way.
    fn call(&mut self, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
        let result = self.call_connecting(request, timeout);
        // Whatever the call did to the connection, the main thread tells systemd.
        self.lifecycle.set_connected(self.connection.is_some());
        result
    }

    fn call_connecting(&mut self, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
        if self.connection.is_none() {
            if Instant::now() < self.next_connect_at {
                return Err(CallError::NotConnected);
            }
            if let Err(error) = self.connect() {
                return Err(self.failed(error));
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        match connection.call(request, timeout) {
            Ok(reply) => {
                self.backoff.reset();
                Ok(reply)
            }
            Err(error) => Err(self.failed(error)),
        }
    }

    fn connect(&mut self) -> Result<(), ClientError> {
        let connection = self.connector.connect()?;
        log_event!("connected as {} (session {:016x})", self.identity.bot_id, self.identity.session_id);
        self.connection = Some(connection);
        // Said now: the call that follows may be a poll held open for long.
        self.lifecycle.set_connected(true);
        Ok(())
    }

    /// One request to the store, connecting first (after the backoff). The
    /// daemon's refusals come back as they are, for the transfer to judge (it
    /// sends a request the store was too busy for again); a failed connection
    /// is dropped.
    fn store_call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let result = self.store_call_connecting(request);
        self.lifecycle.set_connected(self.connection.is_some());
        result
    }

    fn store_call_connecting(&mut self, request: &Request) -> Result<Reply, ClientError> {
        if self.connection.is_none() {
            self.sleep_until_reconnect();
            if let Err(error) = self.connect() {
                self.drop_connection(&error.to_string());
                return Err(error);
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        match connection.call(request, self.pacing.update_timeout) {
            Ok(reply) => {
                self.backoff.reset();
                Ok(reply)
            }
            Err(ClientError::Refused { code, message }) => {
                if code == ErrorCode::Superseded {
                    self.connection = None;
                    self.superseded = Some(message.clone());
                }
                Err(ClientError::Refused { code, message })
            }
            Err(error) => {
                self.drop_connection(&error.to_string());
                Err(error)
            }
        }
    }

    fn failed(&mut self, error: ClientError) -> CallError {
        match error {
            ClientError::Refused { code: ErrorCode::Superseded, message } => {
                log_event!("the daemon closed the connection: {message}");
                self.connection = None;
                self.superseded = Some(message.clone());
                CallError::Refused { code: ErrorCode::Superseded, message }
            }
            ClientError::Refused { code, message } if !matches!(code, ErrorCode::Unavailable | ErrorCode::Internal) => {
                CallError::Refused { code, message }
            }
            error => {
                self.drop_connection(&error.to_string());
                CallError::NotConnected
            }
        }
    }

    fn drop_connection(&mut self, reason: &str) {
        self.connection = None;
        let delay = self.backoff.next_delay();
        self.next_connect_at = Instant::now() + delay;
        log_event!("no connection to the daemon ({reason}); reconnecting in {} ms", delay.as_millis());
    }

    fn sleep_until_reconnect(&self) {
        thread::sleep(self.next_connect_at.saturating_duration_since(Instant::now()));
    }
}

/// The daemon's store over the session's connection, for one task's inputs or
/// outputs: a request whose connection failed is sent again on a new one (up to
/// `STORE_CALL_ATTEMPTS` times), and between requests an update goes out every
/// `liveness_interval`, so that the daemon knows the bot is alive, and a kill
/// request or a dropped attempt stops the transfer.
struct StoreLink<'s, C: Connector> {
    session: &'s mut Session<C>,
    run_id: u64,
    /// Where the task's unacknowledged output starts: the offset of the updates.
    output_offset: u64,
    last_update_at: Instant,
    /// Inputs stop on a kill request or a shutdown; outputs (the command has
    /// ended) go up all the same.
    stops_on_kill: bool,
    /// Why the transfer was stopped.
    interrupted: Option<NotRun>,
}

impl<'s, C: Connector> StoreLink<'s, C> {
    fn new(session: &'s mut Session<C>, run_id: u64, output_offset: u64, stops_on_kill: bool) -> StoreLink<'s, C> {
        StoreLink { session, run_id, output_offset, last_update_at: Instant::now(), stops_on_kill, interrupted: None }
    }

    /// Sends an update when one is due; an error when the transfer must stop.
    fn keep_alive(&mut self) -> Result<(), ClientError> {
        if self.interrupted.is_none() && self.stops_on_kill && self.session.lifecycle.is_shutting_down() {
            let reason = "the bot was shut down while it fetched the task's inputs".to_string();
            self.interrupted = Some(NotRun::End(RunEnd::InternalError(reason)));
        }
        if self.interrupted.is_none() && self.last_update_at.elapsed() >= self.session.pacing.liveness_interval {
            self.last_update_at = Instant::now();
            self.send_liveness_update();
        }
        match self.interrupted {
            None => Ok(()),
            Some(_) => Err(ClientError::Io(io::Error::new(io::ErrorKind::Interrupted, "the transfer was stopped"))),
        }
    }

    fn send_liveness_update(&mut self) {
        let task_id = format_task_id(self.run_id);
        match self.session.send_update(self.run_id, self.output_offset, Vec::new(), None) {
            UpdateResult::Acknowledged { must_stop: true, .. } if self.stops_on_kill => {
                log_event!("task {task_id}: the daemon asked to stop it while its inputs were fetched");
                self.interrupted = Some(NotRun::End(RunEnd::Killed));
            }
            UpdateResult::Acknowledged { .. } | UpdateResult::NotDelivered => {}
            UpdateResult::Dropped(reason) => {
                log_event!("task {task_id}: dropped ({reason}) during its transfers");
                self.interrupted = Some(NotRun::Dropped);
            }
        }
    }
}

impl<C: Connector> Call for StoreLink<'_, C> {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let mut attempts = 0;
        loop {
            self.keep_alive()?;
            attempts += 1;
            match self.session.store_call(request) {
                Err(error) if !matches!(error, ClientError::Refused { .. }) && attempts < STORE_CALL_ATTEMPTS => {}
                answer => return answer,
            }
        }
    }
}

/// The command's result stays (its exit code too); the attempt ends as the
/// bot's failure, saying why.
fn mark_internal_failure(finished: &mut FinishedTask, reason: &str) {
    let end = &finished.outcome.end;
    finished.outcome.end = RunEnd::InternalError(format!("{reason} (the command ended as {end:?})"));
}

fn elapsed_ms(since: Instant) -> u64 {
    millis(since.elapsed())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Exponential backoff with up to 50% random jitter added.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    random: XorShift,
}

impl Backoff {
    fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { initial, max, next: initial, random: XorShift::new(seed) }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter_range_us = u64::try_from(base.as_micros() / 2).unwrap_or(u64::MAX);
        base + Duration::from_micros(self.random.next() % (jitter_range_us + 1))
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A tiny PRNG for jitter; not for anything that must be unpredictable.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A random session id: from /dev/urandom, or the time mixed with the pid.
pub(crate) fn random_session_id() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_urandom = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    if from_urandom.is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;

    use apiary_protocol::{NamedCache, TaskUpdate};

    use super::*;
    use apiary_protocol::cas::memory_store::MemoryStore;

    const RUN_ID: u64 = 0x5551;

    /// Which calls the fake daemon fails, and how.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Failure {
        None,
        /// The request never arrives.
        BeforeApplying,
        /// The request is applied but the reply is lost.
        AfterApplying,
    }

    /// A daemon that stores output by offset, like the real one, and can fail.
    #[derive(Default)]
    struct FakeDaemon {
        assignments: VecDeque<Assignment>,
        /// The output and outcome of the run updated last (`run_id`).
        run_id: u64,
        output: Vec<u8>,
        outcome: Option<RunOutcome>,
        /// Earlier runs, with their whole output and outcome, in the order they ended.
        finished: Vec<(u64, Vec<u8>, Option<RunOutcome>)>,
        updates: usize,
        calls: usize,
        /// Fail every n-th call (alternately before and after applying it).
        fail_every: Option<usize>,
        failed_connects: usize,
        /// Answer the n-th update with `must_stop`.
        must_stop_at_update: Option<usize>,
        /// Refuse updates as stale from the n-th on.
        stale_from_update: Option<usize>,
        /// Ask the bot to shut down at the n-th update.
        shutdown_at_update: Option<usize>,
        /// Every poll received.
        polls: Vec<BotPoll>,
        /// Answer this many polls with NoWork before asking the bot to shut down.
        idle_polls: usize,
        /// Answer the n-th poll with Terminate.
        terminate_at_poll: Option<usize>,
        /// Create this file when the n-th poll arrives (to make a health check pass).
        create_at_poll: Option<(usize, std::path::PathBuf)>,
        lifecycle: Arc<Lifecycle>,
        /// The content-addressed store the bot's transfers go to.
        store: MemoryStore,
        /// How long each store request takes.
        store_delay: Duration,
    }

    impl FakeDaemon {
        fn failure(&mut self) -> Failure {
            self.calls += 1;
            match self.fail_every {
                Some(every) if self.calls.is_multiple_of(every) => {
                    if (self.calls / every).is_multiple_of(2) {
                        Failure::BeforeApplying
                    } else {
                        Failure::AfterApplying
                    }
                }
                _ => Failure::None,
            }
        }

        fn handle(&mut self, request: &Request) -> Result<Reply, ClientError> {
            match request {
                Request::BotPoll(poll) => {
                    assert_eq!(poll.bot_id, "bot1");
                    self.polls.push(poll.clone());
                    let number = self.polls.len();
                    if let Some((_, path)) = self.create_at_poll.as_ref().filter(|(at, _)| *at == number) {
                        std::fs::write(path, "").unwrap();
                    }
                    if self.terminate_at_poll == Some(number) {
                        return Ok(Reply::Terminate);
                    }
                    if let Some(assignment) = self.assignments.pop_front() {
                        return Ok(Reply::Assignment(assignment));
                    }
                    if self.idle_polls > 0 {
                        self.idle_polls -= 1;
                    } else {
                        self.lifecycle.begin_shutdown();
                    }
                    Ok(Reply::NoWork)
                }
                Request::TaskUpdate(update) => self.update(update),
                _ => {
                    thread::sleep(self.store_delay);
                    self.store.answer(request).unwrap_or_else(|| panic!("a bot sent {request:?}"))
                }
            }
        }

        fn update(&mut self, update: &TaskUpdate) -> Result<Reply, ClientError> {
            assert_eq!(update.session_id, 7);
            assert!(update.run_id >= RUN_ID && update.run_id < RUN_ID + 16, "run {:x}", update.run_id);
            if update.run_id != self.run_id {
                // The bot moved on to another run: keep the one before.
                let output = std::mem::take(&mut self.output);
                if self.run_id != 0 {
                    self.finished.push((self.run_id, output, self.outcome.take()));
                }
                self.run_id = update.run_id;
                self.updates = 0;
            }
            assert!(update.output.len() <= limits::MAX_OUTPUT_CHUNK_BYTES);
            self.updates += 1;
            if self.outcome.is_some() || self.stale_from_update.is_some_and(|n| self.updates >= n) {
                let message = "the attempt ended".to_string();
                return Err(ClientError::Refused { code: ErrorCode::StaleRun, message });
            }
            if self.shutdown_at_update == Some(self.updates) {
                self.lifecycle.begin_shutdown();
            }
            let offset = usize::try_from(update.output_offset).unwrap();
            if offset <= self.output.len() {
                let overlap = (self.output.len() - offset).min(update.output.len());
                assert_eq!(self.output[offset..offset + overlap], update.output[..overlap], "resent bytes differ");
                self.output.extend_from_slice(&update.output[overlap..]);
                if update.outcome.is_some() && offset + update.output.len() == self.output.len() {
                    self.outcome = update.outcome.clone();
                }
            }
            let must_stop = self.must_stop_at_update.is_some_and(|n| self.updates >= n);
            Ok(Reply::UpdateAck { output_len: self.output.len() as u64, must_stop })
        }
    }

    #[derive(Clone)]
    struct FakeConnector(Arc<Mutex<FakeDaemon>>);
    struct FakeConnection(Arc<Mutex<FakeDaemon>>);

    fn broken() -> ClientError {
        ClientError::Io(io::Error::new(io::ErrorKind::ConnectionReset, "fake connection reset"))
    }

    impl Connector for FakeConnector {
        type Connection = FakeConnection;
        fn connect(&mut self) -> Result<FakeConnection, ClientError> {
            let mut daemon = self.0.lock().unwrap();
            if daemon.failed_connects > 0 {
                daemon.failed_connects -= 1;
                return Err(broken());
            }
            Ok(FakeConnection(Arc::clone(&self.0)))
        }
    }

    impl Connection for FakeConnection {
        fn call(&mut self, request: &Request, _timeout: Duration) -> Result<Reply, ClientError> {
            let mut daemon = self.0.lock().unwrap();
            match daemon.failure() {
                Failure::None => daemon.handle(request),
                Failure::BeforeApplying => Err(broken()),
                Failure::AfterApplying => daemon.handle(request).and(Err(broken())),
            }
        }
    }

    fn fast_pacing() -> Pacing {
        Pacing {
            poll_timeout: Duration::from_secs(1),
            update_timeout: Duration::from_secs(1),
            flush_interval: Duration::from_millis(5),
            liveness_interval: Duration::from_millis(20),
            chunk_bytes: 200,
            max_update_bytes: 700,
            output_capacity_bytes: 1 << 20,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            shutdown_report_timeout: Duration::from_secs(5),
        }
    }

    fn assignment(command: &[&str], grace_period_secs: u32) -> Assignment {
        Assignment {
            secret_bytes: None,
            run_id: RUN_ID,
            task_name: "test".to_string(),
            slice_index: 0,
            properties: Arc::new(TaskProperties {
                command: command.iter().map(|part| part.to_string()).collect(),
                execution_timeout_secs: 60,
                grace_period_secs,
                ..TaskProperties::default()
            }),
        }
    }

    /// Runs a session against the fake daemon until the daemon has no more work.
    fn run_session(daemon: FakeDaemon) -> (FakeDaemon, tempfile::TempDir) {
        run_session_checked(daemon, None)
    }

    /// `run_session` with a health check before each poll.
    fn run_session_checked(daemon: FakeDaemon, health_check: Option<HealthCheck>) -> (FakeDaemon, tempfile::TempDir) {
        let work_dir = tempfile::tempdir().unwrap();
        let daemon = run_session_in(daemon, work_dir.path(), |session| match health_check {
            Some(check) => session.with_health_check(check),
            None => session,
        });
        (daemon, work_dir)
    }

    /// Runs a session in `work_dir` (which may hold what an earlier session left),
    /// configured by `configure`.
    fn run_session_in(
        daemon: FakeDaemon,
        work_dir: &std::path::Path,
        configure: impl FnOnce(Session<FakeConnector>) -> Session<FakeConnector>,
    ) -> FakeDaemon {
        let lifecycle = Arc::clone(&daemon.lifecycle);
        let daemon = Arc::new(Mutex::new(daemon));
        let identity = BotIdentity {
            bot_id: "bot1".to_string(),
            session_id: 7,
            dimensions: vec![StringPair::new("id", "bot1")],
            software: "apiary-bot/test".to_string(),
            server: "fake:1".to_string(),
        };
        let work_root = WorkRoot::new(work_dir.to_path_buf());
        let session = Session::new(identity, fast_pacing(), work_root, FakeConnector(Arc::clone(&daemon)), lifecycle);
        let mut session = configure(session);
        session.run().expect("the session ends cleanly");
        drop(session);
        Arc::try_unwrap(daemon).ok().expect("the session is gone").into_inner().unwrap()
    }

    /// Every run's output and outcome, in the order they ended.
    fn runs(daemon: &FakeDaemon) -> Vec<(u64, String, RunOutcome)> {
        let last = (daemon.run_id, daemon.output.clone(), daemon.outcome.clone());
        daemon
            .finished
            .iter()
            .cloned()
            .chain(std::iter::once(last))
            .map(|(run_id, output, outcome)| {
                (run_id, String::from_utf8(output).unwrap(), outcome.expect("every run was reported"))
            })
            .collect()
    }

    /// A shell script run as task `RUN_ID + number`, with these named caches.
    fn task(number: u64, script: &str, caches: &[(&str, &str)]) -> Assignment {
        let mut assignment = assignment(&["sh", "-c", script], 30);
        assignment.run_id = RUN_ID + number;
        Arc::make_mut(&mut assignment.properties).caches =
            caches.iter().map(|(name, path)| NamedCache { name: name.to_string(), path: path.to_string() }).collect();
        assignment
    }

    fn cache_infos(poll: &BotPoll) -> Vec<(&str, u64)> {
        poll.caches.iter().map(|info| (info.name.as_str(), info.size_bytes)).collect()
    }

    /// Every file under `dir` (not following links) whose bytes contain `needle`.
    fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                found.extend(files_containing(&path, needle));
            } else if metadata.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|window| window == needle) {
                    found.push(path);
                }
            }
        }
        found
    }

    fn expected_lines(count: usize) -> String {
        (1..=count).map(|line| format!("line {line}\n")).collect()
    }

    #[test]
    fn output_is_exact_across_lost_connections() {
        // Two bursts of output with a pause, so updates go out while the task runs
        // and after it ended; every 3rd call fails, before or after being applied.
        let script = "i=1; while [ $i -le 400 ]; do echo line $i; i=$((i+1)); done; sleep 0.1; \
                      while [ $i -le 800 ]; do echo line $i; i=$((i+1)); done";
        let daemon = FakeDaemon {
            assignments: VecDeque::from([assignment(&["sh", "-c", script], 30)]),
            fail_every: Some(3),
            failed_connects: 3,
            ..FakeDaemon::default()
        };
        let (daemon, work_dir) = run_session(daemon);
        assert_eq!(String::from_utf8(daemon.output).unwrap(), expected_lines(800));
        let outcome = daemon.outcome.expect("the outcome was reported");
        assert_eq!((outcome.exit_code, outcome.end), (Some(0), RunEnd::Exited));
        assert!(daemon.updates > 10, "only {} updates", daemon.updates);
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0, "the task dir is removed");
    }

    #[test]
    fn must_stop_kills_the_command() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([assignment(&["sh", "-c", "echo started; exec sleep 30"], 30)]),
            must_stop_at_update: Some(1),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session(daemon);
        let outcome = daemon.outcome.expect("the outcome was reported");
        assert_eq!((outcome.exit_code, outcome.end), (Some(-1), RunEnd::Killed));
    }

    #[test]
    fn a_stale_run_is_stopped_and_dropped() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([
                assignment(&["sleep", "30"], 30),
                assignment(&["sh", "-c", "echo second"], 30),
            ]),
            stale_from_update: Some(2),
            ..FakeDaemon::default()
        };
        let (daemon, work_dir) = run_session(daemon);
        // The first task was dropped without an outcome; the bot went on polling
        // and ran the second, which the fake refuses as stale as well.
        assert_eq!(daemon.outcome, None);
        assert!(daemon.assignments.is_empty());
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn a_command_that_cannot_start_is_a_client_error() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([assignment(&["/nonexistent/apiary-test-command"], 30)]),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session(daemon);
        let outcome = daemon.outcome.expect("the outcome was reported");
        assert_eq!(outcome.exit_code, None);
        assert!(matches!(outcome.end, RunEnd::ClientError(_)), "{:?}", outcome.end);
    }

    #[test]
    fn shutdown_stops_the_task_and_reports_it() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([assignment(&["sh", "-c", "echo started; exec sleep 30"], 30)]),
            shutdown_at_update: Some(1),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session(daemon);
        let outcome = daemon.outcome.expect("the outcome was reported");
        assert_eq!(outcome.exit_code, Some(-1));
        assert!(matches!(outcome.end, RunEnd::InternalError(_)), "{:?}", outcome.end);
        assert_eq!(daemon.output, b"started\n");
    }

    #[test]
    fn a_failing_health_check_quarantines_until_it_passes() {
        let flags = tempfile::tempdir().unwrap();
        let healthy = flags.path().join("healthy");
        let command = format!("test -e '{}' || {{ echo ' disk full'; exit 3; }}", healthy.display());
        let check = HealthCheck { command, timeout: Duration::from_secs(10) };
        let daemon = FakeDaemon {
            idle_polls: 2,
            create_at_poll: Some((2, healthy)),
            // Every other call fails: the check runs again before each resent poll.
            fail_every: Some(2),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session_checked(daemon, Some(check));
        let reasons: Vec<&str> = daemon.polls.iter().map(|poll| poll.quarantine_reason.as_str()).collect();
        let sick = "health check failed (exit 3): disk full";
        assert_eq!(reasons.first(), Some(&sick), "{reasons:?}");
        let first_healthy = reasons.iter().position(|reason| reason.is_empty()).expect("a poll after the fix");
        assert!(first_healthy >= 2, "{reasons:?}");
        assert!(reasons[..first_healthy].iter().all(|reason| *reason == sick), "{reasons:?}");
        assert!(reasons[first_healthy..].iter().all(|reason| reason.is_empty()), "{reasons:?}");
    }

    #[test]
    fn without_a_health_check_the_reason_is_empty() {
        let daemon = FakeDaemon { idle_polls: 2, ..FakeDaemon::default() };
        let (daemon, _work_dir) = run_session(daemon);
        assert_eq!(daemon.polls.len(), 3);
        assert!(daemon.polls.iter().all(|poll| poll.quarantine_reason.is_empty()));
    }

    #[test]
    fn terminate_ends_the_session_with_success() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([assignment(&["sh", "-c", "echo first"], 30)]),
            terminate_at_poll: Some(2),
            idle_polls: 5,
            ..FakeDaemon::default()
        };
        let lifecycle = Arc::clone(&daemon.lifecycle);
        let (daemon, _work_dir) = run_session(daemon);
        assert_eq!(daemon.polls.len(), 2, "no poll after Terminate");
        assert_eq!(daemon.outcome.expect("the task before it was reported").exit_code, Some(0));
        assert!(!lifecycle.is_shutting_down(), "the session ended on its own");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 42);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        let mut base = Duration::from_millis(100);
        for delay in delays {
            assert!(delay >= base && delay <= base + base / 2, "{delay:?} for {base:?}");
            base = (base * 2).min(Duration::from_secs(5));
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(151));
    }

    #[test]
    fn a_refused_poll_ends_the_session() {
        struct Refusing;
        impl Connection for Refusing {
            fn call(&mut self, _request: &Request, _timeout: Duration) -> Result<Reply, ClientError> {
                Err(ClientError::Refused { code: ErrorCode::InvalidRequest, message: "bad dimension".to_string() })
            }
        }
        struct RefusingConnector;
        impl Connector for RefusingConnector {
            type Connection = Refusing;
            fn connect(&mut self) -> Result<Refusing, ClientError> {
                Ok(Refusing)
            }
        }
        let work_dir = tempfile::tempdir().unwrap();
        let identity = BotIdentity {
            bot_id: "bot1".to_string(),
            session_id: 7,
            dimensions: Vec::new(),
            software: "test".to_string(),
            server: "fake:1".to_string(),
        };
        let lifecycle = Arc::new(Lifecycle::default());
        let work_root = WorkRoot::new(work_dir.path().to_path_buf());
        let mut session = Session::new(identity, fast_pacing(), work_root, RefusingConnector, lifecycle);
        assert!(matches!(session.run(), Err(SessionError::Refused { code: ErrorCode::InvalidRequest, .. })));
    }

    #[test]
    fn the_task_gets_an_empty_out_dir_also_in_its_arguments() {
        let script = r#"test -d "$APIARY_OUTDIR" && test -z "$(ls -A "$APIARY_OUTDIR")" && touch "$1/made" \
                        && ls "$APIARY_OUTDIR" && echo "$1""#;
        let mut assignment = assignment(&["sh", "-c", script, "sh", "${APIARY_OUTDIR}"], 30);
        assignment.run_id = RUN_ID + 1;
        let daemon = FakeDaemon { assignments: VecDeque::from([assignment]), ..FakeDaemon::default() };
        let (daemon, work_dir) = run_session(daemon);
        let runs = runs(&daemon);
        let (_, output, outcome) = &runs[0];
        assert_eq!(outcome.exit_code, Some(0), "{output}");
        let out_dir = work_dir.path().join("w").join(format_task_id(RUN_ID + 1)).join("out");
        assert_eq!(*output, format!("made\n{}\n", out_dir.display()));
        assert!(!out_dir.exists(), "the out dir is removed with the run directory");
        assert_eq!(outcome.cas_output_root().map(|root| daemon.store.blobs.contains_key(&root)), Some(true));
    }

    #[test]
    fn secret_bytes_reach_only_the_task_and_leave_no_trace() {
        const SECRET: &[u8] = b"apiary-test-secret\x00\xff\x01-42";
        let script = r#"stat -c %a "$APIARY_SECRET_BYTES_PATH"; od -An -tx1 "$APIARY_SECRET_BYTES_PATH" | tr -d ' \n'; \
                        echo; echo "$APIARY_SECRET_BYTES_PATH" > ../../../path; cp "$APIARY_SECRET_BYTES_PATH" copy"#;
        let mut with_secret = task(1, script, &[]);
        with_secret.secret_bytes = Some(apiary_protocol::SecretBytes(SECRET.to_vec()));
        let without = task(2, r#"echo "[${APIARY_SECRET_BYTES_PATH-unset}]""#, &[]);
        let daemon = FakeDaemon { assignments: VecDeque::from([with_secret, without]), ..FakeDaemon::default() };
        let (daemon, work_dir) = run_session(daemon);
        let runs = runs(&daemon);
        let hex: String = SECRET.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(runs[0].1, format!("600\n{hex}\n"));
        assert_eq!(runs[0].2.exit_code, Some(0));
        assert_eq!(runs[1].1, "[unset]\n");
        let secret_path = std::fs::read_to_string(work_dir.path().join("path")).unwrap();
        assert!(secret_path.trim_end().starts_with(work_dir.path().join("w").to_str().unwrap()), "{secret_path}");
        assert!(!std::path::Path::new(secret_path.trim_end()).exists());
        assert_eq!(files_containing(work_dir.path(), SECRET), Vec::<std::path::PathBuf>::new());
    }

    #[test]
    fn a_named_cache_keeps_files_between_tasks_and_is_reported() {
        let first = task(1, "test -z \"$(ls -A cache/git)\" && printf 12345 > cache/git/file", &[("git", "cache/git")]);
        let second = task(2, "cat there/file; printf 678 >> there/file", &[("git", "there")]);
        let daemon = FakeDaemon { assignments: VecDeque::from([first, second]), ..FakeDaemon::default() };
        let (daemon, work_dir) = run_session(daemon);
        let runs = runs(&daemon);
        assert_eq!(runs[0].2.exit_code, Some(0), "the cache starts empty: {}", runs[0].1);
        assert_eq!((runs[1].1.as_str(), runs[1].2.exit_code), ("12345", Some(0)));
        let polls: Vec<Vec<(&str, u64)>> = daemon.polls.iter().map(cache_infos).collect();
        assert_eq!(polls, [vec![], vec![("git", 5)], vec![("git", 8)]]);
        assert_eq!(std::fs::read(work_dir.path().join("c/git/file")).unwrap(), b"12345678");
        // A restarted bot finds it, with its size.
        let daemon = run_session_in(FakeDaemon::default(), work_dir.path(), |session| session);
        assert_eq!(cache_infos(&daemon.polls[0]), [("git", 8)]);
    }

    #[test]
    fn caches_beyond_the_limit_are_evicted_least_recently_used_first() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([
                task(1, "printf 0123456789 > a/f", &[("a", "a")]),
                task(2, "printf 0123456789 > b/f", &[("b", "b")]),
                task(3, "cat a/f", &[("a", "a")]),
                task(4, "printf 0123456789 > c/f", &[("c", "c")]),
            ]),
            ..FakeDaemon::default()
        };
        let work_dir = tempfile::tempdir().unwrap();
        let daemon = run_session_in(daemon, work_dir.path(), |session| session.with_cache_max_bytes(25));
        let polls: Vec<Vec<(&str, u64)>> = daemon.polls.iter().map(cache_infos).collect();
        assert_eq!(
            polls,
            [
                vec![],
                vec![("a", 10)],
                vec![("a", 10), ("b", 10)],
                // `a` was used last: `b` goes.
                vec![("a", 10), ("b", 10)],
                vec![("a", 10), ("c", 10)],
            ]
        );
        assert_eq!(runs(&daemon)[2].1, "0123456789");
        assert!(!work_dir.path().join("c/b").exists());
        // A restarted bot with a smaller limit keeps the order: `a` is the older one now.
        let daemon = run_session_in(FakeDaemon::default(), work_dir.path(), |session| session.with_cache_max_bytes(10));
        assert_eq!(cache_infos(&daemon.polls[0]), [("c", 10)]);
    }

    #[test]
    fn setup_command_and_teardown_times_are_reported() {
        // The task leaves 3000 files behind: removing them takes well over a millisecond.
        let script = "mkdir many && cd many && seq 3000 | xargs touch && sleep 0.2";
        let daemon =
            FakeDaemon { assignments: VecDeque::from([task(1, script, &[("tool", "tool")])]), ..FakeDaemon::default() };
        let started = Instant::now();
        let (daemon, _work_dir) = run_session(daemon);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
        let outcome = &runs(&daemon)[0].2;
        assert_eq!(outcome.exit_code, Some(0));
        assert!(outcome.duration_ms >= 200, "{outcome:?}");
        assert!(outcome.teardown_ms >= 1, "{outcome:?}");
        assert!(outcome.setup_ms + outcome.duration_ms + outcome.teardown_ms <= elapsed_ms, "{outcome:?}");
    }

    #[test]
    fn a_task_that_removes_its_own_directory_is_contained() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([
                task(
                    1,
                    "echo x > cache/f; rm -rf \"$(dirname \"$PWD\")\"; test -e ../out || echo gone",
                    &[("kept", "cache")],
                ),
                task(2, "ls -A cache; pwd >/dev/null && echo second", &[("kept", "cache")]),
            ]),
            ..FakeDaemon::default()
        };
        let (daemon, work_dir) = run_session(daemon);
        let runs = runs(&daemon);
        assert_eq!((runs[0].1.as_str(), runs[0].2.exit_code, &runs[0].2.end), ("gone\n", Some(0), &RunEnd::Exited));
        // The cache went with the directory: it starts empty again.
        assert_eq!((runs[1].1.as_str(), runs[1].2.exit_code), ("second\n", Some(0)));
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn read_only_leftovers_and_caches_are_cleaned_up_and_kept() {
        let script = "echo x > cache/f; mkdir -p locked/inner; chmod -R a-w cache locked .";
        let daemon =
            FakeDaemon { assignments: VecDeque::from([task(1, script, &[("ro", "cache")])]), ..FakeDaemon::default() };
        let (daemon, work_dir) = run_session(daemon);
        assert_eq!(runs(&daemon)[0].2.end, RunEnd::Exited);
        assert_eq!(cache_infos(daemon.polls.last().unwrap()), [("ro", 2)]);
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn a_task_ignoring_sigterm_is_killed_after_the_grace_period() {
        let mut ignoring = assignment(&["sh", "-c", "trap '' TERM; echo started; sleep 30"], 1);
        Arc::make_mut(&mut ignoring.properties).caches =
            vec![NamedCache { name: "c".to_string(), path: "c".to_string() }];
        let daemon = FakeDaemon {
            assignments: VecDeque::from([ignoring]),
            must_stop_at_update: Some(1),
            ..FakeDaemon::default()
        };
        let (daemon, work_dir) = run_session(daemon);
        let outcome = daemon.outcome.expect("the outcome was reported");
        assert_eq!((outcome.exit_code, &outcome.end), (Some(-1), &RunEnd::Killed));
        assert!(outcome.duration_ms >= 1000, "SIGKILL came before the grace period ended: {outcome:?}");
        assert_eq!(cache_infos(daemon.polls.last().unwrap()), [("c", 0)]);
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
    }

    /// A task `RUN_ID + number` running `script` with the tree `root` as its inputs.
    fn task_with_inputs(number: u64, script: &str, root: apiary_protocol::cas::Digest) -> Assignment {
        let mut assignment = task(number, script, &[]);
        let reference = apiary_protocol::cas::CasReference { cas_instance: String::new(), digest: root };
        Arc::make_mut(&mut assignment.properties).cas_input_root = Some(Box::new(reference));
        assignment
    }

    /// A tree of an executable script and a nested data file, stored.
    fn stored_inputs(store: &mut MemoryStore) -> apiary_protocol::cas::Digest {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/in.txt"), b"input bytes\n").unwrap();
        std::fs::write(dir.path().join("tool.sh"), b"#!/bin/sh\necho tool ran\n").unwrap();
        std::fs::set_permissions(dir.path().join("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let archive = apiary_protocol::cas::tree::Archive::of_directory_contents(dir.path()).unwrap();
        store.blobs.extend(archive.directories.clone());
        for path in archive.files.values() {
            store.insert(&std::fs::read(path).unwrap());
        }
        archive.root
    }

    #[test]
    fn inputs_are_there_for_the_command_and_its_outputs_go_up_after_it() {
        let mut store = MemoryStore::default();
        let root = stored_inputs(&mut store);
        let script = r#"cat data/in.txt && ./tool.sh > "$APIARY_OUTDIR/result.txt""#;
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task_with_inputs(1, script, root)]),
            store,
            ..FakeDaemon::default()
        };
        let work_dir = tempfile::tempdir().unwrap();
        let daemon = run_session_in(daemon, work_dir.path(), |session| session);
        let (_, output, outcome) = runs(&daemon).remove(0);
        assert_eq!((output.as_str(), outcome.exit_code, &outcome.end), ("input bytes\n", Some(0), &RunEnd::Exited));
        let download = outcome.cas_stats().download;
        assert_eq!((download.items_cold, download.bytes_cold, download.items_hot), (2, 12 + 24, 0));
        let expected = tempfile::tempdir().unwrap();
        std::fs::write(expected.path().join("result.txt"), b"tool ran\n").unwrap();
        let expected_root = apiary_protocol::cas::tree::Archive::of_directory_contents(expected.path()).unwrap().root;
        assert_eq!(outcome.cas_output_root(), Some(expected_root));
        assert_eq!(daemon.store.blobs[&apiary_protocol::cas::Digest::of(b"tool ran\n")], b"tool ran\n");
        assert_eq!((outcome.cas_stats().upload.items_cold, outcome.cas_stats().upload.items_hot), (2, 0));

        // A restarted bot runs the same inputs from its cache: a store without
        // a single blob of them does not matter.
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task_with_inputs(2, "cat data/in.txt", root)]),
            ..FakeDaemon::default()
        };
        let daemon = run_session_in(daemon, work_dir.path(), |session| session);
        let (_, output, outcome) = runs(&daemon).remove(0);
        assert_eq!((output.as_str(), outcome.exit_code), ("input bytes\n", Some(0)));
        let download = outcome.cas_stats().download;
        assert_eq!((download.items_hot, download.bytes_hot, download.items_cold), (2, 36, 0));
        assert_eq!(daemon.store.requests, Vec::<&str>::new(), "nothing was downloaded");
        assert_eq!(outcome.cas_output_root(), None, "an empty output directory has no root");
    }

    #[test]
    fn transfers_go_on_across_lost_connections() {
        let mut store = MemoryStore::default();
        let root = stored_inputs(&mut store);
        let script = r#"./tool.sh > "$APIARY_OUTDIR/out.txt" && cp data/in.txt "$APIARY_OUTDIR/""#;
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task_with_inputs(1, script, root)]),
            store,
            // Every 3rd call fails, before or after the store served it.
            fail_every: Some(3),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session(daemon);
        let (_, output, outcome) = runs(&daemon).remove(0);
        assert_eq!((outcome.exit_code, &outcome.end), (Some(0), &RunEnd::Exited), "{output}");
        let root = outcome.cas_output_root().expect("the outputs were uploaded");
        assert!(daemon.store.blobs.contains_key(&root));
        assert!(daemon.store.blobs.contains_key(&apiary_protocol::cas::Digest::of(b"tool ran\n")));
    }

    #[test]
    fn a_kill_request_while_inputs_come_stops_them_and_the_command_never_runs() {
        let mut store = MemoryStore::default();
        let root = stored_inputs(&mut store);
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task_with_inputs(1, "echo ran", root)]),
            store,
            // Longer than the liveness interval: an update goes out between two requests.
            store_delay: fast_pacing().liveness_interval * 2,
            must_stop_at_update: Some(1),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session(daemon);
        let (_, output, outcome) = runs(&daemon).remove(0);
        assert_eq!((output.as_str(), outcome.exit_code, &outcome.end), ("", None, &RunEnd::Killed));
        assert!(outcome.cas_stats().download.items_cold < 2, "{outcome:?}");
    }

    #[test]
    fn inputs_the_store_lacks_are_a_client_error_and_the_command_does_not_run() {
        let root = apiary_protocol::cas::Digest::of(b"a root nobody stored");
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task_with_inputs(1, "echo ran", root)]),
            ..FakeDaemon::default()
        };
        let (daemon, work_dir) = run_session(daemon);
        let (_, output, outcome) = runs(&daemon).remove(0);
        let expected = format!("missing_cas: the store lacks 1 blob(s) of input root {root}: {root}");
        assert_eq!((output.as_str(), outcome.exit_code, outcome.end), ("", None, RunEnd::ClientError(expected)));
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn outputs_go_up_also_after_a_timeout() {
        let mut timed_out = task(1, r#"echo partial > "$APIARY_OUTDIR/log"; exec sleep 30"#, &[]);
        Arc::make_mut(&mut timed_out.properties).execution_timeout_secs = 1;
        let daemon = FakeDaemon { assignments: VecDeque::from([timed_out]), ..FakeDaemon::default() };
        let (daemon, _work_dir) = run_session(daemon);
        let (_, _, outcome) = runs(&daemon).remove(0);
        assert_eq!(outcome.end, RunEnd::HardTimeout);
        let root = outcome.cas_output_root().expect("the outputs were uploaded");
        assert!(daemon.store.blobs.contains_key(&root));
        assert_eq!(daemon.store.blobs[&apiary_protocol::cas::Digest::of(b"partial\n")], b"partial\n");
    }

    #[test]
    fn outputs_that_cannot_go_up_keep_the_exit_code_and_say_why() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task(1, r#"mkfifo "$APIARY_OUTDIR/pipe"; exit 3"#, &[])]),
            ..FakeDaemon::default()
        };
        let (daemon, _work_dir) = run_session(daemon);
        let (_, _, outcome) = runs(&daemon).remove(0);
        assert_eq!((outcome.exit_code, outcome.cas_output_root()), (Some(3), None));
        let RunEnd::InternalError(reason) = &outcome.end else { panic!("{outcome:?}") };
        assert!(reason.starts_with("cannot read the outputs: ") && reason.ends_with("(the command ended as Exited)"));
    }

    #[test]
    fn bad_named_caches_are_a_client_error() {
        let daemon = FakeDaemon {
            assignments: VecDeque::from([task(1, "true", &[("Bad-Name", "x")]), task(2, "true", &[("a", "../x")])]),
            ..FakeDaemon::default()
        };
        let (daemon, work_dir) = run_session(daemon);
        for (_, _, outcome) in runs(&daemon) {
            assert!(matches!(outcome.end, RunEnd::ClientError(_)), "{outcome:?}");
        }
        assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
    }
}

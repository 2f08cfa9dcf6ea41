//! The messages carried in frames. Request types mirror Swarming's
//! `NewTaskRequest` JSON (same field names), so a request file written for
//! Swarming decodes here unchanged; unknown fields are refused by name.

use std::sync::Arc;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

use crate::PackedDimensions;
use crate::cas::{CasReference, CasStats, Digest};
use crate::limits;
use crate::recent_properties::RecentProperties;

/// First bytes of every hello, so a stray client is recognised at once.
pub const MAGIC: [u8; 4] = *b"APRY";
/// Bumped on every incompatible change of frames or messages. Adding a
/// variant to `Request` or `Reply` is one: rkyv lays an enum out as large as
/// its largest variant, so every archived message may change its layout.
pub const PROTOCOL_VERSION: u16 = 7;

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Bot,
}

/// The first frame of every connection. `Debug` leaves the token out.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, PartialEq, Eq)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u16,
    pub role: Role,
    /// Free text naming the peer's program and version, for logs.
    pub software: String,
    /// The bearer token that names the peer's principal; empty when it has
    /// none (a daemon with principals configured then refuses the hello).
    /// At most `limits::MAX_TOKEN_BYTES`.
    pub token: String,
}

impl Hello {
    pub fn new(role: Role, software: &str) -> Hello {
        Hello::with_token(role, software, "")
    }

    pub fn with_token(role: Role, software: &str, token: &str) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role,
            software: software.to_string(),
            token: token.to_string(),
        }
    }
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("magic", &self.magic)
            .field("version", &self.version)
            .field("role", &self.role)
            .field("software", &self.software)
            .field("token", &format_args!("({} bytes)", self.token.len()))
            .finish()
    }
}

/// A key and a value, as Swarming writes dimensions and environment variables.
#[derive(
    Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[rkyv(compare(PartialEq))]
#[serde(deny_unknown_fields)]
pub struct StringPair {
    pub key: String,
    pub value: String,
}

impl StringPair {
    pub fn new(key: &str, value: &str) -> StringPair {
        StringPair { key: key.to_string(), value: value.to_string() }
    }
}

/// A key and a list of values, as Swarming writes `env_prefixes`.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(compare(PartialEq))]
#[serde(deny_unknown_fields)]
pub struct StringListPair {
    pub key: String,
    pub value: Vec<String>,
}

/// What runs, and where it may run: everything that defines one slice's work.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(compare(PartialEq))]
#[serde(deny_unknown_fields, default)]
pub struct TaskProperties {
    pub command: Vec<String>,
    pub dimensions: Vec<StringPair>,
    pub env: Vec<StringPair>,
    pub env_prefixes: Vec<StringListPair>,
    pub relative_cwd: String,
    pub execution_timeout_secs: u32,
    /// Seconds without output before the task is stopped; 0 means no limit.
    pub io_timeout_secs: u32,
    pub grace_period_secs: u32,
    pub idempotent: bool,
    /// Named caches: directories that live on the bot across tasks, mapped into
    /// the work directory at `path` while the task runs.
    pub caches: Vec<NamedCache>,
    /// The tree mapped into the work directory before the command runs. Boxed:
    /// most tasks have none, and every task's record in the log carries the
    /// field (8 bytes archived, not 56).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cas_input_root: Option<Box<CasReference>>,
}

/// A named cache and where the task sees it, relative to its work directory.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(compare(PartialEq))]
#[serde(deny_unknown_fields)]
pub struct NamedCache {
    pub name: String,
    pub path: String,
}

impl Default for TaskProperties {
    fn default() -> TaskProperties {
        TaskProperties {
            command: Vec::new(),
            dimensions: Vec::new(),
            env: Vec::new(),
            env_prefixes: Vec::new(),
            relative_cwd: String::new(),
            execution_timeout_secs: limits::DEFAULT_EXECUTION_TIMEOUT_SECS,
            io_timeout_secs: 0,
            grace_period_secs: limits::DEFAULT_GRACE_PERIOD_SECS,
            idempotent: false,
            caches: Vec::new(),
            cas_input_root: None,
        }
    }
}

/// One way to run a task; a request tries its slices in order.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct TaskSlice {
    /// Shared, not copied, by everything that hands the slice on: an assignment,
    /// a task's result. Decoded through `RecentProperties`: a run of equal
    /// properties is decoded once.
    #[rkyv(with = RecentProperties)]
    pub properties: Arc<TaskProperties>,
    /// Seconds this slice may wait for a bot before the task moves on.
    pub expiration_secs: u32,
    pub wait_for_capacity: bool,
}

impl Default for TaskSlice {
    fn default() -> TaskSlice {
        TaskSlice {
            properties: Arc::default(),
            expiration_secs: limits::DEFAULT_EXPIRATION_SECS,
            wait_for_capacity: false,
        }
    }
}

/// A new task, in the shape of Swarming's `NewTaskRequest`.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NewTaskRequest {
    pub name: String,
    pub priority: u8,
    pub tags: Vec<String>,
    pub user: String,
    pub task_slices: Vec<TaskSlice>,
    pub bot_ping_tolerance_secs: u32,
    /// Bytes only the bot running the task gets, in a file named by
    /// `APIARY_SECRET_BYTES_PATH`. Never shown: not in JSON, not in results.
    #[serde(skip)]
    pub secret_bytes: Option<SecretBytes>,
}

/// Where a new task comes from, beyond its request (Swarming's `request_uuid` and
/// `parent_task_id`). Empty for most tasks, which are sent as plain `NewTask`.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskLineage {
    /// Makes creation idempotent: the same uuid from the same requester within
    /// `limits::REQUEST_UUID_WINDOW_SECS` answers with the task it first created.
    /// Empty: none. At most `limits::MAX_REQUEST_UUID_BYTES`.
    pub request_uuid: String,
    /// The task (request or run id) this one is a child of: a child that has not
    /// started when its parent ends is canceled.
    pub parent_task_id: Option<u64>,
}

impl TaskLineage {
    pub fn is_empty(&self) -> bool {
        self.request_uuid.is_empty() && self.parent_task_id.is_none()
    }
}

/// Bytes that must never be shown: `Debug` prints only how many there are.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

impl Default for NewTaskRequest {
    fn default() -> NewTaskRequest {
        NewTaskRequest {
            name: String::new(),
            priority: limits::DEFAULT_PRIORITY,
            tags: Vec::new(),
            user: String::new(),
            task_slices: Vec::new(),
            bot_ping_tolerance_secs: limits::DEFAULT_BOT_PING_TOLERANCE_SECS,
            secret_bytes: None,
        }
    }
}

/// The states of a task, with Swarming's names.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Pending,
    Running,
    Completed,
    TimedOut,
    BotDied,
    Expired,
    Killed,
    Canceled,
    NoResource,
    ClientError,
}

impl TaskState {
    pub const ALL: [TaskState; 10] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Completed,
        TaskState::TimedOut,
        TaskState::BotDied,
        TaskState::Expired,
        TaskState::Killed,
        TaskState::Canceled,
        TaskState::NoResource,
        TaskState::ClientError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Running => "RUNNING",
            TaskState::Completed => "COMPLETED",
            TaskState::TimedOut => "TIMED_OUT",
            TaskState::BotDied => "BOT_DIED",
            TaskState::Expired => "EXPIRED",
            TaskState::Killed => "KILLED",
            TaskState::Canceled => "CANCELED",
            TaskState::NoResource => "NO_RESOURCE",
            TaskState::ClientError => "CLIENT_ERROR",
        }
    }

    pub fn from_name(name: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|state| state.name().eq_ignore_ascii_case(name))
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }
}

/// What the daemon knows of a task: its request and how far it got.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    /// The request id (ends in 0).
    pub task_id: u64,
    /// The current or last attempt's run id, once one started.
    pub run_id: Option<u64>,
    pub state: TaskState,
    pub exit_code: Option<i64>,
    pub bot_id: Option<String>,
    pub try_number: u8,
    pub current_task_slice: u32,
    pub created_unix_ms: u64,
    pub started_unix_ms: Option<u64>,
    pub completed_unix_ms: Option<u64>,
    /// When the task ended without a normal end of its command.
    pub abandoned_unix_ms: Option<u64>,
    /// How long the command ran, as the bot measured it.
    pub duration_ms: Option<u64>,
    /// The daemon or the bot failed around the task (not the task's own fault).
    pub internal_failure: bool,
    /// Why the task ended as it did, when it did not just exit.
    pub failure_reason: String,
    pub output_len: u64,
    /// Set when an idempotent task reused the result of this earlier run.
    pub deduped_from: Option<u64>,
    /// Which timeout stopped the task, when it TIMED_OUT.
    pub timeout: Option<TimeoutKind>,
    /// Where the bot's time went: preparing (work directory, caches, secrets) and cleaning up.
    pub setup_ms: Option<u64>,
    pub teardown_ms: Option<u64>,
    pub has_secret_bytes: bool,
    /// The output reached the daemon's per-task cap; the rest was dropped.
    pub output_truncated: bool,
    /// Why a PENDING task is still waiting (only in answers to queries).
    pub pending: Option<PendingInfo>,
    /// What the run left in `${ISOLATED_OUTDIR}`, once uploaded (for a
    /// deduplicated task, the earlier run's).
    pub cas_output_root: Option<CasReference>,
    /// What moving the run's inputs and outputs cost.
    pub cas_stats: Option<CasStats>,
    pub request: NewTaskRequest,
}

/// A new task's acknowledgement.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTaskAck {
    /// The request id (ends in 0).
    pub task_id: u64,
    /// PENDING, RUNNING when a parked bot took it at once, or an end state
    /// (NO_RESOURCE, or COMPLETED when an idempotent task reused a result).
    pub state: TaskState,
    /// Set when an idempotent task reused the result of this earlier run.
    pub deduped_from: Option<u64>,
}

/// Why a task is still pending: who could run its current slice, and its place in line.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingInfo {
    /// Live bots whose dimensions match the current slice.
    pub matching_bots: u32,
    /// How many of those are busy with other tasks.
    pub busy_bots: u32,
    /// Tasks ahead of this one in its queue (0: it is next).
    pub queue_position: u64,
}

/// The states a task query asks for, as Swarming's `StateQuery` names them:
/// each single state, and the groups Swarming users filter by.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateQuery {
    #[default]
    All,
    /// PENDING or RUNNING.
    PendingRunning,
    /// COMPLETED with exit code 0.
    CompletedSuccess,
    /// COMPLETED with another exit code (or none).
    CompletedFailure,
    /// COMPLETED by reusing an earlier idempotent run's result.
    Deduped,
    One(TaskState),
}

impl StateQuery {
    const GROUPS: [StateQuery; 5] = [
        StateQuery::All,
        StateQuery::PendingRunning,
        StateQuery::CompletedSuccess,
        StateQuery::CompletedFailure,
        StateQuery::Deduped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StateQuery::All => "ALL",
            StateQuery::PendingRunning => "PENDING_RUNNING",
            StateQuery::CompletedSuccess => "COMPLETED_SUCCESS",
            StateQuery::CompletedFailure => "COMPLETED_FAILURE",
            StateQuery::Deduped => "DEDUPED",
            StateQuery::One(state) => state.name(),
        }
    }

    /// Every name `from_name` reads, groups first.
    pub fn names() -> Vec<&'static str> {
        let groups = StateQuery::GROUPS.into_iter().map(StateQuery::name);
        groups.chain(TaskState::ALL.into_iter().map(TaskState::name)).collect()
    }

    /// Any case, as Swarming's names or its `QUERY_` spelling (`QUERY_PENDING_RUNNING`).
    pub fn from_name(name: &str) -> Option<StateQuery> {
        let name = name.strip_prefix("QUERY_").or_else(|| name.strip_prefix("query_")).unwrap_or(name);
        let group = StateQuery::GROUPS.into_iter().find(|query| query.name().eq_ignore_ascii_case(name));
        group.or_else(|| TaskState::from_name(name).map(StateQuery::One))
    }

    /// The one stored state every matching task is in, if there is one: what
    /// an index by state can narrow a search to.
    pub fn single_state(self) -> Option<TaskState> {
        match self {
            StateQuery::All | StateQuery::PendingRunning => None,
            StateQuery::CompletedSuccess | StateQuery::CompletedFailure | StateQuery::Deduped => {
                Some(TaskState::Completed)
            }
            StateQuery::One(state) => Some(state),
        }
    }

    /// Whether only tasks that have not ended can match.
    pub fn only_unended(self) -> bool {
        match self {
            StateQuery::PendingRunning => true,
            StateQuery::One(state) => !state.is_terminal(),
            _ => false,
        }
    }

    /// Whether a task in `state`, with this exit code and dedup source, matches.
    pub fn matches(self, state: TaskState, exit_code: Option<i64>, deduped: bool) -> bool {
        match self {
            StateQuery::All => true,
            StateQuery::PendingRunning => !state.is_terminal(),
            StateQuery::CompletedSuccess => state == TaskState::Completed && exit_code == Some(0),
            StateQuery::CompletedFailure => state == TaskState::Completed && exit_code != Some(0),
            StateQuery::Deduped => state == TaskState::Completed && deduped,
            StateQuery::One(wanted) => state == wanted,
        }
    }
}

/// Which tasks a listing, a count or a cancel by tags is about.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskQuery {
    pub state: StateQuery,
    /// `key:value` tags that must all be present.
    pub tags: Vec<String>,
    /// At most this many tasks (capped by `limits::MAX_TASK_PAGE`); 0 means the default.
    pub limit: u32,
    /// From a previous page's `next_cursor`: continue after it.
    pub cursor: Option<u64>,
    /// Only tasks created at or after this time (Unix ms).
    pub created_since_unix_ms: Option<u64>,
    /// Only tasks created before this time (Unix ms).
    pub created_until_unix_ms: Option<u64>,
}

/// How many bots match a filter, and how many of those are in each standing
/// (Swarming's `BotsCount`; a bot may be in several).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BotCounts {
    pub count: u32,
    pub busy: u32,
    pub dead: u32,
    pub quarantined: u32,
    pub connected: u32,
    /// Asked to exit (`bots terminate`) and not yet shut down.
    pub terminating: u32,
    pub shut_down: u32,
}

/// What one call of a cancel by tags did.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CanceledTasks {
    /// Pending tasks now CANCELED.
    pub canceled: u32,
    /// Running tasks whose bots are told to stop them (with `kill_running`).
    pub kill_requested: u32,
    /// Matching tasks this call looked at: pending and running ones.
    pub matched: u32,
    /// Continue with this cursor: more matching tasks may follow.
    pub next_cursor: Option<u64>,
}

/// What a cancel did.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was pending and is CANCELED now.
    Canceled,
    /// The task runs; its bot is told to stop it, and it ends KILLED.
    KillRequested,
    /// The task runs and was left alone (no `kill_running`).
    LeftRunning,
    /// The task had already ended; nothing changed.
    AlreadyEnded,
}

/// The ways an attempt can end on a bot.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The command exited (or was killed by a signal it did not cause by timeout).
    Exited,
    /// The hard timeout passed and the bot stopped the command.
    HardTimeout,
    /// No output for the I/O timeout and the bot stopped the command.
    IoTimeout,
    /// The daemon asked the bot to stop the command.
    Killed,
    /// The command could not be started; rerunning the same request would not help.
    ClientError(String),
    /// The bot failed around the task (work directory, disk, upload).
    InternalError(String),
}

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    Hard,
    Io,
}

impl TimeoutKind {
    pub fn name(self) -> &'static str {
        match self {
            TimeoutKind::Hard => "hard",
            TimeoutKind::Io => "io",
        }
    }
}

/// A bot's final word on an attempt. The default: exited, no code, nothing measured.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit code, or -1 when the process was killed without one.
    pub exit_code: Option<i64>,
    /// How long the command itself ran.
    pub duration_ms: u64,
    /// Work directory, caches and secrets before the command; clean-up after it.
    pub setup_ms: u64,
    pub teardown_ms: u64,
    pub end: RunEnd,
    /// The task's files moved through the content-addressed store, when it
    /// had inputs or left outputs (boxed: most runs have none, and every
    /// request is as large as its largest kind).
    pub cas: Option<Box<CasOutcome>>,
}

/// What a run's files in the content-addressed store came to.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CasOutcome {
    /// The tree of what the command left in `${ISOLATED_OUTDIR}`, uploaded
    /// (none when it left nothing or the upload failed).
    pub output_root: Option<Digest>,
    /// Inputs mapped and outputs uploaded: counted in `setup_ms` and `teardown_ms`.
    pub stats: CasStats,
}

impl Default for RunOutcome {
    fn default() -> RunOutcome {
        RunOutcome { exit_code: None, duration_ms: 0, setup_ms: 0, teardown_ms: 0, end: RunEnd::Exited, cas: None }
    }
}

impl RunOutcome {
    /// The files' part of the outcome, made when first written.
    pub fn cas_mut(&mut self) -> &mut CasOutcome {
        self.cas.get_or_insert_with(Box::default)
    }

    pub fn cas_output_root(&self) -> Option<Digest> {
        self.cas.as_ref().and_then(|cas| cas.output_root)
    }

    pub fn cas_stats(&self) -> CasStats {
        self.cas.as_ref().map_or_else(CasStats::default, |cas| cas.stats)
    }
}

/// A named cache a bot holds, and its size on disk.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    pub name: String,
    pub size_bytes: u64,
}

/// What a bot tells the daemon each time it asks for work.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct BotPoll {
    pub bot_id: String,
    /// Chosen at random when the agent starts: a new session means a restarted bot.
    pub session_id: u64,
    /// The bot's dimensions; a key given twice has two values.
    pub dimensions: PackedDimensions,
    pub software: String,
    /// Why the bot's own health check failed; empty when it passed (or there is none).
    pub quarantine_reason: String,
    /// The named caches the bot holds now.
    pub caches: Vec<CacheInfo>,
}

/// The daemon's answer to a poll that found work.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub run_id: u64,
    pub task_name: String,
    pub slice_index: u32,
    pub properties: Arc<TaskProperties>,
    /// The task's secret bytes, for this bot only.
    pub secret_bytes: Option<SecretBytes>,
}

/// A bot's report on the attempt it runs: output at an offset, and at the end
/// the outcome. Resending an update changes nothing.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskUpdate {
    pub bot_id: String,
    pub session_id: u64,
    pub run_id: u64,
    pub output_offset: u64,
    pub output: Vec<u8>,
    pub outcome: Option<RunOutcome>,
}

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct BotInfo {
    pub bot_id: String,
    pub dimensions: Vec<StringPair>,
    /// The run the bot is busy with, if any.
    pub current_run_id: Option<u64>,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    /// Connected and polling or reporting now.
    pub connected: bool,
    pub software: String,
    /// Not heard from for the daemon's bot death timeout: no work until it returns.
    pub dead: bool,
    /// Why the bot gets no work, when it is quarantined (by its health check or by a person).
    pub quarantine_reason: Option<String>,
    /// The bot is to exit once its current task ends.
    pub terminate_requested: bool,
    /// The bot exited on a terminate request and has not come back.
    pub shut_down: bool,
    pub caches: Vec<CacheInfo>,
}

/// Something that happened to a bot, with its dimensions at the time.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct BotEvent {
    /// Grows by one with each event of the bot; the cursor of a listing.
    pub number: u64,
    pub at_unix_ms: u64,
    pub kind: BotEventKind,
    pub dimensions: Vec<StringPair>,
    /// The run the event is about, if any.
    pub run_id: Option<u64>,
    pub message: String,
}

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BotEventKind {
    Connected,
    DimensionsChanged,
    TaskAssigned,
    TaskCompleted,
    TaskError,
    TaskKilled,
    Quarantined,
    Unquarantined,
    Missing,
    TerminateRequested,
    ShutDown,
}

impl BotEventKind {
    pub fn name(self) -> &'static str {
        match self {
            BotEventKind::Connected => "bot_connected",
            BotEventKind::DimensionsChanged => "bot_dimensions_changed",
            BotEventKind::TaskAssigned => "task_assigned",
            BotEventKind::TaskCompleted => "task_completed",
            BotEventKind::TaskError => "task_error",
            BotEventKind::TaskKilled => "task_killed",
            BotEventKind::Quarantined => "bot_quarantined",
            BotEventKind::Unquarantined => "bot_unquarantined",
            BotEventKind::Missing => "bot_missing",
            BotEventKind::TerminateRequested => "bot_terminate_requested",
            BotEventKind::ShutDown => "bot_shutdown",
        }
    }
}

/// A page of one bot's events, newest first.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct BotEventQuery {
    pub bot_id: String,
    /// At most this many (capped by `limits::MAX_TASK_PAGE`); 0 means the default.
    pub limit: u32,
    /// From a previous page's `next_cursor`: continue after it.
    pub cursor: Option<u64>,
    pub since_unix_ms: Option<u64>,
    pub until_unix_ms: Option<u64>,
}

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Create a task. Answered with `Reply::Created` once its creation is durable.
    NewTask(NewTaskRequest),
    /// A task's result now; `task_id` may be a request or a run id.
    GetTask {
        task_id: u64,
    },
    /// A task's result once it ended, or after `timeout_ms` (capped by the daemon).
    WaitTask {
        task_id: u64,
        timeout_ms: u64,
    },
    /// Output bytes from `offset`, at most `max_bytes`.
    GetOutput {
        task_id: u64,
        offset: u64,
        max_bytes: u32,
    },
    /// Output from `offset` as it arrives: the daemon pushes `Reply::Output`
    /// frames with this request id, the last one with `task_ended`.
    FollowOutput {
        task_id: u64,
        offset: u64,
    },
    /// Bots that have all these dimensions (`key=a|b` accepts either value); all bots when empty.
    ListBots {
        dimensions: Vec<StringPair>,
    },
    GetBot {
        bot_id: String,
    },
    ListTasks(TaskQuery),
    /// Ends a pending task as CANCELED; with `kill_running`, also stops a running one (KILLED).
    CancelTask {
        task_id: u64,
        kill_running: bool,
    },
    /// Checks a request as `NewTask` would, and returns it as the daemon would store it.
    ValidateTask(NewTaskRequest),
    /// Gives the bot no work until `UnquarantineBot`.
    QuarantineBot {
        bot_id: String,
        reason: String,
    },
    UnquarantineBot {
        bot_id: String,
    },
    /// The bot finishes its current task, then exits; `reason` goes into its events.
    TerminateBot {
        bot_id: String,
        reason: String,
    },
    ListBotEvents(BotEventQuery),
    /// How many tasks match the query (its limit and cursor are not used), at
    /// most `limits::MAX_TASK_COUNT`.
    CountTasks(TaskQuery),
    /// Cancels up to `query.limit` pending tasks with all of `query.tags` (at
    /// least one), newest first, after `query.cursor`; with `kill_running`,
    /// running ones too. Answered with `Reply::CanceledTasks`.
    CancelTasks {
        query: TaskQuery,
        kill_running: bool,
    },
    /// How many bots have all these dimensions, and their standing.
    CountBots {
        dimensions: Vec<StringPair>,
    },
    /// The tasks a bot ran, newest first, as far back as its events go. The
    /// cursor is an event number (`Reply::Tasks::next_cursor`).
    ListBotTasks {
        bot_id: String,
        limit: u32,
        cursor: Option<u64>,
    },
    /// Forgets a bot that is dead or not connected; a connected one is refused.
    DeleteBot {
        bot_id: String,
    },
    /// A bot asks for work; held open until work arrives or the poll times out.
    BotPoll(BotPoll),
    TaskUpdate(TaskUpdate),
    /// `NewTask` with a request uuid or a parent; answered as `NewTask` is, or,
    /// when the uuid was seen, with the task it created then.
    NewTaskWithLineage {
        request: NewTaskRequest,
        lineage: TaskLineage,
    },
    /// Which of these blobs the content-addressed store lacks (REAPI's
    /// `FindMissingBlobs`); at most `limits::MAX_CAS_DIGESTS`. Needs `read_cas`.
    CasFindMissing {
        digests: Vec<Digest>,
    },
    /// Stores small blobs whole (REAPI's `BatchUpdateBlobs`): at most
    /// `limits::MAX_CAS_DIGESTS` blobs and `limits::MAX_CAS_BATCH_BYTES` of
    /// data. Answered with `Reply::CasStored` once all are checked and durable.
    /// Needs `write_cas`.
    CasBatchUpload {
        blobs: Vec<CasBlob>,
    },
    /// Starts or resumes an upload in chunks; answered with where it continues.
    /// Needs `write_cas`.
    CasUploadStart {
        digest: Digest,
    },
    /// The next chunk of an upload, at most `limits::MAX_CAS_CHUNK_BYTES`, at the
    /// offset the last answer gave. Needs `write_cas`.
    CasUploadChunk {
        digest: Digest,
        offset: u64,
        data: Vec<u8>,
    },
    /// Small blobs whole (REAPI's `BatchReadBlobs`): their sizes total at most
    /// `limits::MAX_CAS_BATCH_BYTES`. Needs `read_cas`.
    CasBatchRead {
        digests: Vec<Digest>,
    },
    /// Up to `max_bytes` (at most `limits::MAX_CAS_CHUNK_BYTES`) of a blob from
    /// `offset`. Needs `read_cas`.
    CasRead {
        digest: Digest,
        offset: u64,
        max_bytes: u32,
    },
}

/// A blob and its bytes, in a batch.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct CasBlob {
    pub digest: Digest,
    pub data: Vec<u8>,
}

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request breaks a rule; the message names the field and the limit.
    InvalidRequest,
    NotFound,
    /// The hello was not understood (magic, version or order).
    BadHello,
    /// The hello's token is missing, or names no principal the daemon knows.
    Unauthenticated,
    /// A frame over the size limit.
    FrameTooLarge,
    /// The daemon is at its connection limit, shutting down, or too busy for
    /// the request now (its content-addressed store): a later try may pass.
    Unavailable,
    /// The bot's attempt is no longer current.
    StaleRun,
    Internal,
    /// Another session took over this bot id: the connection is closed and
    /// the older process must not come back under the same id.
    Superseded,
    /// The principal may not do this; the message names what it lacks and where.
    PermissionDenied,
    /// A store is full (the content-addressed store at `--cas-max-bytes`), or
    /// the daemon's queue for it is: the message names the limit.
    ResourceExhausted,
}

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// What the daemon answers. Every archived reply is as large as the largest
/// variant, so a variant whose payload is large holds it in a `Box` (a 4-byte
/// offset when archived): the acknowledgement of a new task, one per task, is
/// then 64 bytes on the wire instead of a task result's 480.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The answer to a hello.
    Welcome {
        server_software: String,
    },
    Error(ErrorReply),
    /// The answer to `NewTask`: what the submitter needs, not the whole task
    /// (`GetTask` has that), so the hot path encodes and sends a few bytes.
    Created(NewTaskAck),
    Task(Box<TaskResult>),
    Output {
        offset: u64,
        data: Vec<u8>,
        output_len: u64,
        task_ended: bool,
    },
    Bots(Vec<BotInfo>),
    Bot(Box<BotInfo>),
    /// A page of tasks, newest first; `next_cursor` continues it when more may follow.
    Tasks {
        tasks: Vec<TaskResult>,
        next_cursor: Option<u64>,
    },
    Canceled {
        outcome: CancelOutcome,
        task: Box<TaskResult>,
    },
    ValidRequest(Box<NewTaskRequest>),
    BotEvents {
        events: Vec<BotEvent>,
        next_cursor: Option<u64>,
    },
    /// How many tasks matched; `capped` when counting stopped at `limits::MAX_TASK_COUNT`.
    TaskCount {
        count: u64,
        capped: bool,
    },
    CanceledTasks(CanceledTasks),
    BotCounts(BotCounts),
    /// The bot is forgotten.
    BotDeleted,
    /// To a polling bot: exit cleanly now.
    Terminate,
    /// Work for a polling bot.
    Assignment(Assignment),
    /// Nothing to do yet; poll again.
    NoWork,
    /// `output_len` is how many output bytes the daemon holds; the bot resends
    /// from there. `must_stop` tells the bot to stop the command and report.
    UpdateAck {
        output_len: u64,
        must_stop: bool,
    },
    /// The digests of a `CasFindMissing` that the store lacks, in their order.
    CasMissing {
        digests: Vec<Digest>,
    },
    /// Every blob of a `CasBatchUpload` is stored and durable.
    CasStored,
    /// Where an upload continues; `size_bytes` once the blob is stored (checked and durable).
    CasUploadOffset {
        offset: u64,
    },
    /// The blobs of a `CasBatchRead`, in its order, each checked against its digest.
    CasBlobs {
        blobs: Vec<CasBlob>,
    },
    /// The bytes a `CasRead` asked for (fewer at the blob's end).
    CasData {
        data: Vec<u8>,
    },
}

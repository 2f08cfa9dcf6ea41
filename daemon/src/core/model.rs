//! The core's records of tasks, their runs, and bots, and how a task is shown
//! to clients.

use apiary_protocol::{BotInfo, NewTaskRequest, RequestId, RunId, StringPair, TaskProperties, TaskResult, TaskState};

use super::ConnId;
use super::queues::{ClassId, QueueId, QueueKey};

pub struct Task {
    pub id: RequestId,
    pub request: NewTaskRequest,
    pub created_ms: u64,
    pub state: TaskState,
    pub slice_index: u32,
    /// When the current slice became current: its expiration counts from here.
    pub slice_started_ms: u64,
    /// 0 until the first run starts.
    pub try_number: u8,
    /// The current run while RUNNING, else the last one.
    pub run: Option<Run>,
    /// Where the task waits while PENDING.
    pub queued: Option<(QueueId, QueueKey)>,
    pub started_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub abandoned_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<u64>,
    pub internal_failure: bool,
    pub failure_reason: String,
    /// Output bytes the daemon holds for the task.
    pub output_len: u64,
    /// A client asked to kill the running run; its bot is told to stop.
    pub kill_requested: bool,
    /// The earlier run whose result this idempotent task reused.
    pub deduped_from: Option<RunId>,
    /// Clients waiting for the task to end (not durable: they reconnect).
    pub watchers: Vec<Watcher>,
}

impl Task {
    pub fn new(id: RequestId, request: NewTaskRequest, created_ms: u64) -> Task {
        Task {
            id,
            request,
            created_ms,
            state: TaskState::Pending,
            slice_index: 0,
            slice_started_ms: created_ms,
            try_number: 0,
            run: None,
            queued: None,
            started_ms: None,
            completed_ms: None,
            abandoned_ms: None,
            exit_code: None,
            duration_ms: None,
            internal_failure: false,
            failure_reason: String::new(),
            output_len: 0,
            kill_requested: false,
            deduped_from: None,
            watchers: Vec::new(),
        }
    }

    pub fn properties(&self) -> &TaskProperties {
        &self.request.task_slices[self.slice_index as usize].properties
    }

    pub fn dimensions(&self) -> &[StringPair] {
        &self.properties().dimensions
    }

    /// The run that is RUNNING now, if any.
    pub fn current_run(&self) -> Option<&Run> {
        (self.state == TaskState::Running).then_some(self.run.as_ref()).flatten()
    }

    pub fn result(&self) -> TaskResult {
        TaskResult {
            task_id: self.id.as_u64(),
            run_id: self.run.as_ref().map(|run| run.run_id.as_u64()),
            state: self.state,
            exit_code: self.exit_code,
            bot_id: self.run.as_ref().map(|run| run.bot_id.clone()),
            try_number: self.try_number,
            current_task_slice: self.slice_index,
            created_unix_ms: self.created_ms,
            started_unix_ms: self.started_ms,
            completed_unix_ms: self.completed_ms,
            abandoned_unix_ms: self.abandoned_ms,
            duration_ms: self.duration_ms,
            internal_failure: self.internal_failure,
            failure_reason: self.failure_reason.clone(),
            output_len: self.output_len,
            deduped_from: self.deduped_from.map(RunId::as_u64),
            pending: None,
            request: self.request.clone(),
        }
    }
}

/// One attempt of a task on one bot.
pub struct Run {
    pub run_id: RunId,
    pub bot_id: String,
    /// The bot's session when it took the run: a bot with another session lost it.
    pub session_id: u64,
}

/// A client waiting for a task to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watcher {
    pub conn: ConnId,
    pub request_id: u64,
}

/// A bot's long poll, held until work arrives or it times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkedPoll {
    pub conn: ConnId,
    pub request_id: u64,
    pub park_number: u64,
}

pub struct Bot {
    pub bot_id: String,
    pub session_id: u64,
    pub dimensions: Vec<StringPair>,
    pub class: ClassId,
    pub software: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub current_run: Option<RunId>,
    /// The connection the bot last spoke on, while it is open.
    pub connection: Option<ConnId>,
    pub parked: Option<ParkedPoll>,
}

impl Bot {
    pub fn info(&self) -> BotInfo {
        BotInfo {
            bot_id: self.bot_id.clone(),
            dimensions: self.dimensions.clone(),
            current_run_id: self.current_run.map(RunId::as_u64),
            first_seen_unix_ms: self.first_seen_ms,
            last_seen_unix_ms: self.last_seen_ms,
            connected: self.connection.is_some(),
            software: self.software.clone(),
        }
    }
}

/// How an attempt or a task ends: the one input of `Core::finish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub state: TaskState,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<u64>,
    pub internal_failure: bool,
    pub reason: String,
    /// An idempotent task that reused this earlier run's result.
    pub deduped_from: Option<RunId>,
}

impl Ending {
    pub fn new(state: TaskState, reason: impl Into<String>) -> Ending {
        let reason = reason.into();
        Ending { state, exit_code: None, duration_ms: None, internal_failure: false, reason, deduped_from: None }
    }
}

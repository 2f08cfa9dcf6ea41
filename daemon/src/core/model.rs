//! The core's records of tasks, their runs, and bots, and how a task is shown
//! to clients.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::Arc;

use apiary_protocol::cas::{CasReference, CasStats, Digest};
use apiary_protocol::{
    BotEvent, BotEventKind, BotInfo, CacheInfo, NewTaskRequest, PackedDimensions, RequestId, RunId, SecretBytes,
    StringPair, TaskProperties, TaskResult, TaskSlice, TaskState, TimeoutKind,
};

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};

use super::ConnId;
use super::queues::{ClassId, QueueId, QueueKey};
use super::tags;
use super::text_arena::PackedText;

/// A task as the core holds it. At a million pending tasks every byte here
/// counts a megabyte, so what scheduling reads on every turn is inline (ids,
/// times, state, priority, slices) and the rest sits behind one pointer each:
/// the request's text, the run, the clients listening, the outcome. The text
/// leaves the heap at the first snapshot after the task's creation: from then
/// on it is read from the snapshot's text file (`core::texts`). 120 bytes,
/// and so is a slot of the task store (`Option<Task>`).
pub struct Task {
    /// Also says when the task was created (`created_ms`).
    pub id: RequestId,
    /// When the current slice became current: its expiration counts from here.
    pub slice_started_ms: u64,
    /// When the first run started (a `NonZeroU64`: 8 bytes, not 16).
    pub started_ms: Option<NonZeroU64>,
    /// Output bytes the daemon holds for the task.
    pub output_len: u64,
    /// The slices of the request, tried in order; shared (`core::interned`).
    pub slices: Arc<[TaskSlice]>,
    /// What the request says besides its slices.
    pub text: TaskText,
    /// Only the bot that runs the task gets them; dropped when the task ends.
    pub secret_bytes: Option<Box<SecretBytes>>,
    /// The current run while RUNNING, else the last one.
    pub run: Option<Box<Run>>,
    /// The queue the task waits in while PENDING (its key there: `queue_key`).
    pub queued: Option<QueueId>,
    /// How the task ended, once it has.
    pub outcome: Option<Box<Outcome>>,
    /// Clients waiting for the task to end or following its output (not durable).
    pub listeners: Option<Box<Listeners>>,
    pub bot_ping_tolerance_secs: u32,
    pub slice_index: u32,
    pub state: TaskState,
    pub priority: u8,
    /// 0 until the first run starts.
    pub try_number: u8,
    /// How many lists of the tag index name the task (set by the task store).
    pub tag_count: u8,
    /// The output reached the cap and the truncation marker was written.
    pub output_truncated: bool,
    /// Set at creation; the bytes themselves are dropped once the task ends.
    pub has_secret_bytes: bool,
    /// A client asked to kill the running run; its bot is told to stop.
    pub kill_requested: bool,
}

/// How many tags a task counts for the tag index's bookkeeping.
pub fn tag_count_of(tags: usize) -> u8 {
    tags.min(usize::from(u8::MAX)) as u8
}

const _: () = assert!(size_of::<Task>() == 120 && size_of::<Option<Task>>() == 120);

/// Where a task's request text is.
pub enum TaskText {
    /// Its own copy: a task not (or no longer) in the task store.
    Held(Box<RequestText>),
    /// Packed with the texts of other recent tasks (`core::text_arena`).
    Packed(PackedText),
    /// In the text file of a snapshot (`core::texts`).
    Filed,
}

/// The parts of a request that only showing a task or handing it to a bot
/// reads. Also a record of a snapshot's text file.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestText {
    pub name: String,
    pub tags: Vec<String>,
    pub user: String,
}

/// A request's text, borrowed: what is packed into the text arena.
#[derive(Clone, Copy, Debug)]
pub struct RequestTextRef<'a> {
    pub name: &'a str,
    pub tags: &'a [String],
    pub user: &'a str,
}

impl<'a> RequestTextRef<'a> {
    pub fn of_request(request: &'a NewTaskRequest) -> RequestTextRef<'a> {
        RequestTextRef { name: &request.name, tags: &request.tags, user: &request.user }
    }
}

impl<'a> From<&'a RequestText> for RequestTextRef<'a> {
    fn from(text: &'a RequestText) -> RequestTextRef<'a> {
        RequestTextRef { name: &text.name, tags: &text.tags, user: &text.user }
    }
}

/// The clients listening to a task (not durable: they reconnect).
#[derive(Default)]
pub struct Listeners {
    /// Clients following the output as it arrives.
    pub followers: Vec<Follower>,
    /// Clients waiting for the task to end.
    pub watchers: Vec<Watcher>,
}

/// How a task ended, set once by its terminal event. Kept apart, behind a
/// pointer: at scale most tasks the core holds are pending, and these fields
/// would make every task a third larger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub completed_ms: u64,
    /// Set when the command did not end by itself (killed, expired, ...).
    pub abandoned_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    pub teardown_ms: Option<u64>,
    pub timeout: Option<TimeoutKind>,
    pub internal_failure: bool,
    pub failure_reason: String,
    /// The earlier run whose result this idempotent task reused.
    pub deduped_from: Option<RunId>,
    /// What the run left in the content-addressed store (for a deduplicated
    /// task, the reused run's), and what moving its files cost.
    pub cas_output_root: Option<Digest>,
    pub cas_stats: Option<CasStats>,
}

impl Task {
    /// A new task of `request`, with its slices (interned by the caller). The
    /// request is only read: its text is packed straight from it when the
    /// task goes into the task store (`TaskStore::insert_with_text`).
    pub fn new(id: RequestId, request: &NewTaskRequest, created_ms: u64, slices: Arc<[TaskSlice]>) -> Task {
        Task {
            priority: request.priority,
            bot_ping_tolerance_secs: request.bot_ping_tolerance_secs,
            has_secret_bytes: request.secret_bytes.is_some(),
            secret_bytes: request.secret_bytes.clone().map(Box::new),
            ..Task::blank(id, created_ms, slices)
        }
    }

    /// A pending task on its first slice, with nothing else set.
    pub fn blank(id: RequestId, created_ms: u64, slices: Arc<[TaskSlice]>) -> Task {
        Task {
            id,
            slice_started_ms: created_ms,
            started_ms: None,
            output_len: 0,
            slices,
            has_secret_bytes: false,
            secret_bytes: None,
            tag_count: 0,
            text: TaskText::Filed,
            run: None,
            queued: None,
            outcome: None,
            listeners: None,
            bot_ping_tolerance_secs: 0,
            slice_index: 0,
            state: TaskState::Pending,
            priority: 0,
            try_number: 0,
            output_truncated: false,
            kill_requested: false,
        }
    }

    /// When the task was created, as its id says: ids are made from the
    /// core's clock, which never runs backwards (only a burst of more than
    /// 65,536 tasks in one millisecond borrows ids from the next one).
    pub fn created_ms(&self) -> u64 {
        self.id.created_unix_ms()
    }

    /// The request as it was made, but for its secret bytes, with its text
    /// (taken: callers read a packed or filed text into a copy of its own) and
    /// every tag it has, the derived ones too (`tags::shown`).
    pub fn request(&self, text: RequestText) -> NewTaskRequest {
        let tags = tags::shown(text.tags, &self.slices);
        NewTaskRequest { tags, ..self.stored_request(RequestText { tags: Vec::new(), ..text }) }
    }

    /// The request as the task stores it: only its stored tags (a snapshot's record).
    pub fn stored_request(&self, text: RequestText) -> NewTaskRequest {
        NewTaskRequest {
            name: text.name,
            priority: self.priority,
            tags: text.tags,
            user: text.user,
            task_slices: self.slices.to_vec(),
            bot_ping_tolerance_secs: self.bot_ping_tolerance_secs,
            secret_bytes: None,
        }
    }

    /// The task's key in its queue, given where it sits in the task store.
    pub fn queue_key(&self, position: u32) -> QueueKey {
        QueueKey { priority: self.priority, task_id: self.id, position }
    }

    pub fn properties(&self) -> &Arc<TaskProperties> {
        &self.slices[self.slice_index as usize].properties
    }

    pub fn dimensions(&self) -> &[StringPair] {
        &self.properties().dimensions
    }

    pub fn followers(&self) -> &[Follower] {
        self.listeners.as_ref().map_or(&[], |listeners| &listeners.followers)
    }

    /// The listeners, made when the first one comes.
    pub fn listeners_mut(&mut self) -> &mut Listeners {
        self.listeners.get_or_insert_with(Box::default)
    }

    /// Lets go of the listeners once none is left.
    pub fn forget_listeners_if_none(&mut self) {
        if self
            .listeners
            .as_ref()
            .is_some_and(|listeners| listeners.followers.is_empty() && listeners.watchers.is_empty())
        {
            self.listeners = None;
        }
    }

    /// The run whose output is the task's: the last run, or for a deduplicated
    /// task the run it reused.
    pub fn output_run(&self) -> Option<RunId> {
        self.deduped_from().or(self.run.as_ref().map(|run| run.run_id))
    }

    /// The earlier run whose result this idempotent task reused.
    pub fn deduped_from(&self) -> Option<RunId> {
        self.outcome.as_ref().and_then(|outcome| outcome.deduped_from)
    }

    /// The run that is RUNNING now, if any.
    pub fn current_run(&self) -> Option<&Run> {
        (self.state == TaskState::Running).then_some(self.run.as_deref()).flatten()
    }

    /// The task as clients see it, with its request's text; its outputs are
    /// in the store named `cas_instance`.
    pub fn result(&self, text: RequestText, cas_instance: &str) -> TaskResult {
        let none = Outcome::default();
        let outcome = self.outcome.as_deref().unwrap_or(&none);
        TaskResult {
            task_id: self.id.as_u64(),
            run_id: self.run.as_ref().map(|run| run.run_id.as_u64()),
            state: self.state,
            exit_code: outcome.exit_code,
            bot_id: self.run.as_ref().map(|run| run.bot_id.clone()),
            try_number: self.try_number,
            current_task_slice: self.slice_index,
            created_unix_ms: self.created_ms(),
            started_unix_ms: self.started_ms.map(NonZeroU64::get),
            completed_unix_ms: self.outcome.as_ref().map(|outcome| outcome.completed_ms),
            abandoned_unix_ms: outcome.abandoned_ms,
            duration_ms: outcome.duration_ms,
            internal_failure: outcome.internal_failure,
            failure_reason: outcome.failure_reason.clone(),
            output_len: self.output_len,
            deduped_from: outcome.deduped_from.map(RunId::as_u64),
            timeout: outcome.timeout,
            setup_ms: outcome.setup_ms,
            teardown_ms: outcome.teardown_ms,
            has_secret_bytes: self.has_secret_bytes,
            output_truncated: self.output_truncated,
            pending: None,
            cas_output_root: outcome
                .cas_output_root
                .map(|digest| CasReference { cas_instance: cas_instance.to_string(), digest }),
            cas_stats: outcome.cas_stats,
            request: self.request(text),
        }
    }
}

/// One attempt of a task on one bot.
pub struct Run {
    pub run_id: RunId,
    pub bot_id: String,
    /// The bot's session when it took the run: a bot with another session lost it.
    pub session_id: u64,
    /// When the daemon last heard from the bot about this run (not durable: a
    /// restarted daemon gives every run a fresh tolerance).
    pub last_heard_ms: u64,
    /// When the run's ping timer is due, so that it can be taken out when the
    /// run ends (not durable).
    pub ping_due_ms: u64,
    /// How far into its output the bot has reported; past the output cap this
    /// runs ahead of the task's `output_len`, as the rest is dropped.
    pub output_received: u64,
}

/// A client following a task's output: it has been sent everything before `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Follower {
    pub conn: ConnId,
    pub request_id: u64,
    pub offset: u64,
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
    /// Whether the poll waits for work, or (quarantined) only for its timeout.
    pub eligible: bool,
}

/// One bot event as kept in memory: the dimensions are shared with the bot
/// and with its other events until they change.
pub struct BotEventRecord {
    pub number: u64,
    pub at_ms: u64,
    pub kind: BotEventKind,
    pub dimensions: Arc<PackedDimensions>,
    pub run_id: Option<RunId>,
    pub message: String,
}

/// A bot's stored dimensions as pairs: only validated ones are ever stored.
pub fn unpack(dimensions: &PackedDimensions) -> Vec<StringPair> {
    dimensions.pairs().expect("the core stores only validated dimensions")
}

impl BotEventRecord {
    pub fn to_event(&self) -> BotEvent {
        BotEvent {
            number: self.number,
            at_unix_ms: self.at_ms,
            kind: self.kind,
            dimensions: unpack(&self.dimensions),
            run_id: self.run_id.map(RunId::as_u64),
            message: self.message.clone(),
        }
    }
}

/// Why a bot gets no work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    pub reason: String,
    /// Set by a person: only a person lifts it. Otherwise the bot's health check does.
    pub by_server: bool,
}

pub struct Bot {
    pub bot_id: String,
    pub session_id: u64,
    pub dimensions: Arc<PackedDimensions>,
    pub class: ClassId,
    pub software: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub current_run: Option<RunId>,
    /// The connection the bot last spoke on, while it is open.
    pub connection: Option<ConnId>,
    pub parked: Option<ParkedPoll>,
    pub dead: bool,
    pub quarantine: Option<Quarantine>,
    pub terminate_requested: bool,
    pub shut_down: bool,
    /// The newest last, bounded by count and age.
    pub events: VecDeque<BotEventRecord>,
    pub next_event_number: u64,
    /// Whether a death timer is pending for the bot (not durable).
    pub death_timer_armed: bool,
    /// The named caches the bot said it holds in its last poll (not durable).
    pub caches: Vec<CacheInfo>,
    /// Why the bot's own health check failed, as its last poll said; empty when it
    /// passed (not durable).
    pub health_check_failure: String,
    /// The session another one last took this bot id over from: it is refused
    /// if it comes back, so two processes with one id never take turns (not durable).
    pub superseded_session: Option<u64>,
}

impl Bot {
    pub fn new(bot_id: &str, class: ClassId, at_ms: u64) -> Bot {
        Bot {
            bot_id: bot_id.to_string(),
            session_id: 0,
            dimensions: Arc::default(),
            class,
            software: String::new(),
            first_seen_ms: at_ms,
            last_seen_ms: at_ms,
            current_run: None,
            connection: None,
            parked: None,
            dead: false,
            quarantine: None,
            terminate_requested: false,
            shut_down: false,
            events: VecDeque::new(),
            next_event_number: 1,
            death_timer_armed: false,
            caches: Vec::new(),
            health_check_failure: String::new(),
            superseded_session: None,
        }
    }

    /// Whether the bot may get work, and so counts as capacity.
    pub fn eligible(&self) -> bool {
        !self.dead && self.quarantine.is_none() && !self.shut_down
    }

    /// The bot's share of its class's (live, busy) capacity counts.
    pub fn capacity_share(&self) -> (i32, i32) {
        if self.eligible() { (1, i32::from(self.current_run.is_some())) } else { (0, 0) }
    }

    pub fn record_event(&mut self, at_ms: u64, kind: BotEventKind, run_id: Option<RunId>, message: String) {
        let number = self.next_event_number;
        self.next_event_number += 1;
        let dimensions = Arc::clone(&self.dimensions);
        self.events.push_back(BotEventRecord { number, at_ms, kind, dimensions, run_id, message });
    }

    /// Drops events beyond the count limit or older than `max_age_ms` before `now_ms`.
    pub fn trim_events(&mut self, max_count: usize, max_age_ms: u64, now_ms: u64) {
        while self.events.len() > max_count
            || self.events.front().is_some_and(|event| event.at_ms.saturating_add(max_age_ms) < now_ms)
        {
            self.events.pop_front();
        }
    }

    pub fn info(&self) -> BotInfo {
        BotInfo {
            bot_id: self.bot_id.clone(),
            dimensions: unpack(&self.dimensions),
            current_run_id: self.current_run.map(RunId::as_u64),
            first_seen_unix_ms: self.first_seen_ms,
            last_seen_unix_ms: self.last_seen_ms,
            connected: self.connection.is_some(),
            software: self.software.clone(),
            dead: self.dead,
            quarantine_reason: self.quarantine.as_ref().map(|quarantine| quarantine.reason.clone()),
            terminate_requested: self.terminate_requested,
            shut_down: self.shut_down,
            caches: self.caches.clone(),
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
    pub setup_ms: Option<u64>,
    pub teardown_ms: Option<u64>,
    pub timeout: Option<TimeoutKind>,
    /// The outputs the run uploaded (or the reused run's) and what moving files cost.
    pub cas_output_root: Option<Digest>,
    pub cas_stats: Option<CasStats>,
}

impl Ending {
    pub fn new(state: TaskState, reason: impl Into<String>) -> Ending {
        Ending {
            state,
            exit_code: None,
            duration_ms: None,
            internal_failure: false,
            reason: reason.into(),
            deduped_from: None,
            setup_ms: None,
            teardown_ms: None,
            timeout: None,
            cas_output_root: None,
            cas_stats: None,
        }
    }
}

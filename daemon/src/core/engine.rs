//! The core: all task and bot state, with no I/O. Inputs come in with `now`;
//! what must happen comes out in an `Output`: events to persist (already
//! applied), replies to send once those events are durable, output bytes to
//! write and read. `apply` is the only function that changes durable state,
//! and recovery runs it over the log.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use std::sync::Arc;

use apiary_protocol::cas::CasStats;
use apiary_protocol::limits::{
    DEFAULT_TASK_PAGE, MAX_BOT_CACHES, MAX_CACHE_NAME_BYTES, MAX_LONG_POLL_MS, MAX_OUTPUT_CHUNK_BYTES, MAX_PAGE_BYTES,
    MAX_REASON_BYTES, MAX_SOFTWARE_BYTES, MAX_TASK_COUNT, MAX_TASK_PAGE,
};
use apiary_protocol::{
    Assignment, BotCounts, BotEvent, BotEventKind, BotEventQuery, BotInfo, BotPoll, CancelOutcome, CanceledTasks,
    ErrorCode, ErrorReply, NewTaskAck, NewTaskRequest, PackedDimensions, PendingInfo, Reply, Request, RequestId,
    RunEnd, RunId, RunOutcome, StateQuery, StringPair, TaskProperties, TaskQuery, TaskResult, TaskSlice, TaskState,
    TaskUpdate, TimeoutKind, wire_size,
};

use super::chunked_set::ChunkedSet;
use super::events::{
    BotChange, BotConnected, Event, StoredState, TaskAssigned, TaskCreated, TaskFinished, TaskLinked, TaskOutputs,
};
use super::history::History;
use super::interned::InternedProperties;
use super::lineage::Lineage;
use super::model::{self, Bot, BotEventRecord, Ending, Follower, Outcome, ParkedPoll, Quarantine, Run, Task, Watcher};
use super::queues::{self, ClassId, QueueId, QueueKey, Queues};
use super::tags;
use super::task_store::TaskStore;
use super::texts::Texts;
use super::validate;
use super::{ConnId, Map};
use crate::auth::{Grants, Permission};
use permissions::Caller;

pub use bots::BotStandings;
pub use cas_roots::CasRoots;

mod apply;
mod bots;
mod cas_roots;
mod history;
mod lineage;
mod permissions;
mod retention;
mod snapshot;
pub mod storage_trouble;
mod tasks;
mod texts;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How long a bot's poll is held before it is answered with "no work".
    pub long_poll_ms: u64,
    /// How old a successful idempotent run may be and still stand in for a new task.
    pub dedup_window_ms: u64,
    /// A bot not heard from for this long is dead until it returns.
    pub bot_death_timeout_ms: u64,
    /// Bot events kept per bot, and for how long.
    pub bot_events_per_bot: usize,
    pub bot_event_max_age_ms: u64,
    /// Output kept per task: the first bytes, then a visible truncation marker.
    pub max_output_bytes: u64,
    /// How long a finished task is kept, counted from its creation.
    pub task_retention_ms: u64,
    /// The name of the daemon's content-addressed store, as requests'
    /// `cas_input_root.cas_instance` may give it (empty is accepted too).
    pub cas_instance: String,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// The default of `--cas-instance`: the instance name Swarming deployments give their store.
pub const DEFAULT_CAS_INSTANCE: &str = "default_instance";

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            long_poll_ms: 30_000,
            dedup_window_ms: 7 * DAY_MS,
            bot_death_timeout_ms: 600_000,
            bot_events_per_bot: 1000,
            bot_event_max_age_ms: 28 * DAY_MS,
            max_output_bytes: apiary_protocol::limits::DEFAULT_MAX_OUTPUT_BYTES,
            task_retention_ms: 30 * DAY_MS,
            cas_instance: DEFAULT_CAS_INSTANCE.to_string(),
        }
    }
}

pub enum Input {
    Request {
        conn: ConnId,
        request_id: u64,
        request: Request,
        /// The principal the connection's hello named; `None` while access is open.
        principal: Option<Arc<str>>,
        /// What that principal may do, per pool; `None` while access is open.
        grants: Option<Arc<Grants>>,
    },
    /// The connection closed: a bot's held poll is dropped at once; a client's
    /// waits and follows are dropped when they time out or their task ends.
    Disconnected { conn: ConnId },
}

#[derive(Debug)]
pub struct Outgoing {
    pub conn: ConnId,
    pub request_id: u64,
    pub reply: Reply,
}

/// Output bytes for the output store, at the offset the store has reached.
/// Output belongs to a run: a retry starts its own.
#[derive(Debug)]
pub struct OutputWrite {
    pub run_id: RunId,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A read the shell does from the output store, answered with `Reply::Output`.
#[derive(Debug)]
pub struct OutputRead {
    pub conn: ConnId,
    pub request_id: u64,
    /// The run whose output is read; `None` before any run started (nothing to read).
    pub run_id: Option<RunId>,
    pub offset: u64,
    pub max_bytes: usize,
    pub output_len: u64,
    pub task_ended: bool,
    /// The last reply to its request: a read, or a follow's last chunk.
    pub ends_request: bool,
}

/// A connection the core is done with: the shell tells the peer why (as an
/// error for request id 0, the connection's own), logs it, and closes it.
#[derive(Debug)]
pub struct Closing {
    pub conn: ConnId,
    pub code: ErrorCode,
    pub message: String,
}

/// What the core asks of the shell, in order: write the output, persist the
/// events, then, once both are durable, send the replies and do the reads.
/// Connections in `closings` are told and closed at once: nothing they are
/// owed is sent any more.
#[derive(Default, Debug)]
pub struct Output {
    pub events: Vec<Event>,
    pub replies: Vec<Outgoing>,
    pub output_writes: Vec<OutputWrite>,
    pub output_reads: Vec<OutputRead>,
    pub closings: Vec<Closing>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The current slice of a pending task may have expired.
    SliceExpiry {
        task_id: RequestId,
    },
    PollTimeout {
        bot_id: String,
        park_number: u64,
    },
    WaitTimeout {
        task_id: RequestId,
        watcher: (ConnId, u64),
    },
    /// The run's bot ping tolerance may have passed.
    RunPing {
        run_id: RunId,
    },
    /// The bot's death timeout may have passed.
    BotDeath {
        bot_id: String,
    },
    /// A follower has heard nothing for a while: an empty chunk tells it the
    /// stream is alive.
    FollowHeartbeat {
        task_id: RequestId,
        follower: (ConnId, u64),
    },
    /// Time to let finished tasks past retention go.
    RetentionPass,
}

/// Due times, in three sets. Slice expirations (one per pending task) and run
/// pings (one per running run) are taken out when they no longer apply, when
/// the task leaves its queue or the run ends: left in until due, they would
/// pile up with every task of the last hour (the default expiration) and
/// hold memory for tasks long gone. The rest (polls, waits, deaths,
/// heartbeats) are as many as there are peers, and simply do nothing when
/// they no longer apply.
///
/// The cancellable ones are kept in a compact form (16 bytes with their
/// deadline, against 48 for a `Timer`). Run pings have a set of their own: it
/// holds one per bot at work, and a new run's ping, due well before most of a
/// backlog's expirations, would otherwise go into the middle of a million of
/// them on every dispatch.
#[derive(Default)]
struct Timers {
    expirations: ChunkedSet<(u64, Cancellable)>,
    pings: ChunkedSet<(u64, Cancellable)>,
    others: BinaryHeap<Reverse<(u64, Timer)>>,
}

/// A slice expiration or a run ping as one number: the task's request id for
/// an expiration, the run id for a ping (a request id ends in hex digit 0, a
/// run id in its try number, 1 to 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cancellable(u64);

impl Cancellable {
    fn of(timer: &Timer) -> Option<Cancellable> {
        match *timer {
            Timer::SliceExpiry { task_id } => Some(Cancellable(task_id.as_u64())),
            Timer::RunPing { run_id } => Some(Cancellable(run_id.as_u64())),
            _ => None,
        }
    }

    fn timer(self) -> Timer {
        match RequestId::from_u64(self.0) {
            Some(task_id) => Timer::SliceExpiry { task_id },
            None => Timer::RunPing { run_id: RunId::from_u64(self.0).expect("a run id") },
        }
    }
}

impl Timers {
    fn push(&mut self, deadline_ms: u64, timer: Timer) {
        match Cancellable::of(&timer) {
            Some(cancellable) => {
                self.set_of(&timer).insert((deadline_ms, cancellable));
            }
            None => self.others.push(Reverse((deadline_ms, timer))),
        }
    }

    /// Takes out a slice expiration or run ping pushed with this deadline (if still there).
    fn cancel(&mut self, deadline_ms: u64, timer: Timer) {
        let cancellable = Cancellable::of(&timer).unwrap_or_else(|| panic!("{timer:?} cannot be cancelled"));
        self.set_of(&timer).remove(&(deadline_ms, cancellable));
    }

    fn set_of(&mut self, timer: &Timer) -> &mut ChunkedSet<(u64, Cancellable)> {
        match timer {
            Timer::RunPing { .. } => &mut self.pings,
            _ => &mut self.expirations,
        }
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        let first = |set: &ChunkedSet<(u64, Cancellable)>| set.first().map(|(deadline, _)| *deadline);
        let other = self.others.peek().map(|Reverse((deadline, _))| *deadline);
        [first(&self.expirations), first(&self.pings), other].into_iter().flatten().min()
    }

    /// The next timer due at `now_ms` or before, in the order one heap of all would give.
    fn pop_due(&mut self, now_ms: u64) -> Option<Timer> {
        let first = |set: &ChunkedSet<(u64, Cancellable)>| set.first().map(|&(deadline, key)| (deadline, key.timer()));
        let (expiration, ping) = (first(&self.expirations), first(&self.pings));
        let other = self.others.peek().map(|Reverse(other)| other);
        let (source, deadline_ms) = [expiration.as_ref(), ping.as_ref(), other]
            .into_iter()
            .enumerate()
            .filter_map(|(source, due)| Some((source, due?)))
            .min_by(|(_, a), (_, b)| a.cmp(b))
            .map(|(source, &(deadline_ms, _))| (source, deadline_ms))?;
        if deadline_ms > now_ms {
            return None;
        }
        Some(match source {
            0 => self.expirations.pop_first().expect("looked at").1.timer(),
            1 => self.pings.pop_first().expect("looked at").1.timer(),
            _ => self.others.pop().expect("peeked").0.1,
        })
    }
}

/// How often a follower of a quiet task gets an empty chunk.
const FOLLOW_HEARTBEAT_MS: u64 = 30_000;
/// How often the core looks for finished tasks past retention, at most.
const RETENTION_PASS_MS: u64 = 60_000;

pub struct Core {
    config: CoreConfig,
    /// The latest `now` seen: time never runs backwards inside the core.
    now_ms: u64,
    /// Every task not yet in a history run, oldest first (ids only grow).
    tasks: TaskStore,
    /// The runs that hold the tasks that ended before the last snapshot.
    history: History,
    /// Runs whose tasks the heap still holds copies of: (run, next record).
    archiving: VecDeque<(u64, usize)>,
    /// The text files of the newest snapshots, where most tasks' texts are.
    texts: Texts,
    /// Tasks from this id on may still hold texts the newest text file holds too.
    texts_to_drop_from: Option<RequestId>,
    bots: Map<String, Bot>,
    queues: Queues,
    timers: Timers,
    last_task_id: Option<RequestId>,
    bot_by_connection: Map<ConnId, String>,
    /// The latest successful run of each idempotent set of properties, and when it ended.
    successes: Map<Arc<TaskProperties>, (RunId, u64)>,
    /// Each distinct set of properties, held once for every task that asks for it.
    properties: InternedProperties,
    /// Numbers handed to polls held outside any class (see `next_hold_number`).
    hold_numbers_used: u64,
    /// Finished tasks created before this were let go by retention.
    retained_from_ms: u64,
    /// Why the disk cannot take more, while it cannot (not durable).
    storage_trouble: Option<String>,
    /// Request uuids and parent links (`core::lineage`).
    lineage: Lineage,
    /// Outputs recorded for tasks whose `TaskFinished` comes next (`Event::TaskOutputs`).
    outputs_to_finish: Map<RequestId, TaskOutputs>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorReply { code, message: message.into() })
}

impl Core {
    pub fn new(config: CoreConfig) -> Core {
        let mut timers = Timers::default();
        // Due at the first tick, which arms the next.
        timers.push(0, Timer::RetentionPass);
        Core {
            config,
            now_ms: 0,
            tasks: TaskStore::default(),
            history: History::default(),
            archiving: VecDeque::new(),
            texts: Texts::default(),
            texts_to_drop_from: None,
            bots: Map::default(),
            queues: Queues::default(),
            timers,
            last_task_id: None,
            bot_by_connection: Map::default(),
            successes: Map::default(),
            properties: InternedProperties::default(),
            hold_numbers_used: 0,
            retained_from_ms: 0,
            storage_trouble: None,
            lineage: Lineage::default(),
            outputs_to_finish: Map::default(),
        }
    }

    // ------------------------------------------------------------------ inputs

    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Output) {
        self.advance_clock(now_ms);
        match input {
            Input::Request { conn, request_id, request, principal, grants } => {
                let caller = Caller { name: principal.as_deref(), grants: grants.as_deref() };
                if let Some(reply) = self.handle_request(conn, request_id, request, caller, out) {
                    out.replies.push(Outgoing { conn, request_id, reply });
                }
            }
            Input::Disconnected { conn } => self.disconnected(conn),
        }
    }

    /// Returns the reply, or `None` when the reply comes later (a held poll or
    /// wait) or as an output read.
    fn handle_request(
        &mut self,
        conn: ConnId,
        request_id: u64,
        request: Request,
        caller: Caller<'_>,
        out: &mut Output,
    ) -> Option<Reply> {
        if let Some(refusal) = self.refuse_request(caller, &request) {
            return Some(refusal);
        }
        let principal = caller.name;
        match request {
            Request::NewTask(new_task) => Some(self.new_task(new_task, principal, out)),
            Request::NewTaskWithLineage { request, lineage } => {
                Some(self.new_task_with_lineage(request, lineage, principal, out))
            }
            Request::GetTask { task_id } => Some(
                self.find_task(task_id)
                    .map_or_else(|missing| self.missing(missing), |task| Reply::Task(Box::new(self.describe(&task)))),
            ),
            Request::WaitTask { task_id, timeout_ms } => self.wait_task(conn, request_id, task_id, timeout_ms),
            Request::GetOutput { task_id, offset, max_bytes } => {
                self.get_output(conn, request_id, task_id, offset, max_bytes, out)
            }
            Request::FollowOutput { task_id, offset } => self.follow_output(conn, request_id, task_id, offset, out),
            Request::ListBots { dimensions } => Some(self.list_bots(&dimensions, caller)),
            Request::GetBot { bot_id } => Some(self.bots.get(&bot_id).map_or_else(
                || error(ErrorCode::NotFound, format!("no bot {bot_id:?}")),
                |bot| Reply::Bot(Box::new(bot.info())),
            )),
            Request::ListTasks(query) => Some(self.list_tasks(query, caller)),
            Request::CancelTask { task_id, kill_running } => Some(self.cancel(task_id, kill_running, out)),
            Request::ValidateTask(request) => Some(match validate::admit(request, principal) {
                Ok(request) => {
                    let tags = tags::shown(request.tags, &request.task_slices);
                    Reply::ValidRequest(Box::new(NewTaskRequest { secret_bytes: None, tags, ..request }))
                }
                Err(refusal) => error(ErrorCode::InvalidRequest, refusal.to_string()),
            }),
            Request::QuarantineBot { bot_id, reason } => {
                let change = BotChange::Quarantined { reason, by_server: true };
                Some(self.bot_request(&bot_id, change, principal, out))
            }
            Request::UnquarantineBot { bot_id } => {
                Some(self.bot_request(&bot_id, BotChange::Unquarantined, principal, out))
            }
            Request::TerminateBot { bot_id, reason } => {
                let change = if reason.is_empty() {
                    BotChange::TerminateRequested
                } else {
                    BotChange::TerminateRequestedBecause { reason }
                };
                Some(self.bot_request(&bot_id, change, principal, out))
            }
            Request::ListBotEvents(query) => Some(self.list_bot_events(query)),
            Request::CountTasks(query) => Some(self.count_tasks(&query, caller)),
            Request::CancelTasks { query, kill_running } => Some(self.cancel_tasks(&query, kill_running, caller, out)),
            Request::CountBots { dimensions } => Some(self.count_bots(&dimensions, caller)),
            Request::ListBotTasks { bot_id, limit, cursor } => {
                Some(self.list_bot_tasks(&bot_id, limit, cursor, caller))
            }
            Request::DeleteBot { bot_id } => Some(self.delete_bot(&bot_id, principal, out)),
            Request::BotPoll(poll) => self.bot_poll(conn, request_id, poll, out),
            Request::TaskUpdate(update) => Some(self.task_update(conn, update, out)),
            // The shell serves these from the store, which is not the core's state.
            Request::CasFindMissing { .. }
            | Request::CasBatchUpload { .. }
            | Request::CasUploadStart { .. }
            | Request::CasUploadChunk { .. }
            | Request::CasBatchRead { .. }
            | Request::CasRead { .. } => Some(error(
                ErrorCode::InvalidRequest,
                "requests to the content-addressed store are not served here".to_string(),
            )),
        }
    }

    /// The permission check of a request on one task or bot, or a new task
    /// (`engine::permissions`); listings filter by pool as they go.
    fn refuse_request(&self, caller: Caller<'_>, request: &Request) -> Option<Reply> {
        caller.grants?;
        match request {
            Request::NewTask(new_task) | Request::NewTaskWithLineage { request: new_task, .. } => {
                self.refuse_new_task(caller, new_task)
            }
            Request::GetTask { task_id }
            | Request::WaitTask { task_id, .. }
            | Request::GetOutput { task_id, .. }
            | Request::FollowOutput { task_id, .. } => self.refuse_on_task(caller, *task_id, Permission::ReadTasks),
            Request::CancelTask { task_id, .. } => self.refuse_on_task(caller, *task_id, Permission::CancelTask),
            Request::GetBot { bot_id } | Request::ListBotTasks { bot_id, .. } => {
                self.refuse_on_bot(caller, bot_id, Permission::ReadBots)
            }
            Request::ListBotEvents(query) => self.refuse_on_bot(caller, &query.bot_id, Permission::ReadBots),
            Request::QuarantineBot { bot_id, .. }
            | Request::UnquarantineBot { bot_id }
            | Request::TerminateBot { bot_id, .. } => self.refuse_on_bot(caller, bot_id, Permission::ManageBots),
            Request::DeleteBot { bot_id } => self.refuse_on_bot(caller, bot_id, Permission::DeleteBot),
            // Listings, counts and cancels by tags skip what the caller may not see or touch.
            Request::ListTasks(_) | Request::CountTasks(_) => refuse_unless_somewhere(caller, Permission::ReadTasks),
            Request::CancelTasks { .. } => refuse_unless_somewhere(caller, Permission::CancelTask),
            Request::ListBots { .. } | Request::CountBots { .. } => {
                refuse_unless_somewhere(caller, Permission::ReadBots)
            }
            Request::ValidateTask(_) | Request::BotPoll(_) | Request::TaskUpdate(_) => None,
            Request::CasFindMissing { .. }
            | Request::CasBatchUpload { .. }
            | Request::CasUploadStart { .. }
            | Request::CasUploadChunk { .. }
            | Request::CasBatchRead { .. }
            | Request::CasRead { .. } => None,
        }
    }

    // -------------------------------------------------------------------- bots

    // ------------------------------------------------------------------ timers

    /// When `tick` next has work to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.next_deadline_ms()
    }

    pub fn tick(&mut self, now_ms: u64, out: &mut Output) {
        self.advance_clock(now_ms);
        while let Some(timer) = self.timers.pop_due(self.now_ms) {
            self.fire(timer, out);
        }
    }

    /// Timers are not cancelled; one that no longer applies does nothing.
    fn fire(&mut self, timer: Timer, out: &mut Output) {
        match timer {
            Timer::SliceExpiry { task_id } => self.slice_expired(task_id, out),
            Timer::PollTimeout { bot_id, park_number } => {
                let still_parked = self.bots.get(&bot_id).and_then(|bot| bot.parked).map(|parked| parked.park_number);
                if still_parked == Some(park_number) {
                    self.unpark(&bot_id, out);
                }
            }
            Timer::RunPing { run_id } => self.run_ping_due(run_id, out),
            Timer::BotDeath { bot_id } => self.bot_death_due(&bot_id, out),
            Timer::FollowHeartbeat { task_id, follower } => self.follow_heartbeat_due(task_id, follower, out),
            Timer::RetentionPass => self.retention_pass(out),
            Timer::WaitTimeout { task_id, watcher: (conn, request_id) } => {
                let Some(task) = self.tasks.get_mut(&task_id) else { return };
                let Some(listeners) = task.listeners.as_mut() else { return };
                let before = listeners.watchers.len();
                listeners.watchers.retain(|watcher| *watcher != Watcher { conn, request_id });
                let answered = listeners.watchers.len() < before;
                task.forget_listeners_if_none();
                if answered {
                    let reply = Reply::Task(Box::new(self.result(&self.tasks[&task_id])));
                    out.replies.push(Outgoing { conn, request_id, reply });
                }
            }
        }
    }

    // --------------------------------------------------------------- finishing

    /// The one place a task attempt becomes terminal. It acts only on the
    /// current attempt (`run` must be the running one, or `None` for a task
    /// that never started), writes one terminal event, and answers everyone
    /// waiting for the task. Returns false when there was nothing to finish.
    pub fn finish(&mut self, task_id: RequestId, run: Option<RunId>, ending: Ending, out: &mut Output) -> bool {
        assert!(ending.state.is_terminal(), "finish with non-terminal {:?}", ending.state);
        let Some(task) = self.tasks.get(&task_id) else { return false };
        let current = task.current_run().map(|run| run.run_id);
        if task.state.is_terminal() || current != run {
            return false;
        }
        if let Some(run_id) = run
            && self.retries_after(task, &ending)
        {
            let (output_len, at_ms) = (task.output_len, self.now_ms);
            self.emit(Event::TaskRetried { run_id: run_id.as_u64(), reason: ending.reason, output_len, at_ms }, out);
            // Followers go on with the next run's output, from its start.
            if let Some(listeners) = &mut self.tasks.get_mut(&task_id).expect("still there").listeners {
                for follower in &mut listeners.followers {
                    follower.offset = 0;
                }
            }
            self.hand_to_parked_bot(task_id, out);
            return true;
        }
        // A deduplicated task shows the output of the run it reused.
        let (output_len, output_truncated) = match ending.deduped_from {
            Some(source) => self
                .task_by_id(source.request())
                .map_or((0, false), |source| (source.output_len, source.output_truncated)),
            None => (task.output_len, task.output_truncated),
        };
        let event = TaskFinished {
            task_id: task_id.as_u64(),
            run_id: run.map(RunId::as_u64),
            state: StoredState::from_state(ending.state),
            exit_code: ending.exit_code,
            duration_ms: ending.duration_ms,
            setup_ms: ending.setup_ms,
            teardown_ms: ending.teardown_ms,
            timeout: ending.timeout,
            internal_failure: ending.internal_failure,
            reason: ending.reason,
            output_len,
            output_truncated,
            deduped_from: ending.deduped_from.map(RunId::as_u64),
            at_ms: self.now_ms,
        };
        if ending.cas_output_root.is_some() || ending.cas_stats.is_some() {
            let outputs = TaskOutputs {
                task_id: task_id.as_u64(),
                output_root: ending.cas_output_root,
                stats: ending.cas_stats.unwrap_or_default(),
            };
            self.emit(Event::TaskOutputs(outputs), out);
        }
        let children = self.lineage.children_of(task_id).to_vec();
        self.emit(Event::TaskFinished(event), out);
        self.cancel_children(task_id, &children, out);
        self.feed_followers(task_id, out);
        let task = self.tasks.get_mut(&task_id).expect("still there");
        let watchers = task.listeners.as_mut().map(|listeners| std::mem::take(&mut listeners.watchers));
        task.forget_listeners_if_none();
        let watchers = watchers.unwrap_or_default();
        if !watchers.is_empty() {
            // Read (its text unpacked) only for those waiting: most tasks have none.
            let result = self.result(&self.tasks[&task_id]);
            for watcher in watchers {
                let reply = Reply::Task(Box::new(result.clone()));
                out.replies.push(Outgoing { conn: watcher.conn, request_id: watcher.request_id, reply });
            }
        }
        true
    }

    /// Swarming's rule: an idempotent task whose first run died is retried
    /// once, if its slice has not expired meanwhile.
    fn retries_after(&self, task: &Task, ending: &Ending) -> bool {
        let slice = &task.slices[task.slice_index as usize];
        let expires_ms = task.slice_started_ms + u64::from(slice.expiration_secs) * 1000;
        ending.state == TaskState::BotDied
            && slice.properties.idempotent
            && task.try_number == 1
            && self.now_ms < expires_ms
    }

    /// The ping timer: a run not heard of within its tolerance ends BOT_DIED.
    fn run_ping_due(&mut self, run_id: RunId, out: &mut Output) {
        let Some(task) = self.tasks.get(&run_id.request()) else { return };
        let Some(run) = task.current_run().filter(|run| run.run_id == run_id) else { return };
        let tolerance_ms = u64::from(task.bot_ping_tolerance_secs) * 1000;
        let deadline = run.last_heard_ms + tolerance_ms;
        if deadline > self.now_ms {
            self.timers.push(deadline, Timer::RunPing { run_id });
            self.tasks.get_mut(&run_id.request()).and_then(|task| task.run.as_mut()).expect("looked at").ping_due_ms =
                deadline;
            return;
        }
        let reason = format!("no word from bot {} for {} s", run.bot_id, tolerance_ms / 1000);
        let mut ending = Ending::new(TaskState::BotDied, reason);
        ending.internal_failure = true;
        self.finish(run_id.request(), Some(run_id), ending, out);
    }

    // ------------------------------------------------------------------ events

    fn emit(&mut self, event: Event, out: &mut Output) {
        self.apply(&event);
        out.events.push(event);
    }

    // ---------------------------------------------------------------- recovery

    fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// After a restart: silence during the outage is not held against bots or
    /// their runs; each gets a fresh tolerance from `now_ms`.
    pub fn recovered(&mut self, now_ms: u64) {
        self.advance_clock(now_ms);
        for bot in self.bots.values_mut().filter(|bot| !bot.dead) {
            bot.last_seen_ms = self.now_ms;
            if !bot.death_timer_armed {
                bot.death_timer_armed = true;
                let deadline = self.now_ms + self.config.bot_death_timeout_ms;
                self.timers.push(deadline, Timer::BotDeath { bot_id: bot.bot_id.clone() });
            }
        }
        for run_id in self.running_runs() {
            let task = self.tasks.get_mut(&run_id.request()).expect("a bot's run is known");
            task.run.as_mut().expect("a running task has a run").last_heard_ms = self.now_ms;
            task.output_truncated |= task.output_len > self.config.max_output_bytes;
        }
    }

    /// The runs going on now, whose output length the shell reads back from the
    /// output store after a restart (`set_output_len`). Found through the bots
    /// that hold them, not by a walk over every task.
    pub fn running_runs(&self) -> Vec<RunId> {
        self.bots.values().filter_map(|bot| bot.current_run).collect()
    }

    /// After a restart: what the output store holds of a running run, and
    /// whether it ends with the marker of a full disk (nothing is written after
    /// it, so that marks a run whose output was cut). Call it before
    /// `recovered`, which judges the cap by it.
    pub fn set_output_len(&mut self, run_id: RunId, output_len: u64, cut_by_full_disk: bool) {
        let task = self.tasks.get_mut(&run_id.request()).expect("known task");
        assert_eq!(task.current_run().map(|run| run.run_id), Some(run_id), "only a running run's output grows");
        task.output_len = output_len;
        task.run.as_deref_mut().expect("a running task has a run").output_received = output_len;
        task.output_truncated = cut_by_full_disk;
    }

    // ------------------------------------------------------------------ checks

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// A task's result, from the heap or a history run.
    pub fn task(&self, task_id: RequestId) -> Option<TaskResult> {
        self.task_by_id(task_id).ok().map(|task| self.result(&task))
    }

    /// Every retained task's id, held or in a history run, oldest first.
    pub fn task_ids(&self) -> Vec<RequestId> {
        let floor = RequestId::first_of_millisecond(self.retained_from_ms);
        let mut archived = self.history.newest_first(None, floor, None, &[]).expect("history runs read back");
        let mut ids: Vec<RequestId> = self.tasks.values().map(|task| task.id).collect();
        while let Some(id) = archived.peek_id() {
            ids.push(RequestId::from_u64(id).expect("runs hold request ids"));
            archived.skip();
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn bot(&self, bot_id: &str) -> Option<apiary_protocol::BotInfo> {
        self.bots.get(bot_id).map(Bot::info)
    }

    /// Pending tasks: one count per queue, not a walk over the tasks.
    pub fn pending_count(&self) -> usize {
        self.queues.total_pending()
    }

    /// Pending tasks per pool, sorted by pool, from the queues' sizes (for
    /// the metrics: a scrape costs a pass over the queues, not the tasks).
    pub fn pending_by_pool(&self) -> Vec<(&str, u64)> {
        self.queues.pending_by_pool()
    }

    pub fn bot_count(&self) -> usize {
        self.bots.len()
    }

    /// Checks every cross-reference against a recount. Tests call it after each step.
    pub fn check_invariants(&self) {
        self.lineage.check_invariants();
        let mut pending = 0;
        for task in self.tasks.values() {
            match task.state {
                TaskState::Pending => {
                    pending += 1;
                    let (queue, key) = self.queue_entry(task.id).expect("a pending task is queued");
                    assert!(self.queues.contains(queue, key), "task {} is in its queue", task.id);
                    assert!(self.parked_bot_for(queue).is_none(), "no parked bot could take {}", task.id);
                }
                TaskState::Running => {
                    assert!(task.queued.is_none(), "running task {} is not queued", task.id);
                    let run = task.run.as_ref().expect("a running task has a run");
                    assert_eq!(self.bots[&run.bot_id].current_run, Some(run.run_id), "bot holds {}", run.run_id);
                }
                _ => {
                    let holds_nothing = task.queued.is_none() && task.listeners.is_none();
                    assert!(holds_nothing, "ended task {} holds nothing", task.id);
                    assert!(task.secret_bytes.is_none(), "ended task {} forgot its secret", task.id);
                }
            }
        }
        assert_eq!(self.queues.total_pending(), pending, "queued entries equal pending tasks");
        let running = self.bots.values().filter(|bot| bot.current_run.is_some()).count();
        assert_eq!(
            self.timers.expirations.len(),
            pending,
            "one expiration per pending task, none for tasks that moved on"
        );
        assert_eq!(self.timers.pings.len(), running, "one ping per running run, none for runs that ended");
        let mut parked = 0;
        for bot in self.bots.values() {
            if let Some(run_id) = bot.current_run {
                let task = &self.tasks[&run_id.request()];
                let run = task.current_run().expect("a bot's run is running");
                assert_eq!((run.run_id, run.bot_id.as_str()), (run_id, bot.bot_id.as_str()));
                assert!(bot.parked.is_none(), "a busy bot is not parked");
            }
            if let Some(parked) = bot.parked {
                assert!(!parked.eligible || bot.eligible(), "bot {} waits for work only when eligible", bot.bot_id);
                assert!(!parked.eligible || self.storage_trouble.is_none(), "no bot waits for work on a full disk");
                if parked.eligible {
                    let listed = self.queues.parked_caches(parked.park_number);
                    let held: Vec<&String> = bot.caches.iter().map(|cache| &cache.name).collect();
                    assert!(listed.iter().eq(held), "bot {} is listed under the caches it holds", bot.bot_id);
                }
            }
            parked += usize::from(bot.parked.is_some_and(|parked| parked.eligible));
            if let Some(conn) = bot.connection {
                assert_eq!(self.bot_by_connection.get(&conn), Some(&bot.bot_id));
            }
        }
        assert_eq!(self.queues.total_parked(), parked, "parked entries equal bots waiting for work");
        let mut counts: Map<_, (u32, u32)> = Map::default();
        for bot in self.bots.values() {
            let count = counts.entry(bot.class).or_default();
            let (live, busy) = bot.capacity_share();
            *count = (count.0 + live as u32, count.1 + busy as u32);
        }
        for class in self.queues.class_ids() {
            let recount = counts.get(&class).copied().unwrap_or_default();
            assert_eq!(self.queues.class_counts(class), recount, "capacity counts of {class:?} equal a recount");
        }
        self.queues.check_invariants();
        self.tasks.check_invariants();
        self.timers.expirations.check_invariants();
        self.timers.pings.check_invariants();
    }
}

/// The refusal of a request that needs `permission` in at least one pool.
fn refuse_unless_somewhere(caller: Caller<'_>, permission: Permission) -> Option<Reply> {
    (!caller.allows_somewhere(permission)).then(|| caller.denied_everywhere(permission))
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

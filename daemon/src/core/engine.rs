//! The core: all task and bot state, with no I/O. Inputs come in with `now`;
//! what must happen comes out in an `Output`: events to persist (already
//! applied), replies to send once those events are durable, output bytes to
//! write and read. `apply` is the only function that changes durable state,
//! and recovery runs it over the log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;

use apiary_protocol::limits::{DEFAULT_TASK_PAGE, MAX_LONG_POLL_MS, MAX_OUTPUT_CHUNK_BYTES, MAX_TASK_PAGE};
use apiary_protocol::{
    Assignment, BotPoll, CancelOutcome, ErrorCode, ErrorReply, NewTaskRequest, PendingInfo, Reply, Request, RequestId,
    RunEnd, RunId, RunOutcome, StringPair, TaskProperties, TaskQuery, TaskResult, TaskSlice, TaskState, TaskUpdate,
};

use super::events::{BotConnected, Event, StoredState, TaskAssigned, TaskCreated, TaskFinished};
use super::model::{Bot, Ending, ParkedPoll, Run, Task, Watcher};
use super::queues::{self, QueueKey, Queues};
use super::validate;
use super::{ConnId, Map};

#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How long a bot's poll is held before it is answered with "no work".
    pub long_poll_ms: u64,
    /// How old a successful idempotent run may be and still stand in for a new task.
    pub dedup_window_ms: u64,
}

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig { long_poll_ms: 30_000, dedup_window_ms: 7 * 24 * 60 * 60 * 1000 }
    }
}

pub enum Input {
    Request {
        conn: ConnId,
        request_id: u64,
        request: Request,
    },
    /// The connection closed: its parked poll and its waits are dropped.
    Disconnected {
        conn: ConnId,
    },
}

#[derive(Debug)]
pub struct Outgoing {
    pub conn: ConnId,
    pub request_id: u64,
    pub reply: Reply,
}

/// Output bytes for the output store, at the offset the store has reached.
#[derive(Debug)]
pub struct OutputWrite {
    pub task_id: RequestId,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A read the shell does from the output store, answered with `Reply::Output`.
#[derive(Debug)]
pub struct OutputRead {
    pub conn: ConnId,
    pub request_id: u64,
    pub task_id: RequestId,
    pub offset: u64,
    pub max_bytes: usize,
    pub output_len: u64,
    pub task_ended: bool,
}

/// What the core asks of the shell, in order: write the output, persist the
/// events, then, once both are durable, send the replies and do the reads.
#[derive(Default, Debug)]
pub struct Output {
    pub events: Vec<Event>,
    pub replies: Vec<Outgoing>,
    pub output_writes: Vec<OutputWrite>,
    pub output_reads: Vec<OutputRead>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    SliceExpiry { task_id: RequestId, slice_index: u32 },
    PollTimeout { bot_id: String, park_number: u64 },
    WaitTimeout { task_id: RequestId, watcher: (ConnId, u64) },
}

pub struct Core {
    config: CoreConfig,
    /// The latest `now` seen: time never runs backwards inside the core.
    now_ms: u64,
    tasks: BTreeMap<RequestId, Task>,
    bots: BTreeMap<String, Bot>,
    queues: Queues,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    last_task_id: Option<RequestId>,
    bot_by_connection: Map<ConnId, String>,
    /// The latest successful run of each idempotent set of properties, and when it ended.
    successes: Map<TaskProperties, (RunId, u64)>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorReply { code, message: message.into() })
}

fn not_found(raw_id: u64) -> Reply {
    error(ErrorCode::NotFound, format!("no task {}", apiary_protocol::ids::format_task_id(raw_id)))
}

impl Core {
    pub fn new(config: CoreConfig) -> Core {
        Core {
            config,
            now_ms: 0,
            tasks: BTreeMap::new(),
            bots: BTreeMap::new(),
            queues: Queues::default(),
            timers: BinaryHeap::new(),
            last_task_id: None,
            bot_by_connection: Map::default(),
            successes: Map::default(),
        }
    }

    // ------------------------------------------------------------------ inputs

    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Output) {
        self.advance_clock(now_ms);
        match input {
            Input::Request { conn, request_id, request } => {
                if let Some(reply) = self.handle_request(conn, request_id, request, out) {
                    out.replies.push(Outgoing { conn, request_id, reply });
                }
            }
            Input::Disconnected { conn } => self.disconnected(conn),
        }
    }

    /// Returns the reply, or `None` when the reply comes later (a held poll or
    /// wait) or as an output read.
    fn handle_request(&mut self, conn: ConnId, request_id: u64, request: Request, out: &mut Output) -> Option<Reply> {
        match request {
            Request::NewTask(new_task) => Some(self.new_task(new_task, out)),
            Request::GetTask { task_id } => Some(
                self.find_task(task_id).map_or_else(|| not_found(task_id), |task| Reply::Task(self.describe(task))),
            ),
            Request::WaitTask { task_id, timeout_ms } => self.wait_task(conn, request_id, task_id, timeout_ms),
            Request::GetOutput { task_id, offset, max_bytes } => {
                self.get_output(conn, request_id, task_id, offset, max_bytes, out)
            }
            Request::ListBots { dimensions } => Some(self.list_bots(&dimensions)),
            Request::GetBot { bot_id } => Some(self.bots.get(&bot_id).map_or_else(
                || error(ErrorCode::NotFound, format!("no bot {bot_id:?}")),
                |bot| Reply::Bot(bot.info()),
            )),
            Request::ListTasks(query) => Some(self.list_tasks(query)),
            Request::CancelTask { task_id, kill_running } => Some(self.cancel(task_id, kill_running, out)),
            Request::ValidateTask(request) => Some(match validate::validate_request(&request) {
                Ok(()) => Reply::ValidRequest(request),
                Err(refusal) => error(ErrorCode::InvalidRequest, refusal.to_string()),
            }),
            Request::BotPoll(poll) => self.bot_poll(conn, request_id, poll, out),
            Request::TaskUpdate(update) => Some(self.task_update(conn, update, out)),
        }
    }

    /// The task of a request id, or of a run id that exists.
    fn find_task(&self, raw_id: u64) -> Option<&Task> {
        let task = self.tasks.get(&request_id_of(raw_id))?;
        let try_number = (raw_id & 0xf) as u8;
        let run_exists = try_number == 0 || task.run.as_ref().is_some_and(|run| run.run_id.try_number() >= try_number);
        run_exists.then_some(task)
    }

    fn new_task(&mut self, request: NewTaskRequest, out: &mut Output) -> Reply {
        if let Err(refusal) = validate::validate_request(&request) {
            return error(ErrorCode::InvalidRequest, refusal.to_string());
        }
        let task_id = self.next_task_id();
        let first_slice = self.first_servable_slice(&request.task_slices, 0);
        let created = TaskCreated {
            task_id: task_id.as_u64(),
            created_ms: self.now_ms,
            slice_index: first_slice.unwrap_or(0),
            request,
        };
        self.emit(Event::TaskCreated(created), out);
        if first_slice.is_none() {
            let reason = "no live bot has the dimensions of any slice, and no slice waits for capacity";
            self.finish(task_id, None, Ending::new(TaskState::NoResource, reason), out);
        } else if let Some(source) = self.dedup_source(task_id) {
            let source_task = &self.tasks[&source.request()];
            let mut ending = Ending::new(TaskState::Completed, "");
            (ending.exit_code, ending.duration_ms) = (source_task.exit_code, source_task.duration_ms);
            ending.deduped_from = Some(source);
            self.finish(task_id, None, ending, out);
        } else {
            self.hand_to_parked_bot(task_id, out);
        }
        Reply::Task(self.tasks[&task_id].result())
    }

    /// The first slice from `from` on that some live bot could serve, or that
    /// waits for capacity.
    fn first_servable_slice(&mut self, slices: &[TaskSlice], from: usize) -> Option<u32> {
        let servable = |core: &mut Core, slice: &TaskSlice| {
            let queue = core.queues.queue_for(queues::canonical_task_dimensions(&slice.properties.dimensions));
            slice.wait_for_capacity || core.queues.capacity(queue).0 > 0
        };
        (from..slices.len()).find(|&index| servable(self, &slices[index])).map(|index| index as u32)
    }

    /// A successful earlier run with the same properties, recent enough to reuse.
    fn dedup_source(&self, task_id: RequestId) -> Option<RunId> {
        let properties = self.tasks[&task_id].properties();
        if !properties.idempotent {
            return None;
        }
        let &(run_id, ended_ms) = self.successes.get(properties)?;
        (ended_ms.saturating_add(self.config.dedup_window_ms) >= self.now_ms).then_some(run_id)
    }

    /// A task's result with, while it is pending, why it still waits.
    fn describe(&self, task: &Task) -> TaskResult {
        let mut result = task.result();
        if let Some((queue, key)) = task.queued {
            let (matching_bots, busy_bots) = self.queues.capacity(queue);
            let queue_position = self.queues.position(queue, key);
            result.pending = Some(PendingInfo { matching_bots, busy_bots, queue_position });
        }
        result
    }

    fn list_tasks(&self, query: TaskQuery) -> Reply {
        if query.limit > MAX_TASK_PAGE {
            return error(
                ErrorCode::InvalidRequest,
                format!("limit: {} is over the limit of {MAX_TASK_PAGE}", query.limit),
            );
        }
        let limit = if query.limit == 0 { DEFAULT_TASK_PAGE } else { query.limit } as usize;
        let before = query.cursor.map_or(Bound::Unbounded, |cursor| Bound::Excluded(request_id_of(cursor)));
        let wanted = |task: &&Task| {
            query.state.is_none_or(|state| task.state == state)
                && query.tags.iter().all(|tag| task.request.tags.contains(tag))
        };
        let mut matching = self.tasks.range((Bound::Unbounded, before)).rev().map(|(_, task)| task).filter(wanted);
        let tasks: Vec<TaskResult> = matching.by_ref().take(limit).map(|task| self.describe(task)).collect();
        let more = matching.next().is_some();
        let next_cursor = tasks.last().filter(|_| more).map(|task| task.task_id);
        Reply::Tasks { tasks, next_cursor }
    }

    fn list_bots(&self, filter: &[StringPair]) -> Reply {
        for (index, pair) in filter.iter().enumerate() {
            if let Err(refusal) = validate::validate_bot_dimensions(std::slice::from_ref(pair)) {
                let message = refusal.to_string().replacen("dimensions[0]", &format!("dimensions[{index}]"), 1);
                return error(ErrorCode::InvalidRequest, message);
            }
        }
        let filter = queues::canonical_task_dimensions(filter);
        let bots = self.bots.values().filter(|bot| self.queues.class_matches(bot.class, &filter)).map(Bot::info);
        Reply::Bots(bots.collect())
    }

    fn cancel(&mut self, raw_id: u64, kill_running: bool, out: &mut Output) -> Reply {
        let Some(task) = self.find_task(raw_id) else { return not_found(raw_id) };
        let task_id = task.id;
        let outcome = match task.current_run() {
            _ if task.state.is_terminal() => CancelOutcome::AlreadyEnded,
            None => {
                self.finish(task_id, None, Ending::new(TaskState::Canceled, "canceled by a client"), out);
                CancelOutcome::Canceled
            }
            Some(run) if kill_running => {
                if !task.kill_requested {
                    let event = Event::KillRequested { run_id: run.run_id.as_u64(), at_ms: self.now_ms };
                    self.emit(event, out);
                }
                CancelOutcome::KillRequested
            }
            Some(_) => CancelOutcome::LeftRunning,
        };
        Reply::Canceled { outcome, task: self.tasks[&task_id].result() }
    }

    /// Time-ordered and unique, even when the clock stands still or steps back.
    fn next_task_id(&self) -> RequestId {
        let from_clock = RequestId::first_of_millisecond(self.now_ms);
        match self.last_task_id {
            Some(last) if last >= from_clock => last.next(),
            _ => from_clock,
        }
    }

    fn wait_task(&mut self, conn: ConnId, request_id: u64, raw_id: u64, timeout_ms: u64) -> Option<Reply> {
        let Some(task) = self.find_task(raw_id) else { return Some(not_found(raw_id)) };
        if task.state.is_terminal() || timeout_ms == 0 {
            return Some(Reply::Task(task.result()));
        }
        let task_id = task.id;
        let deadline = self.now_ms + timeout_ms.min(MAX_LONG_POLL_MS);
        self.tasks.get_mut(&task_id).expect("found above").watchers.push(Watcher { conn, request_id });
        self.timers.push(Reverse((deadline, Timer::WaitTimeout { task_id, watcher: (conn, request_id) })));
        None
    }

    fn get_output(
        &mut self,
        conn: ConnId,
        request_id: u64,
        raw_id: u64,
        offset: u64,
        max_bytes: u32,
        out: &mut Output,
    ) -> Option<Reply> {
        let Some(task) = self.find_task(raw_id) else { return Some(not_found(raw_id)) };
        out.output_reads.push(OutputRead {
            conn,
            request_id,
            task_id: task.deduped_from.map_or(task.id, RunId::request),
            offset,
            max_bytes: (max_bytes as usize).min(MAX_OUTPUT_CHUNK_BYTES),
            output_len: task.output_len,
            task_ended: task.state.is_terminal(),
        });
        None
    }

    // -------------------------------------------------------------------- bots

    fn bot_poll(&mut self, conn: ConnId, request_id: u64, poll: BotPoll, out: &mut Output) -> Option<Reply> {
        if let Err(refusal) = validate::validate_bot_id(&poll.bot_id) {
            return Some(error(ErrorCode::InvalidRequest, refusal.to_string()));
        }
        if let Err(refusal) = validate::validate_bot_dimensions(&poll.dimensions) {
            return Some(error(ErrorCode::InvalidRequest, refusal.to_string()));
        }
        self.unpark(&poll.bot_id, out);
        self.bot_seen(conn, &poll, out);
        let bot = &self.bots[&poll.bot_id];
        if let Some(run_id) = bot.current_run {
            // The assignment was durable but the bot never got it (the reply was
            // lost with a connection or a daemon restart): hand it over again.
            return Some(Reply::Assignment(self.assignment(run_id)));
        }
        if let Some((_, key)) = self.queues.best_for_class(bot.class) {
            return Some(self.assign(key.task_id, &poll.bot_id, out));
        }
        let park_number = self.queues.park(bot.class, &poll.bot_id);
        let deadline = self.now_ms + self.config.long_poll_ms;
        let bot = self.bots.get_mut(&poll.bot_id).expect("seen above");
        bot.parked = Some(ParkedPoll { conn, request_id, park_number });
        self.timers.push(Reverse((deadline, Timer::PollTimeout { bot_id: poll.bot_id, park_number })));
        None
    }

    /// Records a bot's poll: a new session, dimensions or software is an event;
    /// a new session means the bot restarted and lost whatever it ran.
    fn bot_seen(&mut self, conn: ConnId, poll: &BotPoll, out: &mut Output) {
        let known = self.bots.get(&poll.bot_id);
        let changed = known.is_none_or(|bot| {
            bot.session_id != poll.session_id || bot.dimensions != poll.dimensions || bot.software != poll.software
        });
        let lost_run = known.and_then(|bot| bot.current_run.filter(|_| bot.session_id != poll.session_id));
        if let Some(run_id) = lost_run {
            let mut ending = Ending::new(TaskState::BotDied, "the bot restarted while running the task");
            ending.internal_failure = true;
            self.finish(run_id.request(), Some(run_id), ending, out);
        }
        if changed {
            let event = BotConnected {
                bot_id: poll.bot_id.clone(),
                session_id: poll.session_id,
                dimensions: poll.dimensions.clone(),
                software: poll.software.clone(),
                at_ms: self.now_ms,
            };
            self.emit(Event::BotConnected(event), out);
        }
        self.note_connection(conn, &poll.bot_id);
    }

    fn note_connection(&mut self, conn: ConnId, bot_id: &str) {
        let bot = self.bots.get_mut(bot_id).expect("bot is known");
        bot.last_seen_ms = self.now_ms;
        if bot.connection != Some(conn) {
            if let Some(old) = bot.connection.replace(conn) {
                self.bot_by_connection.remove(&old);
            }
            self.bot_by_connection.insert(conn, bot_id.to_string());
        }
    }

    /// Ends a bot's held poll without an answer (a new poll replaces it) or,
    /// with `out`, answers it with "no work".
    fn unpark(&mut self, bot_id: &str, out: &mut Output) {
        let Some(bot) = self.bots.get_mut(bot_id) else { return };
        if let Some(parked) = bot.parked.take() {
            self.queues.unpark(bot.class, parked.park_number);
            out.replies.push(Outgoing { conn: parked.conn, request_id: parked.request_id, reply: Reply::NoWork });
        }
    }

    fn disconnected(&mut self, conn: ConnId) {
        let Some(bot_id) = self.bot_by_connection.remove(&conn) else { return };
        let bot = self.bots.get_mut(&bot_id).expect("connection map names known bots");
        bot.connection = None;
        if let Some(parked) = bot.parked.take() {
            self.queues.unpark(bot.class, parked.park_number);
        }
    }

    /// A new task goes straight to the longest-parked bot that can run it.
    fn hand_to_parked_bot(&mut self, task_id: RequestId, out: &mut Output) {
        let Some((queue, _)) = self.tasks[&task_id].queued else { return };
        let Some(bot_id) = self.queues.parked_bot_for_queue(queue).map(str::to_string) else { return };
        let bot = self.bots.get_mut(&bot_id).expect("parked bots are known");
        let parked = bot.parked.take().expect("a parked bot has its poll");
        self.queues.unpark(bot.class, parked.park_number);
        let reply = self.assign(task_id, &bot_id, out);
        out.replies.push(Outgoing { conn: parked.conn, request_id: parked.request_id, reply });
    }

    fn assign(&mut self, task_id: RequestId, bot_id: &str, out: &mut Output) -> Reply {
        let task = &self.tasks[&task_id];
        let run_id = task_id.run(task.try_number + 1);
        let event = TaskAssigned {
            run_id: run_id.as_u64(),
            slice_index: task.slice_index,
            bot_id: bot_id.to_string(),
            session_id: self.bots[bot_id].session_id,
            at_ms: self.now_ms,
        };
        self.emit(Event::TaskAssigned(event), out);
        Reply::Assignment(self.assignment(run_id))
    }

    fn assignment(&self, run_id: RunId) -> Assignment {
        let task = &self.tasks[&run_id.request()];
        Assignment {
            run_id: run_id.as_u64(),
            task_name: task.request.name.clone(),
            slice_index: task.slice_index,
            properties: task.properties().clone(),
        }
    }

    fn task_update(&mut self, conn: ConnId, update: TaskUpdate, out: &mut Output) -> Reply {
        let Some(run_id) = RunId::from_u64(update.run_id) else {
            return error(ErrorCode::InvalidRequest, "run_id: a run id ends in a non-zero hex digit");
        };
        let Some(task) = self.tasks.get(&run_id.request()) else {
            return error(ErrorCode::StaleRun, format!("run {run_id} is unknown"));
        };
        let is_this_run =
            |run: &Run| run.run_id == run_id && run.bot_id == update.bot_id && run.session_id == update.session_id;
        if !task.current_run().is_some_and(is_this_run) {
            // A retried final report of the run that ended gets the same answer again.
            let retried_final = update.outcome.is_some() && task.run.as_ref().is_some_and(is_this_run);
            if retried_final && task.state.is_terminal() {
                return Reply::UpdateAck { output_len: task.output_len, must_stop: false };
            }
            let state = task.state.name();
            return error(ErrorCode::StaleRun, format!("run {run_id} is no longer current (task is {state})"));
        }
        let must_stop = task.kill_requested;
        self.note_connection(conn, &update.bot_id);
        let output_len = self.accept_output(run_id.request(), update.output_offset, update.output, out);
        if update.output_offset > output_len {
            // A gap: the bot resends from what we hold before anything ends.
            return Reply::UpdateAck { output_len, must_stop };
        }
        if let Some(outcome) = update.outcome {
            self.finish(run_id.request(), Some(run_id), ending_of(outcome), out);
        }
        Reply::UpdateAck { output_len, must_stop }
    }

    /// Keeps the part of a chunk past what is already held; returns the new length.
    fn accept_output(&mut self, task_id: RequestId, offset: u64, data: Vec<u8>, out: &mut Output) -> u64 {
        let task = self.tasks.get_mut(&task_id).expect("caller checked");
        let held = task.output_len;
        let end = offset.saturating_add(data.len() as u64);
        if offset > held || end <= held {
            return held;
        }
        let fresh = data[(held - offset) as usize..].to_vec();
        task.output_len = end;
        out.output_writes.push(OutputWrite { task_id, offset: held, data: fresh });
        end
    }

    // ------------------------------------------------------------------ timers

    /// When `tick` next has work to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((deadline, _))| *deadline)
    }

    pub fn tick(&mut self, now_ms: u64, out: &mut Output) {
        self.advance_clock(now_ms);
        while let Some(Reverse((deadline, _))) = self.timers.peek() {
            if *deadline > self.now_ms {
                break;
            }
            let Reverse((_, timer)) = self.timers.pop().expect("peeked");
            self.fire(timer, out);
        }
    }

    /// Timers are not cancelled; one that no longer applies does nothing.
    fn fire(&mut self, timer: Timer, out: &mut Output) {
        match timer {
            Timer::SliceExpiry { task_id, slice_index } => self.slice_expired(task_id, slice_index, out),
            Timer::PollTimeout { bot_id, park_number } => {
                let still_parked = self.bots.get(&bot_id).and_then(|bot| bot.parked).map(|p| p.park_number);
                if still_parked == Some(park_number) {
                    self.unpark(&bot_id, out);
                }
            }
            Timer::WaitTimeout { task_id, watcher: (conn, request_id) } => {
                let Some(task) = self.tasks.get_mut(&task_id) else { return };
                let before = task.watchers.len();
                task.watchers.retain(|watcher| *watcher != Watcher { conn, request_id });
                if task.watchers.len() < before {
                    out.replies.push(Outgoing { conn, request_id, reply: Reply::Task(task.result()) });
                }
            }
        }
    }

    fn slice_expired(&mut self, task_id: RequestId, slice_index: u32, out: &mut Output) {
        let Some(task) = self.tasks.get(&task_id) else { return };
        if task.state != TaskState::Pending || task.slice_index != slice_index {
            return;
        }
        let slices = task.request.task_slices.clone();
        if let Some(next_slice) = self.first_servable_slice(&slices, slice_index as usize + 1) {
            let at_ms = self.now_ms;
            self.emit(Event::SliceAdvanced { task_id: task_id.as_u64(), slice_index: next_slice, at_ms }, out);
            self.hand_to_parked_bot(task_id, out);
        } else {
            let reason = format!("slice {slice_index} expired and no later slice could be served");
            self.finish(task_id, None, Ending::new(TaskState::Expired, reason), out);
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
        let event = TaskFinished {
            task_id: task_id.as_u64(),
            run_id: run.map(RunId::as_u64),
            state: StoredState::from_state(ending.state),
            exit_code: ending.exit_code,
            duration_ms: ending.duration_ms,
            internal_failure: ending.internal_failure,
            reason: ending.reason,
            output_len: ending.deduped_from.map_or(task.output_len, |source| self.tasks[&source.request()].output_len),
            deduped_from: ending.deduped_from.map(RunId::as_u64),
            at_ms: self.now_ms,
        };
        self.emit(Event::TaskFinished(event), out);
        let task = self.tasks.get_mut(&task_id).expect("still there");
        let result = task.result();
        for watcher in task.watchers.drain(..) {
            out.replies.push(Outgoing {
                conn: watcher.conn,
                request_id: watcher.request_id,
                reply: Reply::Task(result.clone()),
            });
        }
        true
    }

    // ------------------------------------------------------------------ events

    fn emit(&mut self, event: Event, out: &mut Output) {
        self.apply(&event);
        out.events.push(event);
    }

    /// Applies one event: the only change to durable state, both live and in
    /// recovery. Events come from `emit` or from the log, so they are consistent
    /// with the state; an inconsistent one is a bug and stops the daemon.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::TaskCreated(created) => self.apply_task_created(created),
            Event::SliceAdvanced { task_id, slice_index, at_ms } => {
                let task_id = RequestId::from_u64(*task_id).expect("a request id");
                self.dequeue(task_id);
                let task = self.tasks.get_mut(&task_id).expect("slice of a known task");
                task.slice_index = *slice_index;
                task.slice_started_ms = *at_ms;
                self.enqueue(task_id);
            }
            Event::TaskAssigned(assigned) => self.apply_task_assigned(assigned),
            Event::KillRequested { run_id, .. } => {
                let run_id = RunId::from_u64(*run_id).expect("a run id");
                let task = self.tasks.get_mut(&run_id.request()).expect("kill of a known task");
                assert_eq!(task.current_run().map(|run| run.run_id), Some(run_id), "only a running run is killed");
                task.kill_requested = true;
            }
            Event::TaskFinished(finished) => self.apply_task_finished(finished),
            Event::BotConnected(connected) => self.apply_bot_connected(connected),
        }
    }

    fn apply_task_created(&mut self, created: &TaskCreated) {
        let task_id = RequestId::from_u64(created.task_id).expect("a request id");
        assert!(self.last_task_id < Some(task_id), "task ids must grow");
        self.last_task_id = Some(task_id);
        let mut task = Task::new(task_id, created.request.clone(), created.created_ms);
        task.slice_index = created.slice_index;
        self.tasks.insert(task_id, task);
        self.enqueue(task_id);
    }

    fn apply_task_assigned(&mut self, assigned: &TaskAssigned) {
        let run_id = RunId::from_u64(assigned.run_id).expect("a run id");
        self.dequeue(run_id.request());
        let task = self.tasks.get_mut(&run_id.request()).expect("assigned task is known");
        assert_eq!(task.state, TaskState::Pending, "only a pending task is assigned");
        task.state = TaskState::Running;
        task.kill_requested = false;
        task.try_number = run_id.try_number();
        task.started_ms.get_or_insert(assigned.at_ms);
        task.run = Some(Run { run_id, bot_id: assigned.bot_id.clone(), session_id: assigned.session_id });
        let bot = self.bots.get_mut(&assigned.bot_id).expect("assigned bot is known");
        assert!(bot.current_run.is_none(), "bot {} already runs {:?}", bot.bot_id, bot.current_run);
        bot.current_run = Some(run_id);
        self.queues.count_bot(bot.class, 0, 1);
    }

    fn apply_task_finished(&mut self, finished: &TaskFinished) {
        let task_id = RequestId::from_u64(finished.task_id).expect("a request id");
        self.dequeue(task_id);
        let task = self.tasks.get_mut(&task_id).expect("finished task is known");
        assert!(!task.state.is_terminal(), "task {task_id} finished twice");
        let state = finished.state.state();
        task.state = state;
        task.exit_code = finished.exit_code;
        task.duration_ms = finished.duration_ms;
        task.internal_failure = finished.internal_failure;
        task.failure_reason = finished.reason.clone();
        task.output_len = finished.output_len;
        task.completed_ms = Some(finished.at_ms);
        task.deduped_from = finished.deduped_from.and_then(RunId::from_u64);
        let command_ended_itself = matches!(state, TaskState::Completed | TaskState::TimedOut | TaskState::ClientError);
        if !command_ended_itself {
            task.abandoned_ms = Some(finished.at_ms);
        }
        if let Some(run_id) = finished.run_id.and_then(RunId::from_u64) {
            let run = task.run.as_ref().expect("a finished run exists");
            assert_eq!(run.run_id, run_id, "only the current run finishes");
            let bot = self.bots.get_mut(&run.bot_id).expect("a run's bot is known");
            assert_eq!(bot.current_run, Some(run_id), "the bot holds the run it finishes");
            bot.current_run = None;
            self.queues.count_bot(bot.class, 0, -1);
            let succeeded = state == TaskState::Completed && finished.exit_code == Some(0);
            if succeeded && task.properties().idempotent {
                self.successes.insert(task.properties().clone(), (run_id, finished.at_ms));
            }
        }
    }

    fn apply_bot_connected(&mut self, connected: &BotConnected) {
        let class = self.queues.class_for(queues::canonical_bot_dimensions(&connected.dimensions));
        if let Some(known) = self.bots.get(&connected.bot_id) {
            self.queues.count_bot(known.class, -1, -i32::from(known.current_run.is_some()));
        }
        let bot = self.bots.entry(connected.bot_id.clone()).or_insert_with(|| Bot {
            bot_id: connected.bot_id.clone(),
            session_id: connected.session_id,
            dimensions: Vec::new(),
            class,
            software: String::new(),
            first_seen_ms: connected.at_ms,
            last_seen_ms: connected.at_ms,
            current_run: None,
            connection: None,
            parked: None,
        });
        assert!(bot.parked.is_none(), "a bot is unparked before it changes");
        bot.session_id = connected.session_id;
        bot.dimensions = connected.dimensions.clone();
        bot.class = class;
        bot.software = connected.software.clone();
        bot.last_seen_ms = connected.at_ms;
        self.queues.count_bot(class, 1, i32::from(bot.current_run.is_some()));
    }

    fn enqueue(&mut self, task_id: RequestId) {
        let task = self.tasks.get_mut(&task_id).expect("known task");
        let queue = self.queues.queue_for(queues::canonical_task_dimensions(task.dimensions()));
        let key = QueueKey { priority: task.request.priority, task_id };
        self.queues.push(queue, key);
        task.queued = Some((queue, key));
        let expiration_ms = u64::from(task.request.task_slices[task.slice_index as usize].expiration_secs) * 1000;
        let slice_index = task.slice_index;
        self.timers.push(Reverse((task.slice_started_ms + expiration_ms, Timer::SliceExpiry { task_id, slice_index })));
    }

    fn dequeue(&mut self, task_id: RequestId) {
        let task = self.tasks.get_mut(&task_id).expect("known task");
        if let Some((queue, key)) = task.queued.take() {
            let removed = self.queues.remove(queue, key);
            assert!(removed, "a queued task is in its queue");
        }
    }

    // ---------------------------------------------------------------- recovery

    fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The tasks running now, whose output length the shell reads back from the
    /// output store after a restart (`set_output_len`).
    pub fn running_tasks(&self) -> Vec<RequestId> {
        self.tasks.values().filter(|task| task.state == TaskState::Running).map(|task| task.id).collect()
    }

    pub fn set_output_len(&mut self, task_id: RequestId, output_len: u64) {
        let task = self.tasks.get_mut(&task_id).expect("known task");
        assert!(!task.state.is_terminal(), "the output of an ended task is fixed");
        task.output_len = output_len;
    }

    // ------------------------------------------------------------------ checks

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn task(&self, task_id: RequestId) -> Option<apiary_protocol::TaskResult> {
        self.tasks.get(&task_id).map(Task::result)
    }

    /// Checks every cross-reference against a recount. Tests call it after each step.
    pub fn check_invariants(&self) {
        let mut pending = 0;
        for task in self.tasks.values() {
            match task.state {
                TaskState::Pending => {
                    pending += 1;
                    let (queue, key) = task.queued.expect("a pending task is queued");
                    assert!(self.queues.contains(queue, key), "task {} is in its queue", task.id);
                    assert!(self.queues.parked_bot_for_queue(queue).is_none(), "no parked bot could take {}", task.id);
                }
                TaskState::Running => {
                    assert!(task.queued.is_none(), "running task {} is not queued", task.id);
                    let run = task.run.as_ref().expect("a running task has a run");
                    assert_eq!(self.bots[&run.bot_id].current_run, Some(run.run_id), "bot holds {}", run.run_id);
                }
                _ => assert!(task.queued.is_none() && task.watchers.is_empty(), "ended task {} holds nothing", task.id),
            }
        }
        assert_eq!(self.queues.total_pending(), pending, "queued entries equal pending tasks");
        let mut parked = 0;
        for bot in self.bots.values() {
            if let Some(run_id) = bot.current_run {
                let task = &self.tasks[&run_id.request()];
                let run = task.current_run().expect("a bot's run is running");
                assert_eq!((run.run_id, run.bot_id.as_str()), (run_id, bot.bot_id.as_str()));
                assert!(bot.parked.is_none(), "a busy bot is not parked");
            }
            parked += usize::from(bot.parked.is_some());
            if let Some(conn) = bot.connection {
                assert_eq!(self.bot_by_connection.get(&conn), Some(&bot.bot_id));
            }
        }
        assert_eq!(self.queues.total_parked(), parked, "parked entries equal parked bots");
        let mut counts: Map<_, (u32, u32)> = Map::default();
        for bot in self.bots.values() {
            let count = counts.entry(bot.class).or_default();
            *count = (count.0 + 1, count.1 + u32::from(bot.current_run.is_some()));
        }
        for class in self.queues.class_ids() {
            let recount = counts.get(&class).copied().unwrap_or_default();
            assert_eq!(self.queues.class_counts(class), recount, "capacity counts of {class:?} equal a recount");
        }
        self.queues.check_invariants();
    }
}

/// The request id of a request or run id.
fn request_id_of(raw_id: u64) -> RequestId {
    RequestId::from_u64(raw_id & !0xf).expect("masked id ends in 0")
}

fn ending_of(outcome: RunOutcome) -> Ending {
    let mut ending = Ending::new(TaskState::Completed, "");
    ending.exit_code = outcome.exit_code;
    ending.duration_ms = Some(outcome.duration_ms);
    match outcome.end {
        RunEnd::Exited => {}
        RunEnd::HardTimeout => (ending.state, ending.reason) = (TaskState::TimedOut, "hard timeout".into()),
        RunEnd::IoTimeout => (ending.state, ending.reason) = (TaskState::TimedOut, "io timeout".into()),
        RunEnd::Killed => (ending.state, ending.reason) = (TaskState::Killed, "killed on request".into()),
        RunEnd::ClientError(reason) => (ending.state, ending.reason) = (TaskState::ClientError, reason),
        RunEnd::InternalError(reason) => {
            (ending.state, ending.reason, ending.internal_failure) = (TaskState::BotDied, reason, true);
        }
    }
    ending
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

//! Tasks: creation, slices and dedup, waits, output, updates from bots, cancel, queries.

use super::apply::slice_expiry_ms;
use super::history::{Found, Missing};
use super::lineage::Origin;
use super::permissions::{self, Caller};
use super::*;
use std::ops::ControlFlow;

impl Core {
    /// The task of a request id, or of a run id that exists, from the heap or
    /// a history run; the error is the reply to give.
    pub(super) fn find_task(&self, raw_id: u64) -> Result<Found<'_>, Missing> {
        let task = self.task_by_id(request_id_of(raw_id)).map_err(|missing| match missing {
            Missing::Unknown(_) => Missing::Unknown(raw_id),
            damaged => damaged,
        })?;
        let try_number = (raw_id & 0xf) as u8;
        let run_exists = try_number == 0 || task.run.as_ref().is_some_and(|run| run.run_id.try_number() >= try_number);
        if run_exists { Ok(task) } else { Err(Missing::Unknown(raw_id)) }
    }

    /// A new task; `principal` (who asked) is recorded on it as its
    /// `authenticated:NAME` tag, in its creation event.
    pub(super) fn new_task(&mut self, request: NewTaskRequest, principal: Option<&str>, out: &mut Output) -> Reply {
        match self.create_task(request, principal, None, out) {
            Ok(task_id) => self.acknowledgement(&self.tasks[&task_id]),
            Err(refusal) => *refusal,
        }
    }

    /// Creates a task, and with `origin` links it to its uuid and parent in the
    /// event right after its creation; the error is the reply to give (boxed: a
    /// reply is large, and most calls succeed).
    pub(super) fn create_task(
        &mut self,
        request: NewTaskRequest,
        principal: Option<&str>,
        origin: Option<Origin>,
        out: &mut Output,
    ) -> Result<RequestId, Box<Reply>> {
        let parent = origin.as_ref().and_then(|origin| origin.parent).map(RequestId::as_u64);
        let request = validate::admit_child(request, principal, parent)
            .and_then(|request| validate::check_input_stores(&request, &self.config.cas_instance).map(|()| request))
            .map_err(|refusal| Box::new(error(ErrorCode::InvalidRequest, refusal.to_string())))?;
        if let Some(refusal) = self.refuse_for_storage() {
            return Err(Box::new(refusal));
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
        if let Some(origin) = origin {
            self.emit(Event::TaskLinked(origin.linked(task_id, self.now_ms)), out);
        }
        if first_slice.is_none() {
            let reason = "no live bot has the dimensions of any slice, and no slice waits for capacity";
            self.finish(task_id, None, Ending::new(TaskState::NoResource, reason), out);
        } else if let Some((source, source_outcome)) = self.dedup_source(task_id) {
            let mut ending = Ending::new(TaskState::Completed, "");
            (ending.exit_code, ending.duration_ms) = (source_outcome.exit_code, source_outcome.duration_ms);
            ending.cas_output_root = source_outcome.cas_output_root;
            ending.deduped_from = Some(source);
            self.finish(task_id, None, ending, out);
        } else {
            self.hand_to_parked_bot(task_id, out);
        }
        Ok(task_id)
    }

    /// The answer to a new task: its id, its state now, and the run it reused.
    pub(super) fn acknowledgement(&self, task: &Task) -> Reply {
        let deduped_from = task.deduped_from().map(RunId::as_u64);
        Reply::Created(NewTaskAck { task_id: task.id.as_u64(), state: task.state, deduped_from })
    }

    /// The first slice from `from` on that some live bot could serve, or that
    /// waits for capacity.
    pub(super) fn first_servable_slice(&mut self, slices: &[TaskSlice], from: usize) -> Option<u32> {
        let servable = |core: &mut Core, slice: &TaskSlice| {
            let queue = core.queues.queue_for_task(&slice.properties.dimensions);
            slice.wait_for_capacity || core.capacity(queue).0 > 0
        };
        (from..slices.len()).find(|&index| servable(self, &slices[index])).map(|index| index as u32)
    }

    /// A successful earlier run with the same properties, recent enough to
    /// reuse, and how it ended.
    pub(super) fn dedup_source(&self, task_id: RequestId) -> Option<(RunId, Outcome)> {
        let task = &self.tasks[&task_id];
        let properties = task.properties();
        // Secret bytes change what a task does without showing in its properties.
        if !properties.idempotent || task.has_secret_bytes {
            return None;
        }
        let &(run_id, ended_ms) = self.successes.get(properties)?;
        if ended_ms.saturating_add(self.config.dedup_window_ms) < self.now_ms {
            return None;
        }
        // In a history run that turns out damaged, the source is lost: the task runs.
        let source = self.task_by_id(run_id.request()).ok()?;
        Some((run_id, source.outcome.as_deref()?.clone()))
    }

    /// A task's result with, while it is pending, why it still waits.
    pub(super) fn describe(&self, task: &Task) -> TaskResult {
        let mut result = self.result(task);
        if let Some((queue, key)) = self.queue_entry(task.id) {
            let (matching_bots, busy_bots) = self.capacity(queue);
            let queue_position = self.queues.position(queue, key);
            result.pending = Some(PendingInfo { matching_bots, busy_bots, queue_position });
        }
        result
    }

    /// A page of the tasks `caller` may read (`read_tasks`), newest first.
    pub(super) fn list_tasks(&self, query: TaskQuery, caller: Caller<'_>) -> Reply {
        // Capped, not refused: a script asking for "all" gets the largest page and a cursor.
        let limit = if query.limit == 0 { DEFAULT_TASK_PAGE } else { query.limit.min(MAX_TASK_PAGE) } as usize;
        let readable = |task: &Task| {
            caller.allows_everywhere(Permission::ReadTasks)
                || caller.allows(Permission::ReadTasks, permissions::task_pool(task))
        };
        let (tasks, more) = match self.list_merged(&query, limit, MAX_PAGE_BYTES, &readable) {
            Ok(listed) => listed,
            Err(damage) => return error(ErrorCode::Internal, damage),
        };
        let next_cursor = tasks.last().filter(|_| more).map(|task| task.task_id);
        Reply::Tasks { tasks, next_cursor }
    }

    /// How many tasks `caller` may read match the query, counted up to `MAX_TASK_COUNT`.
    pub(super) fn count_tasks(&self, query: &TaskQuery, caller: Caller<'_>) -> Reply {
        let readable = |task: &Task| {
            caller.allows_everywhere(Permission::ReadTasks)
                || caller.allows(Permission::ReadTasks, permissions::task_pool(task))
        };
        match self.count_merged(query, MAX_TASK_COUNT, &readable) {
            Ok((count, capped)) => Reply::TaskCount { count, capped },
            Err(damage) => error(ErrorCode::Internal, damage),
        }
    }

    /// Swarming's CancelTasks: the pending tasks (with `kill_running`, also the
    /// running ones) that have every tag asked for and that `caller` may
    /// cancel, newest first, at most `query.limit` per call; the cursor goes on.
    pub(super) fn cancel_tasks(
        &mut self,
        query: &TaskQuery,
        kill_running: bool,
        caller: Caller<'_>,
        out: &mut Output,
    ) -> Reply {
        if query.tags.is_empty() {
            return error(ErrorCode::InvalidRequest, "tags: at least one tag is needed to cancel tasks by tags");
        }
        if query.limit > MAX_TASK_PAGE {
            let message = format!("limit: {} is over the limit of {MAX_TASK_PAGE}", query.limit);
            return error(ErrorCode::InvalidRequest, message);
        }
        let limit = if query.limit == 0 { DEFAULT_TASK_PAGE } else { query.limit } as usize;
        let state = if kill_running { StateQuery::PendingRunning } else { StateQuery::One(TaskState::Pending) };
        let query = TaskQuery { state, ..query.clone() };
        let cancelable = |task: &Task| {
            caller.allows_everywhere(Permission::CancelTask)
                || caller.allows(Permission::CancelTask, permissions::task_pool(task))
        };
        let mut matched = Vec::new();
        let walked = self.walk_merged(&query, &cancelable, &mut |task| {
            if matched.len() == limit {
                return ControlFlow::Break(());
            }
            matched.push(task.id.as_u64());
            ControlFlow::Continue(())
        });
        let more = match walked {
            Ok(more) => more,
            Err(damage) => return error(ErrorCode::Internal, damage),
        };
        let mut canceled = CanceledTasks { matched: matched.len() as u32, ..CanceledTasks::default() };
        for &task_id in &matched {
            match self.cancel(task_id, kill_running, out) {
                Reply::Canceled { outcome: CancelOutcome::Canceled, .. } => canceled.canceled += 1,
                Reply::Canceled { outcome: CancelOutcome::KillRequested, .. } => canceled.kill_requested += 1,
                _ => {}
            }
        }
        canceled.next_cursor = matched.last().copied().filter(|_| more);
        Reply::CanceledTasks(canceled)
    }

    pub(super) fn cancel(&mut self, raw_id: u64, kill_running: bool, out: &mut Output) -> Reply {
        let task = match self.find_task(raw_id) {
            Ok(task) => task,
            Err(missing) => return self.missing(missing),
        };
        if task.state.is_terminal() {
            return Reply::Canceled { outcome: CancelOutcome::AlreadyEnded, task: Box::new(self.result(&task)) };
        }
        let task_id = task.id;
        let outcome = match task.current_run() {
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
        Reply::Canceled { outcome, task: Box::new(self.result(&self.tasks[&task_id])) }
    }

    /// Time-ordered and unique, even when the clock stands still or steps back.
    pub(super) fn next_task_id(&self) -> RequestId {
        let from_clock = RequestId::first_of_millisecond(self.now_ms);
        match self.last_task_id {
            Some(last) if last >= from_clock => last.next(),
            _ => from_clock,
        }
    }

    pub(super) fn wait_task(&mut self, conn: ConnId, request_id: u64, raw_id: u64, timeout_ms: u64) -> Option<Reply> {
        let task = match self.find_task(raw_id) {
            Ok(task) => task,
            Err(missing) => return Some(self.missing(missing)),
        };
        if task.state.is_terminal() || timeout_ms == 0 {
            return Some(Reply::Task(Box::new(self.result(&task))));
        }
        let task_id = task.id;
        let deadline = self.now_ms + timeout_ms.min(MAX_LONG_POLL_MS);
        self.tasks.get_mut(&task_id).expect("found above").listeners_mut().watchers.push(Watcher { conn, request_id });
        self.timers.push(deadline, Timer::WaitTimeout { task_id, watcher: (conn, request_id) });
        None
    }

    pub(super) fn get_output(
        &mut self,
        conn: ConnId,
        request_id: u64,
        raw_id: u64,
        offset: u64,
        max_bytes: u32,
        out: &mut Output,
    ) -> Option<Reply> {
        let task = match self.find_task(raw_id) {
            Ok(task) => task,
            Err(missing) => return Some(self.missing(missing)),
        };
        out.output_reads.push(OutputRead {
            conn,
            request_id,
            run_id: task.output_run(),
            offset,
            max_bytes: (max_bytes as usize).min(MAX_OUTPUT_CHUNK_BYTES),
            output_len: task.output_len,
            task_ended: task.state.is_terminal(),
            ends_request: true,
        });
        None
    }

    pub(super) fn task_update(&mut self, conn: ConnId, update: TaskUpdate, out: &mut Output) -> Reply {
        let Some(run_id) = RunId::from_u64(update.run_id) else {
            return error(ErrorCode::InvalidRequest, "run_id: a run id ends in a non-zero hex digit");
        };
        let Ok(task) = self.task_by_id(run_id.request()) else {
            return error(ErrorCode::StaleRun, format!("run {run_id} is unknown"));
        };
        let is_this_run =
            |run: &Run| run.run_id == run_id && run.bot_id == update.bot_id && run.session_id == update.session_id;
        if !task.current_run().is_some_and(is_this_run) {
            // The bot's retried final report, the one that ended the run, gets
            // the same answer again; any other report on an ended run is stale.
            let ended_by_this_report = update.outcome.as_ref().is_some_and(|outcome| {
                let ending = ending_of(outcome.clone());
                (ending.state, ending.exit_code)
                    == (task.state, task.outcome.as_ref().and_then(|outcome| outcome.exit_code))
            });
            if ended_by_this_report && task.run.as_deref().is_some_and(is_this_run) {
                return Reply::UpdateAck { output_len: task.output_len, must_stop: false };
            }
            if task.current_run().is_some_and(|run| run.run_id == run_id) {
                // Someone else's run: a forged report, or a session that lost it.
                let message = format!(
                    "run_id: run {run_id} is held by another bot session; only the bot that holds a run may report on it"
                );
                return error(ErrorCode::StaleRun, message);
            }
            let state = task.state.name();
            return error(ErrorCode::StaleRun, format!("run {run_id} is no longer current (task is {state})"));
        }
        let must_stop = task.kill_requested;
        let task = self.tasks.get_mut(&run_id.request()).expect("found above");
        task.run.as_mut().expect("a running task has a run").last_heard_ms = self.now_ms;
        self.revive_if_dead(&update.bot_id, out);
        self.note_connection(conn, &update.bot_id);
        let output_len = self.accept_output(run_id, update.output_offset, update.output, out);
        if update.output_offset > output_len {
            // A gap: the bot resends from what we hold before anything ends.
            return Reply::UpdateAck { output_len, must_stop };
        }
        if let Some(outcome) = update.outcome {
            self.finish(run_id.request(), Some(run_id), ending_of(outcome), out);
        }
        Reply::UpdateAck { output_len, must_stop }
    }

    /// Keeps the part of a chunk past what the bot already reported, up to
    /// the output cap (then a marker, and the rest is dropped), and pushes the
    /// new bytes to followers. Returns how far the bot's output has been received.
    pub(super) fn accept_output(&mut self, run_id: RunId, offset: u64, data: Vec<u8>, out: &mut Output) -> u64 {
        let cap = self.config.max_output_bytes;
        let task_id = run_id.request();
        let task = self.tasks.get_mut(&task_id).expect("caller checked");
        let run = task.run.as_deref_mut().expect("output comes from a running run");
        let end = offset.saturating_add(data.len() as u64);
        if task.output_truncated {
            run.output_received = run.output_received.max(end);
            return run.output_received;
        }
        let received = run.output_received;
        if offset > received || end <= received {
            return received;
        }
        let fresh = &data[(received - offset) as usize..];
        run.output_received = end;
        let room = if self.storage_trouble.is_some() { 0 } else { cap.saturating_sub(task.output_len) as usize };
        let mut kept = fresh[..fresh.len().min(room)].to_vec();
        if kept.len() < fresh.len() {
            let marker = match self.storage_trouble {
                Some(_) => storage_trouble::DISK_FULL_MARKER.to_string(),
                None => format!("\n[apiary: output truncated at {cap} bytes; the rest was dropped]\n"),
            };
            kept.extend_from_slice(marker.as_bytes());
            task.output_truncated = true;
        }
        if !kept.is_empty() {
            let write_offset = task.output_len;
            task.output_len += kept.len() as u64;
            out.output_writes.push(OutputWrite { run_id, offset: write_offset, data: kept });
            self.feed_followers(task_id, out);
        }
        end
    }

    pub(super) fn follow_output(
        &mut self,
        conn: ConnId,
        request_id: u64,
        raw_id: u64,
        offset: u64,
        out: &mut Output,
    ) -> Option<Reply> {
        let task = match self.find_task(raw_id) {
            Ok(task) => task,
            Err(missing) => return Some(self.missing(missing)),
        };
        let task_id = task.id;
        let offset = offset.min(task.output_len);
        if task.is_archived() {
            // It ended before the last snapshot: all of its output, and done.
            let mut follower = Follower { conn, request_id, offset };
            read_for_follower(&mut follower, task.output_run(), task.output_len, true, out);
            return None;
        }
        let follower = Follower { conn, request_id, offset };
        self.tasks.get_mut(&task_id).expect("found above").listeners_mut().followers.push(follower);
        self.feed_followers(task_id, out);
        let timer = Timer::FollowHeartbeat { task_id, follower: (conn, request_id) };
        self.timers.push(self.now_ms + FOLLOW_HEARTBEAT_MS, timer);
        None
    }

    pub(super) fn follow_heartbeat_due(
        &mut self,
        task_id: RequestId,
        (conn, request_id): (ConnId, u64),
        out: &mut Output,
    ) {
        let task = &self.tasks[&task_id];
        let Some(follower) = task.followers().iter().find(|f| (f.conn, f.request_id) == (conn, request_id)) else {
            return;
        };
        out.output_reads.push(OutputRead {
            conn,
            request_id,
            run_id: task.output_run(),
            offset: follower.offset,
            max_bytes: 0,
            output_len: task.output_len,
            task_ended: false,
            ends_request: false,
        });
        let timer = Timer::FollowHeartbeat { task_id, follower: (conn, request_id) };
        self.timers.push(self.now_ms + FOLLOW_HEARTBEAT_MS, timer);
    }

    /// Sends followers the output they have not seen, in chunks; once the task
    /// ended, the last chunk says so and the followers are done.
    pub(super) fn feed_followers(&mut self, task_id: RequestId, out: &mut Output) {
        let task = self.tasks.get_mut(&task_id).expect("known task");
        let ended = task.state.is_terminal();
        let source = task.output_run();
        let output_len = task.output_len;
        let Some(listeners) = task.listeners.as_mut() else { return };
        for follower in &mut listeners.followers {
            read_for_follower(follower, source, output_len, ended, out);
        }
        if ended {
            listeners.followers.clear();
            task.forget_listeners_if_none();
        }
    }

    /// A pending task's current slice expired (its timer was taken out
    /// whenever the task left its queue or moved to another slice).
    pub(super) fn slice_expired(&mut self, task_id: RequestId, out: &mut Output) {
        let Some(task) = self.tasks.get(&task_id) else { return };
        if task.state != TaskState::Pending || slice_expiry_ms(task) > self.now_ms {
            return;
        }
        let slice_index = task.slice_index;
        let slices = task.slices.clone();
        if let Some(next_slice) = self.first_servable_slice(&slices, slice_index as usize + 1) {
            let at_ms = self.now_ms;
            self.emit(Event::SliceAdvanced { task_id: task_id.as_u64(), slice_index: next_slice, at_ms }, out);
            self.hand_to_parked_bot(task_id, out);
        } else {
            let reason = format!("slice {slice_index} expired and no later slice could be served");
            self.finish(task_id, None, Ending::new(TaskState::Expired, reason), out);
        }
    }
}

/// Sends a follower the output of `source` it has not seen, in chunks; once
/// the task ended, the last chunk says so.
fn read_for_follower(follower: &mut Follower, source: Option<RunId>, output_len: u64, ended: bool, out: &mut Output) {
    loop {
        let remaining = output_len - follower.offset;
        let chunk = remaining.min(MAX_OUTPUT_CHUNK_BYTES as u64);
        let last = chunk == remaining;
        if chunk == 0 && !ended {
            break;
        }
        out.output_reads.push(OutputRead {
            conn: follower.conn,
            request_id: follower.request_id,
            run_id: source,
            offset: follower.offset,
            max_bytes: chunk as usize,
            output_len,
            task_ended: ended && last,
            ends_request: ended && last,
        });
        follower.offset += chunk;
        if last {
            break;
        }
    }
}

/// The request id of a request or run id.
pub(super) fn request_id_of(raw_id: u64) -> RequestId {
    RequestId::from_u64(raw_id & !0xf).expect("masked id ends in 0")
}

pub(super) fn ending_of(outcome: RunOutcome) -> Ending {
    let mut ending = Ending::new(TaskState::Completed, "");
    ending.exit_code = outcome.exit_code;
    ending.duration_ms = Some(outcome.duration_ms);
    ending.setup_ms = Some(outcome.setup_ms);
    ending.teardown_ms = Some(outcome.teardown_ms);
    if let Some(cas) = outcome.cas {
        ending.cas_output_root = cas.output_root;
        ending.cas_stats = Some(cas.stats).filter(|stats| *stats != CasStats::default());
    }
    match outcome.end {
        RunEnd::Exited => {}
        RunEnd::HardTimeout => {
            (ending.state, ending.reason, ending.timeout) =
                (TaskState::TimedOut, "hard timeout".into(), Some(TimeoutKind::Hard));
        }
        RunEnd::IoTimeout => {
            (ending.state, ending.reason, ending.timeout) =
                (TaskState::TimedOut, "io timeout".into(), Some(TimeoutKind::Io));
        }
        RunEnd::Killed => (ending.state, ending.reason) = (TaskState::Killed, "killed on request".into()),
        RunEnd::ClientError(reason) => (ending.state, ending.reason) = (TaskState::ClientError, cut_reason(reason)),
        RunEnd::InternalError(reason) => {
            (ending.state, ending.reason, ending.internal_failure) = (TaskState::BotDied, cut_reason(reason), true);
        }
    }
    ending
}

/// A bot's reason for how a run ended, cut to `MAX_REASON_BYTES` (on a
/// character boundary, marked): it is shown with the task, whose result must fit a reply.
fn cut_reason(mut reason: String) -> String {
    const MARKER: &str = " [cut]";
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - MARKER.len();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str(MARKER);
    }
    reason
}

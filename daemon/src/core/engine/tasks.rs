//! Tasks: creation, slices and dedup, waits, output, updates from bots, cancel, queries.

use super::*;

impl Core {
    /// The task of a request id, or of a run id that exists.
    pub(super) fn find_task(&self, raw_id: u64) -> Option<&Task> {
        let task = self.tasks.get(&request_id_of(raw_id))?;
        let try_number = (raw_id & 0xf) as u8;
        let run_exists = try_number == 0 || task.run.as_ref().is_some_and(|run| run.run_id.try_number() >= try_number);
        run_exists.then_some(task)
    }

    pub(super) fn new_task(&mut self, request: NewTaskRequest, out: &mut Output) -> Reply {
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
    pub(super) fn first_servable_slice(&mut self, slices: &[TaskSlice], from: usize) -> Option<u32> {
        let servable = |core: &mut Core, slice: &TaskSlice| {
            let queue = core.queues.queue_for(queues::canonical_task_dimensions(&slice.properties.dimensions));
            slice.wait_for_capacity || core.queues.capacity(queue).0 > 0
        };
        (from..slices.len()).find(|&index| servable(self, &slices[index])).map(|index| index as u32)
    }

    /// A successful earlier run with the same properties, recent enough to reuse.
    pub(super) fn dedup_source(&self, task_id: RequestId) -> Option<RunId> {
        let properties = self.tasks[&task_id].properties();
        if !properties.idempotent {
            return None;
        }
        let &(run_id, ended_ms) = self.successes.get(properties)?;
        (ended_ms.saturating_add(self.config.dedup_window_ms) >= self.now_ms).then_some(run_id)
    }

    /// A task's result with, while it is pending, why it still waits.
    pub(super) fn describe(&self, task: &Task) -> TaskResult {
        let mut result = task.result();
        if let Some((queue, key)) = task.queued {
            let (matching_bots, busy_bots) = self.queues.capacity(queue);
            let queue_position = self.queues.position(queue, key);
            result.pending = Some(PendingInfo { matching_bots, busy_bots, queue_position });
        }
        result
    }

    pub(super) fn list_tasks(&self, query: TaskQuery) -> Reply {
        if query.limit > MAX_TASK_PAGE {
            return error(
                ErrorCode::InvalidRequest,
                format!("limit: {} is over the limit of {MAX_TASK_PAGE}", query.limit),
            );
        }
        let limit = if query.limit == 0 { DEFAULT_TASK_PAGE } else { query.limit } as usize;
        let end = query.cursor.map_or(self.task_order.len(), |cursor| {
            self.task_order.partition_point(|&task_id| task_id < request_id_of(cursor))
        });
        let wanted = |task: &&Task| {
            query.state.is_none_or(|state| task.state == state)
                && query.tags.iter().all(|tag| task.request.tags.contains(tag))
        };
        let mut matching = self.task_order[..end].iter().rev().map(|task_id| &self.tasks[task_id]).filter(wanted);
        let tasks: Vec<TaskResult> = matching.by_ref().take(limit).map(|task| self.describe(task)).collect();
        let more = matching.next().is_some();
        let next_cursor = tasks.last().filter(|_| more).map(|task| task.task_id);
        Reply::Tasks { tasks, next_cursor }
    }

    pub(super) fn cancel(&mut self, raw_id: u64, kill_running: bool, out: &mut Output) -> Reply {
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
    pub(super) fn next_task_id(&self) -> RequestId {
        let from_clock = RequestId::first_of_millisecond(self.now_ms);
        match self.last_task_id {
            Some(last) if last >= from_clock => last.next(),
            _ => from_clock,
        }
    }

    pub(super) fn wait_task(&mut self, conn: ConnId, request_id: u64, raw_id: u64, timeout_ms: u64) -> Option<Reply> {
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

    pub(super) fn get_output(
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

    pub(super) fn task_update(&mut self, conn: ConnId, update: TaskUpdate, out: &mut Output) -> Reply {
        let Some(run_id) = RunId::from_u64(update.run_id) else {
            return error(ErrorCode::InvalidRequest, "run_id: a run id ends in a non-zero hex digit");
        };
        let Some(task) = self.tasks.get(&run_id.request()) else {
            return error(ErrorCode::StaleRun, format!("run {run_id} is unknown"));
        };
        let is_this_run =
            |run: &Run| run.run_id == run_id && run.bot_id == update.bot_id && run.session_id == update.session_id;
        if !task.current_run().is_some_and(is_this_run) {
            // The bot's retried final report, the one that ended the run, gets
            // the same answer again; any other report on an ended run is stale.
            let ended_by_this_report = update.outcome.as_ref().is_some_and(|outcome| {
                let ending = ending_of(outcome.clone());
                (ending.state, ending.exit_code) == (task.state, task.exit_code)
            });
            if ended_by_this_report && task.run.as_ref().is_some_and(is_this_run) {
                return Reply::UpdateAck { output_len: task.output_len, must_stop: false };
            }
            let state = task.state.name();
            return error(ErrorCode::StaleRun, format!("run {run_id} is no longer current (task is {state})"));
        }
        let must_stop = task.kill_requested;
        let task = self.tasks.get_mut(&run_id.request()).expect("found above");
        task.run.as_mut().expect("a running task has a run").last_heard_ms = self.now_ms;
        self.revive_if_dead(&update.bot_id, out);
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
    pub(super) fn accept_output(&mut self, task_id: RequestId, offset: u64, data: Vec<u8>, out: &mut Output) -> u64 {
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

    pub(super) fn slice_expired(&mut self, task_id: RequestId, slice_index: u32, out: &mut Output) {
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
}

/// The request id of a request or run id.
pub(super) fn request_id_of(raw_id: u64) -> RequestId {
    RequestId::from_u64(raw_id & !0xf).expect("masked id ends in 0")
}

pub(super) fn ending_of(outcome: RunOutcome) -> Ending {
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

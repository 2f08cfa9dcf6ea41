//! `apply`: the only change to durable state, live and in recovery. Bot
//! events and capacity counts follow from the events, so a replay rebuilds them.

use std::num::NonZeroU64;

use super::*;
use crate::core::model::RequestTextRef;

impl Core {
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
            Event::TaskRetried { run_id, reason, output_len, at_ms } => {
                self.apply_task_retried(*run_id, reason, *output_len, *at_ms);
            }
            Event::BotConnected(connected) => self.apply_bot_connected(connected),
            Event::BotChanged { bot_id, change, at_ms } => self.apply_bot_changed(bot_id, change, *at_ms, None),
            Event::BotChangedBy { bot_id, change, at_ms, by } => {
                self.apply_bot_changed(bot_id, change, *at_ms, Some(by))
            }
            Event::RetentionApplied { cutoff_ms } => self.apply_retention(*cutoff_ms),
            Event::TaskLinked(linked) => self.apply_task_linked(linked),
            Event::TaskOutputs(outputs) => {
                let task_id = RequestId::from_u64(outputs.task_id).expect("a request id");
                assert!(!self.tasks[&task_id].state.is_terminal(), "outputs come before a task's end");
                self.outputs_to_finish.insert(task_id, outputs.clone());
            }
        }
    }

    fn apply_task_created(&mut self, created: &TaskCreated) {
        let task_id = RequestId::from_u64(created.task_id).expect("a request id");
        assert!(self.last_task_id < Some(task_id), "task ids must grow");
        self.last_task_id = Some(task_id);
        let slices = self.properties.intern_slices(&created.request.task_slices);
        let mut task = Task::new(task_id, &created.request, created.created_ms, slices);
        task.slice_index = created.slice_index;
        self.tasks.insert_with_text(task, RequestTextRef::of_request(&created.request));
        self.enqueue(task_id);
    }

    fn apply_task_linked(&mut self, linked: &TaskLinked) {
        let task_id = RequestId::from_u64(linked.task_id).expect("a request id");
        assert!(!self.tasks[&task_id].state.is_terminal(), "a task is linked as it is created");
        if !linked.request_uuid.is_empty() {
            let key = (linked.requester.clone(), linked.request_uuid.clone());
            self.lineage.record_uuid(key, task_id, linked.created_ms);
        }
        if let Some(parent) = linked.parent_task_id {
            self.lineage.link(task_id, RequestId::from_u64(parent).expect("a request id"));
        }
    }

    fn apply_task_assigned(&mut self, assigned: &TaskAssigned) {
        let run_id = RunId::from_u64(assigned.run_id).expect("a run id");
        self.dequeue(run_id.request());
        let task = self.tasks.get_mut(&run_id.request()).expect("assigned task is known");
        assert_eq!(task.state, TaskState::Pending, "only a pending task is assigned");
        task.state = TaskState::Running;
        task.kill_requested = false;
        // A run's output is its own: a retry starts from nothing.
        (task.output_len, task.output_truncated) = (0, false);
        task.try_number = run_id.try_number();
        // Time 0 is no real start: a clock that far back leaves the field unset.
        task.started_ms = task.started_ms.or(NonZeroU64::new(assigned.at_ms));
        let (bot_id, session_id, last_heard_ms) = (assigned.bot_id.clone(), assigned.session_id, assigned.at_ms);
        let ping_due_ms = assigned.at_ms + u64::from(task.bot_ping_tolerance_secs) * 1000;
        task.run = Some(Box::new(Run { run_id, bot_id, session_id, last_heard_ms, ping_due_ms, output_received: 0 }));
        self.timers.push(ping_due_ms, Timer::RunPing { run_id });
        self.change_bot(&assigned.bot_id, |bot| {
            assert!(bot.current_run.is_none(), "bot {} already runs {:?}", bot.bot_id, bot.current_run);
            bot.current_run = Some(run_id);
        });
        let kind = BotEventKind::TaskAssigned;
        self.record_bot_event(&assigned.bot_id, assigned.at_ms, kind, Some(run_id), String::new());
    }

    fn apply_task_finished(&mut self, finished: &TaskFinished) {
        let task_id = RequestId::from_u64(finished.task_id).expect("a request id");
        self.dequeue(task_id);
        self.lineage.ended(task_id);
        let task = self.tasks.get_mut(&task_id).expect("finished task is known");
        assert!(!task.state.is_terminal(), "task {task_id} finished twice");
        let state = finished.state.state();
        task.state = state;
        // Only the bot running the task ever needed them.
        task.secret_bytes = None;
        task.output_len = finished.output_len;
        task.output_truncated = finished.output_truncated;
        let command_ended_itself = matches!(state, TaskState::Completed | TaskState::TimedOut | TaskState::ClientError);
        let outputs = self.outputs_to_finish.remove(&task_id);
        task.outcome = Some(Box::new(Outcome {
            completed_ms: finished.at_ms,
            abandoned_ms: (!command_ended_itself).then_some(finished.at_ms),
            exit_code: finished.exit_code,
            duration_ms: finished.duration_ms,
            setup_ms: finished.setup_ms,
            teardown_ms: finished.teardown_ms,
            timeout: finished.timeout,
            internal_failure: finished.internal_failure,
            failure_reason: finished.reason.clone(),
            deduped_from: finished.deduped_from.and_then(RunId::from_u64),
            cas_output_root: outputs.as_ref().and_then(|outputs| outputs.output_root),
            cas_stats: outputs.map(|outputs| outputs.stats).filter(|stats| *stats != CasStats::default()),
        }));
        let Some(run_id) = finished.run_id.and_then(RunId::from_u64) else { return };
        let run = task.run.as_ref().expect("a finished run exists");
        assert_eq!(run.run_id, run_id, "only the current run finishes");
        let (bot_id, ping_due_ms) = (run.bot_id.clone(), run.ping_due_ms);
        let reusable = task.properties().idempotent && !task.has_secret_bytes;
        if state == TaskState::Completed && finished.exit_code == Some(0) && reusable {
            self.successes.insert(Arc::clone(task.properties()), (run_id, finished.at_ms));
        }
        self.timers.cancel(ping_due_ms, Timer::RunPing { run_id });
        self.release_bot(&bot_id, run_id);
        let kind = match state {
            TaskState::Completed | TaskState::TimedOut => BotEventKind::TaskCompleted,
            TaskState::Killed => BotEventKind::TaskKilled,
            _ => BotEventKind::TaskError,
        };
        let reason = finished.reason.trim_end();
        let message = if reason.is_empty() { state.name().to_string() } else { format!("{} {reason}", state.name()) };
        self.record_bot_event(&bot_id, finished.at_ms, kind, Some(run_id), message);
    }

    /// The run died but the task goes on: back to its queue, for another bot.
    fn apply_task_retried(&mut self, run_id: u64, reason: &str, output_len: u64, at_ms: u64) {
        let run_id = RunId::from_u64(run_id).expect("a run id");
        let task = self.tasks.get_mut(&run_id.request()).expect("retried task is known");
        let run = task.current_run().expect("only a running run is retried");
        assert_eq!(run.run_id, run_id, "only the current run is retried");
        let (bot_id, ping_due_ms) = (run.bot_id.clone(), run.ping_due_ms);
        self.timers.cancel(ping_due_ms, Timer::RunPing { run_id });
        task.state = TaskState::Pending;
        task.output_len = output_len;
        // The event does not say whether the dead run's output was cut: a
        // replay could not know, so the live core does not show it either.
        task.output_truncated = false;
        // Outputs a dead run recorded (a write torn before its end) are not the next run's.
        self.outputs_to_finish.remove(&run_id.request());
        self.enqueue(run_id.request());
        self.release_bot(&bot_id, run_id);
        let message = format!("BOT_DIED {reason}; the task is retried");
        self.record_bot_event(&bot_id, at_ms, BotEventKind::TaskError, Some(run_id), message);
    }

    fn release_bot(&mut self, bot_id: &str, run_id: RunId) {
        self.change_bot(bot_id, |bot| {
            assert_eq!(bot.current_run, Some(run_id), "the bot holds the run it ends");
            bot.current_run = None;
        });
    }

    fn apply_bot_connected(&mut self, connected: &BotConnected) {
        let class = self.queues.class_for(queues::canonical_bot_dimensions(&connected.dimensions));
        let kind = match self.bots.get(&connected.bot_id) {
            None => {
                let bot = Bot::new(&connected.bot_id, class, connected.at_ms);
                let (live, busy) = bot.capacity_share();
                self.queues.count_bot(class, live, busy);
                self.bots.insert(connected.bot_id.clone(), bot);
                BotEventKind::Connected
            }
            Some(bot) if bot.session_id != connected.session_id || bot.dead || bot.shut_down => BotEventKind::Connected,
            Some(_) => BotEventKind::DimensionsChanged,
        };
        self.change_bot(&connected.bot_id, |bot| {
            assert!(bot.parked.is_none(), "a bot is unparked before it changes");
            // A terminate request outlives the session: a bot restarted before it
            // heard it still exits, at its first poll, as Swarming's does.
            bot.session_id = connected.session_id;
            let packed = PackedDimensions::new(&connected.dimensions);
            if *bot.dimensions != packed {
                bot.dimensions = Arc::new(packed);
            }
            bot.class = class;
            bot.software = connected.software.clone();
            bot.last_seen_ms = connected.at_ms;
            bot.dead = false;
            bot.shut_down = false;
        });
        let message = format!("session {:016x}, {}", connected.session_id, connected.software);
        self.record_bot_event(&connected.bot_id, connected.at_ms, kind, None, message);
    }

    /// `by`: the principal that asked for the change, named in the bot's event.
    fn apply_bot_changed(&mut self, bot_id: &str, change: &BotChange, at_ms: u64, by: Option<&str>) {
        if *change == BotChange::Deleted {
            self.forget_bot(bot_id);
            return;
        }
        let asked_by = by.map_or(String::new(), |by| format!("by {by}"));
        let (kind, message) = match change {
            BotChange::Missing => (BotEventKind::Missing, String::new()),
            BotChange::Quarantined { reason, by_server } => {
                let by = match by {
                    Some(_) => &asked_by,
                    None if *by_server => "by request",
                    None => "by its health check",
                };
                (BotEventKind::Quarantined, format!("{by}: {reason}"))
            }
            BotChange::Unquarantined => (BotEventKind::Unquarantined, asked_by),
            BotChange::TerminateRequested => (BotEventKind::TerminateRequested, asked_by),
            BotChange::TerminateRequestedBecause { reason } => {
                let message = if asked_by.is_empty() { reason.clone() } else { format!("{asked_by}: {reason}") };
                (BotEventKind::TerminateRequested, message)
            }
            BotChange::ShutDown => (BotEventKind::ShutDown, String::new()),
            BotChange::Deleted => unreachable!("handled above"),
        };
        self.change_bot(bot_id, |bot| match change {
            BotChange::Missing => bot.dead = true,
            BotChange::Quarantined { reason, by_server } => {
                bot.quarantine = Some(Quarantine { reason: reason.clone(), by_server: *by_server });
            }
            BotChange::Unquarantined => bot.quarantine = None,
            BotChange::TerminateRequested | BotChange::TerminateRequestedBecause { .. } => {
                bot.terminate_requested = true;
            }
            BotChange::ShutDown => (bot.shut_down, bot.terminate_requested) = (true, false),
            BotChange::Deleted => unreachable!("handled above"),
        });
        self.record_bot_event(bot_id, at_ms, kind, None, message);
    }

    /// Removes a bot that holds no run and waits for no work, with its share
    /// of its class's capacity counts; its events go with it. A timer still
    /// armed for it finds no bot and does nothing.
    fn forget_bot(&mut self, bot_id: &str) {
        let Some(bot) = self.bots.remove(bot_id) else { return };
        assert!(bot.current_run.is_none() && bot.parked.is_none(), "bot {bot_id} is deleted only when idle");
        let (live, busy) = bot.capacity_share();
        self.queues.count_bot(bot.class, -live, -busy);
        if let Some(conn) = bot.connection {
            self.bot_by_connection.remove(&conn);
        }
    }

    /// Changes a bot and keeps its class's capacity counts true.
    fn change_bot(&mut self, bot_id: &str, change: impl FnOnce(&mut Bot)) {
        let bot = self.bots.get_mut(bot_id).expect("a known bot");
        let (live, busy) = bot.capacity_share();
        self.queues.count_bot(bot.class, -live, -busy);
        change(bot);
        let (live, busy) = bot.capacity_share();
        self.queues.count_bot(bot.class, live, busy);
    }

    fn record_bot_event(
        &mut self,
        bot_id: &str,
        at_ms: u64,
        kind: BotEventKind,
        run_id: Option<RunId>,
        message: String,
    ) {
        let bot = self.bots.get_mut(bot_id).expect("a known bot");
        bot.record_event(at_ms, kind, run_id, message);
        bot.trim_events(self.config.bot_events_per_bot, self.config.bot_event_max_age_ms, at_ms);
    }

    pub(super) fn enqueue(&mut self, task_id: RequestId) {
        let position = self.tasks.position(&task_id).expect("known task");
        let task = self.tasks.get_mut(&task_id).expect("known task");
        let queue = self.queues.queue_for_task(task.dimensions());
        self.queues.push(queue, task.queue_key(position));
        task.queued = Some(queue);
        self.timers.push(slice_expiry_ms(task), Timer::SliceExpiry { task_id });
    }

    /// Where a pending task waits: its queue and its key there.
    pub(super) fn queue_entry(&self, task_id: RequestId) -> Option<(QueueId, QueueKey)> {
        let position = self.tasks.position(&task_id)?;
        let task = self.tasks.at_position(position);
        task.queued.map(|queue| (queue, task.queue_key(position)))
    }

    pub(super) fn dequeue(&mut self, task_id: RequestId) {
        let entry = self.queue_entry(task_id);
        let task = self.tasks.get_mut(&task_id).expect("known task");
        if let Some((queue, key)) = entry {
            task.queued = None;
            let removed = self.queues.remove(queue, key);
            assert!(removed, "a queued task is in its queue");
            self.timers.cancel(slice_expiry_ms(task), Timer::SliceExpiry { task_id });
        }
    }
}

/// When a pending task's current slice expires.
pub(super) fn slice_expiry_ms(task: &Task) -> u64 {
    task.slice_started_ms + u64::from(task.slices[task.slice_index as usize].expiration_secs) * 1000
}

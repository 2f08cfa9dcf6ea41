//! Retention (docs/state.md, section 2): finished tasks are kept for
//! `task_retention_ms` from their creation, then let go. The decision is an
//! event, so a replay and the snapshot thread let the same tasks go.

use super::tasks::request_id_of;
use super::*;

impl Core {
    /// The retention timer: if finished tasks (or dedup entries) are past
    /// retention, an event lets them go. Nothing is written when there is
    /// nothing to let go, so an idle daemon's log stays still.
    pub(super) fn retention_pass(&mut self, out: &mut Output) {
        // A short retention (a test's) is looked at more often than once a minute.
        let pass_ms = (self.config.task_retention_ms / 10).clamp(1_000, RETENTION_PASS_MS);
        self.timers.push(self.now_ms + pass_ms, Timer::RetentionPass);
        self.properties.forget_unused();
        let cutoff_ms = self.now_ms.saturating_sub(self.config.task_retention_ms);
        if cutoff_ms <= self.retained_from_ms {
            return;
        }
        let before = RequestId::first_of_millisecond(cutoff_ms);
        let finished_past = self.tasks.oldest_first_below(before).any(|task| task.state.is_terminal())
            || self.history.entries().any(|run| run.max_id < before.as_u64());
        let success_past = self.successes.values().any(|(run_id, _)| run_id.request() < before);
        if finished_past || success_past {
            self.emit(Event::RetentionApplied { cutoff_ms }, out);
        }
    }

    pub(super) fn apply_retention(&mut self, cutoff_ms: u64) {
        self.retained_from_ms = self.retained_from_ms.max(cutoff_ms);
        let before = RequestId::first_of_millisecond(cutoff_ms);
        let past: Vec<RequestId> =
            self.tasks.oldest_first_below(before).filter(|task| task.state.is_terminal()).map(|task| task.id).collect();
        for task_id in past {
            let task = self.tasks.remove(&task_id).expect("listed above");
            debug_assert!(task.listeners.is_none(), "an ended task holds nothing");
        }
        self.successes.retain(|_, (run_id, _)| run_id.request() >= before);
        self.lineage.forget_before(before);
        self.history.expire(before);
    }

    /// Output of runs below this id may be removed: runs let go by retention,
    /// never one still running (a short retention can pass a long run).
    pub fn output_retention_cutoff(&self) -> u64 {
        // Below the first task id of the cutoff's millisecond lie exactly the
        // runs of the tasks created before it.
        let cutoff = RequestId::first_of_millisecond(self.retained_from_ms).as_u64();
        let running = self.bots.values().filter_map(|bot| bot.current_run).map(RunId::as_u64);
        running.fold(cutoff, u64::min)
    }

    /// The reply for an id the core does not hold: let go by retention, or
    /// never known.
    pub(super) fn not_found(&self, raw_id: u64) -> Reply {
        let shown = apiary_protocol::ids::format_task_id(raw_id);
        if request_id_of(raw_id).created_unix_ms() < self.retained_from_ms {
            let retention = humantime::format_duration(std::time::Duration::from_millis(self.config.task_retention_ms));
            let message =
                format!("task {shown} is older than the task retention of {retention}: its record and output are gone");
            return error(ErrorCode::NotFound, message);
        }
        error(ErrorCode::NotFound, format!("no task {shown}"))
    }
}

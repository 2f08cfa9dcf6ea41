//! A disk that cannot take more (docs/state.md, section 7). The shell says when
//! the log or the output store cannot grow; meanwhile the core keeps what it
//! writes small and bounded: new tasks are refused, no new run starts, and
//! output is dropped behind a marker. Running tasks still report and finish,
//! and reads go on. Not durable: a restarted daemon learns it again.

use super::*;

impl Core {
    /// Enters (`Some(reason)`) or leaves (`None`) the degraded mode. Every held
    /// poll is answered, so each bot polls again under the new standing.
    pub fn set_storage_trouble(&mut self, reason: Option<String>, out: &mut Output) {
        if self.storage_trouble == reason {
            return;
        }
        self.storage_trouble = reason;
        let parked: Vec<String> =
            self.bots.values().filter(|bot| bot.parked.is_some()).map(|bot| bot.bot_id.clone()).collect();
        for bot_id in parked {
            self.unpark(&bot_id, out);
        }
    }

    /// Why new work is refused, if it is.
    pub fn storage_trouble(&self) -> Option<&str> {
        self.storage_trouble.as_deref()
    }

    pub(super) fn refuse_for_storage(&self) -> Option<Reply> {
        let reason = self.storage_trouble.as_ref()?;
        Some(error(ErrorCode::Unavailable, format!("the daemon takes no new tasks for now: {reason}")))
    }

    /// The output store could not keep a run's output past `stored_len` bytes:
    /// the run's output ends there, as if it had reached the output cap.
    pub fn output_not_stored(&mut self, run_id: RunId, stored_len: u64) {
        let Some(task) = self.tasks.get_mut(&run_id.request()) else { return };
        if task.output_run() != Some(run_id) {
            return;
        }
        task.output_len = task.output_len.min(stored_len);
        task.output_truncated = true;
    }
}

/// What ends a run's output when the disk is full.
pub const DISK_FULL_MARKER: &str = "\n[apiary: output dropped from here: the daemon's disk is full]\n";

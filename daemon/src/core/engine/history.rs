//! Ended tasks in history runs (docs/state.md, section 3): how they get there,
//! how the heap lets go of them, and how lookups and listings reach them.
//!
//! The snapshot job's core hands its ended tasks to a new run
//! (`take_ended_for_history`) and lists the run (`add_history_run`) before
//! its snapshot is written. The live core is told of the run once it is
//! durable and then drops its own copies of those tasks, a bounded number per
//! call (`forget_archived`), so a big run never stalls the event loop.

use std::ops::{ControlFlow, Deref};

use std::sync::Arc;

use apiary_storage::HistoryRun;

use super::snapshot::{history_record, task_from_history};
use super::*;
use crate::core::history::RunEntry;
use crate::core::snapshot::TaskRecord;

/// A task found by id: held in the heap, or read back from a history run.
pub(super) enum Found<'a> {
    Held(&'a Task),
    Archived(Box<Task>),
}

impl Deref for Found<'_> {
    type Target = Task;

    fn deref(&self) -> &Task {
        match self {
            Found::Held(task) => task,
            Found::Archived(task) => task,
        }
    }
}

impl Found<'_> {
    pub(super) fn is_archived(&self) -> bool {
        matches!(self, Found::Archived(_))
    }
}

/// Why a task was not found.
pub(super) enum Missing {
    /// No task has this (request or run) id, or retention let it go.
    Unknown(u64),
    /// The history run that holds it is damaged.
    Damaged(String),
}

impl Core {
    /// The task with this request id, from the heap or a history run.
    pub(super) fn task_by_id(&self, task_id: RequestId) -> Result<Found<'_>, Missing> {
        if let Some(task) = self.tasks.get(&task_id) {
            return Ok(Found::Held(task));
        }
        if task_id.created_unix_ms() < self.retained_from_ms {
            return Err(Missing::Unknown(task_id.as_u64()));
        }
        match self.history.get(task_id) {
            Ok(Some(record)) => {
                task_from_history(record).map(|task| Found::Archived(Box::new(task))).map_err(Missing::Damaged)
            }
            Ok(None) => Err(Missing::Unknown(task_id.as_u64())),
            Err(damage) => Err(Missing::Damaged(damage)),
        }
    }

    /// The reply for a task not found.
    pub(super) fn missing(&self, missing: Missing) -> Reply {
        match missing {
            Missing::Unknown(raw_id) => self.not_found(raw_id),
            Missing::Damaged(damage) => error(ErrorCode::Internal, damage),
        }
    }

    /// The snapshot job: removes every ended task, returning their records in
    /// id order for a new history run.
    pub fn take_ended_for_history(&mut self) -> Vec<TaskRecord> {
        let ended: Vec<RequestId> =
            self.tasks.values().filter(|task| task.state.is_terminal()).map(|task| task.id).collect();
        let records = ended
            .iter()
            .map(|task_id| history_record(&self.tasks[task_id], self.text_of(&self.tasks[task_id]).into_owned()));
        let records: Vec<TaskRecord> = records.collect();
        for task_id in &ended {
            self.tasks.remove(task_id);
        }
        records
    }

    /// Lists a durable history run as part of the core's state. The live
    /// daemon passes the run's reader and then lets go of the tasks it holds
    /// through `forget_archived`.
    pub fn add_history_run(&mut self, entry: RunEntry, reader: Option<Arc<HistoryRun>>) {
        let live = reader.is_some();
        self.history.add(entry, reader);
        if live {
            self.archiving.push_back((entry.number, 0));
        }
    }

    /// After a restart: the reader of a run the snapshot lists.
    pub fn attach_history_run(&mut self, number: u64, reader: Arc<HistoryRun>) {
        self.history.attach(number, reader);
    }

    /// The history runs the state covers, oldest first.
    pub fn history_runs(&self) -> Vec<RunEntry> {
        self.history.entries().copied().collect()
    }

    /// Drops up to `budget` heap copies of tasks that a history run now holds.
    /// Returns whether more can be dropped at once. A run whose index is still
    /// being checked (on another thread) is left for a later call, so the
    /// event loop never waits for the check.
    pub fn forget_archived(&mut self, budget: usize) -> bool {
        let mut left = budget;
        while let Some(&(number, from)) = self.archiving.front() {
            let index = match self.history.reader(number).map(HistoryRun::index_if_checked) {
                Some(None) => return false,
                Some(Some(Ok(index))) => index,
                // Expired meanwhile, or damaged: the heap copies stay until retention.
                None | Some(Some(Err(_))) => {
                    self.archiving.pop_front();
                    continue;
                }
            };
            let to = index.len().min(from + left);
            for number in from..to {
                let task_id = RequestId::from_u64(index.id_at(number)).expect("runs hold request ids");
                if self.tasks.get(&task_id).is_some_and(|task| task.state.is_terminal()) {
                    self.tasks.remove(&task_id);
                }
            }
            left -= to - from;
            if to == index.len() {
                self.archiving.pop_front();
            } else {
                self.archiving.front_mut().expect("looked at above").1 = to;
                return true;
            }
        }
        false
    }

    /// Up to `limit` tasks that are `readable`, whose results take at most `max_bytes` (`wire_size`),
    /// but at least one; and whether more may follow.
    pub(super) fn list_merged(
        &self,
        query: &TaskQuery,
        limit: usize,
        max_bytes: usize,
        readable: &dyn Fn(&Task) -> bool,
    ) -> Result<(Vec<TaskResult>, bool), String> {
        let mut tasks = Vec::new();
        let mut bytes = 0;
        let more = self.walk_merged(query, readable, &mut |task| {
            if tasks.len() == limit {
                return ControlFlow::Break(());
            }
            // Why a pending task waits (its queue position is a count) comes with `tasks show`.
            let result = self.result(task);
            bytes += wire_size::task_result_bytes(&result);
            if bytes > max_bytes && !tasks.is_empty() {
                // The cursor is the last task kept: the next page starts with this one.
                return ControlFlow::Break(());
            }
            tasks.push(result);
            ControlFlow::Continue(())
        })?;
        Ok((tasks, more))
    }

    /// How many `readable` tasks match `query`, counting at most `cap`; and
    /// whether counting stopped there.
    pub(super) fn count_merged(
        &self,
        query: &TaskQuery,
        cap: u64,
        readable: &dyn Fn(&Task) -> bool,
    ) -> Result<(u64, bool), String> {
        let mut count = 0;
        let capped = self.walk_merged(query, readable, &mut |_| {
            if count == cap {
                return ControlFlow::Break(());
            }
            count += 1;
            ControlFlow::Continue(())
        })?;
        Ok((count, capped))
    }

    /// Visits the `readable` tasks that match `query` (state, tags, creation
    /// window, below its cursor), newest first, from the heap and the history
    /// runs merged, until `visit` breaks. Returns whether it broke: then more
    /// may follow, starting with the task it broke on.
    pub(super) fn walk_merged(
        &self,
        query: &TaskQuery,
        readable: &dyn Fn(&Task) -> bool,
        visit: &mut dyn FnMut(&Task) -> ControlFlow<()>,
    ) -> Result<bool, String> {
        // Past the last millisecond an id can name, a time means "no bound".
        let last_ms = u64::MAX >> 20;
        let until = query.created_until_unix_ms.filter(|&ms| ms <= last_ms).map(RequestId::first_of_millisecond);
        let before = match (query.cursor.map(tasks::request_id_of), until) {
            (Some(cursor), Some(until)) => Some(cursor.min(until)),
            (cursor, until) => cursor.or(until),
        };
        let since_ms = query.created_since_unix_ms.unwrap_or(0).min(last_ms);
        // The heap holds only retained tasks (a task that has not ended is kept
        // however old); the history runs may hold older ones until they go.
        let floor = RequestId::first_of_millisecond(since_ms);
        let retained_floor = RequestId::first_of_millisecond(since_ms.max(self.retained_from_ms));
        let matches = |task: &Task| {
            let deduped = task.outcome.as_ref().is_some_and(|outcome| outcome.deduped_from.is_some());
            let exit_code = task.outcome.as_ref().and_then(|outcome| outcome.exit_code);
            query.state.matches(task.state, exit_code, deduped) && readable(task)
        };
        let wanted = |task: &&Task| matches(task) && query.tags.iter().all(|tag| self.tasks.has_tag(task.id, tag));
        let held: Box<dyn Iterator<Item = &Task>> = match query.tags.first() {
            Some(tag) => Box::new(self.tasks.newest_first_tagged(tag, before)),
            None => Box::new(self.tasks.newest_first_before(before)),
        };
        let mut held = held.take_while(|task| task.id >= floor).filter(wanted).peekable();
        // Tasks that have not ended are all in the heap.
        let history_floor =
            if query.state.only_unended() { RequestId::first_of_millisecond(last_ms) } else { retained_floor };
        let mut archived = self.history.newest_first(before, history_floor, query.state.single_state(), &query.tags)?;
        loop {
            let held_id = held.peek().map(|task| task.id.as_u64());
            if let Some(archived_id) = archived.peek_id() {
                // A task the heap still holds is listed from there, or not wanted.
                let still_held = || self.tasks.get(&RequestId::from_u64(archived_id).expect("an id")).is_some();
                if held_id == Some(archived_id) || held_id.is_none_or(|held_id| archived_id > held_id) && still_held() {
                    archived.skip();
                    continue;
                }
            }
            let take_held = match (held_id, archived.peek_id()) {
                (None, None) => return Ok(false),
                (Some(held_id), Some(archived_id)) => held_id > archived_id,
                (held_id, _) => held_id.is_some(),
            };
            let flow = if take_held {
                visit(held.peek().expect("peeked"))
            } else {
                let record = archived.peek_record().expect("peeked")?;
                let task = task_from_history(record)?;
                if !matches(&task) {
                    archived.skip();
                    continue;
                }
                visit(&task)
            };
            if flow.is_break() {
                return Ok(true);
            }
            if take_held {
                held.next();
            } else {
                archived.skip();
            }
        }
    }
}

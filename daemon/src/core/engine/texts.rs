//! Request texts in snapshots' text files (docs/state.md, section 4): how a
//! task's text is read, written by the snapshot job, and let go of by the heap.

use std::borrow::Cow;
use std::sync::Arc;

use apiary_storage::HistoryRun;

use super::*;
use crate::core::model::RequestText;

impl Core {
    /// A task's name, tags and user, from the heap or a text file.
    pub(super) fn text_of<'a>(&self, task: &'a Task) -> Cow<'a, RequestText> {
        self.texts.of(task, self.tasks.texts())
    }

    /// A task's name alone (what a bot's assignment carries).
    pub(super) fn name_of<'a>(&self, task: &'a Task) -> Cow<'a, str> {
        self.texts.name_of(task, self.tasks.texts())
    }

    /// A task as clients see it.
    pub(super) fn result(&self, task: &Task) -> TaskResult {
        task.result(self.text_of(task).into_owned(), &self.config.cas_instance)
    }

    /// The snapshot job: the texts of the tasks that have not ended, in id
    /// order, for the snapshot's text file.
    pub fn texts_to_file(&self) -> impl Iterator<Item = (RequestId, Cow<'_, RequestText>)> {
        self.tasks.values().filter(|task| !task.state.is_terminal()).map(|task| (task.id, self.text_of(task)))
    }

    /// The text file of a newer snapshot: the core reads texts from it, and
    /// the live daemon then lets go of its heap copies (`forget_texts`).
    pub fn add_text_file(&mut self, file: Arc<HistoryRun>) {
        self.texts.add(file);
        self.texts_to_drop_from = self.tasks.values().next().map(|task| task.id);
    }

    /// The text file of the snapshot the core was restored from: its tasks
    /// hold no copies to let go of (a walk over a million of them would cost
    /// the event loop about 150 ms after every start).
    pub fn add_restored_text_file(&mut self, file: Arc<HistoryRun>) {
        self.texts.add(file);
    }

    /// The newest text file, for the shell to check in the background.
    pub fn newest_text_file(&self) -> Option<Arc<HistoryRun>> {
        self.texts.newest().cloned()
    }

    /// The files whose indexes letting go of heap copies reads: the newest
    /// text file and history run.
    pub fn newest_files(&self) -> Vec<Arc<HistoryRun>> {
        self.texts.newest().into_iter().chain(self.history.newest()).cloned().collect()
    }

    /// Drops up to `budget` heap copies of texts the newest text file holds.
    /// Returns whether more can be dropped at once; a file whose index is
    /// still being checked (on another thread) is left for a later call.
    pub fn forget_texts(&mut self, budget: usize) -> bool {
        let Some(from) = self.texts_to_drop_from else { return false };
        let Some(Some(Ok(index))) = self.texts.newest().map(|file| file.index_if_checked()) else {
            if self.texts.newest().is_some_and(|file| file.index_if_checked().is_some()) {
                // Damaged: the heap keeps its copies.
                self.texts_to_drop_from = None;
            }
            return false;
        };
        let max_id = self.texts.newest().expect("looked at").max_id();
        let batch: Vec<RequestId> = self
            .tasks
            .oldest_first_from(from)
            .map(|task| task.id)
            .take_while(|id| id.as_u64() <= max_id)
            .take(budget)
            .collect();
        for task_id in &batch {
            if index.find(task_id.as_u64()).is_some() {
                self.tasks.file_text(task_id);
            }
        }
        match batch.last() {
            Some(last) if batch.len() == budget => {
                self.texts_to_drop_from = Some(last.next());
                true
            }
            _ => {
                self.texts_to_drop_from = None;
                false
            }
        }
    }
}

//! Request texts off the heap (docs/state.md, section 4).
//!
//! A task's name, tags and user are read when it is shown, listed or handed
//! to a bot, never by scheduling. The snapshot job writes the texts of every
//! task that has not ended into `snapshots/<seq>.text` (the history run format:
//! records by id, each with its CRC), and the snapshot's own records leave
//! them out. Once such a file is durable the core reads those tasks' texts
//! from it and lets go of its heap copies; a task keeps its text in the heap
//! only from its creation until the next snapshot.
//!
//! The two newest files are kept: a task that ended just before a snapshot is
//! not in that snapshot's file (it goes to a history run instead), and until
//! the heap lets go of it its text is in the file before.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use apiary_protocol::RequestId;
use apiary_storage::HistoryRun;
use rkyv::rancor;

use super::model::{ArchivedRequestText, RequestText, Task, TaskText};
use super::text_arena::TextArena;

/// Text files kept open: the newest and the one before it.
const FILES_KEPT: usize = 2;

#[derive(Default)]
pub struct Texts {
    /// Oldest first.
    files: VecDeque<Arc<HistoryRun>>,
}

pub fn encode(text: &RequestText) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rancor::Error>(text).expect("a request text always serializes")
}

impl Texts {
    /// A new text file, the newest; the oldest beyond the kept two is let go.
    pub fn add(&mut self, file: Arc<HistoryRun>) {
        self.files.push_back(file);
        while self.files.len() > FILES_KEPT {
            self.files.pop_front();
        }
    }

    pub fn newest(&self) -> Option<&Arc<HistoryRun>> {
        self.files.back()
    }

    /// The text of a task, from the heap or the newest file that holds it. A
    /// text that cannot be read shows as a name saying why, never as nothing.
    pub fn of<'a>(&self, task: &'a Task, arena: &TextArena) -> Cow<'a, RequestText> {
        match &task.text {
            TaskText::Held(text) => return Cow::Borrowed(text),
            TaskText::Packed(packed) => return Cow::Owned(arena.unpack(*packed)),
            TaskText::Filed => {}
        }
        match self.read(task.id) {
            Ok(Some(text)) => Cow::Owned(text),
            Ok(None) => Cow::Owned(unreadable("no text file holds it")),
            Err(error) => Cow::Owned(unreadable(&error)),
        }
    }

    /// The name of a task alone, read as `of` reads the whole text.
    pub fn name_of<'a>(&self, task: &'a Task, arena: &TextArena) -> Cow<'a, str> {
        match &task.text {
            TaskText::Held(text) => return Cow::Borrowed(&text.name),
            TaskText::Packed(packed) => return Cow::Owned(arena.name(*packed)),
            TaskText::Filed => {}
        }
        let name = self.read_with(task.id, |text: &ArchivedRequestText| text.name.to_string());
        match name {
            Ok(Some(name)) => Cow::Owned(name),
            Ok(None) => Cow::Owned(unreadable("no text file holds it").name),
            Err(error) => Cow::Owned(unreadable(&error).name),
        }
    }

    fn read(&self, id: RequestId) -> Result<Option<RequestText>, String> {
        self.read_with(id, |text: &ArchivedRequestText| {
            rkyv::deserialize::<RequestText, rancor::Error>(text).map_err(|error| error.to_string())
        })?
        .transpose()
    }

    /// Reads the record of task `id` in the newest file that holds it, checked.
    fn read_with<T>(&self, id: RequestId, read: impl FnOnce(&ArchivedRequestText) -> T) -> Result<Option<T>, String> {
        for file in self.files.iter().rev() {
            let index = file.index().map_err(|error| error.to_string())?;
            if let Some(number) = index.find(id.as_u64()) {
                let bytes = index.record(number).map_err(|error| error.to_string())?;
                let text = rkyv::access::<ArchivedRequestText, rancor::Error>(bytes)
                    .map_err(|error| format!("{}: a text record is invalid: {error}", file.path().display()))?;
                return Ok(Some(read(text)));
            }
        }
        Ok(None)
    }
}

fn unreadable(why: &str) -> RequestText {
    RequestText { name: format!("(request text unreadable: {why})"), ..RequestText::default() }
}

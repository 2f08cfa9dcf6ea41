//! Every task the core holds, found by id and listed in creation order.
//!
//! Tasks live in fixed-size chunks of slots that never move, and a sorted
//! index from id to slot (`IdIndex`) finds them and gives creation order. A
//! map holding the tasks themselves would grow by copying every task (a stall
//! of hundreds of milliseconds at a million tasks) and could stay half empty.
//! A queue entry carries its task's slot, so a poll reaches the task without
//! the index.
//!
//! Tasks are removed when retention lets them go or they go to history: their
//! slot is reused by a later task, so memory follows the number of tasks held,
//! not of tasks ever seen.
//!
//! Listings by tag walk a per-tag list of ids instead of every held task (at a
//! million pending tasks a walk takes 150 ms); removals leave ids in these
//! lists, and once they are half of them a compaction starts that each later
//! removal advances by a few entries (`Compaction`): a list can hold every
//! task, and checking a million ids at once held the event loop for
//! milliseconds. Readers see each list whole until its compacted copy
//! replaces it.
//!
//! Invariants: `positions` and the occupied slots name the same tasks; a free
//! slot is in `free` exactly once; each list of `by_tag` holds, ascending,
//! every held id whose task has that tag, stored or derived from its
//! dimensions (`core::tags`).

use std::cell::Cell;
use std::ops::Index;

use apiary_protocol::RequestId;

use indexmap::IndexMap;

use super::id_index::IdIndex;
use super::model::{RequestTextRef, Task, TaskText, tag_count_of};
use super::tags;
use super::text_arena::TextArena;

/// Slots per chunk: big enough to amortize the allocation, small enough to
/// waste little at the end.
pub const TASK_CHUNK: usize = 4096;

/// List entries a compaction checks per tag of each task removed. A pass checks
/// every entry once and starts when half of them are of removed tasks: at 4 per
/// removed entry it ends well before the next could start.
const COMPACTED_PER_REMOVED_TAG: usize = 4;

/// A pass over the lists of `by_tag` in order: those before `list` are
/// compacted; of list `list`, the entries before `read` were checked and the
/// ids of held tasks among them copied to `kept`, which replaces the list once
/// it is read to its end (entries appended meanwhile included).
#[derive(Default)]
struct Compaction {
    list: usize,
    read: usize,
    kept: Vec<RequestId>,
}

#[derive(Default)]
pub struct TaskStore {
    positions: IdIndex,
    chunks: Vec<Vec<Option<Task>>>,
    /// Slots whose task was removed, to be reused.
    free: Vec<u32>,
    /// Per tag, the ids of the tasks with it, and ids removed since their list was last
    /// compacted. In insertion order, so that a compaction can resume where it stopped.
    by_tag: IndexMap<Box<str>, Vec<RequestId>, ahash::RandomState>,
    /// Ids in all the lists of `by_tag`.
    tagged: usize,
    /// Of these, about how many are of removed tasks (at most this many).
    removed_tagged: usize,
    /// The compaction under way, if one is.
    compaction: Option<Compaction>,
    /// A tag being listed, kept for its room.
    tag_scratch: String,
    /// The texts of the tasks whose texts are in memory.
    texts: TextArena,
    /// The task last found: a dispatch reaches its task through its queue
    /// entry, then finds it again by id several times, and so do other requests.
    last_reached: Cell<Option<(RequestId, u32)>>,
}

impl TaskStore {
    /// Adds a task under a new id, larger than every id held, listed under its
    /// tags; returns where it sits.
    pub fn insert<'a>(&mut self, mut task: Task, tags: impl IntoIterator<Item = &'a str>) -> u32 {
        if let TaskText::Held(text) = &task.text {
            task.text = TaskText::Packed(self.texts.pack(RequestTextRef::from(&**text)));
        }
        let id = task.id;
        self.index_tags(&mut task, tags);
        let position = match self.free.pop() {
            Some(position) => {
                let slot = self.slot_mut(position);
                assert!(slot.is_none(), "a free slot is empty");
                *slot = Some(task);
                position
            }
            None => self.push_slot(task),
        };
        self.positions.push(id, position);
        position
    }

    /// Adds a new task with its text, packed from `text`, which also gives its tags.
    pub fn insert_with_text(&mut self, mut task: Task, text: RequestTextRef<'_>) -> u32 {
        assert!(matches!(task.text, TaskText::Filed), "task {} gets its text here", task.id);
        task.text = TaskText::Packed(self.texts.pack(text));
        self.insert(task, text.tags.iter().map(String::as_str))
    }

    /// Adds a whole chunk of tasks (a restore, which decodes chunks on other
    /// threads: the memory stays where it was written), listed under the tags
    /// `tags_of` gives for each and their dimension tags; returns the first
    /// one's position. The tasks'
    /// ids grow, and the store has no free slot and no chunk that is not full.
    pub fn push_chunk<'a, Tags: IntoIterator<Item = &'a str>>(
        &mut self,
        mut chunk: Vec<Option<Task>>,
        mut tags_of: impl FnMut(usize) -> Tags,
    ) -> u32 {
        assert!(chunk.len() <= TASK_CHUNK && self.free.is_empty(), "a chunk goes into a store without gaps");
        assert!(self.chunks.last().is_none_or(|last| last.len() == TASK_CHUNK), "after full chunks");
        let first = u32::try_from(self.chunks.len() * TASK_CHUNK).expect("fewer than 4 billion tasks held");
        for (index, task) in chunk.iter_mut().enumerate() {
            let task = task.as_mut().expect("a chunk of tasks");
            assert!(matches!(task.text, TaskText::Filed), "a restored task's text is filed");
            self.index_tags(task, tags_of(index));
            self.positions.push(task.id, first + index as u32);
        }
        // The last chunk fills up with new tasks later without moving.
        chunk.reserve_exact(TASK_CHUNK - chunk.len());
        self.chunks.push(chunk);
        first
    }

    /// Removes a task; its slot goes to a later task.
    pub fn remove(&mut self, id: &RequestId) -> Option<Task> {
        let position = self.positions.remove(id)?;
        if self.last_reached.get().is_some_and(|(last, _)| last == *id) {
            self.last_reached.set(None);
        }
        let mut task = self.slot_mut(position).take().expect("an indexed slot holds its task");
        if let TaskText::Packed(packed) = task.text {
            task.text = TaskText::Held(Box::new(self.texts.unpack(packed)));
            self.texts.release(packed);
        }
        self.free.push(position);
        self.removed_tagged += usize::from(task.tag_count);
        if self.compaction.is_none() && self.removed_tagged * 2 > self.tagged {
            self.compaction = Some(Compaction::default());
        }
        self.compact_tags(usize::from(task.tag_count) * COMPACTED_PER_REMOVED_TAG);
        Some(task)
    }

    /// Where a task sits: it never moves. The task found is remembered, as the
    /// next lookups are usually for it again.
    pub fn position(&self, id: &RequestId) -> Option<u32> {
        match self.last_reached.get() {
            Some((last, position)) if last == *id => Some(position),
            _ => {
                let position = self.positions.get(id)?;
                self.last_reached.set(Some((*id, position)));
                Some(position)
            }
        }
    }

    /// The task at a position `position` gave.
    pub fn at_position(&self, position: u32) -> &Task {
        let task = self.at(position);
        self.last_reached.set(Some((task.id, position)));
        task
    }

    pub fn get(&self, id: &RequestId) -> Option<&Task> {
        self.position(id).map(|position| self.at(position))
    }

    pub fn get_mut(&mut self, id: &RequestId) -> Option<&mut Task> {
        let position = self.position(id)?;
        self.slot_mut(position).as_mut()
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// The held tasks with ids below `before` (all of them for `None`), newest first.
    pub fn newest_first_before(&self, before: Option<RequestId>) -> impl Iterator<Item = &Task> {
        self.positions.below(before).rev().map(|(_, position)| self.at(position))
    }

    /// The held tasks with ids below `before`, oldest first.
    pub fn oldest_first_below(&self, before: RequestId) -> impl Iterator<Item = &Task> {
        self.positions.below(Some(before)).map(|(_, position)| self.at(position))
    }

    /// The task at a position `position` gave, to change.
    pub fn at_position_mut(&mut self, position: u32) -> &mut Task {
        self.slot_mut(position).as_mut().expect("a held task")
    }

    /// The arena a held task's packed text is in.
    pub fn texts(&self) -> &TextArena {
        &self.texts
    }

    /// The task's text is in a text file now: its packed copy goes.
    pub fn file_text(&mut self, id: &RequestId) {
        let position = self.position(id).expect("a held task");
        let task = self.slot_mut(position).as_mut().expect("a held task");
        if let TaskText::Packed(packed) = std::mem::replace(&mut task.text, TaskText::Filed) {
            self.texts.release(packed);
        }
    }

    /// Whether the held task `id` has `tag`.
    pub fn has_tag(&self, id: RequestId, tag: &str) -> bool {
        self.by_tag.get(tag).is_some_and(|ids| ids.binary_search(&id).is_ok())
    }

    /// The held tasks from id `from` on, oldest first.
    pub fn oldest_first_from(&self, from: RequestId) -> impl Iterator<Item = &Task> {
        self.positions.from(Some(from)).map(|(_, position)| self.at(position))
    }

    /// The held tasks with `tag` and ids below `before`, newest first.
    pub fn newest_first_tagged(&self, tag: &str, before: Option<RequestId>) -> impl Iterator<Item = &Task> {
        let ids = self.by_tag.get(tag).map_or(&[][..], Vec::as_slice);
        let end = before.map_or(ids.len(), |before| ids.partition_point(|id| *id < before));
        ids[..end].iter().rev().filter_map(|id| self.get(id))
    }

    /// Lists the task under its stored tags and its dimension tags (`core::tags`).
    fn index_tags<'a>(&mut self, task: &mut Task, stored: impl IntoIterator<Item = &'a str>) {
        let mut listed = 0;
        for tag in stored {
            listed += usize::from(self.list_under(tag, task.id));
        }
        // Written into one kept string: no allocation per tag.
        let mut tag = std::mem::take(&mut self.tag_scratch);
        for pair in tags::dimensions(&task.slices) {
            tags::write_tag(&mut tag, &pair.key, &pair.value);
            listed += usize::from(self.list_under(&tag, task.id));
        }
        self.tag_scratch = tag;
        task.tag_count = tag_count_of(listed);
    }

    /// Lists `id` under `tag` unless it is listed there (a tag given twice lists
    /// the task once); returns whether it was added.
    fn list_under(&mut self, tag: &str, id: RequestId) -> bool {
        let added = match self.by_tag.get_mut(tag) {
            Some(ids) if ids.last() == Some(&id) => false,
            Some(ids) => {
                ids.push(id);
                true
            }
            None => {
                self.by_tag.insert(tag.into(), vec![id]);
                true
            }
        };
        self.tagged += usize::from(added);
        added
    }

    /// Advances the compaction under way by about `budget` list entries.
    fn compact_tags(&mut self, mut budget: usize) {
        let Some(compaction) = &mut self.compaction else { return };
        while budget > 0 {
            let Some((_, ids)) = self.by_tag.get_index_mut(compaction.list) else {
                self.compaction = None;
                return;
            };
            let end = ids.len().min(compaction.read + budget);
            let held = ids[compaction.read..end].iter().filter(|id| self.positions.get(id).is_some());
            compaction.kept.extend(held);
            budget -= end - compaction.read;
            compaction.read = end;
            if end < ids.len() {
                return; // The budget ran out inside this list.
            }
            let dropped = ids.len() - compaction.kept.len();
            self.tagged -= dropped;
            self.removed_tagged = self.removed_tagged.saturating_sub(dropped);
            if compaction.kept.is_empty() {
                // The last list takes this one's place, to be compacted next.
                self.by_tag.swap_remove_index(compaction.list);
            } else {
                *ids = std::mem::take(&mut compaction.kept);
                compaction.list += 1;
            }
            compaction.read = 0;
        }
    }

    /// Every held task, oldest first.
    pub fn values(&self) -> impl Iterator<Item = &Task> {
        self.positions.from(None).map(|(_, position)| self.at(position))
    }

    /// Checks the invariants above.
    pub fn check_invariants(&self) {
        self.positions.check_invariants();
        let occupied = self.chunks.iter().flatten().filter(|slot| slot.is_some()).count();
        assert_eq!(occupied, self.positions.len(), "the index names every held task once");
        assert_eq!(occupied + self.free.len(), self.chunks.iter().map(Vec::len).sum::<usize>(), "free slots");
        for (id, position) in self.positions.from(None) {
            assert_eq!(self.at(position).id, id, "the index names the task's slot");
        }
    }

    fn at(&self, position: u32) -> &Task {
        let position = position as usize;
        self.chunks[position / TASK_CHUNK][position % TASK_CHUNK].as_ref().expect("a held task")
    }

    fn slot_mut(&mut self, position: u32) -> &mut Option<Task> {
        let position = position as usize;
        &mut self.chunks[position / TASK_CHUNK][position % TASK_CHUNK]
    }

    fn push_slot(&mut self, task: Task) -> u32 {
        // Every chunk but the last is full.
        let slots = self.chunks.len().saturating_sub(1) * TASK_CHUNK + self.chunks.last().map_or(0, Vec::len);
        let position = u32::try_from(slots).expect("fewer than 4 billion tasks held");
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < TASK_CHUNK => chunk.push(Some(task)),
            _ => {
                let mut chunk = Vec::with_capacity(TASK_CHUNK);
                chunk.push(Some(task));
                self.chunks.push(chunk);
            }
        }
        position
    }
}

impl Index<&RequestId> for TaskStore {
    type Output = Task;

    fn index(&self, id: &RequestId) -> &Task {
        self.get(id).unwrap_or_else(|| panic!("task {id} is known"))
    }
}

#[cfg(test)]
mod tests {
    use apiary_protocol::NewTaskRequest;

    use super::*;

    fn task(id: RequestId, created_ms: u64) -> Task {
        Task::new(id, &NewTaskRequest::default(), created_ms, Vec::new().into())
    }

    #[test]
    fn tasks_are_found_by_id_across_chunks_and_listed_newest_first() {
        let mut store = TaskStore::default();
        // Ids of every other millisecond, so some ids between them are unknown.
        let id = |n: u64| RequestId::first_of_millisecond(1_700_000_000_000 + 2 * n);
        let count = TASK_CHUNK as u64 + 10;
        for n in 0..count {
            store.insert(task(id(n), n), []);
        }
        assert_eq!(store.len(), count as usize);
        assert_eq!(store[&id(TASK_CHUNK as u64 + 3)].slice_started_ms, TASK_CHUNK as u64 + 3);
        assert!(store.get(&RequestId::first_of_millisecond(1)).is_none());
        let newest: Vec<u64> = store.newest_first_before(None).take(2).map(|task| task.slice_started_ms).collect();
        assert_eq!(newest, [count - 1, count - 2]);
        let before_known: Vec<u64> = store.newest_first_before(Some(id(2))).map(|task| task.slice_started_ms).collect();
        assert_eq!(before_known, [1, 0]);
        let between = RequestId::first_of_millisecond(1_700_000_000_000 + 2 * 4096 + 1);
        assert_eq!(store.newest_first_before(Some(between)).next().map(|task| task.slice_started_ms), Some(4096));
        assert_eq!(store.values().count(), count as usize);
        let position = store.position(&id(4100)).unwrap();
        assert_eq!(store.at_position(position).id, id(4100));
        assert_eq!(store.get(&id(4100)).map(|task| task.id), Some(id(4100)), "found again through the last reached");
        assert_eq!(store.get(&id(7)).map(|task| task.id), Some(id(7)));
    }

    #[test]
    fn removed_tasks_free_their_slots_for_later_ones_and_leave_the_order() {
        let mut store = TaskStore::default();
        let id = |n: u64| RequestId::first_of_millisecond(1_700_000_000_000 + n);
        for n in 0..10 {
            store.insert(task(id(n), n), []);
        }
        let kept_position = store.position(&id(9)).unwrap();
        for n in 0..8 {
            assert_eq!(store.remove(&id(n)).map(|task| task.slice_started_ms), Some(n));
        }
        assert!(store.remove(&id(3)).is_none(), "removed once");
        assert_eq!(store.len(), 2);
        let held: Vec<u64> = store.values().map(|task| task.slice_started_ms).collect();
        assert_eq!(held, [8, 9]);
        for n in 10..18 {
            store.insert(task(id(n), n), []);
        }
        assert_eq!(store.chunks.iter().map(Vec::len).sum::<usize>(), 10, "freed slots were reused");
        assert_eq!(store.position(&id(9)), Some(kept_position), "a held task never moves");
        let newest: Vec<u64> = store.newest_first_before(Some(id(12))).map(|task| task.slice_started_ms).collect();
        assert_eq!(newest, [11, 10, 9, 8]);
        let oldest: Vec<u64> = store.oldest_first_below(id(11)).map(|task| task.slice_started_ms).collect();
        assert_eq!(oldest, [8, 9, 10]);
    }

    #[test]
    fn listings_by_tag_see_only_held_tasks_with_the_tag() {
        let mut store = TaskStore::default();
        let id = |n: u64| RequestId::first_of_millisecond(1_700_000_000_000 + n);
        for n in 0..20 {
            let tags = if n % 3 == 0 { vec!["pool:ci".to_string(), "pool:ci".to_string()] } else { vec![] };
            let request = NewTaskRequest { name: format!("task-{n}"), tags, ..NewTaskRequest::default() };
            let text = RequestTextRef::of_request(&request);
            let position = store.insert_with_text(Task::new(id(n), &request, n, Vec::new().into()), text);
            let TaskText::Packed(packed) = store.at_position(position).text else { panic!("a packed text") };
            let packed = store.texts().unpack(packed);
            assert_eq!((packed.name, packed.tags), (request.name, request.tags), "packed from the request");
        }
        let tagged = |store: &TaskStore, before| -> Vec<u64> {
            store.newest_first_tagged("pool:ci", before).map(|task| task.slice_started_ms).collect()
        };
        assert_eq!(tagged(&store, None), [18, 15, 12, 9, 6, 3, 0], "each once, newest first");
        assert_eq!(tagged(&store, Some(id(12))), [9, 6, 3, 0]);
        for n in [0, 3, 6, 9, 12] {
            store.remove(&id(n));
        }
        assert_eq!(tagged(&store, None), [18, 15]);
        assert!(store.by_tag["pool:ci"].len() < 7, "removed ids were compacted away");
        assert!(store.newest_first_tagged("pool:other", None).next().is_none());
    }

    /// Tasks go mostly oldest first (to history, by retention), each removal
    /// advancing the compaction a few entries: listings stay exact throughout,
    /// and the lists stay within a small multiple of the tasks held.
    #[test]
    fn compaction_advances_a_few_entries_per_removal_and_keeps_listings_exact() {
        let mut store = TaskStore::default();
        let id = |n: u64| RequestId::first_of_millisecond(1_700_000_000_000 + n);
        let tags_of = |n: u64| if n.is_multiple_of(2) { vec!["pool:ci", "even:yes"] } else { vec!["pool:ci"] };
        let mut held = std::collections::BTreeSet::new();
        let (mut next, mut oldest) = (0, 0);
        for round in 0..40 {
            for _ in 0..500 {
                store.insert(task(id(next), next), tags_of(next));
                held.insert(next);
                next += 1;
            }
            // Most of the oldest go, and one from the middle each round.
            for _ in 0..450 {
                store.remove(&id(oldest));
                held.remove(&oldest);
                oldest += 1;
            }
            let middle = oldest + 7 * round;
            if held.remove(&middle) {
                store.remove(&id(middle));
            }
            if let Some(compaction) = &store.compaction {
                let ids = &store.by_tag[compaction.list];
                assert!(compaction.read <= ids.len() && compaction.kept.len() <= compaction.read);
            }
            let listed: Vec<u64> =
                store.newest_first_tagged("pool:ci", None).map(|task| task.slice_started_ms).collect();
            assert_eq!(listed, held.iter().rev().copied().collect::<Vec<_>>(), "round {round}");
            let even: Vec<u64> =
                store.newest_first_tagged("even:yes", None).map(|task| task.slice_started_ms).collect();
            let held_even: Vec<u64> = held.iter().rev().copied().filter(|n| n.is_multiple_of(2)).collect();
            assert_eq!(even, held_even, "round {round}");
            let entries: usize = store.by_tag.values().map(Vec::len).sum();
            assert_eq!(entries, store.tagged, "counted");
            assert!(
                entries <= 4 * (held.len() * 3 / 2) + 2 * 500,
                "round {round}: {entries} entries for {} tasks",
                held.len()
            );
        }
        // Every task gone: so are the lists, once removals have advanced the compaction.
        for n in held.clone() {
            store.remove(&id(n));
        }
        store.insert(task(id(next), next), ["other:tag"]);
        store.remove(&id(next));
        assert!(store.by_tag.len() <= 1, "emptied lists are dropped: {:?}", store.by_tag.keys().collect::<Vec<_>>());
    }
}

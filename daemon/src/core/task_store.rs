//! Every task the core knows, in creation order, found by id.
//!
//! Tasks live in fixed-size chunks that never move, and a hash map from id to
//! position finds them. A map holding the tasks themselves would grow by
//! copying every task (a stall of hundreds of milliseconds at a million tasks)
//! and could stay half empty; here growth copies only the small index entries.
//! Tasks submitted together also sit together, as polls take them. A queue
//! entry carries its task's position, so a poll reaches the task without the
//! index (a cache miss saved per dispatch).

use std::cell::Cell;
use std::ops::Index;

use apiary_protocol::RequestId;

use super::Map;
use super::model::Task;

/// Tasks per chunk: big enough to amortize the allocation, small enough to
/// waste little at the end.
const CHUNK_TASKS: usize = 4096;

#[derive(Default)]
pub struct TaskStore {
    positions: Map<RequestId, u32>,
    chunks: Vec<Vec<Task>>,
    /// The task last found: a dispatch reaches its task through its queue
    /// entry, then finds it again by id several times, and so do other requests.
    last_reached: Cell<Option<(RequestId, u32)>>,
}

impl TaskStore {
    /// Adds a task under a new id.
    pub fn insert(&mut self, task: Task) {
        let position = u32::try_from(self.len()).expect("fewer than 4 billion tasks");
        let previous = self.positions.insert(task.id, position);
        assert!(previous.is_none(), "task {} stored twice", task.id);
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_TASKS => chunk.push(task),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_TASKS);
                chunk.push(task);
                self.chunks.push(chunk);
            }
        }
    }

    /// Where a task sits: it never moves. The task found is remembered, as the
    /// next lookups are usually for it again.
    pub fn position(&self, id: &RequestId) -> Option<u32> {
        match self.last_reached.get() {
            Some((last, position)) if last == *id => Some(position),
            _ => {
                let position = *self.positions.get(id)?;
                self.last_reached.set(Some((*id, position)));
                Some(position)
            }
        }
    }

    /// The task at a position `position` gave.
    pub fn at_position(&self, position: u32) -> &Task {
        let task = self.at(position as usize);
        self.last_reached.set(Some((task.id, position)));
        task
    }

    pub fn get(&self, id: &RequestId) -> Option<&Task> {
        self.position(id).map(|position| self.at(position as usize))
    }

    pub fn get_mut(&mut self, id: &RequestId) -> Option<&mut Task> {
        let position = self.position(id)? as usize;
        Some(&mut self.chunks[position / CHUNK_TASKS][position % CHUNK_TASKS])
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    fn at(&self, position: usize) -> &Task {
        &self.chunks[position / CHUNK_TASKS][position % CHUNK_TASKS]
    }

    /// The tasks with ids below `before` (all of them for `None`), newest first.
    pub fn newest_first_before(&self, before: Option<RequestId>) -> impl Iterator<Item = &Task> {
        // Positions follow ids, so a binary search finds where to start.
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            if before.is_none_or(|before| self.at(middle).id < before) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        (0..low).rev().map(|position| self.at(position))
    }

    /// Every task, oldest first.
    pub fn values(&self) -> impl Iterator<Item = &Task> {
        self.chunks.iter().flatten()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        self.chunks.iter_mut().flatten()
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

    #[test]
    fn tasks_are_found_by_id_across_chunks_and_listed_newest_first() {
        let mut store = TaskStore::default();
        // Ids of every other millisecond, so some ids between them are unknown.
        let id = |n: u64| RequestId::first_of_millisecond(1_700_000_000_000 + 2 * n);
        let count = CHUNK_TASKS as u64 + 10;
        for n in 0..count {
            store.insert(Task::new(id(n), NewTaskRequest::default(), n));
        }
        assert_eq!(store.len(), count as usize);
        assert_eq!(store[&id(CHUNK_TASKS as u64 + 3)].created_ms, CHUNK_TASKS as u64 + 3);
        assert!(store.get(&RequestId::first_of_millisecond(1)).is_none());
        let newest: Vec<u64> = store.newest_first_before(None).take(2).map(|task| task.created_ms).collect();
        assert_eq!(newest, [count - 1, count - 2]);
        let before_known: Vec<u64> = store.newest_first_before(Some(id(2))).map(|task| task.created_ms).collect();
        assert_eq!(before_known, [1, 0]);
        let between = RequestId::first_of_millisecond(1_700_000_000_000 + 2 * 4096 + 1);
        assert_eq!(store.newest_first_before(Some(between)).next().map(|task| task.created_ms), Some(4096));
        assert_eq!(store.values().count(), count as usize);
        let position = store.position(&id(4100)).unwrap();
        assert_eq!(store.at_position(position).id, id(4100));
        assert_eq!(store.get(&id(4100)).map(|task| task.id), Some(id(4100)), "found again through the last reached");
        assert_eq!(store.get(&id(7)).map(|task| task.id), Some(id(7)));
    }
}

//! Where each held task sits, by id: a sorted array in chunks.
//!
//! Task ids only grow, so a new entry is always appended, and the entries stay
//! sorted without ever being moved: a lookup is a binary search over the
//! chunks' first ids (a few kilobytes at a million tasks, kept in cache) and
//! then within one chunk. Against a hash map this takes 12 bytes an entry
//! instead of about 35, gives creation order for free (no second list of ids),
//! and is filled at a restart by appending, without a cache miss per entry
//! (inserting a million ids into a hash map took 0.45 s of a 1.3 s restart).
//!
//! A removed entry stays as a tombstone (its slot set to `REMOVED`) so the
//! chunk stays sorted; a chunk more than half tombstones is compacted on the
//! spot (a few thousand entries), and an empty chunk leaves the list.
//!
//! Invariants: ids ascend across all entries, tombstones included; `len`
//! counts the entries that are not tombstones; no chunk is empty; only the
//! last chunk grows.

use apiary_protocol::RequestId;

/// Entries per chunk: a binary search within one touches a few cache lines,
/// and a compaction moves at most this many.
const CHUNK_ENTRIES: usize = 4096;

/// The slot of a removed entry.
const REMOVED: u32 = u32::MAX;

#[derive(Default)]
pub struct IdIndex {
    chunks: Vec<Chunk>,
    /// Each chunk's first id (tombstone or not), for the first step of a search.
    firsts: Vec<RequestId>,
    len: usize,
}

/// Ids and slots side by side: the search reads only the ids.
#[derive(Default)]
struct Chunk {
    ids: Vec<RequestId>,
    slots: Vec<u32>,
    removed: usize,
}

impl IdIndex {
    /// Adds `id` at `slot`; `id` is larger than every id added before.
    pub fn push(&mut self, id: RequestId, slot: u32) {
        assert_ne!(slot, REMOVED, "a slot number below u32::MAX");
        let last = self.chunks.last().and_then(|chunk| chunk.ids.last());
        assert!(last.is_none_or(|last| *last < id), "task ids grow");
        if self.chunks.last().is_none_or(|chunk| chunk.ids.len() == CHUNK_ENTRIES) {
            self.chunks.push(Chunk {
                ids: Vec::with_capacity(CHUNK_ENTRIES),
                slots: Vec::with_capacity(CHUNK_ENTRIES),
                removed: 0,
            });
            self.firsts.push(id);
        }
        let chunk = self.chunks.last_mut().expect("a chunk was just ensured");
        chunk.ids.push(id);
        chunk.slots.push(slot);
        self.len += 1;
    }

    pub fn get(&self, id: &RequestId) -> Option<u32> {
        let (chunk, index) = self.find(id)?;
        let slot = self.chunks[chunk].slots[index];
        (slot != REMOVED).then_some(slot)
    }

    /// Removes `id`, returning its slot.
    pub fn remove(&mut self, id: &RequestId) -> Option<u32> {
        let (chunk_index, index) = self.find(id)?;
        let chunk = &mut self.chunks[chunk_index];
        let slot = std::mem::replace(&mut chunk.slots[index], REMOVED);
        if slot == REMOVED {
            return None;
        }
        self.len -= 1;
        chunk.removed += 1;
        if chunk.removed * 2 > chunk.ids.len() {
            self.compact(chunk_index);
        }
        Some(slot)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The held entries with ids from `from` on (all for `None`), ascending.
    pub fn from(&self, from: Option<RequestId>) -> impl DoubleEndedIterator<Item = (RequestId, u32)> + '_ {
        let (chunk, index) = from.map_or((0, 0), |from| self.lower_bound(&from));
        self.entries(chunk, index, self.chunks.len(), 0)
    }

    /// The held entries with ids below `before` (all for `None`), ascending;
    /// `.rev()` gives them newest first.
    pub fn below(&self, before: Option<RequestId>) -> impl DoubleEndedIterator<Item = (RequestId, u32)> + '_ {
        let (chunk, index) = before.map_or((self.chunks.len(), 0), |before| self.lower_bound(&before));
        self.entries(0, 0, chunk, index)
    }

    /// Entries from `(start_chunk, start)` up to, not including, `(end_chunk, end)`.
    fn entries(
        &self,
        start_chunk: usize,
        start: usize,
        end_chunk: usize,
        end: usize,
    ) -> impl DoubleEndedIterator<Item = (RequestId, u32)> + '_ {
        let last = if end == 0 { end_chunk } else { end_chunk + 1 };
        let chunks = self.chunks.get(start_chunk..last.max(start_chunk)).unwrap_or(&[]);
        chunks.iter().enumerate().flat_map(move |(offset, chunk)| {
            let number = start_chunk + offset;
            let from = if number == start_chunk { start } else { 0 };
            let to = if number == end_chunk { end } else { chunk.ids.len() };
            let range = from..to.max(from);
            chunk.ids[range.clone()]
                .iter()
                .zip(&chunk.slots[range])
                .filter(|(_, slot)| **slot != REMOVED)
                .map(|(id, slot)| (*id, *slot))
        })
    }

    /// Where `id` is, tombstone or not.
    fn find(&self, id: &RequestId) -> Option<(usize, usize)> {
        let chunk = self.firsts.partition_point(|first| first <= id).checked_sub(1)?;
        let index = self.chunks[chunk].ids.binary_search(id).ok()?;
        Some((chunk, index))
    }

    /// The place of the first entry with an id not below `id`: a chunk and an
    /// index in it (`(chunks.len(), 0)` past the end).
    fn lower_bound(&self, id: &RequestId) -> (usize, usize) {
        let Some(chunk) = self.firsts.partition_point(|first| first <= id).checked_sub(1) else {
            return (0, 0);
        };
        let index = self.chunks[chunk].ids.partition_point(|held| held < id);
        if index == self.chunks[chunk].ids.len() { (chunk + 1, 0) } else { (chunk, index) }
    }

    /// Drops a chunk's tombstones, and the chunk when nothing is left. The
    /// last chunk keeps its room, as new entries go there.
    fn compact(&mut self, chunk_index: usize) {
        let is_last = chunk_index + 1 == self.chunks.len();
        let chunk = &mut self.chunks[chunk_index];
        let mut kept = 0;
        for index in 0..chunk.ids.len() {
            if chunk.slots[index] != REMOVED {
                chunk.ids[kept] = chunk.ids[index];
                chunk.slots[kept] = chunk.slots[index];
                kept += 1;
            }
        }
        chunk.ids.truncate(kept);
        chunk.slots.truncate(kept);
        chunk.removed = 0;
        if kept == 0 {
            self.chunks.remove(chunk_index);
            self.firsts.remove(chunk_index);
        } else {
            if !is_last {
                chunk.ids.shrink_to_fit();
                chunk.slots.shrink_to_fit();
            }
            self.firsts[chunk_index] = chunk.ids[0];
        }
    }

    /// Checks the invariants above.
    pub fn check_invariants(&self) {
        let mut previous: Option<RequestId> = None;
        let mut held = 0;
        for (chunk, first) in self.chunks.iter().zip(&self.firsts) {
            assert!(!chunk.ids.is_empty(), "no chunk is empty");
            assert_eq!(chunk.ids.len(), chunk.slots.len());
            assert_eq!(chunk.ids[0], *first, "a chunk's first id is listed");
            assert_eq!(chunk.removed, chunk.slots.iter().filter(|slot| **slot == REMOVED).count());
            for id in &chunk.ids {
                assert!(previous.is_none_or(|previous| previous < *id), "ids ascend");
                previous = Some(*id);
            }
            held += chunk.ids.len() - chunk.removed;
        }
        assert_eq!(self.chunks.len(), self.firsts.len());
        assert_eq!(held, self.len);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId::first_of_millisecond(1_700_000_000_000 + n)
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push(u64),
        Remove(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (1..4u64).prop_map(Step::Push),
            2 => (0..3 * CHUNK_ENTRIES as u64).prop_map(Step::Remove),
        ]
    }

    proptest! {
        /// The index answers as an ordered map of the same entries would.
        #[test]
        fn answers_as_an_ordered_map(steps in proptest::collection::vec(step(), 1..400), probe in 0..10_000u64) {
            let mut index = IdIndex::default();
            let mut model = BTreeMap::new();
            let mut next = 0;
            for step in steps {
                match step {
                    // Many entries per step, so chunks fill, empty and compact.
                    Step::Push(gap) => for _ in 0..64 {
                        next += gap;
                        index.push(id(next), next as u32);
                        model.insert(id(next), next as u32);
                    },
                    Step::Remove(n) => for n in n..n + 64 {
                        prop_assert_eq!(index.remove(&id(n)), model.remove(&id(n)));
                    },
                }
                index.check_invariants();
            }
            prop_assert_eq!(index.len(), model.len());
            prop_assert_eq!(index.get(&id(probe)), model.get(&id(probe)).copied());
            let all: Vec<_> = index.from(None).collect();
            prop_assert_eq!(&all, &model.iter().map(|(id, slot)| (*id, *slot)).collect::<Vec<_>>());
            let from: Vec<_> = index.from(Some(id(probe))).collect();
            prop_assert_eq!(from, model.range(id(probe)..).map(|(id, slot)| (*id, *slot)).collect::<Vec<_>>());
            let below: Vec<_> = index.below(Some(id(probe))).rev().collect();
            prop_assert_eq!(below, model.range(..id(probe)).rev().map(|(id, slot)| (*id, *slot)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn an_emptied_chunk_leaves_and_ids_keep_growing_after_it() {
        let mut index = IdIndex::default();
        for n in 0..CHUNK_ENTRIES as u64 + 1 {
            index.push(id(n), n as u32);
        }
        for n in 0..CHUNK_ENTRIES as u64 {
            assert_eq!(index.remove(&id(n)), Some(n as u32));
        }
        assert_eq!(index.chunks.len(), 1, "the emptied chunk left");
        assert_eq!(index.remove(&id(3)), None, "removed once");
        index.push(id(CHUNK_ENTRIES as u64 + 7), 7);
        index.check_invariants();
        assert_eq!(index.below(None).rev().map(|(_, slot)| slot).collect::<Vec<_>>(), [7, CHUNK_ENTRIES as u32]);
    }
}

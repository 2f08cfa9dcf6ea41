//! An ordered set kept as a list of sorted chunks: the queues' pending tasks
//! and the cancellable timers, up to a million entries each.
//!
//! A B-tree holds these too, but a node split by one insertion at a time is
//! left half empty (twice the memory, for keys that mostly arrive in order),
//! and a restore had to gather every key into a temporary list first to build
//! full nodes. Here keys that arrive in order fill chunks whole, and a restore
//! simply inserts. A chunk holds at most `CHUNK_KEYS` keys, so an insertion or
//! removal in its middle moves a few kilobytes; the chunks' first keys sit in
//! a list of their own, so finding a chunk reads a few cache lines.
//!
//! Invariants: keys ascend across all chunks; no chunk is empty or holds more
//! than `CHUNK_KEYS`; `firsts[i]` is chunk `i`'s first key; `len` counts the keys.

use std::collections::VecDeque;

/// Keys per chunk.
const CHUNK_KEYS: usize = 512;

#[derive(Debug)]
pub struct ChunkedSet<K> {
    chunks: Vec<VecDeque<K>>,
    firsts: Vec<K>,
    len: usize,
}

impl<K> Default for ChunkedSet<K> {
    fn default() -> ChunkedSet<K> {
        ChunkedSet { chunks: Vec::new(), firsts: Vec::new(), len: 0 }
    }
}

impl<K: Ord + Copy> ChunkedSet<K> {
    /// Adds `key`; false when it is already there.
    pub fn insert(&mut self, key: K) -> bool {
        // Most keys come after every key held (new tasks, a restore): no search.
        if let Some(last) = self.chunks.last_mut()
            && last.len() < CHUNK_KEYS
            && last.back().is_some_and(|back| *back < key)
        {
            last.push_back(key);
            self.len += 1;
            return true;
        }
        let chunk_index = self.chunk_for(&key);
        let opens_chunk = match self.chunks.get(chunk_index) {
            None => true,
            // A key past the end of a full last chunk starts the next one, so
            // keys that arrive in order fill their chunks whole.
            Some(chunk) => {
                chunk_index + 1 == self.chunks.len()
                    && chunk.len() == CHUNK_KEYS
                    && chunk.back().is_some_and(|last| *last < key)
            }
        };
        if opens_chunk {
            let mut chunk = VecDeque::with_capacity(CHUNK_KEYS);
            chunk.push_back(key);
            self.chunks.push(chunk);
            self.firsts.push(key);
            self.len += 1;
            return true;
        }
        let chunk = &mut self.chunks[chunk_index];
        let Err(index) = chunk.binary_search(&key) else { return false };
        chunk.insert(index, key);
        self.len += 1;
        if index == 0 {
            self.firsts[chunk_index] = key;
        }
        if chunk.len() > CHUNK_KEYS {
            let upper = chunk.split_off(chunk.len() / 2);
            self.firsts.insert(chunk_index + 1, upper[0]);
            self.chunks.insert(chunk_index + 1, upper);
        }
        true
    }

    /// Removes `key`; false when it is not there.
    pub fn remove(&mut self, key: &K) -> bool {
        // A dispatch takes its queue's first task, and with it (most often) the
        // first expiration: no search.
        if self.first() == Some(key) {
            self.pop_first();
            return true;
        }
        let chunk_index = self.chunk_for(key);
        let Some(chunk) = self.chunks.get_mut(chunk_index) else { return false };
        let Ok(index) = chunk.binary_search(key) else { return false };
        chunk.remove(index);
        self.len -= 1;
        self.after_removal(chunk_index);
        true
    }

    pub fn first(&self) -> Option<&K> {
        self.firsts.first()
    }

    pub fn pop_first(&mut self) -> Option<K> {
        let key = self.chunks.first_mut()?.pop_front()?;
        self.len -= 1;
        self.after_removal(0);
        Some(key)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.chunks.get(self.chunk_for(key)).is_some_and(|chunk| chunk.binary_search(key).is_ok())
    }

    /// How many keys are below `key`.
    pub fn rank(&self, key: &K) -> usize {
        let chunk_index = self.chunk_for(key);
        let before: usize = self.chunks[..chunk_index].iter().map(VecDeque::len).sum();
        before + self.chunks.get(chunk_index).map_or(0, |chunk| chunk.partition_point(|held| held < key))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.chunks.iter().flatten()
    }

    /// The chunk `key` is in or would go into (`chunks.len()` for an empty set).
    fn chunk_for(&self, key: &K) -> usize {
        if self.chunks.is_empty() {
            return 0;
        }
        self.firsts.partition_point(|first| first <= key).saturating_sub(1)
    }

    /// Drops an emptied chunk, keeps `firsts` true, and merges a chunk that
    /// fell below a quarter into its successor when both fit in one.
    fn after_removal(&mut self, chunk_index: usize) {
        let chunk = &self.chunks[chunk_index];
        let Some(&first) = chunk.front() else {
            self.chunks.remove(chunk_index);
            self.firsts.remove(chunk_index);
            return;
        };
        self.firsts[chunk_index] = first;
        let small = chunk.len() < CHUNK_KEYS / 4;
        if small && self.chunks.get(chunk_index + 1).is_some_and(|next| chunk.len() + next.len() <= CHUNK_KEYS) {
            let next = self.chunks.remove(chunk_index + 1);
            self.firsts.remove(chunk_index + 1);
            self.chunks[chunk_index].extend(next);
        }
    }

    /// Checks the invariants above.
    pub fn check_invariants(&self) {
        assert_eq!(self.chunks.len(), self.firsts.len());
        let mut previous: Option<&K> = None;
        for (chunk, first) in self.chunks.iter().zip(&self.firsts) {
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK_KEYS, "a chunk holds 1 to {CHUNK_KEYS} keys");
            assert!(chunk.front() == Some(first), "a chunk's first key is listed");
            for key in chunk {
                assert!(previous.is_none_or(|previous| previous < key), "keys ascend");
                previous = Some(key);
            }
        }
        assert_eq!(self.chunks.iter().map(VecDeque::len).sum::<usize>(), self.len);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// Keys from here on, ascending (as new tasks come).
        InsertRun(u32, u16),
        Insert(u32),
        Remove(u32),
        /// Removes a run of keys (a cancellation by tag, a slice expiring).
        RemoveRun(u32, u16),
        PopFirst(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        let key = 0..20_000u32;
        prop_oneof![
            (key.clone(), 1..2_000u16).prop_map(|(from, count)| Step::InsertRun(from, count)),
            key.clone().prop_map(Step::Insert),
            key.clone().prop_map(Step::Remove),
            (key, 1..2_000u16).prop_map(|(from, count)| Step::RemoveRun(from, count)),
            (1..600u16).prop_map(Step::PopFirst),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The set answers as a B-tree set of the same keys would.
        #[test]
        fn answers_as_a_btree_set(steps in proptest::collection::vec(step(), 1..60), probe in 0..20_000u32) {
            let mut set = ChunkedSet::default();
            let mut model = BTreeSet::new();
            for step in steps {
                match step {
                    Step::InsertRun(from, count) => for key in from..from + u32::from(count) {
                        prop_assert_eq!(set.insert(key), model.insert(key));
                    },
                    Step::Insert(key) => prop_assert_eq!(set.insert(key), model.insert(key)),
                    Step::Remove(key) => prop_assert_eq!(set.remove(&key), model.remove(&key)),
                    Step::RemoveRun(from, count) => for key in from..from + u32::from(count) {
                        prop_assert_eq!(set.remove(&key), model.remove(&key));
                    },
                    Step::PopFirst(count) => for _ in 0..count {
                        prop_assert_eq!(set.pop_first(), model.pop_first());
                    },
                }
                set.check_invariants();
                prop_assert_eq!(set.first(), model.first());
            }
            prop_assert_eq!(set.len(), model.len());
            prop_assert_eq!(set.contains(&probe), model.contains(&probe));
            prop_assert_eq!(set.rank(&probe), model.range(..probe).count());
            prop_assert!(set.iter().eq(model.iter()));
        }
    }

    #[test]
    fn keys_in_order_fill_their_chunks_whole() {
        let mut set = ChunkedSet::default();
        for key in 0..10 * CHUNK_KEYS {
            set.insert(key);
        }
        assert_eq!(set.chunks.len(), 10);
        assert!(set.chunks.iter().all(|chunk| chunk.len() == CHUNK_KEYS && chunk.capacity() == CHUNK_KEYS));
    }
}

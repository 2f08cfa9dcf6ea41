//! Finished tasks off the heap (docs/state.md, section 3).
//!
//! The snapshot job writes the tasks that ended since the last snapshot into a
//! history run (`apiary_storage::HistoryRun`): their `TaskRecord`s sorted by id,
//! listed under their state and each of their tags. The core keeps a list of
//! the runs its state covers (durable: it is in the snapshot) and, in the live
//! daemon, each run's read-only mapping, opened by the shell. Reading a mapped
//! file that never changes is not I/O the core decides: the bytes are there,
//! like the core's own.
//!
//! Invariants: runs are listed by ascending number; a run only holds ended
//! tasks; a task is in at most one run, and while the heap still holds it the
//! heap's copy is the one used.

use std::sync::Arc;

use apiary_protocol::cas::Digest;
use apiary_protocol::cas::digest::ArchivedDigest;
use apiary_protocol::{RequestId, TaskState};
use apiary_storage::{HistoryRun, Postings, RunIndex};
use rkyv::{Archive, Deserialize, Serialize, rancor};

use super::snapshot::{ArchivedTaskRecord, TaskRecord};

/// A run the core's state covers, as the snapshot lists it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunEntry {
    pub number: u64,
    pub min_id: u64,
    pub max_id: u64,
    pub count: u64,
}

impl RunEntry {
    pub fn of(number: u64, run: &HistoryRun) -> RunEntry {
        RunEntry { number, min_id: run.min_id(), max_id: run.max_id(), count: run.len() as u64 }
    }
}

struct HeldRun {
    entry: RunEntry,
    /// Set in the live daemon; the snapshot job only lists runs.
    reader: Option<Arc<HistoryRun>>,
}

#[derive(Default)]
pub struct History {
    runs: Vec<HeldRun>,
}

/// The key a task is listed under for its state, and for each of its tags.
pub fn state_key(state: TaskState) -> Vec<u8> {
    format!("state:{}", state.name()).into_bytes()
}

pub fn tag_key(tag: &str) -> Vec<u8> {
    format!("tag:{tag}").into_bytes()
}

pub fn keys_of(record: &TaskRecord) -> Vec<Vec<u8>> {
    let mut keys = vec![state_key(record.state)];
    keys.extend(record.request.tags.iter().map(|tag| tag_key(tag)));
    keys
}

pub fn encode_record(record: &TaskRecord) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rancor::Error>(record).expect("a task record always serializes")
}

/// A record of a run, checked, read in place.
fn access_record(bytes: &[u8]) -> Result<&ArchivedTaskRecord, String> {
    rkyv::access::<ArchivedTaskRecord, rancor::Error>(bytes)
        .map_err(|error| format!("a history record is invalid: {error}"))
}

impl History {
    pub fn add(&mut self, entry: RunEntry, reader: Option<Arc<HistoryRun>>) {
        assert!(self.runs.last().is_none_or(|last| last.entry.number < entry.number), "runs come in order");
        self.runs.push(HeldRun { entry, reader });
    }

    /// Gives a listed run its reader (the shell opened it after a restart).
    pub fn attach(&mut self, number: u64, reader: Arc<HistoryRun>) {
        let run = self.runs.iter_mut().find(|run| run.entry.number == number).expect("attach a listed run");
        run.reader = Some(reader);
    }

    pub fn entries(&self) -> impl Iterator<Item = &RunEntry> {
        self.runs.iter().map(|run| &run.entry)
    }

    pub fn reader(&self, number: u64) -> Option<&HistoryRun> {
        self.runs.iter().find(|run| run.entry.number == number)?.reader.as_deref()
    }

    /// Every run's reader, oldest first; the number of a run without one.
    pub fn readers(&self) -> Result<Vec<Arc<HistoryRun>>, u64> {
        self.runs.iter().map(|run| run.reader.clone().ok_or(run.entry.number)).collect()
    }

    /// The newest run's reader.
    pub fn newest(&self) -> Option<&Arc<HistoryRun>> {
        self.runs.last()?.reader.as_ref()
    }

    /// Lets go of the runs whose every task was created before `before`.
    pub fn expire(&mut self, before: RequestId) {
        self.runs.retain(|run| run.entry.max_id >= before.as_u64());
    }

    /// The record of an ended task, if a run holds it.
    pub fn get(&self, id: RequestId) -> Result<Option<&ArchivedTaskRecord>, String> {
        let id = id.as_u64();
        let candidates = self.runs.iter().rev().filter(|run| (run.entry.min_id..=run.entry.max_id).contains(&id));
        for reader in candidates.filter_map(|run| run.reader.as_deref()) {
            let index = reader.index().map_err(|error| error.to_string())?;
            if let Some(number) = index.find(id) {
                return index.record(number).map_err(|error| error.to_string()).and_then(access_record).map(Some);
            }
        }
        Ok(None)
    }

    /// The records below `before` (all for `None`) and at or above `floor`, in
    /// the state and with every tag asked for, newest first.
    pub fn newest_first(
        &self,
        before: Option<RequestId>,
        floor: RequestId,
        state: Option<TaskState>,
        tags: &[String],
    ) -> Result<Listing<'_>, String> {
        let before = before.map_or(u64::MAX, RequestId::as_u64);
        let mut keys: Vec<Vec<u8>> = tags.iter().map(|tag| tag_key(tag)).collect();
        keys.extend(state.map(state_key));
        let mut cursors = Vec::new();
        for run in &self.runs {
            let (Some(reader), true) = (&run.reader, run.entry.min_id < before && run.entry.max_id >= floor.as_u64())
            else {
                continue;
            };
            let index = reader.index().map_err(|error| error.to_string())?;
            if let Some(cursor) = Cursor::new(index, &keys, before) {
                cursors.push(cursor);
            }
        }
        let mut listing = Listing { cursors, heads: std::collections::BinaryHeap::new(), floor: floor.as_u64() };
        for slot in 0..listing.cursors.len() {
            listing.advance(slot);
        }
        Ok(listing)
    }
}

/// Calls `found` with the content-addressed roots that records `numbers` of
/// a run name: each slice's input root, and the output root. Returns how many
/// of the records could not be read (they are damaged: their tasks cannot be
/// shown either).
pub fn cas_roots_of(index: &RunIndex<'_>, numbers: std::ops::Range<usize>, found: &mut dyn FnMut(Digest)) -> u64 {
    let mut unreadable = 0;
    for number in numbers {
        let Ok(record) = index.record(number).map_err(|error| error.to_string()).and_then(access_record) else {
            unreadable += 1;
            continue;
        };
        for slice in record.request.task_slices.iter() {
            if let Some(root) = slice.properties.cas_input_root.as_ref() {
                found(plain_digest(&root.digest));
            }
        }
        if let Some(root) = record.cas_output_root.as_ref() {
            found(plain_digest(root));
        }
    }
    unreadable
}

fn plain_digest(archived: &ArchivedDigest) -> Digest {
    Digest { hash: archived.hash, size_bytes: archived.size_bytes.to_native() }
}

/// One run's records that match, newest first.
struct Cursor<'a> {
    index: RunIndex<'a>,
    /// The shortest posting list of the keys asked for; `None`: every record.
    walk: Option<Postings<'a>>,
    /// The other keys' lists, which a record must also be on.
    others: Vec<Postings<'a>>,
    /// The next position in `walk`, or (walking every record) one past the next record.
    position: usize,
}

impl<'a> Cursor<'a> {
    /// `None` when no record of the run can match.
    fn new(index: RunIndex<'a>, keys: &[Vec<u8>], before: u64) -> Option<Cursor<'a>> {
        let mut lists = keys.iter().map(|key| index.postings(key)).collect::<Option<Vec<Postings<'a>>>>()?;
        lists.sort_by_key(Postings::len);
        let below = index.count_below(before);
        let walk = (!lists.is_empty()).then(|| lists.remove(0));
        let position = walk.map_or(below, |list| list.position_below(below));
        Some(Cursor { index, walk, others: lists, position })
    }

    /// The next matching record number, newest first.
    fn next(&mut self) -> Option<usize> {
        loop {
            let number = match self.walk {
                Some(list) => {
                    let number = (self.position < list.len()).then(|| list.get(self.position))?;
                    self.position += 1;
                    number
                }
                None => {
                    self.position = self.position.checked_sub(1)?;
                    self.position
                }
            };
            if self.others.iter().all(|list| list.contains(number)) {
                return Some(number);
            }
        }
    }
}

/// Records from several runs, merged newest first.
pub struct Listing<'a> {
    cursors: Vec<Cursor<'a>>,
    /// Each cursor's next record: (id, cursor, record number).
    heads: std::collections::BinaryHeap<(u64, usize, usize)>,
    floor: u64,
}

impl<'a> Listing<'a> {
    fn advance(&mut self, slot: usize) {
        let cursor = &mut self.cursors[slot];
        if let Some(number) = cursor.next() {
            self.heads.push((cursor.index.id_at(number), slot, number));
        }
    }

    /// The next task's id, without reading its record.
    pub fn peek_id(&self) -> Option<u64> {
        self.heads.peek().map(|&(id, ..)| id).filter(|&id| id >= self.floor)
    }

    /// Skips the next task.
    pub fn skip(&mut self) {
        if let Some((_, slot, _)) = self.heads.pop() {
            self.advance(slot);
        }
    }

    /// The next task's record, leaving it next.
    pub fn peek_record(&self) -> Option<Result<&'a ArchivedTaskRecord, String>> {
        self.peek_id()?;
        let &(_, slot, number) = self.heads.peek().expect("peeked");
        let record = self.cursors[slot].index.record(number).map_err(|error| error.to_string());
        Some(record.and_then(access_record))
    }
}

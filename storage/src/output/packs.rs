//! What the store keeps in memory about its packs: the current pack's entries, and per
//! sealed pack only its number, length and run-id range (plus its entries until its index
//! is durable).

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::extents::Extent;
use super::format::{CHUNK_HEADER_BYTES, IndexEntry};
use super::index_file::index_order;
use super::sync::{SEAL_DONE, SEAL_FAILED, SEAL_IN_JOB, SealWork};

/// The pack being written.
#[derive(Debug)]
pub(crate) struct CurrentPack {
    pub number: u64,
    pub file: Arc<File>,
    /// Where the next chunk goes: every byte before it is a whole, checked chunk.
    pub end: u64,
    /// Chunks written to the pack, by (run id, run offset) to (pack offset, data length);
    /// the first copy of each.
    pub entries: BTreeMap<(u64, u64), (u64, u32)>,
    /// A write failed and its bytes past `end` could not be cut off yet.
    pub needs_truncate: bool,
}

impl CurrentPack {
    pub(crate) fn new(number: u64, file: File) -> CurrentPack {
        CurrentPack { number, file: Arc::new(file), end: 0, entries: BTreeMap::new(), needs_truncate: false }
    }

    /// Notes a chunk just written at `pack_offset`; returns its data as an extent.
    pub(crate) fn add(&mut self, run_id: u64, run_offset: u64, pack_offset: u64, data_len: u32) -> Extent {
        assert_eq!(pack_offset, self.end);
        self.entries.entry((run_id, run_offset)).or_insert((pack_offset, data_len));
        self.end = pack_offset + (CHUNK_HEADER_BYTES as u64) + u64::from(data_len);
        Extent { run_offset, pack: self.number, data_offset: pack_offset + CHUNK_HEADER_BYTES as u64, len: data_len }
    }

    /// The chunks of run `run_id` in this pack.
    pub(crate) fn chunks_of_run(&self, run_id: u64) -> impl Iterator<Item = Extent> + '_ {
        self.entries.range((run_id, 0)..=(run_id, u64::MAX)).map(|(&(run_id, run_offset), &(pack_offset, data_len))| {
            Extent::from_entry(self.number, &IndexEntry { run_id, run_offset, pack_offset, data_len })
        })
    }

    /// Turns the pack into a sealed one whose index is still to be written.
    pub(crate) fn seal(self) -> SealedPack {
        let entries: Vec<IndexEntry> = self
            .entries
            .into_iter()
            .map(|((run_id, run_offset), (pack_offset, data_len))| IndexEntry {
                run_id,
                run_offset,
                pack_offset,
                data_len,
            })
            .collect();
        SealedPack::unindexed(self.number, self.end, index_order(entries), self.file)
    }
}

/// A pack that is no longer written.
#[derive(Debug)]
pub(crate) struct SealedPack {
    pub number: u64,
    pub bytes: u64,
    pub entry_count: u64,
    /// Smallest and largest run id with a chunk in the pack (`u64::MAX`, 0 when empty).
    pub min_run_id: u64,
    pub max_run_id: u64,
    /// Set until the pack's index is durable.
    pub pending: Option<PendingIndex>,
}

/// A sealed pack's entries, kept in memory until a sync job has written its index.
#[derive(Debug)]
pub(crate) struct PendingIndex {
    /// In index order.
    pub entries: Arc<Vec<IndexEntry>>,
    pub file: Arc<File>,
    pub state: Arc<AtomicU8>,
    /// A sync job holds the work; its state says how it went.
    pub in_job: bool,
}

impl SealedPack {
    pub(crate) fn indexed(number: u64, bytes: u64, entry_count: u64, min_run_id: u64, max_run_id: u64) -> SealedPack {
        SealedPack { number, bytes, entry_count, min_run_id, max_run_id, pending: None }
    }

    /// A sealed pack whose index a sync job must still write; `entries` in index order.
    pub(crate) fn unindexed(number: u64, bytes: u64, entries: Vec<IndexEntry>, file: Arc<File>) -> SealedPack {
        let min_run_id = entries.first().map_or(u64::MAX, |entry| entry.run_id);
        let max_run_id = entries.last().map_or(0, |entry| entry.run_id);
        let pending = PendingIndex {
            entries: Arc::new(entries),
            file,
            state: Arc::new(AtomicU8::new(SEAL_FAILED)),
            in_job: false,
        };
        let entry_count = pending.entries.len() as u64;
        SealedPack { number, bytes, entry_count, min_run_id, max_run_id, pending: Some(pending) }
    }

    pub(crate) fn may_hold(&self, run_id: u64) -> bool {
        (self.min_run_id..=self.max_run_id).contains(&run_id)
    }

    /// Forgets the entries once the index is durable; takes back work a job failed or
    /// dropped, so the next job tries again.
    pub(crate) fn reap(&mut self) {
        let Some(pending) = &mut self.pending else { return };
        match pending.state.load(Ordering::Acquire) {
            SEAL_DONE => self.pending = None,
            SEAL_FAILED => pending.in_job = false,
            _ => {}
        }
    }

    /// The work of writing this pack's index, if no job holds it.
    pub(crate) fn take_seal_work(&mut self) -> Option<SealWork> {
        let pending = self.pending.as_mut().filter(|pending| !pending.in_job)?;
        pending.in_job = true;
        pending.state.store(SEAL_IN_JOB, Ordering::Release);
        Some(SealWork {
            number: self.number,
            pack: Arc::clone(&pending.file),
            pack_bytes: self.bytes,
            entries: Arc::clone(&pending.entries),
            state: Arc::clone(&pending.state),
        })
    }
}

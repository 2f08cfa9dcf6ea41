//! The output store: every run's output in append-only *pack* files shared by all runs,
//! written by offset, found through per-pack indexes, and deleted a whole pack at a time.
//! No file (and no inode) per run.
//!
//! # Files
//!
//! ```text
//! output/
//!   <number:010>.pack      chunks, in the order they were written; the newest pack is
//!                          the *current* one, the only one written to
//!   <number:010>.idx       the index of a sealed pack, written once it is synced
//!   <number:010>.idx.tmp   an index being written (removed at open)
//! ```
//!
//! A pack is a sequence of chunks, each a 32-byte header (magic, data length, run id, run
//! offset, CRC-32 of header and data; see [`format::ChunkHeader::encode`]) followed by
//! 1 byte to 1 MiB of data, with no padding. A chunk never spans packs: when the next
//! chunk would take the current pack past [`OutputOptions::pack_bytes`] (64 MiB by
//! default), the pack is *sealed* and a new one started. A write longer than a chunk holds
//! (1 MiB, or less in small test packs) becomes several chunks.
//!
//! An index is a 64-byte header (pack number, pack length, entry count, smallest and
//! largest run id, CRC-32) and one 32-byte entry per chunk (run id, run offset, pack
//! offset, data length, CRC-32), sorted by (run id, run offset); see
//! [`format::IndexHeader::encode`] and [`format::IndexEntry::encode`]. Lookups read it with
//! `pread` by binary search; each entry read is CRC-checked.
//!
//! # Memory
//!
//! Memory follows what is active, not history: the extents of *open* runs (written since
//! their last [`OutputStore::close`]); the current pack's entries (bounded by the pack
//! size); for each sealed pack its number, length and run-id range, plus its entries until
//! a sync job has made its index durable; and small caches of closed runs' extents and of
//! file handles. A read of a closed run searches the indexes of the sealed packs whose
//! run-id range holds it (run ids are time-ordered, so there are few) and the current
//! pack's entries. A run's output is the bytes from offset 0 up to the first byte no
//! chunk holds; where two chunks hold the same bytes the one written first counts.
//!
//! # Rotation off the event loop
//!
//! Packs are not preallocated: the standard library has no `fallocate`, and zero-filling
//! would write every byte twice. So sealing costs the caller one small file creation (the
//! new, empty pack: `open(O_CREAT|O_EXCL)`, no sync) and moving the current pack's entries
//! into a list. All the slow work (`fdatasync` of the sealed pack, writing, syncing and
//! renaming its index, syncing the directory) happens in the next [`OutputSyncJob`], run
//! after the turn's writes. Retention unlinks (two per pack) run on the caller's thread; they are
//! metadata-only and bounded by the caller per call.
//!
//! # Invariants
//!
//! - Every byte of a pack before its end is part of a whole, CRC-checked chunk; bytes of a
//!   failed write are cut off before the next write (and the store's view of the pack
//!   end never moves past them).
//! - A run's bytes before its length never change: a resent chunk changes nothing, a chunk
//!   that would leave a hole is refused ([`OutputError::Gap`]).
//! - A `.idx` is only written after its pack is synced, so a durable index only points at
//!   durable chunks; a pack is never written again once sealed.
//! - After a failed sync every later write and sync job fails ([`OutputError::Poisoned`]).
//!   A failed write for lack of space ([`OutputError::NoSpace`]) does not poison: the run's
//!   length is unchanged and later writes succeed once space returns. A failed pack
//!   creation leaves the current pack current and is tried again by the next write that
//!   needs it.
//!
//! # Recovery at open
//!
//! See `recovery.rs`: indexed packs are trusted through their index header; a pack whose
//! index is missing is scanned and indexed again, its torn tail cut; a pack whose index is
//! damaged must scan whole, or the open fails with [`OutputError::Corrupted`] naming it;
//! the newest unindexed pack is current, scanned and its torn tail cut. After a reopen no
//! run is open: `len` of a run that was running when the daemon stopped reads what its
//! chunks hold, and its next write opens it again.
//!
//! # Retention
//!
//! [`OutputStore::remove_packs_before`] deletes whole sealed, indexed packs whose largest
//! run id is below a cutoff and that hold no chunk of an open run. A run that was running
//! when the daemon restarted is not open until it writes again: the caller must not pass
//! a cutoff above a run it still considers running. A read of a run whose first pack was
//! removed is empty (length 0).

mod error;
mod extents;
mod format;
mod index_file;
mod packs;
mod recovery;
mod store;
mod sync;
#[cfg(test)]
mod tests;

pub use error::OutputError;
pub use store::{
    DEFAULT_PACK_BYTES, MAX_PACK_BYTES, MIN_PACK_BYTES, OutputOptions, OutputStats, OutputStore, RemovedPacks,
};
pub use sync::OutputSyncJob;

/// The most output one task may have.
pub const MAX_OUTPUT_BYTES_PER_TASK: u64 = 1 << 30;

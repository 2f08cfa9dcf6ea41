//! Apiary's durable storage: the write-ahead log that the daemon's state is rebuilt from,
//! and the store that keeps task output.
//!
//! - [`Wal`] (`wal/`): preallocated, memory-mapped segment files holding CRC-checked,
//!   16-byte-aligned records with consecutive sequence numbers. The daemon's event loop
//!   appends (one `pwrite` per turn; the mapping is read); a [`SyncJob`], run at the end of the turn, makes the appended bytes durable.
//!   Recovery checks the log as a whole against what the caller needs ([`LogStart`]: the
//!   first record after its snapshot): every record is verified, only a torn tail is cut,
//!   a missing or shortened segment or a sequence gap is refused as [`WalError::Missing`]
//!   (or dropped, and reported in [`Recovery`], when the caller accepts the loss), and
//!   corruption anywhere else is refused. A preparer thread keeps the next segment file
//!   ready, so a rotation costs the appender no file creation, fsync or rename; sync jobs
//!   install new segments. [`Wal::rotate_now`] and [`Wal::remove_segments_through`] serve
//!   snapshots, and [`read_records`] reads durable records from another thread.
//! - [`OutputStore`] (`output/`): task output is not state. All runs' output goes into
//!   shared, append-only pack files of CRC-checked chunks, written by offset (a resent
//!   chunk changes nothing), found through a sorted index written when a pack is sealed,
//!   and deleted a whole pack at a time by retention; no file per run, and memory bounded
//!   by the runs still open. A full disk is a typed error ([`OutputError::NoSpace`]) that
//!   leaves the store usable; sync jobs write the indexes off the event loop.
//!
//! - [`SnapshotStore`] (`snapshot.rs`): snapshot files, each the daemon's state after one log
//!   record, sealed with CRCs, written atomically, read back through a mapping. What a
//!   snapshot holds is the daemon's archive; the log gives it a sealed point to cut at and
//!   the means to delete what it covers.
//!
//! - [`HistoryDir`] (`history.rs`): finished tasks off the daemon's heap, in immutable runs
//!   of CRC-checked records sorted by id, with posting lists per key, read through a mapping.
//!
//! - [`cas`]: the content-addressed store, blobs named by REAPI digests, each a file
//!   written whole, checked and synced before it is stored, checked again when read.
//!
//! - `large_files.rs`: history runs, snapshots and uploaded blobs are written back a MiB
//!   at a time, and old segments, snapshots and history runs past retention removed a MiB
//!   at a time, so that neither queues a large write or discard ahead of the log's syncs.
//!
//! All `unsafe` code of the crate lives in `wal/mmap.rs` and `large_files.rs`, each block
//! with the reason it is sound.

#![deny(unsafe_code)]

use std::fs::File;
use std::io;
use std::path::Path;

pub mod cas;
mod history;
mod large_files;
mod output;
mod snapshot;
mod wal;

pub use history::{HistoryDir, HistoryError, HistoryRun, Postings, RunIndex, RunWriter};
pub use output::{
    DEFAULT_PACK_BYTES, MAX_OUTPUT_BYTES_PER_TASK, MAX_PACK_BYTES, MIN_PACK_BYTES, OutputError, OutputOptions,
    OutputStats, OutputStore, OutputSyncJob, RemovedPacks,
};
pub use snapshot::{LoadedSnapshot, SNAPSHOT_HEADER_BYTES, SnapshotError, SnapshotFile, SnapshotStore};
pub use wal::{
    LogLoss, LogStart, LogSurvey, LossKind, MAX_SEGMENT_BYTES, RECORD_ALIGNMENT, ReadError, RecordRef, Records,
    Recovery, SyncJob, TornTail, Wal, WalError, WalOptions, read_records,
};

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all())
}

//! Apiary's durable storage: the write-ahead log that the daemon's state is rebuilt from,
//! and the store that keeps task output.
//!
//! - [`Wal`] (`wal/`): preallocated, memory-mapped segment files holding CRC-checked,
//!   16-byte-aligned records with consecutive sequence numbers. The daemon's event loop
//!   appends; a flusher thread makes the appended bytes durable through a [`SyncJob`].
//!   Recovery checks the log as a whole against what the caller needs ([`LogStart`]: the
//!   first record after its snapshot): every record is verified, only a torn tail is cut,
//!   a missing or shortened segment or a sequence gap is refused as [`WalError::Missing`]
//!   (or dropped, and reported in [`Recovery`], when the caller accepts the loss), and
//!   corruption anywhere else is refused. A preparer thread keeps the next segment file
//!   ready, so a rotation costs the appender no file creation, fsync or rename; sync jobs
//!   install new segments. [`Wal::rotate_now`] and [`Wal::remove_segments_through`] serve
//!   snapshots, and [`read_records`] reads durable records from another thread.
//! - [`OutputStore`] (`output.rs`): task output is not state. Each task's output is an
//!   append-only file written by offset, so a resent chunk changes nothing and a large
//!   output never slows WAL replay.
//!
//! - [`SnapshotStore`] (`snapshot.rs`): snapshot files, each the daemon's state after one log
//!   record, sealed with CRCs, written atomically, read back through a mapping. What a
//!   snapshot holds is the daemon's archive; the log gives it a sealed point to cut at and
//!   the means to delete what it covers.
//!
//! All `unsafe` code of the crate lives in `wal/mmap.rs`, each block with the reason it is
//! sound.

#![deny(unsafe_code)]

mod output;
mod snapshot;
mod wal;

pub use output::{MAX_OPEN_OUTPUT_FILES, MAX_OUTPUT_BYTES_PER_TASK, OutputError, OutputStore, OutputSyncJob};
pub use snapshot::{LoadedSnapshot, SNAPSHOT_HEADER_BYTES, SnapshotError, SnapshotFile, SnapshotStore};
pub use wal::{
    LogLoss, LogStart, LossKind, MAX_SEGMENT_BYTES, RECORD_ALIGNMENT, ReadError, RecordRef, Records, Recovery, SyncJob,
    TornTail, Wal, WalError, WalOptions, read_records,
};

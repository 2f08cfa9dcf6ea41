//! Apiary's durable storage: the write-ahead log that the daemon's state is rebuilt from,
//! and the store that keeps task output.
//!
//! - [`Wal`] (`wal/`): preallocated, memory-mapped segment files holding CRC-checked,
//!   16-byte-aligned records with consecutive sequence numbers. The daemon's event loop
//!   appends; a flusher thread makes the appended bytes durable through a [`SyncJob`].
//!   Recovery verifies every record, cuts only a torn tail and refuses corruption anywhere
//!   else.
//! - [`OutputStore`] (`output.rs`): task output is not state. Each task's output is an
//!   append-only file written by offset, so a resent chunk changes nothing and a large
//!   output never slows WAL replay.
//!
//! Snapshots (the core's state as one archive, after which old segments go) are not here yet.
//!
//! All `unsafe` code of the crate lives in `wal/mmap.rs`, each block with the reason it is
//! sound.

#![deny(unsafe_code)]

mod output;
mod wal;

pub use output::{MAX_OPEN_OUTPUT_FILES, MAX_OUTPUT_BYTES_PER_TASK, OutputError, OutputStore, OutputSyncJob};
pub use wal::{
    MAX_SEGMENT_BYTES, RECORD_ALIGNMENT, RecordRef, Records, Recovery, SyncJob, TornTail, Wal, WalError, WalOptions,
};

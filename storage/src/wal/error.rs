//! The WAL's one error type. `Corrupted` (the bytes on disk are wrong) is kept apart from
//! `Io` (the system refused an operation); after a failed sync every later append is
//! `Poisoned`.

use std::io;

use super::recovery::LogLoss;

/// What went wrong in the write-ahead log. Every variant names what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A system call failed; `context` says what was being done ("open segment 3").
    #[error("failed to {context}: {source}")]
    Io { context: String, source: io::Error },
    /// The log's bytes are wrong somewhere other than a torn tail.
    #[error("WAL corrupted in segment {segment} at offset {offset}: {reason}")]
    Corrupted { segment: u64, offset: u64, reason: String },
    /// A record's payload does not fit in an empty segment.
    #[error("a record of {len} bytes is larger than the {limit} bytes a segment can hold")]
    RecordTooLarge { len: usize, limit: usize },
    /// An earlier sync failed: what the page cache holds can no longer be trusted to reach
    /// the disk, so the log refuses to go on.
    #[error("the WAL is poisoned: an earlier sync failed")]
    Poisoned,
    /// Another process holds the log directory's lock.
    #[error("the WAL in {dir} is locked by another process")]
    Locked { dir: String },
    /// The options cannot describe a usable log.
    #[error("invalid WAL options: {reason}")]
    InvalidOptions { reason: String },
    /// Part of the log the caller needs is not there (a missing segment, a segment cut
    /// short, a gap in sequence numbers). Nothing on disk was changed; opening with
    /// `LogStart::accept_loss` keeps the log up to the loss.
    #[error("the WAL is incomplete: {loss}; refusing to open it unless the loss is accepted")]
    Missing { loss: LogLoss },
    /// The HEAD file is damaged.
    #[error("the WAL's HEAD file is damaged: {reason}")]
    BadHead { reason: String },
    /// The next segment cannot be prepared (a full disk, a failing device); the preparer
    /// keeps trying.
    #[error("the next log segment cannot be prepared: {reason}")]
    NoSpare { reason: String },
    /// Sync jobs must run in the order they were taken: this one starts after records that
    /// no completed job made durable (an earlier job was dropped, failed or is still running).
    #[error("sync job for records {first_seq}..={upto_seq} ran before records up to {durable_seq} were durable")]
    SyncOutOfOrder { first_seq: u64, upto_seq: u64, durable_seq: u64 },
}

impl WalError {
    /// Builds a `map_err` closure that wraps an `io::Error` with what was being done.
    pub(crate) fn io(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> WalError {
        move |source| WalError::Io { context: context(), source }
    }

    pub(crate) fn corrupted(segment: u64, offset: usize, reason: impl Into<String>) -> WalError {
        WalError::Corrupted { segment, offset: offset as u64, reason: reason.into() }
    }
}

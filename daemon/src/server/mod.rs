//! The shell around the core: data directory, recovery, the event loop, group
//! commit (`durability`), and the limits that keep one peer from hurting the others
//! (`peer_limits`: the hello and idle timeouts in `deadlines`, partial frames
//! in `inbound`, replies owed in `outbound`). A connection's principal is
//! settled by its hello (`hello`); a bot's id and enforced dimensions are
//! checked against its principal's bot groups (`bot_admission`); SIGHUP
//! reloads who may connect (`reload`) and the TLS certificate (`tls`);
//! `service_manager` tells systemd how the daemon is doing. HTTP connections
//! (`--http-listen`) share the loop: `http` reads and answers their requests,
//! `event_loop::http` does their I/O.

mod bot_admission;
pub mod cas;
pub mod cas_gc;
mod connection;
mod deadlines;
mod disk;
mod durability;
mod event_loop;
mod hello;
mod http;
mod inbound;
mod input_check;
pub mod os;
mod outbound;
pub mod peer_limits;
mod reload;
mod replay;
mod service_manager;
mod snapshots;
mod startup;
mod tls;

pub use event_loop::{SOFTWARE, now_unix_ms};
pub use peer_limits::PeerLimits;
pub use snapshots::{JobArgs, SnapshotSettings};
pub use startup::{Reload, ServerConfig, run};
pub use tls::TlsFiles;

use std::io;

/// A notable event, at info: the shorthand most of the shell uses
/// (`crate::logging` has the other levels).
pub use crate::logging::log;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("another apiaryd already uses the data directory {0} (it holds the lock on {0}/LOCK)")]
    Locked(String),
    #[error("the write-ahead log failed: {0}")]
    Wal(#[from] apiary_storage::WalError),
    #[error("the output store failed: {0}")]
    Output(#[from] apiary_storage::OutputError),
    #[error("{0}; stopping, since durability can no longer be promised")]
    Sync(String),
    #[error("cannot replay record {seq} of the log: {reason}")]
    Replay { seq: u64, reason: String },
    #[error(
        "{reason}, and the log does not reach back to an older snapshot: {fallback}; start with \
         --accept-log-loss to set the snapshot aside and start from what is left"
    )]
    SnapshotUnusable { reason: String, fallback: String },
    #[error("the history store failed: {0}")]
    History(#[from] apiary_storage::HistoryError),
    #[error(
        "{0}; the snapshot lists it, so the tasks in it would be lost: put the file back, or start with \
         --accept-log-loss to go on without them"
    )]
    HistoryRunUnusable(apiary_storage::HistoryError),
    #[error("{0}")]
    OpenAccess(String),
    #[error("{0}")]
    Tls(String),
    #[error("the snapshot store failed: {0}")]
    Snapshot(#[from] apiary_storage::SnapshotError),
    #[error("the content-addressed store failed: {0}")]
    Cas(#[from] apiary_storage::cas::CasError),
}

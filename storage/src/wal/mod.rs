//! The write-ahead log: segment files of checksummed records, appended by one writer thread
//! and made durable by sync jobs that another thread runs.
//!
//! - `record`: a record's byte layout, its encoder and its checked decoder.
//! - `segment`: a segment file's header, its name, and its creation (preallocated, synced).
//! - `recovery`: opening an existing log as a whole: verify, cut a torn tail, find missing
//!   parts (refused, or dropped when the caller accepts the loss), refuse corruption.
//! - `head`: the `HEAD` file, naming the newest segment durably in place.
//! - `preparer`: the thread that makes spare segments and unlinks given-up ones.
//! - `reader`: [`read_records`], reading durable records from another thread.
//! - `writer`: [`Wal`], the appender, and the iterator over its records.
//! - `sync`: [`SyncJob`], durability work handed to another thread.
//! - `mmap`: the memory mapping of a segment; the only module with `unsafe`.
//! - `error`: [`WalError`].

mod error;
mod head;
#[expect(unsafe_code, reason = "the segment mapping needs raw pointer access; see the module's SAFETY notes")]
pub(crate) mod mmap;
mod preparer;
mod reader;
mod record;
mod recovery;
mod segment;
mod sync;
mod writer;

pub use error::WalError;
pub use reader::{ReadError, read_records};
pub use record::{RECORD_ALIGNMENT, RecordRef};
pub use recovery::{LogLoss, LogStart, LogSurvey, LossKind, Recovery, TornTail};
pub use sync::SyncJob;
pub use writer::{MAX_SEGMENT_BYTES, Records, Wal, WalOptions};

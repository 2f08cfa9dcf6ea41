//! The output store's one error type. Every variant names the run, pack or file it is
//! about; [`OutputError::NoSpace`] is kept apart from other I/O so the daemon can degrade
//! instead of stopping when the disk is full or failing.

use std::io;
use std::path::PathBuf;

/// Raw OS error numbers that mean "the store cannot grow right now" (Linux values).
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;
const EIO: i32 = 5;

/// What went wrong in the output store.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to {context}: {source}")]
    Io { context: String, source: io::Error },
    /// A write could not grow the store (ENOSPC, EDQUOT, or EIO on a write). Nothing was
    /// indexed and the store stays usable: a later write succeeds once space returns.
    #[error("no space to {context}: {source}")]
    NoSpace { context: String, source: io::Error },
    /// A file of the store does not hold what its format promises.
    #[error("output file {} is damaged at byte {offset}: {reason}", file.display())]
    Corrupted { file: PathBuf, offset: u64, reason: String },
    /// A write started past the end of the output, which would leave a hole.
    #[error("output of task {task_id:016x} has {expected} bytes; a write at offset {got} would leave a gap")]
    Gap { task_id: u64, expected: u64, got: u64 },
    #[error("output of task {task_id:016x} would grow to {len} bytes, past the limit of {limit}")]
    TooLarge { task_id: u64, len: u64, limit: u64 },
    /// An earlier sync failed; nothing written since can be trusted to reach the disk.
    #[error("the output store is poisoned: an earlier sync failed")]
    Poisoned,
}

impl OutputError {
    /// Wraps a failed I/O call: `Io`, with the context the closure describes.
    pub(crate) fn io(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> OutputError {
        move |source| OutputError::Io { context: context(), source }
    }

    /// Wraps a failed call that grows the store: `NoSpace` when the disk is full, over
    /// quota or failing, `Io` otherwise.
    pub(crate) fn growing(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> OutputError {
        move |source| {
            if is_out_of_space(&source) {
                OutputError::NoSpace { context: context(), source }
            } else {
                OutputError::Io { context: context(), source }
            }
        }
    }
}

/// Whether an error from a write means the store cannot grow (as opposed to a bug or a
/// vanished file).
pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT | EIO))
        || matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_errors_are_told_apart_from_other_io() {
        for code in [ENOSPC, EDQUOT, EIO] {
            let error = OutputError::growing(|| "write".to_string())(io::Error::from_raw_os_error(code));
            assert!(matches!(error, OutputError::NoSpace { .. }), "{code}: {error}");
        }
        let error = OutputError::growing(|| "write".to_string())(io::Error::from(io::ErrorKind::NotFound));
        assert!(matches!(error, OutputError::Io { .. }), "{error}");
    }
}

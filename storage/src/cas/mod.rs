//! The content-addressed store: blobs named by their REAPI digest
//! (`apiary_protocol::cas`). `ContentStore` is what the daemon needs of one, so
//! that an external REAPI CAS could stand in for `LocalStore` later.
//!
//! Every operation blocks on the file system; the daemon runs them off its
//! event loop.
//!
//! Garbage collection (docs/state.md, section 2.1) is the caller's decision
//! of what is referenced; the store knows when each blob was last used. A
//! blob's *use* is any sign that someone still wants it: it was stored, found
//! present by `find_missing`, uploaded again, or read. A store records a use
//! cheaply (at most once per blob per `use_refresh`), so a blob used at `t`
//! looks used at some time in `t - use_refresh ..= t`. A sweep removes every
//! blob that is neither referenced nor used since its cutoff, and every upload
//! left unfinished since then. Invariant: a sweep step runs between two
//! operations, never inside one, so no blob goes while a transfer of it is in
//! progress (a chunked read or upload is kept alive by its own uses).

mod local;

use std::io;
use std::time::SystemTime;

use apiary_protocol::CasBlob;
use apiary_protocol::cas::Digest;

pub use local::{DEFAULT_USE_REFRESH, LocalStore};

#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    #[error("the bytes sent for {expected} have digest {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    /// Found on reading: the blob was removed, and is reported missing from now on.
    #[error("blob {0} was corrupt in the store (its bytes no longer match its digest); it was removed")]
    Corrupt(Digest),
    #[error(
        "storing {digest} ({} bytes) would take the store to {} bytes, over its limit of {limit} bytes \
         (--cas-max-bytes)",
        digest.size_bytes, used + digest.size_bytes
    )]
    Full { digest: Digest, used: u64, limit: u64 },
    #[error("an upload of {digest} continues at offset {expected}, not {offset}")]
    OutOfOrder { digest: Digest, offset: u64, expected: u64 },
    #[error("an upload of {digest} got {got} bytes, more than its size")]
    TooLong { digest: Digest, got: u64 },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// What the daemon needs of a content-addressed store.
pub trait ContentStore {
    /// Those of `digests` the store lacks, in their order (each once). Those
    /// it has count as used (REAPI's FindMissingBlobs extends their life).
    fn find_missing(&mut self, digests: &[Digest]) -> Vec<Digest>;

    /// Stores a whole blob whose bytes are at hand; durable when it returns.
    fn put(&mut self, digest: Digest, bytes: &[u8]) -> Result<(), CasError>;

    /// Stores several whole blobs, all durable when it returns. A store may
    /// make them durable together, much cheaper than one by one; on an error,
    /// those before the failing blob may be stored.
    fn put_batch(&mut self, blobs: &[CasBlob]) -> Result<(), CasError> {
        for blob in blobs {
            self.put(blob.digest, &blob.data)?;
        }
        Ok(())
    }

    /// Where an upload of `digest` in chunks continues: 0 for a new one, the
    /// bytes already received for an interrupted one, `size_bytes` when the
    /// blob is already stored.
    fn upload_offset(&mut self, digest: Digest) -> Result<u64, CasError>;

    /// Adds the next chunk of an upload, at `offset` (which `upload_offset`
    /// gave, plus what was appended since). The last chunk stores the blob,
    /// checked against its digest and durable when this returns `true`.
    fn append(&mut self, digest: Digest, offset: u64, chunk: &[u8]) -> Result<bool, CasError>;

    /// Up to `max_bytes` of the blob from `offset`. A blob is checked against
    /// its digest before any of it is served (once per process for a large
    /// blob); a corrupt one is removed and reported.
    fn read(&mut self, digest: Digest, offset: u64, max_bytes: usize) -> Result<Vec<u8>, CasError>;

    /// The whole blob, checked as `read` checks it, without counting as a
    /// use: garbage collection reads the trees it keeps so.
    fn read_without_use(&mut self, digest: Digest) -> Result<Vec<u8>, CasError>;

    /// Whether the store holds the blob (not a use).
    fn contains(&self, digest: &Digest) -> bool;

    /// The bytes the store's blobs hold, and its limit.
    fn usage(&self) -> (u64, u64);

    /// One bounded step of `sweep`: removes the blobs of a part of the store
    /// that `referenced` does not name and that were not used since the
    /// sweep's cutoff, or the unfinished uploads untouched since then. Returns
    /// whether the sweep is done. On an error the sweep stops; what it removed
    /// until then is counted.
    fn sweep_step(&mut self, sweep: &mut Sweep, referenced: &dyn Fn(&Digest) -> bool) -> Result<bool, CasError>;

    /// A whole sweep in one call (`sweep_step` until done).
    fn collect_garbage(
        &mut self,
        referenced: &dyn Fn(&Digest) -> bool,
        unused_since: SystemTime,
    ) -> Result<GcCounts, CasError> {
        let mut sweep = Sweep::new(unused_since);
        while !self.sweep_step(&mut sweep, referenced)? {}
        Ok(sweep.counts)
    }
}

/// What a sweep removed and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcCounts {
    pub removed_blobs: u64,
    pub removed_bytes: u64,
    /// Kept because the caller named them.
    pub kept_referenced: u64,
    /// Not named, but used since the cutoff.
    pub kept_recent: u64,
    /// Unfinished uploads removed, and the bytes they had received.
    pub removed_uploads: u64,
    pub removed_upload_bytes: u64,
}

/// A sweep in progress: its cutoff, how far it got, what it did so far.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Blobs (and uploads) last used before this may go.
    pub unused_since: SystemTime,
    /// The next part of the store to sweep; what a part is, the store says.
    pub next_part: u32,
    pub counts: GcCounts,
}

impl Sweep {
    pub fn new(unused_since: SystemTime) -> Sweep {
        Sweep { unused_since, next_part: 0, counts: GcCounts::default() }
    }
}

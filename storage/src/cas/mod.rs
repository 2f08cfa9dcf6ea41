//! The content-addressed store: blobs named by their REAPI digest
//! (`apiary_protocol::cas`). `ContentStore` is what the daemon needs of one, so
//! that an external REAPI CAS could stand in for `LocalStore` later.
//!
//! Every operation blocks on the file system; the daemon runs them off its
//! event loop.

mod local;

use std::io;

use apiary_protocol::CasBlob;
use apiary_protocol::cas::Digest;

pub use local::LocalStore;

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
    /// Those of `digests` the store lacks, in their order (each once).
    fn find_missing(&self, digests: &[Digest]) -> Vec<Digest>;

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

    /// The bytes the store's blobs hold, and its limit.
    fn usage(&self) -> (u64, u64);
}

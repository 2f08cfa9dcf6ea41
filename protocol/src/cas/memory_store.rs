//! A content-addressed store in memory that answers as the daemon's does,
//! checking the protocol's limits, for tests of the clients of the store (the
//! transfers here, the bot's); it counts the requests it serves. Built for
//! this crate's tests and with the `test-support` feature.

use std::collections::HashMap;

use super::Digest;
use super::transfer::Call;
use crate::limits::{MAX_CAS_BATCH_BYTES, MAX_CAS_CHUNK_BYTES, MAX_CAS_DIGESTS};
use crate::{CasBlob, ClientError, ErrorCode, Reply, Request};

#[derive(Default)]
pub struct MemoryStore {
    pub blobs: HashMap<Digest, Vec<u8>>,
    pub uploads: HashMap<Digest, Vec<u8>>,
    /// The kind of each request served, in order (`busy` for one refused).
    pub requests: Vec<&'static str>,
    /// Requests still to refuse as too busy (`Unavailable`), before any is served.
    pub busy: u32,
}

impl MemoryStore {
    /// Keeps a blob, named by the digest of its bytes.
    pub fn insert(&mut self, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        self.blobs.insert(digest, bytes.to_vec());
        digest
    }

    pub fn count(&self, kind: &str) -> usize {
        self.requests.iter().filter(|request| **request == kind).count()
    }

    /// The answer to a store request; None for any other request.
    pub fn answer(&mut self, request: &Request) -> Option<Result<Reply, ClientError>> {
        if self.busy > 0 {
            self.busy -= 1;
            self.requests.push("busy");
            let message = "the content-addressed store is busy".to_string();
            return Some(Err(ClientError::Refused { code: ErrorCode::Unavailable, message }));
        }
        let not_found = |digest: &Digest| ClientError::Refused {
            code: ErrorCode::NotFound,
            message: format!("blob {digest} is not in the store"),
        };
        Some(Ok(match request.clone() {
            Request::CasFindMissing { digests } => {
                self.requests.push("find");
                Reply::CasMissing { digests: digests.into_iter().filter(|d| !self.blobs.contains_key(d)).collect() }
            }
            Request::CasBatchUpload { blobs } => {
                self.requests.push("batch");
                assert!(blobs.len() <= MAX_CAS_DIGESTS);
                assert!(blobs.iter().map(|blob| blob.data.len()).sum::<usize>() <= MAX_CAS_BATCH_BYTES);
                for blob in blobs {
                    assert_eq!(Digest::of(&blob.data), blob.digest);
                    self.blobs.insert(blob.digest, blob.data);
                }
                Reply::CasStored
            }
            Request::CasUploadStart { digest } => {
                self.requests.push("start");
                let offset = match self.blobs.get(&digest) {
                    Some(_) => digest.size_bytes,
                    None => self.uploads.entry(digest).or_default().len() as u64,
                };
                Reply::CasUploadOffset { offset }
            }
            Request::CasUploadChunk { digest, offset, data } => {
                self.requests.push("chunk");
                assert!(data.len() <= MAX_CAS_CHUNK_BYTES);
                let upload = self.uploads.get_mut(&digest).expect("started");
                assert_eq!(upload.len() as u64, offset);
                upload.extend(data);
                let received = upload.len() as u64;
                if received == digest.size_bytes {
                    let bytes = self.uploads.remove(&digest).expect("started");
                    assert_eq!(Digest::of(&bytes), digest);
                    self.blobs.insert(digest, bytes);
                }
                Reply::CasUploadOffset { offset: received }
            }
            Request::CasBatchRead { digests } => {
                self.requests.push("batch read");
                let sizes: u64 = digests.iter().map(|digest| digest.size_bytes).sum();
                assert!(digests.len() <= MAX_CAS_DIGESTS && sizes <= MAX_CAS_BATCH_BYTES as u64);
                let mut blobs = Vec::new();
                for digest in digests {
                    let Some(data) = self.blobs.get(&digest) else { return Some(Err(not_found(&digest))) };
                    blobs.push(CasBlob { digest, data: data.clone() });
                }
                Reply::CasBlobs { blobs }
            }
            Request::CasRead { digest, offset, max_bytes } => {
                self.requests.push("read");
                assert!(max_bytes as usize <= MAX_CAS_CHUNK_BYTES);
                let Some(bytes) = self.blobs.get(&digest) else { return Some(Err(not_found(&digest))) };
                let start = (offset as usize).min(bytes.len());
                let end = (start + max_bytes as usize).min(bytes.len());
                Reply::CasData { data: bytes[start..end].to_vec() }
            }
            _ => return None,
        }))
    }
}

impl Call for MemoryStore {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.answer(request).unwrap_or_else(|| panic!("not a store request: {request:?}"))
    }
}

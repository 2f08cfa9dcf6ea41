//! A content-addressed store in memory that answers as the daemon's does, for
//! tests of the bot's transfers; it counts the requests it serves.

use std::collections::HashMap;

use apiary_protocol::cas::Digest;
use apiary_protocol::cas::transfer::Call;
use apiary_protocol::limits::{MAX_CAS_BATCH_BYTES, MAX_CAS_CHUNK_BYTES, MAX_CAS_DIGESTS};
use apiary_protocol::{CasBlob, ClientError, ErrorCode, Reply, Request};

#[derive(Default)]
pub(crate) struct FakeStore {
    pub(crate) blobs: HashMap<Digest, Vec<u8>>,
    uploads: HashMap<Digest, Vec<u8>>,
    /// The kind of each request served, in order.
    pub(crate) requests: Vec<&'static str>,
}

impl FakeStore {
    /// Keeps a blob, named by the digest of its bytes.
    pub(crate) fn insert(&mut self, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        self.blobs.insert(digest, bytes.to_vec());
        digest
    }

    pub(crate) fn count(&self, kind: &str) -> usize {
        self.requests.iter().filter(|request| **request == kind).count()
    }

    /// The answer to a store request; None for any other request.
    pub(crate) fn answer(&mut self, request: &Request) -> Option<Result<Reply, ClientError>> {
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

impl Call for FakeStore {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.answer(request).unwrap_or_else(|| panic!("not a store request: {request:?}"))
    }
}

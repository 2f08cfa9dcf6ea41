//! The content-addressed store as the daemon serves it: requests checked
//! against the protocol's limits and the caller's permissions, then run on
//! one thread (`apiary-cas`) that owns the store, so that no file I/O runs on
//! the event loop.
//!
//! The loop hands the thread jobs through a bounded queue and gets
//! completions back through another, with a wake of its `mio::Waker`. A
//! completion is durable already (the store syncs a blob before it says it is
//! stored), so its reply waits for no log sync. Invariants:
//! - the bytes held by jobs not yet answered (the request's data, and the
//!   most the answer can carry) never pass `MAX_QUEUED_BYTES`: a request that
//!   would is refused as `Unavailable`, to be sent again (`ResourceExhausted`
//!   is kept for a full store, which waiting does not cure);
//! - the store is touched by the thread only; the loop reads nothing of it;
//! - at most one garbage collection pass (`server::cas_gc`) runs, a bounded
//!   step at a time, after every `REQUESTS_PER_GC_STEP` requests or whenever
//!   no request waits: requests are served between steps, never inside one.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread;
use std::time::{Duration, SystemTime};

use apiary_protocol::cas::Digest;
use apiary_protocol::limits::{MAX_CAS_BATCH_BYTES, MAX_CAS_CHUNK_BYTES, MAX_CAS_DIGESTS};
use apiary_protocol::{CasBlob, ErrorCode, ErrorReply, Reply, Request};
use apiary_storage::cas::{CasError, ContentStore, LocalStore};

use super::cas_gc::{GcPass, GcReport};
use crate::auth::{Grants, Permission};
use crate::core::{CasRoots, ConnId, Input};
use crate::logging;
use crate::server::input_check;

/// The default of `--cas-max-bytes`.
pub const DEFAULT_CAS_MAX_BYTES: u64 = 100 << 30;
/// Bytes held by jobs queued for the store or answered and not yet taken by
/// the loop: a few dozen transfers at full size run at once.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// What a task creation waiting for its inputs' check is counted as holding.
pub const INPUT_CHECK_BYTES: usize = 64 << 10;
/// Jobs queued for the store thread at most (each connection has one at a time).
const MAX_QUEUED_JOBS: usize = 1024;
/// Counted for a job besides its data, so that jobs without data are bounded too.
const JOB_OVERHEAD_BYTES: usize = 1024;
/// Bytes a digest takes in a request or an answer, at most.
const DIGEST_BYTES: usize = 48;
/// Requests served, while a garbage collection pass runs, between two of its
/// steps at most: a busy store still finishes a pass.
const REQUESTS_PER_GC_STEP: usize = 8;

/// Whether a request is for the content-addressed store (served here, not by the core).
pub fn is_cas_request(request: &Request) -> bool {
    matches!(
        request,
        Request::CasFindMissing { .. }
            | Request::CasBatchUpload { .. }
            | Request::CasUploadStart { .. }
            | Request::CasUploadChunk { .. }
            | Request::CasBatchRead { .. }
            | Request::CasRead { .. }
    )
}

/// The permission a store request needs: `read_cas` or `write_cas`, held in any pool.
fn needed_permission(request: &Request) -> Permission {
    match request {
        Request::CasBatchUpload { .. } | Request::CasUploadStart { .. } | Request::CasUploadChunk { .. } => {
            Permission::WriteCas
        }
        _ => Permission::ReadCas,
    }
}

/// The refusal of a store request the caller may not make (`grants` is `None`
/// while access is open), naming the permission.
pub fn refuse_permission(principal: Option<&str>, grants: Option<&Grants>, request: &Request) -> Option<ErrorReply> {
    let permission = needed_permission(request);
    if grants.is_none_or(|grants| grants.allows_somewhere(permission)) {
        return None;
    }
    let message = format!(
        "permission {}: principal {} lacks it in every pool (the content-addressed store needs it in any one)",
        permission.name(),
        principal.unwrap_or("(open access)")
    );
    Some(ErrorReply { code: ErrorCode::PermissionDenied, message })
}

/// Checks a store request against the protocol's limits; the refusal names
/// the field and the limit. Returns the bytes the job holds until answered.
pub fn check_limits(request: &Request) -> Result<usize, String> {
    let digests = |field: &str, count: usize| {
        if count > MAX_CAS_DIGESTS {
            return Err(format!("{field}: {count} entries, over the limit of {MAX_CAS_DIGESTS} (MAX_CAS_DIGESTS)"));
        }
        Ok(count * DIGEST_BYTES)
    };
    let chunk = |field: &str, bytes: u64| {
        if bytes > MAX_CAS_CHUNK_BYTES as u64 {
            return Err(format!(
                "{field}: {bytes} bytes, over the limit of {MAX_CAS_CHUNK_BYTES} (MAX_CAS_CHUNK_BYTES)"
            ));
        }
        Ok(bytes as usize)
    };
    let batch = |field: &str, bytes: u64| {
        if bytes > MAX_CAS_BATCH_BYTES as u64 {
            return Err(format!(
                "{field}: {bytes} bytes in all, over the limit of {MAX_CAS_BATCH_BYTES} (MAX_CAS_BATCH_BYTES); send \
                 larger blobs in chunks"
            ));
        }
        Ok(bytes as usize)
    };
    let held = match request {
        Request::CasFindMissing { digests: asked } => digests("digests", asked.len())? * 2,
        Request::CasBatchUpload { blobs } => {
            let data: u64 = blobs.iter().map(|blob| blob.data.len() as u64).sum();
            digests("blobs", blobs.len())? + batch("blobs", data)?
        }
        Request::CasUploadStart { .. } => 0,
        Request::CasUploadChunk { data, .. } => chunk("data", data.len() as u64)?,
        Request::CasBatchRead { digests: asked } => {
            let sizes = asked.iter().fold(0u64, |sum, digest| sum.saturating_add(digest.size_bytes));
            digests("digests", asked.len())? + batch("digests (the sizes of the blobs asked for)", sizes)?
        }
        Request::CasRead { max_bytes, .. } => chunk("max_bytes", u64::from(*max_bytes))?,
        _ => unreachable!("check_limits is given store requests only"),
    };
    Ok(held + JOB_OVERHEAD_BYTES)
}

/// What the store thread is asked to do.
pub enum Work {
    /// A store request from a client or a bot.
    Request(Request),
    /// A task's creation whose input trees must be whole in the store first
    /// (`server::input_check`); it goes back to the loop, for the core.
    CheckInputs(Box<Input>),
}

/// A job on its way to the thread.
struct Job {
    conn: ConnId,
    request_id: u64,
    work: Work,
}

/// What the thread is given.
enum Message {
    /// A job, and the bytes it holds.
    Job(Job, usize),
    /// Start a garbage collection pass.
    CollectGarbage { roots: CasRoots, unused_since: SystemTime },
}

/// What the thread answers.
pub enum Answer {
    /// Boxed: a reply is large, and a completion passes through a channel.
    Reply(Box<Reply>),
    /// The creation to hand to the core, or why it is refused.
    InputsChecked(Result<Box<Input>, ErrorReply>),
}

/// A job done.
pub struct Completion {
    pub conn: ConnId,
    pub request_id: u64,
    pub answer: Answer,
    /// The bytes the job held, given back when the loop takes the completion.
    pub held_bytes: usize,
}

/// The loop's side of the store thread.
pub struct CasService {
    jobs: SyncSender<Message>,
    completions: Receiver<Completion>,
    gc_reports: Receiver<GcReport>,
    held_bytes: usize,
}

impl CasService {
    /// Opens the store in `dir` (created if need be) and starts its thread.
    /// A use of a blob is written at most once per `use_refresh`.
    pub fn start(
        dir: &Path,
        limit_bytes: u64,
        use_refresh: Duration,
        waker: Arc<mio::Waker>,
    ) -> Result<CasService, CasError> {
        let mut store = LocalStore::open(dir, limit_bytes)?;
        store.set_use_refresh(use_refresh);
        let (stored_blobs, (stored_bytes, _)) = (store.blob_count(), store.usage());
        logging::info(format!(
            "content-addressed store {}: {stored_blobs} blobs, {stored_bytes} bytes, limit {limit_bytes} bytes \
             (--cas-max-bytes)",
            dir.display()
        ));
        let (jobs, job_receiver) = mpsc::sync_channel(MAX_QUEUED_JOBS);
        let (completion_sender, completions) = mpsc::channel();
        let (report_sender, gc_reports) = mpsc::channel();
        let answers = Answers { completions: completion_sender, gc_reports: report_sender, waker };
        thread::Builder::new()
            .name("apiary-cas".into())
            .spawn(move || serve(store, job_receiver, answers))
            .map_err(|source| CasError::Io { context: "cannot start the store's thread".into(), source })?;
        Ok(CasService { jobs, completions, gc_reports, held_bytes: 0 })
    }

    /// Queues a garbage collection pass over what `roots` does not name and
    /// was not used since `unused_since`. The caller starts one at a time
    /// (`GcSchedule`); `false` when the queue is full, to be tried again.
    pub fn collect_garbage(&mut self, roots: CasRoots, unused_since: SystemTime) -> bool {
        self.jobs.try_send(Message::CollectGarbage { roots, unused_since }).is_ok()
    }

    /// The report of the pass that finished, if one did.
    pub fn next_gc_report(&mut self) -> Option<GcReport> {
        self.gc_reports.try_recv().ok()
    }

    /// Queues checked work holding `held_bytes`; refused when the queue is
    /// full (by bytes or by jobs).
    pub fn submit(&mut self, conn: ConnId, request_id: u64, work: Work, held_bytes: usize) -> Result<(), ErrorReply> {
        let busy = |what: String| ErrorReply {
            code: ErrorCode::Unavailable,
            message: format!("the content-addressed store is busy: {what}; send the request again shortly"),
        };
        if self.held_bytes + held_bytes > MAX_QUEUED_BYTES {
            let held = self.held_bytes;
            return Err(busy(format!("its transfers hold {held} bytes, at the limit of {MAX_QUEUED_BYTES}")));
        }
        match self.jobs.try_send(Message::Job(Job { conn, request_id, work }, held_bytes)) {
            Ok(()) => {
                self.held_bytes += held_bytes;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(_)) => Err(busy(format!("{MAX_QUEUED_JOBS} requests are queued"))),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(ErrorReply {
                code: ErrorCode::Internal,
                message: "the content-addressed store's thread has stopped".into(),
            }),
        }
    }

    /// The next answered request, if any; its bytes are given back.
    pub fn next_completion(&mut self) -> Option<Completion> {
        match self.completions.try_recv() {
            Ok(completion) => {
                self.held_bytes -= completion.held_bytes;
                Some(completion)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }
}

/// Where the thread's answers go.
struct Answers {
    completions: mpsc::Sender<Completion>,
    gc_reports: mpsc::Sender<GcReport>,
    waker: Arc<mio::Waker>,
}

/// The store thread: runs requests in order, and the steps of a garbage
/// collection pass between them, until the loop goes away.
fn serve(mut store: LocalStore, work: Receiver<Message>, answers: Answers) {
    let mut pass: Option<GcPass> = None;
    let mut served_since_step = 0;
    loop {
        let next = match &pass {
            None => work.recv().ok(),
            Some(_) if served_since_step < REQUESTS_PER_GC_STEP => match work.try_recv() {
                Ok(next) => Some(next),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            },
            Some(_) => None,
        };
        let Some(next) = next else {
            let Some(running) = &mut pass else { return };
            served_since_step = 0;
            if let Some(report) = running.step(&mut store) {
                pass = None;
                if answers.gc_reports.send(report).is_err() {
                    return;
                }
                let _ = answers.waker.wake();
            }
            continue;
        };
        match next {
            Message::Job(job, held_bytes) => {
                served_since_step += 1;
                let answer = match job.work {
                    Work::Request(request) => {
                        let reply = run(&mut store, request).unwrap_or_else(|error| Reply::Error(refusal_of(error)));
                        Answer::Reply(Box::new(reply))
                    }
                    Work::CheckInputs(input) => Answer::InputsChecked(check_inputs(&mut store, input)),
                };
                let completion = Completion { conn: job.conn, request_id: job.request_id, answer, held_bytes };
                if answers.completions.send(completion).is_err() {
                    return;
                }
                let _ = answers.waker.wake();
            }
            // The loop starts one pass at a time; a second would only repeat it.
            Message::CollectGarbage { roots, unused_since } => {
                pass.get_or_insert_with(|| GcPass::new(roots, unused_since));
            }
        }
    }
}

/// Runs one request against the store.
fn run(store: &mut impl ContentStore, request: Request) -> Result<Reply, CasError> {
    Ok(match request {
        Request::CasFindMissing { digests } => Reply::CasMissing { digests: store.find_missing(&digests) },
        Request::CasBatchUpload { blobs } => {
            store.put_batch(&blobs)?;
            Reply::CasStored
        }
        Request::CasUploadStart { digest } => Reply::CasUploadOffset { offset: store.upload_offset(digest)? },
        Request::CasUploadChunk { digest, offset, data } => {
            let stored = store.append(digest, offset, &data)?;
            Reply::CasUploadOffset { offset: if stored { digest.size_bytes } else { offset + data.len() as u64 } }
        }
        Request::CasBatchRead { digests } => {
            let mut blobs = Vec::with_capacity(digests.len());
            for digest in digests {
                blobs.push(CasBlob { digest, data: read_whole(store, digest)? });
            }
            Reply::CasBlobs { blobs }
        }
        Request::CasRead { digest, offset, max_bytes } => {
            Reply::CasData { data: store.read(digest, offset, max_bytes as usize)? }
        }
        _ => unreachable!("only store requests are queued"),
    })
}

/// The creation back, when every input tree it names is whole in the store.
fn check_inputs(store: &mut impl ContentStore, input: Box<Input>) -> Result<Box<Input>, ErrorReply> {
    let Input::Request { request, .. } = input.as_ref() else { return Ok(input) };
    match input_check::refuse_incomplete(store, &input_check::input_roots(request)) {
        Some(refusal) => Err(refusal),
        None => Ok(input),
    }
}

/// A blob small enough for a batch (`check_limits` saw to it), read whole.
fn read_whole(store: &mut impl ContentStore, digest: Digest) -> Result<Vec<u8>, CasError> {
    store.read(digest, 0, digest.size_bytes as usize)
}

/// The error reply for a failed store operation; corruption and I/O are logged.
fn refusal_of(error: CasError) -> ErrorReply {
    let code = match &error {
        CasError::NotFound(_) => ErrorCode::NotFound,
        CasError::Corrupt(_) => {
            logging::warn(format!("content-addressed store: {error}"));
            ErrorCode::NotFound
        }
        CasError::Mismatch { .. } | CasError::OutOfOrder { .. } | CasError::TooLong { .. } => ErrorCode::InvalidRequest,
        CasError::Full { .. } => ErrorCode::ResourceExhausted,
        CasError::Io { .. } => {
            logging::error(format!("content-addressed store: {error}"));
            ErrorCode::Internal
        }
    };
    ErrorReply { code, message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_over_the_limits_are_refused_by_field_and_limit() {
        let digest = Digest::of(b"x");
        let too_many = Request::CasFindMissing { digests: vec![digest; MAX_CAS_DIGESTS + 1] };
        let error = check_limits(&too_many).unwrap_err();
        assert!(error.contains("digests: 8193 entries, over the limit of 8192 (MAX_CAS_DIGESTS)"), "{error}");
        let chunk = Request::CasUploadChunk { digest, offset: 0, data: vec![0; MAX_CAS_CHUNK_BYTES + 1] };
        assert!(check_limits(&chunk).unwrap_err().starts_with("data: 1048577 bytes, over the limit of 1048576"));
        let read = Request::CasRead { digest, offset: 0, max_bytes: MAX_CAS_CHUNK_BYTES as u32 + 1 };
        assert!(check_limits(&read).unwrap_err().contains("max_bytes"));
        let large = Digest { size_bytes: MAX_CAS_BATCH_BYTES as u64, ..digest };
        let batch = Request::CasBatchRead { digests: vec![large, digest] };
        assert!(check_limits(&batch).unwrap_err().contains("MAX_CAS_BATCH_BYTES"));
        let fine = Request::CasBatchRead { digests: vec![large] };
        assert!(check_limits(&fine).unwrap() >= MAX_CAS_BATCH_BYTES);
    }

    #[test]
    fn the_store_permissions_are_held_in_any_pool() {
        let upload = Request::CasUploadStart { digest: Digest::of(b"x") };
        let read = Request::CasFindMissing { digests: Vec::new() };
        let mut grants = Grants::default();
        grants.grant(Permission::ReadCas, "ci");
        assert!(refuse_permission(Some("bob"), Some(&grants), &read).is_none());
        let refusal = refuse_permission(Some("bob"), Some(&grants), &upload).unwrap();
        assert_eq!(refusal.code, ErrorCode::PermissionDenied);
        assert!(refusal.message.starts_with("permission write_cas: principal bob lacks it"), "{}", refusal.message);
        assert!(refuse_permission(None, None, &upload).is_none(), "open access allows everything");
    }

    #[test]
    fn a_corrupt_blob_is_refused_as_not_found_and_a_full_store_as_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(dir.path(), 4).unwrap();
        let full = run(
            &mut store,
            Request::CasBatchUpload { blobs: vec![CasBlob { digest: Digest::of(b"12345"), data: b"12345".to_vec() }] },
        );
        let refusal = refusal_of(full.unwrap_err());
        assert_eq!(refusal.code, ErrorCode::ResourceExhausted);
        assert!(refusal.message.contains("over its limit of 4 bytes (--cas-max-bytes)"), "{}", refusal.message);
        let missing = run(&mut store, Request::CasBatchRead { digests: vec![Digest::of(b"gone")] });
        assert_eq!(refusal_of(missing.unwrap_err()).code, ErrorCode::NotFound);
    }
}

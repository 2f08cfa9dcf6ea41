//! Moving trees between a client and the daemon's store, on the binary
//! protocol: what the CLI uses, and what the bot will use for a task's inputs
//! and outputs.
//!
//! Uploading asks which blobs the store lacks (`CasFindMissing`), sends the
//! small ones in batches (`CasBatchUpload`, up to `MAX_CAS_BATCH_BYTES`) and
//! the large ones in chunks (`CasUploadStart` then `CasUploadChunk`), which
//! continue an upload that was interrupted. Downloading checks every blob
//! against its digest as it arrives: small files come in batches
//! (`CasBatchRead`), a large one a chunk at a time (`CasRead`), hashed as it is
//! written, never held whole.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::digest::{Digest, DigestWriter};
use super::materialize::{MaterializeError, TreeCounts, TreeSource, materialize};
use super::reapi::Directory;
use super::tree::Archive;
use crate::client::{Client, ClientError};
use crate::limits::{MAX_CAS_BATCH_BYTES, MAX_CAS_CHUNK_BYTES, MAX_CAS_DIGESTS};
use crate::messages::{CasBlob, ErrorCode, Reply, Request};

/// What the transfer needs of a connection to the daemon.
pub trait Call {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError>;
}

impl Call for Client {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        Client::call(self, request)
    }
}

/// The first pause before a request the daemon was too busy for is sent again;
/// each next one doubles, up to `BUSY_PAUSE_MAX`, for `BUSY_PATIENCE` in all.
const BUSY_PAUSE_FIRST: Duration = Duration::from_millis(50);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(1);
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

/// One request, sent again while the daemon answers that it is too busy
/// (`Unavailable`: its store's queue is full); any other answer is returned.
fn ask(daemon: &mut impl Call, request: &Request) -> Result<Reply, ClientError> {
    let give_up_at = Instant::now() + BUSY_PATIENCE;
    let mut pause = BUSY_PAUSE_FIRST;
    loop {
        match daemon.call(request) {
            Err(ClientError::Refused { code: ErrorCode::Unavailable, .. }) if Instant::now() + pause < give_up_at => {
                thread::sleep(pause);
                pause = (pause * 2).min(BUSY_PAUSE_MAX);
            }
            answer => return answer,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Daemon(#[from] ClientError),
    #[error("the daemon answered a {request} with an unexpected reply")]
    Unexpected { request: &'static str },
    #[error("blob {expected} came back as {actual}: its bytes do not match its digest")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("{path} changed while it was archived: it now has digest {actual}, not {expected}")]
    Changed { path: PathBuf, expected: Digest, actual: Digest },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Materialize(#[from] MaterializeError),
}

/// What an upload moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadCounts {
    /// Distinct blobs in the tree (files and directories), and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Those the store lacked and that were sent.
    pub uploaded_blobs: u64,
    pub uploaded_bytes: u64,
}

/// Uploads every blob of `archive` that the store lacks.
pub fn upload(daemon: &mut impl Call, archive: &Archive) -> Result<UploadCounts, TransferError> {
    let digests: BTreeSet<Digest> = archive.directories.keys().chain(archive.files.keys()).copied().collect();
    let digests: Vec<Digest> = digests.into_iter().collect();
    let mut counts = UploadCounts {
        blobs: digests.len() as u64,
        blob_bytes: digests.iter().map(|digest| digest.size_bytes).sum(),
        ..UploadCounts::default()
    };
    let missing = find_missing(daemon, &digests)?;
    let (small, large): (Vec<Digest>, Vec<Digest>) =
        missing.iter().partition(|digest| digest.size_bytes <= MAX_CAS_CHUNK_BYTES as u64);
    let mut batch = Batch::default();
    for digest in small {
        if !batch.has_room_for(digest) {
            batch.send(daemon)?;
        }
        batch.blobs.push(CasBlob { digest, data: blob_bytes(archive, digest)? });
        batch.bytes += digest.size_bytes as usize;
    }
    batch.send(daemon)?;
    for digest in large {
        let path = archive.files.get(&digest).expect("only files are larger than a chunk");
        upload_in_chunks(daemon, digest, path)?;
    }
    counts.uploaded_blobs = missing.len() as u64;
    counts.uploaded_bytes = missing.iter().map(|digest| digest.size_bytes).sum();
    Ok(counts)
}

/// Those of `digests` the store lacks, asked in requests of at most `MAX_CAS_DIGESTS`.
pub fn find_missing(daemon: &mut impl Call, digests: &[Digest]) -> Result<Vec<Digest>, TransferError> {
    let mut missing = Vec::new();
    for part in digests.chunks(MAX_CAS_DIGESTS) {
        match ask(daemon, &Request::CasFindMissing { digests: part.to_vec() })? {
            Reply::CasMissing { digests } => missing.extend(digests),
            _ => return Err(TransferError::Unexpected { request: "CasFindMissing" }),
        }
    }
    Ok(missing)
}

/// Small blobs gathered for one `CasBatchUpload`.
#[derive(Default)]
struct Batch {
    blobs: Vec<CasBlob>,
    bytes: usize,
}

impl Batch {
    fn has_room_for(&self, digest: Digest) -> bool {
        self.blobs.len() < MAX_CAS_DIGESTS && self.bytes + digest.size_bytes as usize <= MAX_CAS_BATCH_BYTES
    }

    fn send(&mut self, daemon: &mut impl Call) -> Result<(), TransferError> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let blobs = std::mem::take(&mut self.blobs);
        self.bytes = 0;
        match ask(daemon, &Request::CasBatchUpload { blobs })? {
            Reply::CasStored => Ok(()),
            _ => Err(TransferError::Unexpected { request: "CasBatchUpload" }),
        }
    }
}

/// The bytes of a small blob: a directory's encoding, or a file read whole
/// and checked against the digest it had when the tree was read.
fn blob_bytes(archive: &Archive, digest: Digest) -> Result<Vec<u8>, TransferError> {
    if let Some(bytes) = archive.directories.get(&digest) {
        return Ok(bytes.clone());
    }
    let path = archive.files.get(&digest).expect("every digest of an archive is a directory or a file");
    let bytes = fs::read(path).map_err(|source| TransferError::Io { path: path.clone(), source })?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(TransferError::Changed { path: path.clone(), expected: digest, actual });
    }
    Ok(bytes)
}

/// Sends a large file in chunks, from where the store says its upload stands.
pub fn upload_in_chunks(daemon: &mut impl Call, digest: Digest, path: &Path) -> Result<(), TransferError> {
    let io_error = |source| TransferError::Io { path: path.to_path_buf(), source };
    let mut offset = match ask(daemon, &Request::CasUploadStart { digest })? {
        Reply::CasUploadOffset { offset } => offset,
        _ => return Err(TransferError::Unexpected { request: "CasUploadStart" }),
    };
    let mut file = File::open(path).map_err(io_error)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    while offset < digest.size_bytes {
        let wanted = (digest.size_bytes - offset).min(MAX_CAS_CHUNK_BYTES as u64) as usize;
        let mut data = vec![0u8; wanted];
        file.read_exact(&mut data).map_err(io_error)?;
        // A file that changed since it was archived is refused by the store,
        // which checks the whole upload against its digest.
        match ask(daemon, &Request::CasUploadChunk { digest, offset, data })? {
            Reply::CasUploadOffset { offset: next } if next > offset => offset = next,
            _ => return Err(TransferError::Unexpected { request: "CasUploadChunk" }),
        }
    }
    Ok(())
}

/// Reads a whole blob into memory, checked: for directory blobs.
pub fn fetch_blob(daemon: &mut impl Call, digest: Digest) -> Result<Vec<u8>, TransferError> {
    let mut bytes = Vec::new();
    fetch_into(daemon, digest, &mut bytes).map_err(|error| error.into_transfer(Path::new("(memory)")))?;
    Ok(bytes)
}

/// Streams a blob into `out` a chunk at a time (`CasRead`), never holding it
/// whole; fails when the bytes do not match the digest. For a caller that
/// keeps blobs itself, such as the bot's cache.
pub fn stream_blob(daemon: &mut impl Call, digest: Digest, out: &mut impl Write) -> Result<(), TransferError> {
    fetch_into(daemon, digest, out).map_err(|error| error.into_transfer(Path::new("(the blob's destination)")))
}

/// Reads small blobs in one `CasBatchRead` (their sizes add up to at most
/// `MAX_CAS_BATCH_BYTES`, at most `MAX_CAS_DIGESTS` of them), each checked
/// against its digest.
pub fn read_batch(daemon: &mut impl Call, digests: Vec<Digest>) -> Result<Vec<CasBlob>, TransferError> {
    let blobs = match ask(daemon, &Request::CasBatchRead { digests })? {
        Reply::CasBlobs { blobs } => blobs,
        _ => return Err(TransferError::Unexpected { request: "CasBatchRead" }),
    };
    for blob in &blobs {
        let actual = Digest::of(&blob.data);
        if actual != blob.digest {
            return Err(TransferError::Mismatch { expected: blob.digest, actual });
        }
    }
    Ok(blobs)
}

/// A failure while fetching into a writer: the daemon's, or the writer's.
enum FetchError {
    Transfer(TransferError),
    Write(io::Error),
}

impl FetchError {
    fn into_transfer(self, path: &Path) -> TransferError {
        match self {
            FetchError::Transfer(error) => error,
            FetchError::Write(source) => TransferError::Io { path: path.to_path_buf(), source },
        }
    }
}

/// Streams a blob into `out` a chunk at a time, hashing it as it goes; fails
/// (after writing) when the bytes do not match the digest.
fn fetch_into(daemon: &mut impl Call, digest: Digest, out: &mut impl Write) -> Result<(), FetchError> {
    let mut out = DigestWriter::new(out);
    let mut offset = 0u64;
    while offset < digest.size_bytes {
        let max_bytes = (digest.size_bytes - offset).min(MAX_CAS_CHUNK_BYTES as u64) as u32;
        let request = Request::CasRead { digest, offset, max_bytes };
        let data = match ask(daemon, &request).map_err(|error| FetchError::Transfer(error.into()))? {
            Reply::CasData { data } if !data.is_empty() => data,
            _ => return Err(FetchError::Transfer(TransferError::Unexpected { request: "CasRead" })),
        };
        out.write_all(&data).map_err(FetchError::Write)?;
        offset += data.len() as u64;
    }
    let (_, actual) = out.finish();
    if actual != digest {
        return Err(FetchError::Transfer(TransferError::Mismatch { expected: digest, actual }));
    }
    Ok(())
}

/// Writes the tree `root` names into `dest` (an existing, empty directory).
pub fn download(daemon: &mut impl Call, root: Digest, dest: &Path) -> Result<TreeCounts, TransferError> {
    materialize(&mut StoreSource::new(daemon), root, dest)
}

/// A tree's blobs, fetched from the daemon's store: directories a batch at a
/// time (the subdirectories seen so far, about a level of the tree a round
/// trip), small files in batches (`CasBatchRead`), large ones in chunks.
struct StoreSource<'a, D: Call> {
    daemon: &'a mut D,
    /// Subdirectories named by the directories read, not fetched yet.
    directories_named: VecDeque<Digest>,
    /// Directories fetched ahead and not read yet (at most `AHEAD_BYTES`).
    directories_ahead: HashMap<Digest, Vec<u8>>,
    /// Every directory named so far, so each is fetched once.
    directories_seen: HashSet<Digest>,
    /// The small files of the directories read, in the order they were read
    /// (the order they are written in, mostly): what the next batch fetches.
    small_files: VecDeque<Digest>,
    /// The last batch's blobs, checked against their digests (at most
    /// `MAX_CAS_BATCH_BYTES`; dropped when the next batch comes).
    fetched: HashMap<Digest, Vec<u8>>,
}

/// Bytes of directories fetched ahead of their reading, at most: a tree walked
/// depth first may leave a batch a level unread.
const AHEAD_BYTES: usize = 4 * MAX_CAS_BATCH_BYTES;

impl<'a, D: Call> StoreSource<'a, D> {
    fn new(daemon: &'a mut D) -> StoreSource<'a, D> {
        StoreSource {
            daemon,
            directories_named: VecDeque::new(),
            directories_ahead: HashMap::new(),
            directories_seen: HashSet::new(),
            small_files: VecDeque::new(),
            fetched: HashMap::new(),
        }
    }

    /// Fetches the directory `first`, with the other directories named and not
    /// fetched yet as far as a batch and `AHEAD_BYTES` allow; the directories
    /// fetched name theirs, so the next batch reaches a level further down.
    fn fetch_directories(&mut self, first: Digest) -> Result<(), TransferError> {
        let ahead: usize = self.directories_ahead.values().map(Vec::len).sum();
        let mut digests = vec![first];
        let mut bytes = first.size_bytes as usize;
        while let Some(&next) = self.directories_named.front() {
            let size = next.size_bytes as usize;
            if digests.len() == MAX_CAS_DIGESTS
                || bytes + size > MAX_CAS_BATCH_BYTES
                || ahead + bytes + size > AHEAD_BYTES
            {
                break;
            }
            self.directories_named.pop_front();
            if next != first {
                bytes += size;
                digests.push(next);
            }
        }
        for blob in read_batch(self.daemon, digests)? {
            self.name_subdirectories(&blob.data);
            self.directories_ahead.insert(blob.digest, blob.data);
        }
        Ok(())
    }

    /// Queues the subdirectories a directory names that were not named before.
    fn name_subdirectories(&mut self, bytes: &[u8]) {
        // Materializing checks the blob; one that does not decode here fails there.
        let Ok(directory) = Directory::decode_checked(bytes) else { return };
        for child in &directory.directories {
            if let Some(digest) = child.digest.as_ref().and_then(|digest| digest.to_digest().ok())
                && self.directories_seen.insert(digest)
            {
                self.directories_named.push_back(digest);
            }
        }
    }

    /// Fetches `first` and the small files that follow it, as one batch.
    fn fetch_batch(&mut self, first: Digest) -> Result<(), TransferError> {
        self.fetched.clear();
        let mut digests = vec![first];
        let mut bytes = first.size_bytes as usize;
        while let Some(&next) = self.small_files.front() {
            if digests.len() == MAX_CAS_DIGESTS || bytes + next.size_bytes as usize > MAX_CAS_BATCH_BYTES {
                break;
            }
            self.small_files.pop_front();
            if !digests.contains(&next) {
                bytes += next.size_bytes as usize;
                digests.push(next);
            }
        }
        let blobs = match ask(self.daemon, &Request::CasBatchRead { digests })? {
            Reply::CasBlobs { blobs } => blobs,
            _ => return Err(TransferError::Unexpected { request: "CasBatchRead" }),
        };
        for blob in blobs {
            let actual = Digest::of(&blob.data);
            if actual != blob.digest {
                return Err(TransferError::Mismatch { expected: blob.digest, actual });
            }
            self.fetched.insert(blob.digest, blob.data);
        }
        Ok(())
    }

    /// Writes a small file from the current batch, fetching the batch it is in first.
    fn write_small(&mut self, digest: Digest, file: &mut File) -> Result<(), FetchError> {
        if !self.fetched.contains_key(&digest) {
            self.fetch_batch(digest).map_err(FetchError::Transfer)?;
        }
        let bytes = self
            .fetched
            .get(&digest)
            .ok_or(FetchError::Transfer(TransferError::Unexpected { request: "CasBatchRead" }))?;
        file.write_all(bytes).map_err(FetchError::Write)
    }
}

/// Whether a file is fetched in a batch rather than in chunks.
fn is_small(digest: Digest) -> bool {
    0 < digest.size_bytes && digest.size_bytes <= MAX_CAS_CHUNK_BYTES as u64
}

impl<D: Call> TreeSource for StoreSource<'_, D> {
    type Error = TransferError;

    fn directory(&mut self, digest: Digest) -> Result<Vec<u8>, TransferError> {
        self.directories_seen.insert(digest);
        if !self.directories_ahead.contains_key(&digest) {
            if digest.size_bytes > MAX_CAS_BATCH_BYTES as u64 {
                let bytes = fetch_blob(self.daemon, digest)?;
                self.name_subdirectories(&bytes);
                self.directories_ahead.insert(digest, bytes);
            } else {
                self.fetch_directories(digest)?;
            }
        }
        let bytes =
            self.directories_ahead.remove(&digest).ok_or(TransferError::Unexpected { request: "CasBatchRead" })?;
        // Materializing checks the blob; one that does not decode here fails there.
        if let Ok(directory) = Directory::decode_checked(&bytes) {
            let files = directory.files.iter().filter_map(|file| file.digest.as_ref()?.to_digest().ok());
            self.small_files.extend(files.filter(|digest| is_small(*digest)));
        }
        Ok(bytes)
    }

    fn place_file(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<(), TransferError> {
        let io_error = |source| TransferError::Io { path: path.to_path_buf(), source };
        let mut file = File::create_new(path).map_err(io_error)?;
        let written = match is_small(digest) {
            true => self.write_small(digest, &mut file),
            false => fetch_into(self.daemon, digest, &mut file),
        };
        if let Err(error) = written {
            let _ = fs::remove_file(path);
            return Err(error.into_transfer(path));
        }
        let mode = if executable { 0o755 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::memory_store::MemoryStore;

    #[test]
    fn a_tree_goes_up_in_batches_and_chunks_and_comes_back_the_same() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // More small files than one batch holds by bytes, and a file over two chunks.
        for index in 0..40 {
            fs::write(from.path().join(format!("small-{index}")), vec![index as u8; 100 << 10]).unwrap();
        }
        let large: Vec<u8> = (0..2 * MAX_CAS_CHUNK_BYTES + 5).map(|index| (index % 253) as u8).collect();
        fs::write(from.path().join("large"), &large).unwrap();
        let archive = Archive::of_directory_contents(from.path()).unwrap();
        let mut store = MemoryStore::default();

        let counts = upload(&mut store, &archive).unwrap();
        assert_eq!((counts.blobs, counts.uploaded_blobs), (42, 42));
        let batches = store.requests.iter().filter(|request| **request == "batch").count();
        assert_eq!(batches, 2, "4 MiB of small blobs take two batches of at most 3 MiB");
        assert_eq!(store.requests.iter().filter(|request| **request == "chunk").count(), 3);

        store.requests.clear();
        store.busy = 2;
        let again = upload(&mut store, &archive).unwrap();
        assert_eq!((again.uploaded_blobs, again.uploaded_bytes), (0, 0));
        assert_eq!(
            store.requests,
            ["busy", "busy", "find"],
            "sent again while busy; an unchanged tree costs one question"
        );

        store.requests.clear();
        download(&mut store, archive.root, to.path()).unwrap();
        assert!(fs::read(to.path().join("large")).unwrap() == large);
        let count = |kind: &str| store.requests.iter().filter(|request| **request == kind).count();
        assert_eq!(
            count("batch read"),
            1 + 2,
            "the root directory, then 4 MiB of small files in two batches: {:?}",
            store.requests
        );
        assert_eq!(count("read"), 3, "the large file in three chunks");
        assert_eq!(Archive::of_directory_contents(to.path()).unwrap().root, archive.root);
    }

    #[test]
    fn a_download_reads_the_directories_of_a_level_in_one_batch() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for index in 0..20 {
            let dir = from.path().join(format!("dir-{index}"));
            fs::create_dir_all(dir.join("inner")).unwrap();
            fs::write(dir.join("inner/file"), format!("file {index}")).unwrap();
        }
        let archive = Archive::of_directory_contents(from.path()).unwrap();
        let mut store = MemoryStore::default();
        upload(&mut store, &archive).unwrap();
        store.requests.clear();
        download(&mut store, archive.root, to.path()).unwrap();
        let batches = store.requests.iter().filter(|request| **request == "batch read").count();
        // The root, its 20 children, their 20 children, and the 20 files: not 41 round trips for directories.
        assert!(batches <= 4, "{:?}", store.requests);
        assert_eq!(Archive::of_directory_contents(to.path()).unwrap().root, archive.root);
    }

    #[test]
    fn an_interrupted_chunked_upload_continues_from_the_store_s_offset() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3 * MAX_CAS_CHUNK_BYTES).map(|index| (index % 241) as u8).collect();
        let path = dir.path().join("blob");
        fs::write(&path, &bytes).unwrap();
        let digest = Digest::of(&bytes);
        let mut store = MemoryStore::default();
        store.uploads.insert(digest, bytes[..MAX_CAS_CHUNK_BYTES + 10].to_vec());

        upload_in_chunks(&mut store, digest, &path).unwrap();
        assert_eq!(store.requests, ["start", "chunk", "chunk"], "the first chunk's bytes are not sent again");
        assert!(store.blobs[&digest] == bytes);
    }

    #[test]
    fn a_blob_whose_bytes_do_not_match_is_refused_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = MemoryStore::default();
        let claimed = Digest::of(b"the real bytes");
        store.blobs.insert(claimed, b"other bytes!!!".to_vec());
        let path = dir.path().join("file");
        let mut source = StoreSource::new(&mut store);
        let error = source.place_file(claimed, false, &path).unwrap_err();
        assert!(matches!(error, TransferError::Mismatch { expected, .. } if expected == claimed), "{error}");
        assert!(!path.exists(), "a file that failed its check is not left behind");
    }
}

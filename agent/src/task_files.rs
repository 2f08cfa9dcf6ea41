//! A task's files in the daemon's content-addressed store: its inputs in
//! before the command, its outputs out after it.
//!
//! Inputs: the tree `cas_input_root` names is written into the task's work
//! directory. Each file comes from the bot's content cache (`content_cache.rs`)
//! when it is there, and is otherwise downloaded into the cache first: small
//! files in batches (`CasBatchRead`), large ones a chunk at a time (`CasRead`),
//! never held whole. Directory blobs are fetched ahead, each with the
//! subdirectories already known, so a tree costs about one round trip per
//! level; they are cached too, so a tree seen before downloads nothing.
//!
//! Outputs: everything under the task's output directory is archived and the
//! blobs the store lacks are uploaded; an empty directory has no root, as in
//! Swarming.
//!
//! Invariants: no byte enters the cache or the task's directory unchecked
//! against its digest; a blob the store lacks ends the run as the task's fault
//! (`missing_cas: ...`, naming the digests), any other failure as the bot's.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use apiary_protocol::cas::materialize::{MaterializeError, TreeSource, materialize};
use apiary_protocol::cas::reapi::Directory;
use apiary_protocol::cas::transfer::{self, Call, TransferError};
use apiary_protocol::cas::tree::Archive;
use apiary_protocol::cas::{CasTransferStats, Digest};
use apiary_protocol::limits::{MAX_CAS_BATCH_BYTES, MAX_CAS_CHUNK_BYTES, MAX_CAS_DIGESTS};
use apiary_protocol::{ClientError, ErrorCode, RunEnd};

use crate::content_cache::{ContentCache, ContentCacheError, Placed};

/// The most missing digests a `missing_cas` message names.
const MISSING_NAMED_MAX: usize = 10;

/// What fetching a task's inputs did: its figures, and how the run ends if
/// they could not all be written.
#[derive(Debug)]
pub(crate) struct InputsFetched {
    pub(crate) stats: CasTransferStats,
    pub(crate) result: Result<(), RunEnd>,
}

/// What uploading a task's outputs did.
#[derive(Debug)]
pub(crate) struct OutputsUploaded {
    /// None when the output directory was empty (or gone), or the upload failed.
    pub(crate) root: Option<Digest>,
    pub(crate) stats: CasTransferStats,
    /// Why the outputs are not in the store.
    pub(crate) error: Option<String>,
}

/// Writes the tree `root` names into `dest` (the task's work directory).
pub(crate) fn fetch_inputs(
    daemon: &mut impl Call,
    cache: &mut ContentCache,
    root: Digest,
    dest: &Path,
) -> InputsFetched {
    let started = Instant::now();
    let mut source = CachedStore::new(daemon, cache, root);
    let materialized = materialize(&mut source, root, dest);
    let mut stats = source.stats;
    let result = match materialized {
        Ok(_) => Ok(()),
        Err(error) if error.is_not_found() => Err(source.missing_end(root, &error)),
        Err(error) => Err(error.run_end(root)),
    };
    stats.duration_ms = elapsed_ms(started);
    InputsFetched { stats, result }
}

/// Uploads what the task left in `out_dir`; only the blobs the store lacks are sent.
pub(crate) fn upload_outputs(daemon: &mut impl Call, out_dir: &Path) -> OutputsUploaded {
    let started = Instant::now();
    let mut uploaded = OutputsUploaded { root: None, stats: CasTransferStats::default(), error: None };
    let is_empty = fs::read_dir(out_dir).map(|mut entries| entries.next().is_none());
    // A task may remove its output directory: then it left nothing.
    if is_empty.unwrap_or(true) {
        return uploaded;
    }
    let archived = Archive::of_directory_contents(out_dir)
        .map_err(|error| format!("cannot read the outputs: {error}"))
        .and_then(|archive| {
            let counts =
                transfer::upload(daemon, &archive).map_err(|error| format!("cannot upload the outputs: {error}"))?;
            Ok((archive.root, counts))
        });
    match archived {
        Ok((root, counts)) => {
            uploaded.root = Some(root);
            uploaded.stats.items_cold = counts.uploaded_blobs;
            uploaded.stats.bytes_cold = counts.uploaded_bytes;
            uploaded.stats.items_hot = counts.blobs - counts.uploaded_blobs;
            uploaded.stats.bytes_hot = counts.blob_bytes - counts.uploaded_bytes;
        }
        Err(error) => uploaded.error = Some(error),
    }
    uploaded.stats.duration_ms = elapsed_ms(started);
    uploaded
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    #[error("{0}")]
    Materialize(#[from] MaterializeError),
    #[error("{0}")]
    Transfer(#[from] TransferError),
    #[error("{0}")]
    Cache(#[from] ContentCacheError),
}

impl InputError {
    fn is_not_found(&self) -> bool {
        matches!(
            self,
            InputError::Transfer(TransferError::Daemon(ClientError::Refused { code: ErrorCode::NotFound, .. }))
        )
    }

    /// A tree that cannot be written as given is the task's fault; anything
    /// else (the connection, the disk, bytes that do not match) is the bot's.
    fn run_end(&self, root: Digest) -> RunEnd {
        let reason = format!("cannot write the input root {root}: {self}");
        match self {
            InputError::Materialize(
                MaterializeError::BadDirectory { .. } | MaterializeError::TooManyEntries | MaterializeError::TooDeep,
            ) => RunEnd::ClientError(reason),
            // A named cache already holds that path.
            InputError::Materialize(MaterializeError::Io { source, .. })
            | InputError::Transfer(TransferError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                RunEnd::ClientError(format!("{reason} (a named cache's path and an input collide)"))
            }
            _ => RunEnd::InternalError(reason),
        }
    }
}

/// A tree's blobs from the bot's cache, or else from the daemon's store.
struct CachedStore<'a, D: Call> {
    daemon: &'a mut D,
    cache: &'a mut ContentCache,
    /// Subdirectories named by the directories read and not fetched yet, in
    /// the order they were named: fetched along with the next one asked for.
    unread_directories: VecDeque<Digest>,
    /// Directories fetched ahead, until they are asked for.
    fetched_directories: HashMap<Digest, Vec<u8>>,
    /// The small files named by the directories read, in order: what the
    /// next batch of files may fetch.
    small_files: VecDeque<(Digest, bool)>,
    /// The last batch of files, checked (at most `MAX_CAS_BATCH_BYTES`).
    fetched_files: HashMap<Digest, Vec<u8>>,
    /// Every digest the tree named so far: where a missing blob is looked for.
    named: BTreeSet<Digest>,
    stats: CasTransferStats,
}

impl<'a, D: Call> CachedStore<'a, D> {
    fn new(daemon: &'a mut D, cache: &'a mut ContentCache, root: Digest) -> CachedStore<'a, D> {
        CachedStore {
            daemon,
            cache,
            unread_directories: VecDeque::new(),
            fetched_directories: HashMap::new(),
            small_files: VecDeque::new(),
            fetched_files: HashMap::new(),
            named: BTreeSet::from([root]),
            stats: CasTransferStats::default(),
        }
    }

    /// How a run ends when the store lacked a blob: which of the tree's blobs
    /// it lacks, as far as the tree was read.
    fn missing_end(&mut self, root: Digest, error: &InputError) -> RunEnd {
        let named: Vec<Digest> = self.named.iter().copied().filter(|digest| digest.size_bytes > 0).collect();
        let missing = match transfer::find_missing(self.daemon, &named) {
            Ok(missing) if !missing.is_empty() => missing,
            // Gone while it was read, or the question failed: the bot cannot say which.
            _ => return error.run_end(root),
        };
        RunEnd::ClientError(missing_cas_message(root, &missing))
    }

    /// Notes what a directory names: its subdirectories to fetch ahead, its
    /// small files to batch. One that does not decode fails in `materialize`.
    fn note_directory(&mut self, bytes: &[u8]) {
        let Ok(directory) = Directory::decode_checked(bytes) else { return };
        for file in &directory.files {
            let Some(digest) = file.digest.as_ref().and_then(|digest| digest.to_digest().ok()) else { continue };
            self.named.insert(digest);
            if is_small(digest) {
                self.small_files.push_back((digest, file.is_executable));
            }
        }
        for sub in &directory.directories {
            let Some(digest) = sub.digest.as_ref().and_then(|digest| digest.to_digest().ok()) else { continue };
            // Only what fits a batch is fetched ahead; an empty one needs no request.
            if self.named.insert(digest) && is_small(digest) {
                self.unread_directories.push_back(digest);
            }
        }
    }

    /// Fetches `first` and the unread directories that fit with it in one batch.
    fn fetch_directories(&mut self, first: Digest) -> Result<(), InputError> {
        let mut batch = BatchPlan::new(first);
        while let Some(&next) = self.unread_directories.front() {
            if !batch.has_room_for(next) {
                break;
            }
            self.unread_directories.pop_front();
            if !self.fetched_directories.contains_key(&next) && !self.cache.contains(next, false) {
                batch.add(next);
            }
        }
        for blob in transfer::read_batch(self.daemon, batch.digests)? {
            self.cache.keep(blob.digest, &blob.data)?;
            self.fetched_directories.insert(blob.digest, blob.data);
        }
        Ok(())
    }

    /// Fetches `first` and the small files after it that the cache lacks, in one batch.
    fn fetch_files(&mut self, first: Digest) -> Result<(), InputError> {
        self.fetched_files.clear();
        let mut batch = BatchPlan::new(first);
        while let Some(&(next, executable)) = self.small_files.front() {
            if !batch.has_room_for(next) {
                break;
            }
            self.small_files.pop_front();
            if !self.cache.contains(next, executable) {
                batch.add(next);
            }
        }
        for blob in transfer::read_batch(self.daemon, batch.digests)? {
            self.fetched_files.insert(blob.digest, blob.data);
        }
        Ok(())
    }

    /// Places a file that is fetched whole in a batch.
    fn place_small(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<Placed, InputError> {
        let cached = self.cache.contains(digest, executable);
        if !cached && !self.fetched_files.contains_key(&digest) {
            self.fetch_files(digest)?;
        }
        let bytes = self.fetched_files.get(&digest).map(Vec::as_slice);
        let write = |out: &mut dyn Write| match bytes {
            Some(bytes) => out.write_all(bytes).map_err(|error| error.to_string()),
            None => Err(format!("blob {digest} was not in the batch read for it")),
        };
        Ok(self.cache.place(digest, executable, path, write)?)
    }

    /// Places a file that is streamed in chunks (or an empty one).
    fn place_streamed(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<Placed, InputError> {
        let daemon = &mut *self.daemon;
        let mut failure = None;
        let write = |out: &mut dyn Write| {
            transfer::stream_blob(daemon, digest, &mut &mut *out).map_err(|error| {
                let message = error.to_string();
                failure = Some(error);
                message
            })
        };
        match self.cache.place(digest, executable, path, write) {
            Ok(placed) => Ok(placed),
            // The store's own error, so that a missing blob is known as one.
            Err(ContentCacheError::Fetch(_)) if failure.is_some() => {
                Err(InputError::Transfer(failure.expect("checked just above")))
            }
            Err(error) => Err(error.into()),
        }
    }
}

impl<D: Call> TreeSource for CachedStore<'_, D> {
    type Error = InputError;

    fn directory(&mut self, digest: Digest) -> Result<Vec<u8>, InputError> {
        let bytes = match self.cache.read(digest) {
            Some(bytes) => bytes,
            None if !is_small(digest) => {
                let bytes = transfer::fetch_blob(self.daemon, digest)?;
                self.cache.keep(digest, &bytes)?;
                bytes
            }
            None => {
                if !self.fetched_directories.contains_key(&digest) {
                    self.fetch_directories(digest)?;
                }
                self.fetched_directories.remove(&digest).ok_or(TransferError::Unexpected { request: "CasBatchRead" })?
            }
        };
        self.note_directory(&bytes);
        Ok(bytes)
    }

    fn place_file(&mut self, digest: Digest, executable: bool, path: &Path) -> Result<(), InputError> {
        let placed = match is_small(digest) {
            true => self.place_small(digest, executable, path)?,
            false => self.place_streamed(digest, executable, path)?,
        };
        let stats = &mut self.stats;
        match placed {
            Placed::Hit => {
                (stats.items_hot, stats.bytes_hot) = (stats.items_hot + 1, stats.bytes_hot + digest.size_bytes)
            }
            Placed::Miss => {
                (stats.items_cold, stats.bytes_cold) = (stats.items_cold + 1, stats.bytes_cold + digest.size_bytes);
            }
        }
        Ok(())
    }
}

/// The digests of one `CasBatchRead`, within its limits.
struct BatchPlan {
    digests: Vec<Digest>,
    bytes: u64,
}

impl BatchPlan {
    fn new(first: Digest) -> BatchPlan {
        BatchPlan { digests: vec![first], bytes: first.size_bytes }
    }

    fn has_room_for(&self, digest: Digest) -> bool {
        self.digests.len() < MAX_CAS_DIGESTS && self.bytes + digest.size_bytes <= MAX_CAS_BATCH_BYTES as u64
    }

    fn add(&mut self, digest: Digest) {
        if !self.digests.contains(&digest) {
            self.bytes += digest.size_bytes;
            self.digests.push(digest);
        }
    }
}

/// Whether a blob comes in a batch rather than in chunks (an empty one needs
/// no request at all).
fn is_small(digest: Digest) -> bool {
    0 < digest.size_bytes && digest.size_bytes <= MAX_CAS_CHUNK_BYTES as u64
}

/// Swarming's wording for inputs the store lacks, naming the first few.
fn missing_cas_message(root: Digest, missing: &[Digest]) -> String {
    let named: Vec<String> = missing.iter().take(MISSING_NAMED_MAX).map(Digest::to_string).collect();
    let more = missing.len().saturating_sub(MISSING_NAMED_MAX);
    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("missing_cas: the store lacks {} blob(s) of input root {root}: {}{tail}", missing.len(), named.join(", "))
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use apiary_protocol::cas::reapi::{DirectoryNode, FileNode};

    use super::*;
    use apiary_protocol::cas::memory_store::MemoryStore;

    const LARGE_BYTES: usize = 2 * MAX_CAS_CHUNK_BYTES + 7;

    /// A tree with nested directories, an executable, an empty file, a symlink
    /// and a file over two chunks, archived into a store.
    fn stored_tree() -> (tempfile::TempDir, Archive, MemoryStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/data"), b"nested bytes").unwrap();
        fs::write(dir.path().join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.path().join("empty"), b"").unwrap();
        symlink("a/b/data", dir.path().join("link")).unwrap();
        let large: Vec<u8> = (0..LARGE_BYTES).map(|index| (index % 251) as u8).collect();
        fs::write(dir.path().join("a/large"), &large).unwrap();
        let archive = Archive::of_directory_contents(dir.path()).unwrap();
        let mut store = MemoryStore::default();
        store.blobs.extend(archive.directories.clone());
        for path in archive.files.values() {
            store.insert(&fs::read(path).unwrap());
        }
        (dir, archive, store)
    }

    /// A root directory holding these files, each named by its bytes, stored.
    fn root_of(store: &mut MemoryStore, files: &[(&str, &[u8])]) -> Digest {
        let mut files: Vec<FileNode> = files
            .iter()
            .map(|(name, bytes)| FileNode {
                name: name.to_string(),
                digest: Some(Digest::of(bytes).into()),
                is_executable: false,
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let (bytes, root) = Directory { files, ..Directory::default() }.encode_canonical();
        store.blobs.insert(root, bytes);
        root
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn inputs_come_out_with_their_bytes_modes_and_links_then_from_the_cache() {
        let (_from, archive, mut store) = stored_tree();
        let cache_dir = tempfile::tempdir().unwrap();
        let mut cache = ContentCache::open(cache_dir.path(), 64 << 20).unwrap();

        let first = tempfile::tempdir().unwrap();
        let fetched = fetch_inputs(&mut store, &mut cache, archive.root, first.path());
        fetched.result.unwrap();
        assert_eq!(Archive::of_directory_contents(first.path()).unwrap().root, archive.root, "the same tree");
        assert_eq!(fs::read(first.path().join("a/b/data")).unwrap(), b"nested bytes");
        assert_eq!((mode(&first.path().join("run.sh")), mode(&first.path().join("empty"))), (0o555, 0o444));
        assert_eq!(fs::read_link(first.path().join("link")).unwrap(), Path::new("a/b/data"));
        let stats = fetched.stats;
        assert_eq!((stats.items_hot, stats.items_cold), (0, 4));
        assert_eq!(stats.bytes_cold, (12 + 18 + LARGE_BYTES) as u64);
        assert_eq!(store.count("read"), 3, "the large file in three chunks: {:?}", store.requests);
        assert!(store.count("batch read") <= 4, "a batch a level and one of files: {:?}", store.requests);

        store.requests.clear();
        let second = tempfile::tempdir().unwrap();
        let fetched = fetch_inputs(&mut store, &mut cache, archive.root, second.path());
        fetched.result.unwrap();
        assert_eq!(Archive::of_directory_contents(second.path()).unwrap().root, archive.root);
        assert_eq!((fetched.stats.items_hot, fetched.stats.items_cold, fetched.stats.bytes_cold), (4, 0, 0));
        assert_eq!(fetched.stats.bytes_hot, stats.bytes_cold);
        assert_eq!(store.requests, Vec::<&str>::new(), "nothing is downloaded again, not even a directory");
    }

    #[test]
    fn a_file_whose_bytes_do_not_match_is_not_cached_and_fails_the_run() {
        for size in [14, LARGE_BYTES] {
            let mut store = MemoryStore::default();
            let real = vec![b'r'; size];
            let root = root_of(&mut store, &[("f", &real)]);
            store.blobs.insert(Digest::of(&real), vec![b'x'; size]);
            let (cache_dir, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut cache = ContentCache::open(cache_dir.path(), 64 << 20).unwrap();
            let fetched = fetch_inputs(&mut store, &mut cache, root, dest.path());
            let Err(RunEnd::InternalError(reason)) = fetched.result else { panic!("{:?}", fetched.result) };
            assert!(reason.contains(&Digest::of(&real).to_string()) && reason.contains("do not match"), "{reason}");
            assert!(!cache.contains(Digest::of(&real), false), "{size} bytes");
            assert!(!dest.path().join("f").exists());
        }
    }

    #[test]
    fn missing_blobs_end_the_run_as_the_task_s_fault_naming_them() {
        let mut store = MemoryStore::default();
        let root = root_of(&mut store, &[("a", b"kept"), ("b", b"lost 1"), ("c", b"lost 2")]);
        store.insert(b"kept");
        let (cache_dir, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut cache = ContentCache::open(cache_dir.path(), 1 << 20).unwrap();
        let fetched = fetch_inputs(&mut store, &mut cache, root, dest.path());
        let Err(RunEnd::ClientError(reason)) = fetched.result else { panic!("{:?}", fetched.result) };
        let prefix = format!("missing_cas: the store lacks 2 blob(s) of input root {root}: ");
        assert!(reason.starts_with(&prefix), "{reason}");
        for lost in [b"lost 1", b"lost 2"] {
            assert!(reason.contains(&Digest::of(lost).to_string()), "{reason}");
        }

        let absent = Digest::of(b"no such root");
        let fetched = fetch_inputs(&mut store, &mut cache, absent, dest.path());
        let expected = format!("missing_cas: the store lacks 1 blob(s) of input root {absent}: {absent}");
        assert_eq!(fetched.result, Err(RunEnd::ClientError(expected)));
    }

    #[test]
    fn an_input_where_a_named_cache_lies_is_the_task_s_fault() {
        let mut store = MemoryStore::default();
        let (bytes, empty) = Directory::default().encode_canonical();
        store.blobs.insert(empty, bytes);
        let node = DirectoryNode { name: "cache".into(), digest: Some(empty.into()) };
        let (bytes, root) = Directory { directories: vec![node], ..Directory::default() }.encode_canonical();
        store.blobs.insert(root, bytes);
        let (cache_dir, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::create_dir(dest.path().join("cache")).unwrap();
        let mut cache = ContentCache::open(cache_dir.path(), 1 << 20).unwrap();
        let fetched = fetch_inputs(&mut store, &mut cache, root, dest.path());
        let Err(RunEnd::ClientError(reason)) = fetched.result else { panic!("{:?}", fetched.result) };
        assert!(reason.contains("a named cache's path and an input collide"), "{reason}");
    }

    #[test]
    fn the_cache_stays_under_its_limit_across_trees() {
        let mut store = MemoryStore::default();
        let blobs: Vec<Vec<u8>> = (0..6u8).map(|index| vec![index; 1000]).collect();
        let roots: Vec<Digest> = blobs
            .chunks(2)
            .map(|pair| {
                store.insert(&pair[0]);
                store.insert(&pair[1]);
                root_of(&mut store, &[("a", &pair[0]), ("b", &pair[1])])
            })
            .collect();
        let cache_dir = tempfile::tempdir().unwrap();
        let limit = 2500;
        let mut cache = ContentCache::open(cache_dir.path(), limit).unwrap();
        for root in roots {
            let dest = tempfile::tempdir().unwrap();
            fetch_inputs(&mut store, &mut cache, root, dest.path()).result.unwrap();
            let on_disk: u64 =
                fs::read_dir(cache_dir.path()).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
            assert!(cache.used_bytes() <= limit && on_disk <= limit, "{} and {on_disk} bytes", cache.used_bytes());
            assert_eq!(fs::read(dest.path().join("b")).unwrap().len(), 1000, "a task's files outlive eviction");
        }
        assert!(!cache.contains(Digest::of(&blobs[0]), false), "the least recently used went");
        assert!(cache.contains(Digest::of(&blobs[5]), false));
    }

    #[test]
    fn outputs_are_uploaded_once_and_named_by_the_archive_s_root() {
        let out = tempfile::tempdir().unwrap();
        fs::create_dir_all(out.path().join("logs/deep")).unwrap();
        fs::write(out.path().join("logs/deep/a.txt"), b"a").unwrap();
        fs::write(out.path().join("result.json"), b"{}").unwrap();
        symlink("result.json", out.path().join("latest")).unwrap();
        let mut store = MemoryStore::default();
        let uploaded = upload_outputs(&mut store, out.path());
        let archive = Archive::of_directory_contents(out.path()).unwrap();
        assert_eq!((uploaded.root, uploaded.error), (Some(archive.root), None));
        assert_eq!((uploaded.stats.items_cold, uploaded.stats.items_hot), (5, 0), "3 directories and 2 files");
        for digest in archive.directories.keys().chain(archive.files.keys()) {
            assert!(store.blobs.contains_key(digest), "{digest} was uploaded");
        }

        store.requests.clear();
        let again = upload_outputs(&mut store, out.path());
        assert_eq!(again.root, Some(archive.root));
        assert_eq!((again.stats.items_cold, again.stats.items_hot, again.stats.bytes_cold), (0, 5, 0));
        assert_eq!(store.requests, ["find"], "only what the store lacks is sent");
    }

    #[test]
    fn an_empty_or_removed_output_directory_has_no_root() {
        let out = tempfile::tempdir().unwrap();
        let mut store = MemoryStore::default();
        let uploaded = upload_outputs(&mut store, out.path());
        assert_eq!((uploaded.root, uploaded.error, uploaded.stats.items_cold), (None, None, 0));
        let uploaded = upload_outputs(&mut store, &out.path().join("gone"));
        assert_eq!((uploaded.root, uploaded.error), (None, None));
        assert!(store.requests.is_empty());
    }

    #[test]
    fn outputs_that_cannot_be_archived_say_why() {
        let out = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mkfifo").arg(out.path().join("pipe")).status().unwrap();
        assert!(status.success());
        let uploaded = upload_outputs(&mut MemoryStore::default(), out.path());
        assert_eq!(uploaded.root, None);
        let error = uploaded.error.expect("a FIFO is no file");
        assert!(error.starts_with("cannot read the outputs: "), "{error}");
    }
}

//! The store on the daemon's disk, in its own directory:
//!
//! ```text
//! <dir>/blobs/<first two hex digits>/<hash hex>-<size>   one file per blob, read-only once stored
//! <dir>/uploads/<hash hex>-<size>                         an upload in progress (resumable)
//! ```
//!
//! A blob is written under `uploads/`, checked against its digest, synced, then
//! renamed into `blobs/` and its directory synced: a stored blob is whole and
//! durable, and a crash leaves at most an upload to continue. The index of
//! stored blobs is rebuilt from `blobs/` at start.
//!
//! A blob file's modification time is when the blob was last used (stored,
//! found, uploaded again or read): a use sets it to now, unless the store
//! already did so less than `use_refresh` ago (remembered in memory, so a
//! busy `find_missing` costs no syscall per digest). An upload file's is when
//! its last chunk came. A sweep goes through the store in 257 parts, one per
//! step: the 256 shard directories of `blobs/`, then `uploads/`; it stats only
//! the blobs the caller did not name, and holds no list of its own.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_protocol::CasBlob;
use apiary_protocol::cas::Digest;

use super::{CasError, ContentStore, Sweep};
use crate::large_files::write_back;
use crate::sync_dir;

/// Blobs up to this size are read whole and checked at every read.
const READ_WHOLE_MAX_BYTES: u64 = 4 << 20;
/// How long a recorded use stands before another use is written to the disk,
/// unless the owner sets it (the daemon: a sixteenth of `--cas-grace`).
pub const DEFAULT_USE_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The sweep's parts: the shard directories `blobs/00` to `blobs/ff`, then `uploads/`.
const SHARDS: u32 = 256;
const UPLOADS_PART: u32 = SHARDS;

/// What the store knows of a stored blob besides its digest (16 bytes with
/// padding; the digest's 40 make a 56-byte entry).
#[derive(Clone, Copy, Debug)]
struct StoredBlob {
    /// Checked against its digest since start.
    checked: bool,
    /// When this process last set the file's modification time (Unix
    /// seconds); 0: not since start.
    used_at_secs: u64,
}

pub struct LocalStore {
    dir: PathBuf,
    limit_bytes: u64,
    /// Stored blobs.
    blobs: HashMap<Digest, StoredBlob>,
    /// Bytes of stored blobs.
    stored_bytes: u64,
    /// Uploads in progress and the bytes each has received; each holds room
    /// for its whole size against the limit.
    uploads: HashMap<Digest, u64>,
    /// A use less than this after the last one written is not written again.
    use_refresh_secs: u64,
}

impl LocalStore {
    /// Opens (or creates) the store in `dir`, finding what it holds.
    pub fn open(dir: &Path, limit_bytes: u64) -> Result<LocalStore, CasError> {
        let mut store = LocalStore {
            dir: dir.to_path_buf(),
            limit_bytes,
            blobs: HashMap::new(),
            stored_bytes: 0,
            uploads: HashMap::new(),
            use_refresh_secs: DEFAULT_USE_REFRESH.as_secs(),
        };
        for sub in ["blobs", "uploads"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_error(&path, "create"))?;
        }
        store.find_blobs()?;
        store.find_uploads()?;
        Ok(store)
    }

    /// How many blobs the store holds.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Sets how long a recorded use stands before another is written (whole
    /// seconds; less than one writes every use).
    pub fn set_use_refresh(&mut self, interval: Duration) {
        self.use_refresh_secs = interval.as_secs();
    }

    fn find_blobs(&mut self) -> Result<(), CasError> {
        let blobs = self.dir.join("blobs");
        for shard in fs::read_dir(&blobs).map_err(io_error(&blobs, "list"))? {
            let shard = shard.map_err(io_error(&blobs, "list"))?.path();
            for blob in fs::read_dir(&shard).map_err(io_error(&shard, "list"))? {
                let blob = blob.map_err(io_error(&shard, "list"))?;
                // Anything else there is not the store's; it is left alone.
                if let Some(digest) = digest_of_file_name(&blob.file_name()) {
                    self.stored_bytes += digest.size_bytes;
                    self.blobs.insert(digest, StoredBlob { checked: false, used_at_secs: 0 });
                }
            }
        }
        Ok(())
    }

    fn find_uploads(&mut self) -> Result<(), CasError> {
        let uploads = self.dir.join("uploads");
        for upload in fs::read_dir(&uploads).map_err(io_error(&uploads, "list"))? {
            let upload = upload.map_err(io_error(&uploads, "list"))?;
            let Some(digest) = digest_of_file_name(&upload.file_name()) else { continue };
            let received = upload.metadata().map_err(io_error(&upload.path(), "stat"))?.len();
            if self.blobs.contains_key(&digest) || received > digest.size_bytes {
                let _ = fs::remove_file(upload.path());
            } else {
                self.uploads.insert(digest, received);
            }
        }
        Ok(())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let name = file_name(digest);
        self.dir.join("blobs").join(&name[..2]).join(name)
    }

    fn upload_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("uploads").join(file_name(digest))
    }

    fn reserved_bytes(&self) -> u64 {
        self.uploads.keys().map(|digest| digest.size_bytes).sum()
    }

    fn make_room(&self, digest: Digest) -> Result<(), CasError> {
        let used = self.stored_bytes + self.reserved_bytes();
        if used.saturating_add(digest.size_bytes) > self.limit_bytes {
            return Err(CasError::Full { digest, used, limit: self.limit_bytes });
        }
        Ok(())
    }

    /// Writes a blob whose bytes were checked into its upload file, holding
    /// room for it; not synced.
    fn write_upload(&mut self, digest: Digest, bytes: &[u8]) -> Result<File, CasError> {
        if !self.uploads.contains_key(&digest) {
            self.make_room(digest)?;
        }
        let upload = self.upload_path(&digest);
        let written = File::create(&upload).and_then(|mut file| file.write_all(bytes).map(|()| file));
        match written {
            Ok(file) => {
                self.uploads.insert(digest, digest.size_bytes);
                Ok(file)
            }
            Err(error) => {
                // An upload of the same blob in chunks starts again.
                self.uploads.remove(&digest);
                let _ = fs::remove_file(&upload);
                Err(io_error(&upload, "write")(error))
            }
        }
    }

    /// Checks each blob of a batch and writes the new ones (each once), unsynced.
    fn write_batch(&mut self, blobs: &[CasBlob], written: &mut Vec<(Digest, File)>) -> Result<(), CasError> {
        let mut seen: HashMap<Digest, ()> = HashMap::with_capacity(blobs.len());
        for blob in blobs {
            let actual = Digest::of(&blob.data);
            if actual != blob.digest {
                return Err(CasError::Mismatch { expected: blob.digest, actual });
            }
            if self.blobs.contains_key(&blob.digest) {
                self.mark_used(&blob.digest);
            } else if seen.insert(blob.digest, ()).is_none() {
                written.push((blob.digest, self.write_upload(blob.digest, &blob.data)?));
            }
        }
        Ok(())
    }

    /// Moves synced uploads into place, then syncs the directories they went to.
    fn install_synced(&mut self, digests: &[Digest]) -> Result<(), CasError> {
        let mut shards: Vec<PathBuf> = Vec::new();
        for &digest in digests {
            let (upload, blob) = (self.upload_path(&digest), self.blob_path(&digest));
            let shard = blob.parent().expect("a blob path has a shard directory").to_path_buf();
            fs::create_dir_all(&shard).map_err(io_error(&shard, "create"))?;
            fs::set_permissions(&upload, fs::Permissions::from_mode(0o444))
                .map_err(io_error(&upload, "make read-only"))?;
            fs::rename(&upload, &blob).map_err(io_error(&blob, "rename into place"))?;
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        in_parallel(&shards, |shard| sync_dir(shard).map_err(io_error(shard, "sync")))?;
        for &digest in digests {
            self.uploads.remove(&digest);
            self.stored_bytes += digest.size_bytes;
            self.blobs.insert(digest, StoredBlob::new_now());
        }
        Ok(())
    }

    /// Checks a finished upload's bytes, makes them durable and stores them.
    fn install(&mut self, digest: Digest) -> Result<(), CasError> {
        let upload = self.upload_path(&digest);
        self.uploads.remove(&digest);
        let file = File::open(&upload).map_err(io_error(&upload, "open"))?;
        let actual = Digest::of_reader(&file).map_err(io_error(&upload, "read"))?;
        if actual != digest {
            let _ = fs::remove_file(&upload);
            return Err(CasError::Mismatch { expected: digest, actual });
        }
        file.sync_all().map_err(io_error(&upload, "sync"))?;
        let blob = self.blob_path(&digest);
        let shard = blob.parent().expect("a blob path has a shard directory");
        fs::create_dir_all(shard).map_err(io_error(shard, "create"))?;
        fs::set_permissions(&upload, fs::Permissions::from_mode(0o444)).map_err(io_error(&upload, "make read-only"))?;
        fs::rename(&upload, &blob).map_err(io_error(&blob, "rename into place"))?;
        sync_dir(shard).map_err(io_error(shard, "sync"))?;
        self.stored_bytes += digest.size_bytes;
        self.blobs.insert(digest, StoredBlob::new_now());
        Ok(())
    }

    /// Removes a blob found corrupt, so it is reported missing and uploaded again.
    fn remove_corrupt(&mut self, digest: Digest) -> CasError {
        if self.blobs.remove(&digest).is_some() {
            self.stored_bytes -= digest.size_bytes;
        }
        let _ = fs::remove_file(self.blob_path(&digest));
        CasError::Corrupt(digest)
    }

    /// Records a use of a stored blob: its file's modification time becomes
    /// now, unless a use was written less than `use_refresh` ago. A failure
    /// is ignored: the blob only looks older than it is, and a blob gone from
    /// under the store is found missing when it is opened.
    fn mark_used(&mut self, digest: &Digest) {
        let now = SystemTime::now();
        let now_secs = unix_secs(now);
        let Some(blob) = self.blobs.get_mut(digest) else { return };
        if blob.used_at_secs != 0 && now_secs.saturating_sub(blob.used_at_secs) < self.use_refresh_secs {
            return;
        }
        blob.used_at_secs = now_secs;
        // A read-only descriptor is enough for its owner to set the time.
        let _ = File::open(self.blob_path(digest)).and_then(|file| file.set_modified(now));
    }

    /// Up to `max_bytes` of a blob from `offset`, checked (see `ContentStore::read`).
    fn read_range(&mut self, digest: Digest, offset: u64, max_bytes: usize) -> Result<Vec<u8>, CasError> {
        let mut file = self.open_blob(digest)?;
        let path = self.blob_path(&digest);
        if digest.size_bytes <= READ_WHOLE_MAX_BYTES {
            let mut bytes = Vec::with_capacity(digest.size_bytes as usize);
            file.read_to_end(&mut bytes).map_err(io_error(&path, "read"))?;
            if Digest::of(&bytes) != digest {
                return Err(self.remove_corrupt(digest));
            }
            let start = (offset.min(digest.size_bytes)) as usize;
            let end = start.saturating_add(max_bytes).min(bytes.len());
            return Ok(bytes[start..end].to_vec());
        }
        if self.blobs.get(&digest).is_some_and(|blob| !blob.checked) {
            if Digest::of_reader(&file).map_err(io_error(&path, "read"))? != digest {
                return Err(self.remove_corrupt(digest));
            }
            if let Some(blob) = self.blobs.get_mut(&digest) {
                blob.checked = true;
            }
        }
        let available = digest.size_bytes.saturating_sub(offset);
        let mut chunk = vec![0u8; (available.min(max_bytes as u64)) as usize];
        file.read_exact_at(&mut chunk, offset).map_err(io_error(&path, "read"))?;
        Ok(chunk)
    }

    /// Removes the blobs of one shard directory that are neither referenced
    /// nor used since the cutoff.
    fn sweep_shard(
        &mut self,
        shard: u32,
        sweep: &mut Sweep,
        referenced: &dyn Fn(&Digest) -> bool,
    ) -> Result<(), CasError> {
        let dir = self.dir.join("blobs").join(format!("{shard:02x}"));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(&dir, "list")(error)),
        };
        for entry in entries {
            let entry = entry.map_err(io_error(&dir, "list"))?;
            // A file the index does not know is not the store's: it is left alone.
            let Some(digest) = digest_of_file_name(&entry.file_name()).filter(|d| self.blobs.contains_key(d)) else {
                continue;
            };
            if referenced(&digest) {
                sweep.counts.kept_referenced += 1;
                continue;
            }
            if last_modified(&entry.path())? >= sweep.unused_since {
                sweep.counts.kept_recent += 1;
                continue;
            }
            self.remove_unused(digest)?;
            sweep.counts.removed_blobs += 1;
            sweep.counts.removed_bytes += digest.size_bytes;
        }
        Ok(())
    }

    /// Removes a blob no one needs any more; its bytes leave the usage.
    fn remove_unused(&mut self, digest: Digest) -> Result<(), CasError> {
        let path = self.blob_path(&digest);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&path, "remove")(error)),
        }
        if self.blobs.remove(&digest).is_some() {
            self.stored_bytes -= digest.size_bytes;
        }
        Ok(())
    }

    /// Removes the uploads no chunk came to since the cutoff; the room they
    /// held is given back.
    fn sweep_uploads(&mut self, sweep: &mut Sweep) -> Result<(), CasError> {
        let dir = self.dir.join("uploads");
        for entry in fs::read_dir(&dir).map_err(io_error(&dir, "list"))? {
            let entry = entry.map_err(io_error(&dir, "list"))?;
            let Some(digest) = digest_of_file_name(&entry.file_name()) else { continue };
            let Some(&received) = self.uploads.get(&digest) else { continue };
            if last_modified(&entry.path())? >= sweep.unused_since {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&entry.path(), "remove")(error)),
            }
            self.uploads.remove(&digest);
            sweep.counts.removed_uploads += 1;
            sweep.counts.removed_upload_bytes += received;
        }
        Ok(())
    }

    /// Opens a stored blob; a file gone from under the store is reported missing.
    fn open_blob(&mut self, digest: Digest) -> Result<File, CasError> {
        if !self.blobs.contains_key(&digest) {
            return Err(CasError::NotFound(digest));
        }
        let path = self.blob_path(&digest);
        match File::open(&path) {
            Ok(file) => Ok(file),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.blobs.remove(&digest);
                self.stored_bytes -= digest.size_bytes;
                Err(CasError::NotFound(digest))
            }
            Err(error) => Err(io_error(&path, "open")(error)),
        }
    }
}

impl ContentStore for LocalStore {
    fn find_missing(&mut self, digests: &[Digest]) -> Vec<Digest> {
        let mut missing: Vec<Digest> = Vec::new();
        for digest in digests {
            if self.blobs.contains_key(digest) {
                self.mark_used(digest);
            } else if !missing.contains(digest) {
                missing.push(*digest);
            }
        }
        missing
    }

    fn put(&mut self, digest: Digest, bytes: &[u8]) -> Result<(), CasError> {
        let actual = Digest::of(bytes);
        if actual != digest {
            return Err(CasError::Mismatch { expected: digest, actual });
        }
        if self.blobs.contains_key(&digest) {
            self.mark_used(&digest);
            return Ok(());
        }
        drop(self.write_upload(digest, bytes)?);
        self.install(digest)
    }

    /// Writes every new blob, syncs them all at once (concurrent syncs share
    /// the file system's journal commits), then moves them into place.
    fn put_batch(&mut self, blobs: &[CasBlob]) -> Result<(), CasError> {
        let mut written: Vec<(Digest, File)> = Vec::with_capacity(blobs.len());
        let stored = self.write_batch(blobs, &mut written).and_then(|()| {
            in_parallel(&written, |(digest, file)| file.sync_all().map_err(io_error(&self.upload_path(digest), "sync")))
        });
        let digests: Vec<Digest> = written.into_iter().map(|(digest, _)| digest).collect();
        if let Err(error) = stored {
            // Nothing of a failed batch holds room: it is sent again whole.
            for digest in digests {
                self.uploads.remove(&digest);
                let _ = fs::remove_file(self.upload_path(&digest));
            }
            return Err(error);
        }
        self.install_synced(&digests)
    }

    fn upload_offset(&mut self, digest: Digest) -> Result<u64, CasError> {
        if self.blobs.contains_key(&digest) {
            self.mark_used(&digest);
            return Ok(digest.size_bytes);
        }
        if let Some(&received) = self.uploads.get(&digest) {
            return Ok(received);
        }
        self.make_room(digest)?;
        let upload = self.upload_path(&digest);
        File::create(&upload).map_err(io_error(&upload, "create"))?;
        self.uploads.insert(digest, 0);
        if digest.size_bytes == 0 {
            self.install(digest)?;
        }
        Ok(0)
    }

    fn append(&mut self, digest: Digest, offset: u64, chunk: &[u8]) -> Result<bool, CasError> {
        if self.blobs.contains_key(&digest) {
            self.mark_used(&digest);
            return Ok(true);
        }
        let Some(&received) = self.uploads.get(&digest) else {
            return Err(CasError::OutOfOrder { digest, offset, expected: 0 });
        };
        if offset != received {
            return Err(CasError::OutOfOrder { digest, offset, expected: received });
        }
        let got = received + chunk.len() as u64;
        let upload = self.upload_path(&digest);
        if got > digest.size_bytes {
            self.uploads.remove(&digest);
            let _ = fs::remove_file(&upload);
            return Err(CasError::TooLong { digest, got });
        }
        let mut file = OpenOptions::new().write(true).open(&upload).map_err(io_error(&upload, "open"))?;
        file.seek(SeekFrom::Start(received)).map_err(io_error(&upload, "seek"))?;
        file.write_all(chunk).map_err(io_error(&upload, "write"))?;
        // A large upload must not reach the disk all at once when it is synced, ahead of the log's syncs.
        write_back(&file, received, chunk.len() as u64).map_err(io_error(&upload, "write back"))?;
        self.uploads.insert(digest, got);
        if got < digest.size_bytes {
            return Ok(false);
        }
        self.install(digest)?;
        Ok(true)
    }

    fn read(&mut self, digest: Digest, offset: u64, max_bytes: usize) -> Result<Vec<u8>, CasError> {
        let bytes = self.read_range(digest, offset, max_bytes)?;
        self.mark_used(&digest);
        Ok(bytes)
    }

    fn read_without_use(&mut self, digest: Digest) -> Result<Vec<u8>, CasError> {
        let whole = usize::try_from(digest.size_bytes).unwrap_or(usize::MAX);
        self.read_range(digest, 0, whole)
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }

    fn usage(&self) -> (u64, u64) {
        (self.stored_bytes + self.reserved_bytes(), self.limit_bytes)
    }

    fn sweep_step(&mut self, sweep: &mut Sweep, referenced: &dyn Fn(&Digest) -> bool) -> Result<bool, CasError> {
        let part = sweep.next_part;
        if part > UPLOADS_PART {
            return Ok(true);
        }
        // The part counts as swept even if it fails: a sweep goes on from the next.
        sweep.next_part += 1;
        if part == UPLOADS_PART {
            self.sweep_uploads(sweep)?;
        } else {
            self.sweep_shard(part, sweep, referenced)?;
        }
        Ok(sweep.next_part > UPLOADS_PART)
    }
}

impl StoredBlob {
    /// A blob stored now: checked, and its file just written.
    fn new_now() -> StoredBlob {
        StoredBlob { checked: true, used_at_secs: unix_secs(SystemTime::now()) }
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

fn last_modified(path: &Path) -> Result<SystemTime, CasError> {
    fs::metadata(path).and_then(|metadata| metadata.modified()).map_err(io_error(path, "stat"))
}

/// Threads that sync files at once: enough for the file system to commit
/// their syncs together, few enough to cost little.
const SYNC_THREADS: usize = 8;

/// Runs `each` on every item, spread over up to `SYNC_THREADS` threads; the
/// first error is returned once all are done.
fn in_parallel<T: Sync>(items: &[T], each: impl Fn(&T) -> Result<(), CasError> + Sync) -> Result<(), CasError> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&each);
    }
    let per_thread = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> =
            items.chunks(per_thread).map(|part| scope.spawn(|| part.iter().try_for_each(&each))).collect();
        let results: Vec<Result<(), CasError>> =
            workers.into_iter().map(|worker| worker.join().expect("a sync thread does not panic")).collect();
        results.into_iter().collect()
    })
}

fn file_name(digest: &Digest) -> String {
    format!("{}-{}", digest.hex(), digest.size_bytes)
}

fn digest_of_file_name(name: &std::ffi::OsStr) -> Option<Digest> {
    let (hex, size) = name.to_str()?.split_once('-')?;
    Digest::from_parts(hex, size.parse().ok()?).ok()
}

fn io_error(path: &Path, action: &str) -> impl FnOnce(io::Error) -> CasError {
    let context = format!("cannot {action} {}", path.display());
    move |source| CasError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::GcCounts;

    fn store(dir: &Path) -> LocalStore {
        LocalStore::open(dir, 1 << 30).unwrap()
    }

    /// Bytes over the size that is read whole, so the chunked paths are taken.
    fn large_blob() -> Vec<u8> {
        (0..READ_WHOLE_MAX_BYTES as usize + 12345).map(|index| (index * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_stored_blob_is_found_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let (hello, other) = (Digest::of(b"hello"), Digest::of(b"other"));
        assert_eq!(store.find_missing(&[hello, other, hello]), [hello, other]);
        store.put(hello, b"hello").unwrap();
        assert_eq!(store.find_missing(&[hello, other]), [other]);
        assert_eq!(store.read(hello, 1, 3).unwrap(), b"ell");
        assert_eq!(store.read(hello, 4, 100).unwrap(), b"o");
        drop(store);
        let mut store = self::store(dir.path());
        assert_eq!(store.find_missing(&[hello]), []);
        assert_eq!(store.read(hello, 0, 100).unwrap(), b"hello");
        assert_eq!(store.usage(), (5, 1 << 30));
    }

    #[test]
    fn bytes_that_do_not_match_their_digest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let digest = Digest::of(b"hello");
        assert!(matches!(store.put(digest, b"hellO"), Err(CasError::Mismatch { .. })));
        store.upload_offset(digest).unwrap();
        assert!(matches!(store.append(digest, 0, b"jello"), Err(CasError::Mismatch { .. })));
        assert_eq!(store.find_missing(&[digest]), [digest]);
        assert_eq!(store.upload_offset(digest).unwrap(), 0, "a failed upload starts again");
    }

    #[test]
    fn an_interrupted_upload_continues_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let blob = large_blob();
        let digest = Digest::of(&blob);
        let half = blob.len() / 2;
        let mut store = store(dir.path());
        assert_eq!(store.upload_offset(digest).unwrap(), 0);
        assert!(!store.append(digest, 0, &blob[..half]).unwrap());
        drop(store); // the daemon stops

        let mut store = self::store(dir.path());
        assert_eq!(store.upload_offset(digest).unwrap(), half as u64);
        let error = store.append(digest, 0, &blob[..10]).unwrap_err().to_string();
        assert!(error.contains(&format!("continues at offset {half}, not 0")), "{error}");
        assert!(store.append(digest, half as u64, &blob[half..]).unwrap());
        assert_eq!(store.upload_offset(digest).unwrap(), digest.size_bytes);
        let mut read = Vec::new();
        while read.len() < blob.len() {
            read.extend(store.read(digest, read.len() as u64, 1 << 20).unwrap());
        }
        assert!(read == blob);
    }

    #[test]
    fn a_corrupt_blob_is_never_served_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (small, large) = (b"hello".to_vec(), large_blob());
        let mut store = store(dir.path());
        for blob in [&small, &large] {
            store.put(Digest::of(blob), blob).unwrap();
        }
        drop(store);
        let mut store = self::store(dir.path());
        for blob in [&small, &large] {
            let digest = Digest::of(blob);
            let path = store.blob_path(&digest);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            File::options().write(true).open(&path).unwrap().write_all_at(b"X", 3).unwrap();
            let error = store.read(digest, 0, 10).unwrap_err();
            assert!(matches!(error, CasError::Corrupt(found) if found == digest), "{error}");
            assert_eq!(store.find_missing(&[digest]), [digest]);
            assert!(!path.exists());
        }
        assert_eq!(store.usage().0, 0);
    }

    #[test]
    fn the_limit_refuses_what_would_pass_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(dir.path(), 8).unwrap();
        store.put(Digest::of(b"12345"), b"12345").unwrap();
        let error = store.put(Digest::of(b"6789"), b"6789").unwrap_err().to_string();
        assert!(error.contains("to 9 bytes, over its limit of 8 bytes (--cas-max-bytes)"), "{error}");
        // An upload holds room for its whole size from its start.
        let digest = Digest::of(b"123");
        assert_eq!(store.upload_offset(digest).unwrap(), 0);
        assert!(store.put(Digest::of(b"x"), b"x").is_err());
    }

    #[test]
    fn a_batch_is_stored_whole_and_durable_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let blob = |bytes: &[u8]| CasBlob { digest: Digest::of(bytes), data: bytes.to_vec() };
        store.put(Digest::of(b"old"), b"old").unwrap();
        let batch: Vec<CasBlob> = (0..20).map(|index| blob(format!("blob {index}").as_bytes())).collect();
        let mut with_repeats = batch.clone();
        with_repeats.extend([blob(b"old"), batch[3].clone(), blob(b"")]);
        store.put_batch(&with_repeats).unwrap();
        drop(store);

        let mut store = self::store(dir.path());
        for blob in batch.iter().chain([&blob(b"old"), &blob(b"")]) {
            assert_eq!(store.read(blob.digest, 0, 100).unwrap(), blob.data);
        }
        assert_eq!(store.usage().0, batch.iter().map(|blob| blob.data.len() as u64).sum::<u64>() + 3);
        assert_eq!(fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0, "no upload is left behind");

        let mut wrong = blob(b"right");
        wrong.data = b"wrong".to_vec();
        assert!(matches!(store.put_batch(&[blob(b"fine"), wrong]), Err(CasError::Mismatch { .. })));
        let mut small = LocalStore::open(&dir.path().join("small"), 10).unwrap();
        let error = small.put_batch(&[blob(b"123456"), blob(b"abcdef")]).unwrap_err();
        assert!(matches!(error, CasError::Full { .. }), "{error}");
        assert_eq!(small.usage().0, 0, "a failed batch holds no room");
        small.put_batch(&[blob(b"abcdef")]).unwrap();
    }

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    /// Makes a file look last modified `ago` before now.
    fn set_age(path: &Path, ago: Duration) {
        File::open(path).unwrap().set_modified(SystemTime::now() - ago).unwrap();
    }

    fn age_of(path: &Path) -> Duration {
        SystemTime::now().duration_since(fs::metadata(path).unwrap().modified().unwrap()).unwrap_or_default()
    }

    #[test]
    fn a_sweep_keeps_referenced_and_recently_used_blobs_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let blobs: Vec<&[u8]> = vec![b"referenced", b"old", b"older", b"fresh"];
        for blob in &blobs {
            store.put(Digest::of(blob), blob).unwrap();
        }
        let [referenced, old, older, fresh] = [0, 1, 2, 3].map(|index| Digest::of(blobs[index]));
        for (digest, days) in [(referenced, 3), (old, 2), (older, 3)] {
            set_age(&store.blob_path(&digest), DAY * days);
        }
        let counts = store.collect_garbage(&|digest| *digest == referenced, SystemTime::now() - DAY).unwrap();
        let expected =
            GcCounts { removed_blobs: 2, removed_bytes: 8, kept_referenced: 1, kept_recent: 1, ..GcCounts::default() };
        assert_eq!(counts, expected);
        assert_eq!(store.find_missing(&[referenced, old, older, fresh]), [old, older]);
        assert_eq!(store.usage().0, (b"referenced".len() + b"fresh".len()) as u64, "the bytes left the usage");
        assert!(!store.blob_path(&old).exists());
        drop(store);
        let mut store = self::store(dir.path());
        assert_eq!(store.find_missing(&[referenced, old, fresh]), [old], "gone for good");
        assert_eq!(store.read(fresh, 0, 100).unwrap(), b"fresh");
    }

    #[test]
    fn a_use_refreshes_a_blob_at_most_once_per_refresh_interval() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"blob");
        store(dir.path()).put(digest, b"blob").unwrap();
        let mut store = store(dir.path());
        let path = store.blob_path(&digest);
        set_age(&path, DAY);
        assert_eq!(store.find_missing(&[digest]), []);
        assert!(age_of(&path) < DAY / 2, "found present: used now");
        set_age(&path, DAY);
        store.find_missing(&[digest]);
        assert_eq!(store.read(digest, 0, 10).unwrap(), b"blob");
        assert!(age_of(&path) >= DAY, "used again within the refresh interval: nothing written");
        store.set_use_refresh(Duration::ZERO);
        assert_eq!(store.read_without_use(digest).unwrap(), b"blob");
        assert!(age_of(&path) >= DAY, "the collector's reads are not uses");
        store.read(digest, 0, 10).unwrap();
        assert!(age_of(&path) < DAY / 2, "a read is a use");
        for used in [
            |store: &mut LocalStore, digest: Digest| store.put(digest, b"blob").unwrap(),
            |store: &mut LocalStore, digest: Digest| {
                store.put_batch(&[CasBlob { digest, data: b"blob".to_vec() }]).unwrap()
            },
            |store: &mut LocalStore, digest: Digest| assert_eq!(store.upload_offset(digest).unwrap(), 4),
        ] {
            set_age(&path, DAY);
            used(&mut store, digest);
            assert!(age_of(&path) < DAY / 2, "an upload of a stored blob is a use");
        }
        set_age(&path, DAY);
        let counts = store.collect_garbage(&|_| false, SystemTime::now() - DAY / 2).unwrap();
        assert_eq!((counts.removed_blobs, store.usage().0), (1, 0));
    }

    #[test]
    fn an_abandoned_upload_is_removed_and_gives_its_room_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(dir.path(), 100).unwrap();
        let (abandoned, going_on) = (Digest::of(&[1; 60]), Digest::of(&[2; 30]));
        for digest in [abandoned, going_on] {
            store.upload_offset(digest).unwrap();
            assert!(!store.append(digest, 0, &[0; 10]).unwrap());
        }
        set_age(&store.upload_path(&abandoned), DAY);
        assert_eq!(store.usage().0, 90, "each upload holds room for its whole size");
        let counts = store.collect_garbage(&|_| false, SystemTime::now() - DAY / 2).unwrap();
        assert_eq!((counts.removed_uploads, counts.removed_upload_bytes), (1, 10));
        assert_eq!(store.usage().0, 30);
        assert!(!store.upload_path(&abandoned).exists());
        assert_eq!(store.upload_offset(abandoned).unwrap(), 0, "it starts again");
        assert_eq!(store.upload_offset(going_on).unwrap(), 10, "the other goes on");
    }

    #[test]
    fn a_sweep_goes_a_part_at_a_time_and_leaves_foreign_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let blobs: Vec<Vec<u8>> = (0..40).map(|index| format!("blob {index}").into_bytes()).collect();
        for blob in &blobs {
            let digest = Digest::of(blob);
            store.put(digest, blob).unwrap();
            set_age(&store.blob_path(&digest), DAY);
        }
        let foreign = dir.path().join("blobs").join("00").join("notes.txt");
        fs::create_dir_all(foreign.parent().unwrap()).unwrap();
        fs::write(&foreign, b"mine").unwrap();
        set_age(&foreign, DAY);
        let mut sweep = Sweep::new(SystemTime::now() - DAY / 2);
        let mut steps = 1;
        while !store.sweep_step(&mut sweep, &|_| false).unwrap() {
            steps += 1;
        }
        assert_eq!(steps, SHARDS + 1, "one step per shard, then the uploads");
        assert_eq!(sweep.counts.removed_blobs, 40);
        assert!(store.sweep_step(&mut sweep, &|_| false).unwrap(), "a finished sweep stays finished");
        assert!(foreign.exists());
        assert_eq!((store.blob_count(), store.usage().0), (0, 0));
    }

    #[test]
    fn an_upload_longer_than_its_digest_says_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let digest = Digest::of(b"abc");
        store.upload_offset(digest).unwrap();
        assert!(matches!(store.append(digest, 0, b"abcd"), Err(CasError::TooLong { got: 4, .. })));
        assert!(matches!(store.append(digest, 0, b"abc"), Err(CasError::OutOfOrder { .. })));
        assert_eq!(store.upload_offset(digest).unwrap(), 0);
        assert!(store.append(digest, 0, b"abc").unwrap());
        let empty = Digest::of(b"");
        assert_eq!(store.upload_offset(empty).unwrap(), 0);
        assert_eq!(store.find_missing(&[empty, digest]), []);
    }
}

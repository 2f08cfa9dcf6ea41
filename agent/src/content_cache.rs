//! The bot's cache of content-addressed files, under `<work-dir>/cas/`: each
//! file a task's inputs named, kept read-only so that the next task with the
//! same input gets a hard link instead of a download.
//!
//! ```text
//! <work-dir>/cas/<hash hex>-<size>      mode 0444
//! <work-dir>/cas/<hash hex>-<size>.x    the same bytes, executable (0555): a hard
//!                                       link shares its mode, so each mode is its own entry
//! <work-dir>/cas/.incoming              a download in progress (removed at start)
//! ```
//!
//! A file enters the cache only once the bytes written match its digest. The
//! cache stays under its byte limit by removing the least recently used files;
//! when each was last used is its modification time, so the order survives a
//! restart. A file placed in a task's directory is a hard link (a copy when
//! the file system refuses one), so removing it from the cache later leaves the
//! task's file as it is. A task runs as the bot's user and could make its link
//! writable and change the bytes: an entry whose mode or size is no longer what
//! the cache made is thrown away and fetched again. (A task that changes the
//! bytes and restores the mode goes unseen; the cache trusts tasks that far.)
//! Directory blobs are kept too (`keep`, `read`), so that a tree seen before
//! needs nothing from the store.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use apiary_protocol::cas::{Digest, DigestWriter};

const INCOMING: &str = ".incoming";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ContentCacheError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("the bytes received for {expected} have digest {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    /// The fetch itself failed (the daemon lacks the blob, the connection broke).
    #[error("{0}")]
    Fetch(String),
}

/// Which file of the cache: its contents and its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    digest: Digest,
    executable: bool,
}

/// Whether a placed file came from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placed {
    Hit,
    Miss,
}

pub(crate) struct ContentCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Each cached file and when it was last used (a counter, larger is later).
    entries: HashMap<Key, u64>,
    /// When this process last wrote each file's modification time: a file used
    /// again within `USE_WRITE_INTERVAL` is not written again (a warm tree of
    /// thousands of files would otherwise cost an open and a write each).
    use_written: HashMap<Key, Instant>,
    used_bytes: u64,
    clock: u64,
}

/// How stale the use order kept on disk may get: a restart may misorder
/// files used within this long of each other.
const USE_WRITE_INTERVAL: Duration = Duration::from_secs(60);

impl ContentCache {
    /// Opens the cache in `dir` (created if missing), finding what it holds.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<ContentCache, ContentCacheError> {
        fs::create_dir_all(dir).map_err(io_error(dir, "create"))?;
        let _ = fs::remove_file(dir.join(INCOMING));
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir, "list"))? {
            let entry = entry.map_err(io_error(dir, "list"))?;
            let Some(key) = key_of_file_name(&entry.file_name()) else { continue };
            let modified = entry.metadata().and_then(|metadata| metadata.modified());
            found.push((modified.unwrap_or(SystemTime::UNIX_EPOCH), key));
        }
        found.sort_by_key(|(modified, _)| *modified);
        let mut cache = ContentCache {
            dir: dir.to_path_buf(),
            max_bytes,
            entries: HashMap::new(),
            use_written: HashMap::new(),
            used_bytes: 0,
            clock: 0,
        };
        for (_, key) in found {
            cache.clock += 1;
            cache.used_bytes += key.digest.size_bytes;
            cache.entries.insert(key, cache.clock);
        }
        cache.evict();
        Ok(cache)
    }

    /// Puts a file with these contents at `dest`: linked from the cache, or
    /// first fetched into it (`fetch` writes the blob's bytes) and checked.
    pub(crate) fn place(
        &mut self,
        digest: Digest,
        executable: bool,
        dest: &Path,
        fetch: impl FnOnce(&mut dyn Write) -> Result<(), String>,
    ) -> Result<Placed, ContentCacheError> {
        let key = Key { digest, executable };
        let cached = self.path_of(key);
        if self.holds(key) {
            self.touch(key, &cached);
            link_or_copy(&cached, dest)?;
            return Ok(Placed::Hit);
        }
        if digest.size_bytes > self.max_bytes {
            // Larger than the whole cache: written where it goes, never kept.
            write_checked(digest, executable, dest, fetch)?;
            return Ok(Placed::Miss);
        }
        self.admit(key, fetch)?;
        link_or_copy(&cached, dest)?;
        self.evict();
        Ok(Placed::Miss)
    }

    /// Whether a file with these contents and mode would be placed from the cache.
    pub(crate) fn contains(&self, digest: Digest, executable: bool) -> bool {
        let key = Key { digest, executable };
        self.entries.contains_key(&key) && is_intact(&self.path_of(key), key)
    }

    /// The bytes of a blob the cache holds (not executable), checked again:
    /// for blobs the bot reads itself (directories), never linked into a task.
    pub(crate) fn read(&mut self, digest: Digest) -> Option<Vec<u8>> {
        let key = Key { digest, executable: false };
        if !self.holds(key) {
            return None;
        }
        let path = self.path_of(key);
        match fs::read(&path) {
            Ok(bytes) if Digest::of(&bytes) == digest => {
                self.touch(key, &path);
                Some(bytes)
            }
            _ => {
                self.discard(key);
                None
            }
        }
    }

    /// Keeps a blob the bot received whole (a directory), unless it is cached
    /// already or larger than the cache.
    pub(crate) fn keep(&mut self, digest: Digest, bytes: &[u8]) -> Result<(), ContentCacheError> {
        let key = Key { digest, executable: false };
        if digest.size_bytes > self.max_bytes || self.holds(key) {
            return Ok(());
        }
        self.admit(key, |out: &mut dyn Write| out.write_all(bytes).map_err(|error| error.to_string()))?;
        self.evict();
        Ok(())
    }

    /// Whether the entry is known and its file still as it was made. A task
    /// gets hard links to cached files: one that made its link writable again
    /// (so it could change the bytes) gets that entry thrown away here.
    fn holds(&mut self, key: Key) -> bool {
        if !self.entries.contains_key(&key) {
            return false;
        }
        if is_intact(&self.path_of(key), key) {
            return true;
        }
        self.discard(key);
        false
    }

    /// Writes the fetched bytes into the cache as `key`'s file, checked.
    fn admit(
        &mut self,
        key: Key,
        fetch: impl FnOnce(&mut dyn Write) -> Result<(), String>,
    ) -> Result<(), ContentCacheError> {
        let (incoming, cached) = (self.dir.join(INCOMING), self.path_of(key));
        write_checked(key.digest, key.executable, &incoming, fetch)?;
        fs::rename(&incoming, &cached).map_err(io_error(&cached, "move into the cache"))?;
        self.clock += 1;
        self.entries.insert(key, self.clock);
        // Just written: its modification time is its use.
        self.use_written.insert(key, Instant::now());
        self.used_bytes += key.digest.size_bytes;
        Ok(())
    }

    /// Removes an entry and its file (which may be gone already).
    fn discard(&mut self, key: Key) {
        let _ = fs::remove_file(self.path_of(key));
        self.forget(key);
    }

    /// The bytes the cache holds.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    fn path_of(&self, key: Key) -> PathBuf {
        let suffix = if key.executable { ".x" } else { "" };
        self.dir.join(format!("{}-{}{suffix}", key.digest.hex(), key.digest.size_bytes))
    }

    fn touch(&mut self, key: Key, path: &Path) {
        self.clock += 1;
        self.entries.insert(key, self.clock);
        let now = Instant::now();
        if self.use_written.get(&key).is_some_and(|written| now.duration_since(*written) < USE_WRITE_INTERVAL) {
            return;
        }
        self.use_written.insert(key, now);
        // Kept across restarts as the file's modification time; losing it only loses order.
        let _ = File::open(path).and_then(|file| file.set_modified(SystemTime::now()));
    }

    /// Drops an entry from the books (its file is gone or going).
    fn forget(&mut self, key: Key) {
        self.use_written.remove(&key);
        if self.entries.remove(&key).is_some() {
            self.used_bytes -= key.digest.size_bytes;
        }
    }

    /// Removes the least recently used files until the cache fits its limit.
    fn evict(&mut self) {
        if self.used_bytes <= self.max_bytes {
            return;
        }
        let mut by_age: Vec<(u64, Key)> = self.entries.iter().map(|(key, used)| (*used, *key)).collect();
        by_age.sort_unstable_by_key(|(used, _)| *used);
        for (_, key) in by_age {
            if self.used_bytes <= self.max_bytes {
                break;
            }
            self.discard(key);
        }
    }
}

/// Writes the fetched bytes to `path`, checks them against `digest`, and makes
/// the file read-only (and executable when asked).
fn write_checked(
    digest: Digest,
    executable: bool,
    path: &Path,
    fetch: impl FnOnce(&mut dyn Write) -> Result<(), String>,
) -> Result<(), ContentCacheError> {
    let file = File::create(path).map_err(io_error(path, "create"))?;
    let mut writer = DigestWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    let fetched = fetch(&mut writer);
    let (buffered, actual) = writer.finish();
    let flushed = buffered.into_inner().map_err(|error| error.into_error());
    let failure = match (fetched, flushed) {
        (Err(message), _) => Some(ContentCacheError::Fetch(message)),
        (Ok(()), Err(error)) => Some(io_error(path, "write")(error)),
        (Ok(()), Ok(_)) if actual != digest => Some(ContentCacheError::Mismatch { expected: digest, actual }),
        (Ok(()), Ok(_)) => None,
    };
    if let Some(failure) = failure {
        let _ = fs::remove_file(path);
        return Err(failure);
    }
    let mode = if executable { 0o555 } else { 0o444 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path, "set the mode of"))
}

/// A cached file still has its size and read-only mode.
fn is_intact(path: &Path, key: Key) -> bool {
    let mode = if key.executable { 0o555 } else { 0o444 };
    fs::symlink_metadata(path).is_ok_and(|metadata| {
        metadata.is_file() && metadata.len() == key.digest.size_bytes && metadata.permissions().mode() & 0o777 == mode
    })
}

/// A hard link to the cached file; a copy where links cannot be made (another
/// file system, or the file's link count at its limit).
fn link_or_copy(cached: &Path, dest: &Path) -> Result<(), ContentCacheError> {
    if fs::hard_link(cached, dest).is_ok() {
        return Ok(());
    }
    fs::copy(cached, dest).map_err(io_error(dest, "copy into place"))?;
    Ok(())
}

fn key_of_file_name(name: &std::ffi::OsStr) -> Option<Key> {
    let name = name.to_str()?;
    let (name, executable) = match name.strip_suffix(".x") {
        Some(name) => (name, true),
        None => (name, false),
    };
    let (hex, size) = name.split_once('-')?;
    let digest = Digest::from_parts(hex, size.parse().ok()?).ok()?;
    Some(Key { digest, executable })
}

fn io_error(path: &Path, action: &str) -> impl FnOnce(io::Error) -> ContentCacheError {
    let context = format!("cannot {action} {}", path.display());
    move |source| ContentCacheError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn fetch_of(bytes: &'static [u8]) -> impl FnOnce(&mut dyn Write) -> Result<(), String> {
        move |out: &mut dyn Write| out.write_all(bytes).map_err(|error| error.to_string())
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_file_is_fetched_once_then_linked_read_only() {
        let (cache_dir, task) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut cache = ContentCache::open(cache_dir.path(), 1 << 20).unwrap();
        let digest = Digest::of(b"data");
        let (first, second) = (task.path().join("first"), task.path().join("second"));
        assert_eq!(cache.place(digest, false, &first, fetch_of(b"data")).unwrap(), Placed::Miss);
        let no_fetch = |_: &mut dyn Write| -> Result<(), String> { panic!("a cached file is not fetched again") };
        assert_eq!(cache.place(digest, false, &second, no_fetch).unwrap(), Placed::Hit);
        assert_eq!(fs::read(&second).unwrap(), b"data");
        assert_eq!(fs::metadata(&second).unwrap().ino(), fs::metadata(&first).unwrap().ino(), "a hard link");
        assert_eq!(mode(&second), 0o444);
        // The executable copy is its own entry, with its own mode.
        let tool = task.path().join("tool");
        assert_eq!(cache.place(digest, true, &tool, fetch_of(b"data")).unwrap(), Placed::Miss);
        assert_eq!((mode(&tool), mode(&first)), (0o555, 0o444));
        assert_eq!(cache.used_bytes(), 8);
    }

    #[test]
    fn an_entry_a_task_made_writable_again_is_fetched_anew() {
        let (cache_dir, task) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut cache = ContentCache::open(cache_dir.path(), 1 << 20).unwrap();
        let digest = Digest::of(b"data");
        let linked = task.path().join("linked");
        cache.place(digest, false, &linked, fetch_of(b"data")).unwrap();
        // The task owns its link, and so the cached file's inode.
        fs::set_permissions(&linked, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&linked, b"evil").unwrap();
        assert!(!cache.contains(digest, false));
        let again = task.path().join("again");
        assert_eq!(cache.place(digest, false, &again, fetch_of(b"data")).unwrap(), Placed::Miss);
        assert_eq!((fs::read(&again).unwrap(), mode(&again)), (b"data".to_vec(), 0o444));
        assert_eq!(cache.used_bytes(), 4);
    }

    #[test]
    fn a_blob_kept_whole_is_read_back_checked() {
        let cache_dir = tempfile::tempdir().unwrap();
        let mut cache = ContentCache::open(cache_dir.path(), 1 << 20).unwrap();
        let digest = Digest::of(b"directory");
        assert_eq!(cache.read(digest), None);
        cache.keep(digest, b"directory").unwrap();
        assert_eq!(cache.read(digest).as_deref(), Some(&b"directory"[..]));
        assert!(cache.keep(Digest::of(b"other"), b"not other").is_err(), "checked on the way in");
        assert_eq!(cache.used_bytes(), 9);
    }

    #[test]
    fn bytes_that_do_not_match_never_enter_the_cache() {
        let (cache_dir, task) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut cache = ContentCache::open(cache_dir.path(), 1 << 20).unwrap();
        let digest = Digest::of(b"data");
        let error = cache.place(digest, false, &task.path().join("f"), fetch_of(b"date")).unwrap_err();
        assert!(matches!(error, ContentCacheError::Mismatch { .. }), "{error}");
        let error = cache.place(digest, false, &task.path().join("f"), |_| Err("gone".into())).unwrap_err();
        assert_eq!(error.to_string(), "gone");
        assert_eq!((cache.used_bytes(), fs::read_dir(cache_dir.path()).unwrap().count()), (0, 0));
        assert!(!task.path().join("f").exists());
    }

    #[test]
    fn the_least_recently_used_files_go_first_also_after_a_restart() {
        let (cache_dir, task) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut cache = ContentCache::open(cache_dir.path(), 8).unwrap();
        let blobs: [&'static [u8]; 3] = [b"aaaa", b"bbbb", b"cccc"];
        for (index, blob) in blobs[..2].iter().enumerate() {
            cache.place(Digest::of(blob), false, &task.path().join(index.to_string()), fetch_of(blob)).unwrap();
        }
        // "aaaa" is used again, so "bbbb" is the oldest when "cccc" needs room.
        cache.place(Digest::of(b"aaaa"), false, &task.path().join("again"), |_| Err("cached".into())).unwrap();
        cache.place(Digest::of(b"cccc"), false, &task.path().join("2"), fetch_of(b"cccc")).unwrap();
        let cached = |cache: &ContentCache, blob: &[u8]| {
            cache.path_of(Key { digest: Digest::of(blob), executable: false }).exists()
        };
        assert!(cached(&cache, b"aaaa") && !cached(&cache, b"bbbb") && cached(&cache, b"cccc"));
        assert_eq!(fs::read(task.path().join("1")).unwrap(), b"bbbb", "the task's link outlives the cache entry");

        drop(cache);
        let mut cache = ContentCache::open(cache_dir.path(), 8).unwrap();
        assert_eq!(cache.used_bytes(), 8);
        let placed = cache.place(Digest::of(b"cccc"), false, &task.path().join("3"), |_| Err("cached".into()));
        assert_eq!(placed.unwrap(), Placed::Hit);
    }

    #[test]
    fn a_file_larger_than_the_cache_is_written_in_place_and_not_kept() {
        let (cache_dir, task) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut cache = ContentCache::open(cache_dir.path(), 3).unwrap();
        let dest = task.path().join("big");
        assert_eq!(cache.place(Digest::of(b"big!"), true, &dest, fetch_of(b"big!")).unwrap(), Placed::Miss);
        assert_eq!((fs::read(&dest).unwrap(), mode(&dest)), (b"big!".to_vec(), 0o555));
        assert_eq!((cache.used_bytes(), fs::read_dir(cache_dir.path()).unwrap().count()), (0, 0));
    }
}

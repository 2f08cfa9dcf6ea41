//! The output store: each task's output in its own append-only file, written by offset.
//!
//! A task's file is `<dir>/<first 6 hex digits>/<16 hex digits of the task id>`, so no
//! directory grows past 16^10 entries in practice and a directory listing stays cheap.
//!
//! Invariants: a file only grows, and only at its end, so bytes before the current length
//! never change (a resent chunk changes nothing, and a chunk that would leave a hole is
//! refused); at most [`MAX_OPEN_OUTPUT_FILES`] tasks are cached (length and handle, least
//! recently used evicted first), plus the handles of files written since the last sync job,
//! which that job holds until it has synced them; after a failed sync every later write and
//! job fails too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tasks whose length and open file the store keeps cached.
pub const MAX_OPEN_OUTPUT_FILES: usize = 256;
/// The most output one task may have.
pub const MAX_OUTPUT_BYTES_PER_TASK: u64 = 1 << 30;

/// What went wrong in the output store; every variant names the task or file.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to {context}: {source}")]
    Io { context: String, source: io::Error },
    /// A write started past the end of the output, which would leave a hole.
    #[error("output of task {task_id:016x} has {expected} bytes; a write at offset {got} would leave a gap")]
    Gap { task_id: u64, expected: u64, got: u64 },
    #[error("output of task {task_id:016x} would grow to {len} bytes, past the limit of {limit}")]
    TooLarge { task_id: u64, len: u64, limit: u64 },
    /// An earlier sync failed; nothing written since can be trusted to reach the disk.
    #[error("the output store is poisoned: an earlier sync failed")]
    Poisoned,
}

fn io_error(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> OutputError {
    move |source| OutputError::Io { context: context(), source }
}

/// A cached task: its length on disk and, once it was read or written, its open file.
#[derive(Debug)]
struct Entry {
    len: u64,
    file: Option<Arc<File>>,
    last_use: u64,
}

/// Task output files under one directory. Owned by one thread; syncing happens elsewhere
/// through [`OutputSyncJob`]s.
#[derive(Debug)]
pub struct OutputStore {
    dir: PathBuf,
    entries: HashMap<u64, Entry>,
    /// `last_use` tick to task id, oldest first.
    by_last_use: BTreeMap<u64, u64>,
    next_tick: u64,
    /// Files written since the last sync job.
    dirty_files: HashMap<u64, Arc<File>>,
    /// Directories that gained an entry since the last sync job.
    dirty_dirs: BTreeSet<PathBuf>,
    poisoned: Arc<AtomicBool>,
}

impl OutputStore {
    /// Opens the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<OutputStore, OutputError> {
        fs::create_dir_all(dir).map_err(io_error(|| format!("create output directory {}", dir.display())))?;
        Ok(OutputStore {
            dir: dir.to_path_buf(),
            entries: HashMap::new(),
            by_last_use: BTreeMap::new(),
            next_tick: 0,
            dirty_files: HashMap::new(),
            dirty_dirs: BTreeSet::new(),
            poisoned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Length of a task's output on disk (0 when it has none). Cached after the first look.
    pub fn len(&mut self, task_id: u64) -> Result<u64, OutputError> {
        self.entry(task_id).map(|entry| entry.len)
    }

    /// Writes `data`, which starts at `offset` of the task's output. Bytes before the current
    /// length are already there and are skipped (a resent chunk changes nothing); an offset
    /// past the current length is [`OutputError::Gap`]. Returns the new length. The file is
    /// synced by the next sync job.
    pub fn write_at(&mut self, task_id: u64, offset: u64, data: &[u8]) -> Result<u64, OutputError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(OutputError::Poisoned);
        }
        let len = self.len(task_id)?;
        if offset > len {
            return Err(OutputError::Gap { task_id, expected: len, got: offset });
        }
        let already_written = usize::try_from(len - offset).unwrap_or(usize::MAX);
        let Some(new_bytes) = data.get(already_written..).filter(|new_bytes| !new_bytes.is_empty()) else {
            return Ok(len);
        };
        let new_len = len + new_bytes.len() as u64;
        if new_len > MAX_OUTPUT_BYTES_PER_TASK {
            return Err(OutputError::TooLarge { task_id, len: new_len, limit: MAX_OUTPUT_BYTES_PER_TASK });
        }
        let file = self.file(task_id, len == 0)?;
        if let Err(source) = file.write_all_at(new_bytes, len) {
            // Part of the bytes may be in the file: look at its length again next time.
            self.forget(task_id);
            return Err(OutputError::Io { context: format!("write output of task {task_id:016x} at {len}"), source });
        }
        self.dirty_files.insert(task_id, file);
        self.entries.get_mut(&task_id).expect("entry was just used").len = new_len;
        Ok(new_len)
    }

    /// Up to `max_bytes` of a task's output from `offset`; empty at or past the end.
    pub fn read(&mut self, task_id: u64, offset: u64, max_bytes: usize) -> Result<Vec<u8>, OutputError> {
        let len = self.len(task_id)?;
        if offset >= len || max_bytes == 0 {
            return Ok(Vec::new());
        }
        let count = usize::try_from(len - offset).unwrap_or(usize::MAX).min(max_bytes);
        let file = self.file(task_id, false)?;
        let mut bytes = vec![0; count];
        file.read_exact_at(&mut bytes, offset)
            .map_err(io_error(|| format!("read output of task {task_id:016x} at {offset}")))?;
        Ok(bytes)
    }

    /// Files written since the last call, as a job another thread can run. `None` if there
    /// is nothing to sync.
    pub fn take_sync_job(&mut self) -> Option<OutputSyncJob> {
        if self.dirty_files.is_empty() && self.dirty_dirs.is_empty() {
            return None;
        }
        let mut files: Vec<(u64, Arc<File>)> = self.dirty_files.drain().collect();
        files.sort_unstable_by_key(|&(task_id, _)| task_id);
        // Deepest first, so a new subdirectory is synced before the directory naming it.
        let dirs = std::mem::take(&mut self.dirty_dirs).into_iter().rev().collect();
        Some(OutputSyncJob { files, dirs, poisoned: Arc::clone(&self.poisoned) })
    }

    /// Forgets the cached length and open file of a task that ended. A file written since
    /// the last sync job stays open until that job has synced it.
    pub fn close(&mut self, task_id: u64) {
        self.forget(task_id);
    }

    /// Path of a task's output file.
    pub fn path(&self, task_id: u64) -> PathBuf {
        let name = format!("{task_id:016x}");
        self.dir.join(&name[..6]).join(name)
    }

    fn forget(&mut self, task_id: u64) {
        if let Some(entry) = self.entries.remove(&task_id) {
            self.by_last_use.remove(&entry.last_use);
        }
    }

    /// The task's cache entry, loaded (and the least recently used one evicted) if needed,
    /// and marked as just used.
    fn entry(&mut self, task_id: u64) -> Result<&mut Entry, OutputError> {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(entry) = self.entries.get_mut(&task_id) {
            self.by_last_use.remove(&entry.last_use);
            self.by_last_use.insert(tick, task_id);
            entry.last_use = tick;
            return Ok(self.entries.get_mut(&task_id).expect("entry exists"));
        }
        let path = self.path(task_id);
        let len = match fs::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(OutputError::Io { context: format!("stat output of task {task_id:016x}"), source });
            }
        };
        if self.entries.len() >= MAX_OPEN_OUTPUT_FILES {
            let (_, oldest) = self.by_last_use.pop_first().expect("a full cache has entries");
            self.entries.remove(&oldest);
        }
        self.by_last_use.insert(tick, task_id);
        Ok(self.entries.entry(task_id).or_insert(Entry { len, file: None, last_use: tick }))
    }

    /// The task's open file; created (with its directory) if `may_create`.
    fn file(&mut self, task_id: u64, may_create: bool) -> Result<Arc<File>, OutputError> {
        if let Some(file) = &self.entry(task_id)?.file {
            return Ok(Arc::clone(file));
        }
        let path = self.path(task_id);
        if may_create {
            self.create_parent(&path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(may_create)
            .truncate(false)
            .open(&path)
            .map_err(io_error(|| format!("open output of task {task_id:016x} ({})", path.display())))?;
        let file = Arc::new(file);
        self.entry(task_id)?.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Creates the directory of a new output file and notes which directory entries must be
    /// synced for the file to be found after a crash.
    fn create_parent(&mut self, path: &Path) -> Result<(), OutputError> {
        let parent = path.parent().expect("output files live in a subdirectory");
        match fs::create_dir(parent) {
            Ok(()) => {
                self.dirty_dirs.insert(self.dir.clone());
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(OutputError::Io {
                    context: format!("create output directory {}", parent.display()),
                    source,
                });
            }
        }
        self.dirty_dirs.insert(parent.to_path_buf());
        Ok(())
    }
}

/// Syncs the output files (`fdatasync`) and directories written since the previous job;
/// runs on another thread.
#[derive(Debug)]
#[must_use = "the output it covers is not durable until the job runs"]
pub struct OutputSyncJob {
    files: Vec<(u64, Arc<File>)>,
    dirs: Vec<PathBuf>,
    poisoned: Arc<AtomicBool>,
}

impl OutputSyncJob {
    pub fn run(self) -> Result<(), OutputError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(OutputError::Poisoned);
        }
        for (task_id, file) in &self.files {
            file.sync_data().map_err(|source| {
                self.poisoned.store(true, Ordering::Release);
                OutputError::Io { context: format!("sync output of task {task_id:016x}"), source }
            })?;
        }
        for dir in &self.dirs {
            File::open(dir).and_then(|handle| handle.sync_all()).map_err(|source| {
                self.poisoned.store(true, Ordering::Release);
                OutputError::Io { context: format!("sync output directory {}", dir.display()), source }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::open(dir.path()).unwrap();
        assert_eq!(store.path(0x0123_4567_89ab_cdef), dir.path().join("012345").join("0123456789abcdef"));
    }

    #[test]
    fn the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OutputStore::open(dir.path()).unwrap();
        for task_id in 0..(MAX_OPEN_OUTPUT_FILES as u64 + 10) {
            store.write_at(task_id, 0, b"x").unwrap();
            assert!(store.entries.len() <= MAX_OPEN_OUTPUT_FILES);
            assert_eq!(store.entries.len(), store.by_last_use.len());
        }
        store.take_sync_job().unwrap().run().unwrap();
        for task_id in 0..(MAX_OPEN_OUTPUT_FILES as u64 + 10) {
            assert_eq!(store.len(task_id).unwrap(), 1);
        }
    }
}

//! [`OutputStore`]: the write, read, close, sync and retention API over packs.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::MAX_OUTPUT_BYTES_PER_TASK;
use super::error::OutputError;
use super::extents::{Extent, RunExtents};
use super::format::{CHUNK_HEADER_BYTES, ChunkHeader, MAX_CHUNK_DATA_BYTES, index_path, pack_path};
use super::index_file::{entries_of_run, entries_of_run_in};
use super::packs::{CurrentPack, SealedPack};
use super::recovery::recover;
use super::sync::OutputSyncJob;

/// Default size a pack is sealed at.
pub const DEFAULT_PACK_BYTES: u64 = 64 << 20;
/// Smallest pack size accepted: room for a chunk header and some data.
pub const MIN_PACK_BYTES: u64 = 2 * CHUNK_HEADER_BYTES as u64;
/// Largest pack size accepted.
pub const MAX_PACK_BYTES: u64 = 1 << 40;
/// Closed runs whose extents the store keeps for repeated reads.
const MAX_CACHED_CLOSED_RUNS: usize = 64;
#[cfg(test)]
pub(crate) const MAX_CACHED_CLOSED_RUNS_FOR_TESTS: usize = MAX_CACHED_CLOSED_RUNS;
/// Open handles of sealed packs and indexes kept for reads.
const MAX_CACHED_FILES: usize = 64;
const _: () = assert!(MIN_PACK_BYTES <= DEFAULT_PACK_BYTES && DEFAULT_PACK_BYTES <= MAX_PACK_BYTES);

/// How an [`OutputStore`] lays out its packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOptions {
    /// A pack is sealed before a chunk would take it past this size. Between
    /// [`MIN_PACK_BYTES`] and [`MAX_PACK_BYTES`].
    pub pack_bytes: u64,
}

impl Default for OutputOptions {
    fn default() -> OutputOptions {
        OutputOptions { pack_bytes: DEFAULT_PACK_BYTES }
    }
}

/// What the store holds, for reporting disk use and checking memory stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputStats {
    /// Pack files, the current one included.
    pub packs: usize,
    /// Bytes of all packs (indexes not counted).
    pub pack_bytes: u64,
    /// Runs written since their last `close`: the only runs whose extents are kept.
    pub open_runs: usize,
    /// Index entries held in memory: the current pack's and those of sealed packs whose
    /// index is not durable yet.
    pub entries_in_memory: usize,
    /// Sealed packs whose index a sync job has still to write.
    pub unindexed_packs: usize,
}

/// What [`OutputStore::remove_packs_before`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemovedPacks {
    pub packs: usize,
    pub bytes: u64,
}

/// Task output in packs under one directory. Owned by one thread (the daemon's event loop);
/// syncing and index writing happen elsewhere through [`OutputSyncJob`]s.
#[derive(Debug)]
pub struct OutputStore {
    dir: PathBuf,
    pack_bytes: u64,
    /// The most data one chunk holds: a chunk always fits an empty pack.
    max_chunk_bytes: usize,
    current: CurrentPack,
    /// Oldest first.
    sealed: Vec<SealedPack>,
    /// Largest run id with a chunk in a sealed pack: a run above it is only in `current`.
    max_sealed_run_id: Option<u64>,
    open_runs: HashMap<u64, RunExtents>,
    pub(crate) closed_runs: HashMap<u64, Arc<RunExtents>>,
    /// Handles of sealed packs (by number) and of indexes (by number, in `index_files`).
    pack_files: HashMap<u64, Arc<File>>,
    index_files: HashMap<u64, Arc<File>>,
    /// Packs written since the last sync job.
    dirty_packs: HashMap<u64, Arc<File>>,
    /// A pack was created since the last sync job.
    dir_dirty: bool,
    poisoned: Arc<AtomicBool>,
    /// A chunk being written: header and data, for one `pwrite`.
    chunk_buffer: Vec<u8>,
    #[cfg(test)]
    pub(crate) faults: Faults,
}

/// Failures tests inject into the store's writes.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Chunk writes that fail with ENOSPC after writing half their bytes.
    pub failing_writes: u32,
    /// Pack creations that fail with ENOSPC.
    pub failing_creates: u32,
}

impl OutputStore {
    /// Opens the store in `dir` with the default options, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<OutputStore, OutputError> {
        OutputStore::open_with(dir, OutputOptions::default())
    }

    /// Opens the store in `dir`: checks and indexes the packs, cuts a torn tail (see the
    /// module documentation).
    pub fn open_with(dir: &Path, options: OutputOptions) -> Result<OutputStore, OutputError> {
        assert!((MIN_PACK_BYTES..=MAX_PACK_BYTES).contains(&options.pack_bytes), "pack size {options:?}");
        fs::create_dir_all(dir).map_err(OutputError::io(|| format!("create output directory {}", dir.display())))?;
        let recovered = recover(dir)?;
        let max_sealed_run_id =
            recovered.sealed.iter().filter(|pack| pack.entry_count > 0).map(|pack| pack.max_run_id).max();
        let max_chunk_bytes = MAX_CHUNK_DATA_BYTES.min((options.pack_bytes as usize) - CHUNK_HEADER_BYTES);
        Ok(OutputStore {
            dir: dir.to_path_buf(),
            pack_bytes: options.pack_bytes,
            max_chunk_bytes,
            current: recovered.current,
            sealed: recovered.sealed,
            max_sealed_run_id,
            open_runs: HashMap::new(),
            closed_runs: HashMap::new(),
            pack_files: HashMap::new(),
            index_files: HashMap::new(),
            dirty_packs: HashMap::new(),
            dir_dirty: false,
            poisoned: Arc::new(AtomicBool::new(false)),
            chunk_buffer: Vec::new(),
            #[cfg(test)]
            faults: Faults::default(),
        })
    }

    /// Length of a run's output (0 when it has none, or when retention removed its start).
    pub fn len(&mut self, run_id: u64) -> Result<u64, OutputError> {
        if let Some(run) = self.open_runs.get(&run_id) {
            return Ok(run.len);
        }
        Ok(self.closed_run(run_id)?.len)
    }

    /// Writes `data`, which starts at `offset` of the run's output. Bytes before the
    /// current length are already there and are skipped (a resent chunk changes nothing);
    /// an offset past the current length is [`OutputError::Gap`]. Returns the new length.
    /// The run is open from now until [`OutputStore::close`]. A failed write (for lack of
    /// space: [`OutputError::NoSpace`]) leaves the length where the last whole chunk ended:
    /// unchanged for a write of up to 1 MiB. Made durable by the next sync job.
    pub fn write_at(&mut self, run_id: u64, offset: u64, data: &[u8]) -> Result<u64, OutputError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(OutputError::Poisoned);
        }
        let len = self.len(run_id)?;
        if offset > len {
            return Err(OutputError::Gap { task_id: run_id, expected: len, got: offset });
        }
        let already_written = usize::try_from(len - offset).unwrap_or(usize::MAX);
        let Some(new_bytes) = data.get(already_written..).filter(|new_bytes| !new_bytes.is_empty()) else {
            return Ok(len);
        };
        let new_len = len + new_bytes.len() as u64;
        if new_len > MAX_OUTPUT_BYTES_PER_TASK {
            return Err(OutputError::TooLarge { task_id: run_id, len: new_len, limit: MAX_OUTPUT_BYTES_PER_TASK });
        }
        self.open_run(run_id)?;
        for piece in new_bytes.chunks(self.max_chunk_bytes) {
            let run_offset = self.open_runs[&run_id].len;
            let extent = self.append_chunk(run_id, run_offset, piece)?;
            self.open_runs.get_mut(&run_id).expect("the run was opened").push(extent);
        }
        debug_assert_eq!(self.open_runs[&run_id].len, new_len);
        Ok(new_len)
    }

    /// Up to `max_bytes` of a run's output from `offset`; empty at or past the end.
    pub fn read(&mut self, run_id: u64, offset: u64, max_bytes: usize) -> Result<Vec<u8>, OutputError> {
        let pieces = match self.open_runs.get(&run_id) {
            Some(run) => read_plan(run, offset, max_bytes),
            None => read_plan(&*self.closed_run(run_id)?, offset, max_bytes),
        };
        let mut bytes = vec![0; pieces.iter().map(|&(_, _, piece_bytes)| piece_bytes).sum()];
        let mut filled = 0;
        for (pack, data_offset, piece_bytes) in pieces {
            let file = self.pack_file(pack)?;
            file.read_exact_at(&mut bytes[filled..filled + piece_bytes], data_offset)
                .map_err(OutputError::io(|| format!("read output of task {run_id:016x} from pack {pack}")))?;
            filled += piece_bytes;
        }
        Ok(bytes)
    }

    /// The run ended: its extents leave memory. Its bytes stay readable.
    pub fn close(&mut self, run_id: u64) {
        self.open_runs.remove(&run_id);
    }

    /// Packs written, packs created and packs sealed since the last call, as a job another
    /// thread can run. `None` if there is nothing to do.
    pub fn take_sync_job(&mut self) -> Option<OutputSyncJob> {
        self.reap_seals();
        let seals: Vec<_> = self.sealed.iter_mut().filter_map(SealedPack::take_seal_work).collect();
        if self.dirty_packs.is_empty() && !self.dir_dirty && seals.is_empty() {
            return None;
        }
        let mut packs: Vec<(u64, Arc<File>)> = self.dirty_packs.drain().collect();
        packs.sort_unstable_by_key(|&(number, _)| number);
        let sync_dir = std::mem::take(&mut self.dir_dirty);
        Some(OutputSyncJob { dir: self.dir.clone(), packs, sync_dir, seals, poisoned: Arc::clone(&self.poisoned) })
    }

    /// Deletes, oldest first and at most `max_packs` of them, the sealed and indexed packs
    /// (and their indexes) whose every run id is below `cutoff_run_id` and that hold no
    /// chunk of an open run. A run whose packs are gone reads as empty (length 0), and so
    /// does one whose first pack is gone. Two unlinks per pack, on the caller's thread.
    pub fn remove_packs_before(&mut self, cutoff_run_id: u64, max_packs: usize) -> Result<RemovedPacks, OutputError> {
        self.reap_seals();
        let used_by_open_runs: HashSet<u64> =
            self.open_runs.values().flat_map(|run| run.extents.iter().map(|extent| extent.pack)).collect();
        let doomed: Vec<u64> = self
            .sealed
            .iter()
            .filter(|pack| pack.pending.is_none() && pack.max_run_id < cutoff_run_id)
            .filter(|pack| !used_by_open_runs.contains(&pack.number))
            .map(|pack| pack.number)
            .take(max_packs)
            .collect();
        self.closed_runs.clear();
        let mut removed = RemovedPacks::default();
        for number in doomed {
            removed.bytes += self.remove_pack(number)?;
            removed.packs += 1;
        }
        Ok(removed)
    }

    /// What the store holds now.
    pub fn stats(&mut self) -> OutputStats {
        self.reap_seals();
        let unindexed = self.sealed.iter().filter_map(|pack| pack.pending.as_ref());
        OutputStats {
            packs: self.sealed.len() + 1,
            pack_bytes: self.sealed.iter().map(|pack| pack.bytes).sum::<u64>() + self.current.end,
            open_runs: self.open_runs.len(),
            entries_in_memory: self.current.entries.len()
                + unindexed.clone().map(|pending| pending.entries.len()).sum::<usize>(),
            unindexed_packs: unindexed.count(),
        }
    }

    /// Makes the run open, with its extents from disk if it was not.
    fn open_run(&mut self, run_id: u64) -> Result<(), OutputError> {
        if self.open_runs.contains_key(&run_id) {
            return Ok(());
        }
        let run = match self.closed_runs.remove(&run_id) {
            Some(run) => Arc::unwrap_or_clone(run),
            None => self.load_run(run_id)?,
        };
        self.open_runs.insert(run_id, run);
        Ok(())
    }

    /// A run that is not open, from the cache or from disk.
    fn closed_run(&mut self, run_id: u64) -> Result<Arc<RunExtents>, OutputError> {
        if let Some(run) = self.closed_runs.get(&run_id) {
            return Ok(Arc::clone(run));
        }
        let run = Arc::new(self.load_run(run_id)?);
        if self.closed_runs.len() >= MAX_CACHED_CLOSED_RUNS {
            self.closed_runs.clear();
        }
        self.closed_runs.insert(run_id, Arc::clone(&run));
        Ok(run)
    }

    /// A run's extents from the indexes of the sealed packs that may hold it and from the
    /// current pack.
    fn load_run(&mut self, run_id: u64) -> Result<RunExtents, OutputError> {
        let mut chunks: Vec<Extent> = Vec::new();
        let mut indexed = Vec::new();
        if self.max_sealed_run_id.is_some_and(|max| run_id <= max) {
            for pack in self.sealed.iter().filter(|pack| pack.may_hold(run_id)) {
                match &pack.pending {
                    Some(pending) => chunks.extend(
                        entries_of_run_in(&pending.entries, run_id)
                            .iter()
                            .map(|entry| Extent::from_entry(pack.number, entry)),
                    ),
                    None => indexed.push((pack.number, pack.entry_count)),
                }
            }
        }
        for (number, entry_count) in indexed {
            let index = self.index_file(number)?;
            let entries = entries_of_run(&index, &index_path(&self.dir, number), entry_count, run_id)?;
            chunks.extend(entries.iter().map(|entry| Extent::from_entry(number, entry)));
        }
        chunks.extend(self.current.chunks_of_run(run_id));
        Ok(RunExtents::from_chunks(chunks))
    }

    /// Writes one chunk at the end of the current pack, sealing it first if the chunk does
    /// not fit. On failure nothing is indexed and the bytes written are cut off (now, or
    /// before the next write).
    fn append_chunk(&mut self, run_id: u64, run_offset: u64, data: &[u8]) -> Result<Extent, OutputError> {
        self.cut_failed_write()?;
        let chunk_bytes = (CHUNK_HEADER_BYTES + data.len()) as u64;
        if self.current.end + chunk_bytes > self.pack_bytes {
            assert!(self.current.end > 0, "a chunk always fits an empty pack");
            self.rotate()?;
        }
        self.chunk_buffer.clear();
        ChunkHeader::encode(run_id, run_offset, data, &mut self.chunk_buffer);
        let pack_offset = self.current.end;
        if let Err(source) = self.write_chunk_buffer(pack_offset) {
            self.current.needs_truncate = true;
            // The error to report is the write's; a failed cut is retried before the next write.
            let _ = self.cut_failed_write();
            return Err(OutputError::growing(|| {
                format!("write output of task {run_id:016x} at {run_offset} to pack {}", self.current.number)
            })(source));
        }
        self.dirty_packs.insert(self.current.number, Arc::clone(&self.current.file));
        Ok(self.current.add(run_id, run_offset, pack_offset, data.len() as u32))
    }

    fn write_chunk_buffer(&mut self, pack_offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.failing_writes > 0 {
            self.faults.failing_writes -= 1;
            let half = &self.chunk_buffer[..self.chunk_buffer.len() / 2];
            self.current.file.write_all_at(half, pack_offset)?;
            return Err(io::Error::from_raw_os_error(28));
        }
        self.current.file.write_all_at(&self.chunk_buffer, pack_offset)
    }

    /// Cuts the bytes a failed write left after the current pack's end.
    fn cut_failed_write(&mut self) -> Result<(), OutputError> {
        if !self.current.needs_truncate {
            return Ok(());
        }
        let number = self.current.number;
        self.current
            .file
            .set_len(self.current.end)
            .map_err(OutputError::growing(|| format!("cut a failed write off pack {number}")))?;
        self.current.needs_truncate = false;
        Ok(())
    }

    /// Starts the next pack and seals the current one. The only file work on this thread
    /// is creating the new, empty pack; on failure the current pack stays current.
    fn rotate(&mut self) -> Result<(), OutputError> {
        let number = self.current.number + 1;
        let file = self.create_pack(number).map_err(OutputError::growing(|| format!("create pack {number}")))?;
        let sealed = std::mem::replace(&mut self.current, CurrentPack::new(number, file)).seal();
        self.dir_dirty = true;
        if sealed.entry_count > 0 {
            self.max_sealed_run_id = Some(self.max_sealed_run_id.unwrap_or(0).max(sealed.max_run_id));
        }
        self.sealed.push(sealed);
        Ok(())
    }

    fn create_pack(&mut self, number: u64) -> io::Result<File> {
        #[cfg(test)]
        if self.faults.failing_creates > 0 {
            self.faults.failing_creates -= 1;
            return Err(io::Error::from_raw_os_error(28));
        }
        OpenOptions::new().read(true).write(true).create_new(true).open(pack_path(&self.dir, number))
    }

    /// Deletes a sealed, indexed pack and its index; returns the pack's size.
    fn remove_pack(&mut self, number: u64) -> Result<u64, OutputError> {
        let position = self.sealed.binary_search_by_key(&number, |pack| pack.number).expect("a sealed pack");
        // The pack goes first: an index without its pack is removed at open, while a pack
        // without its index would be indexed again.
        remove_if_present(&pack_path(&self.dir, number))?;
        remove_if_present(&index_path(&self.dir, number))?;
        self.pack_files.remove(&number);
        self.index_files.remove(&number);
        Ok(self.sealed.remove(position).bytes)
    }

    /// Takes back the index work of finished or failed sync jobs.
    fn reap_seals(&mut self) {
        self.sealed.iter_mut().for_each(SealedPack::reap);
    }

    /// A handle to read pack `number`.
    fn pack_file(&mut self, number: u64) -> Result<Arc<File>, OutputError> {
        if number == self.current.number {
            return Ok(Arc::clone(&self.current.file));
        }
        if let Ok(position) = self.sealed.binary_search_by_key(&number, |pack| pack.number)
            && let Some(pending) = &self.sealed[position].pending
        {
            return Ok(Arc::clone(&pending.file));
        }
        let path = pack_path(&self.dir, number);
        cached_open(&mut self.pack_files, number, &path, || format!("open pack {number}"))
    }

    fn index_file(&mut self, number: u64) -> Result<Arc<File>, OutputError> {
        let path = index_path(&self.dir, number);
        cached_open(&mut self.index_files, number, &path, || format!("open index of pack {number}"))
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for run in self.open_runs.values() {
            run.check_invariants();
        }
        assert!(self.sealed.windows(2).all(|pair| pair[0].number < pair[1].number));
        assert!(self.sealed.last().is_none_or(|pack| pack.number < self.current.number));
        assert!(self.current.end <= self.pack_bytes);
        assert!(self.closed_runs.keys().all(|run_id| !self.open_runs.contains_key(run_id)));
    }
}

/// Where the bytes of a read lie: (pack, data offset, bytes) pieces; none at or past the end.
fn read_plan(run: &RunExtents, offset: u64, max_bytes: usize) -> Vec<(u64, u64, usize)> {
    if offset >= run.len {
        return Vec::new();
    }
    let count = usize::try_from(run.len - offset).unwrap_or(usize::MAX).min(max_bytes);
    run.pieces(offset, count)
}

/// Opens `path` read-only through a small cache (emptied when full).
fn cached_open(
    cache: &mut HashMap<u64, Arc<File>>,
    number: u64,
    path: &Path,
    context: impl FnOnce() -> String,
) -> Result<Arc<File>, OutputError> {
    if let Some(file) = cache.get(&number) {
        return Ok(Arc::clone(file));
    }
    let file = Arc::new(File::open(path).map_err(OutputError::io(context))?);
    if cache.len() >= MAX_CACHED_FILES {
        cache.clear();
    }
    cache.insert(number, Arc::clone(&file));
    Ok(file)
}

fn remove_if_present(path: &Path) -> Result<(), OutputError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(OutputError::Io { context: format!("remove {}", path.display()), source: error })
        }
        _ => Ok(()),
    }
}

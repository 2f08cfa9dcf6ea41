//! History runs (docs/state.md, section 3): finished tasks, off the daemon's heap.
//!
//! A run is an immutable file of records sorted by id, each with the keys it is listed
//! under (the daemon uses a task's state and tags), and per key a posting list of its
//! records, newest first. The daemon writes one run per snapshot, of the tasks that ended
//! since the one before, and reads runs through a read-only mapping: a lookup by id is a
//! binary search, a listing by key walks a posting list. This module knows bytes, ids and
//! keys; what a record holds is the daemon's archive.
//!
//! A run is named `<number as 20 decimal digits>.run` (the daemon numbers a run by the log
//! record its snapshot covers). The daemon keeps other immutable sets of records by id in
//! the same format under another suffix (`HistoryDir::open_with_suffix`): the request
//! texts beside each snapshot, `<seq>.text`. It is written as `<name>.tmp`, synced, renamed, and the
//! directory synced; `HistoryDir::open` removes what an interrupted write left.
//!
//! Checks: the header has its own CRC and is checked at open; the index (ids, record
//! table, keys, posting lists) has one CRC and a structural check (ids ascending, every
//! offset in bounds, posting lists descending), done once, the first time the run is
//! searched, so that a start-up with many runs reads none of them; each record has its own
//! CRC, checked on every read. A damaged run answers with [`HistoryError::Damaged`],
//! never with wrong bytes, and never panics.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::large_files::{WriteBehind, remove_gradually};
use crate::sync_dir;
use crate::wal::mmap::ReadOnlyMap;

const MAGIC: [u8; 8] = *b"APIARYHR";
/// 2: the records of task runs hold their outputs (the core's snapshot schema
/// 5). A run of another version is refused by name, never misread.
const FORMAT_VERSION: u32 = 2;
/// Records start here and at every multiple of 16 after, as `rkyv` needs.
const HEADER_BYTES: usize = 80;
const RECORD_ALIGNMENT: usize = 16;
const _: () = assert!(HEADER_BYTES.is_multiple_of(RECORD_ALIGNMENT));
const ID_BYTES: usize = 8;
const RECORD_ENTRY_BYTES: usize = 16;
const KEY_ENTRY_BYTES: usize = 24;
const POSTING_BYTES: usize = 4;
const RUN_SUFFIX: &str = ".run";
/// Added to a file's name while it is written.
const TEMPORARY_SUFFIX: &str = ".tmp";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("failed to {context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("history run {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

fn io_error(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> HistoryError {
    move |source| HistoryError::Io { context: context(), source }
}

/// A run's header.
///
/// Layout (all integers little-endian), 80 bytes:
///
/// ```text
/// offset  size  field
///      0     8  magic         "APIARYHR"
///      8     4  version       u32, FORMAT_VERSION
///     12     4  reserved      zero
///     16     8  count         u64, records
///     24     8  key_count     u64, distinct keys
///     32     8  min_id        u64, the first record's id
///     40     8  max_id        u64, the last record's id
///     48     8  index_offset  u64, where the index starts (records lie before it)
///     56     8  index_len     u64, the index runs to the end of the file
///     64     4  index_crc     u32, CRC-32 of the index
///     68     4  header_crc    u32, CRC-32 of bytes 0..68
///     72     8  reserved      zero
///     80        records, each at a 16-byte-aligned offset, zero padding between
/// ```
///
/// The index, from `index_offset`:
///
/// ```text
/// ids       count × u64              ascending
/// records   count × (offset u64, len u32, crc u32)   the record's bytes and their CRC-32
/// keys      key_count × (name_at u64, name_len u32, postings u32, postings_at u64)
///                                    sorted by name; `*_at` count from the index start
/// names     the keys' bytes
/// postings  u32 record numbers, each key's list descending (newest first)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    count: u64,
    key_count: u64,
    min_id: u64,
    max_id: u64,
    index_offset: u64,
    index_len: u64,
    index_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let fields = [self.count, self.key_count, self.min_id, self.max_id, self.index_offset, self.index_len];
        for (at, field) in (16..).step_by(8).zip(fields) {
            bytes[at..at + 8].copy_from_slice(&field.to_le_bytes());
        }
        bytes[64..68].copy_from_slice(&self.index_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&bytes[0..68]);
        bytes[68..72].copy_from_slice(&header_crc.to_le_bytes());
        debug_assert_eq!(Header::decode(&bytes), Ok(*self));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Header, String> {
        let Some(bytes) = bytes.get(..HEADER_BYTES) else {
            return Err(format!("the file is {} bytes, shorter than a run header", bytes.len()));
        };
        if crc32fast::hash(&bytes[0..68]) != u32_at(bytes, 68) {
            return Err("header CRC mismatch".into());
        }
        if bytes[0..8] != MAGIC {
            return Err("not a history run (bad magic)".into());
        }
        if u32_at(bytes, 8) != FORMAT_VERSION {
            return Err(format!("unknown history run format version {}", u32_at(bytes, 8)));
        }
        Ok(Header {
            count: u64_at(bytes, 16),
            key_count: u64_at(bytes, 24),
            min_id: u64_at(bytes, 32),
            max_id: u64_at(bytes, 40),
            index_offset: u64_at(bytes, 48),
            index_len: u64_at(bytes, 56),
            index_crc: u32_at(bytes, 64),
        })
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The directory of history runs.
#[derive(Debug, Clone)]
pub struct HistoryDir {
    dir: PathBuf,
    /// The files' suffix: `.run` for history runs; the daemon keeps other
    /// files of this format (snapshots' request texts) under another.
    suffix: &'static str,
}

impl HistoryDir {
    /// Opens `dir` (creating it), removing what interrupted writes left.
    pub fn open(dir: &Path) -> Result<HistoryDir, HistoryError> {
        HistoryDir::open_with_suffix(dir, RUN_SUFFIX)
    }

    /// The same, for files named `<number:020><suffix>` (`suffix` like ".text").
    pub fn open_with_suffix(dir: &Path, suffix: &'static str) -> Result<HistoryDir, HistoryError> {
        fs::create_dir_all(dir).map_err(io_error(|| format!("create history directory {}", dir.display())))?;
        let history = HistoryDir { dir: dir.to_path_buf(), suffix };
        for name in history.entries()? {
            if name.strip_suffix(TEMPORARY_SUFFIX).is_some_and(|name| name.ends_with(suffix)) {
                let path = dir.join(&name);
                fs::remove_file(&path).map_err(io_error(|| format!("remove unfinished run {}", path.display())))?;
            }
        }
        Ok(history)
    }

    /// The numbers of the runs in the directory, ascending.
    pub fn list(&self) -> Result<Vec<u64>, HistoryError> {
        let mut numbers: Vec<u64> = self.entries()?.iter().filter_map(|name| parse_name(name, self.suffix)).collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    pub fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:020}{}", self.suffix))
    }

    /// Starts writing run `number`; nothing is under its name until `finish`.
    pub fn create(&self, number: u64) -> Result<RunWriter, HistoryError> {
        let path = self.path(number);
        let temporary = self.dir.join(format!("{number:020}{}{TEMPORARY_SUFFIX}", self.suffix));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io_error(|| format!("create history run {}", temporary.display())))?;
        let mut writer = RunWriter {
            file: BufWriter::with_capacity(1 << 20, WriteBehind::new(file)),
            dir: self.dir.clone(),
            temporary,
            path,
            offset: 0,
            ids: Vec::new(),
            records: Vec::new(),
            postings: BTreeMap::new(),
        };
        writer.write(&[0; HEADER_BYTES])?;
        Ok(writer)
    }

    pub fn open_run(&self, number: u64) -> Result<HistoryRun, HistoryError> {
        HistoryRun::open(&self.path(number))
    }

    /// Removes these runs, if there; then syncs the directory.
    pub fn remove(&self, numbers: &[u64]) -> Result<(), HistoryError> {
        self.remove_with(numbers, |path| fs::remove_file(path))
    }

    /// Removes these runs, if there, freeing their blocks a MiB at a time first
    /// (`large_files.rs`); then syncs the directory. For runs no process reads any
    /// more: one that still did would read zeros where the blocks were.
    pub fn remove_gradually(&self, numbers: &[u64]) -> Result<(), HistoryError> {
        self.remove_with(numbers, remove_gradually)
    }

    fn remove_with(&self, numbers: &[u64], remove: impl Fn(&Path) -> io::Result<()>) -> Result<(), HistoryError> {
        for &number in numbers {
            let path = self.path(number);
            match remove(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error(|| format!("remove history run {}", path.display()))(error));
                }
                _ => {}
            }
        }
        sync_dir(&self.dir).map_err(io_error(|| format!("sync history directory {}", self.dir.display())))
    }

    fn entries(&self) -> Result<Vec<String>, HistoryError> {
        let context = || format!("list history directory {}", self.dir.display());
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(context))? {
            names.push(entry.map_err(io_error(context))?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Writes one run: records go to the file as they come (ids ascending); the index is
/// built in memory and written by `finish`.
pub struct RunWriter {
    file: BufWriter<WriteBehind>,
    dir: PathBuf,
    temporary: PathBuf,
    path: PathBuf,
    offset: u64,
    ids: Vec<u64>,
    records: Vec<(u64, u32, u32)>,
    /// Per key, its records in ascending order (reversed when written).
    postings: BTreeMap<Vec<u8>, Vec<u32>>,
}

impl RunWriter {
    /// Adds a record with an id above every earlier one, listed under `keys`.
    pub fn push(&mut self, id: u64, record: &[u8], keys: &[&[u8]]) -> Result<(), HistoryError> {
        assert!(self.ids.last().is_none_or(|last| *last < id), "run records come in ascending id order");
        let number = u32::try_from(self.ids.len()).expect("fewer than 2^32 records in a run");
        let len = u32::try_from(record.len()).expect("a record under 4 GiB");
        self.ids.push(id);
        self.records.push((self.offset, len, crc32fast::hash(record)));
        for key in keys {
            let list = self.postings.entry(key.to_vec()).or_default();
            if list.last() != Some(&number) {
                list.push(number);
            }
        }
        self.write(record)?;
        let padding = record.len().next_multiple_of(RECORD_ALIGNMENT) - record.len();
        self.write(&[0; RECORD_ALIGNMENT][..padding])
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Writes the index and the header, syncs, and renames the run into place.
    pub fn finish(mut self) -> Result<PathBuf, HistoryError> {
        let index = self.encode_index();
        let header = Header {
            count: self.ids.len() as u64,
            key_count: self.postings.len() as u64,
            min_id: self.ids.first().copied().unwrap_or(0),
            max_id: self.ids.last().copied().unwrap_or(0),
            index_offset: self.offset,
            index_len: index.len() as u64,
            index_crc: crc32fast::hash(&index),
        };
        self.write(&index)?;
        let context = || format!("write history run {}", self.temporary.display());
        let mut file = self.file.into_inner().map_err(|error| io_error(context)(error.into_error()))?.into_inner();
        file.seek(SeekFrom::Start(0)).map_err(io_error(context))?;
        file.write_all(&header.encode()).map_err(io_error(context))?;
        file.sync_all().map_err(io_error(context))?;
        fs::rename(&self.temporary, &self.path)
            .map_err(io_error(|| format!("rename history run {} into place", self.path.display())))?;
        sync_dir(&self.dir).map_err(io_error(|| format!("sync history directory {}", self.dir.display())))?;
        Ok(self.path)
    }

    fn encode_index(&self) -> Vec<u8> {
        let count = self.ids.len();
        let names_len: usize = self.postings.keys().map(Vec::len).sum();
        let names_at = count * (ID_BYTES + RECORD_ENTRY_BYTES) + self.postings.len() * KEY_ENTRY_BYTES;
        let mut index = Vec::with_capacity(names_at + names_len);
        for id in &self.ids {
            index.extend_from_slice(&id.to_le_bytes());
        }
        for &(offset, len, crc) in &self.records {
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&len.to_le_bytes());
            index.extend_from_slice(&crc.to_le_bytes());
        }
        let (mut name_at, mut postings_at) = (names_at, names_at + names_len);
        for (name, list) in &self.postings {
            index.extend_from_slice(&(name_at as u64).to_le_bytes());
            index.extend_from_slice(&(name.len() as u32).to_le_bytes());
            index.extend_from_slice(&(list.len() as u32).to_le_bytes());
            index.extend_from_slice(&(postings_at as u64).to_le_bytes());
            name_at += name.len();
            postings_at += list.len() * POSTING_BYTES;
        }
        for name in self.postings.keys() {
            index.extend_from_slice(name);
        }
        for list in self.postings.values() {
            for number in list.iter().rev() {
                index.extend_from_slice(&number.to_le_bytes());
            }
        }
        index
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), HistoryError> {
        self.file.write_all(bytes).map_err(io_error(|| format!("write history run {}", self.temporary.display())))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// One run, read through a read-only mapping.
#[derive(Debug)]
pub struct HistoryRun {
    path: PathBuf,
    map: Option<ReadOnlyMap>,
    header: Header,
    /// Set by the first search: whether the index passed its checks.
    index_checked: OnceLock<Result<(), String>>,
}

impl HistoryRun {
    /// Opens a run and checks its header (not its index: see the module comment).
    pub fn open(path: &Path) -> Result<HistoryRun, HistoryError> {
        let shown = path.display().to_string();
        let damaged = |reason: String| HistoryError::Damaged { path: shown.clone(), reason };
        let file = File::open(path).map_err(io_error(|| format!("open history run {shown}")))?;
        let len = file.metadata().map_err(io_error(|| format!("stat history run {shown}")))?.len();
        if len < HEADER_BYTES as u64 {
            return Err(damaged(format!("the file is {len} bytes, shorter than a run header")));
        }
        let map = ReadOnlyMap::map(&file).map_err(io_error(|| format!("map history run {shown}")))?;
        let header = Header::decode(map.stable_prefix(HEADER_BYTES)).map_err(damaged)?;
        let index_end = header.index_offset.checked_add(header.index_len);
        if header.index_offset < HEADER_BYTES as u64 || index_end != Some(len) {
            return Err(damaged(format!(
                "its index at {} of {} bytes does not end the file of {len} bytes",
                header.index_offset, header.index_len
            )));
        }
        let sections = header.count.checked_mul((ID_BYTES + RECORD_ENTRY_BYTES) as u64).and_then(|records| {
            header.key_count.checked_mul(KEY_ENTRY_BYTES as u64).and_then(|keys| records.checked_add(keys))
        });
        if sections.is_none_or(|sections| sections > header.index_len) || header.count > u64::from(u32::MAX) {
            return Err(damaged(format!(
                "{} records and {} keys do not fit an index of {} bytes",
                header.count, header.key_count, header.index_len
            )));
        }
        // An empty run maps nothing past its header; there is nothing to read.
        let map = (header.count > 0).then_some(map);
        Ok(HistoryRun { path: path.to_path_buf(), map, header, index_checked: OnceLock::new() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// The first and last record's ids (from the header: no index read).
    pub fn min_id(&self) -> u64 {
        self.header.min_id
    }

    pub fn max_id(&self) -> u64 {
        self.header.max_id
    }

    /// The run's index, checked the first time it is asked for.
    pub fn index(&self) -> Result<RunIndex<'_>, HistoryError> {
        let index = RunIndex::new(self);
        let checked = self.index_checked.get_or_init(|| index.check());
        match checked {
            Ok(()) => Ok(index),
            Err(reason) => Err(self.damaged(reason.clone())),
        }
    }

    /// Lets the pages read so far (by a check of the index, say) leave the
    /// process's resident set; they stay in the page cache.
    pub fn release_pages(&self) -> Result<(), HistoryError> {
        match &self.map {
            Some(map) => {
                map.release_all().map_err(io_error(|| format!("release the pages of {}", self.path.display())))
            }
            None => Ok(()),
        }
    }

    /// The index if it has been checked already (by `index`, maybe on another
    /// thread); `None` if not yet, so a caller that must not wait can come back.
    pub fn index_if_checked(&self) -> Option<Result<RunIndex<'_>, HistoryError>> {
        match self.index_checked.get()? {
            Ok(()) => Some(Ok(RunIndex::new(self))),
            Err(reason) => Some(Err(self.damaged(reason.clone()))),
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            // Sound: a run never changes after its rename (see `wal/mmap.rs`).
            Some(map) => map.stable_prefix(map.len()),
            None => &[],
        }
    }

    fn damaged(&self, reason: String) -> HistoryError {
        HistoryError::Damaged { path: self.path.display().to_string(), reason }
    }
}

/// A run's index, once checked: every lookup stays in bounds.
#[derive(Clone, Copy)]
pub struct RunIndex<'a> {
    run: &'a HistoryRun,
    ids: &'a [u8],
    records: &'a [u8],
    keys: &'a [u8],
    /// The whole index, which key entries count from.
    index: &'a [u8],
}

impl<'a> RunIndex<'a> {
    fn new(run: &'a HistoryRun) -> RunIndex<'a> {
        let header = &run.header;
        let bytes = run.bytes();
        let index = bytes.get(header.index_offset as usize..).unwrap_or(&[]);
        let count = header.count as usize;
        let (ids, rest) = index.split_at((count * ID_BYTES).min(index.len()));
        let (records, rest) = rest.split_at((count * RECORD_ENTRY_BYTES).min(rest.len()));
        let keys = &rest[..(header.key_count as usize * KEY_ENTRY_BYTES).min(rest.len())];
        RunIndex { run, ids, records, keys, index }
    }

    /// The index's CRC and structure (bounds were checked against the header at open).
    fn check(&self) -> Result<(), String> {
        if crc32fast::hash(self.index) != self.run.header.index_crc {
            return Err("index CRC mismatch".into());
        }
        let count = self.len();
        if (1..count).any(|at| self.id_at(at - 1) >= self.id_at(at)) {
            return Err("ids are not ascending".into());
        }
        if count > 0 && (self.id_at(0), self.id_at(count - 1)) != (self.run.min_id(), self.run.max_id()) {
            return Err("the first and last ids differ from the header's".into());
        }
        for number in 0..count {
            let (offset, len, _) = self.record_entry(number);
            let fits = offset.checked_add(len).is_some_and(|end| end <= self.run.header.index_offset);
            if !fits || offset < HEADER_BYTES as u64 || !offset.is_multiple_of(RECORD_ALIGNMENT as u64) {
                return Err(format!("record {number} lies outside the records"));
            }
        }
        let mut previous: Option<&[u8]> = None;
        for key in 0..self.keys.len() / KEY_ENTRY_BYTES {
            let (name, postings) = self.key_entry(key).ok_or_else(|| format!("key {key} lies outside the index"))?;
            if previous.is_some_and(|previous| previous >= name) {
                return Err("keys are not sorted".into());
            }
            previous = Some(name);
            let descending = (1..postings.len()).all(|at| postings.get(at - 1) > postings.get(at));
            if !descending || !postings.is_empty() && postings.get(0) >= count {
                return Err(format!("the posting list of key {key} is out of order or range"));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ids.len() / ID_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id_at(&self, number: usize) -> u64 {
        u64_at(self.ids, number * ID_BYTES)
    }

    /// The record number of `id`, if the run holds it.
    pub fn find(&self, id: u64) -> Option<usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.id_at(middle).cmp(&id) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(middle),
            }
        }
        None
    }

    /// How many records have ids below `id`: the records before `id`, oldest first.
    pub fn count_below(&self, id: u64) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if self.id_at(middle) < id { low = middle + 1 } else { high = middle }
        }
        low
    }

    /// Record `number`'s bytes, 16-byte aligned, checked against their CRC.
    pub fn record(&self, number: usize) -> Result<&'a [u8], HistoryError> {
        let (offset, len, crc) = self.record_entry(number);
        let bytes = &self.run.bytes()[offset as usize..(offset + len) as usize];
        if crc32fast::hash(bytes) != crc {
            let id = self.id_at(number);
            return Err(self.run.damaged(format!("the record of id {id:#x} fails its CRC")));
        }
        Ok(bytes)
    }

    /// The records listed under `key`, newest first; `None` when no record is.
    pub fn postings(&self, key: &[u8]) -> Option<Postings<'a>> {
        let (mut low, mut high) = (0, self.keys.len() / KEY_ENTRY_BYTES);
        while low < high {
            let middle = low + (high - low) / 2;
            let (name, postings) = self.key_entry(middle)?;
            match name.cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(postings),
            }
        }
        None
    }

    fn record_entry(&self, number: usize) -> (u64, u64, u32) {
        let at = number * RECORD_ENTRY_BYTES;
        (u64_at(self.records, at), u64::from(u32_at(self.records, at + 8)), u32_at(self.records, at + 12))
    }

    /// A key's name and posting list, if both lie inside the index.
    fn key_entry(&self, key: usize) -> Option<(&'a [u8], Postings<'a>)> {
        let at = key * KEY_ENTRY_BYTES;
        let name_at = usize::try_from(u64_at(self.keys, at)).ok()?;
        let name_len = u32_at(self.keys, at + 8) as usize;
        let count = u32_at(self.keys, at + 12) as usize;
        let postings_at = usize::try_from(u64_at(self.keys, at + 16)).ok()?;
        let name = self.index.get(name_at..name_at.checked_add(name_len)?)?;
        let postings = self.index.get(postings_at..postings_at.checked_add(count.checked_mul(POSTING_BYTES)?)?)?;
        Some((name, Postings { bytes: postings }))
    }
}

/// A posting list: record numbers, descending (newest first).
#[derive(Clone, Copy, Debug)]
pub struct Postings<'a> {
    bytes: &'a [u8],
}

impl Postings<'_> {
    pub fn len(&self) -> usize {
        self.bytes.len() / POSTING_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The `position`th record number, counting from the newest.
    pub fn get(&self, position: usize) -> usize {
        u32_at(self.bytes, position * POSTING_BYTES) as usize
    }

    /// Where the first record number below `number` sits: the list from there on is
    /// everything older than it.
    pub fn position_below(&self, number: usize) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if self.get(middle) >= number { low = middle + 1 } else { high = middle }
        }
        low
    }

    pub fn contains(&self, number: usize) -> bool {
        let position = self.position_below(number + 1);
        position < self.len() && self.get(position) == number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_run(dir: &HistoryDir, number: u64, records: &[(u64, &[u8], &[&str])]) -> HistoryRun {
        let mut writer = dir.create(number).unwrap();
        for (id, record, keys) in records {
            let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
            writer.push(*id, record, &keys).unwrap();
        }
        writer.finish().unwrap();
        dir.open_run(number).unwrap()
    }

    fn sample(dir: &HistoryDir) -> HistoryRun {
        write_run(
            dir,
            7,
            &[
                (0x10, b"first", &["state:COMPLETED", "tag:pool:ci"]),
                (0x20, b"second record", &["state:EXPIRED"]),
                (0x30, b"", &["state:COMPLETED", "tag:pool:ci", "tag:os:linux"]),
            ],
        )
    }

    #[test]
    fn records_are_found_by_id_and_by_key_newest_first() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = HistoryDir::open(temporary.path()).unwrap();
        let run = sample(&dir);
        assert_eq!((run.len(), run.min_id(), run.max_id()), (3, 0x10, 0x30));
        assert!(run.index_if_checked().is_none(), "not checked before it is asked for");
        let index = run.index().unwrap();
        assert!(run.index_if_checked().is_some_and(|checked| checked.is_ok()));
        assert_eq!(index.find(0x20), Some(1));
        assert_eq!(index.find(0x21), None);
        assert_eq!(index.record(1).unwrap(), b"second record");
        assert_eq!(index.record(2).unwrap(), b"");
        assert_eq!(index.record(0).unwrap().as_ptr() as usize % RECORD_ALIGNMENT, 0);
        let ci = index.postings(b"tag:pool:ci").unwrap();
        assert_eq!((0..ci.len()).map(|at| ci.get(at)).collect::<Vec<_>>(), vec![2, 0]);
        assert!(ci.contains(0) && ci.contains(2) && !ci.contains(1));
        assert_eq!(ci.position_below(2), 1);
        assert!(index.postings(b"tag:none").is_none());
        assert_eq!(index.count_below(0x30), 2);
        assert_eq!(dir.list().unwrap(), vec![7]);
    }

    #[test]
    fn an_empty_run_reads_as_empty() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = HistoryDir::open(temporary.path()).unwrap();
        let run = write_run(&dir, 1, &[]);
        assert!(run.is_empty());
        let index = run.index().unwrap();
        assert_eq!(index.find(1), None);
        assert!(index.postings(b"state:COMPLETED").is_none());
    }

    #[test]
    fn every_flipped_byte_is_caught_or_harmless() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = HistoryDir::open(temporary.path()).unwrap();
        let path = sample(&dir).path().to_path_buf();
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0x41;
            fs::write(&path, &bytes).unwrap();
            let Ok(run) = HistoryRun::open(&path) else { continue };
            let Ok(index) = run.index() else { continue };
            // A flip is refused, or it hit padding: what reads back is intact.
            for (number, id) in [(0usize, 0x10u64), (1, 0x20), (2, 0x30)] {
                assert_eq!(index.find(id), Some(number), "flip at {at}");
                if let Ok(record) = index.record(number) {
                    assert_eq!(record, [b"first".as_slice(), b"second record", b""][number], "flip at {at}");
                }
            }
        }
    }

    #[test]
    fn an_interrupted_write_leaves_nothing_under_a_run_name() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = HistoryDir::open(temporary.path()).unwrap();
        let mut writer = dir.create(3).unwrap();
        writer.push(1, b"x", &[]).unwrap();
        drop(writer);
        assert!(dir.list().unwrap().is_empty());
        let dir = HistoryDir::open(temporary.path()).unwrap();
        assert_eq!(fs::read_dir(temporary.path()).unwrap().count(), 0, "the temporary file is gone");
        sample(&dir);
        dir.remove(&[7, 8]).unwrap();
        assert!(dir.list().unwrap().is_empty());
    }

    #[test]
    fn runs_removed_gradually_are_gone_and_others_stay() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = HistoryDir::open(temporary.path()).unwrap();
        let big: Vec<u8> = vec![9; 3 << 20];
        for number in [1, 2] {
            let mut writer = dir.create(number).unwrap();
            writer.push(number, &big, &[]).unwrap();
            writer.finish().unwrap();
        }
        dir.remove_gradually(&[1, 5]).unwrap();
        assert_eq!(dir.list().unwrap(), vec![2], "run 1 went, the missing 5 is no error");
        assert_eq!(dir.open_run(2).unwrap().index().unwrap().record(0).unwrap(), &big[..]);
    }
}

//! Garbage collection of the content-addressed store (docs/state.md,
//! section 2.1): blobs that retained tasks name are kept, and so is anything
//! used within `--cas-grace`; the rest is removed.
//!
//! The loop decides when (`GcSchedule`): after a retention pass let tasks go,
//! or once a grace has gone by without a pass; never while one runs. It takes
//! the held tasks' roots from the core (`Core::cas_roots`) and hands them to
//! the store's thread, which runs the pass (`GcPass`) in bounded steps
//! between its requests:
//!
//! 1. the retained records of every history run add their roots;
//! 2. the trees under the roots are walked in the store: each directory blob
//!    is read (not as a use) and decoded, and its files and subdirectories are
//!    referenced; a directory that is missing, too large or not a canonical
//!    `Directory` ends its branch, counted in the pass's log line;
//! 3. the store sweeps itself with the referenced set and the cutoff
//!    `now - grace - grace/16`: a use is written at most once per grace/16
//!    (`LocalStore::set_use_refresh`), so every blob is kept for at least a
//!    grace after its last use.
//!
//! Invariants: a step does a bounded amount of work (`RECORDS_PER_STEP`
//! records, `DIRECTORIES_PER_STEP` directories or `DIRECTORY_BYTES_PER_STEP`
//! of them, or one part of the sweep);
//! the referenced set holds at most `MAX_REFERENCED_BLOBS` digests, past
//! which the pass stops and removes nothing.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apiary_protocol::cas::Digest;
use apiary_protocol::cas::reapi::Directory;
use apiary_storage::HistoryRun;
use apiary_storage::cas::{CasError, ContentStore, GcCounts, Sweep};

use crate::core::CasRoots;
use crate::core::history::cas_roots_of;

/// The default of `--cas-grace`.
pub const DEFAULT_CAS_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
/// History records read per step.
const RECORDS_PER_STEP: usize = 4096;
/// Directory blobs read per step, and their bytes (a step ends after the
/// directory that reaches it: one directory is never split).
const DIRECTORIES_PER_STEP: usize = 256;
const DIRECTORY_BYTES_PER_STEP: u64 = 1 << 20;
/// A directory blob larger than this is not read (its branch ends): no
/// directory of a real tree comes near it.
pub const MAX_DIRECTORY_BYTES: u64 = 64 << 20;
/// Digests the referenced set may hold: about 3 GiB of memory at most.
pub const MAX_REFERENCED_BLOBS: usize = 32_000_000;

/// How long a recorded use stands before the store writes another: a
/// sixteenth of the grace.
pub fn use_refresh(grace: Duration) -> Duration {
    grace / 16
}

/// Blobs last used before this may go: a grace, plus the refresh interval
/// by which a blob's recorded use may lag its real one.
pub fn unused_since(now: SystemTime, grace: Duration) -> SystemTime {
    now.checked_sub(grace + use_refresh(grace)).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// When the loop starts a pass.
pub struct GcSchedule {
    grace: Duration,
    /// A retention pass let tasks go since the last pass started.
    retention_applied: bool,
    /// When the last pass started; at first, when the loop did.
    last_started: Instant,
    /// No pass ran yet.
    first: bool,
    running: bool,
}

impl GcSchedule {
    pub fn new(grace: Duration, now: Instant) -> GcSchedule {
        GcSchedule { grace, retention_applied: false, last_started: now, first: true, running: false }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn retention_applied(&mut self) {
        self.retention_applied = true;
    }

    /// Whether a pass starts now: none runs, retention let tasks go (or a
    /// grace went by without a pass), and the last one started at least a
    /// refresh interval ago, so a busy retention does not sweep each minute.
    pub fn is_due(&self, now: Instant) -> bool {
        let since_last = now.saturating_duration_since(self.last_started);
        let spaced = self.first || since_last >= use_refresh(self.grace);
        !self.running && spaced && (self.retention_applied || since_last >= self.grace)
    }

    pub fn started(&mut self, now: Instant) {
        self.running = true;
        self.first = false;
        self.retention_applied = false;
        self.last_started = now;
    }

    pub fn finished(&mut self) {
        self.running = false;
    }
}

/// What a pass found and did, for its log line and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub counts: GcCounts,
    pub referenced_blobs: u64,
    pub directories_walked: u64,
    /// Directories named but not in the store (their branch ended).
    pub missing_directories: u64,
    /// Directories too large, corrupt or not canonical (their branch ended).
    pub bad_directories: u64,
    /// The first of those, and why.
    pub first_bad_directory: Option<String>,
    pub unreadable_records: u64,
    pub unreadable_runs: u64,
    /// Why the pass stopped early; before its sweep, it removed nothing.
    pub stopped: Option<String>,
    pub took: Duration,
}

impl GcReport {
    /// The log line of a pass.
    pub fn describe(&self) -> String {
        let counts = &self.counts;
        let mut line = format!(
            "content-addressed store collected: removed {} blobs ({} bytes) and {} unfinished uploads ({} bytes); \
             kept {} referenced and {} used within the grace; {} blobs referenced, {} directories walked, took {} ms",
            counts.removed_blobs,
            counts.removed_bytes,
            counts.removed_uploads,
            counts.removed_upload_bytes,
            counts.kept_referenced,
            counts.kept_recent,
            self.referenced_blobs,
            self.directories_walked,
            self.took.as_millis()
        );
        if self.missing_directories > 0 {
            let _ = write!(line, "; {} named directories are not in the store", self.missing_directories);
        }
        if let Some(first) = &self.first_bad_directory {
            let _ = write!(line, "; {} directories could not be read (first: {first})", self.bad_directories);
        }
        if self.unreadable_records + self.unreadable_runs > 0 {
            let _ = write!(
                line,
                "; {} damaged history records and {} damaged runs were left out",
                self.unreadable_records, self.unreadable_runs
            );
        }
        if let Some(reason) = &self.stopped {
            let _ = write!(line, "; stopped early: {reason}");
        }
        line
    }
}

enum Phase {
    History,
    Trees,
    Sweep,
}

/// A pass on the store's thread.
pub struct GcPass {
    phase: Phase,
    /// History runs still to read, the one being read last.
    runs: Vec<Arc<HistoryRun>>,
    /// The next record of the last run; `None` before it is started.
    next_record: Option<usize>,
    retained_from: u64,
    /// Every blob found named so far; also what the walk has seen.
    referenced: HashSet<Digest>,
    /// Directories referenced and not yet read.
    to_walk: Vec<Digest>,
    sweep: Sweep,
    report: GcReport,
    started: Instant,
}

impl GcPass {
    pub fn new(roots: CasRoots, unused_since: SystemTime) -> GcPass {
        let CasRoots { held, mut runs, retained_from } = roots;
        runs.reverse();
        let mut pass = GcPass {
            phase: Phase::History,
            runs,
            next_record: None,
            retained_from,
            referenced: HashSet::with_capacity(held.len()),
            to_walk: Vec::new(),
            sweep: Sweep::new(unused_since),
            report: GcReport::default(),
            started: Instant::now(),
        };
        for root in held {
            pass.reference_directory(root);
        }
        pass
    }

    /// One bounded step; the report once the pass is over.
    pub fn step(&mut self, store: &mut impl ContentStore) -> Option<GcReport> {
        let over = match self.phase {
            Phase::History => {
                self.read_history();
                false
            }
            Phase::Trees => {
                self.walk(store);
                false
            }
            Phase::Sweep => self.sweep(store),
        };
        if self.referenced.len() > MAX_REFERENCED_BLOBS && self.report.stopped.is_none() {
            self.report.stopped = Some(format!(
                "the retained tasks name over {MAX_REFERENCED_BLOBS} blobs (MAX_REFERENCED_BLOBS); nothing was removed"
            ));
        }
        (over || self.report.stopped.is_some()).then(|| self.finish())
    }

    fn finish(&mut self) -> GcReport {
        self.report.counts = self.sweep.counts;
        self.report.referenced_blobs = self.referenced.len() as u64;
        self.report.took = self.started.elapsed();
        // The pass is over: its memory goes now, not when the next starts.
        self.referenced = HashSet::new();
        self.to_walk = Vec::new();
        self.runs.clear();
        std::mem::take(&mut self.report)
    }

    fn reference_directory(&mut self, digest: Digest) {
        if self.referenced.insert(digest) {
            self.to_walk.push(digest);
        }
    }

    /// Reads up to `RECORDS_PER_STEP` retained records of the current run.
    fn read_history(&mut self) {
        let Some(run) = self.runs.last().map(Arc::clone) else {
            self.phase = Phase::Trees;
            return;
        };
        let index = match run.index() {
            Ok(index) => index,
            Err(_) => {
                // Its tasks cannot be shown either; the daemon logs the damage where it reads the run.
                self.report.unreadable_runs += 1;
                self.runs.pop();
                return;
            }
        };
        let from = self.next_record.unwrap_or_else(|| index.count_below(self.retained_from));
        let to = index.len().min(from + RECORDS_PER_STEP);
        let mut found = Vec::new();
        self.report.unreadable_records += cas_roots_of(&index, from..to, &mut |digest| found.push(digest));
        for root in found {
            self.reference_directory(root);
        }
        if to == index.len() {
            self.runs.pop();
            self.next_record = None;
        } else {
            self.next_record = Some(to);
        }
    }

    /// Reads up to `DIRECTORIES_PER_STEP` directories (or their bytes) and
    /// references what they hold.
    fn walk(&mut self, store: &mut impl ContentStore) {
        let mut bytes_read = 0;
        for _ in 0..DIRECTORIES_PER_STEP {
            if bytes_read >= DIRECTORY_BYTES_PER_STEP {
                return;
            }
            let Some(digest) = self.to_walk.pop() else {
                self.phase = Phase::Sweep;
                return;
            };
            bytes_read += digest.size_bytes;
            match read_directory(store, digest) {
                Ok(Some(directory)) => self.reference_entries(&directory),
                Ok(None) => self.report.missing_directories += 1,
                Err(reason) => {
                    self.report.bad_directories += 1;
                    self.report.first_bad_directory.get_or_insert_with(|| format!("{digest}: {reason}"));
                }
            }
        }
    }

    fn reference_entries(&mut self, directory: &Directory) {
        self.report.directories_walked += 1;
        // `decode_checked` saw that every digest is well formed.
        let files = directory.files.iter().filter_map(|file| file.digest.as_ref()?.to_digest().ok());
        self.referenced.extend(files);
        for sub in &directory.directories {
            if let Some(digest) = sub.digest.as_ref().and_then(|digest| digest.to_digest().ok()) {
                self.reference_directory(digest);
            }
        }
    }

    /// One part of the store's sweep; whether the sweep is over.
    fn sweep(&mut self, store: &mut impl ContentStore) -> bool {
        let referenced = &self.referenced;
        match store.sweep_step(&mut self.sweep, &|digest| referenced.contains(digest)) {
            Ok(over) => over,
            Err(error) => {
                self.report.stopped = Some(format!("the sweep failed: {error}"));
                true
            }
        }
    }
}

/// A directory blob of the store, decoded: `None` if the store lacks it.
fn read_directory(store: &mut impl ContentStore, digest: Digest) -> Result<Option<Directory>, String> {
    if digest.size_bytes == 0 {
        // The empty directory: REAPI clients need not upload the empty blob.
        return Ok(Some(Directory::default()));
    }
    if !store.contains(&digest) {
        return Ok(None);
    }
    if digest.size_bytes > MAX_DIRECTORY_BYTES {
        return Err(format!("{} bytes, over {MAX_DIRECTORY_BYTES} (MAX_DIRECTORY_BYTES)", digest.size_bytes));
    }
    let bytes = match store.read_without_use(digest) {
        Ok(bytes) => bytes,
        Err(CasError::NotFound(_)) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    Directory::decode_checked(&bytes).map(Some).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use apiary_protocol::cas::reapi::{DirectoryNode, FileNode};
    use apiary_storage::cas::LocalStore;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    /// Stores a blob and makes it look last used `ago` before now.
    fn put_aged(store: &mut LocalStore, dir: &std::path::Path, bytes: &[u8], ago: Duration) -> Digest {
        let digest = Digest::of(bytes);
        store.put(digest, bytes).unwrap();
        let name = format!("{}-{}", digest.hex(), digest.size_bytes);
        let path = dir.join("blobs").join(&name[..2]).join(&name);
        File::open(path).unwrap().set_modified(SystemTime::now() - ago).unwrap();
        digest
    }

    fn directory(files: &[(&str, Digest)], directories: &[(&str, Digest)]) -> Vec<u8> {
        let file = |(name, digest): &(&str, Digest)| FileNode {
            name: name.to_string(),
            digest: Some((*digest).into()),
            is_executable: false,
        };
        let sub =
            |(name, digest): &(&str, Digest)| DirectoryNode { name: name.to_string(), digest: Some((*digest).into()) };
        let directory = Directory {
            files: files.iter().map(file).collect(),
            directories: directories.iter().map(sub).collect(),
            symlinks: Vec::new(),
        };
        directory.encode_canonical().0
    }

    fn run_to_end(pass: &mut GcPass, store: &mut LocalStore) -> (GcReport, usize) {
        let mut steps = 1;
        loop {
            if let Some(report) = pass.step(store) {
                return (report, steps);
            }
            steps += 1;
        }
    }

    #[test]
    fn a_pass_keeps_the_trees_under_the_roots_and_what_was_used_lately_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(dir.path(), 1 << 30).unwrap();
        let old = 2 * DAY;
        let deep = put_aged(&mut store, dir.path(), b"deep file", old);
        let top = put_aged(&mut store, dir.path(), b"top file", old);
        let sub = put_aged(&mut store, dir.path(), &directory(&[("deep.txt", deep)], &[]), old);
        let empty = Digest::of(b"");
        let root_bytes = directory(&[("top.txt", top)], &[("empty", empty), ("sub", sub)]);
        let root = put_aged(&mut store, dir.path(), &root_bytes, old);
        let not_a_directory = put_aged(&mut store, dir.path(), &[0xff, 0xff, 0xff], old);
        let unreferenced = put_aged(&mut store, dir.path(), b"nobody names me", old);
        let fresh = put_aged(&mut store, dir.path(), b"just uploaded", Duration::ZERO);
        let missing = Digest::of(b"never uploaded");
        let roots = CasRoots { held: vec![root, missing, not_a_directory], runs: Vec::new(), retained_from: 0 };

        let mut pass = GcPass::new(roots, SystemTime::now() - DAY);
        let (report, steps) = run_to_end(&mut pass, &mut store);
        assert!(steps > 257, "the sweep alone takes a step per part: {steps}");
        assert_eq!((report.counts.removed_blobs, report.counts.removed_bytes), (1, 15), "{}", report.describe());
        assert_eq!((report.counts.kept_referenced, report.counts.kept_recent), (5, 1));
        assert_eq!((report.missing_directories, report.bad_directories), (1, 1));
        assert!(report.first_bad_directory.as_ref().unwrap().starts_with(&not_a_directory.to_string()));
        assert_eq!(report.directories_walked, 3, "the root, its subdirectory and the empty one");
        assert_eq!(store.find_missing(&[root, sub, top, deep, not_a_directory, fresh, unreferenced]), [unreferenced]);
        let line = report.describe();
        assert!(
            line.contains("removed 1 blobs (15 bytes)") && line.contains("1 named directories are not in the store")
        );
    }

    #[test]
    fn a_schedule_starts_after_retention_or_a_grace_never_twice_at_once_nor_too_often() {
        let grace = Duration::from_secs(1600);
        let start = Instant::now();
        let mut schedule = GcSchedule::new(grace, start);
        assert!(!schedule.is_due(start), "nothing was let go");
        schedule.retention_applied();
        assert!(schedule.is_due(start), "the first pass needs no spacing");
        schedule.started(start);
        schedule.retention_applied();
        assert!(!schedule.is_due(start + grace), "one pass at a time");
        schedule.finished();
        assert!(!schedule.is_due(start + Duration::from_secs(99)), "spaced by a sixteenth of the grace");
        assert!(schedule.is_due(start + Duration::from_secs(100)));
        schedule.started(start + Duration::from_secs(100));
        schedule.finished();
        let later = start + Duration::from_secs(100) + grace;
        assert!(!schedule.is_due(later - Duration::from_secs(1)));
        assert!(schedule.is_due(later), "a grace without retention letting anything go");
        assert_eq!(
            unused_since(SystemTime::UNIX_EPOCH + 2 * grace, grace),
            SystemTime::UNIX_EPOCH + grace - grace / 16
        );
    }
}

//! Named caches: directories that live on the bot across tasks, under
//! `<work-dir>/c/<name>`, moved (renamed, never copied) into a task's work directory at
//! the path the task names before its command runs, and moved back afterwards with
//! whatever the task left in them. A cache used for the first time starts empty.
//! `<work-dir>/c/` and every cache the bot creates are mode 0700.
//!
//! The store remembers which caches exist, their sizes (measured when a cache comes
//! back from a task, and at start) and the order they were last used in. The order
//! survives restarts in `<work-dir>/c/.state`, rewritten whole (through a temporary file
//! and a rename) after every change:
//!
//! ```text
//! apiary-bot named caches 1\n      header: format and version
//! <name>\n                          one line per cache, least recently used first
//! ```
//!
//! A state file that is missing or unreadable only loses the order: caches found on
//! disk but not in it count as the least recently used, by name; names in it with no
//! directory are forgotten.
//!
//! Invariants:
//! - a cache is either in the store (`entries`, at `<work-dir>/c/<name>`) or lent to
//!   the running task (`lent`), never both;
//! - eviction only removes caches in `entries`, so never one in use;
//! - a cache comes back only from a real directory reached through real directories
//!   (no symbolic links), so a task cannot make the bot adopt or later delete a
//!   directory outside its work directory;
//! - names are `[a-z0-9_]{1,MAX_CACHE_NAME_BYTES}`, so a name is always one safe path
//!   component, and `.state` can never be a cache.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use apiary_protocol::{CacheInfo, NamedCache, limits};

use crate::workdir::{self, RelativePathError};

const STATE_FILE: &str = ".state";
const STATE_TEMPORARY_FILE: &str = ".state.tmp";
const STATE_HEADER: &str = "apiary-bot named caches 1";
/// A cache's name is one file name on disk (NAME_MAX on Linux).
const _: () = assert!(limits::MAX_CACHE_NAME_BYTES <= 255);

/// A task's list of caches that the bot refuses; the daemon checks the same rules.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CacheSpecError {
    #[error("{count} named caches are more than the limit of {}", limits::MAX_NAMED_CACHES)]
    TooMany { count: usize },
    #[error("named cache name {0:?} must be 1 to {max} characters of [a-z0-9_]", max = limits::MAX_CACHE_NAME_BYTES)]
    BadName(String),
    #[error("named cache {0:?} is given twice")]
    DuplicateName(String),
    #[error("the path of named cache {0:?} is empty")]
    EmptyPath(String),
    #[error(transparent)]
    Path(#[from] RelativePathError),
    #[error("named caches {first:?} and {second:?} overlap: one path contains the other")]
    Overlap { first: String, second: String },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("failed to create the caches directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("failed to read the caches directory {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("failed to map named cache {name:?} to {path}: {source}")]
    Map { name: String, path: PathBuf, source: io::Error },
    #[error("failed to keep named cache {name:?}: {source}")]
    Return { name: String, source: io::Error },
}

/// True for a name Swarming accepts (`^[a-z0-9_]{1,4096}$`), capped to our limit.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::MAX_CACHE_NAME_BYTES
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// Checks a task's caches: count, names, paths (relative, inside the work directory,
/// not empty), no name twice, no path inside another.
pub(crate) fn validate(caches: &[NamedCache]) -> Result<(), CacheSpecError> {
    if caches.len() > limits::MAX_NAMED_CACHES {
        return Err(CacheSpecError::TooMany { count: caches.len() });
    }
    let mut names = BTreeSet::new();
    let mut paths: Vec<(&str, PathBuf)> = Vec::with_capacity(caches.len());
    for cache in caches {
        if !is_valid_name(&cache.name) {
            return Err(CacheSpecError::BadName(cache.name.clone()));
        }
        if !names.insert(cache.name.as_str()) {
            return Err(CacheSpecError::DuplicateName(cache.name.clone()));
        }
        let path = workdir::join_inside(Path::new(""), "caches.path", &cache.path)?;
        if path.components().next().is_none() {
            return Err(CacheSpecError::EmptyPath(cache.name.clone()));
        }
        if let Some((other, _)) = paths.iter().find(|(_, other)| other.starts_with(&path) || path.starts_with(other)) {
            return Err(CacheSpecError::Overlap { first: other.to_string(), second: cache.name.clone() });
        }
        paths.push((&cache.name, path));
    }
    Ok(())
}

/// What became of a cache a task had.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Returned {
    Kept {
        size_bytes: u64,
    },
    /// The task removed it, or put something else than a directory in its place.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    size_bytes: u64,
}

/// The bot's named caches. Not shared: the session owns it.
#[derive(Debug)]
pub(crate) struct CacheStore {
    dir: PathBuf,
    /// Evict least recently used caches while the total is above this.
    max_bytes: Option<u64>,
    /// Caches at rest, least recently used first.
    entries: Vec<Entry>,
    /// Caches lent to the running task.
    lent: BTreeSet<String>,
}

impl CacheStore {
    pub(crate) fn new(dir: PathBuf, max_bytes: Option<u64>) -> CacheStore {
        CacheStore { dir, max_bytes, entries: Vec::new(), lent: BTreeSet::new() }
    }

    /// Creates the caches directory and finds the caches in it, in the saved order.
    pub(crate) fn load(&mut self) -> Result<(), CacheError> {
        assert!(self.lent.is_empty(), "load with caches lent");
        workdir::make_private_dir(&self.dir)
            .map_err(|source| CacheError::CreateDir { path: self.dir.clone(), source })?;
        let saved = fs::read_to_string(self.dir.join(STATE_FILE)).unwrap_or_default();
        let mut saved_lines = saved.lines();
        let saved_order: Vec<&str> =
            if saved_lines.next() == Some(STATE_HEADER) { saved_lines.collect() } else { Vec::new() };
        let mut on_disk: BTreeSet<String> = BTreeSet::new();
        let listing = fs::read_dir(&self.dir).map_err(|source| CacheError::List { path: self.dir.clone(), source })?;
        for entry in listing.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let is_dir = entry.file_type().is_ok_and(|file_type| file_type.is_dir());
            if is_dir && is_valid_name(&name) {
                on_disk.insert(name);
            }
        }
        let mut order: Vec<String> =
            on_disk.iter().filter(|name| !saved_order.contains(&name.as_str())).cloned().collect();
        let mut seen = BTreeSet::new();
        for name in saved_order {
            if on_disk.contains(name) && seen.insert(name) {
                order.push(name.to_string());
            }
        }
        self.entries = order
            .into_iter()
            .map(|name| {
                let size_bytes = tree_size(&self.dir.join(&name));
                Entry { name, size_bytes }
            })
            .collect();
        self.check_invariants();
        Ok(())
    }

    /// The caches at rest and their sizes, by name, for the poll.
    pub(crate) fn infos(&self) -> Vec<CacheInfo> {
        let mut infos: Vec<CacheInfo> = self
            .entries
            .iter()
            .map(|entry| CacheInfo { name: entry.name.clone(), size_bytes: entry.size_bytes })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|entry| entry.size_bytes).sum()
    }

    /// Moves cache `name` to `target` (a path that does not exist yet), or creates it
    /// there empty. The cache is lent until `take_back`.
    pub(crate) fn lend(&mut self, name: &str, target: &Path) -> Result<(), CacheError> {
        assert!(is_valid_name(name), "lend of an unchecked cache name");
        assert!(!self.lent.contains(name), "cache {name:?} lent twice");
        let map_error = |source| CacheError::Map { name: name.to_string(), path: target.to_path_buf(), source };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(map_error)?;
        }
        let moved = match self.entries.iter().position(|entry| entry.name == name) {
            Some(index) => match fs::rename(self.dir.join(name), target) {
                Ok(()) => {
                    self.entries.remove(index);
                    true
                }
                // Gone from under the store (a task may have removed it): it starts empty.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.entries.remove(index);
                    false
                }
                Err(error) => return Err(map_error(error)),
            },
            None => false,
        };
        if !moved {
            DirBuilder::new().mode(0o700).create(target).map_err(map_error)?;
        }
        self.lent.insert(name.to_string());
        self.check_invariants();
        Ok(())
    }

    /// Moves a lent cache back from `base`/`relative` (where the task had it) and
    /// makes it the most recently used. A cache that cannot come back stays where it
    /// is (it goes with the work directory) and is forgotten.
    pub(crate) fn take_back(&mut self, name: &str, base: &Path, relative: &Path) -> Result<Returned, CacheError> {
        assert!(self.lent.remove(name), "cache {name:?} taken back but not lent");
        let Some(source) = real_directory_below(base, relative) else {
            return Ok(Returned::Lost);
        };
        let return_error = |source| CacheError::Return { name: name.to_string(), source };
        workdir::make_private_dir(&self.dir).map_err(return_error)?;
        let destination = self.dir.join(name);
        if let Err(error) = fs::rename(&source, &destination) {
            if error.kind() != io::ErrorKind::PermissionDenied {
                return Err(return_error(error));
            }
            // The task made the cache or its parent read-only; moving a directory to
            // another parent needs write access to both.
            make_owner_writable(&source).map_err(return_error)?;
            if let Some(parent) = source.parent() {
                make_owner_writable(parent).map_err(return_error)?;
            }
            fs::rename(&source, &destination).map_err(return_error)?;
        }
        let size_bytes = tree_size(&destination);
        self.entries.push(Entry { name: name.to_string(), size_bytes });
        self.check_invariants();
        Ok(Returned::Kept { size_bytes })
    }

    /// Removes least recently used caches at rest until the total fits the limit;
    /// returns the names and sizes removed. A cache that cannot be removed is kept
    /// with its new size, and the errors are returned for the log.
    pub(crate) fn evict(&mut self) -> (Vec<CacheInfo>, Vec<String>) {
        let Some(max_bytes) = self.max_bytes else { return (Vec::new(), Vec::new()) };
        let mut evicted = Vec::new();
        let mut errors = Vec::new();
        let mut index = 0;
        while self.total_bytes() > max_bytes && index < self.entries.len() {
            let path = self.dir.join(&self.entries[index].name);
            match workdir::remove_tree(&path) {
                Ok(()) => {
                    let entry = self.entries.remove(index);
                    evicted.push(CacheInfo { name: entry.name, size_bytes: entry.size_bytes });
                }
                Err(error) => {
                    errors.push(format!("failed to evict named cache {:?}: {error}", self.entries[index].name));
                    self.entries[index].size_bytes = tree_size(&path);
                    index += 1;
                }
            }
        }
        self.check_invariants();
        (evicted, errors)
    }

    /// Writes the last-used order to the state file.
    pub(crate) fn save(&self) -> io::Result<()> {
        let mut text = format!("{STATE_HEADER}\n");
        for entry in &self.entries {
            text.push_str(&entry.name);
            text.push('\n');
        }
        workdir::make_private_dir(&self.dir)?;
        let temporary = self.dir.join(STATE_TEMPORARY_FILE);
        let mut file = fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        drop(file);
        fs::rename(&temporary, self.dir.join(STATE_FILE))
    }

    pub(crate) fn check_invariants(&self) {
        let mut names = BTreeSet::new();
        for entry in &self.entries {
            assert!(is_valid_name(&entry.name), "bad cache name {:?} in the store", entry.name);
            assert!(names.insert(entry.name.as_str()), "cache {:?} in the store twice", entry.name);
            assert!(!self.lent.contains(&entry.name), "cache {:?} both at rest and lent", entry.name);
        }
    }
}

/// `base`/`relative` when it and every directory on the way is a real directory
/// (not a symbolic link); None otherwise, or when something is missing.
fn real_directory_below(base: &Path, relative: &Path) -> Option<PathBuf> {
    let mut path = base.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => continue,
            _ => return None,
        }
        let metadata = fs::symlink_metadata(&path).ok()?;
        if !metadata.is_dir() {
            return None;
        }
    }
    Some(path)
}

fn make_owner_writable(path: &Path) -> io::Result<()> {
    let mode = fs::symlink_metadata(path)?.permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
}

/// Bytes of the files (and symbolic links, not followed) in a tree. What cannot be
/// read counts as nothing: a size is for eviction, not for accounting.
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else { return 0 };
    if !metadata.is_dir() {
        return metadata.len();
    }
    let Ok(listing) = fs::read_dir(path) else { return 0 };
    listing.flatten().map(|entry| tree_size(&entry.path())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(name: &str, path: &str) -> NamedCache {
        NamedCache { name: name.to_string(), path: path.to_string() }
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert_eq!(validate(&[cache("git_1", "cache/git"), cache("pip", "pip")]), Ok(()));
        for bad in ["", "Git", "a-b", "a.b", "../x", &"a".repeat(limits::MAX_CACHE_NAME_BYTES + 1)] {
            assert_eq!(validate(&[cache(bad, "p")]), Err(CacheSpecError::BadName(bad.to_string())));
        }
        assert!(is_valid_name(&"a".repeat(limits::MAX_CACHE_NAME_BYTES)));
        assert!(matches!(validate(&[cache("a", "../p")]), Err(CacheSpecError::Path(_))));
        assert!(matches!(validate(&[cache("a", "/p")]), Err(CacheSpecError::Path(_))));
        assert!(matches!(validate(&[cache("a", "./")]), Err(CacheSpecError::EmptyPath(_))));
        assert!(matches!(validate(&[cache("a", "p"), cache("a", "q")]), Err(CacheSpecError::DuplicateName(_))));
        assert!(matches!(validate(&[cache("a", "p/q"), cache("b", "p")]), Err(CacheSpecError::Overlap { .. })));
        assert!(matches!(validate(&[cache("a", "p"), cache("b", "./p/")]), Err(CacheSpecError::Overlap { .. })));
        assert_eq!(validate(&[cache("a", "p"), cache("b", "pq")]), Ok(()));
        let many: Vec<NamedCache> =
            (0..=limits::MAX_NAMED_CACHES).map(|i| cache(&format!("c{i}"), &format!("p{i}"))).collect();
        assert!(matches!(validate(&many), Err(CacheSpecError::TooMany { .. })));
        assert_eq!(validate(&many[..limits::MAX_NAMED_CACHES]), Ok(()));
    }

    /// Lends `name` into a fresh work directory, writes `bytes` bytes into it, takes it back.
    fn use_cache(store: &mut CacheStore, root: &Path, name: &str, bytes: usize) -> Returned {
        let work = root.join("work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        store.lend(name, &work.join("deep/cache")).unwrap();
        fs::write(work.join("deep/cache").join(format!("file{bytes}")), vec![b'x'; bytes]).unwrap();
        store.take_back(name, &work, Path::new("deep/cache")).unwrap()
    }

    #[test]
    fn caches_keep_files_and_the_order_survives_a_restart() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("c");
        let mut store = CacheStore::new(dir.clone(), None);
        store.load().unwrap();
        assert_eq!(use_cache(&mut store, temp.path(), "b", 10), Returned::Kept { size_bytes: 10 });
        assert_eq!(use_cache(&mut store, temp.path(), "a", 5), Returned::Kept { size_bytes: 5 });
        assert_eq!(use_cache(&mut store, temp.path(), "b", 1), Returned::Kept { size_bytes: 11 });
        store.save().unwrap();
        let names: Vec<&str> = store.entries.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        // A cache the state file does not know counts as the oldest.
        fs::create_dir(dir.join("z")).unwrap();
        fs::create_dir(dir.join("Not-A-Cache")).unwrap();
        let mut reloaded = CacheStore::new(dir, Some(0));
        reloaded.load().unwrap();
        let names: Vec<&str> = reloaded.entries.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(names, ["z", "a", "b"]);
        assert_eq!(reloaded.total_bytes(), 16);
        let infos = reloaded.infos();
        assert_eq!(infos.iter().map(|info| info.name.as_str()).collect::<Vec<_>>(), ["a", "b", "z"]);
    }

    #[test]
    fn the_caches_directory_and_new_caches_are_private() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("c");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut store = CacheStore::new(dir.clone(), None);
        store.load().unwrap();
        let mode_of = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode_of(&dir), 0o700);
        let work = temp.path().join("work");
        fs::create_dir(&work).unwrap();
        store.lend("fresh", &work.join("cache")).unwrap();
        assert_eq!(mode_of(&work.join("cache")), 0o700);
        store.take_back("fresh", &work, Path::new("cache")).unwrap();
        assert_eq!(mode_of(&dir.join("fresh")), 0o700);
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let temp = tempfile::tempdir().unwrap();
        let mut store = CacheStore::new(temp.path().join("c"), Some(25));
        store.load().unwrap();
        use_cache(&mut store, temp.path(), "old", 10);
        use_cache(&mut store, temp.path(), "mid", 10);
        use_cache(&mut store, temp.path(), "new", 10);
        let (evicted, errors) = store.evict();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(evicted, [CacheInfo { name: "old".to_string(), size_bytes: 10 }]);
        assert!(!temp.path().join("c/old").exists());
        assert_eq!(store.total_bytes(), 20);
    }

    #[test]
    fn a_lent_cache_is_never_evicted() {
        let temp = tempfile::tempdir().unwrap();
        let mut store = CacheStore::new(temp.path().join("c"), Some(0));
        store.load().unwrap();
        use_cache(&mut store, temp.path(), "a", 10);
        store.lend("a", &temp.path().join("work/a")).unwrap();
        let (evicted, _) = store.evict();
        assert!(evicted.is_empty());
        assert!(temp.path().join("work/a/file10").exists());
    }

    #[test]
    fn a_cache_replaced_by_a_link_or_removed_is_lost() {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        fs::create_dir_all(outside.join("cache")).unwrap();
        let work = temp.path().join("work");
        let mut store = CacheStore::new(temp.path().join("c"), None);
        store.load().unwrap();
        store.lend("a", &work.join("p/cache")).unwrap();
        fs::remove_dir_all(work.join("p")).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("p")).unwrap();
        assert_eq!(store.take_back("a", &work, Path::new("p/cache")).unwrap(), Returned::Lost);
        assert!(outside.join("cache").exists(), "the directory outside stays where it is");
        store.lend("b", &work.join("q")).unwrap();
        fs::remove_dir(work.join("q")).unwrap();
        assert_eq!(store.take_back("b", &work, Path::new("q")).unwrap(), Returned::Lost);
        assert!(store.infos().is_empty());
    }

    #[test]
    fn a_cache_removed_from_under_the_store_starts_empty() {
        let temp = tempfile::tempdir().unwrap();
        let mut store = CacheStore::new(temp.path().join("c"), None);
        store.load().unwrap();
        use_cache(&mut store, temp.path(), "a", 3);
        fs::remove_dir_all(temp.path().join("c")).unwrap();
        assert_eq!(use_cache(&mut store, temp.path(), "a", 4), Returned::Kept { size_bytes: 4 });
        store.save().unwrap();
        assert_eq!(fs::read_to_string(temp.path().join("c/.state")).unwrap(), format!("{STATE_HEADER}\na\n"));
    }
}

//! Work directories: one fresh run directory per task under the bot's work root,
//! removed after the task, and the checks on the relative paths a task names inside
//! it (`relative_cwd`, `env_prefixes`, the paths of named caches).
//!
//! Layout of the bot's work root:
//!
//! ```text
//! <work-dir>/w/<run id>/                 a task's run directory, mode 0700
//! <work-dir>/w/<run id>/work/            the task's work directory (relative paths start here)
//! <work-dir>/w/<run id>/out/             APIARY_OUTDIR, empty at the start
//! <work-dir>/w/<run id>/secret_bytes     APIARY_SECRET_BYTES_PATH, mode 0600, only with secret bytes
//! <work-dir>/w/<run id>/bot_file.json    SWARMING_BOT_FILE: the bot describes itself to the task
//! <work-dir>/c/                          named caches (see `cache.rs`), mode 0700
//! <work-dir>/cas/                        the content cache of input files (see `content_cache.rs`)
//! ```
//!
//! The work root, `w/` and `c/` are mode 0700 when the bot creates them. The bot
//! refuses a work root that another user owns or that its group or others may
//! write: whoever could write there could plant files in a task's run directory or
//! swap a named cache under it.
//!
//! Invariants: a run directory is fresh and its work and output directories empty
//! when the task starts; a path a task names never leaves its work directory (no
//! absolute paths, no `..`); removal succeeds even when the task left read-only
//! files or directories behind, or removed the directory itself; the secret file is
//! removed first, on its own, so it is gone even if the rest of the tree is not.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use apiary_protocol::ids::format_task_id;

const WORK_DIR: &str = "work";
const OUT_DIR: &str = "out";
const SECRET_FILE: &str = "secret_bytes";
const BOT_FILE: &str = "bot_file.json";

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkDirError {
    #[error("failed to create the work directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to remove the work directory {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("failed to write the secret bytes to {path}: {source}")]
    WriteSecret { path: PathBuf, source: io::Error },
    #[error("failed to write the bot file {path}: {source}")]
    WriteBotFile { path: PathBuf, source: io::Error },
    #[error("failed to remove the secret bytes at {path}: {source}")]
    RemoveSecret { path: PathBuf, source: io::Error },
    #[error("refusing the work directory {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
}

/// A path a task gave that would leave its work directory.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RelativePathError {
    #[error("{field} {path:?} must be a relative path")]
    Absolute { field: &'static str, path: String },
    #[error("{field} {path:?} must not contain '..'")]
    ParentComponent { field: &'static str, path: String },
}

/// A task's secret bytes while the bot holds them: never printed, zeroed when dropped.
pub(crate) struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub(crate) fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(bytes)
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SecretBytes({} bytes)", self.0.len())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// The directories of a bot: run directories live under `<root>/w`, caches under `<root>/c`.
#[derive(Clone, Debug)]
pub(crate) struct WorkRoot {
    root: PathBuf,
}

impl WorkRoot {
    pub(crate) fn new(root: PathBuf) -> WorkRoot {
        WorkRoot { root }
    }

    /// The work directory itself, where the health check runs.
    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    fn tasks_dir(&self) -> PathBuf {
        self.root.join("w")
    }

    pub(crate) fn caches_dir(&self) -> PathBuf {
        self.root.join("c")
    }

    /// Where the content cache keeps input files, beside the run directories
    /// (one file system, so a cached file is hard-linked into a task).
    pub(crate) fn content_cache_dir(&self) -> PathBuf {
        self.root.join("cas")
    }

    /// Creates the root (mode 0700) or checks that the existing one is this user's
    /// alone, then removes run directories a previous run left behind (with any
    /// secret bytes and any caches that were lent when the bot stopped).
    pub(crate) fn prepare(&self) -> Result<(), WorkDirError> {
        create_private_root(&self.root)?;
        check_private(&self.root, current_user_id())?;
        let tasks_dir = self.tasks_dir();
        if tasks_dir.exists() {
            remove_tree(&tasks_dir).map_err(|source| WorkDirError::Remove { path: tasks_dir.clone(), source })?;
        }
        create_private_dir(&tasks_dir)
    }

    /// Creates the fresh run directory of one task, with its empty work and output directories.
    pub(crate) fn create_task_dir(&self, run_id: u64) -> Result<TaskDir, WorkDirError> {
        let tasks_dir = self.tasks_dir();
        let path = tasks_dir.join(format_task_id(run_id));
        if path.exists() {
            remove_tree(&path).map_err(|source| WorkDirError::Remove { path: path.clone(), source })?;
        }
        // A task may have removed `w` itself.
        create_private_dir(&tasks_dir)?;
        let create = |path: &Path, mode: u32| {
            DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(|source| WorkDirError::Create { path: path.to_path_buf(), source })
        };
        create(&path, 0o700)?;
        let task_dir = TaskDir { path, removed: false };
        create(&task_dir.work_dir(), 0o755)?;
        create(&task_dir.out_dir(), 0o755)?;
        Ok(task_dir)
    }
}

/// One task's run directory; removed by `remove`, or on drop as a last resort.
#[derive(Debug)]
pub(crate) struct TaskDir {
    path: PathBuf,
    removed: bool,
}

impl TaskDir {
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the task runs; its relative paths start here.
    pub(crate) fn work_dir(&self) -> PathBuf {
        self.path.join(WORK_DIR)
    }

    /// `APIARY_OUTDIR`.
    pub(crate) fn out_dir(&self) -> PathBuf {
        self.path.join(OUT_DIR)
    }

    fn secret_path(&self) -> PathBuf {
        self.path.join(SECRET_FILE)
    }

    /// `SWARMING_BOT_FILE`: where the bot describes itself to the task.
    pub(crate) fn bot_file_path(&self) -> PathBuf {
        self.path.join(BOT_FILE)
    }

    /// Writes the bot's description for the task (readable by it, outside `work/`).
    pub(crate) fn write_bot_file(&self, contents: &[u8]) -> Result<(), WorkDirError> {
        let path = self.bot_file_path();
        fs::write(&path, contents).map_err(|source| WorkDirError::WriteBotFile { path, source })
    }

    /// Writes the secret bytes to a new file that only the bot's user can read;
    /// returns its path (`APIARY_SECRET_BYTES_PATH`).
    pub(crate) fn write_secret(&self, secret: &SecretBytes) -> Result<PathBuf, WorkDirError> {
        let path = self.secret_path();
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(&secret.0));
        written.map_err(|source| WorkDirError::WriteSecret { path: path.clone(), source })?;
        Ok(path)
    }

    /// Removes the secret file, if there is one; `remove` checks that it is gone.
    pub(crate) fn remove_secret(&self) {
        let _ = fs::remove_file(self.secret_path());
    }

    /// Removes the secret file (if any), then the whole run directory.
    pub(crate) fn remove(mut self) -> Result<(), WorkDirError> {
        self.removed = true;
        let secret_path = self.secret_path();
        let secret_removed = fs::remove_file(&secret_path);
        let tree_removed = remove_tree(&self.path);
        if let Err(source) = secret_removed
            && fs::symlink_metadata(&secret_path).is_ok()
        {
            return Err(WorkDirError::RemoveSecret { path: secret_path, source });
        }
        tree_removed.map_err(|source| WorkDirError::Remove { path: self.path.clone(), source })
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = fs::remove_file(self.secret_path());
            let _ = remove_tree(&self.path);
        }
    }
}

/// Creates the work root and any missing parents; the root itself gets mode 0700.
/// An existing root is left as it is (`check_private` judges it).
fn create_private_root(root: &Path) -> Result<(), WorkDirError> {
    let create_error = |source| WorkDirError::Create { path: root.to_path_buf(), source };
    if let Some(parent) = root.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(create_error)?;
    }
    match DirBuilder::new().mode(0o700).create(root) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(create_error(error)),
        _ => Ok(()),
    }
}

/// Refuses a work root that is not a directory, that another user owns, or
/// that its group or others may write.
pub(crate) fn check_private(root: &Path, user_id: u32) -> Result<(), WorkDirError> {
    let refuse = |reason: String| WorkDirError::Unsafe { path: root.to_path_buf(), reason };
    let metadata = fs::metadata(root).map_err(|error| refuse(format!("cannot inspect it: {error}")))?;
    if !metadata.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if metadata.uid() != user_id {
        return Err(refuse(format!("it is owned by user id {}, not by this bot's user id {user_id}", metadata.uid())));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!("its group or others may write to it (mode {mode:04o}); make it 0700")));
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> Result<(), WorkDirError> {
    make_private_dir(path).map_err(|source| WorkDirError::Create { path: path.to_path_buf(), source })
}

/// Creates a directory inside the private root with mode 0700, or makes an
/// existing one 0700 (it is the bot's own: the root is checked first).
pub(crate) fn make_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

fn current_user_id() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Joins a task-given relative path onto `base`, refusing any path that leaves it.
/// The empty path names `base` itself.
pub(crate) fn join_inside(base: &Path, field: &'static str, relative: &str) -> Result<PathBuf, RelativePathError> {
    let mut joined = base.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => joined.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(RelativePathError::ParentComponent { field, path: relative.to_string() });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(RelativePathError::Absolute { field, path: relative.to_string() });
            }
        }
    }
    Ok(joined)
}

/// Removes a directory tree, first making every directory in it writable if a
/// plain removal fails (a task may have made its files or directories read-only).
/// A path that does not exist is already removed.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    make_directories_writable(path)?;
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Gives the owner full access to every directory of the tree, without following
/// symbolic links (a link may point outside the tree).
fn make_directories_writable(path: &Path) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Ok(());
    }
    let mode = metadata.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_directories_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        let base = Path::new("/w/1");
        assert_eq!(join_inside(base, "relative_cwd", ""), Ok(PathBuf::from("/w/1")));
        assert_eq!(join_inside(base, "relative_cwd", "a/./b/"), Ok(PathBuf::from("/w/1/a/b")));
        assert!(matches!(join_inside(base, "relative_cwd", "a/../b"), Err(RelativePathError::ParentComponent { .. })));
        assert!(matches!(join_inside(base, "relative_cwd", ".."), Err(RelativePathError::ParentComponent { .. })));
        assert!(matches!(join_inside(base, "env_prefixes", "/etc"), Err(RelativePathError::Absolute { .. })));
    }

    #[test]
    fn task_dirs_are_fresh_and_removed_even_when_read_only() {
        let temp = tempfile::tempdir().unwrap();
        let root = WorkRoot::new(temp.path().join("bot"));
        root.prepare().unwrap();
        let task_dir = root.create_task_dir(0x11).unwrap();
        let locked = task_dir.work_dir().join("locked");
        fs::create_dir_all(locked.join("inner")).unwrap();
        fs::write(locked.join("inner/file"), b"x").unwrap();
        fs::set_permissions(locked.join("inner/file"), fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(locked.join("inner"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).unwrap();
        let path = task_dir.path().to_path_buf();
        assert!(path.ends_with("w/0000000000000011"));
        task_dir.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn leftovers_are_removed() {
        let temp = tempfile::tempdir().unwrap();
        let root = WorkRoot::new(temp.path().to_path_buf());
        root.prepare().unwrap();
        let first = root.create_task_dir(0x21).unwrap();
        fs::write(first.work_dir().join("stale"), b"x").unwrap();
        fs::write(first.out_dir().join("stale"), b"x").unwrap();
        std::mem::forget(first);
        let second = root.create_task_dir(0x21).unwrap();
        assert_eq!(fs::read_dir(second.work_dir()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(second.out_dir()).unwrap().count(), 0);
        assert_eq!(fs::metadata(second.path()).unwrap().permissions().mode() & 0o777, 0o700);
        drop(second);
        root.prepare().unwrap();
        assert_eq!(fs::read_dir(temp.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn the_secret_file_is_private_and_removed_first() {
        let temp = tempfile::tempdir().unwrap();
        let root = WorkRoot::new(temp.path().to_path_buf());
        root.prepare().unwrap();
        let task_dir = root.create_task_dir(0x31).unwrap();
        let path = task_dir.write_secret(&SecretBytes::new(b"s3cret".to_vec())).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"s3cret");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!format!("{:?}", SecretBytes::new(b"s3cret".to_vec())).contains("s3cret"));
        // Even a task that removed its whole run directory leaves a clean removal.
        fs::remove_dir_all(task_dir.path()).unwrap();
        task_dir.remove().unwrap();
        assert!(!path.exists());
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_work_root_and_its_directories_are_private() {
        let temp = tempfile::tempdir().unwrap();
        let root = WorkRoot::new(temp.path().join("parent/bot"));
        root.prepare().unwrap();
        assert_eq!(mode_of(&temp.path().join("parent/bot")), 0o700);
        assert_eq!(mode_of(&temp.path().join("parent/bot/w")), 0o700);
        let task_dir = root.create_task_dir(0x41).unwrap();
        assert_eq!(mode_of(task_dir.path()), 0o700);
        // A task that removed `w` gets it back private.
        fs::remove_dir_all(temp.path().join("parent/bot/w")).unwrap();
        drop(task_dir);
        let task_dir = root.create_task_dir(0x51).unwrap();
        assert_eq!(mode_of(&temp.path().join("parent/bot/w")), 0o700);
        drop(task_dir);
    }

    #[test]
    fn a_work_root_others_may_write_is_refused_and_left_alone() {
        let temp = tempfile::tempdir().unwrap();
        let leftover = temp.path().join("w/0000000000000011");
        fs::create_dir_all(&leftover).unwrap();
        for mode in [0o777, 0o770, 0o702, 0o1777] {
            fs::set_permissions(temp.path(), fs::Permissions::from_mode(mode)).unwrap();
            let refused = WorkRoot::new(temp.path().to_path_buf()).prepare().unwrap_err();
            let message = refused.to_string();
            assert!(matches!(refused, WorkDirError::Unsafe { .. }), "{message}");
            assert!(message.contains(&format!("mode {mode:04o}")), "{message}");
            assert!(leftover.exists(), "a refused root is not touched");
        }
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        WorkRoot::new(temp.path().to_path_buf()).prepare().unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn a_work_root_of_another_user_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let owner = fs::metadata(temp.path()).unwrap().uid();
        check_private(temp.path(), owner).unwrap();
        let refused = check_private(temp.path(), owner + 1).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("owned by user id {owner}, not by this bot's user id {}", owner + 1)),
            "{refused}"
        );
        let file = temp.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(check_private(&file, owner).unwrap_err().to_string().contains("not a directory"));
    }
}

//! Work directories: one fresh directory per task under the bot's work root,
//! `<work-dir>/w/<run id>`, removed after the task, and the checks on the relative
//! paths a task names inside it (`relative_cwd`, `env_prefixes`).
//!
//! Invariants: a task directory is empty when the task starts; a path a task names
//! never leaves its directory (no absolute paths, no `..`); removal succeeds even
//! when the task left read-only files or directories behind.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use apiary_protocol::ids::format_task_id;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkDirError {
    #[error("failed to create the work directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to remove the work directory {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// A path a task gave that would leave its work directory.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RelativePathError {
    #[error("{field} {path:?} must be a relative path")]
    Absolute { field: &'static str, path: String },
    #[error("{field} {path:?} must not contain '..'")]
    ParentComponent { field: &'static str, path: String },
}

/// The directories of a bot: task directories live under `<root>/w`.
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

    /// Creates the root and removes task directories a previous run left behind.
    pub(crate) fn prepare(&self) -> Result<(), WorkDirError> {
        let tasks_dir = self.tasks_dir();
        if tasks_dir.exists() {
            remove_tree(&tasks_dir).map_err(|source| WorkDirError::Remove { path: tasks_dir.clone(), source })?;
        }
        fs::create_dir_all(&tasks_dir).map_err(|source| WorkDirError::Create { path: tasks_dir, source })
    }

    /// Creates the empty directory of one task run.
    pub(crate) fn create_task_dir(&self, run_id: u64) -> Result<TaskDir, WorkDirError> {
        let path = self.tasks_dir().join(format_task_id(run_id));
        if path.exists() {
            remove_tree(&path).map_err(|source| WorkDirError::Remove { path: path.clone(), source })?;
        }
        fs::create_dir_all(&path).map_err(|source| WorkDirError::Create { path: path.clone(), source })?;
        Ok(TaskDir { path, removed: false })
    }
}

/// One task's directory; removed by `remove`, or on drop as a last resort.
#[derive(Debug)]
pub(crate) struct TaskDir {
    path: PathBuf,
    removed: bool,
}

impl TaskDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn remove(mut self) -> Result<(), WorkDirError> {
        self.removed = true;
        remove_tree(&self.path).map_err(|source| WorkDirError::Remove { path: self.path.clone(), source })
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_tree(&self.path);
        }
    }
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
        let locked = task_dir.path().join("locked");
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
        fs::write(first.path().join("stale"), b"x").unwrap();
        std::mem::forget(first);
        let second = root.create_task_dir(0x21).unwrap();
        assert_eq!(fs::read_dir(second.path()).unwrap().count(), 0);
        drop(second);
        root.prepare().unwrap();
        assert_eq!(fs::read_dir(temp.path().join("w")).unwrap().count(), 0);
    }
}

//! Everything on disk around one task's command: before it, the run directory, the
//! named caches moved in, the secret bytes and the bot file written; after it, the caches moved back
//! and the run directory (with the secret) removed.
//!
//! Decisions are made before anything touches the disk: a task whose caches break
//! the rules is refused (a client error) with nothing created. A set-up that fails
//! half-way undoes what it did before it returns.
//!
//! Invariants: every cache lent by `set_up` is taken back by `tear_down` (or by the
//! failed set-up itself), whatever the task did to it; the secret bytes never reach
//! the disk outside the run directory, and the run directory's removal starts with
//! them.

use std::path::{Path, PathBuf};

use apiary_protocol::ids::format_task_id;
use apiary_protocol::{RunEnd, TaskProperties};

use crate::cache::{self, CacheStore, Returned};
use crate::workdir::{self, SecretBytes, TaskDir, WorkRoot};

/// A task's run directory, with its caches lent and its secret written.
#[derive(Debug)]
pub(crate) struct TaskSetup {
    run_id: u64,
    task_dir: TaskDir,
    work_dir: PathBuf,
    out_dir: PathBuf,
    bot_file: PathBuf,
    secret_path: Option<PathBuf>,
    /// Name and path (relative to `work_dir`) of each cache lent to the task.
    lent: Vec<(String, PathBuf)>,
}

impl TaskSetup {
    /// Prepares the run directory of `run_id`, with `bot_file` (the bot's description
    /// of itself) in it. An error is how the attempt ends, with nothing left behind.
    pub(crate) fn set_up(
        root: &WorkRoot,
        caches: &mut CacheStore,
        run_id: u64,
        properties: &TaskProperties,
        secret: Option<&SecretBytes>,
        bot_file: &[u8],
    ) -> Result<TaskSetup, RunEnd> {
        cache::validate(&properties.caches).map_err(|error| RunEnd::ClientError(error.to_string()))?;
        let task_dir = root.create_task_dir(run_id).map_err(|error| RunEnd::InternalError(error.to_string()))?;
        let mut setup = TaskSetup {
            run_id,
            work_dir: task_dir.work_dir(),
            out_dir: task_dir.out_dir(),
            bot_file: task_dir.bot_file_path(),
            task_dir,
            secret_path: None,
            lent: Vec::with_capacity(properties.caches.len()),
        };
        let prepared = setup
            .lend_caches(caches, properties)
            .and_then(|()| setup.write_secret(secret))
            .and_then(|()| setup.task_dir.write_bot_file(bot_file).map_err(|error| error.to_string()));
        match prepared {
            Ok(()) => Ok(setup),
            Err(reason) => {
                // Whatever the tear-down finds, the set-up error is the one to report.
                let _ = setup.tear_down(caches);
                Err(RunEnd::InternalError(reason))
            }
        }
    }

    fn lend_caches(&mut self, caches: &mut CacheStore, properties: &TaskProperties) -> Result<(), String> {
        for named in &properties.caches {
            let relative = workdir::join_inside(Path::new(""), "caches.path", &named.path)
                .expect("validated before the run directory was made");
            caches.lend(&named.name, &self.work_dir.join(&relative)).map_err(|error| error.to_string())?;
            self.lent.push((named.name.clone(), relative));
        }
        Ok(())
    }

    fn write_secret(&mut self, secret: Option<&SecretBytes>) -> Result<(), String> {
        if let Some(secret) = secret {
            self.secret_path = Some(self.task_dir.write_secret(secret).map_err(|error| error.to_string())?);
        }
        Ok(())
    }

    pub(crate) fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub(crate) fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    pub(crate) fn bot_file(&self) -> &Path {
        &self.bot_file
    }

    pub(crate) fn secret_path(&self) -> Option<&Path> {
        self.secret_path.as_deref()
    }

    /// Takes the caches back and removes the run directory. A cache the task removed
    /// or replaced is forgotten (it starts empty next time), which only the log says;
    /// an error is a reason the bot could not clean up.
    pub(crate) fn tear_down(self, caches: &mut CacheStore) -> Result<(), String> {
        let task_id = format_task_id(self.run_id);
        // First of all, before anything that may take long or fail.
        self.task_dir.remove_secret();
        for (name, relative) in &self.lent {
            match caches.take_back(name, &self.work_dir, relative) {
                Ok(Returned::Kept { .. }) => {}
                Ok(Returned::Lost) => log_event!(
                    "task {task_id}: named cache {name:?} was removed or replaced by the task; it starts empty next time"
                ),
                Err(error) => log_event!("task {task_id}: {error}; it is removed with the work directory"),
            }
        }
        self.task_dir.remove().map_err(|error| error.to_string())
    }
}

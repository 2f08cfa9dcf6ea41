//! Start-up: lock the data directory, recover the core from the log, listen.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use apiary_storage::{OutputStore, Wal, WalOptions};
use mio::net::TcpListener;

use super::event_loop::{EventLoop, now_unix_ms};
use super::{ServerError, log, os};
use crate::core::events::EVENT_RECORD_KIND;
use crate::core::{Core, CoreConfig, Event};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    pub core: CoreConfig,
    pub wal: WalOptions,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let io_error = |context: String| move |source| ServerError::Io { context, source };
    let data_dir = &config.data_dir;
    fs::create_dir_all(data_dir)
        .map_err(io_error(format!("cannot create the data directory {}", data_dir.display())))?;
    // The log holds secret bytes until they are compacted away: only the
    // daemon's own user may read anything in here.
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_error(format!("cannot restrict the data directory {}", data_dir.display())))?;
    let _lock = lock_data_dir(data_dir)?;
    if let Err(error) = os::disable_transparent_huge_pages() {
        log(format!("cannot turn transparent huge pages off: {error}"));
    }
    match os::raise_open_file_limit() {
        Ok(limit) => log(format!("open-file limit: {limit}")),
        Err(error) => log(format!("cannot raise the open-file limit: {error}")),
    }
    let (core, wal, outputs) = recover(&config)?;
    let listener = TcpListener::bind(config.listen).map_err(io_error(format!("cannot listen on {}", config.listen)))?;
    if let Err(error) = os::raise_listen_backlog(&listener) {
        log(format!("cannot raise the listen backlog: {error}"));
    }
    let address = listener.local_addr().map_err(io_error("cannot read the listening address".into()))?;
    log(format!("listening on {address} with data in {}", data_dir.display()));
    EventLoop::new(listener, config.max_connections, core, wal, outputs)?.run()
}

/// Holds an exclusive lock on `DATA_DIR/LOCK` for as long as the file stays open.
fn lock_data_dir(data_dir: &Path) -> Result<File, ServerError> {
    let path = data_dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServerError::Io { context: format!("cannot open {}", path.display()), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(ServerError::Locked(data_dir.display().to_string())),
        Err(fs::TryLockError::Error(source)) => {
            Err(ServerError::Io { context: format!("cannot lock {}", path.display()), source })
        }
    }
}

/// Rebuilds the core by applying every event in the log, then restores the
/// output length of running tasks from the output store.
fn recover(config: &ServerConfig) -> Result<(Core, Wal, OutputStore), ServerError> {
    let (wal, recovery) = Wal::open(&config.data_dir.join("wal"), config.wal)?;
    if let Some(torn) = &recovery.torn_tail {
        log(format!("recovery cut a torn tail of the log: {torn}"));
    }
    let mut core = Core::new(config.core.clone());
    for record in wal.records() {
        if record.kind != EVENT_RECORD_KIND {
            return Err(ServerError::Replay {
                seq: record.seq,
                reason: format!("unknown record kind {}", record.kind),
            });
        }
        let event = Event::decode(record.payload)
            .map_err(|error| ServerError::Replay { seq: record.seq, reason: error.to_string() })?;
        core.apply(&event);
    }
    let mut outputs = OutputStore::open(&config.data_dir.join("output"))?;
    for run_id in core.running_runs() {
        core.set_output_len(run_id, outputs.len(run_id.as_u64())?);
    }
    core.recovered(now_unix_ms());
    core.check_invariants();
    log(format!("recovered {} records, {} tasks", recovery.records, core.task_count()));
    Ok((core, wal, outputs))
}

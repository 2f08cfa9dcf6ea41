//! Start-up: lock the data directory, recover the core from the log, listen.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use apiary_storage::{
    HistoryDir, HistoryRun, LogStart, OutputStore, Recovery, SnapshotFile, SnapshotStore, Wal, WalError, WalOptions,
};
use mio::net::TcpListener;

use super::event_loop::{EventLoop, ServingTls, now_unix_ms};
use super::service_manager::ServiceManager;
use super::snapshots::{self, SnapshotSettings};
use super::tls::TlsFiles;
use super::{ServerError, log, os, replay};
use crate::auth::{self, Access};
use crate::core::{Core, CoreConfig, DISK_FULL_MARKER};
use crate::logging;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where HTTP clients connect (`--http-listen`); no HTTP listener when `None`.
    pub http_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    /// Timeouts and memory bounds per connection and in total.
    pub peer_limits: super::PeerLimits,
    pub core: CoreConfig,
    pub wal: WalOptions,
    pub snapshots: SnapshotSettings,
    /// Start even when part of the log is missing, dropping what cannot be replayed.
    pub accept_log_loss: bool,
    /// Who may connect: anyone, or the principals of the configuration file.
    pub access: Access,
    /// Listen on a non-loopback address with open access (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// The configuration file that SIGHUP reads again, when there is one.
    pub reload: Option<Reload>,
    /// The certificate and key to serve TLS with; plaintext without them.
    pub tls: Option<TlsFiles>,
    /// The most bytes the content-addressed store (`DATA_DIR/cas`) may hold (`--cas-max-bytes`).
    pub cas_max_bytes: u64,
    /// Unreferenced blobs unused for this long are removed (`--cas-grace`).
    pub cas_grace: std::time::Duration,
}

/// How the daemon reads its configuration file again on SIGHUP.
#[derive(Clone, Debug)]
pub struct Reload {
    pub path: PathBuf,
    /// Reads and checks the whole file as a start would; hands back who may
    /// connect, or why the file is refused (its name, line and reason).
    pub load: fn(&Path) -> Result<Access, String>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let started = start(&config, ServiceManager::from_env())?;
    started.event_loop.run()
}

/// A daemon recovered and listening, its loop not yet running.
pub(super) struct Started {
    pub event_loop: EventLoop,
    /// The data directory's lock, held for as long as the daemon runs.
    _lock: File,
}

/// Listens, locks the data directory, recovers, and makes the event loop.
pub(super) fn start(config: &ServerConfig, mut service: ServiceManager) -> Result<Started, ServerError> {
    let io_error = |context: String| move |source| ServerError::Io { context, source };
    let open_access = auth::check_open_access(config.listen, &config.access, config.insecure_no_auth)
        .map_err(ServerError::OpenAccess)?;
    if let Some(http_listen) = config.http_listen {
        auth::check_open_access(http_listen, &config.access, config.insecure_no_auth)
            .map_err(ServerError::OpenAccess)?;
    }
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(ServingTls { files: files.clone(), config: files.load().map_err(ServerError::Tls)? }),
    };
    // The port first: a start that cannot listen (a port in use) fails before it
    // creates or locks anything in the data directory. Connections that come
    // during recovery wait in the backlog.
    let listener = TcpListener::bind(config.listen).map_err(io_error(format!("cannot listen on {}", config.listen)))?;
    let http_listener = match config.http_listen {
        None => None,
        Some(address) => Some(
            TcpListener::bind(address)
                .map_err(io_error(format!("cannot listen for HTTP on {address} (--http-listen)")))?,
        ),
    };
    let data_dir = &config.data_dir;
    fs::create_dir_all(data_dir)
        .map_err(io_error(format!("cannot create the data directory {}", data_dir.display())))?;
    // The log holds secret bytes until they are compacted away: only the
    // daemon's own user may read anything in here.
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_error(format!("cannot restrict the data directory {}", data_dir.display())))?;
    let lock = lock_data_dir(data_dir)?;
    if let Err(error) = os::disable_transparent_huge_pages() {
        logging::warn(format!("cannot turn transparent huge pages off: {error}"));
    }
    match os::raise_open_file_limit() {
        Ok(limit) => log(format!("open-file limit: {limit}")),
        Err(error) => logging::warn(format!("cannot raise the open-file limit: {error}")),
    }
    service.status(&format!("recovering: reading the snapshot and replaying the log in {}", data_dir.display()));
    let recovered = recover(config)?;
    for listener in std::iter::once(&listener).chain(&http_listener) {
        if let Err(error) = os::raise_listen_backlog(listener) {
            logging::warn(format!("cannot raise the listen backlog: {error}"));
        }
    }
    let address = listener.local_addr().map_err(io_error("cannot read the listening address".into()))?;
    if let Some(line) = open_access {
        logging::warn(line);
    }
    if let Access::Tokens(principals) = &config.access {
        log(format!("access needs a token; configured: {}", principals.summary()));
    }
    match &config.tls {
        Some(files) => log(format!("serving TLS with the certificate from {}", files.cert_file.display())),
        None if !address.ip().is_loopback() => logging::warn(format!(
            "serving plaintext on {address}: tokens and task data cross the network readable by anyone on the \
             path \
             (configure tls_cert_file and tls_key_file)"
        )),
        None => {}
    }
    if let Some(http_listener) = &http_listener {
        log_http_address(http_listener, config.tls.is_some())?;
    }
    log(format!("listening on {address} with data in {}", data_dir.display()));
    // The event loop tells systemd it is ready once it runs.
    let event_loop = EventLoop::new(listener, http_listener, tls, config, recovered, service)?;
    Ok(Started { event_loop, _lock: lock })
}

/// Says where HTTP is served (before the `listening on` line, which says the daemon is up).
fn log_http_address(http_listener: &TcpListener, tls: bool) -> Result<(), ServerError> {
    let address = http_listener
        .local_addr()
        .map_err(|source| ServerError::Io { context: "cannot read the HTTP listening address".into(), source })?;
    let scheme = if tls { "https" } else { "http" };
    if !tls && !address.ip().is_loopback() {
        logging::warn(format!(
            "serving plaintext HTTP on {address}: bearer tokens and task data cross the network readable by anyone on the \
             path (configure tls_cert_file and tls_key_file)"
        ));
    }
    log(format!("serving HTTP on {address} ({scheme}://{address}/)"));
    Ok(())
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

/// What recovery hands the event loop.
pub(super) struct Recovered {
    pub core: Core,
    pub wal: Wal,
    pub outputs: OutputStore,
    pub snapshots: SnapshotStore,
    pub history: HistoryDir,
    pub texts: HistoryDir,
    /// The record the snapshot loaded covers (0: none).
    pub snapshot_seq: u64,
}

/// Rebuilds the core from the newest usable snapshot and the log after it,
/// then restores the output length of running tasks from the output store.
fn recover(config: &ServerConfig) -> Result<Recovered, ServerError> {
    let started = Instant::now();
    let snapshots = SnapshotStore::open(&config.data_dir.join("snapshots"))?;
    let texts = snapshots::open_texts(&config.data_dir.join("snapshots"))?;
    let (base, mut wal, recovery) = open_newest_usable(config, &snapshots, &texts)?;
    let restored = started.elapsed();
    if let Some(torn) = &recovery.torn_tail {
        logging::warn(format!("recovery cut a torn tail of the log: {torn}"));
    }
    for loss in &recovery.dropped {
        logging::warn(format!("accepted the loss of part of the log (--accept-log-loss): {loss}"));
    }
    let snapshot_seq = base.as_ref().map_or(0, |(file, _)| file.covered_seq);
    let mut core = base.map_or_else(|| Core::new(config.core.clone()), |(_, core)| core);
    let history = HistoryDir::open(&config.data_dir.join("history"))?;
    // The text file first: listing the tasks in memory reads it.
    let mut files: Vec<Arc<HistoryRun>> = core.newest_text_file().into_iter().collect();
    files.extend(open_history_runs(&history, &mut core, config.accept_log_loss)?);
    snapshots::check_runs_in_background(files, None);
    let mut replayed = 0u64;
    for record in wal.records() {
        replay::apply_record(&mut core, &record)?;
        replayed += 1;
    }
    let replayed_at = started.elapsed();
    // Opening and replaying brought every page of the log into memory; nothing reads
    // them again, so they leave it before anyone is served.
    if let Err(error) = wal.release_replayed() {
        logging::warn(format!("cannot release the log's pages from memory after the replay: {error}"));
    }
    let released_at = started.elapsed();
    let mut outputs = OutputStore::open(&config.data_dir.join("output"))?;
    for run_id in core.running_runs() {
        let output_len = outputs.len(run_id.as_u64())?;
        let marker = DISK_FULL_MARKER.as_bytes();
        let tail = outputs.read(run_id.as_u64(), output_len.saturating_sub(marker.len() as u64), marker.len())?;
        core.set_output_len(run_id, output_len, tail == marker);
    }
    core.recovered(now_unix_ms());
    // A walk over everything the core holds (half a second at a million tasks):
    // debug builds, which every test runs, check it at each start.
    if cfg!(debug_assertions) {
        core.check_invariants();
    }
    let ms = |elapsed: Duration| elapsed.as_millis();
    log(format!(
        "recovered {} tasks: snapshot after record {snapshot_seq}, then {replayed} records of the log \
         (snapshot restored and log opened by {} ms, log replayed by {} ms, its pages released from memory \
         by {} ms, done in {} ms)",
        core.task_count(),
        ms(restored),
        ms(replayed_at),
        ms(released_at),
        ms(started.elapsed()),
    ));
    Ok(Recovered { core, wal, outputs, snapshots, history, texts, snapshot_seq })
}

/// Opens the history runs the snapshot lists and gives them to the core. A run
/// that cannot be opened refuses the start, naming it, unless the operator
/// accepts the loss: its tasks then answer as unknown.
fn open_history_runs(
    history: &HistoryDir,
    core: &mut Core,
    accept_loss: bool,
) -> Result<Vec<Arc<HistoryRun>>, ServerError> {
    let mut runs = Vec::new();
    for run in core.history_runs() {
        match history.open_run(run.number) {
            Ok(reader) => {
                let reader = Arc::new(reader);
                runs.push(Arc::clone(&reader));
                core.attach_history_run(run.number, reader);
            }
            Err(error) if accept_loss => logging::warn(format!(
                "accepted the loss of a history run (--accept-log-loss): {error}; its {} ended tasks are gone",
                run.count
            )),
            Err(error) => return Err(ServerError::HistoryRunUnusable(error)),
        }
    }
    Ok(runs)
}

/// The newest usable snapshot, restored into a core.
type Base = Option<(SnapshotFile, Core)>;

/// The newest snapshot that reads back whole, restored, and the newer ones
/// that did not, with why.
fn restore_newest(
    config: &ServerConfig,
    snapshots: &SnapshotStore,
    texts: &HistoryDir,
) -> Result<(Base, Vec<(SnapshotFile, String)>), ServerError> {
    let mut damaged = Vec::new();
    for file in snapshots.list()? {
        match snapshots::restore_snapshot(snapshots, texts, &file, &config.core) {
            Ok(core) => return Ok((Some((file, core)), damaged)),
            Err(reason) => {
                logging::error(format!("cannot use a snapshot: {reason}"));
                damaged.push((file, reason));
            }
        }
    }
    Ok((None, damaged))
}

/// The newest snapshot that reads back whole and that the log still follows,
/// with the log opened after it. A damaged snapshot is passed over only when
/// an older one (or none) still has the log behind it; it is then set aside.
/// Otherwise start-up is refused, naming the damaged file.
fn open_newest_usable(
    config: &ServerConfig,
    snapshots: &SnapshotStore,
    texts: &HistoryDir,
) -> Result<(Base, Wal, Recovery), ServerError> {
    let wal_dir = config.data_dir.join("wal");
    // Reading the log does not depend on which snapshot is used: it is done on
    // another core meanwhile; only then is the log opened from the right record.
    let (survey, restored) = thread::scope(|scope| {
        let survey = scope.spawn(|| Wal::survey(&wal_dir));
        let restored = restore_newest(config, snapshots, texts);
        (survey.join().expect("surveying the log does not panic"), restored)
    });
    let (base, damaged) = restored?;
    let first_needed_seq = base.as_ref().map_or(1, |(file, _)| file.covered_seq + 1);
    let start = LogStart { first_needed_seq, accept_loss: config.accept_log_loss };
    let (wal, recovery) = match survey.and_then(|survey| Wal::open_surveyed(&wal_dir, config.wal, start, survey)) {
        Ok(opened) => opened,
        Err(WalError::Missing { loss }) if !damaged.is_empty() => {
            let (_, reason) = &damaged[0];
            return Err(ServerError::SnapshotUnusable { reason: reason.clone(), fallback: loss.to_string() });
        }
        Err(error) => return Err(error.into()),
    };
    for (file, _) in &damaged {
        let aside = snapshots.set_aside(file)?;
        logging::warn(format!("set the damaged snapshot aside as {}", aside.display()));
    }
    Ok((base, wal, recovery))
}

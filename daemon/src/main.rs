//! `apiaryd`: parse the flags (and the configuration file's settings, which
//! become flags before them, so that a flag given on the command line wins),
//! run the daemon with its log thread, turn errors into an exit code.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use apiary_daemon::auth::{self, Access};
use apiary_daemon::config::{self, ConfigFile, SettingSpec};
use apiary_daemon::core::CoreConfig;
use apiary_daemon::logging::{self, Level};
use apiary_daemon::server::{self, JobArgs, PeerLimits, Reload, ServerConfig, SnapshotSettings, TlsFiles, peer_limits};
use apiary_protocol::token;
use apiary_storage::WalOptions;
use clap::{CommandFactory, Parser};

/// The core allocates and frees a few dozen small strings per request; mimalloc
/// does that in a fraction of the instructions glibc's allocator needs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Apiary daemon: schedules tasks onto bots and keeps every fact in a write-ahead log.
#[derive(Parser, Debug)]
#[command(name = "apiaryd", version, args_conflicts_with_subcommands = true, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    daemon: Args,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// Tools beside the daemon, and work it gives to a child process of its own binary.
#[derive(clap::Subcommand, Debug)]
enum Internal {
    /// Prints the line that gives a principal this token in the configuration file.
    HashToken {
        /// The file that holds the token (its surrounding white space is not part of it).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Makes a snapshot from the files of a data directory (the daemon runs this itself).
    #[command(hide = true)]
    SnapshotJob(JobArgs),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// A configuration file (TOML): every setting below, by its name with `_` for `-`, and the
    /// principals that may connect. A flag given here wins over the file; SIGHUP reloads its principals.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Checks a configuration file (with the other flags given, as a start would) and exits: 0 when
    /// it is good, 1 with the file, the line and the reason when it is not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Listen on an address that is not loopback although no principals are configured, so that
    /// anyone who can reach it may use the daemon. Without it such a start is refused.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Address to listen on for clients and bots, HOST:PORT; a host name is looked up and its
    /// first address taken (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:7420", value_parser = parse_listen_address)]
    listen: SocketAddr,
    /// Also serve HTTP/1.1 on this address, HOST:PORT: Swarming's v2 API as pRPC JSON, task output
    /// streams and health endpoints (README, "HTTP API"); TLS, tokens and limits as for --listen.
    /// Off unless given, so that a daemon opens no port its operator did not ask for.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_address)]
    http_listen: Option<SocketAddr>,
    /// Serve TLS with this certificate chain (PEM; the server's certificate first). SIGHUP reads
    /// it again: connections accepted after that get the new one.
    #[arg(long, value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM). Keep it readable by the daemon's user only.
    #[arg(long, value_name = "FILE")]
    tls_key_file: Option<PathBuf>,
    /// Where the log, snapshots, ended tasks, task output and the lock live (created on first start)
    /// [default: the service's state directory when systemd gives one ($STATE_DIRECTORY, its first
    /// entry), else ./apiary-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Connections beyond this are refused with a logged reason.
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
    /// Seconds a new connection has to send its hello; until then it may send only a small frame.
    #[arg(long, default_value_t = peer_limits::DEFAULT_HELLO_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    hello_timeout_secs: u64,
    /// Seconds a connection may have nothing in flight (no request, held poll, wait or follow)
    /// before it is closed; also how long a peer may take none of the replies owed to it.
    #[arg(long, default_value_t = peer_limits::DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout_secs: u64,
    /// Bytes all connections together may hold in partial frames larger than 64 KiB (each
    /// connection buffers smaller ones on its own); a frame that does not fit waits.
    #[arg(long, default_value_t = peer_limits::DEFAULT_MAX_INPUT_BUFFER_BYTES,
          value_parser = parse_input_buffer_bytes)]
    max_input_buffer_bytes: usize,
    /// Bytes of replies owed to one connection and not yet taken by it, past which its
    /// further requests are not read until it takes them.
    #[arg(long, default_value_t = peer_limits::DEFAULT_MAX_UNSENT_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_unsent_bytes: u64,
    /// Seconds a bot's poll is held open before it is answered "no work".
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60))]
    long_poll_secs: u64,
    /// How old a successful idempotent run may be and still stand in for a new identical task.
    #[arg(long, default_value_t = 7 * 24 * 60 * 60)]
    dedup_window_secs: u64,
    /// A bot not heard from for this long is dead (gets no work) until it returns.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    bot_death_timeout_secs: u64,
    /// Events kept per bot (`apiary bots events`); older ones are dropped.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    bot_events_per_bot: u64,
    /// How long bot events are kept.
    #[arg(long, default_value_t = 28 * 24 * 60 * 60)]
    bot_event_max_age_secs: u64,
    /// Output kept per task; past it a marker says the rest was dropped (the task keeps running).
    #[arg(long, default_value_t = apiary_protocol::limits::DEFAULT_MAX_OUTPUT_BYTES)]
    max_output_bytes: u64,
    /// Bytes the content-addressed store (DATA_DIR/cas) may hold, uploads in progress included;
    /// an upload that would pass it is refused, naming this limit. At least 1 MiB.
    #[arg(long, default_value_t = server::cas::DEFAULT_CAS_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1 << 20..))]
    cas_max_bytes: u64,
    /// The store's name in requests: a task's `cas_input_root.cas_instance` must be this or
    /// empty, and results name it in `cas_output_root`. Set it to what your request files say
    /// (e.g. `projects/P/instances/default_instance`) to submit them unchanged.
    #[arg(long, default_value = apiary_daemon::core::DEFAULT_CAS_INSTANCE, value_parser = parse_cas_instance)]
    cas_instance: String,
    /// How long finished tasks, their runs and their output are kept, counted from each
    /// task's creation: a number and a unit, like `30d`, `12h` or `90s`.
    #[arg(long, default_value = "30d", value_parser = parse_retention)]
    task_retention: Duration,
    /// How long a blob of the content-addressed store that no retained task names is kept
    /// after its last use (stored, found by FindMissingBlobs, uploaded again or read): a
    /// number and a unit, like `1d` or `6h`. Collected after retention passes that let tasks
    /// go, and at least once per grace.
    #[arg(long, default_value = "1d", value_parser = parse_cas_grace)]
    cas_grace: Duration,
    /// Seconds between snapshots of the daemon's state, when anything changed meanwhile.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    snapshot_interval_secs: u64,
    /// Log bytes written since the last snapshot that trigger the next one before the interval.
    #[arg(long, default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_log_bytes: u64,
    /// Size of each new log segment file, preallocated (a multiple of 16).
    #[arg(long, default_value_t = WalOptions::default().segment_bytes)]
    wal_segment_bytes: u64,
    /// Start even when part of the log is missing: keep what can be replayed, set the rest
    /// aside in the data directory, and log exactly which records were dropped. Also
    /// starts when a history run the snapshot lists cannot be read, without its tasks.
    #[arg(long)]
    accept_log_loss: bool,
    /// The least a line must matter to be logged: error, warn, info (notable events) or debug
    /// (also a line for every task event: created, assigned, ended...).
    #[arg(long, value_name = "LEVEL", default_value_t = Level::Info)]
    log_level: Level,
}

fn parse_input_buffer_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text.parse().map_err(|error| format!("{error}"))?;
    if bytes < peer_limits::MAX_FRAME_BYTES {
        return Err(format!(
            "at least {} bytes, so that one frame of the largest size fits",
            peer_limits::MAX_FRAME_BYTES
        ));
    }
    Ok(bytes)
}

fn parse_cas_instance(text: &str) -> Result<String, String> {
    apiary_daemon::core::validate::validate_store_name(text)?;
    Ok(text.to_string())
}

fn parse_cas_grace(text: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if grace < Duration::from_secs(1) {
        return Err("the grace of unused blobs is at least 1s".into());
    }
    Ok(grace)
}

fn parse_retention(text: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if retention < Duration::from_secs(1) {
        return Err("the task retention is at least 1s".into());
    }
    Ok(retention)
}

/// The settings a configuration file may give: every flag of the daemon but
/// those that name the file.
fn setting_specs() -> Vec<SettingSpec> {
    let command = Cli::command();
    command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let key = arg.get_id().as_str();
            if ["help", "version"].contains(&key) {
                return None;
            }
            let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
            Some(SettingSpec { key: key.to_string(), flag: format!("--{long}"), is_switch })
        })
        .collect()
}

/// Whether the daemon's command line takes these flags: the file's values
/// obey exactly the rules of the flags.
fn check_flags(flags: &[String]) -> Result<(), String> {
    let argv = std::iter::once("apiaryd".to_string()).chain(flags.iter().cloned());
    Cli::command().try_get_matches_from(argv).map(|_| ()).map_err(|error| {
        let text = error.to_string();
        let first = text.lines().next().unwrap_or_default();
        first.strip_prefix("error: ").unwrap_or(first).to_string()
    })
}

fn load_config(path: &Path) -> Result<ConfigFile, config::ConfigError> {
    config::load(path, &setting_specs(), &check_flags)
}

/// What SIGHUP reads again: who may connect.
fn reload_access(path: &Path) -> Result<Access, String> {
    load_config(path).map(|file| file.access).map_err(|error| error.to_string())
}

/// The daemon's flags with the file's settings before those of the command
/// line, so that the command line wins.
fn with_file_settings(file: &ConfigFile) -> Result<Args, String> {
    let mut argv: Vec<OsString> = std::env::args_os().take(1).collect();
    argv.extend(file.flags.iter().map(OsString::from));
    argv.extend(std::env::args_os().skip(1));
    Cli::try_parse_from(argv).map(|cli| cli.daemon).map_err(|error| error.to_string())
}

/// The certificate and key to serve TLS with: both or neither.
fn tls_files(args: &Args) -> Result<Option<TlsFiles>, String> {
    match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert_file), Some(key_file)) => {
            Ok(Some(TlsFiles { cert_file: cert_file.clone(), key_file: key_file.clone() }))
        }
        (None, None) => Ok(None),
        _ => Err("--tls-cert-file and --tls-key-file (tls_cert_file and tls_key_file in the configuration file) \
                  go together: give both to serve TLS, or neither"
            .to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.internal {
        Some(Internal::SnapshotJob(job)) => match job.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // A line of the daemon's log: the job shares its stderr.
                logging::error(format_args!("snapshot job: {error}"));
                ExitCode::FAILURE
            }
        },
        Some(Internal::HashToken { token_file }) => match token::read_token_file(&token_file) {
            Ok(token) => {
                println!("token_hash = \"{}\"", auth::format_token_hash(&auth::hash_token(token.as_bytes())));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("apiaryd hash-token: {error}");
                ExitCode::FAILURE
            }
        },
        None if cli.daemon.check_config.is_some() => match check_config(&cli.daemon) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("apiaryd: {error}");
                ExitCode::FAILURE
            }
        },
        None => {
            let outcome = run(cli.daemon);
            if let Err(error) = &outcome {
                logging::error(error);
            }
            // Every queued line is written before the process exits.
            logging::stop();
            if outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}

/// `--listen`: an IP address and port, or a host name and port (`localhost:7420`).
fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let expected = "expected HOST:PORT, e.g. 127.0.0.1:7420, [::]:7420 or localhost:7420";
    if text.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
        return Err(format!("{text:?} has no port; {expected}"));
    }
    let mut addresses = text.to_socket_addrs().map_err(|error| format!("cannot resolve {text:?}: {error}"))?;
    addresses.next().ok_or_else(|| format!("{text:?} resolves to no address; {expected}"))
}

/// `--check-config FILE`: reads and checks the file as a start would, and says so on stdout.
fn check_config(args: &Args) -> Result<(), String> {
    let path = args.check_config.as_ref().expect("called with --check-config");
    let file = load_config(path).map_err(|error| error.to_string())?;
    let args = with_file_settings(&file)?;
    auth::check_open_access(args.listen, &file.access, args.insecure_no_auth)?;
    if let Some(http_listen) = args.http_listen {
        auth::check_open_access(http_listen, &file.access, args.insecure_no_auth)?;
    }
    if let Some(files) = tls_files(&args)? {
        files.load()?;
    }
    println!("{file}: good");
    Ok(())
}

/// Where no flag or setting names one, systemd's state directory for the
/// service (`StateDirectory=`), or `./apiary-data` outside systemd.
fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given.or_else(apiary_systemd::state_directory).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

const DEFAULT_DATA_DIR: &str = "./apiary-data";

/// Runs the daemon: the log thread starts once the settings are known.
fn run(args: Args) -> Result<(), String> {
    let (args, access, reload) = match &args.config {
        None => (args, Access::Open, None),
        Some(path) => {
            let file = load_config(path).map_err(|error| error.to_string())?;
            let reload = Reload { path: path.clone(), load: reload_access };
            (with_file_settings(&file)?, file.access, Some(reload))
        }
    };
    let tls = tls_files(&args)?;
    logging::start(args.log_level);
    let config = ServerConfig {
        listen: args.listen,
        http_listen: args.http_listen,
        data_dir: data_dir(args.data_dir),
        max_connections: args.max_connections,
        peer_limits: PeerLimits {
            hello_timeout_ms: args.hello_timeout_secs * 1000,
            idle_timeout_ms: args.idle_timeout_secs * 1000,
            max_input_buffer_bytes: args.max_input_buffer_bytes,
            max_unsent_bytes: args.max_unsent_bytes as usize,
        },
        core: CoreConfig {
            long_poll_ms: args.long_poll_secs * 1000,
            dedup_window_ms: args.dedup_window_secs * 1000,
            bot_death_timeout_ms: args.bot_death_timeout_secs * 1000,
            bot_events_per_bot: args.bot_events_per_bot as usize,
            bot_event_max_age_ms: args.bot_event_max_age_secs * 1000,
            max_output_bytes: args.max_output_bytes,
            task_retention_ms: args.task_retention.as_millis() as u64,
            cas_instance: args.cas_instance.clone(),
        },
        wal: WalOptions { segment_bytes: args.wal_segment_bytes },
        snapshots: SnapshotSettings {
            interval_ms: args.snapshot_interval_secs * 1000,
            log_bytes: args.snapshot_log_bytes,
        },
        accept_log_loss: args.accept_log_loss,
        access,
        insecure_no_auth: args.insecure_no_auth,
        reload,
        tls,
        cas_max_bytes: args.cas_max_bytes,
        cas_grace: args.cas_grace,
    };
    server::run(config).map_err(|error| error.to_string())
}

//! `apiary-load`: drives a running `apiaryd` over loopback with simulated bots and
//! submitters, then prints throughput, enqueue figures and submit-to-dispatch latency;
//! `apiary-load floor` measures the machine's floor instead (see `apiary_benches::floor`).
//!
//! - Submitters (`submit.rs`, one thread and one connection each) keep up to
//!   `--pipeline` NewTask requests in flight (default 1: one at a time) and note when
//!   they *sent* each one and when it was acknowledged.
//! - Simulated bots (`bots.rs`) long-poll, take assignments, report them done after
//!   `--task-ms`, and poll again. Bot `i` has dimensions `pool=<pool>`,
//!   `class=<i mod K>` and, as every `apiary-bot` does, `id=<its bot id>`; each task
//!   asks for a random class that some bot has.
//! - Submit-to-dispatch latency is the assignment's arrival minus the moment its `NewTask`
//!   was sent, matched by task id (the run id with its last hex digit cleared).
//!
//! - HTTP clients (`http.rs`, with `--http-server` and `--http-clients`) make pRPC calls
//!   to the daemon's HTTP listener back to back while the submitters run.
//!
//! The run stops by itself: submitting ends after `--tasks` tasks or `--duration` seconds
//! (whichever comes first; 10 s if neither is given), then the bots finish what was
//! submitted (at most `--drain-secs`), and the program prints its figures and exits 0.
//! With `--bots 0` the tasks wait for capacity and stay pending; the run ends once they
//! are acknowledged. It exits 1 when the daemon refuses or drops a connection, or when
//! tasks are left over.

mod anchor;
mod bots;
mod http;
mod report;
mod submit;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use apiary_benches::floor::{self, DEFAULT_ROUND_TRIPS, DEFAULT_SYNCS, Floor, FloorConfig, MAX_SAMPLES};
use apiary_benches::pipeline::MAX_DEPTH;
use apiary_benches::sleep_watch::SleepWatch;
use apiary_protocol::limits::MAX_NAME_BYTES;
use apiary_protocol::tls::{Security, TlsArgs};
use apiary_protocol::token::{TOKEN_FILE_ENV, read_token_file};
use clap::{Parser, Subcommand};

use crate::bots::{Arrival, run_bot_thread};
use crate::report::Report;
use crate::submit::{SubmitterLog, run_submitter};

/// Exit codes: 0 the run completed; 1 it failed (details on stderr); 2 bad flags (clap).
const EXIT_FAILED: u8 = 1;
/// How long bots may take to connect and be welcomed before the run is called off.
const CONNECT_PATIENCE: Duration = Duration::from_secs(120);
const SOFTWARE: &str = concat!("apiary-load/", env!("CARGO_PKG_VERSION"));

/// Load generator for apiaryd: simulated bots and submitters over loopback.
#[derive(Parser, Debug)]
#[command(name = "apiary-load", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure this machine's floor: a loopback round trip and a 4 KiB fdatasync.
    Floor(FloorArgs),
    /// Write a data directory holding a large state (pending tasks in a snapshot,
    /// ended ones in history runs), for restart and history benchmarks.
    StateFixture(apiary_benches::fixture::FixtureArgs),
    /// Run the same workloads against Redis or beanstalkd, to compare with (see anchor.rs).
    Anchor(anchor::AnchorArgs),
}

/// The floor probe's flags.
#[derive(clap::Args, Debug)]
struct FloorArgs {
    /// Directory for the fdatasync probe's temporary file; put it on the file system of
    /// the daemon's --data-dir, since that is the disk that matters. Default: the
    /// system temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Loopback round trips to time.
    #[arg(long, default_value_t = DEFAULT_ROUND_TRIPS as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_SAMPLES as u64))]
    round_trips: u64,
    /// 4 KiB writes + fdatasync to time (each kind).
    #[arg(long, default_value_t = DEFAULT_SYNCS as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_SAMPLES as u64))]
    syncs: u64,
    /// Also time appending 4 KiB + fdatasync.
    #[arg(long)]
    append: bool,
}

/// The load run's flags (no subcommand).
#[derive(clap::Args, Debug, Clone)]
struct LoadArgs {
    /// The daemon's address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    server: String,
    /// Simulated bots (each one connection); 0: tasks wait for capacity and stay pending.
    #[arg(long, default_value_t = 100)]
    bots: usize,
    /// Submitters, each one connection.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    submitters: usize,
    /// NewTask requests each submitter keeps in flight (1: one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_DEPTH as u64))]
    pipeline: u64,
    /// Stop submitting after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Submit this many tasks a second in all, evenly spread over the submitters (default: as
    /// fast as replies come). A task's round trip counts from when it was due, so a stall
    /// shows in the tasks it delays.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Stop submitting after this many tasks in all.
    #[arg(long)]
    tasks: Option<u64>,
    /// The pool every bot is in and every task asks for.
    #[arg(long, default_value = "load")]
    pool: String,
    /// Task names of exactly this many bytes (default: load-<submitter>-<n>).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_NAME_BYTES as u64))]
    name_bytes: Option<u64>,
    /// Bot i gets dimension class=<i mod K>; each task asks for a random class.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    bot_classes: u64,
    /// Each task gets a random priority in 1..=P.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    priorities: u8,
    /// Simulated task duration: a bot waits this long before its final update.
    #[arg(long, default_value_t = 0)]
    task_ms: u64,
    /// Threads driving the bot connections.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    bot_threads: u64,
    /// After submitting stops, how long to wait for the submitted tasks to complete.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// Seed for priorities, classes and session ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measure the floor (as `apiary-load floor` does) right before the load, and print
    /// the load's figures as multiples of it.
    #[arg(long)]
    floor: bool,
    /// Where `--floor` puts its fdatasync file (default: the system temp dir).
    #[arg(long, requires = "floor")]
    floor_dir: Option<PathBuf>,
    /// The submitters' bearer token, from this file (default: `APIARY_TOKEN_FILE`,
    /// else none: a daemon with open access).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The bots' bearer token, from this file (default: the submitters' token).
    #[arg(long)]
    bot_token_file: Option<PathBuf>,
    /// The daemon's HTTP listener (its --http-listen), for --http-clients.
    #[arg(long, value_name = "ADDR")]
    http_server: Option<String>,
    /// Connections to --http-server, each making --http-call calls back to back (keep-alive)
    /// while the submitters run.
    #[arg(long, default_value_t = 0, requires = "http_server")]
    http_clients: usize,
    /// The pRPC call of the HTTP clients.
    #[arg(long, value_enum, default_value_t = http::HttpCall::GetResult)]
    http_call: http::HttpCall,
    #[command(flatten)]
    tls: TlsArgs,
    /// Chosen from `tls` before the run.
    #[arg(skip = Security::Plaintext)]
    security: Security,
    /// Read from `token_file` before the run.
    #[arg(skip)]
    submitter_token: String,
    /// Read from `bot_token_file` before the run.
    #[arg(skip)]
    bot_token: String,
}

impl LoadArgs {
    /// Reads the token files the flags (or `APIARY_TOKEN_FILE`) name, and
    /// chooses TLS or plaintext.
    fn prepare(&mut self) -> Result<(), String> {
        self.security = self.tls.security(&self.server).map_err(|error| error.to_string())?;
        let from_env = std::env::var_os(TOKEN_FILE_ENV).map(PathBuf::from);
        let read = |path: &PathBuf| read_token_file(path).map_err(|error| error.to_string());
        if let Some(path) = self.token_file.clone().or(from_env) {
            self.submitter_token = read(&path)?;
        }
        self.bot_token = match &self.bot_token_file {
            Some(path) => read(path)?,
            None => self.submitter_token.clone(),
        };
        Ok(())
    }
}

impl LoadArgs {
    fn describe(&self) -> String {
        let mut stop = Vec::new();
        if let Some(tasks) = self.tasks {
            stop.push(format!("{tasks} tasks"));
        }
        stop.push(format!("{} s", self.duration_secs()));
        format!(
            "server {}, {} bots ({} threads), {} submitters (pipeline depth {}), pool {}, {} bot classes, \
             priorities 1..={}, task-ms {}, names {}, {}, stop after {}",
            self.server,
            self.bots,
            self.bot_threads,
            self.submitters,
            self.pipeline,
            self.pool,
            self.bot_classes,
            self.priorities,
            self.task_ms,
            self.name_bytes.map_or_else(|| "load-<submitter>-<n>".into(), |bytes| format!("{bytes} bytes")),
            self.rate.map_or_else(|| "as fast as replies come".into(), |rate| format!("{rate} tasks/s")),
            stop.join(" or ")
        ) + &self.describe_http()
    }

    fn describe_http(&self) -> String {
        match &self.http_server {
            Some(server) if self.http_clients > 0 => {
                format!(", HTTP {} clients making {:?} calls to {server}", self.http_clients, self.http_call)
            }
            _ => String::new(),
        }
    }

    pub(crate) fn duration_secs(&self) -> f64 {
        duration_secs(self.duration, self.tasks)
    }

    /// Tasks ask only for classes some bot has.
    pub(crate) fn task_classes(&self) -> u64 {
        self.bot_classes.min(self.bots as u64).max(1)
    }
}

/// What all threads share; times are nanoseconds since `start`.
pub(crate) struct Shared {
    start: Instant,
    pub(crate) welcomed: AtomicUsize,
    pub(crate) stop_bots: AtomicBool,
    pub(crate) stop_submitting: AtomicBool,
    /// The submitters are done: the HTTP clients stop too.
    pub(crate) stop_http: AtomicBool,
    pub(crate) claimed: AtomicU64,
    pub(crate) submitted: AtomicU64,
    pub(crate) dispatched: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) last_dispatch_ns: AtomicU64,
    pub(crate) last_completion_ns: AtomicU64,
    pub(crate) failure: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            start: Instant::now(),
            welcomed: AtomicUsize::new(0),
            stop_bots: AtomicBool::new(false),
            stop_submitting: AtomicBool::new(false),
            stop_http: AtomicBool::new(false),
            claimed: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            last_dispatch_ns: AtomicU64::new(0),
            last_completion_ns: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records the first failure and stops everything.
    pub(crate) fn fail(&self, message: String) {
        self.failure.lock().unwrap().get_or_insert(message);
        self.stop_submitting.store(true, Ordering::SeqCst);
        self.stop_bots.store(true, Ordering::SeqCst);
    }

    pub(crate) fn failed(&self) -> bool {
        self.failure.lock().unwrap().is_some()
    }
}

/// How long submitters run: `--duration`, or until `--tasks` are claimed, or 10 s.
pub(crate) fn duration_secs(duration: Option<f64>, tasks: Option<u64>) -> f64 {
    match (duration, tasks) {
        (Some(secs), _) => secs,
        (None, Some(_)) => f64::INFINITY,
        (None, None) => 10.0,
    }
}

pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a number of tasks a second in (0, 10000000]")),
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Floor(floor_args)) => run_floor(floor_args).map(|_| ()),
        Some(Command::StateFixture(fixture_args)) => run_fixture(fixture_args),
        Some(Command::Anchor(anchor_args)) => {
            floor_first(anchor_args.floor, &anchor_args.floor_dir).and_then(|floor| anchor::run(anchor_args, floor))
        }
        None => cli.load.prepare().and_then(|()| run_load(&cli.load)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("apiary-load: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run_floor(floor_args: &FloorArgs) -> Result<Floor, String> {
    let config = FloorConfig {
        dir: floor_args.dir.clone().unwrap_or_else(std::env::temp_dir),
        round_trips: floor_args.round_trips as usize,
        syncs: floor_args.syncs as usize,
        append: floor_args.append,
    };
    let floor = floor::measure(&config).map_err(|error| error.to_string())?;
    for line in floor.lines() {
        println!("{line}");
    }
    Ok(floor)
}

fn run_fixture(args: &apiary_benches::fixture::FixtureArgs) -> Result<(), String> {
    let started = Instant::now();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let written = apiary_benches::fixture::write(args, now_ms)?;
    println!(
        "wrote {} ended tasks in {} history runs ({} bytes) and {} pending tasks in a snapshot ({} bytes) to {} in {:.1} s",
        args.finished,
        written.runs,
        written.history_bytes,
        args.pending,
        written.snapshot_bytes,
        args.data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// With `--floor`, the floor measured (and printed) before the load.
fn floor_first(floor: bool, floor_dir: &Option<PathBuf>) -> Result<Option<Floor>, String> {
    if !floor {
        return Ok(None);
    }
    let floor_args = FloorArgs {
        dir: floor_dir.clone(),
        round_trips: DEFAULT_ROUND_TRIPS as u64,
        syncs: DEFAULT_SYNCS as u64,
        append: false,
    };
    run_floor(&floor_args).map(Some)
}

fn run_load(args: &LoadArgs) -> Result<(), String> {
    let floor = floor_first(args.floor, &args.floor_dir)?;
    let nofile = raise_open_file_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let addr = args
        .server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", args.server))?
        .next()
        .ok_or_else(|| format!("{} resolves to nothing", args.server))?;
    println!("apiary-load: {}", args.describe());
    let shared = Arc::new(Shared::new());
    // Watches the machine meanwhile, so the stalls of a run can be told apart.
    let sleep_watch = SleepWatch::start(shared.start);
    let bot_threads = start_bots(args, addr, &shared, nofile);
    let http_clients = http::start(args, &shared);
    let submit_started_ns = shared.now_ns();
    let logs = submit_all(args, &shared, submit_started_ns);
    let submit_ended_ns = shared.now_ns();
    shared.stop_http.store(true, Ordering::SeqCst);
    let http_logs: Vec<_> =
        http_clients.into_iter().map(|handle| handle.join().expect("an HTTP client thread panicked")).collect();
    if args.bots > 0 {
        wait_for_completions(args, &shared);
    }
    shared.stop_bots.store(true, Ordering::SeqCst);
    let mut arrivals = Vec::new();
    for handle in bot_threads {
        arrivals.extend(handle.join().expect("a bot thread panicked"));
    }
    if let Some(failure) = shared.failure.lock().unwrap().take() {
        return Err(failure);
    }
    let report = Report::new(args, &shared, logs, &arrivals, submit_started_ns, submit_ended_ns);
    report.print();
    if !http_logs.is_empty() {
        http::print(http_logs, args.http_call, (submit_ended_ns - submit_started_ns) as f64 / 1e9);
    }
    println!("{}", sleep_watch.stop().line());
    if let Some(floor) = &floor {
        report.print_against(floor);
    }
    if args.bots > 0 && report.completed < report.submitted {
        return Err(format!(
            "{} of {} submitted tasks did not complete within {} s of the end of submitting",
            report.submitted - report.completed,
            report.submitted,
            args.drain_secs
        ));
    }
    Ok(())
}

/// Starts the bot threads and waits until every bot is welcomed (or the run failed).
fn start_bots(
    args: &LoadArgs,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    nofile: u64,
) -> Vec<thread::JoinHandle<Vec<Arrival>>> {
    if args.bots == 0 {
        return Vec::new();
    }
    let bot_threads: Vec<_> = (0..args.bot_threads as usize)
        .map(|thread_index| {
            let (args, shared) = (args.clone(), Arc::clone(shared));
            thread::Builder::new()
                .name(format!("bots-{thread_index}"))
                .spawn(move || run_bot_thread(&args, addr, thread_index, &shared))
                .expect("spawn a bot thread")
        })
        .collect();
    let connect_started = Instant::now();
    while shared.welcomed.load(Ordering::SeqCst) < args.bots && !shared.failed() {
        if connect_started.elapsed() > CONNECT_PATIENCE {
            let welcomed = shared.welcomed.load(Ordering::SeqCst);
            shared.fail(format!("only {welcomed} of {} bots were welcomed within {CONNECT_PATIENCE:?}", args.bots));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    if !shared.failed() {
        println!("bots connected: {} of {} in {connect_secs:.2} s (open-file limit {nofile})", args.bots, args.bots);
    }
    bot_threads
}

/// Runs the submitters to their end; returns what each saw.
fn submit_all(args: &LoadArgs, shared: &Arc<Shared>, started_ns: u64) -> Vec<SubmitterLog> {
    if shared.failed() {
        return Vec::new();
    }
    let submitter_threads: Vec<_> = (0..args.submitters)
        .map(|index| {
            let (args, shared) = (args.clone(), Arc::clone(shared));
            thread::Builder::new()
                .name(format!("submitter-{index}"))
                .spawn(move || run_submitter(&args, index, &shared, started_ns))
                .expect("spawn a submitter thread")
        })
        .collect();
    submitter_threads.into_iter().map(|handle| handle.join().expect("a submitter thread panicked")).collect()
}

/// Waits until the bots completed every acknowledged task, at most `--drain-secs`.
fn wait_for_completions(args: &LoadArgs, shared: &Shared) {
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while !shared.failed()
        && shared.completed.load(Ordering::SeqCst) < shared.submitted.load(Ordering::SeqCst)
        && Instant::now() < drain_deadline
    {
        thread::sleep(Duration::from_millis(2));
    }
}

/// Raises this process's open-file soft limit to the hard limit; returns the new limit.
fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_max)
}

//! The command line. Only syntax is checked here (`K=V`, `K:V`, task ids, numbers);
//! the daemon checks every limit and names the field it refuses.

use std::path::PathBuf;
use std::time::Duration;

use apiary_protocol::cas::Digest;
use apiary_protocol::limits;
use apiary_protocol::tls::TlsArgs;
use apiary_protocol::token::TOKEN_FILE_ENV;
use apiary_protocol::{NamedCache, StateQuery, StringPair};
use clap::{Args, Parser, Subcommand};

use crate::connect::{DEFAULT_SERVER, SERVER_ENV};

/// The Apiary command line: trigger tasks, collect their results, look at tasks and bots.
#[derive(Debug, Parser)]
#[command(name = "apiary", version)]
pub(crate) struct Cli {
    /// The daemon's address, HOST:PORT (no scheme).
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = SERVER_ENV,
        default_value = DEFAULT_SERVER,
        value_parser = apiary_protocol::client::parse_server_address
    )]
    pub(crate) server: String,
    /// A file holding the token that names you to the daemon (needed when the daemon has
    /// principals configured); never give a token itself on the command line.
    #[arg(long, global = true, value_name = "FILE", env = TOKEN_FILE_ENV)]
    pub(crate) token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a task and print its id.
    Trigger(TriggerArgs),
    /// Wait for a task to end, write its output to stdout and exit with its exit code.
    Collect(CollectArgs),
    /// Create the tasks of a Swarming spawn-tasks file ({"requests": [...]}) and print
    /// their ids, one per line.
    SpawnTasks(SpawnTasksArgs),
    /// Trigger a task, then collect it (the task id goes to stderr).
    Run(RunArgs),
    /// Cancel a pending task, or every pending task with some tags; with --kill-running,
    /// also stop running ones.
    Cancel(CancelArgs),
    /// Set up a task's work directory, environment and command here, as a bot would, and
    /// run it.
    Reproduce(ReproduceArgs),
    /// Look at tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Look at the bots.
    #[command(subcommand)]
    Bots(BotsCommand),
    /// Upload trees to the daemon's content-addressed store, and download them.
    #[command(subcommand)]
    Cas(CasCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CasCommand {
    /// Upload files and directories (only the blobs the store lacks) and print the tree's
    /// root digest, HASH/SIZE, as REAPI computes it; a summary goes to stderr.
    Archive {
        /// Archive DIR's contents as the tree's root (as a task's output directory is),
        /// instead of PATHs.
        #[arg(long, value_name = "DIR", conflicts_with = "paths")]
        dir: Option<PathBuf>,
        /// Files and directories, each under its own name (its last component) in the root.
        #[arg(value_name = "PATH", required_unless_present = "dir")]
        paths: Vec<PathBuf>,
    },
    /// Write the tree a root digest names into DIR (created if missing), each blob checked
    /// against its digest.
    Download {
        /// The tree's root digest, HASH/SIZE, as `cas archive` prints it.
        #[arg(value_name = "DIGEST")]
        digest: apiary_protocol::cas::Digest,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct TriggerArgs {
    /// Send the request to the daemon to be checked, print it as the daemon would store it
    /// (JSON), and create nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Also write the task's id, request and state to FILE as JSON, as Swarming's
    /// `-json-output` does ({"tasks": [{"task_id", "request", "task_result"}]}).
    #[arg(long, value_name = "FILE", conflicts_with = "dry_run")]
    pub(crate) json_output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) task: TaskArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SpawnTasksArgs {
    /// The requests: Swarming's {"requests": [NewTaskRequest, ...]} (`-`: stdin), each
    /// read as `trigger --request` reads one.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_input: PathBuf,
    /// Also write the tasks' ids, requests and states to FILE as JSON, as `trigger
    /// --json-output` does.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_output: Option<PathBuf>,
}

/// Where a new task comes from: a request file, or the flags; and its secret bytes,
/// which never travel in JSON.
#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    /// The whole request as Swarming's NewTaskRequest in proto3 JSON (`-`: stdin),
    /// instead of the flags below and the command.
    #[arg(long, value_name = "FILE", conflicts_with = "TaskFlags")]
    pub(crate) request: Option<PathBuf>,
    /// Bytes only the bot that runs the task gets, in a file named by
    /// $APIARY_SECRET_BYTES_PATH; at most 20480 bytes. Never printed, not even by --dry-run
    /// or `tasks show`. Works with --request too.
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_bytes_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) flags: TaskFlags,
}

/// A one-slice task described by flags.
#[derive(Debug, Args)]
pub(crate) struct TaskFlags {
    /// A dimension a bot must have; repeat for more. A key given twice asks for both values
    /// (as in Swarming); `KEY=a|b` accepts either.
    #[arg(long = "dimension", short = 'd', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) dimensions: Vec<StringPair>,
    /// Lower runs first: 1 to 255.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_PRIORITY, value_parser = parse_priority)]
    pub(crate) priority: u8,
    /// The task's name, for people.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub(crate) name: String,
    /// Who the task is for.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub(crate) user: String,
    /// A tag, for people and searches; repeat for more.
    #[arg(long = "tag", value_name = "KEY:VALUE", value_parser = parse_tag)]
    pub(crate) tags: Vec<String>,
    /// An environment variable for the command; repeat for more. `KEY=` (an empty value)
    /// removes KEY from the command's environment.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) env: Vec<StringPair>,
    /// Prepend RELPATH, a path inside the task's work directory, to the PATH-like variable
    /// KEY; repeat for more (several for one KEY are prepended in the order given).
    #[arg(long = "env-prefix", value_name = "KEY=RELPATH", value_parser = parse_key_path)]
    pub(crate) env_prefixes: Vec<StringPair>,
    /// The directory the command runs in, relative to the task's work directory; default:
    /// the work directory itself.
    #[arg(long = "cwd", value_name = "RELPATH", default_value = "", hide_default_value = true)]
    pub(crate) relative_cwd: String,
    /// A named cache: a directory the bot keeps across tasks, seen by this task at RELPATH in
    /// its work directory; repeat for more (up to 32).
    #[arg(long = "named-cache", value_name = "NAME=RELPATH", value_parser = parse_named_cache)]
    pub(crate) named_caches: Vec<NamedCache>,
    /// A tree in the daemon's content-addressed store (`apiary cas archive` prints its digest),
    /// mapped into the task's work directory before the command runs.
    #[arg(long = "cas-input-root", value_name = "HASH/SIZE")]
    pub(crate) cas_input_root: Option<Digest>,
    /// A dimension to prefer for its first SECS seconds, as Swarming's -optional-dimension:
    /// the task gets a first slice with it, then falls back to one without; repeat for more
    /// (see the README for how the slices are built).
    #[arg(long = "optional-dimension", value_name = "KEY=VALUE:SECS", value_parser = parse_optional_dimension)]
    pub(crate) optional_dimensions: Vec<OptionalDimension>,
    /// Seconds the task may wait for a bot before it EXPIRES (with optional dimensions:
    /// in all, across its slices).
    #[arg(
        long = "expiration",
        value_name = "SECS",
        default_value_t = limits::DEFAULT_EXPIRATION_SECS,
        value_parser = |text: &str| parse_in_range(text, &limits::EXPIRATION_RANGE)
    )]
    pub(crate) expiration_secs: u32,
    /// Seconds the command may run; then it is stopped (see --grace-period) and the task
    /// ends TIMED_OUT with timeout "hard".
    #[arg(
        long = "hard-timeout",
        value_name = "SECS",
        default_value_t = limits::DEFAULT_EXECUTION_TIMEOUT_SECS,
        value_parser = |text: &str| parse_in_range(text, &limits::EXECUTION_TIMEOUT_RANGE)
    )]
    pub(crate) hard_timeout_secs: u32,
    /// Seconds the command may go without writing output; then it is stopped and the task
    /// ends TIMED_OUT with timeout "io". 0: no limit.
    #[arg(long = "io-timeout", value_name = "SECS", default_value_t = 0, value_parser = parse_io_timeout)]
    pub(crate) io_timeout_secs: u32,
    /// When the command is stopped (a timeout, or a kill): seconds between SIGTERM to its
    /// process group and SIGKILL, for it to clean up.
    #[arg(
        long = "grace-period",
        value_name = "SECS",
        default_value_t = limits::DEFAULT_GRACE_PERIOD_SECS,
        value_parser = |text: &str| parse_in_range(text, &limits::GRACE_PERIOD_RANGE)
    )]
    pub(crate) grace_period_secs: u32,
    /// Keep the task pending while no live bot matches, instead of ending it NO_RESOURCE.
    #[arg(long)]
    pub(crate) wait_for_capacity: bool,
    /// The result may be reused: an identical idempotent task that already succeeded may
    /// answer this one instead of a new run.
    #[arg(long)]
    pub(crate) idempotent: bool,
    /// Seconds the task's bot may go unheard from while it runs the task before the task
    /// ends BOT_DIED.
    #[arg(
        long = "bot-ping-tolerance",
        value_name = "SECS",
        default_value_t = limits::DEFAULT_BOT_PING_TOLERANCE_SECS,
        value_parser = |text: &str| parse_in_range(text, &limits::BOT_PING_TOLERANCE_RANGE)
    )]
    pub(crate) bot_ping_tolerance_secs: u32,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required_unless_present = "request", value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// A dimension a task prefers for a while, from `--optional-dimension KEY=VALUE:SECS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OptionalDimension {
    pub(crate) dimension: StringPair,
    pub(crate) expiration_secs: u32,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// Also stop the task if it is running (it ends KILLED); without it a running task is left alone.
    #[arg(long)]
    pub(crate) kill_running: bool,
    /// Cancel every pending task with this tag instead of one task; repeat for more (all
    /// must be present).
    #[arg(long = "tag", value_name = "KEY:VALUE", value_parser = parse_tag, conflicts_with = "task_id")]
    pub(crate) tags: Vec<String>,
    /// With --tag: only tasks created at or after this time (as `tasks list --start`).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "task_id")]
    pub(crate) start: Option<u64>,
    /// With --tag: only tasks created before this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "task_id")]
    pub(crate) end: Option<u64>,
    /// The task: its id (ending in 0) or a run id (ending in 1 or 2).
    #[arg(value_name = "TASK_ID", value_parser = parse_task_id, required_unless_present = "tags")]
    pub(crate) task_id: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CollectArgs {
    #[command(flatten)]
    pub(crate) timeout: Timeout,
    /// Write the output as it arrives, not once the task ended (one task only).
    #[arg(long, conflicts_with_all = ["output_dir", "json_output"])]
    pub(crate) follow: bool,
    /// Write a summary.json, each task's output (DIR/TASK_ID/output.txt) and the files it
    /// left in ${ISOLATED_OUTDIR} (its cas_output_root, in DIR/TASK_ID/) here, as Swarming's
    /// collect -output-dir does, instead of the output to stdout.
    #[arg(long, value_name = "DIR")]
    pub(crate) output_dir: Option<PathBuf>,
    /// Write the tasks' results as JSON to FILE (`-`: stdout), as Swarming's collect
    /// -task-summary-json does.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_output: Option<PathBuf>,
    /// The tasks: each an id (ending in 0) or a run id (ending in 1 or 2).
    #[arg(value_name = "TASK_ID", value_parser = parse_task_id, required = true, num_args = 1..)]
    pub(crate) task_ids: Vec<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ReproduceArgs {
    /// Where to set up the work directory; default: a new directory under the system's
    /// temporary directory, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// The task: its id (ending in 0) or a run id (ending in 1 or 2).
    #[arg(value_name = "TASK_ID", value_parser = parse_task_id)]
    pub(crate) task_id: u64,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) timeout: Timeout,
    /// Write the output as it arrives, not once the task ended.
    #[arg(long)]
    pub(crate) follow: bool,
    #[command(flatten)]
    pub(crate) task: TaskArgs,
}

#[derive(Debug, Args)]
pub(crate) struct Timeout {
    /// Give up waiting after this many seconds (the task goes on); default: wait until it ends.
    #[arg(long = "timeout", value_name = "SECS")]
    timeout_secs: Option<u64>,
}

impl Timeout {
    pub(crate) fn duration(&self) -> Option<Duration> {
        self.timeout_secs.map(Duration::from_secs)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TasksCommand {
    /// Show what the daemon knows of a task.
    Show {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The task: its id (ending in 0) or a run id (ending in 1 or 2).
        #[arg(value_name = "TASK_ID", value_parser = parse_task_id)]
        task_id: u64,
    },
    /// Write a task's output so far to stdout, as raw bytes.
    Output {
        /// Go on writing the output as it arrives, until the task ends.
        #[arg(long)]
        follow: bool,
        /// The task: its id (ending in 0) or a run id (ending in 1 or 2).
        #[arg(value_name = "TASK_ID", value_parser = parse_task_id)]
        task_id: u64,
    },
    /// List tasks, newest first, one page at a time.
    List(ListTasksArgs),
    /// Count the tasks that match the filters of `tasks list`.
    Count(CountTasksArgs),
}

/// Which tasks: by state, tags and creation time.
#[derive(Debug, Args)]
pub(crate) struct TaskFilters {
    /// Only tasks in this state: one of Swarming's query states (ALL, PENDING_RUNNING,
    /// COMPLETED_SUCCESS, COMPLETED_FAILURE, DEDUPED) or a task state, any case.
    #[arg(long, value_name = "STATE", value_parser = parse_state, default_value = "ALL")]
    pub(crate) state: StateQuery,
    /// Only tasks with this tag; repeat for more (all must be present).
    #[arg(long = "tag", value_name = "KEY:VALUE", value_parser = parse_tag)]
    pub(crate) tags: Vec<String>,
    /// Only tasks created at or after this time: RFC 3339 in UTC or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) start: Option<u64>,
    /// Only tasks created before this time, written as for --start.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) end: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CountTasksArgs {
    #[command(flatten)]
    pub(crate) filters: TaskFilters,
    /// One JSON object instead of a number.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListTasksArgs {
    #[command(flatten)]
    pub(crate) filters: TaskFilters,
    /// At most this many tasks; default and cap are the daemon's (100 and 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: Option<u32>,
    /// Continue a listing where the previous page ended (as printed with it).
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
    pub(crate) cursor: Option<u64>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BotsCommand {
    /// List the bots the daemon knows, one per line.
    List {
        /// Only bots with this dimension; repeat for more (all must match). VALUE may be
        /// `a|b` to accept either.
        #[arg(long = "dimension", short = 'd', value_name = "KEY=VALUE", value_parser = parse_key_value)]
        dimensions: Vec<StringPair>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one bot.
    Show {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "BOT_ID")]
        bot_id: String,
    },
    /// Give a bot no more work until it is unquarantined (a task it runs goes on).
    Quarantine {
        /// Why, for people; shown with the bot and in its events.
        #[arg(long, value_name = "TEXT", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        reason: String,
        #[arg(value_name = "BOT_ID")]
        bot_id: String,
    },
    /// Give a quarantined bot work again (unless its own health check still fails).
    Unquarantine {
        #[arg(value_name = "BOT_ID")]
        bot_id: String,
    },
    /// Have a bot exit once its current task (if any) has ended.
    Terminate {
        /// Why, for people; shown in the bot's events.
        #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
        reason: String,
        /// Wait until the bot has shut down.
        #[arg(long)]
        wait: bool,
        #[arg(value_name = "BOT_ID")]
        bot_id: String,
    },
    /// List what happened to a bot, newest first, one page at a time.
    Events(BotEventsArgs),
    /// List the tasks a bot ran, newest first, one page at a time.
    Tasks(BotTasksArgs),
    /// Count the bots, and how many are busy, dead, quarantined, ...
    Count {
        /// Only bots with this dimension; repeat for more (all must match). VALUE may be
        /// `a|b` to accept either.
        #[arg(long = "dimension", short = 'd', value_name = "KEY=VALUE", value_parser = parse_key_value)]
        dimensions: Vec<StringPair>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget a dead or disconnected bot (its events and standing go; its tasks stay).
    Delete {
        #[arg(value_name = "BOT_ID")]
        bot_id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct BotTasksArgs {
    /// At most this many tasks; default and cap are the daemon's (100 and 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: Option<u32>,
    /// Continue a listing where the previous page ended (as printed with it).
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
    pub(crate) cursor: Option<u64>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[arg(value_name = "BOT_ID")]
    pub(crate) bot_id: String,
}

#[derive(Debug, Args)]
pub(crate) struct BotEventsArgs {
    /// At most this many events; default and cap are the daemon's (100 and 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: Option<u32>,
    /// Continue a listing where the previous page ended (as printed with it).
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
    pub(crate) cursor: Option<u64>,
    /// Only events at or after this time: RFC 3339 in UTC (`2024-05-01T12:00:00Z`) or Unix
    /// seconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) since: Option<u64>,
    /// Only events before this time, written as for --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) until: Option<u64>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[arg(value_name = "BOT_ID")]
    pub(crate) bot_id: String,
}

fn parse_key_value(text: &str) -> Result<StringPair, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(StringPair::new(key, value)),
        _ => Err("expected KEY=VALUE with a non-empty KEY".to_string()),
    }
}

/// A whole number within `range`, refused in the daemon's words (`Range::check`).
fn parse_in_range(text: &str, range: &limits::Range) -> Result<u32, String> {
    let value: u64 = text.parse().map_err(|_| format!("expected a whole number in {}..={}", range.min, range.max))?;
    range.check(value)?;
    Ok(u32::try_from(value).expect("a range's values fit in u32"))
}

fn parse_priority(text: &str) -> Result<u8, String> {
    let value = parse_in_range(text, &limits::PRIORITY_RANGE)?;
    Ok(u8::try_from(value).expect("priorities fit in u8"))
}

/// 0 means no I/O timeout; anything else is a timeout in its range.
fn parse_io_timeout(text: &str) -> Result<u32, String> {
    if text == "0" {
        return Ok(0);
    }
    parse_in_range(text, &limits::IO_TIMEOUT_RANGE).map_err(|message| format!("{message} (or 0: no limit)"))
}

fn parse_key_path(text: &str) -> Result<StringPair, String> {
    match text.split_once('=') {
        Some((key, path)) if !key.is_empty() && !path.is_empty() => Ok(StringPair::new(key, path)),
        _ => Err("expected KEY=RELPATH with a non-empty KEY and RELPATH".to_string()),
    }
}

fn parse_named_cache(text: &str) -> Result<NamedCache, String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok(NamedCache { name: name.to_string(), path: path.to_string() })
        }
        _ => Err("expected NAME=RELPATH with a non-empty NAME and RELPATH".to_string()),
    }
}

fn parse_tag(text: &str) -> Result<String, String> {
    match text.split_once(':') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_string()),
        _ => Err("expected KEY:VALUE with a non-empty KEY".to_string()),
    }
}

fn parse_task_id(text: &str) -> Result<u64, String> {
    apiary_protocol::ids::parse_task_id(text)
        .map_err(|_| "expected 16 hexadecimal digits: a task id (ending in 0) or a run id".to_string())
}

fn parse_state(text: &str) -> Result<StateQuery, String> {
    StateQuery::from_name(text).ok_or_else(|| format!("expected one of {}", StateQuery::names().join(", ")))
}

/// `KEY=VALUE:SECS`, split at the last `:` so that a value may hold one.
fn parse_optional_dimension(text: &str) -> Result<OptionalDimension, String> {
    const EXPECTED: &str = "expected KEY=VALUE:SECS with a non-empty KEY and whole seconds";
    let (pair, secs) = text.rsplit_once(':').ok_or(EXPECTED)?;
    let dimension = parse_key_value(pair).map_err(|_| EXPECTED.to_string())?;
    let expiration_secs = secs.parse::<u32>().ok().filter(|&secs| secs > 0).ok_or(EXPECTED)?;
    Ok(OptionalDimension { dimension, expiration_secs })
}

/// A cursor is opaque to people: 16 hex digits, as `tasks list` prints it.
fn parse_cursor(text: &str) -> Result<u64, String> {
    let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let cursor = valid.then(|| u64::from_str_radix(text, 16).ok()).flatten();
    cursor
        .ok_or_else(|| "expected 16 hexadecimal digits, as printed after `--cursor` by a previous listing".to_string())
}

/// A point in time as milliseconds since the Unix epoch: RFC 3339 as
/// `humantime::parse_rfc3339_weak` reads it, or whole Unix seconds.
fn parse_time(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected an RFC 3339 time such as 2024-05-01T12:00:00Z, or Unix seconds";
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text.parse().map_err(|_| format!("{EXPECTED}: too large"))?;
        return seconds.checked_mul(1000).ok_or_else(|| format!("{EXPECTED}: too large"));
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|error| format!("{EXPECTED} ({error})"))?;
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{EXPECTED}: before 1970"))?;
    u64::try_from(since_epoch.as_millis()).map_err(|_| format!("{EXPECTED}: too large"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("apiary").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trigger_takes_repeated_flags_in_order_and_the_command_after_the_double_dash() {
        let cli = parse(&[
            "trigger",
            "-d",
            "os=linux",
            "--dimension",
            "pool=a=b",
            "--tag",
            "k:v",
            "--env",
            "X=",
            "--priority",
            "7",
            "--",
            "echo",
            "--priority",
            "hi",
        ])
        .unwrap();
        let Command::Trigger(trigger) = cli.command else { panic!("not a trigger: {:?}", cli.command) };
        let task = trigger.task.flags;
        assert_eq!(task.dimensions, [StringPair::new("os", "linux"), StringPair::new("pool", "a=b")]);
        assert_eq!(task.tags, ["k:v"]);
        assert_eq!(task.env, [StringPair::new("X", "")]);
        assert_eq!(task.priority, 7);
        assert_eq!(task.command, ["echo", "--priority", "hi"]);
    }

    #[test]
    fn bad_pairs_are_usage_errors_naming_the_flag_and_the_value() {
        for (flag, value) in [("--dimension", "oslinux"), ("--env", "=x"), ("--tag", "novalue"), ("--tag", ":v")] {
            let error = parse(&["trigger", flag, value, "--", "true"]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation);
            assert_eq!(error.exit_code(), crate::exit_codes::USAGE);
            let message = error.to_string();
            assert!(message.contains(flag) && message.contains(value), "{message}");
        }
    }

    #[test]
    fn a_server_with_a_scheme_or_without_a_port_is_a_usage_error() {
        for (server, expected) in
            [("https://apiary.example", "e.g. apiary.example:7420"), ("apiary.example", "has no port")]
        {
            let error = parse(&["--server", server, "bots", "list"]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation);
            assert_eq!(error.exit_code(), crate::exit_codes::USAGE);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn ranges_are_refused_in_the_daemons_words() {
        let cases = [
            ("--priority", "0", limits::PRIORITY_RANGE.check(0)),
            ("--priority", "300", limits::PRIORITY_RANGE.check(300)),
            ("--expiration", "0", limits::EXPIRATION_RANGE.check(0)),
            ("--hard-timeout", "99999999", limits::EXECUTION_TIMEOUT_RANGE.check(99_999_999)),
            ("--io-timeout", "99999999", limits::IO_TIMEOUT_RANGE.check(99_999_999)),
            ("--grace-period", "3601", limits::GRACE_PERIOD_RANGE.check(3601)),
        ];
        for (flag, value, expected) in cases {
            let error = parse(&["trigger", flag, value, "--", "true"]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation);
            let message = error.to_string();
            let expected = expected.unwrap_err();
            assert!(message.contains(flag) && message.contains(&expected), "{flag} {value}: {message}");
        }
        let error = parse(&["trigger", "--priority", "high", "--", "true"]).unwrap_err();
        assert!(error.to_string().contains("expected a whole number in 1..=255"), "{error}");
        let cli = parse(&["trigger", "--io-timeout", "0", "--grace-period", "0", "--", "true"]).unwrap();
        let Command::Trigger(trigger) = cli.command else { panic!("not a trigger") };
        assert_eq!((trigger.task.flags.io_timeout_secs, trigger.task.flags.grace_period_secs), (0, 0));
    }

    #[test]
    fn the_command_is_required_unless_there_is_a_request_file() {
        let error = parse(&["trigger", "-d", "os=linux"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        let error = parse(&["trigger"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn cancel_and_bots_show_take_one_id() {
        assert_eq!(parse(&["cancel"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse(&["cancel", "xyz"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["bots", "show"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        let cli = parse(&["bots", "show", "--json", "bot-1"]).unwrap();
        let Command::Bots(BotsCommand::Show { json, bot_id }) = cli.command else { panic!("not a bots show") };
        assert!(json);
        assert_eq!(bot_id, "bot-1");
    }

    #[test]
    fn a_request_file_replaces_every_task_flag_and_the_command() {
        for flag in [
            &["-d", "os=linux"][..],
            &["--priority", "5"],
            &["--name", "n"],
            &["--user", "u"],
            &["--tag", "k:v"],
            &["--env", "K=V"],
            &["--env-prefix", "PATH=bin"],
            &["--cwd", "src"],
            &["--named-cache", "git=cache/git"],
            &["--expiration", "5"],
            &["--hard-timeout", "5"],
            &["--io-timeout", "5"],
            &["--grace-period", "5"],
            &["--wait-for-capacity"],
            &["--idempotent"],
            &["--bot-ping-tolerance", "60"],
            &["--", "echo"],
        ] {
            for command in ["trigger", "run"] {
                let args: Vec<&str> =
                    [command, "--request", "task.json"].into_iter().chain(flag.iter().copied()).collect();
                let error = parse(&args).unwrap_err();
                assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{args:?}");
                assert_eq!(error.exit_code(), crate::exit_codes::USAGE);
            }
        }
        let cli = parse(&["trigger", "--dry-run", "--request", "-"]).unwrap();
        let Command::Trigger(trigger) = cli.command else { panic!("not a trigger") };
        assert!(trigger.dry_run);
        assert_eq!(trigger.task.request, Some(PathBuf::from("-")));
        let cli = parse(&["run", "--request", "task.json", "--timeout", "5"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not a run") };
        assert_eq!(args.task.request, Some(PathBuf::from("task.json")));
    }

    #[test]
    fn paths_caches_and_emptied_variables_parse_and_bad_ones_are_usage_errors() {
        let cli = parse(&["trigger", "--env", "K=", "--env-prefix", "PATH=a=b", "--", "true"]).unwrap();
        let Command::Trigger(trigger) = cli.command else { panic!("not a trigger") };
        assert_eq!(trigger.task.flags.env, [StringPair::new("K", "")]);
        assert_eq!(trigger.task.flags.env_prefixes, [StringPair::new("PATH", "a=b")]);
        for bad in [
            &["--env-prefix", "PATH"][..],
            &["--env-prefix", "=bin"],
            &["--env-prefix", "PATH="],
            &["--named-cache", "git"],
            &["--named-cache", "=cache"],
            &["--named-cache", "git="],
            &["--env", "=x"],
        ] {
            let args: Vec<&str> = ["trigger"].into_iter().chain(bad.iter().copied()).chain(["--", "true"]).collect();
            let error = parse(&args).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{args:?}");
            assert_eq!(error.exit_code(), crate::exit_codes::USAGE);
        }
    }

    #[test]
    fn follow_is_a_flag_of_collect_run_and_tasks_output() {
        let cli = parse(&["collect", "--follow", "018bcfe568800010"]).unwrap();
        assert!(matches!(cli.command, Command::Collect(CollectArgs { follow: true, .. })));
        let cli = parse(&["collect", "018bcfe568800010"]).unwrap();
        assert!(matches!(cli.command, Command::Collect(CollectArgs { follow: false, .. })));
        let cli = parse(&["run", "--follow", "--", "true"]).unwrap();
        assert!(matches!(cli.command, Command::Run(RunArgs { follow: true, .. })));
        let cli = parse(&["tasks", "output", "--follow", "018bcfe568800010"]).unwrap();
        assert!(matches!(cli.command, Command::Tasks(TasksCommand::Output { follow: true, .. })));
        assert_eq!(parse(&["trigger", "--follow", "--", "true"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn time_limit_help_says_how_a_command_is_stopped_and_how_the_task_ends() {
        let mut command = Cli::command();
        let trigger = command.find_subcommand_mut("trigger").unwrap();
        let help = |name: &str| {
            let arg = trigger.get_arguments().find(|arg| arg.get_id() == name).unwrap();
            arg.get_help().unwrap().to_string()
        };
        let hard = help("hard_timeout_secs");
        assert!(hard.contains("TIMED_OUT") && hard.contains("\"hard\""), "{hard}");
        let io = help("io_timeout_secs");
        assert!(io.contains("without writing output") && io.contains("\"io\"") && io.contains("0: no limit"), "{io}");
        let grace = help("grace_period_secs");
        assert!(grace.contains("SIGTERM") && grace.contains("SIGKILL"), "{grace}");
        let secret = help("secret_bytes_file");
        assert!(secret.contains(&format!("at most {} bytes", limits::MAX_SECRET_BYTES)), "{secret}");
    }

    #[test]
    fn dry_run_is_for_trigger_alone() {
        let cli = parse(&["trigger", "--dry-run", "--wait-for-capacity", "--idempotent", "--", "true"]).unwrap();
        let Command::Trigger(trigger) = cli.command else { panic!("not a trigger") };
        assert!(trigger.dry_run && trigger.task.flags.wait_for_capacity && trigger.task.flags.idempotent);
        assert_eq!(parse(&["run", "--dry-run", "--", "true"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn task_ids_accept_request_and_run_ids_and_name_a_bad_one() {
        let cli = parse(&["collect", "--timeout", "5", "018BCFE568800011"]).unwrap();
        let Command::Collect(args) = cli.command else { panic!("not a collect") };
        assert_eq!(args.task_ids, [0x018b_cfe5_6880_0011]);
        assert_eq!(args.timeout.duration(), Some(Duration::from_secs(5)));
        let error = parse(&["tasks", "show", "--json", "12345"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(error.to_string().contains("12345"));
    }

    #[test]
    fn run_takes_trigger_flags_and_a_timeout() {
        let cli = parse(&["--server", "h:1", "run", "--timeout", "9", "--name", "n", "--", "ls", "-l"]).unwrap();
        assert_eq!(cli.server, "h:1");
        let Command::Run(args) = cli.command else { panic!("not a run") };
        assert_eq!(args.timeout.duration(), Some(Duration::from_secs(9)));
        assert_eq!(args.task.flags.name, "n");
        assert_eq!(args.task.flags.command, ["ls", "-l"]);
    }

    #[test]
    fn bot_ping_tolerance_defaults_to_the_protocol_default() {
        let cli = parse(&["run", "--bot-ping-tolerance", "60", "--", "true"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not a run") };
        assert_eq!(args.task.flags.bot_ping_tolerance_secs, 60);
        let cli = parse(&["trigger", "--", "true"]).unwrap();
        let Command::Trigger(trigger) = cli.command else { panic!("not a trigger") };
        assert_eq!(trigger.task.flags.bot_ping_tolerance_secs, limits::DEFAULT_BOT_PING_TOLERANCE_SECS);
        let error = parse(&["trigger", "--bot-ping-tolerance", "-1", "--", "true"]).unwrap_err();
        assert_eq!(error.exit_code(), crate::exit_codes::USAGE);
    }

    #[test]
    fn bot_management_commands_take_one_bot_and_quarantine_a_reason() {
        let cli = parse(&["bots", "quarantine", "--reason", "disk full", "bot-1"]).unwrap();
        let Command::Bots(BotsCommand::Quarantine { reason, bot_id }) = cli.command else { panic!("not quarantine") };
        assert_eq!((reason.as_str(), bot_id.as_str()), ("disk full", "bot-1"));
        for args in [&["bots", "quarantine", "bot-1"][..], &["bots", "unquarantine"], &["bots", "terminate"]] {
            assert_eq!(parse(args).unwrap_err().kind(), ErrorKind::MissingRequiredArgument, "{args:?}");
        }
        let error = parse(&["bots", "quarantine", "--reason", "", "bot-1"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
        let cli = parse(&["bots", "unquarantine", "bot-1"]).unwrap();
        assert!(matches!(cli.command, Command::Bots(BotsCommand::Unquarantine { bot_id }) if bot_id == "bot-1"));
        let cli = parse(&["bots", "terminate", "bot-1"]).unwrap();
        assert!(matches!(cli.command, Command::Bots(BotsCommand::Terminate { bot_id, .. }) if bot_id == "bot-1"));
    }

    #[test]
    fn event_times_are_rfc_3339_or_unix_seconds() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.250Z"), Ok(1_700_000_000_250));
        assert_eq!(parse_time("2023-11-14 22:13:20"), Ok(1_700_000_000_000));
        for bad in ["", "yesterday", "-5", "1.5", "2023-13-01T00:00:00Z", "99999999999999999999"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        let cli = parse(&[
            "bots",
            "events",
            "--limit",
            "5",
            "--cursor",
            "00000000000000ff",
            "--since",
            "1700000000",
            "--until",
            "2023-11-14T22:13:21Z",
            "--json",
            "bot-1",
        ])
        .unwrap();
        let Command::Bots(BotsCommand::Events(args)) = cli.command else { panic!("not bots events") };
        assert_eq!((args.limit, args.cursor), (Some(5), Some(0xff)));
        assert_eq!((args.since, args.until), (Some(1_700_000_000_000), Some(1_700_000_001_000)));
        assert!(args.json);
        assert_eq!(args.bot_id, "bot-1");
        let error = parse(&["bots", "events", "--since", "soon", "bot-1"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(error.to_string().contains("soon"), "{error}");
        assert_eq!(parse(&["bots", "events"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn the_server_defaults_to_the_local_daemon() {
        // Reads the real environment; only meaningful when APIARY_SERVER is unset.
        if std::env::var_os(SERVER_ENV).is_none() {
            assert_eq!(parse(&["bots", "list"]).unwrap().server, DEFAULT_SERVER);
        }
        assert_eq!(parse(&["bots", "list", "--server", "x:2"]).unwrap().server, "x:2");
    }

    #[test]
    fn query_states_are_swarmings_in_any_case_and_filters_take_times() {
        let cli = parse(&["tasks", "count", "--state", "completed_failure", "--start", "1700000000", "--tag", "k:v"])
            .unwrap();
        let Command::Tasks(TasksCommand::Count(args)) = cli.command else { panic!("not tasks count") };
        assert_eq!(args.filters.state, StateQuery::CompletedFailure);
        assert_eq!((args.filters.start, args.filters.end), (Some(1_700_000_000_000), None));
        for (name, state) in [
            ("ALL", StateQuery::All),
            ("pending_running", StateQuery::PendingRunning),
            ("QUERY_DEDUPED", StateQuery::Deduped),
            ("COMPLETED_SUCCESS", StateQuery::CompletedSuccess),
            ("no_resource", StateQuery::One(apiary_protocol::TaskState::NoResource)),
        ] {
            let cli = parse(&["tasks", "list", "--state", name]).unwrap();
            let Command::Tasks(TasksCommand::List(args)) = cli.command else { panic!("not tasks list") };
            assert_eq!(args.filters.state, state, "{name}");
        }
        let error = parse(&["tasks", "list", "--state", "DONE"]).unwrap_err();
        assert!(error.to_string().contains("PENDING_RUNNING"), "{error}");
    }

    #[test]
    fn cancel_takes_one_task_or_tags_not_both() {
        let cli = parse(&["cancel", "--tag", "build:7", "--tag", "kind:test", "--kill-running"]).unwrap();
        let Command::Cancel(args) = cli.command else { panic!("not cancel") };
        assert_eq!((args.task_id, args.tags.len(), args.kill_running), (None, 2, true));
        let both = parse(&["cancel", "--tag", "build:7", "018bcfe568800010"]).unwrap_err();
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(parse(&["cancel", "--start", "5", "018bcfe568800010"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn collect_takes_several_tasks_and_follow_only_without_files() {
        let cli = parse(&["collect", "--output-dir", "out", "018bcfe568800010", "018bcfe568800020"]).unwrap();
        let Command::Collect(args) = cli.command else { panic!("not collect") };
        assert_eq!(args.task_ids.len(), 2);
        assert_eq!(args.output_dir, Some(PathBuf::from("out")));
        let error = parse(&["collect", "--follow", "--json-output", "-", "018bcfe568800010"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(parse(&["collect"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn bots_tasks_count_delete_and_terminate_with_a_reason() {
        let cli = parse(&["bots", "terminate", "--reason", "retired", "--wait", "bot-1"]).unwrap();
        let Command::Bots(BotsCommand::Terminate { reason, wait, bot_id }) = cli.command else { panic!("terminate") };
        assert_eq!((reason.as_str(), wait, bot_id.as_str()), ("retired", true, "bot-1"));
        let cli = parse(&["bots", "count", "-d", "pool=ci", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Bots(BotsCommand::Count { json: true, .. })));
        let cli = parse(&["bots", "tasks", "--limit", "3", "bot-1"]).unwrap();
        assert!(matches!(cli.command, Command::Bots(BotsCommand::Tasks(BotTasksArgs { limit: Some(3), .. }))));
        let cli = parse(&["bots", "delete", "bot-1"]).unwrap();
        assert!(matches!(cli.command, Command::Bots(BotsCommand::Delete { bot_id }) if bot_id == "bot-1"));
    }
}

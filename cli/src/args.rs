//! The command line. Only syntax is checked here (`K=V`, `K:V`, task ids, numbers);
//! the daemon checks every limit and names the field it refuses.

use std::time::Duration;

use apiary_protocol::StringPair;
use apiary_protocol::limits;
use clap::{Args, Parser, Subcommand};

use crate::connect::{DEFAULT_SERVER, SERVER_ENV};

/// The Apiary command line: trigger tasks, collect their results, look at tasks and bots.
#[derive(Debug, Parser)]
#[command(name = "apiary", version)]
pub(crate) struct Cli {
    /// The daemon's address, HOST:PORT.
    #[arg(long, global = true, value_name = "ADDR", env = SERVER_ENV, default_value = DEFAULT_SERVER)]
    pub(crate) server: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a task and print its id.
    Trigger(TaskArgs),
    /// Wait for a task to end, write its output to stdout and exit with its exit code.
    Collect(CollectArgs),
    /// Trigger a task, then collect it (the task id goes to stderr).
    Run(RunArgs),
    /// Look at one task.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Look at the bots.
    #[command(subcommand)]
    Bots(BotsCommand),
}

/// Everything that describes a new task.
#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    /// A dimension a bot must have; repeat for more (a key given twice accepts either value).
    #[arg(long = "dimension", short = 'd', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) dimensions: Vec<StringPair>,
    /// Lower runs first; 0 is reserved for the daemon.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_PRIORITY)]
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
    /// An environment variable for the command; repeat for more.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) env: Vec<StringPair>,
    /// Seconds the task may wait for a bot before it EXPIRES.
    #[arg(long = "expiration", value_name = "SECS", default_value_t = limits::DEFAULT_EXPIRATION_SECS)]
    pub(crate) expiration_secs: u32,
    /// Seconds the command may run before it is stopped (TIMED_OUT).
    #[arg(long = "hard-timeout", value_name = "SECS", default_value_t = limits::DEFAULT_EXECUTION_TIMEOUT_SECS)]
    pub(crate) hard_timeout_secs: u32,
    /// Seconds without output before the command is stopped; 0 means no limit.
    #[arg(long = "io-timeout", value_name = "SECS", default_value_t = 0)]
    pub(crate) io_timeout_secs: u32,
    /// Seconds between SIGTERM and SIGKILL when the command is stopped.
    #[arg(long = "grace-period", value_name = "SECS", default_value_t = limits::DEFAULT_GRACE_PERIOD_SECS)]
    pub(crate) grace_period_secs: u32,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CollectArgs {
    #[command(flatten)]
    pub(crate) timeout: Timeout,
    /// The task: its id (ending in 0) or a run id (ending in 1 or 2).
    #[arg(value_name = "TASK_ID", value_parser = parse_task_id)]
    pub(crate) task_id: u64,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) timeout: Timeout,
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
        /// The task: its id (ending in 0) or a run id (ending in 1 or 2).
        #[arg(value_name = "TASK_ID", value_parser = parse_task_id)]
        task_id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BotsCommand {
    /// List the bots the daemon knows, one per line.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_key_value(text: &str) -> Result<StringPair, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(StringPair::new(key, value)),
        _ => Err("expected KEY=VALUE with a non-empty KEY".to_string()),
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
        let Command::Trigger(task) = cli.command else { panic!("not a trigger: {:?}", cli.command) };
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
    fn the_command_is_required() {
        let error = parse(&["trigger", "-d", "os=linux"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn task_ids_accept_request_and_run_ids_and_name_a_bad_one() {
        let cli = parse(&["collect", "--timeout", "5", "018BCFE568800011"]).unwrap();
        let Command::Collect(args) = cli.command else { panic!("not a collect") };
        assert_eq!(args.task_id, 0x018b_cfe5_6880_0011);
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
        assert_eq!(args.task.name, "n");
        assert_eq!(args.task.command, ["ls", "-l"]);
    }

    #[test]
    fn the_server_defaults_to_the_local_daemon() {
        // Reads the real environment; only meaningful when APIARY_SERVER is unset.
        if std::env::var_os(SERVER_ENV).is_none() {
            assert_eq!(parse(&["bots", "list"]).unwrap().server, DEFAULT_SERVER);
        }
        assert_eq!(parse(&["bots", "list", "--server", "x:2"]).unwrap().server, "x:2");
    }
}

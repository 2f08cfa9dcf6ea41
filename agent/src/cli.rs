//! The command line of `apiary-bot`, its checks, and the exit codes.

use std::path::PathBuf;
use std::time::Duration;

use apiary_protocol::tls::TlsArgs;
use apiary_protocol::token::{TOKEN_FILE_ENV, read_token_file};
use apiary_protocol::{StringPair, limits};

use crate::health::HealthCheck;
use crate::host;
use crate::session::DEFAULT_CONTENT_CACHE_MAX_BYTES;

/// Exit codes of `apiary-bot`.
pub(crate) mod exit_codes {
    /// Shut down on SIGTERM or SIGINT, or on the daemon's request.
    pub(crate) const SUCCESS: i32 = 0;
    /// The bot could not run (the daemon refused it, the work directory failed).
    pub(crate) const FAILURE: i32 = 1;
    /// The command line was wrong.
    pub(crate) const USAGE: i32 = 2;
    /// Another process took over this bot id (README, "One live session per bot id"):
    /// a supervisor should not restart the bot at once.
    pub(crate) const SUPERSEDED: i32 = 3;
}

/// Polls an Apiary daemon for tasks and runs them on this host.
#[derive(Debug, clap::Parser)]
#[command(name = "apiary-bot", version)]
pub(crate) struct Args {
    /// The daemon's address, HOST:PORT (no scheme).
    #[arg(
        long,
        env = "APIARY_SERVER",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7420",
        value_parser = apiary_protocol::client::parse_server_address
    )]
    pub(crate) server: String,
    /// A file holding the token that names this bot's principal to the daemon (needed when the
    /// daemon has principals configured); never give a token itself on the command line.
    #[arg(long, value_name = "FILE", env = TOKEN_FILE_ENV)]
    pub(crate) token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// This bot's id, unique among bots (letters, digits, '-', '_' and '.'); also its `id` dimension.
    #[arg(long, value_name = "NAME")]
    pub(crate) id: String,
    /// A dimension of this bot; repeat it, and give a key twice for two values. A key
    /// given here replaces the values the bot finds itself (os, cpu, cores).
    #[arg(long = "dimension", value_name = "KEY=VALUE", value_parser = parse_dimension)]
    pub(crate) dimensions: Vec<StringPair>,
    /// Where task directories and named caches are kept [default: the service's state directory
    /// when systemd gives one ($STATE_DIRECTORY, its first entry), else <temp dir>/apiary-bot-<id>].
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// A shell command run (`sh -c`, in the work directory) before each poll; while it
    /// fails, the bot is quarantined: the daemon gives it no work.
    #[arg(long, value_name = "CMD")]
    pub(crate) health_check: Option<String>,
    /// Seconds the health check may run before it is killed and counts as failed.
    #[arg(
        long = "health-check-timeout",
        value_name = "SECS",
        default_value_t = DEFAULT_HEALTH_CHECK_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=MAX_HEALTH_CHECK_TIMEOUT_SECS),
        requires = "health_check"
    )]
    pub(crate) health_check_timeout_secs: u64,
    /// Named caches kept on this bot may take this many bytes in all; after each task
    /// the least recently used are evicted until they fit [default: no limit].
    #[arg(long, value_name = "BYTES")]
    pub(crate) cache_max_bytes: Option<u64>,
    /// The content cache of task input files (under the work directory, in cas/) may hold this
    /// many bytes; the least recently used files are removed beyond it. A file larger than
    /// the whole cache is downloaded into the task and not kept.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CONTENT_CACHE_MAX_BYTES)]
    pub(crate) cas_cache_max_bytes: u64,
}

const DEFAULT_HEALTH_CHECK_TIMEOUT_SECS: u64 = 60;
/// A bot does not poll while its check runs, and a bot that does not poll for long
/// looks dead to the daemon: checks are for seconds, not hours.
const MAX_HEALTH_CHECK_TIMEOUT_SECS: u64 = 600;
const _: () = assert!(DEFAULT_HEALTH_CHECK_TIMEOUT_SECS <= MAX_HEALTH_CHECK_TIMEOUT_SECS);

fn parse_dimension(text: &str) -> Result<StringPair, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(StringPair::new(key, value)),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// The checked configuration of the bot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BotConfig {
    pub(crate) server: String,
    /// Sent in every hello; empty when there is none.
    pub(crate) token: Token,
    /// TLS or plaintext, and whom to trust.
    pub(crate) tls: TlsArgs,
    pub(crate) bot_id: String,
    /// Sorted, without duplicates, with `id=<bot id>` among them.
    pub(crate) dimensions: Vec<StringPair>,
    pub(crate) work_dir: PathBuf,
    pub(crate) health_check: Option<HealthCheck>,
    /// None: no limit.
    pub(crate) cache_max_bytes: Option<u64>,
    pub(crate) cas_cache_max_bytes: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("--id: {0}")]
    BotId(String),
    #[error("dimension id={0:?} differs from the bot id; leave it out, --id sets it")]
    ConflictingIdDimension(String),
    #[error("{count} dimensions are more than the limit of {}", limits::MAX_BOT_DIMENSIONS)]
    TooManyDimensions { count: usize },
    #[error("dimension key {0:?} is longer than {limit} bytes", limit = limits::MAX_DIMENSION_KEY_BYTES)]
    DimensionKey(String),
    #[error("the value of dimension {0:?} is longer than {limit} bytes", limit = limits::MAX_DIMENSION_VALUE_BYTES)]
    DimensionValue(String),
    #[error("{0}")]
    TokenFile(String),
    #[error("{0}")]
    WorkDir(String),
}

/// A bearer token: `Debug` says only how long it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Token(pub(crate) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} bytes)", self.0.len())
    }
}

impl BotConfig {
    /// The configuration from the command line, with `found` (the host's own
    /// dimensions) under the ones given.
    pub(crate) fn from_args(args: Args, found: Vec<StringPair>) -> Result<BotConfig, ConfigError> {
        if let Some(reason) = apiary_protocol::ids::bot_id_error(&args.id) {
            return Err(ConfigError::BotId(reason));
        }
        if let Some(other) = args.dimensions.iter().find(|pair| pair.key == "id" && pair.value != args.id) {
            return Err(ConfigError::ConflictingIdDimension(other.value.clone()));
        }
        let mut dimensions = host::merge(args.dimensions, found);
        dimensions.push(StringPair::new("id", &args.id));
        dimensions.sort();
        dimensions.dedup();
        if dimensions.len() > limits::MAX_BOT_DIMENSIONS {
            return Err(ConfigError::TooManyDimensions { count: dimensions.len() });
        }
        for pair in &dimensions {
            if pair.key.len() > limits::MAX_DIMENSION_KEY_BYTES {
                return Err(ConfigError::DimensionKey(pair.key.clone()));
            }
            if pair.value.len() > limits::MAX_DIMENSION_VALUE_BYTES {
                return Err(ConfigError::DimensionValue(pair.key.clone()));
            }
        }
        let work_dir = args.work_dir.unwrap_or_else(|| default_work_dir(&args.id, apiary_systemd::state_directory()));
        // Absolute, so that the paths tasks get (`APIARY_OUTDIR`, ...) mean the same from their own directory.
        let work_dir = std::path::absolute(&work_dir)
            .map_err(|error| ConfigError::WorkDir(format!("--work-dir {}: {error}", work_dir.display())))?;
        let timeout = Duration::from_secs(args.health_check_timeout_secs);
        let health_check = args.health_check.map(|command| HealthCheck { command, timeout });
        let token = match &args.token_file {
            Some(path) => Token(read_token_file(path).map_err(|error| ConfigError::TokenFile(error.to_string()))?),
            None => Token::default(),
        };
        Ok(BotConfig {
            server: args.server,
            token,
            tls: args.tls,
            bot_id: args.id,
            dimensions,
            work_dir,
            health_check,
            cache_max_bytes: args.cache_max_bytes,
            cas_cache_max_bytes: args.cas_cache_max_bytes,
        })
    }
}

/// The state directory of the bot's service, or a directory of its own in the temp dir.
fn default_work_dir(bot_id: &str, state_directory: Option<PathBuf>) -> PathBuf {
    state_directory.unwrap_or_else(|| std::env::temp_dir().join(format!("apiary-bot-{bot_id}")))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(arguments: &[&str]) -> Result<BotConfig, ConfigError> {
        let args = Args::try_parse_from([&["apiary-bot"], arguments].concat()).expect("arguments parse");
        BotConfig::from_args(args, Vec::new())
    }

    #[test]
    fn dimensions_repeat_and_include_the_id() {
        let config = parse(&[
            "--server",
            "daemon:1",
            "--id",
            "bot1",
            "--dimension",
            "os=Linux",
            "--dimension",
            "os=Ubuntu",
            "--dimension",
            "pool=a=b",
            "--work-dir",
            "/var/bot",
        ])
        .unwrap();
        let pairs: Vec<(&str, &str)> =
            config.dimensions.iter().map(|pair| (pair.key.as_str(), pair.value.as_str())).collect();
        assert_eq!(pairs, [("id", "bot1"), ("os", "Linux"), ("os", "Ubuntu"), ("pool", "a=b")]);
        assert_eq!(config.server, "daemon:1");
        assert_eq!(config.work_dir, PathBuf::from("/var/bot"));
        assert_eq!(config.cache_max_bytes, None);
        assert_eq!(parse(&["--id", "b", "--cache-max-bytes", "1000"]).unwrap().cache_max_bytes, Some(1000));
        assert!(Args::try_parse_from(["apiary-bot", "--id", "b", "--cache-max-bytes", "1k"]).is_err());
        assert_eq!(config.cas_cache_max_bytes, 20 << 30);
        assert_eq!(parse(&["--id", "b", "--cas-cache-max-bytes", "4096"]).unwrap().cas_cache_max_bytes, 4096);
        let relative = parse(&["--id", "b", "--work-dir", "bots/b"]).unwrap().work_dir;
        assert_eq!(relative, std::env::current_dir().unwrap().join("bots/b"), "made absolute for the tasks' paths");
    }

    #[test]
    fn the_work_dir_defaults_to_the_services_state_directory() {
        assert_eq!(
            default_work_dir("b", Some(PathBuf::from("/var/lib/apiary-bot"))),
            PathBuf::from("/var/lib/apiary-bot")
        );
        assert_eq!(default_work_dir("b", None), std::env::temp_dir().join("apiary-bot-b"));
    }

    #[test]
    fn defaults_and_bad_input() {
        let config = parse(&["--id", "b"]).unwrap();
        assert!(config.work_dir.ends_with("apiary-bot-b"));
        assert!(matches!(parse(&["--id", ""]), Err(ConfigError::BotId(_))));
        assert!(
            matches!(parse(&["--id", "bot 1"]), Err(ConfigError::BotId(reason)) if reason.contains("'-', '_' and '.'"))
        );
        assert_eq!(
            parse(&["--id", "b", "--dimension", "id=c"]),
            Err(ConfigError::ConflictingIdDimension("c".to_string()))
        );
        assert!(parse(&["--id", "b", "--dimension", "id=b"]).is_ok());
        let long_key = format!("{}=v", "k".repeat(limits::MAX_DIMENSION_KEY_BYTES + 1));
        assert!(matches!(parse(&["--id", "b", "--dimension", &long_key]), Err(ConfigError::DimensionKey(_))));
        assert!(Args::try_parse_from(["apiary-bot", "--id", "b", "--dimension", "novalue"]).is_err());
        assert!(Args::try_parse_from(["apiary-bot", "--id", "b", "--dimension", "=v"]).is_err());
    }

    #[test]
    fn found_dimensions_are_under_the_given_ones() {
        let args =
            Args::try_parse_from(["apiary-bot", "--id", "b", "--dimension", "os=Custom", "--dimension", "pool=ci"])
                .unwrap();
        let found = vec![StringPair::new("os", "Linux"), StringPair::new("cpu", "x86"), StringPair::new("cores", "2")];
        let config = BotConfig::from_args(args, found).unwrap();
        let pairs: Vec<(&str, &str)> =
            config.dimensions.iter().map(|pair| (pair.key.as_str(), pair.value.as_str())).collect();
        assert_eq!(pairs, [("cores", "2"), ("cpu", "x86"), ("id", "b"), ("os", "Custom"), ("pool", "ci")]);
    }

    #[test]
    fn a_health_check_has_a_timeout_of_60_seconds_unless_given() {
        assert_eq!(parse(&["--id", "b"]).unwrap().health_check, None);
        let config = parse(&["--id", "b", "--health-check", "df / | grep -q ok"]).unwrap();
        let expected = HealthCheck { command: "df / | grep -q ok".to_string(), timeout: Duration::from_secs(60) };
        assert_eq!(config.health_check, Some(expected));
        let config = parse(&["--id", "b", "--health-check", "true", "--health-check-timeout", "5"]).unwrap();
        assert_eq!(config.health_check.unwrap().timeout, Duration::from_secs(5));
        for bad in [&["--health-check-timeout", "5"][..], &["--health-check", "true", "--health-check-timeout", "0"]] {
            let arguments = [&["apiary-bot", "--id", "b"][..], bad].concat();
            assert!(Args::try_parse_from(arguments).is_err(), "{bad:?}");
        }
    }
}

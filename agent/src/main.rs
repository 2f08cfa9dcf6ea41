//! `apiary-bot`: the agent on a worker host. Glue only: parse the arguments, start
//! the session on its own thread, and turn SIGTERM/SIGINT into a graceful stop.
//!
//! The main thread watches the shutdown flag. If the bot is idle (polling), it
//! exits at once; if a task or the health check runs, the session stops it (and
//! reports the task) and returns. The session also returns, and the bot exits 0,
//! when the daemon tells the idle bot to terminate, or 3 when another process
//! took over its bot id.

/// One line on stderr per notable event.
macro_rules! log_event {
    ($($argument:tt)*) => {
        eprintln!("apiary-bot: {}", format_args!($($argument)*))
    };
}

mod cache;
mod cli;
mod content_cache;
mod health;
mod host;
mod output;
mod runner;
mod service_manager;
mod session;
mod signals;
mod task_files;
mod task_setup;
mod workdir;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Args, BotConfig, exit_codes};
use crate::service_manager::ServiceManager;
use crate::session::{BotIdentity, Lifecycle, Pacing, Session, SessionError, TcpConnector};
use crate::workdir::WorkRoot;

/// How often the main thread looks at the shutdown flag.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

fn main() {
    std::process::exit(run())
}

fn run() -> i32 {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { exit_codes::USAGE } else { exit_codes::SUCCESS };
        }
    };
    let config = match BotConfig::from_args(args, host::dimensions()) {
        Ok(config) => config,
        Err(error) => {
            log_event!("{error}");
            return exit_codes::USAGE;
        }
    };
    let security = match config.tls.security(&config.server) {
        Ok(security) => security,
        Err(error) => {
            log_event!("{error}");
            return exit_codes::USAGE;
        }
    };
    if let Err(error) = signals::install_shutdown_handlers() {
        log_event!("failed to install signal handlers: {error}");
        return exit_codes::FAILURE;
    }
    let mut service = ServiceManager::from_env(&config.server, &config.bot_id);
    let software = format!("apiary-bot/{}", env!("CARGO_PKG_VERSION"));
    let identity = BotIdentity {
        bot_id: config.bot_id,
        session_id: session::random_session_id(),
        dimensions: config.dimensions,
        software: software.clone(),
        server: config.server.clone(),
    };
    let lifecycle = Arc::new(Lifecycle::default());
    let connector = TcpConnector::new(&config.server, &software, &config.token.0, security);
    let mut session =
        Session::new(identity, Pacing::default(), WorkRoot::new(config.work_dir), connector, Arc::clone(&lifecycle));
    if let Some(max_bytes) = config.cache_max_bytes {
        log_event!("named caches are evicted beyond {max_bytes} bytes");
        session = session.with_cache_max_bytes(max_bytes);
    }
    log_event!("input files are cached up to {} bytes (--cas-cache-max-bytes)", config.cas_cache_max_bytes);
    session = session.with_content_cache_max_bytes(config.cas_cache_max_bytes);
    if let Some(check) = config.health_check {
        log_event!("health check before each poll: {:?} (timeout {} s)", check.command, check.timeout.as_secs());
        session = session.with_health_check(check);
    }
    let session_thread = match thread::Builder::new().name("session".to_string()).spawn(move || session.run()) {
        Ok(handle) => handle,
        Err(error) => {
            log_event!("failed to start the session thread: {error}");
            return exit_codes::FAILURE;
        }
    };
    log_event!("started; daemon {}", config.server);
    while !session_thread.is_finished() {
        service.observe(lifecycle.is_connected());
        if signals::shutdown_requested() {
            log_event!("shutting down");
            service.stopping();
            if lifecycle.begin_shutdown() {
                return exit_codes::SUCCESS;
            }
            break;
        }
        thread::sleep(SIGNAL_CHECK_INTERVAL);
    }
    if !lifecycle.is_shutting_down() {
        // The session ended by itself: the daemon said exit, or the bot cannot go on.
        service.stopping();
    }
    match session_thread.join() {
        Ok(Ok(())) => exit_codes::SUCCESS,
        Ok(Err(error @ SessionError::Superseded(_))) => {
            log_event!("{error}");
            exit_codes::SUPERSEDED
        }
        Ok(Err(error)) => {
            log_event!("{error}");
            exit_codes::FAILURE
        }
        Err(_) => {
            log_event!("the session thread panicked");
            exit_codes::FAILURE
        }
    }
}

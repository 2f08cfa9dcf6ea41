//! The bot's own health check (`--health-check CMD`): a shell command run before
//! each poll. Exit 0 means healthy; anything else quarantines the bot, and the
//! reason (exit code or timeout, and the start of the output) goes in every poll
//! until a check passes again. The daemon gives a quarantined bot no work.
//!
//! The check runs as `sh -c CMD` in the bot's work directory, in its own process
//! group, with stdin from /dev/null and stdout and stderr merged into one pipe, of
//! which the first `MAX_CAPTURED_OUTPUT_BYTES` are kept (the rest is read and
//! dropped, so a chatty check never blocks). Two threads help: one reads the pipe,
//! one waits for the check to exit without reaping it.
//!
//! Invariants, as in `runner.rs`: the process group is signalled only while its
//! leader is unreaped; once the check has exited, whatever is left of its group is
//! killed before it is reaped, so no check outlives `HealthCheck::run`; a check
//! past its timeout (or interrupted by a shutdown) gets SIGTERM, `KILL_GRACE`, then
//! SIGKILL of its group.

use std::io::{self, PipeReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use apiary_protocol::limits;

use crate::runner::DRAIN_TIMEOUT;
use crate::signals::{self, GroupSignal};

/// Output bytes of one check kept for the quarantine reason: all of them fit in a
/// reason unless invalid UTF-8 grows in decoding; `judge` cuts the reason to fit.
const MAX_CAPTURED_OUTPUT_BYTES: usize = 4 << 10;
const _: () = assert!(MAX_CAPTURED_OUTPUT_BYTES <= limits::MAX_REASON_BYTES);
/// Ends a reason whose output was cut.
const TRUNCATED_MARKER: &str = " [output truncated]";
/// Time between SIGTERM and SIGKILL of a check that is being stopped.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How often a running check looks at `should_stop`.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read from the pipe at once.
const READ_CHUNK_BYTES: usize = 4 << 10;

/// The command and its time limit, as the command line gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HealthCheck {
    pub(crate) command: String,
    pub(crate) timeout: Duration,
}

/// What one run of the check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    /// Why the bot should get no work: at most `limits::MAX_REASON_BYTES`, never empty.
    Quarantined(String),
    /// The check was stopped because the bot is shutting down: nothing is known.
    Interrupted,
}

/// How the check's process ended.
#[derive(Debug)]
enum Ending {
    Exited(io::Result<ExitStatus>),
    Stopped(Stop),
}

/// Why the check was stopped before it exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Interrupted,
}

/// The first bytes of the output, and whether there were more.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl HealthCheck {
    /// Runs the check in `work_dir`. `should_stop` is asked every
    /// `STOP_CHECK_INTERVAL` while the check runs; true stops it.
    pub(crate) fn run(&self, work_dir: &Path, should_stop: &dyn Fn() -> bool) -> Health {
        assert!(self.timeout > Duration::ZERO, "a health check needs a time limit");
        let health = match self.run_process(work_dir, should_stop) {
            Ok((Ending::Stopped(Stop::Interrupted), _)) => Health::Interrupted,
            Ok((ending, captured)) => judge(&ending, &captured, self.timeout),
            Err(error) => Health::Quarantined(format!("health check could not start: {error}")),
        };
        if let Health::Quarantined(reason) = &health {
            assert!(!reason.is_empty() && reason.len() <= limits::MAX_REASON_BYTES, "a reason of {}", reason.len());
        }
        health
    }

    fn run_process(&self, work_dir: &Path, should_stop: &dyn Fn() -> bool) -> io::Result<(Ending, Captured)> {
        let (pipe_reader, pipe_writer) = io::pipe()?;
        let stderr_writer = pipe_writer.try_clone()?;
        let mut command = Command::new("sh");
        command.arg("-c").arg(&self.command).current_dir(work_dir);
        command.stdin(Stdio::null()).stdout(pipe_writer).stderr(stderr_writer).process_group(0);
        // systemd speaks to the bot alone, not to its check.
        for variable in apiary_systemd::SERVICE_MANAGER_VARIABLES {
            command.env_remove(variable);
        }
        let spawned = command.spawn();
        // Drop the parent's copies of the write end, or the pipe never ends.
        drop(command);
        let mut child = spawned?;
        let captured = Arc::new(Mutex::new(Captured::default()));
        let threads = start_threads(child.id(), pipe_reader, Arc::clone(&captured));
        let (exited, output_done) = match threads {
            Ok(receivers) => receivers,
            Err(error) => {
                stop_group(&mut child, GroupSignal::Kill);
                let _ = child.wait();
                return Err(error);
            }
        };
        let stop = wait_or_stop(&mut child, &exited, self.timeout, should_stop);
        // Exited but not reaped: the group id is still the check's.
        stop_group(&mut child, GroupSignal::Kill);
        let status = child.wait();
        let ending = match stop {
            None => Ending::Exited(status),
            Some(stop) => Ending::Stopped(stop),
        };
        // A process that left the group may hold the pipe open: do not wait for it long.
        let _ = output_done.recv_timeout(DRAIN_TIMEOUT);
        let captured = std::mem::take(&mut *captured.lock().expect("the health check reader panicked"));
        Ok((ending, captured))
    }
}

/// Starts the reader and the waiter; returns what they signal on: the check
/// exited (unreaped), and the pipe reached its end.
fn start_threads(
    pid: u32,
    pipe: PipeReader,
    captured: Arc<Mutex<Captured>>,
) -> io::Result<(Receiver<()>, Receiver<()>)> {
    let (output_done_sender, output_done) = mpsc::channel();
    thread::Builder::new().name("health-output".to_string()).spawn(move || {
        read_output(pipe, &captured);
        let _ = output_done_sender.send(());
    })?;
    let (exited_sender, exited) = mpsc::channel();
    thread::Builder::new().name("health-wait".to_string()).spawn(move || {
        // An error (there is none for a child of ours) counts as an exit; reaping reports it.
        let _ = signals::wait_for_exit_without_reaping(pid);
        let _ = exited_sender.send(());
    })?;
    Ok((exited, output_done))
}

/// Waits for the check to exit; past the timeout, or when asked to stop, stops it
/// and waits for that (None: it exited by itself). Returns with the check exited
/// and not yet reaped.
fn wait_or_stop(
    child: &mut Child,
    exited: &Receiver<()>,
    timeout: Duration,
    should_stop: &dyn Fn() -> bool,
) -> Option<Stop> {
    let deadline = Instant::now() + timeout;
    let stop = loop {
        let now = Instant::now();
        if now >= deadline {
            break Stop::TimedOut;
        }
        if should_stop() {
            break Stop::Interrupted;
        }
        match exited.recv_timeout((deadline - now).min(STOP_CHECK_INTERVAL)) {
            // The waiter always sends before it ends; a disconnect means it exited too.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
    };
    stop_group(child, GroupSignal::Terminate);
    if exited.recv_timeout(KILL_GRACE).is_err() {
        stop_group(child, GroupSignal::Kill);
        let _ = exited.recv();
    }
    Some(stop)
}

fn stop_group(child: &mut Child, signal: GroupSignal) {
    if signals::signal_process_group(child.id(), signal).is_err() {
        // Only EPERM is possible for our own child's group; the child at least can be killed.
        let _ = child.kill();
    }
}

/// Copies the pipe until its end, keeping the first `MAX_CAPTURED_OUTPUT_BYTES`.
fn read_output(mut pipe: PipeReader, captured: &Mutex<Captured>) {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        let read = match pipe.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut captured = captured.lock().expect("the health check lock is never held across a panic");
        let room = MAX_CAPTURED_OUTPUT_BYTES - captured.bytes.len();
        let kept = read.min(room);
        captured.bytes.extend_from_slice(&chunk[..kept]);
        captured.truncated |= kept < read;
    }
}

/// The verdict on a check that ran to its end or past its time limit.
fn judge(ending: &Ending, captured: &Captured, timeout: Duration) -> Health {
    let what = match ending {
        Ending::Exited(Ok(status)) if status.success() => return Health::Healthy,
        Ending::Exited(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("health check failed (exit {code})"),
            (None, Some(signal)) => format!("health check failed (killed by signal {signal})"),
            (None, None) => format!("health check failed ({status})"),
        },
        Ending::Exited(Err(error)) => format!("health check failed (cannot wait for it: {error})"),
        Ending::Stopped(Stop::TimedOut) => format!("health check timed out after {} s", timeout.as_secs()),
        Ending::Stopped(Stop::Interrupted) => unreachable!("an interrupted check is not judged"),
    };
    let output = String::from_utf8_lossy(&captured.bytes);
    let output = output.trim();
    if output.is_empty() {
        return Health::Quarantined(what);
    }
    let reason = format!("{what}: {output}");
    if !captured.truncated && reason.len() <= limits::MAX_REASON_BYTES {
        return Health::Quarantined(reason);
    }
    let mut kept = limits::MAX_REASON_BYTES - TRUNCATED_MARKER.len();
    while !reason.is_char_boundary(kept) {
        kept -= 1;
    }
    Health::Quarantined(format!("{}{TRUNCATED_MARKER}", reason[..kept].trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(command: &str, timeout_secs: u64) -> Health {
        let work_dir = tempfile::tempdir().unwrap();
        let check = HealthCheck { command: command.to_string(), timeout: Duration::from_secs(timeout_secs) };
        check.run(work_dir.path(), &|| false)
    }

    fn reason(health: Health) -> String {
        match health {
            Health::Quarantined(reason) => reason,
            other => panic!("not quarantined: {other:?}"),
        }
    }

    #[test]
    fn exit_zero_is_healthy_and_anything_else_quarantines_with_the_output() {
        assert_eq!(check("echo all good", 5), Health::Healthy);
        assert_eq!(
            reason(check("echo '  disk full'; echo 'see /var' >&2; exit 3", 5)),
            "health check failed (exit 3): disk full\nsee /var"
        );
        assert_eq!(reason(check("exit 1", 5)), "health check failed (exit 1)");
        assert_eq!(reason(check("kill -KILL $$", 5)), "health check failed (killed by signal 9)");
    }

    #[test]
    fn the_check_runs_in_the_work_dir_with_no_stdin() {
        let work_dir = tempfile::tempdir().unwrap();
        std::fs::write(work_dir.path().join("marker"), "").unwrap();
        let check = HealthCheck { command: "test -e marker && cat".to_string(), timeout: Duration::from_secs(5) };
        assert_eq!(check.run(work_dir.path(), &|| false), Health::Healthy);
    }

    #[test]
    fn only_the_start_of_a_long_output_is_kept() {
        let reason = reason(check("yes x | head -c 100000; exit 2", 10));
        assert!(reason.starts_with("health check failed (exit 2): x\nx\n"), "{}", &reason[..40]);
        assert!(reason.ends_with("x [output truncated]"), "{}", &reason[reason.len() - 40..]);
        assert!(reason.len() <= limits::MAX_REASON_BYTES);
    }

    #[test]
    fn output_that_grows_in_decoding_is_cut_to_fit_a_reason() {
        let bytes = vec![0xff; MAX_CAPTURED_OUTPUT_BYTES];
        let captured = Captured { bytes, truncated: false };
        let health = judge(&Ending::Exited(Ok(ExitStatus::from_raw(1 << 8))), &captured, Duration::from_secs(1));
        let reason = reason(health);
        assert!(reason.starts_with("health check failed (exit 1): \u{fffd}"), "{}", &reason[..40]);
        assert!(reason.ends_with(TRUNCATED_MARKER));
        assert!(reason.len() <= limits::MAX_REASON_BYTES && reason.len() > limits::MAX_REASON_BYTES - 8);
    }

    #[test]
    fn a_check_past_its_time_limit_is_killed_with_its_group() {
        let work_dir = tempfile::tempdir().unwrap();
        let check = HealthCheck {
            command: "sleep 100 & echo $! > child.pid; echo started; sleep 100".to_string(),
            timeout: Duration::from_secs(1),
        };
        let started = Instant::now();
        let health = check.run(work_dir.path(), &|| false);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(reason(health), "health check timed out after 1 s: started");
        let pid: u32 = std::fs::read_to_string(work_dir.path().join("child.pid")).unwrap().trim().parse().unwrap();
        let gone_by = Instant::now() + Duration::from_secs(5);
        while signals::process_exists(pid) && Instant::now() < gone_by {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(!signals::process_exists(pid), "the check's child {pid} survived");
    }

    #[test]
    fn sleep_100_with_a_one_second_limit_times_out() {
        let started = Instant::now();
        assert_eq!(reason(check("sleep 100", 1)), "health check timed out after 1 s");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_shutdown_interrupts_the_check() {
        let work_dir = tempfile::tempdir().unwrap();
        let check = HealthCheck { command: "sleep 100".to_string(), timeout: Duration::from_secs(60) };
        let started = Instant::now();
        let stop_at = started + Duration::from_millis(300);
        assert_eq!(check.run(work_dir.path(), &|| Instant::now() >= stop_at), Health::Interrupted);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_missing_work_dir_quarantines() {
        let check = HealthCheck { command: "true".to_string(), timeout: Duration::from_secs(5) };
        let reason = reason(check.run(Path::new("/nonexistent/apiary-health"), &|| false));
        assert!(reason.starts_with("health check could not start: "), "{reason}");
    }
}

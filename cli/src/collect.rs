//! `apiary collect` and `apiary run`: wait for a task to end, write all of its
//! output to stdout unchanged, and exit with the task's exit code (or the code of
//! the state it ended in; see `exit_codes`).
//!
//! The daemon holds a wait open for at most its long-poll cap and may answer with
//! the task still PENDING or RUNNING, so waiting is a loop that asks again with
//! whatever is left of `--timeout`.
//!
//! A daemon restart breaks the connection but not the task: its id and output are
//! durable. So while waiting, and while reading the output afterwards, a failed
//! connection is reopened with backoff (200 ms doubling to 5 s) and the same
//! question asked again, until `--timeout` elapses; both requests can be repeated
//! without effect. Creating the task (`run`'s first step) is never repeated.
//!
//! With `--follow` the output is written as it arrives instead (see `follow`),
//! then the final result fetched. If following stopped before the task ended
//! (stdout closed, or `--timeout` elapsed), the task is waited for as without
//! `--follow`, and any output since read.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use apiary_protocol::cas::transfer;
use apiary_protocol::ids::format_task_id;
use apiary_protocol::limits::{MAX_LONG_POLL_MS, MAX_OUTPUT_CHUNK_BYTES};
use apiary_protocol::{Request, TaskResult, TaskState};

use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::follow;
use crate::render;
use crate::sink::Sink;
use crate::trigger;
use apiary_swarming::new_task::SwarmingRequest;

const _: () = assert!(MAX_OUTPUT_CHUNK_BYTES <= u32::MAX as usize, "GetOutput's max_bytes is a u32");

/// The first wait before reconnecting; each failed attempt doubles it, up to the maximum.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(200);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
const _: () = assert!(RECONNECT_FIRST_DELAY.as_millis() > 0);
const _: () = assert!(RECONNECT_FIRST_DELAY.as_millis() <= RECONNECT_MAX_DELAY.as_millis());

/// `apiary run`: trigger, say which task on stderr (stdout carries only the
/// task's output), then collect.
pub(crate) fn run(
    daemon: &mut impl Daemon,
    task: SwarmingRequest,
    timeout: Option<Duration>,
    follow: bool,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let task_id = trigger::submit(daemon, task.request, &task.lineage, notes)?.task_id;
    // Notes are for people; if stderr is gone the task still runs and is collected.
    let _ = writeln!(notes, "apiary: triggered task {}", format_task_id(task_id));
    collect(daemon, task_id, timeout, follow, out, notes)
}

pub(crate) fn collect(
    daemon: &mut impl Daemon,
    task_id: u64,
    timeout: Option<Duration>,
    follow: bool,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut patience = Patience::until(timeout, notes);
    let result = if follow {
        follow_until_ended(daemon, task_id, out, &mut patience)?
    } else {
        let result = wait_until_ended(daemon, task_id, &mut patience)?;
        copy_output(daemon, task_id, 0, out, &mut patience)?;
        result
    };
    match result.state {
        TaskState::Completed => Ok(exit_codes::for_task(result.state, result.exit_code)),
        state => Err(CliError::TaskEnded { task_id: result.task_id, state, failure_reason: result.failure_reason }),
    }
}

/// Where `collect` of several tasks puts what it gathered.
pub(crate) struct CollectTo<'p> {
    /// `DIR/summary.json` and `DIR/TASK_ID/output.txt`.
    pub(crate) output_dir: Option<&'p Path>,
    /// The summary as JSON; `-` is stdout.
    pub(crate) json_output: Option<&'p Path>,
}

/// The name of the summary file in `--output-dir`, as Swarming's collect writes it.
pub(crate) const SUMMARY_FILE: &str = "summary.json";
/// The name of a task's output file in its folder of `--output-dir`.
pub(crate) const OUTPUT_FILE: &str = "output.txt";

/// `collect` of several tasks, or of one with `--output-dir` or `--json-output`:
/// waits for each in the order given (one `--timeout` for all), then writes
/// their outputs to stdout one after the other, unless they go into `--output-dir`
/// or the summary goes to stdout. Exits 0 when every task COMPLETED with exit
/// code 0, else with the code of the first task, in the order given, that did not.
pub(crate) fn collect_many(
    daemon: &mut impl Daemon,
    task_ids: &[u64],
    timeout: Option<Duration>,
    to: &CollectTo<'_>,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut patience = Patience::until(timeout, notes);
    let mut collected = Vec::with_capacity(task_ids.len());
    for &task_id in task_ids {
        collected.push(wait_until_ended(daemon, task_id, &mut patience)?);
    }
    let mut summary = serde_json::Map::new();
    for result in &collected {
        let mut output = Sink::new(Vec::new());
        copy_output(daemon, result.task_id, 0, &mut output, &mut patience)?;
        let output = output.into_inner();
        let task_id = format_task_id(result.task_id);
        if let Some(dir) = to.output_dir {
            let task_dir = dir.join(&task_id);
            let outputs_have_output_file = download_outputs(daemon, result, &task_dir, &mut patience)?;
            if !outputs_have_output_file {
                write_file(&task_dir.join(OUTPUT_FILE), &output)?;
            }
        }
        let to_stdout = to.output_dir.is_none() && to.json_output.is_none_or(|path| path != Path::new("-"));
        if to_stdout {
            out.write_all(&output)?;
        }
        summary.insert(task_id, render::collected_json(result, &output));
    }
    let summary = render::json_text(&serde_json::Value::Object(summary));
    if let Some(dir) = to.output_dir {
        write_file(&dir.join(SUMMARY_FILE), summary.as_bytes())?;
    }
    match to.json_output {
        Some(path) if path == Path::new("-") => out.write_all(summary.as_bytes())?,
        Some(path) => write_file(path, summary.as_bytes())?,
        None => {}
    }
    let first_failure = collected
        .iter()
        .map(|result| exit_codes::for_task(result.state, result.exit_code))
        .find(|&code| code != exit_codes::SUCCESS);
    Ok(first_failure.unwrap_or(exit_codes::SUCCESS))
}

/// Writes the task's outputs (`cas_output_root`) into `task_dir`, as Swarming's
/// collect does; returns whether they hold an `output.txt` of their own (then
/// the task's console output is only in the summary).
fn download_outputs(
    daemon: &mut impl Daemon,
    result: &TaskResult,
    task_dir: &Path,
    patience: &mut Patience<'_>,
) -> Result<bool, CliError> {
    let Some(root) = &result.cas_output_root else { return Ok(false) };
    let digest = root.digest;
    std::fs::create_dir_all(task_dir)
        .map_err(|source| CliError::WriteFile { path: task_dir.display().to_string(), source })?;
    let counts = transfer::download(&mut connect::CallThrough(daemon), digest, task_dir).map_err(|source| {
        CliError::Transfer { action: format!("download the outputs {digest}"), source: Box::new(source) }
    })?;
    patience.note(&format!(
        "apiary: task {}: outputs {digest}: {} files ({} bytes) written to {}",
        format_task_id(result.task_id),
        counts.files,
        counts.file_bytes,
        task_dir.display()
    ));
    let own_output_file = task_dir.join(OUTPUT_FILE).symlink_metadata().is_ok();
    if own_output_file {
        patience.note(&format!("apiary: its outputs have an {OUTPUT_FILE}: its console output is in {SUMMARY_FILE}"));
    }
    Ok(own_output_file)
}

/// Writes a whole file, making its directory first.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let write = || {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes)
    };
    write().map_err(|source| CliError::WriteFile { path: path.display().to_string(), source })
}

/// How long a command may wait, and what it does when the connection fails meanwhile.
pub(crate) struct Patience<'n> {
    /// `--timeout`, and the instant it elapses.
    deadline: Option<(Duration, Instant)>,
    /// Where reconnects are reported; `None`: a failed connection fails the command.
    reconnect_notes: Option<&'n mut dyn Write>,
}

impl<'n> Patience<'n> {
    /// No deadline and no reconnecting: for commands that answer at once.
    pub(crate) fn none() -> Patience<'static> {
        Patience { deadline: None, reconnect_notes: None }
    }

    /// Until `timeout` elapses (forever if `None`), reconnecting when the connection fails.
    pub(crate) fn until(timeout: Option<Duration>, notes: &'n mut dyn Write) -> Patience<'n> {
        let deadline = timeout.map(|timeout| (timeout, Instant::now() + timeout));
        Patience { deadline, reconnect_notes: Some(notes) }
    }

    /// A line for people on stderr, when the command has one.
    pub(crate) fn note(&mut self, line: &str) {
        if let Some(notes) = self.reconnect_notes.as_deref_mut() {
            // Notes are for people; a closed stderr changes nothing.
            let _ = writeln!(notes, "{line}");
        }
    }

    /// What is left of the timeout; `None` when there is none.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|(_, deadline)| deadline.saturating_duration_since(Instant::now()))
    }

    /// The timeout elapsed.
    pub(crate) fn is_over(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }

    /// Opens a new connection at once, as after a stream that stopped early (the
    /// daemon may still be sending on the old one); retried as `recover` retries.
    fn reopen(&mut self, daemon: &mut impl Daemon, action: &str) -> Result<(), CliError> {
        match daemon.reconnect(Duration::ZERO) {
            Ok(()) => Ok(()),
            Err(source) => self.recover(daemon, CliError::Call { action: action.to_string(), source }),
        }
    }

    /// Takes the error of a failed call. Returns `Ok` once the connection is open
    /// again, so the caller asks again; gives back any error that reconnecting
    /// cannot help with, or when reconnecting is not allowed.
    pub(crate) fn recover(&mut self, daemon: &mut impl Daemon, error: CliError) -> Result<(), CliError> {
        let CliError::Call { action, source } = error else { return Err(error) };
        let Some(notes) = self.reconnect_notes.as_deref_mut() else { return Err(CliError::Call { action, source }) };
        if !connect::is_reconnectable(&source) {
            return Err(CliError::Call { action, source });
        }
        let _ = writeln!(notes, "apiary: could not {action} ({source}); reconnecting to the daemon.");
        let mut delay = RECONNECT_FIRST_DELAY;
        let mut attempts = 0u32;
        let mut last_error = source;
        loop {
            let wait = match self.deadline {
                None => delay,
                Some((timeout, deadline)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(CliError::ReconnectTimeout { action, timeout, attempts, source: last_error });
                    }
                    delay.min(remaining)
                }
            };
            attempts += 1;
            match daemon.reconnect(wait) {
                Ok(()) => break,
                Err(error) if connect::is_reconnectable(&error) => last_error = error,
                Err(error) => return Err(CliError::Call { action, source: error }),
            }
            delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        }
        if let Some(notes) = self.reconnect_notes.as_deref_mut() {
            let plural = if attempts == 1 { "" } else { "s" };
            let _ = writeln!(notes, "apiary: reconnected to the daemon after {attempts} attempt{plural}; going on.");
        }
        Ok(())
    }
}

/// `--follow`: writes the output as it arrives, then returns the task's final
/// result. If following stopped early, reopens the connection, waits as
/// `collect` does, and writes whatever output came since.
fn follow_until_ended(
    daemon: &mut impl Daemon,
    task_id: u64,
    out: &mut Sink<impl Write>,
    patience: &mut Patience,
) -> Result<TaskResult, CliError> {
    let followed = follow::follow_output(daemon, task_id, out, patience)?;
    if followed.task_ended {
        let result = get_task(daemon, task_id, patience)?;
        // The output ended with the task, so only a daemon that has not yet
        // recorded the end would answer otherwise; wait for it.
        return if result.state.is_terminal() { Ok(result) } else { wait_until_ended(daemon, task_id, patience) };
    }
    patience.reopen(daemon, &format!("follow the output of task {}", format_task_id(task_id)))?;
    let result = wait_until_ended(daemon, task_id, patience)?;
    copy_output(daemon, task_id, followed.offset, out, patience)?;
    Ok(result)
}

/// The task's result now, reconnecting as `patience` allows.
fn get_task(daemon: &mut impl Daemon, task_id: u64, patience: &mut Patience) -> Result<TaskResult, CliError> {
    let action = format!("get task {}", format_task_id(task_id));
    loop {
        match connect::call_task(daemon, &Request::GetTask { task_id }, &action) {
            Ok(result) => return Ok(result),
            Err(error) => patience.recover(daemon, error)?,
        }
    }
}

/// Waits until the task ends and returns its result, or fails with
/// `CollectTimeout` once the timeout elapsed. Asks at least once, so a zero timeout
/// still collects a task that already ended.
fn wait_until_ended(daemon: &mut impl Daemon, task_id: u64, patience: &mut Patience) -> Result<TaskResult, CliError> {
    let action = format!("wait for task {}", format_task_id(task_id));
    loop {
        // The daemon caps the wait itself; asking for no more than its cap keeps
        // the reply within the client's read timeout even if it did not.
        let timeout_ms = patience.remaining().map_or(MAX_LONG_POLL_MS, |remaining| {
            u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX).min(MAX_LONG_POLL_MS)
        });
        let result = match connect::call_task(daemon, &Request::WaitTask { task_id, timeout_ms }, &action) {
            Ok(result) => result,
            Err(error) => {
                patience.recover(daemon, error)?;
                continue;
            }
        };
        if result.state.is_terminal() {
            return Ok(result);
        }
        if let Some((timeout, _)) = patience.deadline
            && patience.is_over()
        {
            return Err(CliError::CollectTimeout { task_id, timeout, state: result.state });
        }
    }
}

/// Writes the task's output from `offset`, as far as the daemon holds it, to
/// `out` as raw bytes, chunk by chunk. Stops early if nobody reads stdout any more.
pub(crate) fn copy_output(
    daemon: &mut impl Daemon,
    task_id: u64,
    mut offset: u64,
    out: &mut Sink<impl Write>,
    patience: &mut Patience,
) -> Result<(), CliError> {
    let action = format!("read the output of task {}", format_task_id(task_id));
    let max_bytes = MAX_OUTPUT_CHUNK_BYTES as u32;
    while !out.is_closed() {
        let chunk = match connect::call_output(daemon, &Request::GetOutput { task_id, offset, max_bytes }, &action) {
            Ok(chunk) => chunk,
            Err(error) => {
                patience.recover(daemon, error)?;
                continue;
            }
        };
        let bad_chunk = chunk.offset != offset
            || chunk.data.len() > MAX_OUTPUT_CHUNK_BYTES
            || (chunk.data.is_empty() && offset < chunk.output_len);
        if bad_chunk {
            let (got, len, output_len) = (chunk.offset, chunk.data.len(), chunk.output_len);
            return Err(CliError::BadOutputChunk { action, expected: offset, got, len, output_len });
        }
        out.write_all(&chunk.data)?;
        offset += chunk.data.len() as u64;
        if offset >= chunk.output_len {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io;

    use apiary_protocol::{ClientError, ErrorCode, Reply};

    use super::*;
    use crate::connect::fake::{FakeDaemon, connection_reset, created, followed, output, task_result};

    const TASK: u64 = 0x018b_cfe5_6880_0010;

    fn task(state: TaskState, exit_code: Option<i64>) -> Reply {
        Reply::Task(Box::new(task_result(TASK, state, exit_code)))
    }

    fn collect_with(daemon: &mut FakeDaemon, timeout: Option<Duration>) -> (Result<i32, CliError>, Vec<u8>) {
        let (result, written, _) = collect_noting(daemon, timeout);
        (result, written)
    }

    /// Also returns what went to stderr.
    fn collect_noting(daemon: &mut FakeDaemon, timeout: Option<Duration>) -> (Result<i32, CliError>, Vec<u8>, String) {
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        let result = collect(daemon, TASK, timeout, false, &mut out, &mut notes);
        (result, out.into_inner(), String::from_utf8(notes).unwrap())
    }

    #[test]
    fn waits_again_until_the_task_ends_then_writes_all_output_unchanged() {
        let binary: Vec<u8> = (0..=255).collect();
        let mut daemon = FakeDaemon::answering(vec![
            task(TaskState::Pending, None),
            task(TaskState::Running, None),
            task(TaskState::Completed, Some(3)),
            output(0, &binary[..100], 256),
            output(100, &binary[100..], 256),
        ]);
        let (result, written) = collect_with(&mut daemon, None);
        assert_eq!(result.unwrap(), 3);
        assert_eq!(written, binary);
        let max_bytes = MAX_OUTPUT_CHUNK_BYTES as u32;
        assert_eq!(
            daemon.requests,
            [
                Request::WaitTask { task_id: TASK, timeout_ms: MAX_LONG_POLL_MS },
                Request::WaitTask { task_id: TASK, timeout_ms: MAX_LONG_POLL_MS },
                Request::WaitTask { task_id: TASK, timeout_ms: MAX_LONG_POLL_MS },
                Request::GetOutput { task_id: TASK, offset: 0, max_bytes },
                Request::GetOutput { task_id: TASK, offset: 100, max_bytes },
            ]
        );
    }

    #[test]
    fn a_task_that_did_not_complete_exits_with_its_state_code_after_its_output() {
        let mut ended = task_result(TASK, TaskState::TimedOut, Some(-1));
        ended.failure_reason = "hard timeout of 20s".to_string();
        let mut daemon = FakeDaemon::answering(vec![Reply::Task(Box::new(ended)), output(0, b"partial", 7)]);
        let (result, written) = collect_with(&mut daemon, None);
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::TIMED_OUT);
        assert_eq!(error.to_string(), "task 018bcfe568800010 ended TIMED_OUT: hard timeout of 20s");
        assert_eq!(written, b"partial");
    }

    #[test]
    fn out_of_range_exit_codes_are_mapped() {
        let mut daemon = FakeDaemon::answering(vec![task(TaskState::Completed, Some(-9)), output(0, b"", 0)]);
        let (result, _) = collect_with(&mut daemon, None);
        assert_eq!(result.unwrap(), exit_codes::TASK_EXIT_CODE_OUT_OF_RANGE);
    }

    #[test]
    fn the_timeout_elapsing_first_has_its_own_code_and_reads_no_output() {
        let mut daemon = FakeDaemon::answering(vec![task(TaskState::Running, None)]);
        let (result, written) = collect_with(&mut daemon, Some(Duration::ZERO));
        let error = result.unwrap_err();
        assert!(matches!(error, CliError::CollectTimeout { state: TaskState::Running, .. }));
        assert_eq!(error.exit_code(), exit_codes::COLLECT_TIMEOUT);
        assert!(written.is_empty());
        assert_eq!(daemon.requests, [Request::WaitTask { task_id: TASK, timeout_ms: 0 }]);
    }

    #[test]
    fn the_remaining_time_is_passed_to_the_daemon() {
        let mut daemon = FakeDaemon::answering(vec![task(TaskState::Completed, Some(0)), output(0, b"", 0)]);
        let (result, _) = collect_with(&mut daemon, Some(Duration::from_secs(5)));
        assert_eq!(result.unwrap(), 0);
        let Request::WaitTask { timeout_ms, .. } = daemon.requests[0] else { panic!("not a wait") };
        assert!((4_000..=5_000).contains(&timeout_ms), "{timeout_ms}");
    }

    #[test]
    fn a_refusal_is_reported_with_what_was_asked() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(ClientError::Refused { code: ErrorCode::NotFound, message: "no task".into() }));
        let (result, _) = collect_with(&mut daemon, None);
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::REFUSED);
        assert!(error.to_string().starts_with("cannot wait for task 018bcfe568800010: "));
    }

    #[test]
    fn output_that_does_not_continue_is_an_error_not_a_loop() {
        for bad in [output(5, b"x", 10), output(0, b"", 10)] {
            let mut daemon = FakeDaemon::answering(vec![bad]);
            let error =
                copy_output(&mut daemon, TASK, 0, &mut Sink::new(Vec::new()), &mut Patience::none()).unwrap_err();
            assert!(matches!(error, CliError::BadOutputChunk { .. }), "{error}");
        }
    }

    #[test]
    fn a_closed_stdout_stops_reading_output() {
        use crate::connect::fake::ClosedPipe;
        let mut daemon = FakeDaemon::answering(vec![task(TaskState::Completed, Some(4)), output(0, b"ab", 4)]);
        let result = collect(&mut daemon, TASK, None, false, &mut Sink::new(ClosedPipe), &mut Vec::new());
        assert_eq!(result.unwrap(), 4);
        assert_eq!(daemon.requests.len(), 2);
    }

    #[test]
    fn a_daemon_restart_while_waiting_is_survived_with_growing_delays() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.extend([Ok(task(TaskState::Running, None)), Err(connection_reset())]);
        let refused = || ClientError::Connect {
            addr: "127.0.0.1:7420".to_string(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let unavailable = ClientError::Refused { code: ErrorCode::Unavailable, message: "starting".to_string() };
        daemon.reconnect_results.extend((0..6).map(|_| Err(refused())).chain([Err(unavailable), Ok(())]));
        daemon.replies.extend([Ok(task(TaskState::Completed, Some(0))), Ok(output(0, b"done", 4))]);
        let (result, written, notes) = collect_noting(&mut daemon, None);
        assert_eq!(result.unwrap(), 0);
        assert_eq!(written, b"done");
        let millis: Vec<u128> = daemon.reconnect_delays.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(
            notes,
            "apiary: could not wait for task 018bcfe568800010 (connection to the daemon failed: connection reset); \
             reconnecting to the daemon.\napiary: reconnected to the daemon after 8 attempts; going on.\n"
        );
        assert_eq!(daemon.requests.len(), 4, "the wait is asked again, then the output read");
    }

    #[test]
    fn reading_the_output_survives_a_restart_and_goes_on_where_it_was() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.extend([
            Ok(task(TaskState::Completed, Some(0))),
            Ok(output(0, b"ab", 4)),
            Err(ClientError::Refused { code: ErrorCode::Unavailable, message: "shutting down".to_string() }),
            Ok(output(2, b"cd", 4)),
        ]);
        let (result, written, _) = collect_noting(&mut daemon, None);
        assert_eq!(result.unwrap(), 0);
        assert_eq!(written, b"abcd");
        assert_eq!(daemon.reconnect_delays, [RECONNECT_FIRST_DELAY]);
        let max_bytes = MAX_OUTPUT_CHUNK_BYTES as u32;
        assert_eq!(daemon.requests[3], Request::GetOutput { task_id: TASK, offset: 2, max_bytes });
    }

    #[test]
    fn reconnecting_gives_up_when_the_timeout_elapses() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(connection_reset()));
        let (result, _, _) = collect_noting(&mut daemon, Some(Duration::ZERO));
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
        assert_eq!(
            error.to_string(),
            "cannot wait for task 018bcfe568800010: lost the connection to the daemon and could not reconnect \
             within 0s (0 attempts; last: connection to the daemon failed: connection reset)"
        );
        assert!(daemon.reconnect_delays.is_empty());
    }

    #[test]
    fn the_delay_before_reconnecting_never_passes_the_deadline() {
        let mut daemon = FakeDaemon { sleeps: true, ..FakeDaemon::default() };
        daemon.replies.push_back(Err(connection_reset()));
        daemon.reconnect_results.extend([Err(connection_reset()), Err(connection_reset())]);
        let timeout = Duration::from_millis(50);
        let started = Instant::now();
        let (result, _, _) = collect_noting(&mut daemon, Some(timeout));
        assert!(matches!(result.unwrap_err(), CliError::ReconnectTimeout { attempts: 1, .. }));
        assert!(started.elapsed() >= timeout);
        let [delay] = daemon.reconnect_delays.as_slice() else { panic!("{:?}", daemon.reconnect_delays) };
        assert!(*delay <= timeout && *delay > Duration::ZERO, "{delay:?}");
    }

    #[test]
    fn refusals_and_bad_hellos_are_not_retried() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(ClientError::Refused { code: ErrorCode::NotFound, message: "gone".into() }));
        let (result, _, notes) = collect_noting(&mut daemon, None);
        assert_eq!(result.unwrap_err().exit_code(), exit_codes::REFUSED);
        assert!(daemon.reconnect_delays.is_empty() && notes.is_empty());

        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(connection_reset()));
        daemon
            .reconnect_results
            .push_back(Err(ClientError::Refused { code: ErrorCode::BadHello, message: "v2".into() }));
        let (result, _, _) = collect_noting(&mut daemon, None);
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
        assert!(error.to_string().contains("(BadHello): v2"), "{error}");
    }

    #[test]
    fn tasks_output_does_not_reconnect() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(connection_reset()));
        let error = copy_output(&mut daemon, TASK, 0, &mut Sink::new(Vec::new()), &mut Patience::none()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
        assert!(daemon.reconnect_delays.is_empty());
    }

    fn collect_following(daemon: &mut FakeDaemon, timeout: Option<Duration>) -> (Result<i32, CliError>, Vec<u8>) {
        let mut out = Sink::new(Vec::new());
        let result = collect(daemon, TASK, timeout, true, &mut out, &mut Vec::new());
        (result, out.into_inner())
    }

    #[test]
    fn follow_writes_output_as_it_arrives_then_exits_with_the_final_result() {
        let mut daemon = FakeDaemon::answering(vec![
            followed(0, b"compiling\n", false),
            followed(10, &[0x80, 0xff, b'\n'], false),
            followed(13, b"done\n", true),
            task(TaskState::Completed, Some(5)),
        ]);
        let (result, written) = collect_following(&mut daemon, None);
        assert_eq!(result.unwrap(), 5);
        assert_eq!(written, b"compiling\n\x80\xff\ndone\n");
        assert_eq!(
            daemon.requests,
            [Request::FollowOutput { task_id: TASK, offset: 0 }, Request::GetTask { task_id: TASK }]
        );
        assert!(daemon.reconnect_delays.is_empty());
    }

    #[test]
    fn follow_exits_like_collect_when_the_task_did_not_complete() {
        let mut timed_out = task_result(TASK, TaskState::TimedOut, Some(-1));
        timed_out.failure_reason = "no output for 30s".to_string();
        let mut daemon = FakeDaemon::answering(vec![followed(0, b"stuck", true), Reply::Task(Box::new(timed_out))]);
        let (result, written) = collect_following(&mut daemon, None);
        assert_eq!(result.unwrap_err().exit_code(), exit_codes::TIMED_OUT);
        assert_eq!(written, b"stuck");
    }

    #[test]
    fn follow_resumes_after_a_restart_and_the_result_is_asked_again() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.extend([
            Ok(followed(0, b"ab", false)),
            Err(connection_reset()),
            Ok(followed(2, b"cd", true)),
            Err(ClientError::Refused { code: ErrorCode::Unavailable, message: "shutting down".to_string() }),
            Ok(task(TaskState::Completed, Some(0))),
        ]);
        let (result, written) = collect_following(&mut daemon, None);
        assert_eq!(result.unwrap(), 0);
        assert_eq!(written, b"abcd");
        assert_eq!(daemon.requests[1], Request::FollowOutput { task_id: TASK, offset: 2 });
        assert_eq!(daemon.requests[3], Request::GetTask { task_id: TASK });
        assert_eq!(daemon.reconnect_delays, [RECONNECT_FIRST_DELAY, RECONNECT_FIRST_DELAY]);
    }

    #[test]
    fn follow_stopped_by_the_timeout_reopens_the_connection_and_reports_the_state() {
        let mut daemon = FakeDaemon::default();
        // The wait for the next chunk ran out: the client's read timed out.
        let read_timeout = ClientError::Io(io::Error::from(io::ErrorKind::WouldBlock));
        daemon.replies.extend([Err(read_timeout), Ok(task(TaskState::Running, None))]);
        let (result, written) = collect_following(&mut daemon, Some(Duration::ZERO));
        let error = result.unwrap_err();
        assert!(matches!(error, CliError::CollectTimeout { state: TaskState::Running, .. }), "{error}");
        assert!(written.is_empty());
        assert_eq!(daemon.reconnect_delays, [Duration::ZERO], "the stream's connection is not reused");
        assert_eq!(daemon.requests[1], Request::WaitTask { task_id: TASK, timeout_ms: 0 });
    }

    #[test]
    fn follow_stopped_by_the_timeout_as_the_task_ends_still_writes_the_rest() {
        // The timeout is over once the first chunk is written: following stops there.
        let mut daemon = FakeDaemon::answering(vec![
            followed(0, b"ab", false),
            task(TaskState::Completed, Some(0)),
            output(2, b"cd", 4),
        ]);
        let (result, written) = collect_following(&mut daemon, Some(Duration::ZERO));
        assert_eq!(result.unwrap(), 0);
        assert_eq!(written, b"abcd");
        assert_eq!(daemon.reconnect_delays, [Duration::ZERO]);
        let max_bytes = MAX_OUTPUT_CHUNK_BYTES as u32;
        assert_eq!(daemon.requests[2], Request::GetOutput { task_id: TASK, offset: 2, max_bytes });
    }

    #[test]
    fn run_follow_triggers_then_follows() {
        let mut daemon = FakeDaemon::answering(vec![
            Reply::Created(created(TASK, TaskState::Pending, None)),
            followed(0, b"hi", true),
            task(TaskState::Completed, Some(0)),
        ]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(run(&mut daemon, SwarmingRequest::default(), None, true, &mut out, &mut Vec::new()).unwrap(), 0);
        assert_eq!(out.into_inner(), b"hi");
        assert_eq!(daemon.requests[1], Request::FollowOutput { task_id: TASK, offset: 0 });
    }

    #[test]
    fn run_creates_the_task_once_and_says_which_on_stderr() {
        let mut daemon = FakeDaemon::answering(vec![
            Reply::Created(created(TASK, TaskState::Pending, None)),
            task(TaskState::Completed, Some(7)),
            output(0, b"", 0),
        ]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        let task = SwarmingRequest::default();
        assert_eq!(run(&mut daemon, task.clone(), None, false, &mut out, &mut notes).unwrap(), 7);
        assert_eq!(daemon.requests[0], Request::NewTask(task.request));
        assert_eq!(String::from_utf8(notes).unwrap(), "apiary: triggered task 018bcfe568800010\n");

        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(connection_reset()));
        let error = run(&mut daemon, SwarmingRequest::default(), None, false, &mut out, &mut Vec::new()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
        assert!(daemon.reconnect_delays.is_empty(), "creating a task is never repeated");
    }

    #[test]
    fn several_tasks_are_waited_for_in_order_and_the_first_failure_sets_the_exit_code() {
        const OTHER: u64 = TASK + 0x10;
        let mut daemon = FakeDaemon::answering(vec![
            Reply::Task(Box::new(task_result(TASK, TaskState::Completed, Some(0)))),
            Reply::Task(Box::new(task_result(OTHER, TaskState::TimedOut, None))),
            output(0, b"one\n", 4),
            output(0, b"two\n", 4),
        ]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        let to = CollectTo { output_dir: None, json_output: None };
        let code = collect_many(&mut daemon, &[TASK, OTHER], None, &to, &mut out, &mut notes).unwrap();
        assert_eq!(code, exit_codes::TIMED_OUT);
        assert_eq!(out.into_inner(), b"one\ntwo\n");
        let waited: Vec<u64> = daemon
            .requests
            .iter()
            .filter_map(|request| match request {
                Request::WaitTask { task_id, .. } => Some(*task_id),
                _ => None,
            })
            .collect();
        assert_eq!(waited, [TASK, OTHER]);
    }

    #[test]
    fn the_summary_to_stdout_replaces_the_outputs_there() {
        let mut daemon = FakeDaemon::answering(vec![task(TaskState::Completed, Some(0)), output(0, b"hi", 2)]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        let to = CollectTo { output_dir: None, json_output: Some(Path::new("-")) };
        assert_eq!(collect_many(&mut daemon, &[TASK], None, &to, &mut out, &mut notes).unwrap(), 0);
        let summary: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(summary["018bcfe568800010"]["output"], "hi");
        assert_eq!(summary["018bcfe568800010"]["results"]["state"], "COMPLETED");
    }
}

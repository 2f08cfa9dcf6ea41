//! `apiary collect` and `apiary run`: wait for a task to end, write all of its
//! output to stdout unchanged, and exit with the task's exit code (or the code of
//! the state it ended in; see `exit_codes`).
//!
//! The daemon holds a wait open for at most its long-poll cap and may answer with
//! the task still PENDING or RUNNING, so waiting is a loop that asks again with
//! whatever is left of `--timeout`.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use apiary_protocol::ids::format_task_id;
use apiary_protocol::limits::{MAX_LONG_POLL_MS, MAX_OUTPUT_CHUNK_BYTES};
use apiary_protocol::{Request, TaskResult, TaskState};

use crate::args::RunArgs;
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::sink::Sink;
use crate::trigger;

const _: () = assert!(MAX_OUTPUT_CHUNK_BYTES <= u32::MAX as usize, "GetOutput's max_bytes is a u32");

/// `apiary run`: trigger, say which task on stderr (stdout carries only the
/// task's output), then collect.
pub(crate) fn run(daemon: &mut impl Daemon, args: &RunArgs, out: &mut Sink<impl Write>) -> Result<i32, CliError> {
    let task_id = trigger::submit(daemon, &args.task)?.task_id;
    // Stderr is for people; if it is gone the task still runs and is collected.
    let _ = writeln!(io::stderr(), "apiary: triggered task {}", format_task_id(task_id));
    collect(daemon, task_id, args.timeout.duration(), out)
}

pub(crate) fn collect(
    daemon: &mut impl Daemon,
    task_id: u64,
    timeout: Option<Duration>,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let result = wait_until_ended(daemon, task_id, timeout)?;
    copy_output(daemon, task_id, out)?;
    match result.state {
        TaskState::Completed => Ok(exit_codes::for_task(result.state, result.exit_code)),
        state => Err(CliError::TaskEnded { task_id: result.task_id, state, failure_reason: result.failure_reason }),
    }
}

/// Waits until the task ends and returns its result, or fails with
/// `CollectTimeout` once `timeout` elapsed. Asks at least once, so a zero timeout
/// still collects a task that already ended.
fn wait_until_ended(daemon: &mut impl Daemon, task_id: u64, timeout: Option<Duration>) -> Result<TaskResult, CliError> {
    let action = format!("wait for task {}", format_task_id(task_id));
    let deadline = timeout.map(|timeout| (timeout, Instant::now() + timeout));
    loop {
        // The daemon caps the wait itself; asking for no more than its cap keeps
        // the reply within the client's read timeout even if it did not.
        let timeout_ms = deadline.map_or(MAX_LONG_POLL_MS, |(_, deadline)| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX).min(MAX_LONG_POLL_MS)
        });
        let result = connect::call_task(daemon, &Request::WaitTask { task_id, timeout_ms }, &action)?;
        if result.state.is_terminal() {
            return Ok(result);
        }
        if let Some((timeout, deadline)) = deadline
            && Instant::now() >= deadline
        {
            return Err(CliError::CollectTimeout { task_id, timeout, state: result.state });
        }
    }
}

/// Writes the task's output, as far as the daemon holds it, to `out` as raw
/// bytes, chunk by chunk. Stops early if nobody reads stdout any more.
pub(crate) fn copy_output(daemon: &mut impl Daemon, task_id: u64, out: &mut Sink<impl Write>) -> Result<(), CliError> {
    let action = format!("read the output of task {}", format_task_id(task_id));
    let max_bytes = MAX_OUTPUT_CHUNK_BYTES as u32;
    let mut offset = 0u64;
    while !out.is_closed() {
        let chunk = connect::call_output(daemon, &Request::GetOutput { task_id, offset, max_bytes }, &action)?;
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
    use apiary_protocol::{ClientError, ErrorCode, Reply};

    use super::*;
    use crate::connect::fake::{FakeDaemon, output, task_result};

    const TASK: u64 = 0x018b_cfe5_6880_0010;

    fn task(state: TaskState, exit_code: Option<i64>) -> Reply {
        Reply::Task(task_result(TASK, state, exit_code))
    }

    fn collect_with(daemon: &mut FakeDaemon, timeout: Option<Duration>) -> (Result<i32, CliError>, Vec<u8>) {
        let mut out = Sink::new(Vec::new());
        let result = collect(daemon, TASK, timeout, &mut out);
        (result, out.into_inner())
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
        let mut daemon = FakeDaemon::answering(vec![Reply::Task(ended), output(0, b"partial", 7)]);
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
            let error = copy_output(&mut daemon, TASK, &mut Sink::new(Vec::new())).unwrap_err();
            assert!(matches!(error, CliError::BadOutputChunk { .. }), "{error}");
        }
    }

    #[test]
    fn a_closed_stdout_stops_reading_output() {
        struct ClosedPipe;
        impl Write for ClosedPipe {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut daemon = FakeDaemon::answering(vec![task(TaskState::Completed, Some(4)), output(0, b"ab", 4)]);
        let result = collect(&mut daemon, TASK, None, &mut Sink::new(ClosedPipe));
        assert_eq!(result.unwrap(), 4);
        assert_eq!(daemon.requests.len(), 2);
    }
}

//! `--follow`: a task's output written to stdout as it arrives, for `collect`,
//! `run` and `tasks output`.
//!
//! One `FollowOutput` request opens a stream: the daemon pushes `Reply::Output`
//! frames as the bot reports output, the last one with `task_ended`. Each chunk
//! must start where the previous one ended; its bytes are written unchanged and
//! flushed at once. The offset of the next byte is the whole state, so when the
//! connection fails it is reopened as `collect` does (see `Patience`) and a new
//! stream asked for from that offset: no byte is written twice or skipped.

use std::io::Write;

use apiary_protocol::ids::format_task_id;
use apiary_protocol::limits::MAX_OUTPUT_CHUNK_BYTES;
use apiary_protocol::{Reply, Request};

use crate::collect::Patience;
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::sink::Sink;

/// How far following got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Followed {
    /// The offset of the next output byte: how many were written.
    pub(crate) offset: u64,
    /// The daemon said the task ended and all of its output was written. When
    /// false, following stopped early (stdout closed, or the timeout elapsed) and
    /// the daemon may still be sending on the connection.
    pub(crate) task_ended: bool,
}

/// Writes the task's output to `out` as it arrives, from its first byte until the
/// daemon says the task ended, nobody reads stdout any more, or `patience` runs out.
pub(crate) fn follow_output(
    daemon: &mut impl Daemon,
    task_id: u64,
    out: &mut Sink<impl Write>,
    patience: &mut Patience,
) -> Result<Followed, CliError> {
    let action = format!("follow the output of task {}", format_task_id(task_id));
    let mut followed = Followed { offset: 0, task_ended: false };
    loop {
        let request = Request::FollowOutput { task_id, offset: followed.offset };
        let mut bad_reply = None;
        let mut each = |reply: Reply| match write_chunk(reply, followed.offset, out, &action) {
            Ok((next_offset, task_ended)) => {
                followed = Followed { offset: next_offset, task_ended };
                Ok(!task_ended && !out.is_closed() && !patience.is_over())
            }
            Err(error) => {
                bad_reply = Some(error);
                Ok(false)
            }
        };
        let streamed = daemon.call_stream(&request, patience.remaining(), &mut each);
        if let Some(error) = bad_reply {
            return Err(error);
        }
        match streamed {
            Ok(()) => return Ok(followed),
            // The wait for the next chunk ran into the timeout.
            Err(source) if source.is_connection_failure() && patience.is_over() => return Ok(followed),
            Err(source) => patience.recover(daemon, CliError::Call { action: action.clone(), source })?,
        }
    }
}

/// Checks that `reply` is output continuing at `offset`, writes and flushes its
/// bytes, and returns the offset after them and whether the task ended.
fn write_chunk(reply: Reply, offset: u64, out: &mut Sink<impl Write>, action: &str) -> Result<(u64, bool), CliError> {
    let Reply::Output { offset: got, data, output_len, task_ended } = reply else {
        return Err(connect::unexpected(action, &reply));
    };
    let next_offset = offset.checked_add(data.len() as u64);
    let continues = got == offset
        && data.len() <= MAX_OUTPUT_CHUNK_BYTES
        && next_offset.is_some_and(|next_offset| next_offset <= output_len);
    let Some(next_offset) = next_offset.filter(|_| continues) else {
        let action = action.to_string();
        return Err(CliError::BadOutputChunk { action, expected: offset, got, len: data.len(), output_len });
    };
    out.write_all(&data)?;
    out.flush()?;
    Ok((next_offset, task_ended))
}

#[cfg(test)]
mod tests {
    use std::io;

    use apiary_protocol::{ClientError, ErrorCode, TaskState};

    use super::*;
    use crate::connect::fake::{FakeDaemon, connection_reset, followed, task_result};

    const TASK: u64 = 0x018b_cfe5_6880_0010;

    /// Writes go to `written`; each flush records how much had been written by then.
    #[derive(Default)]
    struct Recorder {
        written: Vec<u8>,
        flushed_at: Vec<usize>,
    }

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushed_at.push(self.written.len());
            Ok(())
        }
    }

    fn follow_with(daemon: &mut FakeDaemon) -> (Result<Followed, CliError>, Recorder, String) {
        let (mut out, mut notes) = (Sink::new(Recorder::default()), Vec::new());
        let result = follow_output(daemon, TASK, &mut out, &mut Patience::until(None, &mut notes));
        (result, out.into_inner(), String::from_utf8(notes).unwrap())
    }

    #[test]
    fn chunks_are_written_unchanged_and_flushed_as_they_arrive_until_the_task_ends() {
        let not_utf8 = [0xff, 0xfe, 0x00, b'\n', 0xc3];
        let mut daemon = FakeDaemon::answering(vec![
            followed(0, b"line 1\n", false),
            followed(7, &not_utf8, false),
            followed(12, b"", false),
            followed(12, b"\xe9 end", true),
        ]);
        let (result, recorder, notes) = follow_with(&mut daemon);
        assert_eq!(result.unwrap(), Followed { offset: 17, task_ended: true });
        assert_eq!(recorder.written, b"line 1\n\xff\xfe\x00\n\xc3\xe9 end");
        assert_eq!(recorder.flushed_at, [7, 12, 12, 17]);
        assert_eq!(daemon.requests, [Request::FollowOutput { task_id: TASK, offset: 0 }]);
        assert!(daemon.replies.is_empty() && notes.is_empty());
    }

    #[test]
    fn a_broken_connection_resumes_at_the_next_offset() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.extend([
            Ok(followed(0, b"abc", false)),
            Ok(followed(3, b"de", false)),
            Err(connection_reset()),
            Ok(followed(5, b"f", true)),
        ]);
        let (result, recorder, notes) = follow_with(&mut daemon);
        assert_eq!(result.unwrap(), Followed { offset: 6, task_ended: true });
        assert_eq!(recorder.written, b"abcdef");
        assert_eq!(
            daemon.requests,
            [Request::FollowOutput { task_id: TASK, offset: 0 }, Request::FollowOutput { task_id: TASK, offset: 5 }]
        );
        assert_eq!(daemon.reconnect_delays.len(), 1);
        assert!(notes.starts_with("apiary: could not follow the output of task 018bcfe568800010 ("), "{notes}");
        assert!(notes.ends_with(
            "; reconnecting to the daemon.\napiary: reconnected to the daemon after 1 attempt; going on.\n"
        ));
    }

    #[test]
    fn without_patience_a_broken_connection_fails_and_a_refusal_always_does() {
        let mut daemon = FakeDaemon::default();
        daemon.replies.extend([Ok(followed(0, b"abc", false)), Err(connection_reset())]);
        let mut out = Sink::new(Vec::new());
        let error = follow_output(&mut daemon, TASK, &mut out, &mut Patience::none()).unwrap_err();
        assert_eq!(error.exit_code(), crate::exit_codes::CONNECTION_FAILED);
        assert_eq!(out.into_inner(), b"abc");

        let mut daemon = FakeDaemon::default();
        daemon.replies.push_back(Err(ClientError::Refused { code: ErrorCode::NotFound, message: "no".into() }));
        let (result, _, _) = follow_with(&mut daemon);
        assert_eq!(result.unwrap_err().exit_code(), crate::exit_codes::REFUSED);
        assert!(daemon.reconnect_delays.is_empty());
    }

    #[test]
    fn output_that_does_not_continue_or_another_reply_is_an_error() {
        let bad = [
            followed(1, b"x", false),
            Reply::Output { offset: 0, data: b"xy".to_vec(), output_len: 1, task_ended: false },
            Reply::Task(Box::new(task_result(TASK, TaskState::Running, None))),
        ];
        for reply in bad {
            let mut daemon = FakeDaemon::answering(vec![reply]);
            let (result, recorder, _) = follow_with(&mut daemon);
            let error = result.unwrap_err();
            assert!(matches!(error, CliError::BadOutputChunk { .. } | CliError::UnexpectedReply { .. }), "{error}");
            assert!(recorder.written.is_empty());
        }
    }

    #[test]
    fn a_closed_stdout_stops_following_early() {
        use crate::connect::fake::ClosedPipe;
        let mut daemon = FakeDaemon::answering(vec![followed(0, b"ab", false), followed(2, b"cd", true)]);
        let mut out = Sink::new(ClosedPipe);
        let result = follow_output(&mut daemon, TASK, &mut out, &mut Patience::none()).unwrap();
        assert_eq!(result, Followed { offset: 2, task_ended: false });
        assert_eq!(daemon.replies.len(), 1, "the rest of the stream is not read");
    }
}

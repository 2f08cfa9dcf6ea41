//! Every exit code of `apiary`, in one place.
//!
//! `collect` and `run` pass the task's own exit code through when the task
//! COMPLETED, so a script can treat `apiary run -- CMD` like `CMD`. Every other
//! outcome has its own code, chosen away from the codes programs commonly use
//! (1, 2, 126, 127, 128 + signal):
//!
//! | code   | meaning                                                                 |
//! |--------|-------------------------------------------------------------------------|
//! | 0      | success; or the task COMPLETED with exit code 0                         |
//! | 0..255 | the task COMPLETED with this exit code                                  |
//! | 255    | the task COMPLETED with an exit code outside 0..=255 (e.g. -1, killed)  |
//! | 2      | usage error: bad or conflicting flags, bad `K=V`, task id, state or     |
//! |        | cursor (clap's code); a `--request` or `--json-input` file unreadable,  |
//! |        | not JSON, or with refused fields; a `--secret-bytes-file` unreadable    |
//! |        | or over `MAX_SECRET_BYTES`; `$SWARMING_TASK_ID` not a task id           |
//! | 80     | the task EXPIRED: no bot took it in time                                |
//! | 81     | the task TIMED_OUT: hard or I/O timeout                                 |
//! | 82     | BOT_DIED: the bot went away while running the task                      |
//! | 83     | the task was CANCELED before it started                                 |
//! | 84     | the task was KILLED while running                                       |
//! | 85     | NO_RESOURCE: no bot has the requested dimensions                        |
//! | 86     | CLIENT_ERROR: the command could not be started                          |
//! | 87     | `--timeout` elapsed before the task ended                               |
//! | 88     | the daemon refused the request (invalid request, task/bot not found)    |
//! | 89     | cannot reach the daemon, it is unavailable, or the connection failed    |
//! |        | (`collect`/`run`: and it did not come back within `--timeout`)          |
//! | 90     | cannot write to stdout (a closed pipe is not an error)                  |
//! | 91     | cannot write a file: `collect --output-dir`, a `--json-output` (of      |
//! |        | `collect`, `trigger` or `spawn-tasks`: the tasks were created), or the  |
//! |        | work directory of `reproduce`                                           |
//!
//! A task's own exit code can be any of these numbers too; `collect` says on
//! stderr why it exits with one of 80..=91, and says nothing when it passes the
//! task's code through.

use apiary_protocol::{ErrorCode, TaskState};

pub(crate) const SUCCESS: i32 = 0;
/// Usage errors; clap exits with this code, and so does a bad `--request` or
/// `--secret-bytes-file` file.
pub(crate) const USAGE: i32 = 2;
/// The task COMPLETED with an exit code that a process cannot exit with.
pub(crate) const TASK_EXIT_CODE_OUT_OF_RANGE: i32 = 255;
pub(crate) const EXPIRED: i32 = 80;
pub(crate) const TIMED_OUT: i32 = 81;
pub(crate) const BOT_DIED: i32 = 82;
pub(crate) const CANCELED: i32 = 83;
pub(crate) const KILLED: i32 = 84;
pub(crate) const NO_RESOURCE: i32 = 85;
pub(crate) const CLIENT_ERROR: i32 = 86;
pub(crate) const COLLECT_TIMEOUT: i32 = 87;
pub(crate) const REFUSED: i32 = 88;
pub(crate) const CONNECTION_FAILED: i32 = 89;
pub(crate) const STDOUT_FAILED: i32 = 90;
pub(crate) const WRITE_FAILED: i32 = 91;

/// The exit code for a task seen in `state`. A task that has not ended yet can
/// only be reported when `--timeout` elapsed.
pub(crate) fn for_task(state: TaskState, exit_code: Option<i64>) -> i32 {
    match state {
        TaskState::Completed => for_task_exit_code(exit_code),
        TaskState::Pending | TaskState::Running => COLLECT_TIMEOUT,
        TaskState::TimedOut => TIMED_OUT,
        TaskState::BotDied => BOT_DIED,
        TaskState::Expired => EXPIRED,
        TaskState::Killed => KILLED,
        TaskState::Canceled => CANCELED,
        TaskState::NoResource => NO_RESOURCE,
        TaskState::ClientError => CLIENT_ERROR,
    }
}

/// A COMPLETED task's exit code, passed through when a process can exit with it.
/// A missing code (the daemon should always have one) counts as out of range.
pub(crate) fn for_task_exit_code(exit_code: Option<i64>) -> i32 {
    match exit_code {
        Some(code @ 0..=255) => code as i32,
        Some(_) | None => TASK_EXIT_CODE_OUT_OF_RANGE,
    }
}

/// The exit code for an error reply from the daemon.
pub(crate) fn for_refusal(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::NotFound
        | ErrorCode::FrameTooLarge
        | ErrorCode::StaleRun
        | ErrorCode::Superseded
        | ErrorCode::PermissionDenied
        | ErrorCode::ResourceExhausted
        | ErrorCode::Internal => REFUSED,
        // The daemon would not talk to us at all: as good as unreachable.
        ErrorCode::BadHello | ErrorCode::Unauthenticated | ErrorCode::Unavailable => CONNECTION_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_tasks_pass_their_exit_code_through() {
        assert_eq!(for_task(TaskState::Completed, Some(0)), 0);
        assert_eq!(for_task(TaskState::Completed, Some(1)), 1);
        assert_eq!(for_task(TaskState::Completed, Some(255)), 255);
        assert_eq!(for_task(TaskState::Completed, Some(256)), TASK_EXIT_CODE_OUT_OF_RANGE);
        assert_eq!(for_task(TaskState::Completed, Some(-1)), TASK_EXIT_CODE_OUT_OF_RANGE);
        assert_eq!(for_task(TaskState::Completed, Some(i64::MIN)), TASK_EXIT_CODE_OUT_OF_RANGE);
        assert_eq!(for_task(TaskState::Completed, None), TASK_EXIT_CODE_OUT_OF_RANGE);
    }

    #[test]
    fn every_other_state_has_its_own_code() {
        let mut codes: Vec<i32> = TaskState::ALL
            .into_iter()
            .filter(|state| !matches!(state, TaskState::Completed | TaskState::Running))
            .map(|state| for_task(state, Some(0)))
            .collect();
        assert!(codes.iter().all(|code| (EXPIRED..=COLLECT_TIMEOUT).contains(code)));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TaskState::ALL.len() - 2);
    }

    #[test]
    fn own_codes_are_distinct_and_fit_in_a_byte() {
        let mut own = [
            USAGE,
            EXPIRED,
            TIMED_OUT,
            BOT_DIED,
            CANCELED,
            KILLED,
            NO_RESOURCE,
            CLIENT_ERROR,
            COLLECT_TIMEOUT,
            REFUSED,
            CONNECTION_FAILED,
            STDOUT_FAILED,
        ];
        own.sort_unstable();
        assert!(own.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(own.iter().all(|code| (1..=255).contains(code)));
        assert_ne!(SUCCESS, TASK_EXIT_CODE_OUT_OF_RANGE);
    }
}

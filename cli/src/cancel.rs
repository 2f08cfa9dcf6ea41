//! `apiary cancel`: end a pending task as CANCELED, or with `--kill-running` have a
//! running one stopped (KILLED). Canceling a task that already ended is not an
//! error: the command says so and exits 0, so it can be repeated safely. With
//! `--tag`, every pending task with those tags, a page at a time.

use std::io::Write;

use apiary_protocol::ids::format_task_id;
use apiary_protocol::{Request, TaskQuery, limits};

use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::render;
use crate::sink::Sink;

pub(crate) fn cancel(
    daemon: &mut impl Daemon,
    task_id: u64,
    kill_running: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let action = format!("cancel task {}", format_task_id(task_id));
    let (outcome, task) = connect::call_cancel(daemon, &Request::CancelTask { task_id, kill_running }, &action)?;
    out.write_all(render::cancel_text(outcome, &task).as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// Swarming's CancelTasks: every pending task with all of `tags` (with
/// `kill_running`, running ones too), a page at a time until none is left.
/// Prints how many were canceled and stopped.
pub(crate) fn cancel_by_tags(
    daemon: &mut impl Daemon,
    query: TaskQuery,
    kill_running: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let action = format!("cancel the tasks tagged {}", query.tags.join(" and "));
    let (mut canceled, mut kill_requested) = (0u64, 0u64);
    let mut query = TaskQuery { limit: limits::MAX_TASK_PAGE, ..query };
    loop {
        let request = Request::CancelTasks { query: query.clone(), kill_running };
        let page = connect::call_cancel_tasks(daemon, &request, &action)?;
        canceled += u64::from(page.canceled);
        kill_requested += u64::from(page.kill_requested);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    out.write_all(render::canceled_tasks_text(canceled, kill_requested, !kill_running).as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{CancelOutcome, Reply, TaskState};
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};
    use crate::connect::fake::{FakeDaemon, task_result};

    const TASK: u64 = 0x018b_cfe5_6880_0010;

    fn cancel_with(outcome: CancelOutcome, state: TaskState, kill_running: bool) -> (FakeDaemon, String) {
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Canceled { outcome, task: Box::new(task_result(TASK, state, None)) }]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(cancel(&mut daemon, TASK + 1, kill_running, &mut out).unwrap(), exit_codes::SUCCESS);
        (daemon, String::from_utf8(out.into_inner()).unwrap())
    }

    #[test]
    fn every_outcome_is_one_line_and_exit_zero() {
        let cases = [
            (CancelOutcome::Canceled, TaskState::Canceled, "canceled 018bcfe568800010\n"),
            (
                CancelOutcome::KillRequested,
                TaskState::Running,
                "kill requested: 018bcfe568800010 ends KILLED once its bot stops it\n",
            ),
            (
                CancelOutcome::LeftRunning,
                TaskState::Running,
                "018bcfe568800010 is RUNNING and was left alone; use --kill-running to stop it\n",
            ),
            (
                CancelOutcome::AlreadyEnded,
                TaskState::Completed,
                "018bcfe568800010 already ended COMPLETED; nothing changed\n",
            ),
        ];
        for (outcome, state, expected) in cases {
            let (_, printed) = cancel_with(outcome, state, false);
            assert_eq!(printed, expected);
        }
    }

    #[test]
    fn kill_running_is_passed_on() {
        let cli = Cli::try_parse_from(["apiary", "cancel", "--kill-running", "018bcfe568800011"]).unwrap();
        let Command::Cancel(args) = cli.command else { panic!("not a cancel") };
        assert!(args.kill_running);
        let (daemon, _) = cancel_with(CancelOutcome::KillRequested, TaskState::Running, args.kill_running);
        assert_eq!(daemon.requests, [Request::CancelTask { task_id: TASK + 1, kill_running: true }]);
        let cli = Cli::try_parse_from(["apiary", "cancel", "018bcfe568800010"]).unwrap();
        let Command::Cancel(args) = cli.command else { panic!("not a cancel") };
        assert!(!args.kill_running);
    }

    #[test]
    fn cancel_by_tags_asks_again_with_the_cursor_until_none_is_left_and_sums_up() {
        use apiary_protocol::CanceledTasks;
        let page = |canceled, kill_requested, next_cursor| {
            Reply::CanceledTasks(CanceledTasks {
                canceled,
                kill_requested,
                matched: canceled + kill_requested,
                next_cursor,
            })
        };
        let mut daemon = FakeDaemon::answering(vec![page(1000, 0, Some(0x50)), page(2, 1, None)]);
        let mut out = Sink::new(Vec::new());
        let query = TaskQuery { tags: vec!["build:7".into()], ..TaskQuery::default() };
        assert_eq!(cancel_by_tags(&mut daemon, query, true, &mut out).unwrap(), exit_codes::SUCCESS);
        let asked: Vec<Option<u64>> = daemon
            .requests
            .iter()
            .map(|request| match request {
                Request::CancelTasks { query, kill_running: true } => {
                    assert_eq!((query.tags.as_slice(), query.limit), (&["build:7".to_string()][..], 1000));
                    query.cursor
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(asked, [None, Some(0x50)]);
        let printed = String::from_utf8(out.into_inner()).unwrap();
        assert_eq!(printed, "canceled 1002 pending tasks; kill requested for 1 running task\n");
    }
}

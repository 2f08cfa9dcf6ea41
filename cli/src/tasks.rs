//! `apiary tasks show`, `apiary tasks output`, `apiary tasks list` and `apiary
//! tasks count`: tasks as the daemon knows them now.

use std::io::Write;

use apiary_protocol::ids::format_task_id;
use apiary_protocol::{Request, TaskQuery};

use crate::args::{CountTasksArgs, ListTasksArgs, TaskFilters};
use crate::collect::{Patience, copy_output};
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::follow;
use crate::render;
use crate::sink::Sink;

pub(crate) fn show(
    daemon: &mut impl Daemon,
    task_id: u64,
    json: bool,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let action = format!("get task {}", format_task_id(task_id));
    let result = connect::call_task(daemon, &Request::GetTask { task_id }, &action)?;
    let text = if json { render::json_text(&render::task_json(&result)) } else { render::task_text(&result) };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// The output so far, whether or not the task ended. With `follow`, also the
/// output that arrives later, until the task ends; a failed connection is then
/// reopened as `collect` does, saying so on `notes` (stderr).
pub(crate) fn output(
    daemon: &mut impl Daemon,
    task_id: u64,
    follow: bool,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    if follow {
        follow::follow_output(daemon, task_id, out, &mut Patience::until(None, notes))?;
    } else {
        copy_output(daemon, task_id, 0, out, &mut Patience::none())?;
    }
    Ok(exit_codes::SUCCESS)
}

/// One page of tasks, newest first. In text, the command for the next page goes
/// to `notes` (stderr), so stdout stays one table; in JSON it is the `next_cursor` field.
pub(crate) fn list(
    daemon: &mut impl Daemon,
    args: &ListTasksArgs,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let query = TaskQuery { limit: args.limit.unwrap_or(0), cursor: args.cursor, ..task_query(&args.filters) };
    let (mut tasks, next_cursor) = connect::call_tasks(daemon, &Request::ListTasks(query.clone()), "list tasks")?;
    // Ids grow with creation time: the daemon's order, made sure of.
    tasks.sort_by_key(|task| std::cmp::Reverse(task.task_id));
    if args.json {
        out.write_all(render::json_text(&render::tasks_page_json(&tasks, next_cursor)).as_bytes())?;
        return Ok(exit_codes::SUCCESS);
    }
    out.write_all(render::tasks_table(&tasks).as_bytes())?;
    if let Some(cursor) = next_cursor {
        // For people; stdout already has the page.
        let _ = writeln!(notes, "more: {}", render::next_page_command(&query, cursor));
    }
    Ok(exit_codes::SUCCESS)
}

/// How many tasks match the filters (the daemon stops counting at its cap).
pub(crate) fn count(
    daemon: &mut impl Daemon,
    args: &CountTasksArgs,
    out: &mut Sink<impl Write>,
) -> Result<i32, CliError> {
    let request = Request::CountTasks(task_query(&args.filters));
    let (count, capped) = connect::call_task_count(daemon, &request, "count tasks")?;
    let text = if args.json {
        render::json_text(&render::task_count_json(count, capped))
    } else {
        render::task_count_text(count, capped)
    };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// The query of the filters, without a limit or cursor.
pub(crate) fn task_query(filters: &TaskFilters) -> TaskQuery {
    TaskQuery {
        state: filters.state,
        tags: filters.tags.clone(),
        created_since_unix_ms: filters.start,
        created_until_unix_ms: filters.end,
        ..TaskQuery::default()
    }
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{Reply, StateQuery, TaskState};
    use clap::Parser;
    use clap::error::ErrorKind;
    use serde_json::json;

    use super::*;
    use crate::args::{Cli, Command, TasksCommand};
    use crate::connect::fake::{FakeDaemon, followed, output as output_reply, task_result};

    #[test]
    fn show_json_prints_one_object() {
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Task(Box::new(task_result(0x20, TaskState::Running, None)))]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(show(&mut daemon, 0x21, true, &mut out).unwrap(), exit_codes::SUCCESS);
        assert_eq!(daemon.requests, [Request::GetTask { task_id: 0x21 }]);
        let printed: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(printed["task_id"], "0000000000000020");
        assert_eq!(printed["state"], "RUNNING");
    }

    fn list_args(args: &[&str]) -> ListTasksArgs {
        let cli = Cli::try_parse_from(["apiary", "tasks", "list"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Tasks(TasksCommand::List(args)) => args,
            other => panic!("not a tasks list: {other:?}"),
        }
    }

    fn list_with(args: &[&str], reply: Reply) -> (FakeDaemon, String, String) {
        let mut daemon = FakeDaemon::answering(vec![reply]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        assert_eq!(list(&mut daemon, &list_args(args), &mut out, &mut notes).unwrap(), exit_codes::SUCCESS);
        (daemon, String::from_utf8(out.into_inner()).unwrap(), String::from_utf8(notes).unwrap())
    }

    #[test]
    fn list_sends_the_filters_and_points_to_the_next_page() {
        let tasks = vec![task_result(0x10, TaskState::Running, None), task_result(0x20, TaskState::Running, None)];
        let reply = Reply::Tasks { tasks, next_cursor: Some(0xabc) };
        let args = ["--state", "running", "--tag", "k:v", "--tag", "who:a b", "--limit", "2"];
        let (daemon, out, notes) = list_with(&args, reply);
        let query = TaskQuery {
            state: StateQuery::One(TaskState::Running),
            tags: vec!["k:v".to_string(), "who:a b".to_string()],
            limit: 2,
            ..TaskQuery::default()
        };
        assert_eq!(daemon.requests, [Request::ListTasks(query)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TASK_ID           STATE    NAME  BOT  CREATED"), "{out}");
        assert!(lines[1].starts_with("0000000000000020  RUNNING  -     -    2023-11-14T22:13:20.000Z"), "{out}");
        assert!(lines[2].starts_with("0000000000000010"), "{out}");
        assert_eq!(
            notes,
            "more: apiary tasks list --cursor 0000000000000abc --state RUNNING --tag k:v --tag 'who:a b' --limit 2\n"
        );
    }

    #[test]
    fn the_last_page_has_no_pointer_and_a_cursor_is_sent_back() {
        let (daemon, out, notes) =
            list_with(&["--cursor", "0000000000000ABC"], Reply::Tasks { tasks: Vec::new(), next_cursor: None });
        let query = TaskQuery { cursor: Some(0xabc), ..TaskQuery::default() };
        assert_eq!(daemon.requests, [Request::ListTasks(query)]);
        assert_eq!(out, "TASK_ID  STATE  NAME  BOT  CREATED\n");
        assert!(notes.is_empty());
    }

    #[test]
    fn list_json_is_one_object_with_the_cursor_and_nothing_on_stderr() {
        let reply = Reply::Tasks { tasks: vec![task_result(0x10, TaskState::Pending, None)], next_cursor: Some(1) };
        let (_, out, notes) = list_with(&["--json"], reply);
        let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(printed["next_cursor"], "0000000000000001");
        assert_eq!(printed["tasks"][0], render::task_json(&task_result(0x10, TaskState::Pending, None)));
        assert!(notes.is_empty());
        let (_, out, _) = list_with(&["--json"], Reply::Tasks { tasks: Vec::new(), next_cursor: None });
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), json!({"tasks": [], "next_cursor": null}));
    }

    #[test]
    fn bad_states_limits_and_cursors_are_usage_errors() {
        let parse = |args: &[&str]| Cli::try_parse_from(["apiary", "tasks", "list"].iter().chain(args)).unwrap_err();
        let error = parse(&["--state", "done"]);
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        let message = error.to_string();
        assert!(message.contains("done") && message.contains("PENDING, RUNNING, COMPLETED, TIMED_OUT"), "{message}");
        for args in [&["--limit", "0"][..], &["--cursor", "abc"], &["--cursor", "+00000000000000a"], &["--tag", "x"]] {
            assert_eq!(parse(args).kind(), ErrorKind::ValueValidation, "{args:?}");
        }
    }

    #[test]
    fn output_of_a_running_task_stops_at_what_is_known() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Output {
            offset: 0,
            data: b"so ".to_vec(),
            output_len: 3,
            task_ended: false,
        }]);
        let mut out = Sink::new(Vec::new());
        output(&mut daemon, 0x20, false, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(out.into_inner(), b"so ");
        let mut daemon = FakeDaemon::answering(vec![output_reply(0, b"", 0)]);
        output(&mut daemon, 0x20, false, &mut Sink::new(Vec::new()), &mut Vec::new()).unwrap();
    }

    #[test]
    fn output_follow_writes_every_chunk_until_the_task_ends_and_asks_nothing_more() {
        let mut daemon = FakeDaemon::answering(vec![
            followed(0, b"so ", false),
            followed(3, b"\xfefar", false),
            followed(7, b"", true),
        ]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(output(&mut daemon, 0x20, true, &mut out, &mut Vec::new()).unwrap(), exit_codes::SUCCESS);
        assert_eq!(out.into_inner(), b"so \xfefar");
        assert_eq!(daemon.requests, [Request::FollowOutput { task_id: 0x20, offset: 0 }]);
    }
}

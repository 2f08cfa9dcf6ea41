//! `apiary trigger`: build a `NewTaskRequest` from a request file or from the flags
//! (one slice), then create the task and print its id alone on stdout, or with
//! `--dry-run` have the daemon check it and print it as the daemon would store it.

use std::io::Write;

use apiary_protocol::ids::format_task_id;
use apiary_protocol::{NewTaskRequest, Request, TaskProperties, TaskResult, TaskSlice};

use crate::args::{TaskArgs, TaskFlags};
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::render;
use crate::request_file;
use crate::sink::Sink;

pub(crate) fn trigger(
    daemon: &mut impl Daemon,
    request: NewTaskRequest,
    dry_run: bool,
    out: &mut Sink<impl Write>,
    notes: &mut dyn Write,
) -> Result<i32, CliError> {
    let text = if dry_run {
        let checked = connect::call_validate(daemon, &Request::ValidateTask(request), "check the request")?;
        render::request_text(&checked)
    } else {
        format!("{}\n", format_task_id(submit(daemon, request, notes)?.task_id))
    };
    out.write_all(text.as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// Creates the task; also the first half of `apiary run`. Says on `notes` when an
/// idempotent task reused an earlier result instead of running.
pub(crate) fn submit(
    daemon: &mut impl Daemon,
    request: NewTaskRequest,
    notes: &mut dyn Write,
) -> Result<TaskResult, CliError> {
    let result = connect::call_task(daemon, &Request::NewTask(request), "create the task")?;
    if let Some(note) = render::deduped_note(&result) {
        // Notes are for people; if stderr is gone the task exists all the same.
        let _ = writeln!(notes, "apiary: {note}");
    }
    Ok(result)
}

/// The request the arguments describe: the request file as it is, or the flags.
pub(crate) fn build_request(task: &TaskArgs) -> Result<NewTaskRequest, CliError> {
    match &task.request {
        Some(path) => request_file::read(path),
        None => Ok(request_from_flags(&task.flags)),
    }
}

/// One slice, dimensions and environment in the order given, and the protocol's
/// defaults for everything without a flag.
fn request_from_flags(flags: &TaskFlags) -> NewTaskRequest {
    let properties = TaskProperties {
        command: flags.command.clone(),
        dimensions: flags.dimensions.clone(),
        env: flags.env.clone(),
        execution_timeout_secs: flags.hard_timeout_secs,
        io_timeout_secs: flags.io_timeout_secs,
        grace_period_secs: flags.grace_period_secs,
        idempotent: flags.idempotent,
        ..TaskProperties::default()
    };
    let slice =
        TaskSlice { properties, expiration_secs: flags.expiration_secs, wait_for_capacity: flags.wait_for_capacity };
    NewTaskRequest {
        name: flags.name.clone(),
        priority: flags.priority,
        tags: flags.tags.clone(),
        user: flags.user.clone(),
        task_slices: vec![slice],
        bot_ping_tolerance_secs: flags.bot_ping_tolerance_secs,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use apiary_protocol::{Reply, StringPair, TaskState};
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command, TriggerArgs};
    use crate::connect::fake::{FakeDaemon, task_result};

    fn trigger_args(args: &[&str]) -> TriggerArgs {
        let cli = Cli::try_parse_from(["apiary", "trigger"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Trigger(trigger) => trigger,
            other => panic!("not a trigger: {other:?}"),
        }
    }

    fn request_for(args: &[&str]) -> NewTaskRequest {
        build_request(&trigger_args(args).task).unwrap()
    }

    #[test]
    fn without_flags_the_request_takes_the_protocol_defaults() {
        let request = request_for(&["--", "true"]);
        let expected_slice = TaskSlice {
            properties: TaskProperties { command: vec!["true".to_string()], ..TaskProperties::default() },
            ..TaskSlice::default()
        };
        assert_eq!(request, NewTaskRequest { task_slices: vec![expected_slice], ..NewTaskRequest::default() });
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let request = request_for(&[
            "--dimension",
            "pool=b",
            "--dimension",
            "os=linux",
            "--dimension",
            "pool=a",
            "--priority",
            "9",
            "--name",
            "build",
            "--user",
            "ana",
            "--tag",
            "ci:yes",
            "--env",
            "B=2",
            "--env",
            "A=1",
            "--expiration",
            "10",
            "--hard-timeout",
            "20",
            "--io-timeout",
            "30",
            "--grace-period",
            "40",
            "--wait-for-capacity",
            "--idempotent",
            "--bot-ping-tolerance",
            "50",
            "--",
            "make",
            "-j8",
        ]);
        assert_eq!(request.bot_ping_tolerance_secs, 50);
        assert_eq!(request.name, "build");
        assert_eq!(request.user, "ana");
        assert_eq!(request.priority, 9);
        assert_eq!(request.tags, ["ci:yes"]);
        let [slice] = request.task_slices.as_slice() else { panic!("not one slice") };
        assert_eq!(slice.expiration_secs, 10);
        assert!(slice.wait_for_capacity);
        let properties = &slice.properties;
        assert_eq!(properties.command, ["make", "-j8"]);
        assert_eq!(
            properties.dimensions,
            [StringPair::new("pool", "b"), StringPair::new("os", "linux"), StringPair::new("pool", "a")]
        );
        assert_eq!(properties.env, [StringPair::new("B", "2"), StringPair::new("A", "1")]);
        assert_eq!(properties.execution_timeout_secs, 20);
        assert_eq!(properties.io_timeout_secs, 30);
        assert_eq!(properties.grace_period_secs, 40);
        assert!(properties.idempotent);
    }

    #[test]
    fn wait_for_capacity_and_idempotent_are_off_unless_given() {
        let request = request_for(&["--wait-for-capacity", "--", "true"]);
        assert!(request.task_slices[0].wait_for_capacity);
        assert!(!request.task_slices[0].properties.idempotent);
        let request = request_for(&["--idempotent", "--", "true"]);
        assert!(!request.task_slices[0].wait_for_capacity);
        assert!(request.task_slices[0].properties.idempotent);
    }

    #[test]
    fn a_request_file_is_sent_as_it_is() {
        let mut file = temp_file("swarming.json");
        let json = br#"{"name": "n", "priority": 100, "tags": ["k:v"], "user": "u",
            "task_slices": [{"properties": {"command": ["echo"]}, "expiration_secs": 60},
                            {"properties": {"command": ["echo"]}, "wait_for_capacity": true}]}"#;
        file.1.write_all(json).unwrap();
        let path = file.0.to_str().unwrap();
        let request = request_for(&["--request", path]);
        assert_eq!(request, request_file::parse("x", json).unwrap());
        assert_eq!(request.task_slices.len(), 2);
        assert_eq!(request.priority, 100);
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Task(task_result(0x018b_cfe5_6880_0010, TaskState::Pending, None))]);
        let mut out = Sink::new(Vec::new());
        trigger(&mut daemon, request.clone(), false, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(daemon.requests, [Request::NewTask(request)]);
        std::fs::remove_file(&file.0).unwrap();
    }

    #[test]
    fn a_request_file_with_an_unsupported_field_is_refused_before_anything_is_sent() {
        let mut file = temp_file("cipd.json");
        file.1.write_all(br#"{"task_slices": [{"properties": {"cipd_input": {}}}]}"#).unwrap();
        let error = build_request(&trigger_args(&["--request", file.0.to_str().unwrap()]).task).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert!(error.to_string().contains("unknown field `cipd_input` in task_slices[0].properties"), "{error}");
        std::fs::remove_file(&file.0).unwrap();
    }

    /// A file of its own in the temporary directory, for this test process.
    fn temp_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
        let dir = std::env::temp_dir().join(format!("apiary-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    #[test]
    fn trigger_sends_the_request_and_prints_the_id_alone() {
        let request = request_for(&["--", "true"]);
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Task(task_result(0x018b_cfe5_6880_0010, TaskState::Pending, None))]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        assert_eq!(trigger(&mut daemon, request.clone(), false, &mut out, &mut notes).unwrap(), exit_codes::SUCCESS);
        assert_eq!(out.into_inner(), b"018bcfe568800010\n");
        assert_eq!(daemon.requests, [Request::NewTask(request)]);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_deduplicated_task_says_so_on_stderr_only() {
        let mut result = task_result(0x018b_cfe5_6880_0010, TaskState::Completed, Some(0));
        result.deduped_from = Some(0x018b_cfe5_0000_0011);
        let mut daemon = FakeDaemon::answering(vec![Reply::Task(result)]);
        let (mut out, mut notes) = (Sink::new(Vec::new()), Vec::new());
        trigger(&mut daemon, request_for(&["--idempotent", "--", "true"]), false, &mut out, &mut notes).unwrap();
        assert_eq!(out.into_inner(), b"018bcfe568800010\n");
        assert_eq!(
            String::from_utf8(notes).unwrap(),
            "apiary: task 018bcfe568800010 reuses the result of run 018bcfe500000011 (idempotent)\n"
        );
    }

    #[test]
    fn dry_run_validates_instead_and_prints_the_checked_request() {
        let trigger_args = trigger_args(&["--dry-run", "--name", "n", "--", "true"]);
        assert!(trigger_args.dry_run);
        let request = build_request(&trigger_args.task).unwrap();
        let checked = NewTaskRequest { user: "filled-in".to_string(), ..request.clone() };
        let mut daemon = FakeDaemon::answering(vec![Reply::ValidRequest(checked.clone())]);
        let mut out = Sink::new(Vec::new());
        trigger(&mut daemon, request.clone(), true, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(daemon.requests, [Request::ValidateTask(request)]);
        let printed = String::from_utf8(out.into_inner()).unwrap();
        assert!(printed.starts_with("{\n  \"name\": \"n\","), "{printed}");
        assert_eq!(request_file::parse("stdout", printed.as_bytes()).unwrap(), checked);
    }

    #[test]
    fn dry_run_takes_a_request_file_too() {
        let trigger_args = trigger_args(&["--dry-run", "--request", "-"]);
        assert!(trigger_args.dry_run);
        assert_eq!(trigger_args.task.request.as_deref(), Some(std::path::Path::new("-")));
    }

    #[test]
    fn a_wrong_reply_is_an_error() {
        let mut daemon = FakeDaemon::answering(vec![Reply::NoWork]);
        let error = submit(&mut daemon, request_for(&["--", "true"]), &mut Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "cannot create the task: the daemon answered with no work");
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
    }
}

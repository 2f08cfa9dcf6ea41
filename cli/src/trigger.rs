//! `apiary trigger`: build a one-slice `NewTaskRequest` from the flags, create the
//! task, print its id alone on stdout.

use std::io::Write;

use apiary_protocol::ids::format_task_id;
use apiary_protocol::{NewTaskRequest, Request, TaskProperties, TaskResult, TaskSlice};

use crate::args::TaskArgs;
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
use crate::sink::Sink;

pub(crate) fn trigger(daemon: &mut impl Daemon, task: &TaskArgs, out: &mut Sink<impl Write>) -> Result<i32, CliError> {
    let result = submit(daemon, task)?;
    out.write_all(format!("{}\n", format_task_id(result.task_id)).as_bytes())?;
    Ok(exit_codes::SUCCESS)
}

/// Creates the task; also the first half of `apiary run`.
pub(crate) fn submit(daemon: &mut impl Daemon, task: &TaskArgs) -> Result<TaskResult, CliError> {
    connect::call_task(daemon, &Request::NewTask(build_request(task)), "create the task")
}

/// The request the flags describe: one slice, dimensions and environment in the
/// order given, and the protocol's defaults for everything without a flag.
pub(crate) fn build_request(task: &TaskArgs) -> NewTaskRequest {
    let properties = TaskProperties {
        command: task.command.clone(),
        dimensions: task.dimensions.clone(),
        env: task.env.clone(),
        execution_timeout_secs: task.hard_timeout_secs,
        io_timeout_secs: task.io_timeout_secs,
        grace_period_secs: task.grace_period_secs,
        ..TaskProperties::default()
    };
    let slice = TaskSlice { properties, expiration_secs: task.expiration_secs, ..TaskSlice::default() };
    NewTaskRequest {
        name: task.name.clone(),
        priority: task.priority,
        tags: task.tags.clone(),
        user: task.user.clone(),
        task_slices: vec![slice],
        ..NewTaskRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{Reply, StringPair, TaskState};
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};
    use crate::connect::fake::{FakeDaemon, task_result};

    fn task_args(args: &[&str]) -> TaskArgs {
        let cli = Cli::try_parse_from(["apiary", "trigger"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Trigger(task) => task,
            other => panic!("not a trigger: {other:?}"),
        }
    }

    #[test]
    fn without_flags_the_request_takes_the_protocol_defaults() {
        let request = build_request(&task_args(&["--", "true"]));
        let expected_slice = TaskSlice {
            properties: TaskProperties { command: vec!["true".to_string()], ..TaskProperties::default() },
            ..TaskSlice::default()
        };
        assert_eq!(request, NewTaskRequest { task_slices: vec![expected_slice], ..NewTaskRequest::default() });
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let request = build_request(&task_args(&[
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
            "--",
            "make",
            "-j8",
        ]));
        assert_eq!(request.name, "build");
        assert_eq!(request.user, "ana");
        assert_eq!(request.priority, 9);
        assert_eq!(request.tags, ["ci:yes"]);
        let [slice] = request.task_slices.as_slice() else { panic!("not one slice") };
        assert_eq!(slice.expiration_secs, 10);
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
    }

    #[test]
    fn trigger_sends_the_request_and_prints_the_id_alone() {
        let task = task_args(&["--", "true"]);
        let mut daemon =
            FakeDaemon::answering(vec![Reply::Task(task_result(0x018b_cfe5_6880_0010, TaskState::Pending, None))]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(trigger(&mut daemon, &task, &mut out).unwrap(), exit_codes::SUCCESS);
        assert_eq!(out.into_inner(), b"018bcfe568800010\n");
        assert_eq!(daemon.requests, [Request::NewTask(build_request(&task))]);
    }

    #[test]
    fn a_wrong_reply_is_an_error() {
        let mut daemon = FakeDaemon::answering(vec![Reply::NoWork]);
        let error = submit(&mut daemon, &task_args(&["--", "true"])).unwrap_err();
        assert_eq!(error.to_string(), "cannot create the task: the daemon answered with no work");
        assert_eq!(error.exit_code(), exit_codes::CONNECTION_FAILED);
    }
}

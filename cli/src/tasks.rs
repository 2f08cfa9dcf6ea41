//! `apiary tasks show` and `apiary tasks output`: one task, as the daemon knows it now.

use std::io::Write;

use apiary_protocol::Request;
use apiary_protocol::ids::format_task_id;

use crate::collect::copy_output;
use crate::connect::{self, Daemon};
use crate::error::CliError;
use crate::exit_codes;
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

/// The output so far, whether or not the task ended.
pub(crate) fn output(daemon: &mut impl Daemon, task_id: u64, out: &mut Sink<impl Write>) -> Result<i32, CliError> {
    copy_output(daemon, task_id, out)?;
    Ok(exit_codes::SUCCESS)
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{Reply, TaskState};

    use super::*;
    use crate::connect::fake::{FakeDaemon, output as output_reply, task_result};

    #[test]
    fn show_json_prints_one_object() {
        let mut daemon = FakeDaemon::answering(vec![Reply::Task(task_result(0x20, TaskState::Running, None))]);
        let mut out = Sink::new(Vec::new());
        assert_eq!(show(&mut daemon, 0x21, true, &mut out).unwrap(), exit_codes::SUCCESS);
        assert_eq!(daemon.requests, [Request::GetTask { task_id: 0x21 }]);
        let printed: serde_json::Value = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(printed["task_id"], "0000000000000020");
        assert_eq!(printed["state"], "RUNNING");
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
        output(&mut daemon, 0x20, &mut out).unwrap();
        assert_eq!(out.into_inner(), b"so ");
        let mut daemon = FakeDaemon::answering(vec![output_reply(0, b"", 0)]);
        output(&mut daemon, 0x20, &mut Sink::new(Vec::new())).unwrap();
    }
}

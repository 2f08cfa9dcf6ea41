//! End-to-end: the foundation runs a task from the CLI on a real bot, keeps
//! every acknowledged task across kill -9, and survives bad peers.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use apiary_protocol::frame::{self, HEADER_BYTES};
use apiary_protocol::{Hello, Request, Role};
use apiary_tests::{Bot, Daemon, describe, send_signal, temp};

#[test]
fn run_returns_the_output_and_the_exit_code() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci", "os=Linux"], &dir.path().join("bot"));
    let cli = daemon.cli();

    let ok = cli.run(&["run", "-d", "pool=ci", "--", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "out\nerr\n");

    let failing = cli.run(&["run", "-d", "pool=ci", "-d", "os=Linux", "--", "sh", "-c", "echo bad; exit 3"]);
    assert_eq!(failing.status.code(), Some(3), "{}", describe(&failing));
    assert_eq!(String::from_utf8_lossy(&failing.stdout), "bad\n");
}

#[test]
fn tasks_show_and_bots_list_describe_what_happened() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let task_id = cli.trigger(&[
        "--wait-for-capacity",
        "-d",
        "pool=ci",
        "--name",
        "greeting",
        "--tag",
        "team:hive",
        "--priority",
        "42",
        "--env",
        "WHO=bees",
        "--",
        "sh",
        "-c",
        "echo hello $WHO",
    ]);
    let pending = cli.show(&task_id);
    assert_eq!(pending["state"], "PENDING");
    assert_eq!(pending["exit_code"], serde_json::Value::Null);
    assert_eq!(pending["bot_id"], serde_json::Value::Null);
    assert_eq!(pending["started_ts"], serde_json::Value::Null);

    let _bot = Bot::start(&daemon.addr, "bot-7", &["pool=ci", "os=Linux", "os=Ubuntu"], &dir.path().join("bot"));
    let collected = cli.run(&["collect", &task_id]);
    assert_eq!(collected.status.code(), Some(0), "{}", describe(&collected));
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "hello bees\n");

    let done = cli.show(&task_id);
    assert_eq!(done["task_id"], task_id);
    assert_eq!(done["name"], "greeting");
    assert_eq!(done["state"], "COMPLETED");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["bot_id"], "bot-7");
    assert_eq!(done["try_number"], 1);
    assert_eq!(done["priority"], 42);
    assert_eq!(done["dimensions"]["pool"], serde_json::json!(["ci"]));
    // The task's own tags, then those Swarming adds.
    assert_eq!(done["tags"], serde_json::json!(["team:hive", "priority:42", "pool:ci"]));
    for field in ["created_ts", "started_ts", "completed_ts"] {
        assert!(done[field].as_str().is_some_and(|ts| ts.ends_with('Z')), "{field}: {}", done[field]);
    }
    let run_id = done["run_id"].as_str().expect("a run id").to_string();
    assert!(run_id.ends_with('1') && run_id[..15] == task_id[..15], "run id {run_id} of {task_id}");
    assert_eq!(cli.show(&run_id)["task_id"], task_id, "a run id is accepted wherever a task id is");
    assert_eq!(cli.ok(&["tasks", "output", &run_id]), "hello bees\n");

    let bots: serde_json::Value = serde_json::from_str(&cli.ok(&["bots", "list", "--json"])).unwrap();
    let bot = &bots.as_array().expect("a list")[0];
    assert_eq!(bot["bot_id"], "bot-7");
    assert_eq!(bot["dimensions"]["os"], serde_json::json!(["Linux", "Ubuntu"]));
    assert_eq!(bot["dimensions"]["id"], serde_json::json!(["bot-7"]));
}

#[test]
fn an_acknowledged_task_survives_kill_9_and_runs_after_restart() {
    let dir = temp();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let task_id =
        daemon.cli().trigger(&["--wait-for-capacity", "-d", "pool=ci", "-d", "os=Mac", "--", "echo", "survived"]);
    daemon.kill9();
    daemon.restart();
    assert_eq!(daemon.cli().show(&task_id)["state"], "PENDING");
    let _bot = Bot::start(&daemon.addr, "mac-1", &["pool=ci", "os=Mac"], &dir.path().join("bot"));
    let collected = daemon.cli().run(&["collect", &task_id]);
    assert_eq!(collected.status.code(), Some(0), "{}", describe(&collected));
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "survived\n");
    // Finished tasks keep result and output across another kill -9.
    daemon.kill9();
    daemon.restart();
    let shown = daemon.cli().show(&task_id);
    assert_eq!((shown["state"].as_str(), shown["exit_code"].as_i64()), (Some("COMPLETED"), Some(0)));
    assert_eq!(daemon.cli().ok(&["tasks", "output", &task_id]), "survived\n");
}

#[test]
fn a_bot_finishes_reporting_its_task_across_a_daemon_restart() {
    let dir = temp();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let marker = dir.path().join("started");
    let script = format!("echo before; touch {}; sleep 3; echo after", marker.display());
    let task_id = daemon.cli().trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "sh", "-c", &script]);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    while !marker.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill9();
    daemon.restart();
    let collected = daemon.cli().run(&["collect", &task_id]);
    assert_eq!(collected.status.code(), Some(0), "{}", describe(&collected));
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "before\nafter\n");
    assert_eq!(daemon.cli().show(&task_id)["try_number"], 1);
}

#[test]
fn output_larger_than_one_chunk_arrives_byte_for_byte() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let expected: String = (1..=500_000).map(|n| format!("{n}\n")).collect();
    assert!(expected.len() > 2 << 20, "bigger than a few chunks and a frame");
    let output = daemon.cli().run(&["run", "-d", "pool=ci", "--", "seq", "1", "500000"]);
    assert_eq!(output.status.code(), Some(0), "status {:?}", output.status);
    assert!(
        output.stdout == expected.as_bytes(),
        "output differs: {} bytes vs {}",
        output.stdout.len(),
        expected.len()
    );
}

#[test]
fn a_second_daemon_on_the_same_data_directory_refuses_to_start() {
    let dir = temp();
    let _daemon = Daemon::start(&dir.path().join("data"));
    let second = std::process::Command::new(apiary_tests::binary("apiaryd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another apiaryd already uses the data directory"));
}

#[test]
fn sigterm_makes_everything_durable_and_exits_zero() {
    let dir = temp();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let task_id = daemon.cli().trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "true"]);
    assert!(daemon.terminate().success());
    daemon.restart();
    assert_eq!(daemon.cli().show(&task_id)["state"], "PENDING");
}

#[test]
fn garbage_and_oversized_frames_close_only_their_own_connection() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut garbage = TcpStream::connect(&daemon.addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut oversized = TcpStream::connect(&daemon.addr).unwrap();
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    header[4..6].copy_from_slice(&1u16.to_le_bytes());
    oversized.write_all(&header).unwrap();
    for stream in [&mut garbage, &mut oversized] {
        stream.set_read_timeout(Some(apiary_tests::PATIENCE)).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("the daemon answers, then closes");
        assert!(answer.len() > 16, "a typed error frame comes before the close");
    }
    daemon.log.wait_for("the reason in the log", |line| line.contains("over the limit").then_some(()));
    // Everyone else carries on.
    let task_id = daemon.cli().trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "true"]);
    assert_eq!(daemon.cli().show(&task_id)["state"], "PENDING");
}

/// The daemon stops reading a plaintext socket at a read shorter than its
/// room, without the read that would only say `WouldBlock`: a close that
/// came with the last request, in the same readiness event, must still be
/// read. The daemon is stopped while the peer sends a request and closes its
/// side, so both wait for it in one event.
#[test]
fn a_close_that_arrives_with_a_request_closes_the_connection_at_once() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut stream = TcpStream::connect(&daemon.addr).unwrap();
    let mut hello = Vec::new();
    frame::encode_hello(&Hello::new(Role::Client, "test"), &mut hello).unwrap();
    stream.write_all(&hello).unwrap();
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).expect("the welcome");
    stream.read_exact(&mut vec![0u8; frame::parse_header(&header).unwrap().payload_len]).unwrap();

    send_signal(daemon.pid(), libc::SIGSTOP);
    let mut request = Vec::new();
    frame::encode_request(1, &Request::GetTask { task_id: 0x10 }, &mut request).unwrap();
    stream.write_all(&request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    send_signal(daemon.pid(), libc::SIGCONT);

    // Far below the idle timeout (300 s), which would close it otherwise.
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let closed = match stream.read_to_end(&mut Vec::new()) {
        Ok(_) => true,
        Err(error) => error.kind() == ErrorKind::ConnectionReset,
    };
    assert!(closed, "the daemon did not close a connection whose peer closed with its last request");
}

#[test]
fn invalid_requests_are_refused_naming_the_field() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let refused = daemon.cli().run(&["trigger", "-d", "os=Linux", "--", "true"]);
    assert_eq!(refused.status.code(), Some(88), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("task_slices[0].properties.dimensions"),
        "{}",
        describe(&refused)
    );
    // The command line refuses a range in the daemon's words, before it connects.
    let refused = daemon.cli().run(&["trigger", "-d", "pool=ci", "--priority", "0", "--", "true"]);
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("'--priority <N>': 0 is outside 1..=255"),
        "{}",
        describe(&refused)
    );
}

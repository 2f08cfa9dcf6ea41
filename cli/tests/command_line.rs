//! The `apiary` command line itself (this also makes `cargo test` build the
//! binary for the end-to-end tests in `tests/`), against no daemon or a scripted
//! one that speaks the real protocol over TCP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use apiary_protocol::frame::{self, FrameReader};
use apiary_protocol::{NewTaskRequest, Reply, Request, TaskResult, TaskState};

fn apiary(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(args)
        .env_remove("APIARY_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn an_unreachable_daemon_has_its_own_exit_code() {
    let output = apiary(&["--server", "127.0.0.1:1", "tasks", "show", "0000000000000010"], b"");
    assert_eq!(output.status.code(), Some(89), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_malformed_task_id_is_a_usage_error() {
    let output = apiary(&["tasks", "show", "xyz"], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_request_with_an_unsupported_field_is_refused_before_connecting() {
    let request = br#"{"task_slices": [{"properties": {"command": ["true"], "cipd_input": {"packages": [{"package_name": "a"}]}}}]}"#;
    let output = apiary(&["--server", "127.0.0.1:1", "trigger", "--request", "-"], request);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "apiary: stdin: task_slices[0].properties.cipd_input: asks for CIPD packages, which Apiary does not \
         implement (only an empty or default value is accepted)\n"
    );
}

#[test]
fn an_empty_unsupported_field_requests_nothing_and_the_request_goes_to_the_daemon() {
    let request = br#"{"task_slices": [{"properties": {"command": ["true"], "cipd_input": {"packages": []}}}]}"#;
    let output = apiary(&["--server", "127.0.0.1:1", "trigger", "--request", "-"], request);
    assert_eq!(output.status.code(), Some(89), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_bad_state_names_the_valid_ones() {
    let output = apiary(&["tasks", "list", "--state", "finished"], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PENDING, RUNNING, COMPLETED, TIMED_OUT, BOT_DIED"), "{stderr}");
}

/// One connection of the scripted daemon: answers the hello, then each request
/// with the next reply; returns the requests it saw. With `then_die`, it also takes
/// one more request and leaves it unanswered (a restart, as the client sees it).
fn serve(stream: &mut TcpStream, replies: Vec<Reply>, then_die: bool) -> Vec<Request> {
    let mut reader = FrameReader::new();
    let hello = next_frame(stream, &mut reader);
    hello.decode_hello().unwrap();
    send(stream, 0, &Reply::Welcome { server_software: "scripted".to_string() });
    let mut requests = serve_more(stream, &mut reader, replies);
    if then_die {
        let frame = next_frame(stream, &mut reader);
        requests.push(frame.decode_request().unwrap());
    }
    requests
}

fn next_frame(stream: &mut TcpStream, reader: &mut FrameReader) -> apiary_protocol::Frame {
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(frame) = reader.next_frame().unwrap() {
            return frame;
        }
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the client closed the connection");
        reader.extend(&buffer[..read]);
    }
}

fn send(stream: &mut TcpStream, request_id: u64, reply: &Reply) {
    let mut bytes = Vec::new();
    frame::encode_reply(request_id, reply, &mut bytes).unwrap();
    stream.write_all(&bytes).unwrap();
}

fn task(task_id: u64, state: TaskState, exit_code: Option<i64>) -> TaskResult {
    TaskResult {
        task_id,
        run_id: None,
        state,
        exit_code,
        bot_id: None,
        try_number: 1,
        current_task_slice: 0,
        created_unix_ms: 1_700_000_000_000,
        started_unix_ms: None,
        completed_unix_ms: None,
        abandoned_unix_ms: None,
        duration_ms: None,
        internal_failure: false,
        failure_reason: String::new(),
        output_len: 3,
        deduped_from: None,
        timeout: None,
        setup_ms: None,
        teardown_ms: None,
        has_secret_bytes: false,
        output_truncated: false,
        pending: None,
        cas_output_root: None,
        cas_stats: None,
        request: NewTaskRequest::default(),
    }
}

#[test]
fn collect_waits_through_a_daemon_restart() {
    const TASK: u64 = 0x018b_cfe5_6880_0010;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let daemon = thread::spawn(move || {
        // First life: the task is running; then the daemon goes away mid-wait.
        let (mut stream, _) = listener.accept().unwrap();
        let before = serve(&mut stream, vec![Reply::Task(Box::new(task(TASK, TaskState::Running, None)))], true);
        drop((stream, listener));
        // Down for a while: the client's first attempts are refused.
        thread::sleep(Duration::from_millis(500));
        let listener = TcpListener::bind(addr).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let after = serve(
            &mut stream,
            vec![
                Reply::Task(Box::new(task(TASK, TaskState::Completed, Some(3)))),
                Reply::Output { offset: 0, data: b"hi\n".to_vec(), output_len: 3, task_ended: true },
            ],
            false,
        );
        (before, after)
    });
    let output = apiary(&["--server", &addr.to_string(), "collect", "--timeout", "60", "018bcfe568800010"], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert_eq!(output.stdout, b"hi\n");
    assert!(
        stderr.starts_with(
            "apiary: could not wait for task 018bcfe568800010 (connection to the daemon failed: the daemon closed \
             the connection); reconnecting to the daemon.\n"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("; reconnecting to the daemon.\napiary: reconnected to the daemon after "), "{stderr}");
    let (before, after) = daemon.join().unwrap();
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|request| matches!(request, Request::WaitTask { task_id: TASK, .. })));
    assert!(matches!(after[0], Request::WaitTask { task_id: TASK, .. }));
    assert!(matches!(after[1], Request::GetOutput { task_id: TASK, offset: 0, .. }));
}

#[test]
fn managing_an_unknown_bot_exits_88_with_the_daemons_message() {
    use apiary_protocol::{ErrorCode, ErrorReply};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let daemon = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let refusal = ErrorReply { code: ErrorCode::NotFound, message: "no bot \"gone\"".to_string() };
        serve(&mut stream, vec![Reply::Error(refusal)], false)
    });
    let output = apiary(&["--server", &addr.to_string(), "bots", "quarantine", "--reason", "disk", "gone"], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(88), "{stderr}");
    assert!(stderr.starts_with("apiary: cannot quarantine bot \"gone\": "), "{stderr}");
    let requests = daemon.join().unwrap();
    let expected = Request::QuarantineBot { bot_id: "gone".to_string(), reason: "disk".to_string() };
    assert_eq!(requests, [expected]);
}

#[test]
fn collect_follow_writes_each_chunk_as_it_arrives() {
    use std::sync::mpsc;
    const TASK: u64 = 0x018b_cfe5_6880_0010;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_seen, first_seen_by_daemon) = mpsc::channel::<()>();
    let daemon = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = FrameReader::new();
        next_frame(&mut stream, &mut reader).decode_hello().unwrap();
        send(&mut stream, 0, &Reply::Welcome { server_software: "scripted".to_string() });
        let follow = next_frame(&mut stream, &mut reader);
        let mut requests = vec![follow.decode_request().unwrap()];
        // No newline and not UTF-8: only a flush gets it out before the task ends.
        let first = Reply::Output { offset: 0, data: b"\xffpart".to_vec(), output_len: 5, task_ended: false };
        send(&mut stream, follow.request_id, &first);
        first_seen_by_daemon.recv_timeout(Duration::from_secs(10)).expect("the first chunk reached stdout");
        let last = Reply::Output { offset: 5, data: b" end\n".to_vec(), output_len: 10, task_ended: true };
        send(&mut stream, follow.request_id, &last);
        requests.extend(serve_more(
            &mut stream,
            &mut reader,
            vec![Reply::Task(Box::new(task(TASK, TaskState::Completed, Some(3))))],
        ));
        requests
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["--server", &addr.to_string(), "collect", "--follow", "018bcfe568800010"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 5];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"\xffpart");
    first_seen.send(()).unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" end\n");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let requests = daemon.join().unwrap();
    assert_eq!(requests, [Request::FollowOutput { task_id: TASK, offset: 0 }, Request::GetTask { task_id: TASK }]);
}

/// Answers each further request on a connection already past its hello with the next reply.
fn serve_more(stream: &mut TcpStream, reader: &mut FrameReader, replies: Vec<Reply>) -> Vec<Request> {
    let mut requests = Vec::new();
    for reply in replies {
        let frame = next_frame(stream, reader);
        requests.push(frame.decode_request().unwrap());
        send(stream, frame.request_id, &reply);
    }
    requests
}

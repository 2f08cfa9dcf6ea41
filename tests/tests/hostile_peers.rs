//! End-to-end: peers that try to exhaust the daemon (README, "Limits against
//! hostile peers"). Each test measures the daemon's anonymous memory in
//! /proc, bounds it far below what the attack would take without the limit,
//! and has a normal `apiary run` served meanwhile. Timeouts are set short by
//! flags; nothing asserts how long anything took.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use apiary_protocol::frame::{self, FrameKind, HEADER_BYTES};
use apiary_protocol::limits::{MAX_FRAME_PAYLOAD_BYTES, MAX_HELLO_PAYLOAD_BYTES};
use apiary_protocol::{Hello, Request, Role};
use apiary_tests::{Bot, Daemon, PATIENCE, describe, temp};

const MIB: u64 = 1 << 20;

/// The daemon's anonymous resident memory (heap and stacks, not its mapped files).
fn rss_anon_bytes(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).expect("the daemon's status");
    let line = status.lines().find(|line| line.starts_with("RssAnon:")).expect("an RssAnon line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of kB");
    kib * 1024
}

/// A connection that said hello as a client and had its welcome.
fn hello_connection(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut bytes = Vec::new();
    frame::encode_hello(&Hello::new(Role::Client, "hostile"), &mut bytes).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).expect("the welcome");
    let welcome = frame::parse_header(&header).unwrap();
    let mut payload = vec![0u8; welcome.payload_len];
    stream.read_exact(&mut payload).unwrap();
    stream
}

/// The header of a request frame that announces `payload_len` bytes.
fn request_header(payload_len: usize) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[4..6].copy_from_slice(&(FrameKind::Request as u16).to_le_bytes());
    header[8..16].copy_from_slice(&1u64.to_le_bytes());
    header
}

/// `apiary run` on the bot, until it succeeds (it may meet a full connection
/// table first): the daemon keeps serving while it is attacked.
fn run_is_served(daemon: &Daemon, message: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ran = daemon.cli().run(&["run", "-d", "pool=ci", "--", "echo", message]);
        if ran.status.success() {
            assert_eq!(String::from_utf8_lossy(&ran.stdout), format!("{message}\n"));
            return;
        }
        assert!(Instant::now() < deadline, "apiary run was never served: {}", describe(&ran));
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the peer's side of `stream` is closed by the daemon.
fn closed_by_daemon(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn stalled_sockets_beyond_the_connection_limit_are_closed_at_the_hello_timeout() {
    let dir = temp();
    let args = ["--max-connections", "40", "--hello-timeout-secs", "1"];
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &args);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let memory_before = rss_anon_bytes(&daemon);

    // Before the hello only a small frame is accepted: the refusal names the limit.
    let mut large_first = TcpStream::connect(&daemon.addr).unwrap();
    large_first.write_all(&request_header(MAX_HELLO_PAYLOAD_BYTES + 1)).unwrap();
    let mut answer = Vec::new();
    large_first.set_read_timeout(Some(PATIENCE)).unwrap();
    large_first.read_to_end(&mut answer).expect("an error, then the close");
    let limit = format!("before the hello is over the limit of {MAX_HELLO_PAYLOAD_BYTES} bytes");
    assert!(String::from_utf8_lossy(&answer).contains(&limit), "{answer:?}");

    // One byte each, then nothing: the table fills, and the rest are refused.
    let mut stalled: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut stream = TcpStream::connect(&daemon.addr).unwrap();
            let _ = stream.write_all(&[1]);
            stream
        })
        .collect();
    daemon.log.wait_for("the limit to act", |line| line.contains("at the limit of 40 connections").then_some(()));
    run_is_served(&daemon, "served past stalled sockets");
    daemon.log.wait_for("the hello timeout to act", |line| {
        line.contains("no hello within the hello timeout of 1 s").then_some(())
    });
    for stream in &mut stalled {
        assert!(closed_by_daemon(stream), "every stalled socket is closed");
    }
    let grown = rss_anon_bytes(&daemon).saturating_sub(memory_before);
    assert!(grown < 32 * MIB, "the daemon grew by {} MiB", grown / MIB);
}

#[test]
fn a_connection_with_nothing_in_flight_is_closed_after_the_idle_timeout() {
    let dir = temp();
    let args = ["--idle-timeout-secs", "1"];
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &args);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let mut idle = hello_connection(&daemon.addr);
    assert!(closed_by_daemon(&mut idle));
    daemon.log.wait_for("the idle timeout to act", |line| {
        line.contains("nothing in flight for the idle timeout of 1 s").then_some(())
    });
    // A bot's held poll and a running task are in flight: the bot keeps working.
    let ran = daemon.cli().run(&["run", "-d", "pool=ci", "--", "sh", "-c", "sleep 3; echo slept"]);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "slept\n", "{}", describe(&ran));
}

#[test]
fn partial_maximal_frames_hold_no_more_than_the_input_budget() {
    let dir = temp();
    let budget = 16 * MIB;
    let args = ["--max-input-buffer-bytes", &budget.to_string()];
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &args);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let memory_before = rss_anon_bytes(&daemon);

    // 150 connections announce the largest frame and send all of it but one byte:
    // without the budget the daemon would hold 600 MiB.
    let frame_bytes = HEADER_BYTES + MAX_FRAME_PAYLOAD_BYTES;
    let mut attackers: Vec<(TcpStream, usize)> = (0..150)
        .map(|_| {
            let stream = hello_connection(&daemon.addr);
            stream.set_nonblocking(true).unwrap();
            (stream, 0)
        })
        .collect();
    let mut partial = request_header(MAX_FRAME_PAYLOAD_BYTES);
    partial.resize(frame_bytes - 1, 7);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && attackers.iter().any(|(_, sent)| *sent < partial.len()) {
        for (stream, sent) in &mut attackers {
            while *sent < partial.len() {
                match stream.write(&partial[*sent..]) {
                    Ok(written) => *sent += written,
                    Err(_) => break,
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let sent: usize = attackers.iter().map(|(_, sent)| sent).sum();
    assert!(sent as u64 > 64 * MIB, "the attack sent only {} MiB", sent as u64 / MIB);
    daemon.log.wait_for("the input budget to act", |line| {
        line.contains(&format!("of the limit of {budget} (--max-input-buffer-bytes)")).then_some(())
    });
    run_is_served(&daemon, "served past partial frames");
    let grown = rss_anon_bytes(&daemon).saturating_sub(memory_before);
    eprintln!("partial frames: {} MiB sent, the daemon grew by {} MiB", sent as u64 / MIB, grown / MIB);
    // The budget, 64 KiB per connection, and room for the allocator and the run.
    assert!(grown < budget + 150 * 64 * 1024 + 32 * MIB, "the daemon grew by {} MiB", grown / MIB);
}

#[test]
fn a_pipelined_follow_of_a_large_output_that_is_never_read_stays_bounded() {
    let dir = temp();
    let args = ["--max-unsent-bytes", "4194304", "--idle-timeout-secs", "3"];
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &args);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let task_id = cli.trigger(&["-d", "pool=ci", "--", "head", "-c", "16000000", "/dev/zero"]);
    cli.wait_for_state(&task_id, "COMPLETED");
    assert_eq!(cli.show(&task_id)["output_len"], 16_000_000);
    let memory_before = rss_anon_bytes(&daemon);

    // 200 follows of 16 MB each, and not one byte read: 3.2 GB without the bound.
    let mut follower = hello_connection(&daemon.addr);
    let mut requests = Vec::new();
    for request_id in 1..=200 {
        let follow = Request::FollowOutput { task_id: u64::from_str_radix(&task_id, 16).unwrap(), offset: 0 };
        frame::encode_request(request_id, &follow, &mut requests).unwrap();
    }
    follower.write_all(&requests).unwrap();
    daemon.log.wait_for("the unsent bound to act", |line| {
        line.contains("bytes of replies to it are unsent, over the limit of 4194304").then_some(())
    });
    run_is_served(&daemon, "served past a follower that never reads");
    let grown = rss_anon_bytes(&daemon).saturating_sub(memory_before);
    eprintln!("a follower that never reads: the daemon grew by {} MiB", grown / MIB);
    assert!(grown < 48 * MIB, "the daemon grew by {} MiB", grown / MIB);

    // It takes none of what it is owed: closed after the idle timeout.
    daemon.log.wait_for("the stalled follower to be closed", |line| {
        line.contains("bytes of replies owed to it for the idle timeout of 3 s").then_some(())
    });
}

#[test]
fn a_page_of_large_tasks_fits_and_a_task_near_the_request_limit_is_shown_and_canceled() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let memory_before = rss_anon_bytes(&daemon);
    let mut triggered = Vec::new();
    // About 580 KiB each: the largest tags (values of 256 bytes) and 127 arguments of 4 KiB.
    let arg = "a".repeat(4096);
    for index in 0..20 {
        let tags: Vec<String> = (0..256).map(|n| format!("t{index}x{n}:{}", "v".repeat(256))).collect();
        let mut args = vec!["--wait-for-capacity", "-d", "pool=none"];
        for tag in &tags {
            args.extend(["--tag", tag.as_str()]);
        }
        args.extend(["--", "true"]);
        args.extend(std::iter::repeat_n(arg.as_str(), 127));
        triggered.push(cli.trigger(&args));
    }
    triggered.reverse();
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["tasks", "list", "--json"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let page: serde_json::Value = serde_json::from_str(&cli.ok(&args)).expect("a page as JSON");
        pages += 1;
        listed
            .extend(page["tasks"].as_array().unwrap().iter().map(|task| task["task_id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(listed, triggered, "every task once, newest first");
    assert!(pages > 1, "a page stops early by bytes");

    // A large request: 128 arguments of 4 KiB and the largest tags; twice it is over the limit.
    let near_file = dir.path().join("near.json");
    let near = serde_json::json!({
        "tags": (0..256).map(|n| format!("k{n}:{}", "v".repeat(256))).collect::<Vec<_>>(),
        "task_slices": [{"wait_for_capacity": true, "properties": {
            "command": vec![arg.clone(); 128],
            "dimensions": [{"key": "pool", "value": "none"}],
        }}],
    });
    std::fs::write(&near_file, near.to_string()).unwrap();
    let near_id = cli.ok(&["trigger", "--request", near_file.to_str().unwrap()]).trim().to_string();
    assert_eq!(cli.show(&near_id)["state"], "PENDING");
    assert_eq!(cli.ok(&["cancel", &near_id]).trim(), format!("canceled {near_id}"));
    assert_eq!(cli.show(&near_id)["state"], "CANCELED");

    // Twice as large: refused by name, and nothing is created.
    let over_file = dir.path().join("over.json");
    let mut over = near.clone();
    let slice = over["task_slices"][0].clone();
    let mut second = slice.clone();
    second["expiration_secs"] = 10.into();
    over["task_slices"] = serde_json::json!([slice, second]);
    std::fs::write(&over_file, over.to_string()).unwrap();
    let refused = cli.run(&["trigger", "--request", over_file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(88), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("request: ") && stderr.contains("over the limit of 1048576"), "{stderr}");
    let all: serde_json::Value = serde_json::from_str(&cli.ok(&["tasks", "list", "--json", "--limit", "1"])).unwrap();
    assert_eq!(all["tasks"][0]["task_id"], near_id.as_str(), "the refused request created no task");
    let grown = rss_anon_bytes(&daemon).saturating_sub(memory_before);
    assert!(grown < 64 * MIB, "the daemon grew by {} MiB", grown / MIB);
}

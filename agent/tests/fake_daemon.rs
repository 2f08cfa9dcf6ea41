//! `apiary-bot` against a small in-test daemon that speaks the real protocol:
//! it hands out one task, loses the reply to the bot's first update (as a daemon
//! restart would), and checks the output arrives once and complete; and it sees a
//! failing health check in the polls, then tells the bot to terminate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use apiary_protocol::frame::{self, FrameKind, FrameReader};
use apiary_protocol::{Assignment, Reply, Request, RunEnd, RunOutcome, TaskProperties};

const RUN_ID: u64 = 0x0000_0190_0000_0011;

struct FakeDaemon {
    assigned: bool,
    output: Vec<u8>,
    updates: usize,
    done: mpsc::Sender<(Vec<u8>, RunOutcome)>,
}

/// Serves one connection, answering each request with `handle` (None drops the
/// connection instead); returns when the bot or the fake drops it.
fn serve(mut stream: TcpStream, handle: &mut dyn FnMut(Request) -> Option<Reply>) {
    let mut reader = FrameReader::new();
    let mut bytes = [0u8; 64 << 10];
    loop {
        let frame = match reader.next_frame().unwrap() {
            Some(frame) => frame,
            None => match stream.read(&mut bytes) {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    reader.extend(&bytes[..read]);
                    continue;
                }
            },
        };
        let reply = match frame.kind {
            FrameKind::Hello => {
                frame.decode_hello().unwrap();
                Reply::Welcome { server_software: "fake".to_string() }
            }
            _ => match handle(frame.decode_request().unwrap()) {
                Some(reply) => reply,
                None => return,
            },
        };
        let mut out = Vec::new();
        frame::encode_reply(frame.request_id, &reply, &mut out).unwrap();
        stream.write_all(&out).unwrap();
    }
}

impl FakeDaemon {
    /// None drops the connection instead of replying.
    fn handle(&mut self, request: Request) -> Option<Reply> {
        match request {
            Request::BotPoll(poll) => {
                assert_eq!(poll.bot_id, "e2e");
                assert!(poll.dimensions.pairs().unwrap().iter().any(|pair| pair.key == "id" && pair.value == "e2e"));
                if self.assigned {
                    thread::sleep(Duration::from_millis(100));
                    return Some(Reply::NoWork);
                }
                self.assigned = true;
                let script = "echo one; echo two >&2; echo \"$APIARY_TASK_ID\"; exit 5";
                let properties = TaskProperties {
                    command: vec!["sh".to_string(), "-c".to_string(), script.to_string()],
                    ..TaskProperties::default()
                };
                let assignment = Assignment {
                    run_id: RUN_ID,
                    task_name: "e2e".to_string(),
                    slice_index: 0,
                    properties: properties.into(),
                    secret_bytes: None,
                };
                Some(Reply::Assignment(assignment))
            }
            Request::TaskUpdate(update) => {
                assert_eq!(update.run_id, RUN_ID);
                self.updates += 1;
                let offset = usize::try_from(update.output_offset).unwrap();
                assert!(offset <= self.output.len());
                let overlap = (self.output.len() - offset).min(update.output.len());
                assert_eq!(self.output[offset..offset + overlap], update.output[..overlap]);
                self.output.extend_from_slice(&update.output[overlap..]);
                if self.updates == 1 {
                    return None;
                }
                if let Some(outcome) = update.outcome {
                    self.done.send((self.output.clone(), outcome)).unwrap();
                }
                Some(Reply::UpdateAck { output_len: self.output.len() as u64, must_stop: false })
            }
            other => panic!("a bot sent {other:?}"),
        }
    }
}

#[test]
fn a_task_is_reported_once_across_a_lost_reply() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let mut daemon = FakeDaemon { assigned: false, output: Vec::new(), updates: 0, done };
        for stream in listener.incoming() {
            serve(stream.unwrap(), &mut |request| daemon.handle(request));
        }
    });
    let work_dir = tempfile::tempdir().unwrap();
    let mut bot = Command::new(env!("CARGO_BIN_EXE_apiary-bot"))
        .args(["--server", &address, "--id", "e2e", "--dimension", "os=Linux", "--work-dir"])
        .arg(work_dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let result = finished.recv_timeout(Duration::from_secs(20));
    let _ = Command::new("kill").arg("-TERM").arg(bot.id().to_string()).status();
    let status = bot.wait().unwrap();
    let mut log = String::new();
    bot.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let (output, outcome) = result.unwrap_or_else(|_| panic!("no outcome; bot log:\n{log}"));
    assert_eq!(String::from_utf8(output).unwrap(), "one\ntwo\n0000019000000011\n");
    assert_eq!((outcome.exit_code, outcome.end), (Some(5), RunEnd::Exited));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("connected") && log.contains("reconnecting"), "{log}");
    assert_eq!(std::fs::read_dir(work_dir.path().join("w")).unwrap().count(), 0);
}

#[test]
fn a_quarantined_bot_says_why_and_exits_0_when_told_to_terminate() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (polled, polls) = mpsc::channel();
    thread::spawn(move || {
        let mut handle = |request| match request {
            Request::BotPoll(poll) => {
                polled.send(poll.quarantine_reason).unwrap();
                Some(Reply::Terminate)
            }
            other => panic!("a bot sent {other:?}"),
        };
        for stream in listener.incoming() {
            serve(stream.unwrap(), &mut handle);
        }
    });
    let work_dir = tempfile::tempdir().unwrap();
    let mut bot = Command::new(env!("CARGO_BIN_EXE_apiary-bot"))
        .args(["--server", &address, "--id", "e2e", "--health-check", "echo no GPU >&2; exit 4", "--work-dir"])
        .arg(work_dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reason = polls.recv_timeout(Duration::from_secs(20));
    let exited_by = std::time::Instant::now() + Duration::from_secs(20);
    while bot.try_wait().unwrap().is_none() && std::time::Instant::now() < exited_by {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = bot.kill();
    let status = bot.wait().unwrap();
    let mut log = String::new();
    bot.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(reason.as_deref(), Ok("health check failed (exit 4): no GPU"), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("quarantined: health check failed (exit 4): no GPU"), "{log}");
    assert!(log.contains("the daemon asked the bot to exit"), "{log}");
}

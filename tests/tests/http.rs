//! The daemon's HTTP listener end to end (`--http-listen`): keep-alive and
//! closing, the bounds on requests, the idle timeout, routing, pRPC's
//! conventions, bearer tokens and permissions, a task's output streamed and
//! resumed from an offset while a real bot runs it, health endpoints, TLS,
//! and the connection limit shared with the binary protocol.

use std::path::{Path, PathBuf};

use apiary_tests::http::HttpClient;
use apiary_tests::pki::{ServerCert, TestCa};
use apiary_tests::{Bot, Daemon, send_signal, temp, token_hash_line};

const HTTP_ON_FREE_PORT: [&str; 2] = ["--http-listen", "127.0.0.1:0"];

fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
    let args: Vec<&str> = HTTP_ON_FREE_PORT.iter().chain(extra).copied().collect();
    Daemon::start_with(data_dir, "127.0.0.1:0", &args)
}

#[test]
fn many_requests_share_one_kept_alive_connection_and_are_routed() {
    let data = temp();
    let daemon = start(data.path(), &[]);
    let mut client = HttpClient::connect(&daemon.http_addr());

    let health = client.get("/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(health.header("Connection"), None, "HTTP/1.1 keeps the connection");
    assert_eq!(client.get("/readyz").status, 200);
    let metrics = client.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("# TYPE apiary_tasks_created_total counter"), "{}", metrics.text());
    let page = client.get("/");
    assert_eq!(page.status, 200, "the web UI");
    assert!(page.header("Content-Type").is_some_and(|value| value.starts_with("text/html")));
    assert!(page.header("Content-Security-Policy").is_some());
    assert_eq!(client.get("/ui/tasks").status, 404, "no file of the UI there");
    let wrong_method = client.request("POST", "/healthz", &[], b"");
    assert_eq!((wrong_method.status, wrong_method.header("Allow")), (405, Some("GET")));
    assert_eq!(client.get("/prpc/swarming.v2.Tasks/GetResult").status, 405);

    let unknown = client.call("swarming.v2.Tasks/NoSuchMethod", "{}", None);
    assert_eq!((unknown.status, unknown.grpc_code()), (501, Some(12)));
    assert!(unknown.text().contains("NoSuchMethod"), "{}", unknown.text());
    let bad_json = client.call("swarming.v2.Tasks/GetResult", "{\"task_id\": ", None);
    assert_eq!((bad_json.status, bad_json.grpc_code()), (400, Some(3)));
    assert!(bad_json.text().starts_with("request body: "), "{}", bad_json.text());
    let binary = client.request("POST", "/prpc/swarming.v2.Tasks/GetResult", &[], b"{}");
    assert_eq!((binary.status, binary.grpc_code()), (400, Some(3)));
    assert!(binary.text().contains("Content-Type"), "{}", binary.text());
    let old_json_type = [("Content-Type", "application/prpc; encoding=json")];
    let accepted = client.request("POST", "/prpc/swarming.v2.Tasks/NoSuchMethod", &old_json_type, b"{}");
    assert_eq!(accepted.grpc_code(), Some(12), "pRPC v1.0's JSON type is taken: {}", accepted.text());
    assert!(accepted.header("X-Content-Type-Options").is_some());

    // Pipelined: both requests sent before either answer is read, answered in order.
    client.send("GET", "/readyz", &[], b"");
    client.send("GET", "/healthz", &[], b"");
    assert_eq!(client.read_response().text(), "ready\n");
    assert_eq!(client.read_response().text(), "ok\n");
    assert_eq!(client.get("/healthz").status, 200, "the same connection still serves");
}

#[test]
fn connection_close_and_http_10_close_after_the_response() {
    let data = temp();
    let daemon = start(data.path(), &[]);
    let addr = daemon.http_addr();
    let mut client = HttpClient::connect(&addr);
    let response = client.request("GET", "/healthz", &[("Connection", "close")], b"");
    assert_eq!((response.status, response.header("Connection")), (200, Some("close")));
    assert!(client.closed_by_daemon());

    let mut client = HttpClient::connect(&addr);
    client.send_raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    let response = client.read_response();
    assert_eq!((response.status, response.header("Connection")), (200, Some("close")));
    assert!(client.closed_by_daemon());
}

#[test]
fn oversized_or_unreadable_requests_are_refused_with_their_status_and_the_connection_closed() {
    let data = temp();
    let daemon = start(data.path(), &[]);
    let addr = daemon.http_addr();
    let refused = |request: Vec<u8>| {
        let mut client = HttpClient::connect(&addr);
        client.send_raw(&request);
        let response = client.read_response();
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(client.closed_by_daemon(), "closed after a refusal");
        (response.status, response.text())
    };
    let big_header = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 << 10));
    let (status, text) = refused(big_header.into_bytes());
    assert_eq!(status, 431);
    assert!(text.contains("16384 bytes"), "{text}");
    let many_headers: String = (0..100).map(|index| format!("X-{index}: 1\r\n")).collect();
    let (status, text) = refused(format!("GET /healthz HTTP/1.1\r\n{many_headers}\r\n").into_bytes());
    assert_eq!(status, 431);
    assert!(text.contains("64"), "{text}");
    let huge_body = "POST /prpc/swarming.v2.Tasks/NewTask HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n";
    let (status, text) = refused(huge_body.as_bytes().to_vec());
    assert_eq!(status, 413);
    assert!(text.contains("Content-Length") && text.contains("1048576"), "{text}");
    let chunked = "POST /prpc/swarming.v2.Tasks/NewTask HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (status, text) = refused(chunked.as_bytes().to_vec());
    assert_eq!(status, 411);
    assert!(text.contains("Content-Length"), "{text}");
    assert_eq!(refused(b"NONSENSE\r\n\r\n".to_vec()).0, 400);

    // A body larger than a connection buffers on its own is read with a share
    // of the input budget, and the connection goes on.
    let mut client = HttpClient::connect(&addr);
    let large = format!("{{\"padding\": \"{}\"}}", "x".repeat(600 << 10));
    let response = client.call("swarming.v2.Tasks/NoSuchMethod", &large, None);
    assert_eq!(response.grpc_code(), Some(12), "{}", response.text());
    let expects_continue = [("Content-Type", "application/json"), ("Expect", "100-continue")];
    client.send("POST", "/prpc/swarming.v2.Tasks/NoSuchMethod", &expects_continue, large.as_bytes());
    assert_eq!(client.read_head().status, 100, "Expect: 100-continue is answered");
    let response = client.read_response();
    assert_eq!(response.grpc_code(), Some(12), "{}", response.text());
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(HttpClient::connect(&addr).get("/healthz").status, 200, "others were never disturbed");
}

#[test]
fn idle_connections_and_unfinished_requests_are_closed_after_the_idle_timeout() {
    let data = temp();
    let daemon = start(data.path(), &["--idle-timeout-secs", "1"]);
    let addr = daemon.http_addr();
    let mut idle = HttpClient::connect(&addr);
    assert_eq!(idle.get("/healthz").status, 200);
    assert!(idle.closed_by_daemon(), "closed once idle");
    let mut dripping = HttpClient::connect(&addr);
    dripping.send_raw(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
    assert!(dripping.closed_by_daemon(), "a head that never ends is no progress");
    daemon.log.wait_for("the idle close in the log", |line| line.contains("idle timeout of 1 s").then_some(()));
}

#[test]
fn the_connection_limit_is_shared_with_the_binary_protocol() {
    let data = temp();
    let daemon = start(data.path(), &["--max-connections", "2"]);
    let addr = daemon.http_addr();
    let mut first = HttpClient::connect(&addr);
    let mut second = HttpClient::connect(&addr);
    assert_eq!(first.get("/healthz").status, 200);
    assert_eq!(second.get("/healthz").status, 200);
    let mut third = HttpClient::connect(&addr);
    let refused = third.read_response();
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("limit of 2 connections"), "{}", refused.text());
    let binary = daemon.cli().run(&["bots", "list"]);
    assert!(!binary.status.success(), "the binary listener counts the HTTP connections too");
    drop(first);
    assert_eq!(second.get("/healthz").status, 200);
}

/// A daemon whose principals are `alice` (everything everywhere) and `bob`
/// (only `create_task` in pool `ci`), with their token files.
struct Principals {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Principals {
    fn new(extra_settings: &str) -> Principals {
        let dir = temp();
        let mut text = extra_settings.to_string();
        for name in ["alice", "bob"] {
            let token_file = dir.path().join(format!("{name}.token"));
            std::fs::write(&token_file, Principals::token(name)).unwrap();
            text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token_file)));
        }
        text.push_str("\n[[permissions]]\nprincipal = \"alice\"\npools = [\"*\"]\n");
        text.push_str("grants = [\"create_task\", \"read_tasks\", \"cancel_task\", \"read_bots\"]\n");
        text.push_str("\n[[permissions]]\nprincipal = \"bob\"\npools = [\"ci\"]\ngrants = [\"create_task\"]\n");
        let config = dir.path().join("apiary.toml");
        std::fs::write(&config, text).unwrap();
        Principals { dir, config }
    }

    fn token(name: &str) -> String {
        format!("token-of-{name}-0123456789")
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.token"))
    }
}

#[test]
fn requests_are_authenticated_by_bearer_token_and_checked_against_permissions() {
    let principals = Principals::new("http_listen = \"127.0.0.1:0\"\n");
    let data = temp();
    let daemon = Daemon::start_with(data.path(), "127.0.0.1:0", &["--config", principals.config.to_str().unwrap()]);
    let mut client = HttpClient::connect(&daemon.http_addr());

    let anonymous = client.call("swarming.v2.Swarming/GetDetails", "{}", None);
    assert_eq!((anonymous.status, anonymous.grpc_code()), (401, Some(16)));
    assert!(anonymous.text().contains("Authorization"), "{}", anonymous.text());
    assert_eq!(anonymous.header("WWW-Authenticate"), Some("Bearer"));
    let forged = client.call("swarming.v2.Swarming/GetDetails", "{}", Some("not-a-token"));
    assert_eq!((forged.status, forged.grpc_code()), (401, Some(16)));
    let alice = Principals::token("alice");
    let known = client.call("swarming.v2.Tasks/NoSuchMethod", "{}", Some(&alice));
    assert_eq!(known.grpc_code(), Some(12), "past authentication: {}", known.text());
    assert_eq!(client.get("/healthz").status, 200, "health needs no token");

    let task_id = daemon.cli_with_token(&principals.token_file("alice")).trigger(&["-d", "pool=ci", "--", "true"]);
    let output = format!("/api/v1/tasks/{task_id}/output");
    assert_eq!(client.get(&output).status, 401);
    let as_alice = client.request("GET", &output, &[("Authorization", &format!("Bearer {alice}"))], b"");
    assert_eq!(as_alice.status, 200, "{}", as_alice.text());
    assert_eq!(as_alice.header("X-Apiary-Output-Length"), Some("0"));
    let bob = format!("Bearer {}", Principals::token("bob"));
    // Without read_tasks in the task's pool, the task is not there for bob (as over the binary protocol).
    let as_bob = client.request("GET", &output, &[("Authorization", &bob)], b"");
    assert_eq!(as_bob.status, 404, "{}", as_bob.text());
    assert!(as_bob.text().contains(&task_id), "{}", as_bob.text());
    let stream = client.request("GET", &format!("{output}/stream"), &[("Authorization", &bob)], b"");
    assert_eq!(stream.status, 404, "a stream is checked as a read is");
    let missing = client.request("GET", "/api/v1/tasks/00000000000000a0/output", &[("Authorization", &bob)], b"");
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(client.get("/api/v1/tasks/nothex/output").status, 400);
}

#[test]
fn a_reload_keeps_http_connections_and_its_principals_apply_from_the_next_request() {
    let principals = Principals::new("http_listen = \"127.0.0.1:0\"\n");
    let data = temp();
    let daemon = Daemon::start_with(data.path(), "127.0.0.1:0", &["--config", principals.config.to_str().unwrap()]);
    let mut client = HttpClient::connect(&daemon.http_addr());
    let bob = Principals::token("bob");
    assert_eq!(client.call("swarming.v2.Tasks/NoSuchMethod", "{}", Some(&bob)).grpc_code(), Some(12));
    // bob's token is revoked: the file keeps only alice.
    let text = std::fs::read_to_string(&principals.config).unwrap();
    let kept: Vec<&str> = text.split("\n[[").filter(|entry| !entry.contains("\"bob\"")).collect();
    std::fs::write(&principals.config, kept.join("\n[[")).unwrap();
    send_signal(daemon.pid(), libc::SIGHUP);
    daemon.log.wait_for("the reload", |line| line.contains("reloaded the configuration from").then_some(()));
    let revoked = client.call("swarming.v2.Tasks/NoSuchMethod", "{}", Some(&bob));
    assert_eq!(revoked.grpc_code(), Some(16), "the same connection, kept: {}", revoked.text());
    let alice = Principals::token("alice");
    assert_eq!(client.call("swarming.v2.Tasks/NoSuchMethod", "{}", Some(&alice)).grpc_code(), Some(12));
}

#[test]
fn a_task_output_streams_as_it_runs_and_resumes_from_an_offset() {
    let data = temp();
    let daemon = start(data.path(), &[]);
    let work = temp();
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], work.path());
    let go = work.path().join("go");
    let script = format!("echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second", go.display());
    let task_id = daemon.cli().trigger(&["-d", "pool=ci", "--", "sh", "-c", &script]);
    let addr = daemon.http_addr();

    let mut follower = HttpClient::connect(&addr);
    follower.send("GET", &format!("/api/v1/tasks/{task_id}/output/stream"), &[], b"");
    let head = follower.read_head();
    assert_eq!((head.status, head.header("Transfer-Encoding")), (200, Some("chunked")));
    let mut seen = Vec::new();
    while !seen.ends_with(b"first\n") {
        seen.extend(follower.read_chunk().expect("the task runs until told to go on"));
    }
    assert_eq!(seen, b"first\n", "pushed while the task still runs");
    std::fs::write(&go, "").unwrap();
    while let Some(chunk) = follower.read_chunk() {
        seen.extend(chunk);
    }
    assert_eq!(seen, b"first\nsecond\n", "the body ends when the task ends");
    assert_eq!(follower.get("/healthz").status, 200, "the connection goes on after the stream");

    let resumed = follower.get(&format!("/api/v1/tasks/{task_id}/output/stream?offset=6"));
    assert_eq!((resumed.status, resumed.text().as_str()), (200, "second\n"));
    assert_eq!(resumed.header("X-Apiary-Output-Offset"), Some("6"));
    assert_eq!(resumed.header("X-Apiary-Task-Ended"), Some("true"));
    let read = follower.get(&format!("/api/v1/tasks/{task_id}/output?offset=2&length=5"));
    assert_eq!((read.status, read.text().as_str()), (200, "rst\ns"));
    assert_eq!(read.header("X-Apiary-Output-Length"), Some("13"));
    let past_the_end = follower.get(&format!("/api/v1/tasks/{task_id}/output/stream?offset=1000"));
    assert_eq!((past_the_end.status, past_the_end.text().as_str()), (200, ""));
    assert_eq!(follower.get(&format!("/api/v1/tasks/{task_id}/output?offset=x")).status, 400);
}

#[test]
fn http_is_served_over_tls_with_the_daemons_certificate() {
    let dir = temp();
    let ca = TestCa::new(dir.path(), "http");
    let ServerCert { cert_file, key_file } = ca.server_cert(dir.path(), "server");
    let settings =
        format!("http_listen = \"127.0.0.1:0\"\ntls_cert_file = {cert_file:?}\ntls_key_file = {key_file:?}\n");
    let principals = Principals::new(&settings);
    let data = temp();
    let daemon = Daemon::start_with(data.path(), "127.0.0.1:0", &["--config", principals.config.to_str().unwrap()]);
    assert!(daemon.log.all().iter().any(|line| line.contains("(https://")), "{:#?}", daemon.log.all());
    let mut client = HttpClient::connect_with(&daemon.http_addr(), Some(&ca.cert_file));
    assert_eq!(client.get("/healthz").status, 200);
    let call = client.call("swarming.v2.Tasks/NoSuchMethod", "{}", Some(&Principals::token("alice")));
    assert_eq!(call.grpc_code(), Some(12));
    let large = format!("{{\"padding\": \"{}\"}}", "y".repeat(300 << 10));
    let call = client.call("swarming.v2.Tasks/NoSuchMethod", &large, Some(&Principals::token("alice")));
    assert_eq!(call.grpc_code(), Some(12), "a large body over TLS");
    assert_eq!(client.get("/readyz").status, 200);
}

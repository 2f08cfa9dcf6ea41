//! Trust end to end: the configuration file, tokens at the hello, the
//! principal recorded on what it does, SIGHUP, and the safe defaults.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use apiary_protocol::{Client, ClientError, ErrorCode, Request, Role};
use apiary_tests::{Bot, Daemon, binary, describe, send_signal, temp, token_hash_line};

/// Exit code of `apiary` when the daemon would not talk to it.
const CONNECTION_FAILED: i32 = 89;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

/// The `token_hash = "..."` line `apiaryd hash-token` prints for a token file.
fn hash_line(token_file: &Path) -> String {
    let line = token_hash_line(token_file);
    assert!(
        line.starts_with("token_hash = \"sha256:") && line.len() == "token_hash = \"sha256:\"".len() + 64,
        "{line}"
    );
    line
}

struct Principals {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Principals {
    /// A configuration with a principal per name, each with a token file `<name>.token`.
    fn new(names: &[&str]) -> Principals {
        let dir = temp();
        let config = dir.path().join("apiary.toml");
        let principals = Principals { dir, config };
        principals.configure(names);
        principals
    }

    fn token_file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.token"));
        if !path.exists() {
            write(self.dir.path(), &format!("{name}.token"), &format!("token-of-{name}-0123456789\n"));
        }
        path
    }

    /// Rewrites the configuration with these principals only.
    fn configure(&self, names: &[&str]) {
        let mut text = String::from("# principals of the test\nlong_poll_secs = 5\n");
        for name in names {
            text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", hash_line(&self.token_file(name))));
        }
        std::fs::write(&self.config, text).unwrap();
    }

    fn start(&self, data_dir: &Path) -> Daemon {
        Daemon::start_with(data_dir, "127.0.0.1:0", &["--config", self.config.to_str().unwrap()])
    }
}

#[test]
fn a_hello_needs_the_token_of_a_principal_and_the_principal_is_recorded() {
    let data = temp();
    let principals = Principals::new(&["alice", "ci-bots"]);
    let daemon = principals.start(data.path());
    assert!(
        daemon
            .log
            .all()
            .iter()
            .any(|line| line.contains("access needs a token; configured: 2 principals, 0 bot groups, no permissions"))
    );

    let no_token = daemon.cli().run(&["tasks", "list"]);
    assert_eq!(no_token.status.code(), Some(CONNECTION_FAILED), "{}", describe(&no_token));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("token: the hello carries none"));
    let wrong = write(principals.dir.path(), "wrong.token", "token-of-alice-0123456788\n");
    let refused = daemon.cli_with_token(&wrong).run(&["tasks", "list"]);
    assert_eq!(refused.status.code(), Some(CONNECTION_FAILED), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("(Unauthenticated): token: not the token of any principal"), "{stderr}");
    let missing = daemon.cli_with_token(&principals.dir.path().join("nothing")).run(&["tasks", "list"]);
    assert_eq!(missing.status.code(), Some(2), "a token file that cannot be read is a usage error");

    let bot_token = principals.token_file("ci-bots");
    let work = temp();
    let _bot = Bot::start_with(
        &daemon.addr,
        "bot-1",
        &["pool=ci"],
        work.path(),
        &["--token-file", bot_token.to_str().unwrap()],
    );
    let alice = daemon.cli_with_token(&principals.token_file("alice"));
    let task_id = alice.trigger(&["--dimension", "pool=ci", "--", "true"]);
    let shown = alice.wait_for_state(&task_id, "COMPLETED");
    assert_eq!(shown["authenticated"], "alice");
    assert_eq!(shown["tags"], serde_json::json!(["priority:200", "authenticated:alice", "pool:ci"]));
    assert!(
        alice
            .ok(&["tasks", "show", &task_id])
            .lines()
            .any(|line| line.split_whitespace().eq(["authenticated:", "alice"]))
    );
    let forged = alice.run(&["trigger", "--tag", "authenticated:bob", "--dimension", "pool=ci", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("the daemon sets authenticated:"),
        "{}",
        describe(&forged)
    );

    // The token file may also come from the environment.
    let listed = Command::new(binary("apiary"))
        .args(["--server", &daemon.addr, "tasks", "list", "--tag", "authenticated:alice"])
        .env("APIARY_TOKEN_FILE", principals.token_file("alice"))
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", describe(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&task_id));

    alice.ok(&["bots", "quarantine", "--reason", "flaky disk", "bot-1"]);
    alice.ok(&["bots", "unquarantine", "bot-1"]);
    alice.ok(&["bots", "terminate", "bot-1"]);
    let events: serde_json::Value = serde_json::from_str(&alice.ok(&["bots", "events", "--json", "bot-1"])).unwrap();
    let messages: Vec<(&str, &str)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| (event["event"].as_str().unwrap(), event["message"].as_str().unwrap()))
        .collect();
    for expected in [
        ("bot_quarantined", "by alice: flaky disk"),
        ("bot_unquarantined", "by alice"),
        ("bot_terminate_requested", "by alice"),
    ] {
        assert!(messages.contains(&expected), "{expected:?} in {messages:?}");
    }
}

#[test]
fn a_bot_without_a_token_is_refused_and_exits() {
    let data = temp();
    let principals = Principals::new(&["ci-bots"]);
    let daemon = principals.start(data.path());
    let work = temp();
    let output = Command::new(binary("apiary-bot"))
        .args(["--server", &daemon.addr, "--id", "bot-1", "--dimension", "pool=ci", "--work-dir"])
        .arg(work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("token: the hello carries none"), "{}", describe(&output));
}

#[test]
fn check_config_names_the_file_the_line_and_the_reason() {
    let dir = temp();
    let check = |file: &Path, extra: &[&str]| {
        Command::new(binary("apiaryd")).arg("--check-config").arg(file).args(extra).output().expect("run apiaryd")
    };
    let bad = write(dir.path(), "bad.toml", "# settings\nlisten = \"127.0.0.1:7420\"\nlong_poll_secs = 99\n");
    let output = check(&bad, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:3: long_poll_secs: ", bad.display())) && stderr.contains("1..=60"),
        "{stderr}"
    );

    let hash = write(dir.path(), "hash.toml", "[[principals]]\nname = \"alice\"\ntoken_hash = \"sha256:abc\"\n");
    let stderr = String::from_utf8_lossy(&check(&hash, &[]).stderr).to_string();
    assert!(stderr.contains(&format!("{}:3: principals.token_hash: expected sha256:", hash.display())), "{stderr}");
    let unknown = write(dir.path(), "unknown.toml", "data_dir = \"/tmp/x\"\nlong_pol_secs = 5\n");
    let stderr = String::from_utf8_lossy(&check(&unknown, &[]).stderr).to_string();
    assert!(stderr.contains(&format!("{}:2: long_pol_secs: not a setting of apiaryd", unknown.display())), "{stderr}");

    // A flag given on the command line wins over the file.
    let open = write(dir.path(), "open.toml", "listen = \"0.0.0.0:7420\"\n");
    let output = check(&open, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("refusing to listen on 0.0.0.0:7420 without authentication")
    );
    let output = check(&open, &["--listen", "127.0.0.1:7420"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("open.toml: 1 settings, 0 principals: good"));
}

#[test]
fn settings_come_from_the_file_unless_a_flag_says_otherwise() {
    let dir = temp();
    let config = write(dir.path(), "apiary.toml", "hello_timeout_secs = 1\nidle_timeout_secs = 1\n");
    let data = temp();
    let daemon = Daemon::start_with(
        data.path(),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap(), "--idle-timeout-secs", "600"],
    );
    // The file's hello timeout closes a silent connection; the command line's
    // idle timeout keeps an idle one open meanwhile.
    let mut idle = Client::connect(&daemon.addr, Role::Client, "test").unwrap();
    let _silent = std::net::TcpStream::connect(&daemon.addr).unwrap();
    daemon.log.wait_for("the hello timeout of 1 s", |line| {
        line.contains("no hello within the hello timeout of 1 s").then_some(())
    });
    let second_silent = std::net::TcpStream::connect(&daemon.addr).unwrap();
    daemon.log.wait_for("a second hello timeout", |line| {
        line.contains(&second_silent.local_addr().unwrap().to_string()).then_some(())
    });
    assert!(idle.call(&Request::ListBots { dimensions: Vec::new() }).is_ok(), "closed at the file's idle timeout");
    assert!(!daemon.log.all().iter().any(|line| line.contains("idle timeout")));
}

#[test]
fn sighup_revokes_a_token_and_keeps_the_other_connections() {
    let data = temp();
    let principals = Principals::new(&["alice", "bob"]);
    let daemon = principals.start(data.path());
    let token = |name: &str| std::fs::read_to_string(principals.token_file(name)).unwrap().trim().to_string();
    let connect = |name: &str| Client::connect_with_token(&daemon.addr, Role::Client, "test", &token(name));
    let mut alice = connect("alice").unwrap();
    let mut bob = connect("bob").unwrap();
    let list = Request::ListBots { dimensions: Vec::new() };
    assert!(alice.call(&list).is_ok() && bob.call(&list).is_ok());

    // A file that is refused changes nothing.
    std::fs::write(&principals.config, "long_poll_secs = 0\n").unwrap();
    send_signal(daemon.pid(), libc::SIGHUP);
    let reason = daemon.log.wait_for("the reload to be refused", |line| {
        line.split_once("SIGHUP: cannot reload the configuration, keeping the one in force: ")
            .map(|(_, why)| why.to_string())
    });
    assert!(reason.contains("apiary.toml:1: long_poll_secs: "), "{reason}");
    assert!(alice.call(&list).is_ok());

    principals.configure(&["bob"]);
    send_signal(daemon.pid(), libc::SIGHUP);
    daemon.log.wait_for("the reload", |line| line.contains("reloaded the configuration from").then_some(()));
    assert!(
        daemon.log.all().iter().any(|line| line.contains("closed 1 connections whose token is no longer accepted"))
    );
    assert!(alice.call(&list).is_err(), "the connection of a revoked token is closed");
    assert!(bob.call(&list).is_ok(), "other connections stay");
    match connect("alice") {
        Err(ClientError::Refused { code: ErrorCode::Unauthenticated, message }) => {
            assert!(message.contains("token: not the token of any principal"), "{message}")
        }
        other => panic!("a revoked token must be refused: {:?}", other.map(|_| "welcomed")),
    }
    assert!(connect("bob").is_ok());

    // No principals left would open access: refused, tokens stay required.
    std::fs::write(&principals.config, "long_poll_secs = 5\n").unwrap();
    send_signal(daemon.pid(), libc::SIGHUP);
    daemon.log.wait_for("the opening reload to be refused", |line| {
        line.contains("no principals are left in it, which would open access").then_some(())
    });
    assert!(Client::connect(&daemon.addr, Role::Client, "test").is_err());
}

#[test]
fn a_non_loopback_address_needs_principals_or_insecure_no_auth() {
    let data = temp();
    let (status, log) = Daemon::start_refused_on(data.path(), "0.0.0.0:0", &[]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("refusing to listen on 0.0.0.0:0 without authentication"), "{log}");
    assert!(log.contains("--config FILE") && log.contains("--insecure-no-auth"), "{log}");

    let daemon = Daemon::start_with(data.path(), "0.0.0.0:0", &["--insecure-no-auth"]);
    let open_lines = daemon.log.all().iter().filter(|line| line.contains("access is open")).count();
    assert_eq!(open_lines, 1, "said once: {:#?}", daemon.log.all());
    let port = daemon.addr.rsplit_once(':').unwrap().1.to_string();
    let cli = apiary_tests::Cli { addr: format!("127.0.0.1:{port}"), token_file: None, ca_file: None };
    cli.ok(&["bots", "list"]);
    drop(daemon);

    let loopback_data = temp();
    let loopback = Daemon::start(loopback_data.path());
    let open_lines: Vec<String> =
        loopback.log.all().into_iter().filter(|line| line.contains("access is open")).collect();
    assert_eq!(open_lines.len(), 1, "{open_lines:?}");
    assert!(open_lines[0].contains("no principals are configured"), "{open_lines:?}");
}

#[test]
fn apiary_load_runs_with_tokens_and_is_refused_without() {
    let data = temp();
    let principals = Principals::new(&["alice", "load-bots"]);
    let daemon = principals.start(data.path());
    let load = |extra: &[&str]| {
        Command::new(binary("apiary-load"))
            .args(["--server", &daemon.addr, "--bots", "2", "--submitters", "1", "--tasks", "20"])
            .args(extra)
            .env_remove("APIARY_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let refused = load(&[]);
    assert!(!refused.status.success(), "no token: {}", describe(&refused));
    let (user, bots) = (principals.token_file("alice"), principals.token_file("load-bots"));
    let ran = load(&["--token-file", user.to_str().unwrap(), "--bot-token-file", bots.to_str().unwrap()]);
    assert!(ran.status.success(), "{}", describe(&ran));
    assert!(String::from_utf8_lossy(&ran.stdout).contains("completed: 20"), "{}", describe(&ran));
    let created = daemon.cli_with_token(&user).ok(&["tasks", "list", "--tag", "authenticated:alice", "--limit", "50"]);
    assert_eq!(created.lines().filter(|line| line.contains("COMPLETED")).count(), 20, "{created}");
}

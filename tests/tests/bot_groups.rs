//! Bot groups end to end: a bot token may only be the ids its group covers,
//! with the dimensions its group enforces; a result may only come from the
//! bot that holds the run, and secret bytes reach only that bot.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiary_protocol::{
    BotPoll, Client, ClientError, ErrorCode, PackedDimensions, Reply, Request, Role, RunEnd, RunOutcome, StringPair,
    TaskUpdate,
};
use apiary_tests::{Bot, Cli, Daemon, PATIENCE, binary, describe, temp, token_hash_line};

struct Setup {
    dir: tempfile::TempDir,
    daemon: Daemon,
}

impl Setup {
    /// A daemon with a user (alice) and two bot groups: `ci-*` in pool ci
    /// (token of ci-bots), and `prod-1` in pool prod (token of prod-bots).
    fn start() -> Setup {
        let dir = temp();
        // Debug lines too: a task's end in the log says every line before it was read.
        let mut text = String::from("long_poll_secs = 1\nlog_level = \"debug\"\n");
        for name in ["alice", "ci-bots", "prod-bots"] {
            let token = dir.path().join(format!("{name}.token"));
            std::fs::write(&token, format!("token-of-{name}-0123456789\n")).unwrap();
            text.push_str(&format!("\n[[principals]]\nname = \"{name}\"\n{}\n", token_hash_line(&token)));
        }
        text.push_str(
            "\n[[bot_groups]]\nprincipal = \"ci-bots\"\nbot_id_prefixes = [\"ci-\"]\ndimensions = { pool = \"ci\" }\n\
             \n[[bot_groups]]\nprincipal = \"prod-bots\"\nbot_ids = [\"prod-1\"]\ndimensions = { pool = \"prod\" }\n",
        );
        let config = dir.path().join("apiary.toml");
        std::fs::write(&config, text).unwrap();
        let daemon =
            Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
        Setup { dir, daemon }
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.token"))
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.token_file(name)).unwrap().trim().to_string()
    }

    fn alice(&self) -> Cli {
        self.daemon.cli_with_token(&self.token_file("alice"))
    }

    fn bot(&self, bot_id: &str, principal: &str, dimensions: &[&str]) -> Bot {
        let token = self.token_file(principal);
        let work = self.dir.path().join(format!("work-{bot_id}"));
        Bot::start_with(&self.daemon.addr, bot_id, dimensions, &work, &["--token-file", token.to_str().unwrap()])
    }

    /// A raw bot connection with `principal`'s token, for what apiary-bot would never send.
    fn impostor(&self, principal: &str) -> Client {
        Client::connect_with_token(&self.daemon.addr, Role::Bot, "impostor", &self.token(principal)).unwrap()
    }
}

/// Runs apiary-bot until it exits by itself: its exit code and its log.
fn bot_that_exits(setup: &Setup, bot_id: &str, principal: &str) -> (Option<i32>, String) {
    let mut child = Command::new(binary("apiary-bot"))
        .args(["--server", &setup.daemon.addr, "--id", bot_id, "--dimension", "pool=ci", "--token-file"])
        .arg(setup.token_file(principal))
        .arg("--work-dir")
        .arg(setup.dir.path().join(format!("work-{bot_id}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("apiary-bot --id {bot_id} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn poll(bot_id: &str, session_id: u64) -> Request {
    Request::BotPoll(BotPoll {
        bot_id: bot_id.into(),
        session_id,
        dimensions: PackedDimensions::new(&[StringPair::new("pool", "ci")]),
        software: "impostor".into(),
        quarantine_reason: String::new(),
        caches: Vec::new(),
    })
}

fn final_report(bot_id: &str, session_id: u64, run_id: u64) -> Request {
    let outcome = RunOutcome {
        exit_code: Some(0),
        duration_ms: 1,
        setup_ms: 0,
        teardown_ms: 0,
        end: RunEnd::Exited,
        ..RunOutcome::default()
    };
    Request::TaskUpdate(TaskUpdate {
        bot_id: bot_id.into(),
        session_id,
        run_id,
        output_offset: 0,
        output: b"forged\n".to_vec(),
        outcome: Some(outcome),
    })
}

fn refused(reply: Result<Reply, ClientError>) -> (ErrorCode, String) {
    match reply {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_bot_token_may_only_be_the_ids_of_its_group() {
    let setup = Setup::start();
    let (code, log) = bot_that_exits(&setup, "prod-1", "ci-bots");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(r#"(PermissionDenied): bot_id: principal ci-bots may not be bot "prod-1": its bot groups (pool ci) do not cover this id"#),
        "{log}"
    );
    let (code, log) = bot_that_exits(&setup, "ci-1", "alice");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("bot_id: principal alice may not be bot \"ci-1\": no bot group names it"), "{log}");
    let shown = setup.alice().run(&["bots", "show", "prod-1"]);
    assert!(!shown.status.success(), "a refused bot is not recorded: {}", describe(&shown));
    // A task update under an id outside the group is refused the same way,
    // every time, and logged once per connection.
    let mut impostor = setup.impostor("prod-bots");
    for _ in 0..5 {
        let (code, message) = refused(impostor.call(&final_report("ci-1", 1, 0x10)));
        assert_eq!(code, ErrorCode::PermissionDenied, "{message}");
        let expected = "bot_id: principal prod-bots may not be bot \"ci-1\"";
        assert!(message.starts_with(expected) && message.contains("pool prod"), "{message}");
    }
    assert_eq!(refused(impostor.call(&poll("ci-1", 1))).0, ErrorCode::PermissionDenied);
    // Another connection's refusal is logged after all of those: once it is
    // seen, every earlier line was read.
    let mut second = setup.impostor("prod-bots");
    assert_eq!(refused(second.call(&poll("ci-2", 1))).0, ErrorCode::PermissionDenied);
    setup.daemon.log.wait_for("the second connection's refusal", |line| line.contains("be bot \"ci-2\"").then_some(()));
    let log = setup.daemon.log.all();
    let logged = log.iter().filter(|line| line.contains("principal prod-bots may not be bot \"ci-1\"")).count();
    assert_eq!(logged, 1, "{log:#?}");
}

#[test]
fn a_group_enforces_its_pool_whatever_the_bot_reports() {
    let setup = Setup::start();
    let _bot = setup.bot("ci-1", "ci-bots", &["pool=prod", "os=Linux"]);
    let alice = setup.alice();
    let shown: serde_json::Value = serde_json::from_str(&alice.ok(&["bots", "show", "--json", "ci-1"])).unwrap();
    assert_eq!(shown["dimensions"]["pool"], serde_json::json!(["ci"]), "{shown}");
    assert_eq!(shown["dimensions"]["os"], serde_json::json!(["Linux"]), "{shown}");
    // No bot of pool prod: the bot that reported it is not one.
    let prod = alice.trigger(&["-d", "pool=prod", "--", "true"]);
    alice.wait_for_state(&prod, "NO_RESOURCE");
    let mut ci = String::new();
    for _ in 0..2 {
        ci = alice.trigger(&["-d", "pool=ci", "--", "true"]);
        alice.wait_for_state(&ci, "COMPLETED");
    }
    setup.daemon.log.wait_for("the override", |line| line.contains("its group (bot_groups[0]) enforces").then_some(()));
    let ended = format!("task {ci} ended");
    setup.daemon.log.wait_for("the last task's end", |line| line.contains(&ended).then_some(()));
    let overrides =
        setup.daemon.log.all().iter().filter(|line| line.contains("its group (bot_groups[0]) enforces")).count();
    assert_eq!(overrides, 1, "the override is logged once, not at every poll: {:#?}", setup.daemon.log.all());
}

#[test]
fn only_the_bot_holding_a_run_reports_on_it_and_gets_its_secret() {
    let setup = Setup::start();
    let bot = setup.bot("ci-1", "ci-bots", &["pool=ci"]);
    let alice = setup.alice();
    let secret = format!("apiary-secret-{}", std::process::id());
    let secret_file = setup.dir.path().join("secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let go = setup.dir.path().join("go");
    // The task waits for `go`, then proves it sees the secret without printing it.
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; test \"$(cat \"$APIARY_SECRET_BYTES_PATH\")\" = \"$(cat '{}')\" && echo real",
        go.display(),
        secret_file.display()
    );
    let secret_arg = secret_file.to_str().unwrap();
    let task_id = alice.trigger(&[
        "-d",
        "pool=ci",
        "-d",
        "id=ci-1",
        "--secret-bytes-file",
        secret_arg,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let running = alice.wait_for_state(&task_id, "RUNNING");
    let run_id = u64::from_str_radix(running["run_id"].as_str().unwrap(), 16).unwrap();

    // Another group's token can neither be the bot nor report for it.
    let mut other_group = setup.impostor("prod-bots");
    assert_eq!(refused(other_group.call(&poll("ci-1", 99))).0, ErrorCode::PermissionDenied);
    // The same group's token, as another bot or as this one without its session, may not report on the run.
    let mut same_group = setup.impostor("ci-bots");
    for bot_id in ["ci-2", "ci-1"] {
        let (code, message) = refused(same_group.call(&final_report(bot_id, 99, run_id)));
        assert_eq!(code, ErrorCode::StaleRun, "{message}");
        assert!(message.contains("is held by another bot session"), "{message}");
    }
    // Another bot of the group polls: the pinned task's secret is not handed to it.
    assert_eq!(same_group.call(&poll("ci-2", 99)).unwrap(), Reply::NoWork);
    assert_eq!(alice.show(&task_id)["state"], "RUNNING", "the forged results changed nothing");

    std::fs::write(&go, "").unwrap();
    let done = alice.wait_for_state(&task_id, "COMPLETED");
    assert_eq!(done["exit_code"], 0, "the task saw its secret: {done}");
    assert_eq!(alice.ok(&["tasks", "output", &task_id]), "real\n", "the output is the real bot's");
    let logs = setup.daemon.log.all().join("\n") + &bot.log.all().join("\n");
    assert!(!logs.contains(&secret), "no log line holds the secret");
}

//! End-to-end: what a task written for Swarming finds on an Apiary bot (its
//! environment variables, `${ISOLATED_OUTDIR}` and the other placeholders, the bot
//! file), and the bot as Swarming's bot presents itself (`os`, `cpu`, `cores`, a
//! `pool`, an id of Swarming's syntax).

use std::process::{Command, Stdio};

use apiary_tests::{Bot, Daemon, binary, describe, temp};

/// The `KEY=VALUE` lines of `text` as pairs.
fn variables(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter_map(|line| line.split_once('=')).collect()
}

fn value<'a>(lines: &[(&'a str, &'a str)], key: &str) -> &'a str {
    lines.iter().find(|(name, _)| *name == key).unwrap_or_else(|| panic!("{key} in {lines:?}")).1
}

#[test]
fn a_task_sees_swarmings_variables_and_placeholders() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    // $1 is where the task writes (given as ${ISOLATED_OUTDIR}); reading it back
    // through $APIARY_OUTDIR proves both name one directory.
    let script = r#"
        echo "SWARMING_TASK_ID=$SWARMING_TASK_ID"; echo "APIARY_TASK_ID=$APIARY_TASK_ID"
        echo "SWARMING_BOT_ID=$SWARMING_BOT_ID"; echo "SWARMING_SERVER=$SWARMING_SERVER"
        echo "SWARMING_HEADLESS=$SWARMING_HEADLESS"
        echo written > "$1/result.txt" && echo "READ_BACK=$(cat "$APIARY_OUTDIR/result.txt")"
        echo "SUFFIX=[$2]"; echo "RESULTS=$RESULTS"; echo "OUTDIR=$APIARY_OUTDIR"
        echo "BOT_FILE=$3"; echo "BOT_FILE_ID=$(grep -c '"bot_id": "bot-1"' "$3")"
    "#;
    let output = daemon.cli().run(&[
        "run",
        "-d",
        "pool=ci",
        "--env",
        "RESULTS=${ISOLATED_OUTDIR}/results.json",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        "${ISOLATED_OUTDIR}",
        "${EXECUTABLE_SUFFIX}",
        "${SWARMING_BOT_FILE}",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines = variables(&text);
    let task_id = value(&lines, "APIARY_TASK_ID");
    assert_eq!(task_id.len(), 16, "{text}");
    assert_eq!(value(&lines, "SWARMING_TASK_ID"), task_id);
    assert_eq!(value(&lines, "SWARMING_BOT_ID"), "bot-1");
    assert_eq!(value(&lines, "SWARMING_SERVER"), daemon.addr);
    assert_eq!(value(&lines, "SWARMING_HEADLESS"), "1");
    assert_eq!(value(&lines, "READ_BACK"), "written");
    assert_eq!(value(&lines, "SUFFIX"), "[]");
    let out_dir = value(&lines, "OUTDIR");
    assert!(out_dir.starts_with('/') && out_dir.ends_with("/out"), "{text}");
    assert_eq!(value(&lines, "RESULTS"), format!("{out_dir}/results.json"));
    let bot_file = value(&lines, "BOT_FILE");
    assert_eq!(bot_file, out_dir.replace("/out", "/bot_file.json"), "{text}");
    assert_eq!(value(&lines, "BOT_FILE_ID"), "1", "the bot file names the bot: {text}");
}

#[test]
fn a_bot_reports_its_os_cpu_and_cores_under_the_configured_dimensions() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _plain = Bot::start(&daemon.addr, "plain", &["pool=ci"], &dir.path().join("plain"));
    let _custom = Bot::start(&daemon.addr, "custom", &["pool=ci", "os=Custom"], &dir.path().join("custom"));
    let cli = daemon.cli();
    let dimensions = |bot_id: &str| {
        let shown: serde_json::Value = serde_json::from_str(&cli.ok(&["bots", "show", "--json", bot_id])).unwrap();
        shown["dimensions"].clone()
    };
    let plain = dimensions("plain");
    let values = |key: &str| -> Vec<String> {
        plain[key].as_array().unwrap_or_else(|| panic!("{key} in {plain}")).iter().map(|v| v.to_string()).collect()
    };
    assert!(values("os").contains(&"\"Linux\"".to_string()), "{plain}");
    let cpu = values("cpu");
    assert_eq!(cpu.len(), 2, "{plain}");
    assert!(cpu[1].starts_with(&cpu[0][..cpu[0].len() - 1]) && cpu[1].ends_with("-64\""), "{plain}");
    let cores: usize = plain["cores"][0].as_str().unwrap().parse().unwrap();
    assert!(cores >= 1);
    let custom = dimensions("custom");
    assert_eq!(custom["os"], serde_json::json!(["Custom"]), "a configured key replaces what the bot found");
    assert!(custom["cpu"].is_array(), "{custom}");

    // A task written for Swarming asks for os=Linux: the plain bot has it, the custom one not.
    let output = cli.run(&["run", "-d", "pool=ci", "-d", "os=Linux", "--", "sh", "-c", "echo $SWARMING_BOT_ID"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "plain\n");
}

/// Runs `apiary-bot` where it must stop at once: its exit code and stderr.
fn refused_bot(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary("apiary-bot")).args(args).stdin(Stdio::null()).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bot_without_a_pool_or_with_a_bad_id_is_refused_with_a_message() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let work_dir = dir.path().join("bot");
    let work = work_dir.to_str().unwrap();
    let (code, stderr) = refused_bot(&["--server", &daemon.addr, "--id", "no-pool", "--work-dir", work]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("a bot must have a pool dimension"), "{stderr}");
    let (code, stderr) = refused_bot(&["--server", &daemon.addr, "--id", "bad id", "--dimension", "pool=ci"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--id: \"bad id\" is not a bot id"), "{stderr}");
    assert!(!daemon.cli().run(&["bots", "show", "no-pool"]).status.success(), "the daemon keeps no such bot");
}

#[test]
fn a_server_address_with_a_scheme_or_without_a_port_is_a_usage_error() {
    let (code, stderr) = refused_bot(&["--server", "https://apiary.example", "--id", "b", "--dimension", "pool=ci"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("has a scheme") && stderr.contains("e.g. apiary.example:7420"), "{stderr}");
    let output = Command::new(binary("apiary")).args(["--server", "apiary.example", "bots", "list"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no port; write HOST:PORT"), "{}", describe(&output));
}

#[test]
fn the_daemon_listens_on_a_host_name() {
    let dir = temp();
    let daemon = Daemon::start_with(&dir.path().join("data"), "localhost:0", &[]);
    daemon.cli().ok(&["bots", "list"]);
}

#[test]
fn a_terminate_request_for_a_bot_that_is_away_is_kept_until_it_comes_back() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let work_dir = dir.path().join("bot");
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &work_dir);
    cli.ok(&["bots", "terminate", "bot-1"]);
    assert_eq!(bot.wait_exit().code(), Some(0));

    // Shut down: the request is kept, and the bot exits as soon as it is back.
    let said = cli.ok(&["bots", "terminate", "bot-1"]);
    assert_eq!(
        said,
        "terminate requested: bot-1 has shut down; the request is kept, and it exits when it next connects, \
         before taking any task\n"
    );
    let task_id = cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "true"]);
    let mut restarted = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &work_dir);
    assert_eq!(restarted.wait_exit().code(), Some(0), "the restarted bot heard the request");
    assert_eq!(cli.show(&task_id)["state"], "PENDING", "it took no task first");

    // Gone without a word (kill -9): the same.
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &work_dir);
    let running = cli.wait_for_state(&task_id, "COMPLETED");
    assert_eq!(running["bot_id"], "bot-1");
    bot.kill9();
    let deadline = std::time::Instant::now() + apiary_tests::PATIENCE;
    let connected = || {
        let shown: serde_json::Value = serde_json::from_str(&cli.ok(&["bots", "show", "--json", "bot-1"])).unwrap();
        shown["connected"] == true
    };
    while connected() {
        assert!(std::time::Instant::now() < deadline, "the daemon never saw the connection close");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let said = cli.ok(&["bots", "terminate", "bot-1"]);
    assert!(said.starts_with("terminate requested: bot-1 is not connected; the request is kept"), "{said}");
    let mut restarted = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &work_dir);
    assert_eq!(restarted.wait_exit().code(), Some(0));
}

#[test]
fn an_http_request_on_the_port_is_logged_as_http() {
    use std::io::{Read, Write};
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut stream = std::net::TcpStream::connect(&daemon.addr).unwrap();
    stream.write_all(b"GET /api/swarming/v1/server/details HTTP/1.1\r\nHost: apiary\r\n\r\n").unwrap();
    let _ = stream.read_to_end(&mut Vec::new());
    let line = daemon.log.wait_for("the refusal", |line| line.contains("closing connection").then(|| line.to_string()));
    assert!(
        line.contains("the peer speaks HTTP (\"GET /api/swarming/v1/server/details HTTP/1.1\"), not Apiary's protocol"),
        "{line}"
    );
    assert!(!line.contains("bytes"), "not told as a huge frame: {line}");
}

#[test]
fn a_start_on_a_port_in_use_leaves_no_data_directory() {
    let dir = temp();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let data_dir = dir.path().join("data");
    let (status, log) = Daemon::start_refused_on(&data_dir, &address, &[]);
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("cannot listen on {address}")), "{log}");
    assert!(!data_dir.exists(), "the failed start left {} behind", data_dir.display());
}

#[test]
fn a_page_limit_over_1000_is_capped_not_refused() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let task_id = cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "true"]);
    let listed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["tasks", "list", "--json", "--limit", "5000"])).unwrap();
    assert_eq!(listed["tasks"][0]["task_id"], task_id.as_str());
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let events = cli.ok(&["bots", "events", "--json", "--limit", "5000", "bot-1"]);
    assert!(events.contains("bot_connected"), "{events}");
}

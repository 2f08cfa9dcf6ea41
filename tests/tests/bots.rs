//! End-to-end: bots that die, restart, fall silent, fail their health check,
//! or are told to terminate; and the events that record it.

use std::time::{Duration, Instant};

use apiary_tests::{Bot, Daemon, PATIENCE, describe, process_alive, send_signal, temp};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bot_json(daemon: &Daemon, bot_id: &str) -> serde_json::Value {
    serde_json::from_str(&daemon.cli().ok(&["bots", "show", "--json", bot_id])).unwrap()
}

/// The bot as the daemon shows it, once the daemon knows it.
fn known_bot_json(daemon: &Daemon, bot_id: &str) -> Option<serde_json::Value> {
    let shown = daemon.cli().run(&["bots", "show", "--json", bot_id]);
    shown.status.success().then(|| serde_json::from_slice(&shown.stdout).unwrap())
}

#[test]
fn a_killed_bot_ends_its_task_bot_died_and_frees_its_slot() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let task_id = cli.trigger(&["-d", "pool=ci", "--bot-ping-tolerance", "3", "--", "sleep", "60"]);
    cli.wait_for_state(&task_id, "RUNNING");
    bot.kill9();
    let died = cli.wait_for_state(&task_id, "BOT_DIED");
    assert_eq!(died["internal_failure"], true);
    assert!(bot_json(&daemon, "bot-1")["current_task"].is_null(), "the slot is free");
    assert_eq!(cli.run(&["collect", &task_id]).status.code(), Some(82));
}

#[test]
fn a_restarted_bot_loses_its_task_at_once() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    // The default tolerance is 20 minutes: only the new session can end it soon.
    let task_id = cli.trigger(&["-d", "pool=ci", "--", "sleep", "60"]);
    cli.wait_for_state(&task_id, "RUNNING");
    bot.kill9();
    let _restarted = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let died = cli.wait_for_state(&task_id, "BOT_DIED");
    assert!(died["failure_reason"].as_str().unwrap().contains("restarted"), "{died}");
}

/// `apiary-bot`'s exit code when another process took over its bot id.
const SUPERSEDED: i32 = 3;

/// The daemon's log at debug level: a line for each task event too.
const DEBUG_LOG: &[&str] = &["--log-level", "debug"];

/// How many sessions of `bot_id` the daemon recorded (a line each) by the
/// time it logged that `task_id` ended (a debug line: see `DEBUG_LOG`): every
/// line before that one is read.
fn sessions_logged(daemon: &Daemon, bot_id: &str, task_id: &str) -> usize {
    let ended = format!("task {task_id} ended");
    daemon.log.wait_for("the task's end in the log", |line| line.contains(&ended).then_some(()));
    let recorded = format!("bot {bot_id} connected (session");
    daemon.log.all().iter().filter(|line| line.contains(&recorded)).count()
}

#[test]
fn two_bots_with_one_id_the_newer_takes_over_and_the_older_exits_without_a_storm() {
    let dir = temp();
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", DEBUG_LOG);
    let mut older = Bot::start(&daemon.addr, "twin", &["pool=ci"], &dir.path().join("older"));
    let _newer = Bot::start(&daemon.addr, "twin", &["pool=ci"], &dir.path().join("newer"));
    assert_eq!(older.wait_exit().code(), Some(SUPERSEDED), "log: {:#?}", older.log.all());
    older.log.wait_for("the older bot saying why it exits", |line| {
        line.contains("another apiary-bot with this id took over; exiting instead of reconnecting").then_some(())
    });
    daemon.log.wait_for("the daemon closing the older connection", |line| {
        (line.contains("closing connection: ") && line.contains("took over this bot id")).then_some(())
    });
    // The newer bot serves the id, and the two processes made two sessions, not a storm.
    let cli = daemon.cli();
    let task_id = cli.trigger(&["-d", "pool=ci", "-d", "id=twin", "--", "true"]);
    cli.wait_for_state(&task_id, "COMPLETED");
    assert_eq!(sessions_logged(&daemon, "twin", &task_id), 2, "log: {:#?}", daemon.log.all());
}

#[test]
fn a_bot_whose_id_is_taken_over_while_running_stops_its_task_and_exits() {
    let dir = temp();
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", DEBUG_LOG);
    let mut older = Bot::start(&daemon.addr, "twin", &["pool=ci"], &dir.path().join("older"));
    let cli = daemon.cli();
    let marker = dir.path().join("still-running");
    let script = format!("touch '{}'; sleep 60; rm '{}'", marker.display(), marker.display());
    let task_id = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", &script]);
    cli.wait_for_state(&task_id, "RUNNING");
    let _newer = Bot::start(&daemon.addr, "twin", &["pool=ci"], &dir.path().join("newer"));
    let died = cli.wait_for_state(&task_id, "BOT_DIED");
    assert_eq!(died["internal_failure"], true);
    assert_eq!(older.wait_exit().code(), Some(SUPERSEDED), "log: {:#?}", older.log.all());
    assert_eq!(sessions_logged(&daemon, "twin", &task_id), 2, "log: {:#?}", daemon.log.all());
}

#[test]
fn an_idempotent_task_whose_bot_died_completes_on_a_second_bot() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut first = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("b1"));
    let cli = daemon.cli();
    let script = r#"if [ "$APIARY_BOT_ID" = bot-1 ]; then sleep 60; fi; echo done on $APIARY_BOT_ID"#;
    let task_id =
        cli.trigger(&["--idempotent", "-d", "pool=ci", "--bot-ping-tolerance", "3", "--", "sh", "-c", script]);
    cli.wait_for_state(&task_id, "RUNNING");
    first.kill9();
    let _second = Bot::start(&daemon.addr, "bot-2", &["pool=ci"], &dir.path().join("b2"));
    let collected = cli.run(&["collect", &task_id]);
    assert_eq!(collected.status.code(), Some(0), "{}", describe(&collected));
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "done on bot-2\n");
    let shown = cli.show(&task_id);
    assert_eq!((shown["try_number"].as_i64(), shown["bot_id"].as_str()), (Some(2), Some("bot-2")));
    assert!(shown["run_id"].as_str().unwrap().ends_with('2'));
}

#[test]
fn a_report_after_bot_died_is_refused_and_the_bot_stops_its_process() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; while true; do sleep 0.2; done", pid_file.display());
    let task_id = cli.trigger(&["-d", "pool=ci", "--bot-ping-tolerance", "3", "--", "sh", "-c", &script]);
    wait_until("the task writes its pid", || std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')));
    let task_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // Freeze the bot (not its task, which has its own process group) past the tolerance.
    send_signal(bot.pid(), libc::SIGSTOP);
    cli.wait_for_state(&task_id, "BOT_DIED");
    send_signal(bot.pid(), libc::SIGCONT);
    wait_until("the bot stops the orphaned task", || !process_alive(task_pid));
    assert_eq!(cli.show(&task_id)["state"], "BOT_DIED", "the late report changed nothing");
}

#[test]
fn a_failing_health_check_quarantines_the_bot_until_it_passes() {
    let dir = temp();
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--long-poll-secs", "1"]);
    let healthy = dir.path().join("healthy");
    let check = format!("test -f {} || {{ echo disk is sad; exit 3; }}", healthy.display());
    let _bot =
        Bot::start_with(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"), &["--health-check", &check]);
    let cli = daemon.cli();
    wait_until("the bot is quarantined", || {
        known_bot_json(&daemon, "bot-1").is_some_and(|bot| bot["quarantine_reason"].is_string())
    });
    assert!(bot_json(&daemon, "bot-1")["quarantine_reason"].as_str().unwrap().contains("disk is sad"));
    let refused = cli.trigger(&["-d", "pool=ci", "--", "true"]);
    assert_eq!(cli.show(&refused)["state"], "NO_RESOURCE", "a quarantined bot is no capacity");
    // Quarantined by a person as well: lifting that leaves the check's, and says so.
    cli.ok(&["bots", "quarantine", "--reason", "maintenance", "bot-1"]);
    for _ in 0..2 {
        let output = cli.run(&["bots", "unquarantine", "bot-1"]);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "unquarantined bot-1\n");
        let warning = String::from_utf8_lossy(&output.stderr);
        assert!(warning.starts_with("apiary: bot-1 is still quarantined: health check failed (exit 3)"), "{warning}");
        assert!(warning.contains("disk is sad"), "{warning}");
    }
    let task_id = cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "echo", "healthy again"]);
    assert_eq!(cli.show(&task_id)["state"], "PENDING");
    std::fs::write(&healthy, b"").unwrap();
    let collected = cli.run(&["collect", &task_id]);
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "healthy again\n", "{}", describe(&collected));
    assert!(bot_json(&daemon, "bot-1")["quarantine_reason"].is_null());
    let output = cli.run(&["bots", "unquarantine", "bot-1"]);
    assert!(output.stderr.is_empty(), "no warning once the check passes: {}", describe(&output));
}

#[test]
fn server_side_quarantine_and_terminate() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    wait_until("the bot is known", || known_bot_json(&daemon, "bot-1").is_some());
    cli.ok(&["bots", "quarantine", "--reason", "maintenance", "bot-1"]);
    let task_id = cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "--", "echo", "after maintenance"]);
    assert_eq!(cli.show(&task_id)["state"], "PENDING");
    cli.ok(&["bots", "unquarantine", "bot-1"]);
    assert_eq!(cli.run(&["collect", &task_id]).status.code(), Some(0));
    cli.ok(&["bots", "terminate", "bot-1"]);
    let child = bot.wait_exit();
    assert_eq!(child.code(), Some(0), "the bot exits cleanly");
    assert_eq!(bot_json(&daemon, "bot-1")["shut_down"], true);
    let unknown = cli.run(&["bots", "terminate", "nobody"]);
    assert_eq!(unknown.status.code(), Some(88));
}

#[test]
fn bot_events_list_newest_first_with_paging() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    for _ in 0..2 {
        assert_eq!(cli.run(&["run", "-d", "pool=ci", "--", "true"]).status.code(), Some(0));
    }
    let page = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["bots", "events", "--json", "--limit", "2"];
        args.extend_from_slice(extra);
        args.push("bot-1");
        serde_json::from_str(&cli.ok(&args)).unwrap()
    };
    let first = page(&[]);
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&first), vec!["task_completed", "task_assigned"]);
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = page(&["--cursor", &cursor]);
    assert_eq!(names(&second), vec!["task_completed", "task_assigned"]);
    let last = page(&["--cursor", second["next_cursor"].as_str().unwrap()]);
    assert_eq!(names(&last), vec!["bot_connected"]);
    assert!(last["next_cursor"].is_null());
    assert_eq!(first["events"][0]["dimensions"]["pool"], serde_json::json!(["ci"]));
}

/// Runs `apiary-bot` where it must refuse to start: returns its exit code and stderr.
fn refused_bot(addr: &str, work_dir: &std::path::Path) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(apiary_tests::binary("apiary-bot"))
        .args(["--server", addr, "--id", "bot-refused", "--dimension", "pool=ci", "--work-dir"])
        .arg(work_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start apiary-bot");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for apiary-bot") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("apiary-bot started in {} where it should have refused", work_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn the_work_root_is_private_and_one_others_could_write_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mode_of = |path: &std::path::Path| std::fs::metadata(path).unwrap().mode() & 0o7777;

    let root = dir.path().join("fresh/bot");
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &root);
    let ran = daemon.cli().run(&["run", "-d", "pool=ci", "--named-cache", "tools=tools", "--", "sh", "-c", "pwd"]);
    assert_eq!(ran.status.code(), Some(0), "{}", describe(&ran));
    for private in [root.clone(), root.join("w"), root.join("c"), root.join("c/tools")] {
        assert_eq!(mode_of(&private), 0o700, "{}", private.display());
    }
    let run_dir = String::from_utf8(ran.stdout).unwrap().trim().trim_end_matches("/work").to_string();
    assert!(run_dir.starts_with(&root.join("w").display().to_string()), "{run_dir}");
    bot.kill9();

    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, stderr) = refused_bot(&daemon.addr, &shared);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("refusing the work directory {}", shared.display())), "{stderr}");
    assert!(stderr.contains("mode 0777"), "{stderr}");
    assert!(!shared.join("w").exists(), "nothing was made in a refused root");

    // Only root can give a directory away; the unit tests cover the check otherwise.
    // SAFETY: geteuid only reads the process's user id.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        let path = std::ffi::CString::new(foreign.display().to_string()).unwrap();
        // SAFETY: chown reads the NUL-terminated path it is given.
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
        let (code, stderr) = refused_bot(&daemon.addr, &foreign);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("owned by user id 65534, not by this bot's user id 0"), "{stderr}");
    }
}

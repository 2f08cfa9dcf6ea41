//! End-to-end: how the bot runs a task — timeouts, graceful termination,
//! environment, secrets, named caches, live output and the output cap.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use apiary_tests::{Bot, Daemon, binary, contains, describe, files_containing, process_alive, temp};

#[test]
fn hard_and_io_timeouts_end_the_task_timed_out() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let hard = cli.trigger(&["-d", "pool=ci", "--hard-timeout", "1", "--grace-period", "1", "--", "sleep", "30"]);
    let io = cli.trigger(&[
        "-d",
        "pool=ci",
        "--io-timeout",
        "1",
        "--grace-period",
        "1",
        "--",
        "sh",
        "-c",
        "echo once; sleep 30",
    ]);
    let collected = cli.run(&["collect", &hard]);
    assert_eq!(collected.status.code(), Some(81), "TIMED_OUT: {}", describe(&collected));
    let shown = cli.show(&hard);
    assert_eq!((shown["timeout"].as_str(), shown["failure"].as_bool()), (Some("hard"), Some(true)));
    let collected = cli.run(&["collect", &io]);
    assert_eq!(collected.status.code(), Some(81), "{}", describe(&collected));
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "once\n");
    assert_eq!(cli.show(&io)["timeout"], "io");
}

#[test]
fn termination_is_graceful_then_forceful_and_leaves_no_process_behind() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let polite = "trap 'echo cleaned up; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let stubborn = "trap '' TERM; echo ready; while true; do sleep 0.1; done";
    let pid_file = dir.path().join("grandchild");
    let parent = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
    let polite =
        cli.trigger(&["-d", "pool=ci", "--hard-timeout", "1", "--grace-period", "30", "--", "sh", "-c", polite]);
    let stubborn =
        cli.trigger(&["-d", "pool=ci", "--hard-timeout", "1", "--grace-period", "1", "--", "sh", "-c", stubborn]);
    let parent = cli.trigger(&["-d", "pool=ci", "--hard-timeout", "1", "--", "sh", "-c", &parent]);

    let collected = cli.run(&["collect", &polite]);
    // (sh may also say its `sleep` was Terminated: the whole group got the signal.)
    let text = String::from_utf8_lossy(&collected.stdout);
    assert!(text.starts_with("ready\n") && text.ends_with("cleaned up\n"), "{}", describe(&collected));
    assert_eq!(cli.show(&polite)["exit_code"], 0, "it exited by itself within the grace period");
    cli.run(&["collect", &stubborn]);
    assert_eq!(cli.show(&stubborn)["exit_code"], -1, "SIGKILLed after the grace period");
    cli.run(&["collect", &parent]);
    let grandchild: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(!process_alive(grandchild), "the grandchild {grandchild} died with the task");
}

#[test]
fn environment_prefixes_cwd_and_outdir() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let script = r#"echo "A=$A"; echo "HOME=$(printenv HOME || echo unset)"; echo "$PATH" | cut -d: -f1; pwd; test -d "$APIARY_OUTDIR" && echo outdir; echo "$1""#;
    let output = daemon.cli().run(&[
        "run",
        "-d",
        "pool=ci",
        "--env",
        "A=1",
        "--env",
        "HOME=",
        "--env-prefix",
        "PATH=tools/bin",
        "--cwd",
        "sub",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        "${APIARY_OUTDIR}/result.txt",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], &["A=1", "HOME=unset"]);
    assert!(lines[2].starts_with('/') && lines[2].ends_with("/tools/bin"), "{text}");
    let work_dir = lines[2].trim_end_matches("/tools/bin");
    assert_eq!(lines[3], format!("{work_dir}/sub"));
    assert_eq!(lines[4], "outdir");
    assert!(lines[5].ends_with("/result.txt") && lines[5].starts_with('/') && !lines[5].contains('$'), "{text}");
}

#[test]
fn secret_bytes_reach_the_task_and_nowhere_else() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let bot_dir = dir.path().join("bot");
    let bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &bot_dir);
    let cli = daemon.cli();
    let secret = format!("apiary-secret-{}", std::process::id());
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, &secret).unwrap();
    // The task proves it sees the secret without printing it.
    let check = format!(
        "test \"$(cat \"$APIARY_SECRET_BYTES_PATH\")\" = \"$(cat {})\" && stat -c %a \"$APIARY_SECRET_BYTES_PATH\"",
        secret_file.display()
    );
    let task_id =
        cli.trigger(&["-d", "pool=ci", "--secret-bytes-file", secret_file.to_str().unwrap(), "--", "sh", "-c", &check]);
    let collected = cli.run(&["collect", &task_id]);
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "600\n", "{}", describe(&collected));
    let mut shown_everywhere = Vec::new();
    for args in [
        vec!["tasks", "show", "--json", &task_id],
        vec!["tasks", "show", &task_id],
        vec!["tasks", "list", "--json"],
        vec!["bots", "events", "--json", "bot-1"],
        vec!["bots", "list", "--json"],
    ] {
        let output = cli.run(&args);
        shown_everywhere.extend(output.stdout);
        shown_everywhere.extend(output.stderr);
    }
    assert!(!contains(&shown_everywhere, secret.as_bytes()), "no CLI output shows the secret");
    assert!(cli.show(&task_id)["has_secret_bytes"].as_bool().unwrap());
    let logs = daemon.log.all().join("\n") + &bot.log.all().join("\n");
    assert!(!logs.contains(&secret), "no log line shows the secret");
    assert_eq!(files_containing(&bot_dir, secret.as_bytes()), Vec::<String>::new(), "the bot's disk forgot it");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join("data")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "only the daemon's user reads its data directory");
}

#[test]
fn a_named_cache_keeps_its_files_and_draws_its_next_task_to_its_bot() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _holder = Bot::start(&daemon.addr, "holder", &["pool=ci"], &dir.path().join("holder"));
    let cli = daemon.cli();
    let fill = cli.run(&[
        "run",
        "-d",
        "pool=ci",
        "--named-cache",
        "git=cache/git",
        "--",
        "sh",
        "-c",
        "echo kept > cache/git/file",
    ]);
    assert_eq!(fill.status.code(), Some(0), "{}", describe(&fill));
    let _other = Bot::start(&daemon.addr, "other", &["pool=ci"], &dir.path().join("other"));
    // Wait until the holder is idle again and has reported its cache.
    let deadline = std::time::Instant::now() + apiary_tests::PATIENCE;
    loop {
        let bot: serde_json::Value = serde_json::from_str(&cli.ok(&["bots", "show", "--json", "holder"])).unwrap();
        let reported = bot["caches"].as_array().is_some_and(|caches| caches.iter().any(|cache| cache["name"] == "git"));
        if reported && bot["status"] == "idle" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the holder never reported its cache: {bot}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let read = cli.trigger(&["-d", "pool=ci", "--named-cache", "git=cache/git", "--", "cat", "cache/git/file"]);
    let collected = cli.run(&["collect", &read]);
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "kept\n", "{}", describe(&collected));
    assert_eq!(cli.show(&read)["bot_id"], "holder");
}

#[test]
fn follow_shows_output_before_the_task_ends() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let gate = dir.path().join("gate");
    let script = format!("echo first; while [ ! -f {} ]; do sleep 0.1; done; echo second", gate.display());
    let task_id = daemon.cli().trigger(&["-d", "pool=ci", "--", "sh", "-c", &script]);
    let mut follow = Command::new(binary("apiary"))
        .args(["--server", &daemon.addr, "collect", "--follow", &task_id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "first\n");
    assert_eq!(daemon.cli().show(&task_id)["state"], "RUNNING", "the output came while the task ran");
    std::fs::write(&gate, b"").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert_eq!(follow.wait().unwrap().code(), Some(0));
}

#[test]
fn output_over_the_cap_is_truncated_with_a_marker() {
    let dir = temp();
    let daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--max-output-bytes", "1000"]);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let output = daemon.cli().run(&["run", "-d", "pool=ci", "--", "seq", "1", "10000"]);
    assert_eq!(output.status.code(), Some(0), "the task runs on: {}", describe(&output));
    let expected: String = (1..=10000).map(|n| format!("{n}\n")).collect();
    assert_eq!(&output.stdout[..1000], &expected.as_bytes()[..1000]);
    let rest = String::from_utf8_lossy(&output.stdout[1000..]);
    assert!(rest.contains("output truncated at 1000 bytes"), "{rest}");
}

#[test]
fn a_command_that_cannot_start_ends_client_error_with_the_reason() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let task_id = cli.trigger(&["-d", "pool=ci", "--", "/no/such/program"]);
    let collected = cli.run(&["collect", &task_id]);
    assert_eq!(collected.status.code(), Some(86), "CLIENT_ERROR: {}", describe(&collected));
    let shown = cli.show(&task_id);
    assert_eq!((shown["state"].as_str(), shown["internal_failure"].as_bool()), (Some("CLIENT_ERROR"), Some(false)));
    assert!(shown["failure_reason"].as_str().unwrap().contains("/no/such/program"), "{shown}");
    // The bot goes on serving.
    assert_eq!(cli.run(&["run", "-d", "pool=ci", "--", "true"]).status.code(), Some(0));
}

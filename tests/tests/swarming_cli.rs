//! End-to-end: the commands a Swarming user reaches for. `collect` of several
//! tasks into an output directory, `--optional-dimension`, query states and
//! creation windows with counts (across the daemon's history runs), cancel by
//! tags, a bot's tasks, bot counts, deleting and terminating bots, `reproduce`.

use std::time::{Duration, Instant};

use apiary_tests::{Bot, Daemon, PATIENCE, describe, message, temp};
use serde_json::Value;

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// The task ids of a `tasks list --json`-shaped page.
fn listed_ids(page: &Value) -> Vec<String> {
    page["tasks"].as_array().unwrap().iter().map(|task| task["task_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn collect_of_several_tasks_writes_a_summary_and_a_folder_per_task() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let passing = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", "echo first"]);
    let failing = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", "echo second; exit 3"]);
    let out_dir = dir.path().join("collected");
    let json_file = dir.path().join("summary-copy.json");
    let collected = cli.run(&[
        "collect",
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--json-output",
        json_file.to_str().unwrap(),
        &passing,
        &failing,
    ]);
    assert_eq!(collected.status.code(), Some(3), "the first task that did not succeed: {}", describe(&collected));
    assert!(collected.stdout.is_empty(), "outputs go into the directory: {}", describe(&collected));
    let summary = json(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap());
    assert_eq!(summary[&passing]["results"]["state"], "COMPLETED");
    assert_eq!(summary[&failing]["results"]["exit_code"], 3);
    assert_eq!(summary[&failing]["output"], "second\n");
    assert_eq!(std::fs::read_to_string(out_dir.join(&passing).join("output.txt")).unwrap(), "first\n");
    assert_eq!(std::fs::read_to_string(out_dir.join(&failing).join("output.txt")).unwrap(), "second\n");
    assert_eq!(json(&std::fs::read_to_string(&json_file).unwrap()), summary);
    // Without a directory, the outputs go to stdout one after the other, and `-` is stdout for the summary.
    let both = cli.run(&["collect", &passing, &passing]);
    assert_eq!((both.status.code(), both.stdout.as_slice()), (Some(0), &b"first\nfirst\n"[..]));
    let to_stdout = json(&cli.ok(&["collect", "--json-output", "-", &passing]));
    assert_eq!(to_stdout[&passing]["output"], "first\n");
}

#[test]
fn an_optional_dimension_is_tried_first_and_given_up_after_its_time() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci", "gpu=none"], &dir.path().join("bot"));
    let cli = daemon.cli();
    // No bot has a GPU: the first slice waits its second, then the task falls back.
    let fell_back = cli.trigger(&[
        "-d",
        "pool=ci",
        "--optional-dimension",
        "gpu=nvidia:1",
        "--wait-for-capacity",
        "--expiration",
        "60",
        "--",
        "true",
    ]);
    let ended = cli.wait_for_state(&fell_back, "COMPLETED");
    assert_eq!(ended["current_task_slice"], 1, "{ended}");
    let slices = ended["request"]["task_slices"].as_array().unwrap();
    assert_eq!(slices.len(), 2);
    assert_eq!((slices[0]["expiration_secs"].as_u64(), slices[1]["expiration_secs"].as_u64()), (Some(1), Some(59)));
    let first_dimensions = &slices[0]["properties"]["dimensions"];
    assert_eq!(first_dimensions[1], serde_json::json!({"key": "gpu", "value": "nvidia"}), "{first_dimensions}");
    // A bot with the optional dimension takes the task in its first slice.
    let preferred = cli.trigger(&["-d", "pool=ci", "--optional-dimension", "gpu=none:30", "--", "true"]);
    assert_eq!(cli.wait_for_state(&preferred, "COMPLETED")["current_task_slice"], 0);
    let too_long = cli.run(&["trigger", "--optional-dimension", "gpu=nvidia:3600", "--", "true"]);
    assert_eq!(too_long.status.code(), Some(2), "{}", describe(&too_long));
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("--optional-dimension"), "{}", describe(&too_long));
}

/// Lines of the daemon's log that say it took a snapshot.
fn snapshots_taken(daemon: &Daemon) -> usize {
    let is_snapshot = |line: &String| message(line).is_some_and(|text| text.starts_with("snapshot "));
    daemon.log.all().iter().filter(|line| is_snapshot(line) && line.contains(" after record ")).count()
}

#[test]
fn query_states_windows_and_counts_reach_tasks_in_history_runs() {
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", &["--snapshot-interval-secs", "1"]);
    let bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let succeeded = cli.trigger(&["-d", "pool=ci", "--idempotent", "--", "true"]);
    cli.wait_for_state(&succeeded, "COMPLETED");
    let deduped = cli.trigger(&["-d", "pool=ci", "--idempotent", "--", "true"]);
    let failed = cli.trigger(&["-d", "pool=ci", "--", "false"]);
    cli.wait_for_state(&failed, "COMPLETED");
    let between = cli.show(&failed)["created_ts"].as_str().unwrap().to_string();
    // Ended tasks move to a history run with the next snapshot; a restart reads them from there.
    let before = snapshots_taken(&daemon);
    wait_until("a snapshot after the tasks ended", || snapshots_taken(&daemon) > before);
    drop(bot);
    daemon.restart();
    let cli = daemon.cli();
    let pending = cli.trigger(&["-d", "pool=ci", "--wait-for-capacity", "--", "true"]);
    let list = |state: &str| listed_ids(&json(&cli.ok(&["tasks", "list", "--json", "--state", state])));
    let count = |args: &[&str]| {
        let counted = json(&cli.ok(&[&["tasks", "count", "--json"], args].concat()));
        assert_eq!(counted["capped"], false);
        counted["count"].as_u64().unwrap()
    };
    assert_eq!(list("COMPLETED_FAILURE"), [failed.as_str()]);
    assert_eq!(list("DEDUPED"), [deduped.as_str()]);
    assert_eq!(list("completed_success"), [deduped.clone(), succeeded.clone()]);
    assert_eq!(list("PENDING_RUNNING"), [pending.as_str()]);
    assert_eq!(list("ALL"), [pending.clone(), failed.clone(), deduped.clone(), succeeded.clone()]);
    assert_eq!(count(&[]), 4);
    assert_eq!(count(&["--state", "COMPLETED"]), 3);
    assert_eq!(count(&["--start", &between]), 2, "the failed task and the pending one");
    assert_eq!(count(&["--end", &between]), 2, "the two that came before the failed one");
    assert_eq!(cli.ok(&["tasks", "count", "--state", "DEDUPED"]), "1\n");
}

#[test]
fn cancel_by_tags_cancels_every_pending_task_with_all_the_tags() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let waiting = ["-d", "pool=ci", "--wait-for-capacity"];
    let tagged: Vec<String> = (0..3)
        .map(|_| cli.trigger(&[&waiting[..], &["--tag", "build:7", "--tag", "kind:test", "--", "true"]].concat()))
        .collect();
    let other = cli.trigger(&[&waiting[..], &["--tag", "build:7", "--tag", "kind:lint", "--", "true"]].concat());
    let printed = cli.ok(&["cancel", "--tag", "build:7", "--tag", "kind:test"]);
    assert_eq!(printed, "canceled 3 pending tasks\n");
    for task_id in &tagged {
        assert_eq!(cli.show(task_id)["state"], "CANCELED");
    }
    assert_eq!(cli.show(&other)["state"], "PENDING");
    assert_eq!(cli.ok(&["cancel", "--tag", "build:7", "--tag", "kind:test"]), "canceled 0 pending tasks\n");
    let missing_tags = cli.run(&["cancel"]);
    assert_eq!(missing_tags.status.code(), Some(2), "{}", describe(&missing_tags));
}

#[test]
fn a_bots_tasks_are_listed_newest_first_and_bots_are_counted() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot-1"));
    let _other = Bot::start(&daemon.addr, "bot-2", &["pool=ci", "os=Other"], &dir.path().join("bot-2"));
    let cli = daemon.cli();
    cli.ok(&["bots", "quarantine", "--reason", "kept for this test", "bot-2"]);
    let first = cli.trigger(&["-d", "pool=ci", "--", "true"]);
    cli.wait_for_state(&first, "COMPLETED");
    let second = cli.trigger(&["-d", "pool=ci", "--", "true"]);
    cli.wait_for_state(&second, "COMPLETED");
    let page = json(&cli.ok(&["bots", "tasks", "--json", "bot-1"]));
    assert_eq!(listed_ids(&page), [second.clone(), first.clone()]);
    assert!(page["next_cursor"].is_null());
    let paged = cli.run(&["bots", "tasks", "--limit", "1", "bot-1"]);
    assert!(paged.status.success(), "{}", describe(&paged));
    let stdout = String::from_utf8_lossy(&paged.stdout);
    assert!(stdout.lines().nth(1).unwrap().starts_with(&second), "{stdout}");
    let more = String::from_utf8_lossy(&paged.stderr);
    assert!(more.starts_with("more: apiary bots tasks --cursor ") && more.contains("--limit 1 bot-1"), "{more}");
    let counts = json(&cli.ok(&["bots", "count", "--json"]));
    assert_eq!((counts["count"].as_u64(), counts["quarantined"].as_u64()), (Some(2), Some(1)), "{counts}");
    assert_eq!((counts["connected"].as_u64(), counts["dead"].as_u64()), (Some(2), Some(0)), "{counts}");
    let others = json(&cli.ok(&["bots", "count", "--json", "-d", "os=Other"]));
    assert_eq!(others["count"], 1);
    assert!(cli.ok(&["bots", "count"]).starts_with("count:"));
    let unknown = cli.run(&["bots", "tasks", "nobody"]);
    assert_eq!(unknown.status.code(), Some(88), "{}", describe(&unknown));
}

#[test]
fn only_a_disconnected_bot_is_deleted() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let refused = cli.run(&["bots", "delete", "bot-1"]);
    assert_eq!(refused.status.code(), Some(88), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is connected"), "{}", describe(&refused));
    bot.kill9();
    wait_until("the daemon sees the bot gone", || {
        json(&cli.ok(&["bots", "show", "--json", "bot-1"]))["connected"] == false
    });
    assert_eq!(cli.ok(&["bots", "delete", "bot-1"]), "deleted bot-1\n");
    assert_eq!(cli.run(&["bots", "show", "bot-1"]).status.code(), Some(88));
    assert_eq!(json(&cli.ok(&["bots", "count", "--json"]))["count"], 0);
}

#[test]
fn terminate_with_a_reason_waits_for_the_bot_to_shut_down() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let printed = cli.ok(&["bots", "terminate", "--reason", "host retired", "--wait", "bot-1"]);
    assert!(printed.ends_with("bot-1 has shut down\n"), "{printed}");
    assert!(bot.wait_exit().success());
    let events = json(&cli.ok(&["bots", "events", "--json", "bot-1"]));
    let asked = events["events"].as_array().unwrap().iter().find(|event| event["event"] == "bot_terminate_requested");
    assert_eq!(asked.expect("a terminate event")["message"], "host retired", "{events}");
}

#[test]
fn reproduce_runs_the_tasks_command_here_with_its_environment() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let script = "echo \"$GREETING $SWARMING_TASK_ID $SWARMING_HEADLESS\" > \"$1/said\"; pwd; cat \"$1/said\"; \
                  cat \"$2\"; exit 4";
    let task_id = cli.trigger(&[
        "-d",
        "pool=ci",
        "--wait-for-capacity",
        "--env",
        "GREETING=hello",
        "--cwd",
        "sub/dir",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        "${ISOLATED_OUTDIR}${EXECUTABLE_SUFFIX}",
        "${SWARMING_BOT_FILE}",
    ]);
    let work = dir.path().join("repro");
    let reproduced = cli.run(&["reproduce", "--work-dir", work.to_str().unwrap(), &task_id]);
    assert_eq!(reproduced.status.code(), Some(4), "the command's exit code: {}", describe(&reproduced));
    let stdout = String::from_utf8_lossy(&reproduced.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].ends_with("repro/work/sub/dir"), "{stdout}");
    assert_eq!(lines[1], format!("hello {task_id} 1"));
    assert_eq!(lines[2], "{}", "the bot file holds an empty object: {stdout}");
    assert_eq!(std::fs::read_to_string(work.join("out").join("said")).unwrap(), format!("hello {task_id} 1\n"));
    assert_eq!(cli.show(&task_id)["state"], "PENDING", "reproducing changes nothing on the daemon");
    let unknown = cli.run(&["reproduce", "0000000000000010"]);
    assert_eq!(unknown.status.code(), Some(88), "{}", describe(&unknown));
}

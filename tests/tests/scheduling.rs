//! End-to-end: Swarming's scheduling rules through the real CLI, daemon and bots.

use std::path::Path;

use apiary_tests::{Bot, Daemon, describe, temp};
use serde_json::json;

/// Appends `name` to `file`, so the order tasks ran in can be read back.
fn record(file: &Path, name: &str) -> String {
    format!("echo {name} >> {}", file.display())
}

#[test]
fn priority_first_then_submission_order_on_one_bot() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let order = dir.path().join("order");
    let mut ids = Vec::new();
    for (name, priority) in [("late-low", "200"), ("first-high", "10"), ("second-high", "10"), ("middle", "100")] {
        let script = record(&order, name);
        ids.push(cli.trigger(&[
            "--wait-for-capacity",
            "-d",
            "pool=ci",
            "--priority",
            priority,
            "--",
            "sh",
            "-c",
            &script,
        ]));
    }
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    for id in &ids {
        cli.wait_for_state(id, "COMPLETED");
    }
    let ran = std::fs::read_to_string(&order).unwrap();
    assert_eq!(ran, "first-high\nsecond-high\nmiddle\nlate-low\n");
}

#[test]
fn alternatives_match_any_value_of_multi_valued_bots() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "ubuntu-1", &["pool=ci", "os=Linux", "os=Ubuntu-22"], &dir.path().join("b"));
    let cli = daemon.cli();
    let matched = cli.run(&["run", "-d", "pool=ci", "-d", "os=Mac|Ubuntu-22", "--", "echo", "matched"]);
    assert_eq!(matched.status.code(), Some(0), "{}", describe(&matched));
    let unmatched = cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "-d", "os=Mac|Windows", "--", "true"]);
    let shown = cli.show(&unmatched);
    assert_eq!(shown["state"], "PENDING");
    assert_eq!(shown["pending"]["matching_bots"], 0);
    let bots: serde_json::Value =
        serde_json::from_str(&cli.ok(&["bots", "list", "--json", "--dimension", "os=Mac|Ubuntu-22"])).unwrap();
    assert_eq!(bots.as_array().map(Vec::len), Some(1));
}

#[test]
fn a_task_naming_a_bot_by_id_runs_on_that_bot() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _first = Bot::start(&daemon.addr, "bot-a", &["pool=ci"], &dir.path().join("a"));
    let _second = Bot::start(&daemon.addr, "bot-b", &["pool=ci"], &dir.path().join("b"));
    let cli = daemon.cli();
    for _ in 0..3 {
        let task_id = cli.trigger(&["-d", "pool=ci", "-d", "id=bot-b", "--", "true"]);
        let done = cli.wait_for_state(&task_id, "COMPLETED");
        assert_eq!(done["bot_id"], "bot-b", "{done}");
    }
    let nobody = cli.run(&["run", "-d", "pool=ci", "-d", "id=bot-c", "--", "true"]);
    assert_eq!(nobody.status.code(), Some(85), "NO_RESOURCE: {}", describe(&nobody));
}

#[test]
fn slices_fall_back_after_expiration_and_the_last_one_expires() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let slice = |dimensions: serde_json::Value, expiration: u32, wait: bool, word: &str| json!({"properties": {"command": ["echo", word], "dimensions": dimensions}, "expiration_secs": expiration, "wait_for_capacity": wait});
    let request = json!({"name": "fallback", "task_slices": [
        slice(json!([{"key": "pool", "value": "ci"}, {"key": "gpu", "value": "big"}]), 1, true, "gpu"),
        slice(json!([{"key": "pool", "value": "ci"}]), 60, false, "cpu"),
    ]});
    let file = dir.path().join("request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let task_id = cli.trigger(&["--request", file.to_str().unwrap()]);
    let done = cli.wait_for_state(&task_id, "COMPLETED");
    assert_eq!(done["current_task_slice"], 1);
    assert_eq!(cli.ok(&["tasks", "output", &task_id]), "cpu\n");

    let expiring =
        cli.trigger(&["--wait-for-capacity", "--expiration", "1", "-d", "pool=ci", "-d", "gpu=big", "--", "true"]);
    let collected = cli.run(&["collect", &expiring]);
    assert_eq!(collected.status.code(), Some(80), "EXPIRED: {}", describe(&collected));
    assert!(cli.show(&expiring)["abandoned_ts"].is_string());
}

#[test]
fn no_resource_at_once_when_no_bot_could_ever_run_it() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci", "os=Linux"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let task_id = cli.trigger(&["-d", "pool=ci", "-d", "os=Mac", "--", "true"]);
    assert_eq!(cli.show(&task_id)["state"], "NO_RESOURCE");
    let collected = cli.run(&["collect", &task_id]);
    assert_eq!(collected.status.code(), Some(85), "{}", describe(&collected));
}

#[test]
fn an_idempotent_task_returns_the_first_runs_output() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let args = ["--idempotent", "-d", "pool=ci", "--", "sh", "-c", "date +%s%N"];
    let first = cli.trigger(&args);
    let first_output = {
        let collected = cli.run(&["collect", &first]);
        assert_eq!(collected.status.code(), Some(0), "{}", describe(&collected));
        collected.stdout
    };
    let second = cli.trigger(&args);
    let shown = cli.show(&second);
    assert_eq!(shown["state"], "COMPLETED");
    assert_eq!(shown["try_number"], 0);
    assert_eq!(shown["deduped_from"], cli.show(&first)["run_id"]);
    assert_eq!(cli.run(&["collect", &second]).stdout, first_output);
}

#[test]
fn cancel_a_pending_task_and_kill_a_running_one() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let pending = cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "-d", "os=Mac", "--", "true"]);
    assert!(cli.ok(&["cancel", &pending]).contains("canceled"));
    assert_eq!(cli.run(&["collect", &pending]).status.code(), Some(83));
    assert!(cli.ok(&["cancel", &pending]).contains("already ended CANCELED"));

    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let running = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", "echo started; sleep 60"]);
    cli.wait_for_state(&running, "RUNNING");
    assert!(cli.ok(&["cancel", &running]).contains("left alone"));
    assert_eq!(cli.show(&running)["state"], "RUNNING");
    assert!(cli.ok(&["cancel", "--kill-running", &running]).contains("kill requested"));
    let collected = cli.run(&["collect", &running]);
    assert_eq!(collected.status.code(), Some(84), "KILLED: {}", describe(&collected));
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "started\n");
}

#[test]
fn tasks_list_filters_by_state_and_tags_and_pages() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let ids: Vec<String> = (0..5)
        .map(|n| {
            let tag = format!("n:{}", n % 2);
            cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "--tag", &tag, "--tag", "suite:e2e", "--", "true"])
        })
        .collect();
    cli.ok(&["cancel", &ids[4]]);
    let list = |args: &[&str]| -> serde_json::Value {
        let mut full = vec!["tasks", "list", "--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&cli.ok(&full)).unwrap()
    };
    let ids_of = |page: &serde_json::Value| -> Vec<String> {
        page["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect()
    };
    let page = list(&["--tag", "n:0", "--tag", "suite:e2e", "--limit", "2"]);
    assert_eq!(ids_of(&page), vec![ids[4].clone(), ids[2].clone()]);
    let cursor = page["next_cursor"].as_str().expect("more to come").to_string();
    let rest = list(&["--tag", "n:0", "--tag", "suite:e2e", "--limit", "2", "--cursor", &cursor]);
    assert_eq!(ids_of(&rest), vec![ids[0].clone()]);
    assert!(rest["next_cursor"].is_null());
    assert_eq!(ids_of(&list(&["--state", "canceled"])), vec![ids[4].clone()]);
    assert_eq!(ids_of(&list(&["--state", "PENDING"])).len(), 4);
}

#[test]
fn requests_that_break_a_limit_are_refused_naming_the_field() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let cases: [(&[&str], &str); 6] = [
        (&["-d", "pool=ci", "-d", "bad key=v", "--", "true"], "dimensions[1].key"),
        (&["-d", "pool=ci", "-d", "os= Linux", "--", "true"], "dimensions[1].value"),
        (&["-d", "pool=a|b", "--", "true"], "pool cannot have alternatives"),
        (&["-d", "pool=ci", "-d", "a=1|2|3", "-d", "b=1|2|3", "--", "true"], "over the limit of 8"),
        // Refused by the command line, in the daemon's words.
        (&["-d", "pool=ci", "--expiration", "0", "--", "true"], "'--expiration <SECS>': 0 seconds is outside 1..="),
        (&["-d", "pool=ci", "--priority", "256", "--", "true"], "priority"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["trigger"];
        full.extend_from_slice(args);
        let refused = cli.run(&full);
        assert_ne!(refused.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains(expected), "{args:?}: {}", describe(&refused));
    }
    let file = dir.path().join("cipd.json");
    let request =
        json!({"task_slices": [{"properties": {"command": ["true"], "cipd_input": {"server": "https://cipd"}}}]});
    std::fs::write(&file, request.to_string()).unwrap();
    let refused = cli.run(&["trigger", "--request", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cipd_input"), "{}", describe(&refused));
    let dry = cli.ok(&["trigger", "--dry-run", "-d", "pool=ci", "--", "echo", "hi"]);
    let normalized: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(normalized["task_slices"][0]["properties"]["command"], json!(["echo", "hi"]));
    let listed: serde_json::Value = serde_json::from_str(&cli.ok(&["tasks", "list", "--json"])).unwrap();
    assert_eq!(listed["tasks"], json!([]), "a dry run creates nothing");
}

//! End-to-end: requests written for Swarming run unchanged (proto3 JSON, the
//! single-slice and spawn-tasks forms), `request_uuid` across a restart, parent
//! and child tasks, automatic tags, and Swarming's dimension and limit rules.

use std::path::Path;

use apiary_tests::{Bot, Daemon, binary, describe, temp};
use serde_json::Value;

/// A request as a recipe writes it for Swarming's API: lowerCamelCase, 64-bit
/// integers as strings, and the fields Swarming's own CLI always sends, asking
/// for nothing.
const RECIPE_REQUEST: &str = r#"{
  "name": "recipe step",
  "priority": "40",
  "user": "ana",
  "tags": ["buildbucket_build:1"],
  "requestUuid": "REQUEST_UUID",
  "realm": "",
  "serviceAccount": "none",
  "resultdb": {"enable": false},
  "poolTaskTemplate": "AUTO",
  "botPingToleranceSecs": "1200",
  "taskSlices": [{
    "expirationSecs": "21600",
    "waitForCapacity": true,
    "properties": {
      "command": ["sh", "-c", "echo ran"],
      "dimensions": [{"key": "pool", "value": "ci"}, {"key": "os", "value": "Linux"}],
      "executionTimeoutSecs": "3600",
      "ioTimeoutSecs": "0",
      "gracePeriodSecs": "30",
      "outputs": [],
      "cipdInput": {"packages": []},
      "containment": {"containmentType": "NONE"},
      "env": [],
      "envPrefixes": []
    }
  }]
}"#;

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_recipe_request_runs_unchanged_and_its_uuid_names_it_across_a_restart() {
    let dir = temp();
    let mut daemon = Daemon::start(&dir.path().join("data"));
    let request = write(&dir.path().join("recipe.json"), &RECIPE_REQUEST.replace("REQUEST_UUID", "8d2f-0001"));
    let first = daemon.cli().trigger(&["--request", &request]);
    let again = daemon.cli().trigger(&["--request", &request]);
    assert_eq!(again, first, "the same uuid from the same requester names the same task");
    daemon.restart();
    let cli = daemon.cli();
    assert_eq!(cli.trigger(&["--request", &request]), first, "and still after a restart");
    let other = write(&dir.path().join("other.json"), &RECIPE_REQUEST.replace("REQUEST_UUID", "8d2f-0002"));
    assert_ne!(cli.trigger(&["--request", &other]), first);

    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci", "os=Linux"], &dir.path().join("bot"));
    let shown = cli.wait_for_state(&first, "COMPLETED");
    assert_eq!(shown["request"]["priority"], 40);
    assert_eq!(cli.ok(&["tasks", "output", &first]), "ran\n");
    // Swarming's automatic tags: tag queries find the task as they would there.
    let listed: Value =
        serde_json::from_str(&cli.ok(&["tasks", "list", "--json", "--tag", "pool:ci", "--tag", "user:ana"])).unwrap();
    let ids: Vec<&str> =
        listed["tasks"].as_array().unwrap().iter().map(|task| task["task_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&first.as_str()), "{listed}");
    let tags: Vec<&str> =
        shown["request"]["tags"].as_array().unwrap().iter().map(|tag| tag.as_str().unwrap()).collect();
    assert_eq!(tags, ["buildbucket_build:1", "priority:40", "user:ana", "pool:ci", "os:Linux"]);
}

#[test]
fn every_refused_field_of_a_request_is_named_in_one_answer() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let request = write(
        &dir.path().join("refused.json"),
        r#"{"task_id": "1", "realm": "chromium:ci", "priority": "high",
            "properties": {"command": ["true"], "cipd_input": {"server": "https://cipd"}}, "expiration_secs": 60}"#,
    );
    let output = daemon.cli().run(&["trigger", "--request", &request]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(": 4 fields refused:\n"), "{stderr}");
    for line in [
        "  priority: expected an integer (a number, or a string of digits), got the string \"high\"",
        "  properties.cipd_input: asks for CIPD packages, which Apiary does not implement",
        "  realm: asks for realms, which Apiary does not implement",
        "  task_id: is output-only: the daemon sets it in a task's description; remove it from the request",
    ] {
        assert!(stderr.contains(line), "{line:?} in {stderr}");
    }
}

#[test]
fn spawn_tasks_creates_every_request_and_writes_what_swarming_writes() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let requests = write(
        &dir.path().join("spawn.json"),
        r#"{"requests": [
            {"name": "a", "task_slices": [{"wait_for_capacity": true, "properties": {"command": ["true"], "dimensions": [{"key": "pool", "value": "ci"}]}}]},
            {"name": "b", "expiration_secs": "600", "properties": {"command": ["true"], "dimensions": [{"key": "pool", "value": "ci"}]}}
        ]}"#,
    );
    let json_output = dir.path().join("tasks.json");
    let cli = daemon.cli();
    let printed = cli.ok(&["spawn-tasks", "--json-input", &requests, "--json-output", json_output.to_str().unwrap()]);
    let ids: Vec<&str> = printed.lines().collect();
    assert_eq!(ids.len(), 2, "{printed}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&json_output).unwrap()).unwrap();
    let tasks = written["tasks"].as_array().unwrap();
    assert_eq!(tasks.iter().map(|task| task["task_id"].as_str().unwrap()).collect::<Vec<_>>(), ids);
    assert_eq!(tasks[1]["request"]["name"], "b");
    assert_eq!(tasks[1]["request"]["task_slices"][0]["expiration_secs"], 600);
    assert_eq!(cli.show(ids[0])["request"]["name"], "a");

    let single = dir.path().join("single.json");
    let id =
        cli.trigger(&["--json-output", single.to_str().unwrap(), "--wait-for-capacity", "-d", "pool=ci", "--", "true"]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&single).unwrap()).unwrap();
    assert_eq!(written["tasks"][0]["task_id"], id.as_str());
    assert_eq!(written["tasks"][0]["task_result"]["state"], "PENDING");
}

#[test]
fn a_task_triggered_inside_a_task_is_its_child_and_is_canceled_when_it_ends_unstarted() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let apiary = binary("apiary");
    // The child asks for a pool no bot is in, so it has not started when its parent ends.
    let script =
        format!("{} --server {} trigger --wait-for-capacity -d pool=nobody -- true", apiary.display(), daemon.addr);
    let cli = daemon.cli();
    let parent = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", &script]);
    cli.wait_for_state(&parent, "COMPLETED");
    let child = cli.ok(&["tasks", "output", &parent]).trim().to_string();
    assert_eq!(child.len(), 16, "the child's id: {child:?}");
    let shown = cli.wait_for_state(&child, "CANCELED");
    assert_eq!(shown["failure_reason"], format!("its parent task {parent} ended"));
    let tags = shown["request"]["tags"].as_array().unwrap();
    assert!(tags.iter().any(|tag| tag == &Value::from(format!("parent_task_id:{parent}"))), "{tags:?}");

    let orphan = cli.run(&["trigger", "-d", "pool=ci", "--", "true"]);
    assert!(orphan.status.success(), "outside a task there is no parent: {}", describe(&orphan));
}

#[test]
fn a_key_given_twice_needs_both_values() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let _one = Bot::start(&daemon.addr, "one-gpu-value", &["pool=ci", "gpu=nvidia"], &dir.path().join("one"));
    let cli = daemon.cli();
    let task =
        cli.trigger(&["--wait-for-capacity", "-d", "pool=ci", "-d", "gpu=nvidia", "-d", "gpu=4090", "--", "true"]);
    assert_eq!(cli.show(&task)["pending"]["matching_bots"], 0, "a bot with one of the two values does not match");
    let _both = Bot::start(&daemon.addr, "both", &["pool=ci", "gpu=nvidia", "gpu=4090"], &dir.path().join("both"));
    let shown = cli.wait_for_state(&task, "COMPLETED");
    assert_eq!(shown["bot_id"], "both");
}

#[test]
fn unknown_placeholders_and_a_ping_tolerance_shorter_than_three_reports_are_refused() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let cli = daemon.cli();
    let placeholder = cli.run(&["trigger", "-d", "pool=ci", "--", "sh", "-c", "echo ${HOME}"]);
    assert_eq!(placeholder.status.code(), Some(88), "{}", describe(&placeholder));
    let stderr = String::from_utf8_lossy(&placeholder.stderr);
    assert!(
        stderr.contains("task_slices[0].properties.command[2]: \"${HOME}\" is not a placeholder Apiary knows"),
        "{stderr}"
    );
    // Checked before connecting, in the daemon's words (the daemon's own check: `validate.rs`).
    let tolerance = cli.run(&["trigger", "-d", "pool=ci", "--bot-ping-tolerance", "1", "--", "true"]);
    assert_eq!(tolerance.status.code(), Some(2), "{}", describe(&tolerance));
    let stderr = String::from_utf8_lossy(&tolerance.stderr);
    assert!(stderr.contains("1 seconds is outside 3..=1200"), "{stderr}");
}

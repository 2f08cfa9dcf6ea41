//! `apiary-load` against the real daemon. Guards the load client itself (so the figures
//! it prints keep meaning something), not the daemon's speed: nothing here asserts a time.
//!
//! - a bounded run with bots, one request at a time: every task completes;
//! - a pipelined run with bots: every task completes;
//! - a pipelined run without bots: every task is acknowledged and stays pending, with
//!   names of the size asked for;
//! - a run with HTTP clients beside it: its tasks complete, and the HTTP calls are counted;
//! - `apiary-load floor`: both floor lines, with positive figures.

use std::process::{Command, Output, Stdio};

use apiary_tests::{Cli, Daemon, describe};

/// Runs `apiary-load` with `args`, insists on exit code 0 and returns its stdout.
fn load(args: &[&str]) -> String {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_apiary-load"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run apiary-load");
    assert!(output.status.success(), "apiary-load {args:?} failed: {}", describe(&output));
    String::from_utf8(output.stdout).expect("utf-8 report")
}

/// The first number after `label` on the line that starts with it.
fn count(stdout: &str, label: &str) -> u64 {
    let line = stdout.lines().find_map(|line| line.strip_prefix(label)).unwrap_or_else(|| panic!("{label}: {stdout}"));
    line.split_whitespace().next().and_then(|count| count.parse().ok()).expect("a count")
}

#[test]
fn load_client_completes_a_bounded_run_against_the_real_daemon() {
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let daemon = Daemon::start(data_dir.path());
    let stdout = load(&[
        "--server",
        &daemon.addr,
        "--bots",
        "8",
        "--submitters",
        "2",
        "--tasks",
        "50",
        "--bot-classes",
        "3",
        "--priorities",
        "4",
        "--task-ms",
        "1",
        "--drain-secs",
        "60",
    ]);
    assert_eq!(count(&stdout, "submitted: "), 50, "{stdout}");
    assert_eq!(count(&stdout, "enqueue: "), 50, "{stdout}");
    assert_eq!(count(&stdout, "dispatched: "), 50, "{stdout}");
    assert_eq!(count(&stdout, "completed: "), 50, "{stdout}");
    assert!(stdout.contains("bots connected: 8 of 8"), "{stdout}");
    assert!(stdout.contains("latency µs: p50 "), "{stdout}");
    assert!(stdout.contains("machine: 1 ms naps woke late by up to "), "{stdout}");
}

#[test]
fn a_pipelined_run_with_bots_completes_every_task() {
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let daemon = Daemon::start(data_dir.path());
    let stdout = load(&[
        "--server",
        &daemon.addr,
        "--bots",
        "4",
        "--submitters",
        "2",
        "--pipeline",
        "16",
        "--tasks",
        "300",
        "--drain-secs",
        "60",
    ]);
    assert_eq!(count(&stdout, "enqueue: "), 300, "{stdout}");
    assert!(stdout.contains("pipeline depth 16"), "{stdout}");
    assert_eq!(count(&stdout, "dispatched: "), 300, "{stdout}");
    assert_eq!(count(&stdout, "completed: "), 300, "{stdout}");
    assert!(stdout.contains("NewTask round trip µs: p50 ") && stdout.contains("(n=300)"), "{stdout}");
}

#[test]
fn a_pipelined_run_without_bots_leaves_every_task_pending() {
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let daemon = Daemon::start(data_dir.path());
    let stdout = load(&[
        "--server",
        &daemon.addr,
        "--bots",
        "0",
        "--submitters",
        "1",
        "--pipeline",
        "64",
        "--tasks",
        "2000",
        "--name-bytes",
        "200",
    ]);
    assert_eq!(count(&stdout, "enqueue: "), 2000, "{stdout}");
    assert!(stdout.contains("no bots: the tasks stay pending"), "{stdout}");
    assert!(!stdout.contains("dispatched: "), "{stdout}");

    let names = pending_task_names(&daemon.cli());
    assert_eq!(names.len(), 2000);
    assert!(names.iter().all(|name| name.len() == 200 && name.starts_with("load-0-")), "{:?}", &names[..3]);
}

/// The names of every PENDING task, page by page.
fn pending_task_names(cli: &Cli) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["tasks", "list", "--state", "PENDING", "--json", "--limit", "1000"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor]);
        }
        let page: serde_json::Value = serde_json::from_str(&cli.ok(&args)).expect("tasks list --json is JSON");
        let tasks = page["tasks"].as_array().expect("a tasks array");
        names.extend(tasks.iter().map(|task| {
            assert_eq!(task["state"], "PENDING", "{task}");
            task["name"].as_str().expect("a name").to_string()
        }));
        match page["next_cursor"].as_str() {
            Some(next) if !tasks.is_empty() => cursor = Some(next.to_string()),
            _ => return names,
        }
    }
}

#[test]
fn http_clients_make_calls_while_the_binary_load_runs() {
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let daemon = Daemon::start_with(data_dir.path(), "127.0.0.1:0", &["--http-listen", "127.0.0.1:0"]);
    let http_addr = daemon.http_addr();
    let stdout = load(&[
        "--server",
        &daemon.addr,
        "--bots",
        "4",
        "--submitters",
        "1",
        "--tasks",
        "30",
        "--http-server",
        &http_addr,
        "--http-clients",
        "2",
    ]);
    assert_eq!(count(&stdout, "completed: "), 30, "{stdout}");
    let calls = count(&stdout, "http: ");
    assert!(calls > 0, "{stdout}");
    let statuses = stdout.lines().find_map(|line| line.split_once("(status ")).map(|(_, statuses)| statuses);
    let only_ok = statuses.is_some_and(|statuses| statuses.starts_with("200: ") && !statuses.contains(", "));
    assert!(only_ok, "each client reads the task it created, found: {stdout}");
    assert!(stdout.contains("http latency (us): p50 "), "{stdout}");
}

#[test]
fn the_floor_probe_prints_both_figures() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir_text = dir.path().to_str().expect("a UTF-8 path");
    let stdout = load(&["floor", "--dir", dir_text, "--round-trips", "50", "--syncs", "10"]);
    for label in ["floor: loopback round trip µs: ", "floor: fdatasync 4 KiB overwrite µs: "] {
        let line =
            stdout.lines().find_map(|line| line.strip_prefix(label)).unwrap_or_else(|| panic!("{label}: {stdout}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "p50", "{line}");
        assert_eq!(words[2], "p99", "{line}");
        for figure in [words[1], words[3]] {
            assert!(figure.parse::<f64>().expect("a number") > 0.0, "{line}");
        }
    }
    assert!(stdout.contains(&format!("floor: fdatasync file in {dir_text}")), "{stdout}");
}

//! The daemon's log end to end: the shape of its lines, what a batch of tasks
//! writes at the default level and at debug, and how a bad level is refused.

use std::process::Command;

use apiary_tests::{Daemon, binary, describe, message, temp};

const TASKS: usize = 200;

/// Whether a line reads `2026-11-30T11:32:59.123Z LEVEL apiaryd: ...`.
fn well_formed(line: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else { return false };
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    let time_fits = time.len() == shape.len()
        && time.bytes().zip(shape.bytes()).all(|(byte, want)| match want {
            b'd' => byte.is_ascii_digit(),
            _ => byte == want,
        });
    let levels = ["ERROR apiaryd: ", "WARN  apiaryd: ", "INFO  apiaryd: ", "DEBUG apiaryd: "];
    time_fits && levels.iter().any(|level| rest.starts_with(level))
}

/// Runs `TASKS` tasks through one (simulated) bot, stops the daemon, and
/// returns everything it logged, up to its last line.
fn log_of_a_batch(extra_args: &[&str]) -> Vec<String> {
    let dir = temp();
    let mut daemon = Daemon::start_with(&dir.path().join("data"), "127.0.0.1:0", extra_args);
    let tasks = TASKS.to_string();
    let load = Command::new(binary("apiary-load"))
        .args(["--server", &daemon.addr, "--bots", "1", "--submitters", "1", "--tasks", &tasks])
        .output()
        .expect("run apiary-load");
    assert!(load.status.success(), "{}", describe(&load));
    assert!(String::from_utf8_lossy(&load.stdout).contains(&format!("completed: {TASKS}")), "{}", describe(&load));
    assert!(daemon.terminate().success());
    daemon.log.wait_for("the daemon's last line", |line| {
        message(line)?.starts_with("stopped; the log ends at record ").then_some(())
    });
    daemon.log.all()
}

fn count(lines: &[String], level: &str, text: &str) -> usize {
    lines.iter().filter(|line| line.contains(level) && line.contains(text)).count()
}

#[test]
fn at_the_default_level_a_batch_of_tasks_writes_no_line_per_task() {
    let lines = log_of_a_batch(&[]);
    let malformed: Vec<&String> = lines.iter().filter(|line| !well_formed(line)).collect();
    assert!(malformed.is_empty(), "{malformed:#?}");
    let per_task: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(" DEBUG ") || line.contains(" created: ") || line.contains(" assigned to bot "))
        .collect();
    assert!(per_task.is_empty(), "{per_task:#?}");
    // The start, the bot, the stop: a few lines whatever the number of tasks.
    let bytes: usize = lines.iter().map(|line| line.len() + 1).sum();
    assert!(bytes < 4096, "{bytes} bytes: {lines:#?}");
    assert_eq!(count(&lines, " INFO  apiaryd: ", " connected (session "), 1, "{lines:#?}");
    let last = message(lines.last().unwrap()).unwrap();
    let records: usize = last.strip_prefix("stopped; the log ends at record ").unwrap().parse().unwrap();
    assert!(records >= 3 * TASKS, "created, assigned and ended: {last}");
}

#[test]
fn at_debug_level_every_task_event_has_a_line() {
    let lines = log_of_a_batch(&["--log-level", "debug"]);
    let malformed: Vec<&String> = lines.iter().filter(|line| !well_formed(line)).collect();
    assert!(malformed.is_empty(), "{malformed:#?}");
    assert_eq!(count(&lines, " DEBUG apiaryd: task ", " created: "), TASKS);
    assert_eq!(count(&lines, " DEBUG apiaryd: run ", " assigned to bot "), TASKS);
    assert_eq!(count(&lines, " DEBUG apiaryd: task ", " ended COMPLETED"), TASKS);
    assert!(message(lines.last().unwrap()).unwrap().starts_with("stopped; the log ends at record "));
}

#[test]
fn a_log_level_comes_from_the_flag_or_the_file_and_a_bad_one_is_refused() {
    let dir = temp();
    let data = dir.path().join("data");
    let (status, said) = Daemon::start_refused(&data, &["--log-level", "loud"]);
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("invalid value 'loud' for '--log-level <LEVEL>': expected one of error, warn, info, debug"));

    let config = dir.path().join("apiaryd.toml");
    std::fs::write(&config, "long_poll_secs = 5\nlog_level = \"loud\"\n").unwrap();
    let (status, said) = Daemon::start_refused(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(well_formed(&said) && said.contains(" ERROR apiaryd: "), "{said}");
    assert!(said.contains("apiaryd.toml:2: log_level: invalid value 'loud'"), "{said}");

    std::fs::write(&config, "log_level = \"debug\"\n").unwrap();
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
    let task_id = daemon.cli().trigger(&["-d", "pool=nobody", "--", "true"]);
    daemon.log.wait_for("the task's debug line", |line| {
        (line.contains(" DEBUG apiaryd: ") && line.contains(&format!("task {task_id} created: "))).then_some(())
    });
    assert!(daemon.terminate().success());
}

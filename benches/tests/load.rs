//! `apiary-load` against the real daemon: 8 bots and 50 tasks complete, and the report
//! says so. Guards the load client itself (so the figures it prints keep meaning
//! something), not the daemon's speed: nothing here asserts a time.

use std::process::{Command, Stdio};

use apiary_tests::{Daemon, describe};

#[test]
fn load_client_completes_a_bounded_run_against_the_real_daemon() {
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let daemon = Daemon::start(data_dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_apiary-load"))
        .args(["--server", &daemon.addr, "--bots", "8", "--submitters", "2", "--tasks", "50"])
        .args(["--bot-classes", "3", "--priorities", "4", "--task-ms", "1", "--drain-secs", "60"])
        .stdin(Stdio::null())
        .output()
        .expect("run apiary-load");
    assert!(output.status.success(), "apiary-load failed: {}", describe(&output));
    let stdout = String::from_utf8(output.stdout).expect("utf-8 report");
    let count = |label: &str| -> u64 {
        let line =
            stdout.lines().find_map(|line| line.strip_prefix(label)).unwrap_or_else(|| panic!("{label}: {stdout}"));
        line.split_whitespace().next().and_then(|count| count.parse().ok()).expect("a count")
    };
    assert_eq!(count("submitted: "), 50, "{stdout}");
    assert_eq!(count("dispatched: "), 50, "{stdout}");
    assert_eq!(count("completed: "), 50, "{stdout}");
    assert!(stdout.contains("bots connected: 8 of 8"), "{stdout}");
    assert!(stdout.contains("latency µs: p50 "), "{stdout}");
}

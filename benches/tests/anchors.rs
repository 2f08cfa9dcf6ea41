//! `benches/anchors.sh` and `apiary-load anchor`, the comparison behind the README's
//! figures against Redis and beanstalkd, run at a tiny scale against the debug binaries
//! and the real servers (Debian's `redis-server` and `beanstalkd`; `.ci/run` installs
//! them) so that it does not rot. Guards the script and the client, not anyone's speed:
//! nothing here asserts a time.
//!
//! - a whole run puts every server in both tables with a figure in every cell, keeps
//!   each run's report and server log when asked, and leaves no file and no process
//!   behind;
//! - a server it does not know is refused by name before anything starts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use apiary_tests::{binary, describe, processes_naming};

const SERVERS: [&str; 5] = ["apiary", "redis-always", "beanstalkd-always", "redis-1s", "beanstalkd-1s"];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("anchors.sh")
}

/// Where the debug apiaryd and apiary-load are.
fn debug_bin_dir() -> PathBuf {
    binary("apiaryd").parent().expect("a binary is in a directory").to_path_buf()
}

/// The script at a tiny scale, with `servers` (all when `None`), keeping each run's
/// report and server log in `logs_dir` when given.
fn run_script(scratch_parent: &Path, servers: Option<&str>, logs_dir: Option<&Path>) -> Output {
    let mut command = Command::new("bash");
    command.arg(script()).arg(debug_bin_dir()).arg(scratch_parent).stdin(Stdio::null()).envs([
        ("ROUNDS", "1"),
        ("TASKS", "60"),
        ("SUBMITTERS", "2"),
        ("WORKERS", "3"),
        ("RATE", "100"),
        ("PARKED", "3"),
        ("RATE_SECS", "0.5"),
    ]);
    if let Some(servers) = servers {
        command.env("SERVERS", servers);
    }
    match logs_dir {
        Some(logs_dir) => command.env("LOGS_DIR", logs_dir),
        None => command.env_remove("LOGS_DIR"),
    };
    command.output().expect("run anchors.sh")
}

/// The row of `server` in the table that follows the line starting with `title`.
fn row<'a>(stdout: &'a str, title: &str, server: &str) -> &'a str {
    let table = stdout.split_once(&format!("\n{title}")).unwrap_or_else(|| panic!("no {title}: {stdout}")).1;
    let prefix = format!("| {server} |");
    table
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {server} under {title}: {stdout}"))
}

#[test]
fn a_tiny_run_fills_both_tables_for_every_server_and_leaves_nothing_behind() {
    let scratch = tempfile::Builder::new().prefix("anchors-test").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let output = run_script(scratch.path(), None, Some(logs.path()));
    assert!(output.status.success(), "{}", describe(&output));

    let stdout = String::from_utf8_lossy(&output.stdout);
    for (title, cells) in [("Throughput: ", 4), ("Rate: ", 6)] {
        for server in SERVERS {
            let row = row(&stdout, title, server);
            let figures: Vec<&str> = row.split('|').map(str::trim).filter(|cell| !cell.is_empty()).skip(1).collect();
            assert_eq!(figures.len(), cells, "{row}");
            // At this scale a server's CPU time may round to 0 µs a task; a missing figure is `-`.
            for figure in figures {
                assert!(figure.parse::<f64>().is_ok_and(|value| value >= 0.0), "{figure:?} in {row}");
            }
        }
    }
    for header in ["Date: ", "Machine: ", "Servers: Redis server", "Floor over the runs: loopback round trip p50 "] {
        assert!(stdout.lines().any(|line| line.starts_with(header)), "{header}: {stdout}");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches(" round 1: ").count(), 2 * SERVERS.len(), "one line a run: {stderr}");
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "the scratch directory is removed");
    let report = fs::read_to_string(logs.path().join("1-rate-redis-always.load.txt")).unwrap();
    assert!(report.contains("\nsubmit->taken latency µs: p50 "), "{report}");
    assert!(logs.path().join("1-throughput-apiary.server.log").exists());
    assert_eq!(fs::read_dir(logs.path()).unwrap().count(), 2 * 2 * SERVERS.len(), "a report and a log a run");
    assert_eq!(processes_naming(scratch.path(), "anchors.sh"), Vec::<String>::new());
}

#[test]
fn a_server_it_does_not_know_is_refused_by_name() {
    let scratch = tempfile::tempdir().unwrap();
    let output = run_script(scratch.path(), Some("apiary memcached"), None);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SERVERS: memcached is not one of: apiary redis-always"), "{stderr}");
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "nothing was made");
}

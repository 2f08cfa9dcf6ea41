//! The `apiaryd` command line itself (this also makes `cargo test` build the
//! binary for the end-to-end tests in `tests/`).

use std::process::Command;

#[test]
fn help_lists_every_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_apiaryd")).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--max-connections",
        "--long-poll-secs",
        "--dedup-window-secs",
        "--bot-death-timeout-secs",
        "--bot-events-per-bot",
        "--bot-event-max-age-secs",
        "--max-output-bytes",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_apiaryd")).arg("--listen=nowhere").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

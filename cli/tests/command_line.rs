//! The `apiary` command line itself (this also makes `cargo test` build the
//! binary for the end-to-end tests in `tests/`).

use std::process::Command;

#[test]
fn an_unreachable_daemon_has_its_own_exit_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["--server", "127.0.0.1:1", "tasks", "show", "0000000000000010"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(89), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_malformed_task_id_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_apiary")).args(["tasks", "show", "xyz"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

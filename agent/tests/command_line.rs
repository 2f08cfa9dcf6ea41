//! The `apiary-bot` command line itself (this also makes `cargo test` build
//! the binary for the end-to-end tests in `tests/`).

use std::process::Command;

#[test]
fn help_lists_the_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_apiary-bot")).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--server",
        "--id",
        "--dimension",
        "--work-dir",
        "--health-check",
        "--health-check-timeout",
        "--cache-max-bytes",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn a_malformed_dimension_is_a_usage_error() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_apiary-bot")).args(["--id", "b", "--dimension", "novalue"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

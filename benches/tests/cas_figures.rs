//! `benches/cas-figures.sh`, the script behind the README's figures for the
//! content-addressed store, run at a tiny scale against the debug binaries so
//! that it does not rot. Guards the script, not the store's speed: nothing
//! here asserts a time.
//!
//! - a whole run prints every row of its table with figures, and leaves no
//!   file and no process behind;
//! - a run that fails half-way (an `apiary` that refuses everything) still
//!   stops the daemon and the bot it started and removes what it wrote.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use apiary_tests::{binary, describe, processes_naming};

/// The table's rows: each one's label, and whether its plain-tools cell has figures.
const ROWS: [(&str, bool); 6] = [
    ("| 1. archive, store empty", true),
    ("| 2. re-archive, unchanged", true),
    ("| 3. materialize on the bot, warm cache", true),
    ("| (the first task, cold cache", false),
    ("| 4. upload a ", true),
    ("| 5. download", true),
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cas-figures.sh")
}

/// Where the debug apiaryd, apiary-bot and apiary are.
fn debug_bin_dir() -> PathBuf {
    binary("apiaryd").parent().expect("a binary is in a directory").to_path_buf()
}

/// An empty directory on disk for one run's scratch (the script refuses a tmpfs).
fn scratch_parent() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("cas-figures-test").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// The script at a tiny scale; the page cache is left alone (CI shares the machine).
fn run_script(bin_dir: &Path, scratch_parent: &Path) -> Output {
    Command::new("bash")
        .arg(script())
        .arg(bin_dir)
        .arg(scratch_parent)
        .envs([
            ("ROUNDS", "2"),
            ("FILES", "12"),
            ("DIRS", "3"),
            ("TREE_BYTES", "120000"),
            ("OUTPUT_BYTES", "50000"),
            ("DROP_CACHES", "no"),
        ])
        .env_remove("LOGS_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run cas-figures.sh")
}

/// Whether a table cell holds a figure such as `0.12 s` or `0.10 .. 0.31 s`.
fn has_figure(cell: &str) -> bool {
    let words: Vec<&str> = cell.split_whitespace().collect();
    words.windows(2).any(|pair| pair[0].parse::<f64>().is_ok() && pair[1].trim_end_matches([')', ';']) == "s")
}

/// Files left in `dir` and live processes that name it on their command line.
fn leftovers(dir: &Path) -> (Vec<String>, Vec<String>) {
    let files = fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into()).collect();
    (files, processes_naming(dir, "cas-figures.sh"))
}

#[test]
fn a_tiny_run_prints_every_row_with_figures_and_leaves_nothing_behind() {
    let scratch = scratch_parent();
    let output = run_script(&debug_bin_dir(), scratch.path());
    assert!(output.status.success(), "{}", describe(&output));

    let stdout = String::from_utf8_lossy(&output.stdout);
    for (label, plain_has_figures) in ROWS {
        let row = stdout.lines().find(|line| line.starts_with(label)).unwrap_or_else(|| panic!("no {label}: {stdout}"));
        let cells: Vec<&str> = row.split('|').collect();
        assert_eq!(cells.len(), 5, "three cells: {row}");
        assert!(has_figure(cells[2]), "apiary's figure: {row}");
        assert_eq!(has_figure(cells[3]), plain_has_figures, "the plain tools' figures: {row}");
        assert!(
            !row.split_whitespace().any(|word| word.trim_matches(['(', ')', ';']) == "-"),
            "a missing figure: {row}"
        );
    }
    for header in ["Date: ", "Machine: ", "Page cache: not dropped (DROP_CACHES=no)", "Tree: 12 files in 3 directories"]
    {
        assert!(stdout.lines().any(|line| line.starts_with(header)), "{header}: {stdout}");
    }
    assert!(stdout.contains("\nMem:"), "free -g: {stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("  archive/apiary: ").count(), 2, "one archive a round: {stderr}");
    assert_eq!(leftovers(scratch.path()), (Vec::new(), Vec::new()));
}

#[test]
fn a_run_that_fails_half_way_stops_what_it_started_and_removes_its_files() {
    let bin_dir = tempfile::tempdir().unwrap();
    for name in ["apiaryd", "apiary-bot"] {
        symlink(binary(name), bin_dir.path().join(name)).unwrap();
    }
    let refusing = bin_dir.path().join("apiary");
    fs::write(&refusing, "#!/bin/sh\necho 'this apiary refuses' >&2\nexit 3\n").unwrap();
    fs::set_permissions(&refusing, fs::Permissions::from_mode(0o755)).unwrap();
    let scratch = scratch_parent();

    let output = run_script(bin_dir.path(), scratch.path());
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cas-figures: failed (exit 3 at line"), "{stderr}");
    assert!(stderr.contains("apiary cas archive"), "names the failed command: {stderr}");
    assert_eq!(leftovers(scratch.path()), (Vec::new(), Vec::new()), "the daemon and bot ran in the scratch directory");
}

//! `benches/spare-pacing.py`, the script behind the figures for how the WAL's preparer
//! paces a spare segment (docs/hot-path.md), run at a tiny scale so that it does not rot.
//! Guards the script, not the disk's speed: nothing here asserts a time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use apiary_tests::describe;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("spare-pacing.py")
}

#[test]
fn a_tiny_run_reports_every_way_with_figures_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let run = Command::new("python3")
        .arg(script())
        .args(["--rounds", "1", "--segment-mib", "2"])
        .arg(dir.path())
        .output()
        .expect("python3 runs the script");
    assert!(run.status.success(), "{}", describe(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    for way in ["sync", "writeback", "none"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("{way}: 1 x ")))
            .unwrap_or_else(|| panic!("no line for {way}: {stdout}"));
        assert!(line.contains("the log's syncs meanwhile µs: p50 "), "{line}");
        assert!(line.contains(" over 1 ms "), "{line}");
    }
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|entry| entry.file_name()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

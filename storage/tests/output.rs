//! The output store: writes by offset are idempotent, gaps are refused, lengths survive a
//! reopen, and reads past the end are empty.

use apiary_storage::{OutputError, OutputStore};

const TASK: u64 = 0x0000_0abc_dead_beef;

#[test]
fn a_resent_overlapping_chunk_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = OutputStore::open(dir.path()).unwrap();
    assert_eq!(store.len(TASK).unwrap(), 0);
    assert_eq!(store.write_at(TASK, 0, b"hello ").unwrap(), 6);
    assert_eq!(store.write_at(TASK, 0, b"hello ").unwrap(), 6, "an exact resend");
    assert_eq!(store.write_at(TASK, 3, b"XX").unwrap(), 6, "a resend wholly inside what is there");
    assert_eq!(store.write_at(TASK, 3, b"XXX world").unwrap(), 12, "overlapping: only the new part is written");
    assert_eq!(store.read(TASK, 0, 100).unwrap(), b"hello  world");
    assert_eq!(store.write_at(TASK, 12, b"").unwrap(), 12);
}

#[test]
fn a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = OutputStore::open(dir.path()).unwrap();
    store.write_at(TASK, 0, b"abc").unwrap();
    let error = store.write_at(TASK, 4, b"e").unwrap_err();
    assert!(matches!(error, OutputError::Gap { task_id: TASK, expected: 3, got: 4 }), "{error}");
    assert!(error.to_string().contains("0000abcdeadbeef"), "{error}");
    assert_eq!(store.len(TASK).unwrap(), 3);
    let error = store.write_at(7, 1, b"x").unwrap_err();
    assert!(matches!(error, OutputError::Gap { expected: 0, got: 1, .. }));
}

#[test]
fn lengths_and_bytes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = OutputStore::open(dir.path()).unwrap();
    for task_id in 1..=5u64 {
        let data = vec![task_id as u8; task_id as usize * 100];
        store.write_at(task_id, 0, &data).unwrap();
    }
    store.take_sync_job().unwrap().run().unwrap();
    assert!(store.take_sync_job().is_none());
    store.close(3);
    drop(store);
    assert!(dir.path().join("0000000001.pack").is_file(), "one pack holds every run");
    let mut store = OutputStore::open(dir.path()).unwrap();
    for task_id in 1..=5u64 {
        assert_eq!(store.len(task_id).unwrap(), task_id * 100);
        assert_eq!(store.read(task_id, 50, 10).unwrap(), vec![task_id as u8; 10]);
    }
    assert_eq!(store.write_at(2, 150, &[9; 100]).unwrap(), 250);
    assert_eq!(store.len(6).unwrap(), 0);
}

#[test]
fn reading_at_or_beyond_the_end_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = OutputStore::open(dir.path()).unwrap();
    assert!(store.read(TASK, 0, 10).unwrap().is_empty(), "no output yet");
    store.write_at(TASK, 0, b"0123456789").unwrap();
    assert_eq!(store.read(TASK, 8, 10).unwrap(), b"89", "short at the end");
    assert!(store.read(TASK, 10, 10).unwrap().is_empty());
    assert!(store.read(TASK, 1000, 10).unwrap().is_empty());
    assert_eq!(store.read(TASK, 2, 3).unwrap(), b"234");
}

#[test]
fn a_sync_job_runs_on_another_thread_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = OutputStore::open(dir.path()).unwrap();
    store.write_at(1, 0, b"first").unwrap();
    let job = store.take_sync_job().unwrap();
    let flusher = std::thread::spawn(move || job.run());
    store.write_at(1, 5, b" second").unwrap();
    store.write_at(2, 0, b"other").unwrap();
    flusher.join().unwrap().unwrap();
    store.take_sync_job().unwrap().run().unwrap();
    assert_eq!(store.read(1, 0, 100).unwrap(), b"first second");
}

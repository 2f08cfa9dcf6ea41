//! Snapshot files: written whole or not at all, read back only when intact, and a crash
//! between any two steps of a write leaves the old snapshots or the new one.

use std::fs;

use apiary_storage::{SNAPSHOT_HEADER_BYTES, SnapshotError, SnapshotFile, SnapshotStore};

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|at| (at * 31 % 251) as u8).collect()
}

#[test]
fn a_written_snapshot_reads_back_aligned_and_is_listed_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.write(10, 1_000, &payload(100)).unwrap();
    let newest = store.write(25, 2_000, &payload(5000)).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.iter().map(|file| file.covered_seq).collect::<Vec<_>>(), [25, 10]);
    let loaded = store.read(&newest).unwrap();
    assert_eq!((loaded.covered_seq, loaded.created_ms), (25, 2_000));
    assert_eq!(&loaded[..], &payload(5000)[..]);
    assert_eq!(loaded.as_ptr() as usize % 16, 0, "the payload is aligned for rkyv");
    assert_eq!(store.remove_older_than(25).unwrap(), 1);
    assert_eq!(store.list().unwrap(), [newest]);
}

#[test]
fn every_damaged_byte_and_every_cut_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let file = store.write(7, 5, &payload(300)).unwrap();
    let whole = fs::read(&file.path).unwrap();
    for at in 0..whole.len() {
        let mut damaged = whole.clone();
        damaged[at] ^= 0x20;
        fs::write(&file.path, &damaged).unwrap();
        match store.read(&file) {
            Err(SnapshotError::Damaged { path, .. }) => assert!(path.ends_with("00000000000000000007.snap")),
            other => panic!("a flip at {at} was not refused: {other:?}"),
        }
    }
    for len in [0, 10, SNAPSHOT_HEADER_BYTES, whole.len() - 1] {
        fs::write(&file.path, &whole[..len]).unwrap();
        assert!(matches!(store.read(&file), Err(SnapshotError::Damaged { .. })), "a cut at {len} was not refused");
    }
    fs::write(&file.path, &whole).unwrap();
    assert!(store.read(&file).is_ok());
}

#[test]
fn a_snapshot_under_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let file = store.write(7, 5, &payload(30)).unwrap();
    let renamed = SnapshotFile { covered_seq: 8, path: store.path(8) };
    fs::rename(&file.path, &renamed.path).unwrap();
    assert!(
        matches!(store.read(&renamed), Err(SnapshotError::Damaged { reason, .. }) if reason.contains("name says 8"))
    );
}

/// The steps of a write are: temporary file written and synced, renamed, directory synced.
/// A crash after the first leaves a temporary file, which opening removes; after the
/// rename the file is whole, since it was synced before.
#[test]
fn a_crash_between_the_steps_of_a_write_leaves_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let old = store.write(3, 1, &payload(40)).unwrap();
    // Crash after the temporary file was written, before its rename.
    let new = store.write(9, 2, &payload(80)).unwrap();
    let temporary = dir.path().join("00000000000000000009.snap.tmp");
    fs::rename(&new.path, &temporary).unwrap();
    let reopened = SnapshotStore::open(dir.path()).unwrap();
    assert!(!temporary.exists(), "the unfinished write is removed");
    assert_eq!(reopened.list().unwrap(), std::slice::from_ref(&old));
    // Crash after the rename: the new snapshot is whole.
    let new = reopened.write(9, 2, &payload(80)).unwrap();
    let reopened = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(reopened.list().unwrap(), [new.clone(), old]);
    assert_eq!(&reopened.read(&new).unwrap()[..], &payload(80)[..]);
}

#[test]
fn a_damaged_snapshot_is_set_aside_and_no_longer_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let file = store.write(4, 1, &payload(10)).unwrap();
    let aside = store.set_aside(&file).unwrap();
    assert!(aside.to_string_lossy().ends_with("00000000000000000004.snap.damaged"));
    assert!(store.list().unwrap().is_empty());
    assert!(SnapshotStore::open(dir.path()).unwrap().list().unwrap().is_empty());
    assert!(aside.exists(), "kept for an operator");
}

//! Tests that need the store's insides: injected write failures (a full disk) and the
//! memory bound.

use std::path::Path;

use super::format::CHUNK_HEADER_BYTES;
use super::{OutputError, OutputOptions, OutputStore};

/// On tmpfs when there is one: these tests check bookkeeping, not fsync speed.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("apiary-output-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn small_packs(pack_bytes: u64) -> OutputOptions {
    OutputOptions { pack_bytes }
}

fn pack_file_len(dir: &Path, number: u64) -> u64 {
    std::fs::metadata(dir.join(format!("{number:010}.pack"))).unwrap().len()
}

#[test]
fn a_write_that_finds_the_disk_full_is_a_typed_error_and_changes_nothing() {
    let dir = scratch_dir();
    let mut store = OutputStore::open(dir.path()).unwrap();
    store.write_at(1, 0, b"before ").unwrap();
    store.faults.failing_writes = 1;
    let error = store.write_at(1, 7, b"lost").unwrap_err();
    assert!(matches!(error, OutputError::NoSpace { .. }), "{error}");
    assert!(error.to_string().contains("0000000000000001"), "{error}");
    assert_eq!(store.len(1).unwrap(), 7);
    assert_eq!(pack_file_len(dir.path(), 1), (CHUNK_HEADER_BYTES + 7) as u64, "the half-written chunk is cut off");
    store.check_invariants();

    assert_eq!(store.write_at(1, 7, b"after").unwrap(), 12, "space is back");
    assert_eq!(store.read(1, 0, 100).unwrap(), b"before after");
    store.take_sync_job().unwrap().run().unwrap();
    drop(store);
    let mut store = OutputStore::open(dir.path()).unwrap();
    assert_eq!(store.read(1, 0, 100).unwrap(), b"before after");
}

#[test]
fn a_pack_that_cannot_be_created_fails_only_the_write_that_needs_it() {
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), small_packs(256)).unwrap();
    store.write_at(1, 0, &[1; 200]).unwrap();
    store.faults.failing_creates = 1;
    let error = store.write_at(2, 0, &[2; 100]).unwrap_err();
    assert!(matches!(error, OutputError::NoSpace { .. }), "{error}");
    assert_eq!(store.len(2).unwrap(), 0);
    assert_eq!(store.stats().packs, 1, "the current pack stays current");
    store.check_invariants();

    assert_eq!(store.write_at(2, 0, &[2; 100]).unwrap(), 100, "the next write makes the pack");
    assert_eq!(store.stats().packs, 2);
    assert_eq!(store.read(1, 0, 1000).unwrap(), vec![1; 200]);
    assert_eq!(store.read(2, 0, 1000).unwrap(), vec![2; 100]);
    store.check_invariants();
}

#[test]
fn a_sync_job_dropped_before_it_ran_hands_its_index_to_the_next_one() {
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), small_packs(256)).unwrap();
    store.write_at(1, 0, &[1; 200]).unwrap();
    store.write_at(2, 0, &[2; 200]).unwrap();
    drop(store.take_sync_job().unwrap());
    assert_eq!(store.stats().unindexed_packs, 1);
    store.take_sync_job().unwrap().run().unwrap();
    assert_eq!(store.stats().unindexed_packs, 0);
    assert!(dir.path().join("0000000001.idx").is_file());
    assert_eq!(store.read(1, 190, 100).unwrap(), vec![1; 10], "read through the index");
}

#[test]
fn memory_holds_only_open_runs_after_many_closed_ones() {
    const RUNS: u64 = 100_000;
    const STILL_OPEN: u64 = 10;
    const PACK_BYTES: u64 = 64 << 10;
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), small_packs(PACK_BYTES)).unwrap();
    for run_id in 1..=RUNS {
        store.write_at(run_id, 0, &run_id.to_le_bytes()[..3]).unwrap();
        if run_id > STILL_OPEN {
            store.close(run_id);
        }
        if run_id % 1000 == 0 {
            store.take_sync_job().unwrap().run().unwrap();
        }
    }
    assert!(store.take_sync_job().is_none(), "the last turn was synced");
    store.check_invariants();
    let stats = store.stats();
    assert_eq!(stats.open_runs, STILL_OPEN as usize);
    assert_eq!(stats.unindexed_packs, 0);
    let max_entries_per_pack = (PACK_BYTES / (CHUNK_HEADER_BYTES as u64 + 3)) as usize;
    assert!(stats.entries_in_memory <= max_entries_per_pack, "{stats:?}");
    assert!(stats.packs > 10, "{stats:?}");
    assert!(store.closed_runs.len() <= super::store::MAX_CACHED_CLOSED_RUNS_FOR_TESTS);
    for run_id in [1, 2, RUNS / 2, RUNS - 1, RUNS] {
        assert_eq!(store.read(run_id, 0, 10).unwrap(), &run_id.to_le_bytes()[..3], "run {run_id}");
    }
}

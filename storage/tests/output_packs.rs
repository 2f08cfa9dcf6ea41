//! The packed output store: many runs share pack files, which are sealed with an index,
//! survive torn tails and damaged indexes, are removed whole by retention, and read back
//! byte for byte against a model.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use apiary_storage::{OutputError, OutputOptions, OutputStore, RemovedPacks};
use proptest::prelude::*;

/// Documented layout: each chunk is a 32-byte header then its data.
const CHUNK_HEADER_BYTES: usize = 32;

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("apiary-output-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn options(pack_bytes: u64) -> OutputOptions {
    OutputOptions { pack_bytes }
}

fn pack_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:010}.pack"))
}

fn index_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:010}.idx"))
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Byte `at` of run `run_id`'s output in every test: a resend always carries the same bytes.
fn byte_of(run_id: u64, at: u64) -> u8 {
    (run_id.wrapping_mul(31).wrapping_add(at.wrapping_mul(7)) % 251) as u8
}

fn bytes_of(run_id: u64, from: u64, count: u64) -> Vec<u8> {
    (from..from + count).map(|at| byte_of(run_id, at)).collect()
}

/// A chunk as the module documentation draws it, encoded independently of the crate.
fn encode_chunk(run_id: u64, run_offset: u64, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"APCK");
    bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&run_id.to_le_bytes());
    bytes.extend_from_slice(&run_offset.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..24]);
    hasher.update(&bytes[28..32]);
    hasher.update(data);
    bytes[24..28].copy_from_slice(&hasher.finalize().to_le_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn append(path: &Path, bytes: &[u8]) {
    let mut contents = fs::read(path).unwrap();
    contents.extend_from_slice(bytes);
    fs::write(path, contents).unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    let mut contents = fs::read(path).unwrap();
    contents[at] ^= 0x20;
    fs::write(path, contents).unwrap();
}

#[test]
fn runs_share_pack_files_instead_of_a_file_each() {
    let dir = scratch_dir();
    let mut store = OutputStore::open(dir.path()).unwrap();
    for run_id in 1..=5_000u64 {
        store.write_at(run_id, 0, &bytes_of(run_id, 0, 100)).unwrap();
        store.close(run_id);
    }
    store.take_sync_job().unwrap().run().unwrap();
    assert_eq!(file_names(dir.path()), ["0000000001.pack"]);
    assert_eq!(store.stats().pack_bytes, 5_000 * (CHUNK_HEADER_BYTES as u64 + 100));

    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), options(4096)).unwrap();
    for run_id in 1..=5_000u64 {
        store.write_at(run_id, 0, &bytes_of(run_id, 0, 100)).unwrap();
        store.close(run_id);
    }
    store.take_sync_job().unwrap().run().unwrap();
    let stats = store.stats();
    assert_eq!(file_names(dir.path()).len(), 2 * stats.packs - 1, "a pack and an index per sealed pack");
    assert!(stats.packs < 200, "{stats:?}");
    assert_eq!(store.read(4_321, 0, 1000).unwrap(), bytes_of(4_321, 0, 100));
}

#[test]
fn a_torn_last_chunk_is_cut_at_every_byte_and_lengths_match_what_was_synced() {
    let source = scratch_dir();
    let mut store = OutputStore::open(source.path()).unwrap();
    for run_id in 1..=3u64 {
        store.write_at(run_id, 0, &bytes_of(run_id, 0, 40)).unwrap();
    }
    store.take_sync_job().unwrap().run().unwrap();
    store.write_at(2, 40, &bytes_of(2, 40, 50)).unwrap();
    drop(store);
    let pack = fs::read(pack_path(source.path(), 1)).unwrap();
    let last_chunk_start = pack.len() - CHUNK_HEADER_BYTES - 50;

    for cut in last_chunk_start..=pack.len() {
        let dir = scratch_dir();
        fs::write(pack_path(dir.path(), 1), &pack[..cut]).unwrap();
        let mut store = OutputStore::open(dir.path()).unwrap();
        let whole = cut == pack.len();
        assert_eq!(store.len(2).unwrap(), if whole { 90 } else { 40 }, "cut at {cut}");
        assert_eq!(store.len(1).unwrap(), 40);
        assert_eq!(store.len(3).unwrap(), 40);
        let expected_pack_len = if whole { pack.len() } else { last_chunk_start };
        assert_eq!(fs::metadata(pack_path(dir.path(), 1)).unwrap().len(), expected_pack_len as u64, "cut at {cut}");
        assert_eq!(store.write_at(2, 40, &bytes_of(2, 40, 60)).unwrap(), 100, "the resend after the cut");
        assert_eq!(store.read(2, 0, 1000).unwrap(), bytes_of(2, 0, 100));
        drop(store);
        let mut store = OutputStore::open(dir.path()).unwrap();
        assert_eq!(store.read(2, 0, 1000).unwrap(), bytes_of(2, 0, 100), "cut at {cut}, reopened");
    }
}

#[test]
fn a_pack_torn_while_it_was_being_sealed_is_cut_and_indexed() {
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), options(256)).unwrap();
    store.write_at(1, 0, &bytes_of(1, 0, 100)).unwrap();
    store.write_at(2, 0, &bytes_of(2, 0, 80)).unwrap();
    store.write_at(3, 0, &bytes_of(3, 0, 100)).unwrap();
    assert_eq!(store.stats().packs, 2, "run 3 went into pack 2; pack 1 has no index yet");
    drop(store);
    let pack_1 = pack_path(dir.path(), 1);
    let torn = fs::metadata(&pack_1).unwrap().len() - 10;
    fs::OpenOptions::new().write(true).open(&pack_1).unwrap().set_len(torn).unwrap();

    let mut store = OutputStore::open_with(dir.path(), options(256)).unwrap();
    assert_eq!(store.len(1).unwrap(), 100);
    assert_eq!(store.len(2).unwrap(), 0, "its only chunk was torn");
    assert_eq!(store.read(3, 0, 1000).unwrap(), bytes_of(3, 0, 100));
    assert!(index_path(dir.path(), 1).is_file());
    assert_eq!(fs::metadata(&pack_1).unwrap().len(), (CHUNK_HEADER_BYTES + 100) as u64);
    assert_eq!(store.write_at(2, 0, &bytes_of(2, 0, 80)).unwrap(), 80);
    assert_eq!(store.read(2, 0, 1000).unwrap(), bytes_of(2, 0, 80));
}

/// Five runs of 200 bytes in packs of 256 bytes: packs 1 to 4 sealed and indexed, 5 current.
fn five_sealed_runs(dir: &Path) {
    let mut store = OutputStore::open_with(dir, options(256)).unwrap();
    for run_id in 1..=5u64 {
        store.write_at(run_id, 0, &bytes_of(run_id, 0, 200)).unwrap();
        store.close(run_id);
    }
    store.take_sync_job().unwrap().run().unwrap();
    assert_eq!(store.stats().packs, 5);
    assert_eq!(store.stats().unindexed_packs, 0);
}

fn assert_five_runs_read_back(dir: &Path) {
    let mut store = OutputStore::open_with(dir, options(256)).unwrap();
    for run_id in 1..=5u64 {
        assert_eq!(store.len(run_id).unwrap(), 200);
        assert_eq!(store.read(run_id, 0, 1000).unwrap(), bytes_of(run_id, 0, 200), "run {run_id}");
    }
}

#[test]
fn a_missing_index_is_rebuilt_by_scanning_its_pack() {
    let dir = scratch_dir();
    five_sealed_runs(dir.path());
    let original = fs::read(index_path(dir.path(), 2)).unwrap();
    fs::remove_file(index_path(dir.path(), 2)).unwrap();
    assert_five_runs_read_back(dir.path());
    assert_eq!(fs::read(index_path(dir.path(), 2)).unwrap(), original);
}

#[test]
fn a_damaged_index_header_is_rebuilt_by_scanning_its_pack() {
    let dir = scratch_dir();
    five_sealed_runs(dir.path());
    let original = fs::read(index_path(dir.path(), 3)).unwrap();
    flip_byte(&index_path(dir.path(), 3), 20);
    assert_five_runs_read_back(dir.path());
    assert_eq!(fs::read(index_path(dir.path(), 3)).unwrap(), original);
    fs::write(index_path(dir.path(), 3), &original[..10]).unwrap();
    assert_five_runs_read_back(dir.path());
    assert_eq!(fs::read(index_path(dir.path(), 3)).unwrap(), original, "a truncated index too");
}

#[test]
fn a_damaged_pack_with_a_damaged_index_is_refused_by_name() {
    let dir = scratch_dir();
    five_sealed_runs(dir.path());
    flip_byte(&index_path(dir.path(), 3), 20);
    flip_byte(&pack_path(dir.path(), 3), CHUNK_HEADER_BYTES + 7);
    let error = OutputStore::open_with(dir.path(), options(256)).unwrap_err();
    match &error {
        OutputError::Corrupted { file, offset: 0, .. } => assert_eq!(file, &pack_path(dir.path(), 3)),
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("0000000003.pack"), "{error}");
}

#[test]
fn a_damaged_index_entry_is_refused_by_name_when_read() {
    let dir = scratch_dir();
    five_sealed_runs(dir.path());
    // The index header is 64 bytes; pack 2 holds one entry, run 2's.
    flip_byte(&index_path(dir.path(), 2), 64 + 3);
    let mut store = OutputStore::open_with(dir.path(), options(256)).unwrap();
    let error = store.read(2, 0, 10).unwrap_err();
    assert!(matches!(&error, OutputError::Corrupted { file, .. } if file == &index_path(dir.path(), 2)), "{error}");
    assert_eq!(store.read(1, 0, 1000).unwrap(), bytes_of(1, 0, 200), "other packs are unaffected");
}

#[test]
fn duplicated_chunks_found_after_a_reopen_change_neither_lengths_nor_bytes() {
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), options(512)).unwrap();
    store.write_at(7, 0, &bytes_of(7, 0, 30)).unwrap();
    store.write_at(7, 30, &bytes_of(7, 30, 30)).unwrap();
    store.take_sync_job().unwrap().run().unwrap();
    drop(store);
    // The first chunk again (its acknowledgement was lost), and a copy overlapping both.
    append(&pack_path(dir.path(), 1), &encode_chunk(7, 0, &bytes_of(7, 0, 30)));
    append(&pack_path(dir.path(), 1), &encode_chunk(7, 20, &bytes_of(7, 20, 20)));

    let mut store = OutputStore::open_with(dir.path(), options(512)).unwrap();
    assert_eq!(store.len(7).unwrap(), 60);
    assert_eq!(store.read(7, 0, 1000).unwrap(), bytes_of(7, 0, 60));
    assert_eq!(store.write_at(7, 0, &bytes_of(7, 0, 60)).unwrap(), 60, "a resend after the reopen");
    assert_eq!(store.write_at(7, 50, &bytes_of(7, 50, 400)).unwrap(), 450, "the next chunk seals the pack");
    store.close(7);
    store.take_sync_job().unwrap().run().unwrap();
    assert_eq!(store.stats().packs, 2);
    drop(store);
    let mut store = OutputStore::open_with(dir.path(), options(512)).unwrap();
    assert_eq!(store.len(7).unwrap(), 450, "through the sealed pack's index");
    assert_eq!(store.read(7, 0, 1000).unwrap(), bytes_of(7, 0, 450));
}

#[test]
fn retention_removes_only_whole_packs_below_the_cutoff_without_open_runs() {
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), options(256)).unwrap();
    for run_id in [100u64, 200, 300, 400] {
        store.write_at(run_id, 0, &bytes_of(run_id, 0, 200)).unwrap();
    }
    for run_id in [100u64, 300, 400] {
        store.close(run_id);
    }
    let removed = store.remove_packs_before(350, usize::MAX).unwrap();
    assert_eq!(removed, RemovedPacks::default(), "packs whose index is not durable yet stay");
    store.take_sync_job().unwrap().run().unwrap();

    let chunk_pack_bytes = (CHUNK_HEADER_BYTES + 200) as u64;
    let removed = store.remove_packs_before(350, usize::MAX).unwrap();
    assert_eq!(removed, RemovedPacks { packs: 2, bytes: 2 * chunk_pack_bytes }, "packs 1 and 3; 2 holds open run 200");
    assert_eq!(file_names(dir.path()), ["0000000002.idx", "0000000002.pack", "0000000004.pack"]);
    assert_eq!(store.len(100).unwrap(), 0, "a removed run reads as empty");
    assert!(store.read(300, 0, 10).unwrap().is_empty());
    assert_eq!(store.read(200, 0, 1000).unwrap(), bytes_of(200, 0, 200));
    assert_eq!(store.read(400, 0, 1000).unwrap(), bytes_of(400, 0, 200), "the current pack is never removed");

    store.close(200);
    assert_eq!(
        store.remove_packs_before(200, usize::MAX).unwrap(),
        RemovedPacks::default(),
        "run 200 is not below 200"
    );
    assert_eq!(store.remove_packs_before(201, 1).unwrap(), RemovedPacks { packs: 1, bytes: chunk_pack_bytes });
    assert_eq!(store.stats().packs, 1);
    drop(store);
    let mut store = OutputStore::open_with(dir.path(), options(256)).unwrap();
    assert_eq!(store.len(200).unwrap(), 0);
    assert_eq!(store.read(400, 0, 1000).unwrap(), bytes_of(400, 0, 200));
}

#[test]
fn disk_use_stays_flat_when_retention_keeps_up() {
    let dir = scratch_dir();
    let mut store = OutputStore::open_with(dir.path(), options(1024)).unwrap();
    let mut peak_packs = 0;
    for run_id in 1..=2_000u64 {
        store.write_at(run_id, 0, &bytes_of(run_id, 0, 50)).unwrap();
        store.close(run_id);
        if run_id % 50 == 0 {
            store.take_sync_job().unwrap().run().unwrap();
            store.remove_packs_before(run_id.saturating_sub(200), usize::MAX).unwrap();
            peak_packs = peak_packs.max(store.stats().packs);
        }
    }
    assert!(peak_packs <= 20, "{peak_packs} packs");
    assert!(file_names(dir.path()).len() <= 2 * peak_packs);
}

#[derive(Debug, Clone)]
enum Step {
    /// Writes `count` bytes of `run` starting `back` bytes before its end (a resend or an
    /// overlap when `back > 0`), or `back` past it when `gap`.
    Write {
        run: u64,
        back: u64,
        count: u64,
        gap: bool,
    },
    Read {
        run: u64,
        offset: u64,
        max_bytes: usize,
    },
    Close {
        run: u64,
    },
    Sync,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..6u64, 0..40u64, 1..300u64, prop::bool::weighted(0.05))
            .prop_map(|(run, back, count, gap)| Step::Write { run, back, count, gap }),
        3 => (0..6u64, 0..700u64, 0..400usize).prop_map(|(run, offset, max_bytes)| Step::Read { run, offset, max_bytes }),
        2 => (0..6u64).prop_map(|run| Step::Close { run }),
        1 => Just(Step::Sync),
        1 => Just(Step::Reopen),
    ]
}

/// Run ids are spread like time-ordered ids: a few runs far apart.
fn run_id(run: u64) -> u64 {
    (run + 1) << 40 | run
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn interleaved_runs_across_packs_read_back_like_the_model(steps in prop::collection::vec(step(), 1..120)) {
        const PACK_BYTES: u64 = 600;
        let dir = scratch_dir();
        let mut store = OutputStore::open_with(dir.path(), options(PACK_BYTES)).unwrap();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Write { run, back, count, gap } => {
                    let id = run_id(run);
                    let len = model.get(&id).copied().unwrap_or(0);
                    if gap {
                        let error = store.write_at(id, len + back + 1, &bytes_of(id, len + back + 1, count)).unwrap_err();
                        let is_gap = matches!(error, OutputError::Gap { expected, .. } if expected == len);
                        prop_assert!(is_gap, "{}", error);
                        continue;
                    }
                    let offset = len.saturating_sub(back);
                    let new_len = store.write_at(id, offset, &bytes_of(id, offset, count)).unwrap();
                    let expected = len.max(offset + count);
                    prop_assert_eq!(new_len, expected);
                    model.insert(id, expected);
                }
                Step::Read { run, offset, max_bytes } => {
                    let id = run_id(run);
                    let len = model.get(&id).copied().unwrap_or(0);
                    let count = len.saturating_sub(offset).min(max_bytes as u64);
                    prop_assert_eq!(store.read(id, offset, max_bytes).unwrap(), bytes_of(id, offset, count));
                }
                Step::Close { run } => store.close(run_id(run)),
                Step::Sync => {
                    if let Some(job) = store.take_sync_job() {
                        job.run().unwrap();
                    }
                }
                Step::Reopen => {
                    drop(store);
                    store = OutputStore::open_with(dir.path(), options(PACK_BYTES)).unwrap();
                }
            }
            for (&id, &len) in &model {
                prop_assert_eq!(store.len(id).unwrap(), len, "run {:x}", id);
            }
        }
        drop(store);
        let mut store = OutputStore::open_with(dir.path(), options(PACK_BYTES)).unwrap();
        for (&id, &len) in &model {
            prop_assert_eq!(store.read(id, 0, usize::MAX).unwrap(), bytes_of(id, 0, len));
        }
        let packs = store.stats().packs;
        prop_assert!(file_names(dir.path()).len() <= 2 * packs);
    }
}

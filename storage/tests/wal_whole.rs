//! The log checked as a whole: missing segments (first, middle, last per HEAD), a segment
//! shorter than it was made and a sequence gap are refused with the range named and nothing
//! changed on disk, or, when the loss is accepted, dropped exactly as reported, with appends
//! continuing after every number that existed. Also: leftovers of interrupted rotations and
//! deletions, deletion through the API, and reading from another thread.

mod common;

use std::path::Path;

use apiary_storage::{LogStart, LossKind, Wal, WalError, read_records};
use common::{ModelRecord, listing, options, payload_for, read_all, scratch_dir, segment_path};

const SEGMENT_BYTES: u64 = 1024;
/// Records of 300 bytes take 336: two per segment, so segment `k` holds `2k + 1` and `2k + 2`.
const TWELVE_RECORDS: &[usize] = &[300; 12];

fn accept(first_needed_seq: u64) -> LogStart {
    LogStart { first_needed_seq, accept_loss: true }
}

/// Opening refuses the log with this loss and changes nothing on disk.
fn assert_refused(dir: &Path, kind: LossKind, first_seq: u64, last_seq: Option<u64>, names: &[&str]) {
    let before = listing(dir);
    let error = Wal::open(dir, options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD).unwrap_err();
    let WalError::Missing { loss } = &error else { panic!("not a loss: {error}") };
    assert_eq!((loss.kind, loss.first_seq, loss.last_seq), (kind, first_seq, last_seq), "{error}");
    let message = error.to_string();
    for name in names {
        assert!(message.contains(name), "{message} does not name {name}");
    }
    assert_eq!(listing(dir), before, "a refused log is left as found");
}

/// Appends a record after an accepted loss, checks it takes a new number, and that the log
/// reopens without asking again.
fn append_after_loss(dir: &Path, mut wal: Wal, kept: Vec<ModelRecord>, at_least: u64) {
    let seq = wal.append(5, b"after the loss").unwrap();
    assert!(seq >= at_least, "sequence number {seq} may reuse an old one (< {at_least})");
    wal.take_sync_job().unwrap().run().unwrap();
    drop(wal);
    let (wal, recovery) = Wal::open(dir, options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD).unwrap();
    assert!(recovery.dropped.is_empty(), "{recovery}");
    let mut expected = kept;
    expected.push(ModelRecord { seq, kind: 5, payload: b"after the loss".to_vec() });
    assert_eq!(read_all(&wal), expected);
    wal.check_invariants();
}

fn dropped_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("dropped"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_missing_middle_segment_is_refused_or_dropped_with_what_follows() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    assert_refused(dir.path(), LossKind::MissingMiddle, 5, Some(6), &["00000000000000000002.wal", "records 5..=6"]);

    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), accept(1)).unwrap();
    assert_eq!(recovery.dropped.len(), 2, "{recovery}");
    assert_eq!(recovery.dropped[1].kind, LossKind::AfterLoss);
    assert_eq!((recovery.dropped[1].first_seq, recovery.dropped[1].last_seq), (7, Some(12)));
    assert!(recovery.to_string().contains("records 5..=6 are missing"), "{recovery}");
    assert_eq!(
        dropped_names(dir.path()),
        ["00000000000000000003.wal", "00000000000000000004.wal", "00000000000000000005.wal"]
    );
    assert_eq!(read_all(&wal), model[..4].to_vec());
    append_after_loss(dir.path(), wal, model[..4].to_vec(), 13);
}

#[test]
fn a_missing_first_segment_is_refused_or_the_log_keeps_nothing() {
    let dir = scratch_dir();
    common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    std::fs::remove_file(segment_path(dir.path(), 0)).unwrap();
    assert_refused(dir.path(), LossKind::MissingFirst, 1, Some(2), &["00000000000000000001.wal", "records 1..=2"]);

    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), accept(1)).unwrap();
    assert_eq!(recovery.records, 0);
    assert_eq!((recovery.dropped[1].first_seq, recovery.dropped[1].last_seq), (3, Some(12)));
    assert_eq!(dropped_names(dir.path()).len(), 5);
    assert_eq!(read_all(&wal), vec![]);
    append_after_loss(dir.path(), wal, vec![], 13);
}

#[test]
fn a_missing_last_segment_per_head_is_refused_or_numbers_skip_what_it_could_hold() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    std::fs::remove_file(segment_path(dir.path(), 5)).unwrap();
    assert_refused(dir.path(), LossKind::MissingLast, 11, None, &["00000000000000000005.wal", "records from 11 on"]);

    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), accept(1)).unwrap();
    assert_eq!(recovery.dropped.len(), 1);
    assert_eq!(read_all(&wal), model[..10].to_vec());
    // The lost segment could have held up to 2^30 / 32 records.
    append_after_loss(dir.path(), wal, model[..10].to_vec(), 11 + (1 << 25));
}

#[test]
fn a_log_without_head_is_missing_its_last_segment() {
    let dir = scratch_dir();
    common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    std::fs::remove_file(dir.path().join("HEAD")).unwrap();
    assert_refused(dir.path(), LossKind::MissingLast, 13, None, &["HEAD"]);
}

#[test]
fn a_shortened_segment_is_refused_or_kept_up_to_the_cut() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    let file = std::fs::OpenOptions::new().write(true).open(segment_path(dir.path(), 3)).unwrap();
    file.set_len(500).unwrap();
    drop(file);
    assert_refused(
        dir.path(),
        LossKind::Shortened,
        8,
        Some(8),
        &["00000000000000000003.wal", "shorter than it was made (500 of 1024 bytes)"],
    );

    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), accept(1)).unwrap();
    assert_eq!((recovery.dropped[1].first_seq, recovery.dropped[1].last_seq), (9, Some(12)), "{recovery}");
    assert_eq!(std::fs::metadata(segment_path(dir.path(), 3)).unwrap().len(), SEGMENT_BYTES, "length restored");
    assert_eq!(read_all(&wal), model[..7].to_vec());
    append_after_loss(dir.path(), wal, model[..7].to_vec(), 13);
}

/// A version 2 segment header, laid out as documented.
fn segment_header(index: u64, first_seq: u64) -> Vec<u8> {
    let mut header = vec![0u8; 48];
    header[0..8].copy_from_slice(b"APIARYWL");
    header[8..12].copy_from_slice(&2u32.to_le_bytes());
    header[16..24].copy_from_slice(&index.to_le_bytes());
    header[24..32].copy_from_slice(&first_seq.to_le_bytes());
    header[36..44].copy_from_slice(&SEGMENT_BYTES.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..32]);
    hasher.update(&header[36..48]);
    header[32..36].copy_from_slice(&hasher.finalize().to_le_bytes());
    header
}

fn write_segment(dir: &Path, index: u64, first_seq: u64, seqs: std::ops::RangeInclusive<u64>) {
    let mut bytes = segment_header(index, first_seq);
    for seq in seqs {
        bytes.extend_from_slice(&common::encode_record(1, seq, &payload_for(seq, 300)));
    }
    bytes.resize(SEGMENT_BYTES as usize, 0);
    std::fs::write(segment_path(dir, index), bytes).unwrap();
}

#[test]
fn a_sequence_gap_between_segments_is_refused_or_dropped() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), SEGMENT_BYTES, &[300; 4]);
    write_segment(dir.path(), 2, 7, 7..=8);
    common::write_head(dir.path(), 2);
    assert_refused(dir.path(), LossKind::SequenceGap, 5, Some(6), &["00000000000000000002.wal", "records 5..=6"]);

    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), accept(1)).unwrap();
    assert_eq!((recovery.dropped[1].first_seq, recovery.dropped[1].last_seq), (7, Some(8)));
    append_after_loss(dir.path(), wal, model, 9);
}

#[test]
fn a_segment_renamed_into_place_before_head_was_updated_is_kept() {
    let dir = scratch_dir();
    let mut model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    write_segment(dir.path(), 6, 13, 13..=13);
    std::fs::write(dir.path().join("00000000000000000007.wal.spare.tmp"), [7u8; 100]).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!((recovery.last_seq, recovery.torn_tail.clone()), (13, None));
    model.push(ModelRecord { seq: 13, kind: 1, payload: payload_for(13, 300) });
    assert_eq!(read_all(&wal), model);
    // The preparer removes the leftover, then makes a spare of its own under the same name.
    wal.wait_for_preparer().unwrap();
    let spare = std::fs::read(dir.path().join("00000000000000000007.wal.spare.tmp")).unwrap();
    assert!(spare.len() as u64 == SEGMENT_BYTES && !spare.contains(&7), "a spare never in place was replaced");
}

#[test]
fn segments_left_before_the_snapshot_by_an_interrupted_deletion_are_removed() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    // The deletion of segments 0..=2 (records up to 6, covered by a snapshot) removed 0 only.
    std::fs::remove_file(segment_path(dir.path(), 0)).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::after_snapshot(6)).unwrap();
    assert_eq!((recovery.removed_before_start, recovery.records), (2, 6));
    assert!(!segment_path(dir.path(), 2).exists());
    assert_eq!(read_all(&wal), model[6..].to_vec());
    wal.check_invariants();
}

#[test]
fn records_before_the_first_needed_one_are_skipped() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
    let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::after_snapshot(7)).unwrap();
    assert_eq!((recovery.records, recovery.removed_before_start), (5, 3));
    assert_eq!(read_all(&wal), model[7..].to_vec());
}

#[test]
fn a_log_behind_the_snapshot_is_refused() {
    let dir = scratch_dir();
    common::write_log(dir.path(), SEGMENT_BYTES, &[300; 3]);
    let error = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::after_snapshot(9)).unwrap_err();
    assert!(matches!(&error, WalError::Missing { loss } if loss.kind == LossKind::MissingLast), "{error}");
}

#[test]
fn remove_segments_through_keeps_the_active_segment_and_leaves_an_openable_log() {
    let dir = scratch_dir();
    let (mut wal, _) = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD).unwrap();
    for seq in 1..=9u64 {
        wal.append(1, &payload_for(seq, 300)).unwrap();
    }
    wal.rotate_now().unwrap();
    wal.take_sync_job().unwrap().run().unwrap();
    let snapshot_seq = wal.last_seq();
    let active = *wal.segment_indices().last().unwrap();
    assert_eq!(wal.remove_segments_through(snapshot_seq), active as usize);
    assert_eq!(wal.segment_indices(), vec![active]);
    assert_eq!(wal.remove_segments_through(u64::MAX), 0, "the active segment stays");
    wal.wait_for_preparer().unwrap();
    assert!((0..active).all(|index| !segment_path(dir.path(), index).exists()));
    let seq = wal.append(2, b"after the snapshot").unwrap();
    wal.take_sync_job().unwrap().run().unwrap();
    drop(wal);
    let (wal, recovery) =
        Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::after_snapshot(snapshot_seq)).unwrap();
    assert_eq!((recovery.records, recovery.last_seq), (1, seq));
    wal.check_invariants();
}

#[test]
fn the_reader_returns_exactly_the_durable_records_asked_for_while_the_writer_appends() {
    let dir = scratch_dir();
    let (mut wal, _) = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap();
    let mut model = Vec::new();
    for seq in 1..=400u64 {
        let payload = payload_for(seq, (seq as usize * 37) % 250);
        wal.append(3, &payload).unwrap();
        model.push(ModelRecord { seq, kind: 3, payload });
    }
    wal.take_sync_job().unwrap().run().unwrap();
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut read = Vec::new();
            read_records(dir.path(), 37, 400, |record| {
                assert_eq!(record.payload.as_ptr() as usize % 16, 0, "payload of {} is not aligned", record.seq);
                read.push(ModelRecord { seq: record.seq, kind: record.kind, payload: record.payload.to_vec() });
                Ok::<(), String>(())
            })
            .unwrap();
            read
        });
        for seq in 401..=1200u64 {
            wal.append(3, &payload_for(seq, 100)).unwrap();
            if seq % 100 == 0 {
                wal.take_sync_job().unwrap().run().unwrap();
            }
        }
        assert_eq!(reader.join().unwrap(), model[36..].to_vec());
    });
    let result = read_records(dir.path(), 1, 5000, |_| Ok::<(), String>(()));
    assert!(result.is_err(), "records past the end are not there");
}

/// A crash at any point of a deletion (oldest first) of the segments a snapshot covers:
/// the log opens with every record after the snapshot.
#[test]
fn a_crash_at_any_point_of_a_deletion_leaves_a_log_that_opens() {
    for deleted in 0..=3 {
        let dir = scratch_dir();
        let model = common::write_log(dir.path(), SEGMENT_BYTES, TWELVE_RECORDS);
        for index in 0..deleted {
            std::fs::remove_file(segment_path(dir.path(), index)).unwrap();
        }
        let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::after_snapshot(6))
            .unwrap_or_else(|error| panic!("after deleting {deleted} segments: {error}"));
        assert_eq!(recovery.removed_before_start, 3 - deleted);
        assert_eq!(read_all(&wal), model[6..].to_vec(), "after deleting {deleted} segments");
    }
}

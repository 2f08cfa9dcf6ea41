//! Crash and corruption testing of WAL recovery, the way redb and TigerBeetle do it: cut
//! the log at every byte of its written part, flip bytes and bits, plant stale records of
//! an older generation. After reopening, the log holds a prefix of what was written (and
//! every record the damage did not touch when the damage is a cut), or opening fails with
//! `Corrupted` naming the segment and offset. Never a wrong record, never a panic.

mod common;

use std::path::Path;

use apiary_storage::{LogStart, Wal, WalError};
use common::{ModelRecord, Placement, options, placements, read_all, restore_files, scratch_dir, segment_path};

const SEGMENT_BYTES: u64 = 512;
/// One segment: a few records of varied sizes, an empty payload among them.
const ONE_SEGMENT: &[usize] = &[5, 0, 40, 17, 100];
/// Two segments: the sixth record does not fit in the first.
const TWO_SEGMENTS: &[usize] = &[5, 0, 40, 17, 100, 150, 3, 64];

/// Writes a log and returns its model, the records' placements and the written length of
/// each segment (the end of its last record).
fn prepare(dir: &Path, lengths: &[usize]) -> (Vec<ModelRecord>, Vec<Placement>, Vec<usize>) {
    let model = common::write_log(dir, SEGMENT_BYTES, lengths);
    let placements = placements(lengths, SEGMENT_BYTES as usize);
    let segments = placements.last().unwrap().segment as usize + 1;
    let written_ends = (0..segments)
        .map(|segment| {
            let last = placements.iter().rfind(|placement| placement.segment == segment as u64).unwrap();
            (last.start + common::RECORD_HEADER_BYTES + (last.payload_end - last.start - 32).next_multiple_of(16))
                .max(common::SEGMENT_HEADER_BYTES)
        })
        .collect();
    (model, placements, written_ends)
}

/// Appends one record after recovery, syncs, reopens, and checks everything is there.
fn append_and_reopen(dir: &Path, mut wal: Wal, mut expected: Vec<ModelRecord>) {
    let seq = wal.last_seq() + 1;
    let record = ModelRecord { seq, kind: 9, payload: common::payload_for(seq, 33) };
    assert_eq!(wal.append(record.kind, &record.payload).unwrap(), seq);
    expected.push(record);
    wal.take_sync_job().unwrap().run().unwrap();
    wal.check_invariants();
    drop(wal);
    let (wal, recovery) = Wal::open(dir, options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!(recovery.torn_tail, None, "the cut tail was zeroed on disk");
    assert_eq!(read_all(&wal), expected);
    wal.check_invariants();
}

fn cut_at_every_byte(lengths: &[usize]) {
    let dir = scratch_dir();
    let (model, placements, written_ends) = prepare(dir.path(), lengths);
    let pristine = common::snapshot_files(dir.path());
    assert_eq!(pristine.len(), written_ends.len());
    for (cut_segment, &written_end) in written_ends.iter().enumerate() {
        // A segment's header is synced before the segment gets its name: cuts start after it.
        for cut_offset in common::SEGMENT_HEADER_BYTES..=written_end {
            restore_files(dir.path(), &pristine);
            // The cut: zeros from the offset to the end of its segment. Later segments were
            // never renamed into place (their sync job syncs this one first), and HEAD
            // names the cut segment.
            let (path, bytes) = &pristine[cut_segment];
            let mut bytes = bytes.clone();
            bytes[cut_offset..].fill(0);
            std::fs::write(path, bytes).unwrap();
            for (later, _) in &pristine[cut_segment + 1..] {
                std::fs::remove_file(later).unwrap();
            }
            common::write_head(dir.path(), cut_segment as u64);
            let survivors: Vec<ModelRecord> = model
                .iter()
                .zip(&placements)
                .filter(|(_, placement)| {
                    (placement.segment as usize) < cut_segment
                        || (placement.segment as usize == cut_segment && placement.payload_end <= cut_offset)
                })
                .map(|(record, _)| record.clone())
                .collect();
            let context = format!("cut in segment {cut_segment} at {cut_offset}");
            let (wal, recovery) = Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD)
                .unwrap_or_else(|error| panic!("{context}: {error}"));
            assert_eq!(read_all(&wal), survivors, "{context}");
            assert_eq!(recovery.records, survivors.len() as u64, "{context}");
            assert_eq!(recovery.last_seq, survivors.len() as u64, "{context}");
            if survivors.len() == model.len() {
                assert_eq!(recovery.torn_tail, None, "{context}: nothing was cut");
            }
            wal.check_invariants();
            append_and_reopen(dir.path(), wal, survivors);
        }
    }
}

#[test]
fn a_cut_at_any_byte_of_one_segment_keeps_every_record_before_it() {
    cut_at_every_byte(ONE_SEGMENT);
}

#[test]
fn a_cut_at_any_byte_of_two_segments_keeps_every_record_before_it() {
    cut_at_every_byte(TWO_SEGMENTS);
}

/// What a damaged log may open to.
enum Expect {
    /// Every record is still there (the damage hit padding or zeros of the last segment).
    AllRecords,
    /// All records but the last (the damage hit the last record: a torn tail).
    AllButLast,
    Corrupted {
        segment: u64,
        offset: u64,
    },
}

fn expectation(placements: &[Placement], written_ends: &[usize], segment: usize, offset: usize) -> Expect {
    let is_last_segment = segment + 1 == written_ends.len();
    if offset < common::SEGMENT_HEADER_BYTES {
        return Expect::Corrupted { segment: segment as u64, offset: 0 };
    }
    let hit = placements.iter().position(|placement| {
        placement.segment == segment as u64 && (placement.start..placement.payload_end).contains(&offset)
    });
    match hit {
        Some(index) if index + 1 == placements.len() => Expect::AllButLast,
        Some(index) => Expect::Corrupted { segment: segment as u64, offset: placements[index].start as u64 },
        // In padding: not covered by the CRC, and read by no one.
        None if offset < written_ends[segment] => Expect::AllRecords,
        None if is_last_segment => Expect::AllRecords,
        None => Expect::Corrupted { segment: segment as u64, offset: written_ends[segment] as u64 },
    }
}

fn damage_everywhere(lengths: &[usize]) {
    let dir = scratch_dir();
    let (model, placements, written_ends) = prepare(dir.path(), lengths);
    let pristine = common::snapshot_files(dir.path());
    let mut cases = 0;
    for (segment, &written_end) in written_ends.iter().enumerate() {
        // The written part, and a little of the zeros after it.
        for offset in 0..(written_end + 40).min(SEGMENT_BYTES as usize) {
            let in_a_header = offset < common::SEGMENT_HEADER_BYTES
                || placements.iter().any(|placement| {
                    placement.segment == segment as u64
                        && (placement.start..placement.start + common::RECORD_HEADER_BYTES).contains(&offset)
                });
            // Every bit of every header byte; elsewhere the whole byte.
            let masks: &[u8] = if in_a_header { &[1, 2, 4, 8, 16, 32, 64, 128] } else { &[0xff] };
            for &mask in masks {
                restore_files(dir.path(), &pristine);
                let (path, bytes) = &pristine[segment];
                let mut bytes = bytes.clone();
                bytes[offset] ^= mask;
                std::fs::write(path, bytes).unwrap();
                let context = format!("flip {mask:#04x} in segment {segment} at {offset}");
                check_damaged(dir.path(), &model, expectation(&placements, &written_ends, segment, offset), &context);
                cases += 1;
            }
        }
    }
    assert!(cases > 500, "{cases} cases");
}

fn check_damaged(dir: &Path, model: &[ModelRecord], expect: Expect, context: &str) {
    let result = Wal::open(dir, options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD);
    match (expect, result) {
        (Expect::AllRecords, Ok((wal, _))) => {
            assert_eq!(read_all(&wal), model, "{context}");
            append_and_reopen(dir, wal, model.to_vec());
        }
        (Expect::AllButLast, Ok((wal, recovery))) => {
            assert_eq!(read_all(&wal), &model[..model.len() - 1], "{context}");
            assert!(recovery.torn_tail.is_some(), "{context}");
            append_and_reopen(dir, wal, model[..model.len() - 1].to_vec());
        }
        (
            Expect::Corrupted { segment, offset },
            Err(WalError::Corrupted { segment: got_segment, offset: got_offset, reason }),
        ) => {
            assert_eq!((got_segment, got_offset), (segment, offset), "{context}: {reason}");
        }
        (_, Err(error)) => panic!("{context}: unexpected error {error}"),
        (_, Ok((wal, _))) => {
            panic!("{context}: opened with {} records where corruption was expected", wal.records().count())
        }
    }
}

#[test]
fn flipped_bytes_in_one_segment_give_a_prefix_or_corruption() {
    damage_everywhere(ONE_SEGMENT);
}

#[test]
fn flipped_bytes_in_two_segments_give_a_prefix_or_corruption() {
    damage_everywhere(TWO_SEGMENTS);
}

/// Records of an older generation (lower sequence numbers) after the end are a tail to cut,
/// unless the expected next record follows them.
#[test]
fn stale_records_after_the_end_are_cut_unless_the_next_record_follows() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), 4096, &[20, 30, 40]);
    let end = placements(&[20, 30, 40], 4096).last().unwrap().payload_end.next_multiple_of(16);
    let pristine = common::snapshot_files(dir.path());
    let path = segment_path(dir.path(), 0);
    let stale = common::encode_record(1, 2, b"an older generation's record two");

    // A stale record right after the end, and one further on after zeros.
    let mut bytes = pristine[0].1.clone();
    bytes[end..end + stale.len()].copy_from_slice(&stale);
    bytes[end + 512..end + 512 + stale.len()].copy_from_slice(&stale);
    std::fs::write(&path, &bytes).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!(read_all(&wal), model);
    let tail = recovery.torn_tail.expect("the stale records are cut");
    assert_eq!((tail.segment, tail.offset), (0, end as u64));
    assert_eq!(tail.bytes_cut, (512 + stale.len()) as u64);
    assert_eq!(tail.records_cut, 2, "both stale records are counted");
    assert!(tail.to_string().contains("holding 2 whole records"), "{tail}");
    append_and_reopen_with(dir.path(), wal, model.clone(), 4096);

    // A stale record followed by the record that should come next: something was lost.
    restore_files(dir.path(), &pristine);
    let mut bytes = pristine[0].1.clone();
    let next = common::encode_record(1, 4, b"record four");
    bytes[end..end + stale.len()].copy_from_slice(&stale);
    bytes[end + stale.len()..end + stale.len() + next.len()].copy_from_slice(&next);
    std::fs::write(&path, &bytes).unwrap();
    let error = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap_err();
    assert!(matches!(error, WalError::Corrupted { segment: 0, offset, .. } if offset == end as u64), "{error}");
    assert!(error.to_string().contains("segment 0 at offset"), "{error}");
}

fn append_and_reopen_with(dir: &Path, mut wal: Wal, mut expected: Vec<ModelRecord>, segment_bytes: u64) {
    let seq = wal.last_seq() + 1;
    let record = ModelRecord { seq, kind: 9, payload: common::payload_for(seq, 33) };
    wal.append(record.kind, &record.payload).unwrap();
    expected.push(record);
    wal.take_sync_job().unwrap().run().unwrap();
    drop(wal);
    let (wal, recovery) = Wal::open(dir, options(segment_bytes), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!(recovery.torn_tail, None);
    assert_eq!(read_all(&wal), expected);
}

/// Arbitrary bytes where a segment should be never panic the recovery.
#[test]
fn garbage_segments_never_panic() {
    let dir = scratch_dir();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        restore_files(dir.path(), &[]);
        let mut bytes = vec![0u8; 512];
        let valid = common::encode_record(1, 1, b"first");
        for byte in bytes.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = if round % 2 == 0 { state as u8 } else { (state as u8) & 0x03 };
        }
        if round % 3 == 0 {
            // A valid header and record, then garbage.
            let header = segment_header_bytes();
            bytes[..48].copy_from_slice(&header);
            bytes[48..48 + valid.len()].copy_from_slice(&valid);
        }
        std::fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
        match Wal::open(dir.path(), options(SEGMENT_BYTES), LogStart::FROM_FIRST_RECORD) {
            Ok((wal, _)) => wal.check_invariants(),
            Err(WalError::Corrupted { .. }) => {}
            Err(error) => panic!("round {round}: {error}"),
        }
    }
}

/// The documented segment header of segment 0 starting at sequence number 1.
fn segment_header_bytes() -> [u8; 48] {
    let mut header = [0u8; 48];
    header[0..8].copy_from_slice(b"APIARYWL");
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[24..32].copy_from_slice(&1u64.to_le_bytes());
    let crc = crc32fast::hash(&header[0..32]);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    header
}

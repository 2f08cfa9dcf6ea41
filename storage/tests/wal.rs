//! The WAL's behaviour without crashes: records come back in order across rotations and
//! reopens, sync jobs run on another thread while appends go on, and limits hold.

mod common;

use std::sync::mpsc;
use std::thread;

use apiary_storage::{LogStart, RecordRef, Wal, WalError};
use common::{ModelRecord, options, payload_for, read_all, scratch_dir, segment_path};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Append { kind: u16, len: usize },
    Sync,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (any::<u16>(), prop_oneof![0usize..64, 64usize..700]).prop_map(|(kind, len)| Step::Append { kind, len }),
        1 => Just(Step::Sync),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever is appended comes back, in order, after any number of syncs and reopens.
    #[test]
    fn records_match_the_model(segment_bytes in prop_oneof![Just(1024u64), Just(4096u64)], steps in proptest::collection::vec(step(), 1..80)) {
        let dir = scratch_dir();
        let (mut wal, _) = Wal::open(dir.path(), options(segment_bytes), LogStart::FROM_FIRST_RECORD).unwrap();
        let mut model: Vec<ModelRecord> = Vec::new();
        for step in steps {
            match step {
                Step::Append { kind, len } => {
                    let seq = model.len() as u64 + 1;
                    let payload = payload_for(seq, len);
                    prop_assert_eq!(wal.append(kind, &payload).unwrap(), seq);
                    model.push(ModelRecord { seq, kind, payload });
                }
                Step::Sync => {
                    if let Some(job) = wal.take_sync_job() {
                        prop_assert_eq!(job.run().unwrap(), model.len() as u64);
                    }
                }
                Step::Reopen => {
                    // A clean shutdown syncs first: records in a segment whose sync job never
                    // ran were never acknowledged, and its spare file is not in place.
                    if let Some(job) = wal.take_sync_job() {
                        job.run().unwrap();
                    }
                    drop(wal);
                    let (reopened, recovery) = Wal::open(dir.path(), options(segment_bytes), LogStart::FROM_FIRST_RECORD).unwrap();
                    wal = reopened;
                    prop_assert_eq!(recovery.records, model.len() as u64);
                    prop_assert_eq!(recovery.torn_tail, None);
                }
            }
            wal.check_invariants();
            prop_assert_eq!(wal.last_seq(), model.len() as u64);
        }
        prop_assert_eq!(read_all(&wal), model.clone());
        if let Some(job) = wal.take_sync_job() {
            job.run().unwrap();
        }
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), options(segment_bytes), LogStart::FROM_FIRST_RECORD).unwrap();
        prop_assert_eq!(recovery.last_seq, model.len() as u64);
        prop_assert_eq!(read_all(&wal), model);
    }
}

#[test]
fn records_survive_rotation() {
    let dir = scratch_dir();
    let lengths: Vec<usize> = (0..40).map(|i| i * 13 % 300).collect();
    let model = common::write_log(dir.path(), 1024, &lengths);
    assert!(segment_path(dir.path(), 3).exists(), "the test should span several segments");
    let (wal, recovery) = Wal::open(dir.path(), options(1024), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!((recovery.records, recovery.last_seq, recovery.torn_tail), (40, 40, None));
    assert_eq!(read_all(&wal), model);
    wal.check_invariants();
}

#[test]
fn a_log_written_with_other_segment_sizes_reads_back() {
    let dir = scratch_dir();
    let mut model = common::write_log(dir.path(), 1024, &[100; 12]);
    let (mut wal, _) = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap();
    for seq in 13..=40 {
        let payload = payload_for(seq, 200);
        wal.append(1, &payload).unwrap();
        model.push(ModelRecord { seq, kind: 1, payload });
    }
    wal.take_sync_job().unwrap().run().unwrap();
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), options(1024), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!(read_all(&wal), model);
    wal.check_invariants();
}

#[test]
fn a_record_larger_than_a_segment_is_refused() {
    let dir = scratch_dir();
    let (mut wal, _) = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap();
    let limit = 4096 - common::SEGMENT_HEADER_BYTES - common::RECORD_HEADER_BYTES;
    let error = wal.append(1, &vec![7; limit + 1]).unwrap_err();
    assert!(
        matches!(error, WalError::RecordTooLarge { len, limit: reported } if len == limit + 1 && reported == limit)
    );
    assert_eq!(wal.last_seq(), 0);
    wal.append(1, b"small").unwrap();
    assert_eq!(wal.append(2, &vec![9; limit]).unwrap(), 2, "a record that exactly fills a segment fits");
    wal.check_invariants();
    let records: Vec<RecordRef<'_>> = wal.records().collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].payload.len(), limit);
}

/// Sync jobs may run on another thread (the daemon runs them on its event loop): one
/// syncs earlier bytes while later ones are written, across rotations.
#[test]
fn sync_jobs_run_on_another_thread_while_appends_continue() {
    let dir = scratch_dir();
    let (mut wal, _) = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap();
    let (job_sender, job_receiver) = mpsc::channel::<apiary_storage::SyncJob>();
    let (durable_sender, durable_receiver) = mpsc::channel::<u64>();
    let flusher = thread::spawn(move || {
        for job in job_receiver {
            let upto_seq = job.upto_seq();
            assert_eq!(job.run().unwrap(), upto_seq);
            durable_sender.send(upto_seq).unwrap();
        }
    });
    let mut model = Vec::new();
    let mut last_durable = 0;
    for seq in 1..=3000u64 {
        let payload = payload_for(seq, (seq as usize * 37) % 250);
        wal.append(3, &payload).unwrap();
        model.push(ModelRecord { seq, kind: 3, payload });
        if seq % 50 == 0 {
            job_sender.send(wal.take_sync_job().unwrap()).unwrap();
        }
        while let Ok(durable) = durable_receiver.try_recv() {
            assert!(durable > last_durable && durable <= seq);
            last_durable = durable;
        }
    }
    assert!(wal.take_sync_job().is_none(), "the last job covered everything");
    drop(job_sender);
    flusher.join().unwrap();
    let last = durable_receiver.iter().last().unwrap_or(last_durable);
    assert_eq!(last, 3000);
    assert_eq!(wal.durable_seq(), 3000);
    wal.check_invariants();
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), options(4096), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!(recovery.records, 3000);
    assert_eq!(read_all(&wal), model);
}

#[test]
fn an_unfinished_segment_creation_is_cleaned_up() {
    let dir = scratch_dir();
    let model = common::write_log(dir.path(), 1024, &[100; 5]);
    std::fs::write(dir.path().join("00000000000000000001.wal.tmp"), [1u8; 100]).unwrap();
    let (wal, recovery) = Wal::open(dir.path(), options(1024), LogStart::FROM_FIRST_RECORD).unwrap();
    assert_eq!(recovery.torn_tail, None);
    assert_eq!(read_all(&wal), model);
    assert!(!dir.path().join("00000000000000000001.wal.tmp").exists());
}

//! Group commit (ARCHITECTURE.md, decision 3). Every turn's output writes and
//! log records are one batch; one sync covers every batch written since the
//! last. A turn's replies and output reads are held until its batch is
//! durable, so no reply ever shows a fact that a crash could take back.
//!
//! Where the sync runs depends on the turn. After a small turn it runs on the
//! event loop's own thread: handing each sync to another thread, and waking the
//! loop after it, cost about 40% of the daemon's CPU per task on this project's
//! 2-vCPU machine and bought no latency (docs/hot-path.md); requests that
//! arrive during the sync wait in the socket buffers, and the next turn reads
//! them all. After a turn that wrote at least [`BACKGROUND_SYNC_MIN_RECORDS`]
//! records (a pipelined client, a burst) the sync goes to the sync thread and
//! the loop goes on reading and deciding the next batch while the disk works;
//! that batch's records wait for the sync after. One sync runs at a time, so
//! the log's sync jobs run in the order they were taken.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use apiary_protocol::Reply;
use apiary_storage::{OutputSyncJob, SyncJob};

use crate::core::{ConnId, OutputRead};
use crate::logging;

/// A turn that leaves at least this many records unsynced hands the sync to
/// the sync thread. Below it the hand-off's two thread wake-ups cost more than
/// overlapping the next, small, turn with the disk saves.
pub const BACKGROUND_SYNC_MIN_RECORDS: usize = 128;

/// What waits for durability before it leaves the daemon: a reply, already
/// encoded (so its size is known), or a read of the output store.
pub enum Held {
    Reply {
        conn: ConnId,
        frame: Vec<u8>,
    },
    Read(OutputRead),
    /// A reply to a request of an HTTP connection: it becomes part of a
    /// response only once durable.
    HttpReply {
        conn: ConnId,
        request_id: u64,
        reply: Box<Reply>,
    },
}

impl Held {
    pub fn conn(&self) -> ConnId {
        match self {
            Held::Reply { conn, .. } | Held::HttpReply { conn, .. } => *conn,
            Held::Read(read) => read.conn,
        }
    }
}

/// A finished sync: how long it took and the last log record it made durable.
struct Synced {
    took: Duration,
    upto_seq: Option<u64>,
}

type SyncJobs = (Option<SyncJob>, Option<OutputSyncJob>);

pub struct Durability {
    /// Batches written (turns that wrote records or output), and how many of
    /// them are durable.
    written_batch: u64,
    durable_batch: u64,
    /// Something was written since the last sync began (records, output, or a
    /// new log segment to install).
    unsynced: bool,
    unsynced_records: usize,
    /// The batch the sync thread is making durable.
    in_flight: Option<u64>,
    /// Held during the current turn: they wait for the batch the turn writes.
    turn_held: Vec<Held>,
    /// In the order they were produced, each with the batch it waits for.
    held: VecDeque<(u64, Held)>,
    slow: SlowSyncs,
    syncer: Syncer,
}

impl Durability {
    /// Starts the sync thread; it wakes the event loop after each sync.
    pub fn start(waker: Arc<mio::Waker>) -> Durability {
        Durability {
            written_batch: 0,
            durable_batch: 0,
            unsynced: false,
            unsynced_records: 0,
            in_flight: None,
            turn_held: Vec::new(),
            held: VecDeque::new(),
            slow: SlowSyncs::default(),
            syncer: Syncer::start(waker),
        }
    }

    /// Holds an item until everything the current turn writes is durable.
    pub fn hold(&mut self, item: Held) {
        self.turn_held.push(item);
    }

    /// Ends the turn's batch: `records` log records were written, and output
    /// too when `wrote`. The items held during the turn wait for this batch.
    pub fn end_batch(&mut self, records: usize, wrote: bool) {
        if wrote {
            self.written_batch += 1;
            self.unsynced = true;
            self.unsynced_records += records;
        }
        let batch = self.written_batch;
        self.held.extend(self.turn_held.drain(..).map(|item| (batch, item)));
    }

    /// Marks that the log has work for the next sync that no reply waits for
    /// (a new segment to install).
    pub fn log_changed(&mut self) {
        self.unsynced = true;
    }

    /// Something written waits for a sync, and none is running.
    pub fn sync_due(&self) -> bool {
        self.unsynced && self.in_flight.is_none()
    }

    /// Whether the sync now due should run on the sync thread.
    pub fn due_in_background(&self) -> bool {
        self.unsynced_records >= BACKGROUND_SYNC_MIN_RECORDS
    }

    /// Makes everything written so far durable on this thread (output first,
    /// then the log). An error is fatal: durability can no longer be promised.
    pub fn sync(&mut self, wal: Option<SyncJob>, outputs: Option<OutputSyncJob>) -> Result<Duration, String> {
        let batch = self.begin();
        let synced = run_sync((wal, outputs))?;
        Ok(self.finish(batch, synced))
    }

    /// Hands the sync of everything written so far to the sync thread.
    pub fn sync_in_background(&mut self, wal: Option<SyncJob>, outputs: Option<OutputSyncJob>) -> Result<(), String> {
        let batch = self.begin();
        self.in_flight = Some(batch);
        let jobs = self.syncer.jobs.as_ref().expect("the sync thread runs until it is dropped");
        jobs.send((wal, outputs)).map_err(|_| "the sync thread stopped".to_string())
    }

    /// The sync thread's sync, if it finished: how long it took.
    pub fn finished_in_background(&mut self) -> Option<Result<Duration, String>> {
        let batch = self.in_flight?;
        let outcome = match self.syncer.outcomes.try_recv() {
            Ok(outcome) => outcome,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err("the sync thread stopped".to_string()),
        };
        self.in_flight = None;
        Some(outcome.map(|synced| self.finish(batch, synced)))
    }

    /// Waits for the sync thread's sync, if one runs.
    pub fn wait_for_background(&mut self) -> Result<(), String> {
        let Some(batch) = self.in_flight.take() else { return Ok(()) };
        let synced = self.syncer.outcomes.recv().map_err(|_| "the sync thread stopped".to_string())??;
        self.finish(batch, synced);
        Ok(())
    }

    fn begin(&mut self) -> u64 {
        self.unsynced = false;
        self.unsynced_records = 0;
        self.written_batch
    }

    fn finish(&mut self, batch: u64, synced: Synced) -> Duration {
        self.durable_batch = batch;
        self.slow.note(synced.took, synced.upto_seq);
        synced.took
    }

    /// The held items whose batch is durable, in order.
    pub fn releasable(&mut self) -> impl Iterator<Item = Held> + '_ {
        let durable = self.durable_batch;
        std::iter::from_fn(move || match self.held.front() {
            Some((batch, _)) if *batch <= durable => self.held.pop_front().map(|(_, item)| item),
            _ => None,
        })
    }
}

/// Runs the jobs in order: output first, then the log.
fn run_sync((wal, outputs): SyncJobs) -> Result<Synced, String> {
    let started = Instant::now();
    if let Some(outputs) = outputs {
        outputs.run().map_err(|error| format!("output sync failed: {error}"))?;
    }
    let upto_seq = wal.as_ref().map(|wal| wal.upto_seq());
    if let Some(wal) = wal {
        wal.run().map_err(|error| format!("log sync failed: {error}"))?;
    }
    Ok(Synced { took: started.elapsed(), upto_seq })
}

/// The sync thread: runs one sync at a time and wakes the loop after each.
struct Syncer {
    jobs: Option<Sender<SyncJobs>>,
    outcomes: Receiver<Result<Synced, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(waker: Arc<mio::Waker>) -> Syncer {
        let (jobs, incoming) = mpsc::channel::<SyncJobs>();
        let (outcomes_sender, outcomes) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("apiary-sync".into())
            .spawn(move || {
                for jobs in incoming {
                    if outcomes_sender.send(run_sync(jobs)).is_err() {
                        return;
                    }
                    // A failed wake means the loop is gone; nothing left to tell.
                    let _ = waker.wake();
                }
            })
            .expect("spawn the sync thread");
        Syncer { jobs: Some(jobs), outcomes, thread: Some(thread) }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A sync that takes longer than this is logged: every reply waits for it.
const SLOW_SYNC: Duration = Duration::from_millis(50);
/// At most one line about slow syncs this often; the next says how many it passed over.
const SLOW_SYNC_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The record of slow syncs, so a slow disk is told without filling the log.
#[derive(Default)]
struct SlowSyncs {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl SlowSyncs {
    fn note(&mut self, took: Duration, upto_seq: Option<u64>) {
        if took <= SLOW_SYNC {
            return;
        }
        if self.last_logged.is_some_and(|logged| logged.elapsed() < SLOW_SYNC_LOG_INTERVAL) {
            self.unlogged += 1;
            return;
        }
        let records = upto_seq.map_or(String::new(), |seq| format!(", log up to record {seq}"));
        let passed = std::mem::take(&mut self.unlogged);
        let others = if passed > 0 {
            format!("; {passed} more over {} ms before it", SLOW_SYNC.as_millis())
        } else {
            String::new()
        };
        logging::warn(format!("a sync took {} ms{records}: replies waited for it{others}", took.as_millis()));
        self.last_logged = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(conn: u64) -> Held {
        Held::Reply { conn: ConnId(conn), frame: vec![conn as u8] }
    }

    fn released(durability: &mut Durability) -> Vec<u64> {
        durability.releasable().map(|held| held.conn().0).collect()
    }

    fn durability() -> (Durability, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (Durability::start(waker), poll)
    }

    #[test]
    fn held_replies_leave_in_order_once_their_turns_batch_is_synced() {
        let (mut durability, _poll) = durability();
        durability.hold(reply(1));
        assert!(released(&mut durability).is_empty(), "held until its turn ends");
        durability.end_batch(0, false);
        assert_eq!(released(&mut durability), [1], "nothing written: nothing to wait for");
        durability.hold(reply(2));
        durability.hold(reply(3));
        durability.end_batch(1, true);
        assert!(durability.sync_due() && !durability.due_in_background());
        assert!(released(&mut durability).is_empty(), "written, not yet synced");
        durability.sync(None, None).unwrap();
        assert!(!durability.sync_due());
        assert_eq!(released(&mut durability), [2, 3]);
        assert!(released(&mut durability).is_empty());
    }

    #[test]
    fn a_sync_in_the_background_releases_only_the_batches_written_before_it() {
        let (mut durability, mut poll) = durability();
        durability.hold(reply(1));
        durability.end_batch(BACKGROUND_SYNC_MIN_RECORDS, true);
        assert!(durability.due_in_background());
        durability.sync_in_background(None, None).unwrap();
        // The next turn: one reply after a write, one with nothing written since the sync began.
        durability.hold(reply(2));
        durability.end_batch(1, true);
        assert!(!durability.sync_due(), "one sync at a time");
        assert!(released(&mut durability).is_empty());
        let (mut next_durability, _next_poll) = self::durability();
        next_durability.hold(reply(9));
        next_durability.end_batch(BACKGROUND_SYNC_MIN_RECORDS, true);
        next_durability.sync_in_background(None, None).unwrap();
        next_durability.hold(reply(10));
        next_durability.end_batch(0, false);
        let mut events = mio::Events::with_capacity(4);
        let finished = loop {
            if let Some(finished) = durability.finished_in_background() {
                break finished;
            }
            poll.poll(&mut events, None).unwrap();
        };
        finished.unwrap();
        assert_eq!(released(&mut durability), [1], "the reply written after the sync began waits");
        assert!(durability.sync_due() && !durability.due_in_background());
        durability.sync(None, None).unwrap();
        assert_eq!(released(&mut durability), [2]);
        assert!(released(&mut next_durability).is_empty(), "both wait for the sync running");
        next_durability.wait_for_background().unwrap();
        assert_eq!(
            released(&mut next_durability),
            [9, 10],
            "a reply of a turn that wrote nothing waits for the sync running"
        );
    }

    #[test]
    fn slow_syncs_are_logged_at_most_once_an_interval_and_counted_meanwhile() {
        let mut slow = SlowSyncs::default();
        slow.note(SLOW_SYNC, Some(1));
        assert!(slow.last_logged.is_none(), "a sync of exactly the threshold is not slow");
        slow.note(SLOW_SYNC * 2, Some(2));
        let logged = slow.last_logged.expect("the first slow sync is logged");
        slow.note(SLOW_SYNC * 3, Some(3));
        slow.note(SLOW_SYNC * 3, None);
        assert_eq!((slow.last_logged, slow.unlogged), (Some(logged), 2), "counted, not logged");
        slow.last_logged = Some(logged - SLOW_SYNC_LOG_INTERVAL);
        slow.note(SLOW_SYNC * 2, Some(4));
        assert_eq!(slow.unlogged, 0, "the next line says how many it passed over");
        assert!(slow.last_logged.unwrap() > logged);
    }
}

//! Group commit (ARCHITECTURE.md, decision 3). Every turn's output writes and
//! log records are one *batch*; a flusher thread makes batches durable, one
//! sync covering everything written since the last. A reply waits until the
//! batch that was last written when it was produced is durable, so no reply
//! ever shows a fact that a crash could take back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use apiary_storage::{OutputSyncJob, SyncJob};

use crate::core::{ConnId, OutputRead};
use crate::logging;

/// What waits for durability before it leaves the daemon: a reply, already
/// encoded (so its size is known), or a read of the output store.
pub enum Held {
    Reply { conn: ConnId, frame: Vec<u8> },
    Read(OutputRead),
}

pub struct SyncRequest {
    pub batch: u64,
    pub wal: Option<SyncJob>,
    pub outputs: Option<OutputSyncJob>,
}

pub struct Durability {
    /// The latest batch written (appended, not yet necessarily durable).
    written_batch: u64,
    /// The latest batch known durable.
    durable_batch: u64,
    sync_in_flight: bool,
    held: VecDeque<(u64, Held)>,
    requests: Option<SyncSender<SyncRequest>>,
    results: Receiver<Result<u64, String>>,
    flusher: Option<JoinHandle<()>>,
}

impl Durability {
    /// Starts the flusher thread; it wakes the event loop after each sync.
    pub fn start(waker: Arc<mio::Waker>) -> Durability {
        let (requests, incoming) = mpsc::sync_channel::<SyncRequest>(1);
        let (outcomes, results) = mpsc::sync_channel(1);
        let flusher = thread::Builder::new()
            .name("apiary-flusher".into())
            .spawn(move || {
                let mut slow = SlowSyncs::default();
                for request in incoming {
                    let outcome = run_sync(request, &mut slow);
                    if outcomes.send(outcome).is_err() {
                        return;
                    }
                    // A failed wake means the loop is gone; nothing left to tell.
                    let _ = waker.wake();
                }
            })
            .expect("spawn the flusher thread");
        Durability {
            written_batch: 0,
            durable_batch: 0,
            sync_in_flight: false,
            held: VecDeque::new(),
            requests: Some(requests),
            results,
            flusher: Some(flusher),
        }
    }

    /// Marks that this turn wrote records or output: a new batch to sync.
    pub fn wrote(&mut self) {
        self.written_batch += 1;
    }

    /// Holds an item until everything written so far is durable.
    pub fn hold(&mut self, item: Held) {
        self.held.push_back((self.written_batch, item));
    }

    pub fn needs_sync(&self) -> bool {
        !self.sync_in_flight && self.durable_batch < self.written_batch
    }

    pub fn sync_in_flight(&self) -> bool {
        self.sync_in_flight
    }

    /// Hands the jobs to the flusher. Call only when `needs_sync`.
    pub fn start_sync(&mut self, wal: Option<SyncJob>, outputs: Option<OutputSyncJob>) {
        assert!(self.needs_sync());
        let request = SyncRequest { batch: self.written_batch, wal, outputs };
        self.requests.as_ref().expect("flusher running").send(request).expect("the flusher thread is alive");
        self.sync_in_flight = true;
    }

    /// Collects finished syncs; an error is fatal (durability can no longer be promised).
    pub fn collect(&mut self, block: bool) -> Result<(), String> {
        loop {
            let outcome = if block {
                self.results.recv().map_err(|_| "the flusher thread stopped".to_string())?
            } else {
                match self.results.try_recv() {
                    Ok(outcome) => outcome,
                    Err(_) => return Ok(()),
                }
            };
            let batch = outcome?;
            self.durable_batch = self.durable_batch.max(batch);
            self.sync_in_flight = false;
            if block {
                return Ok(());
            }
        }
    }

    /// The held items whose batch is durable now, in order.
    pub fn releasable(&mut self) -> impl Iterator<Item = Held> + '_ {
        let durable = self.durable_batch;
        std::iter::from_fn(move || match self.held.front() {
            Some((batch, _)) if *batch <= durable => self.held.pop_front().map(|(_, item)| item),
            _ => None,
        })
    }

    pub fn stop(&mut self) {
        self.requests = None;
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// A sync that takes longer than this is logged: every reply waits for it.
const SLOW_SYNC: Duration = Duration::from_millis(50);
/// At most one line about slow syncs this often; the next says how many it passed over.
const SLOW_SYNC_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The flusher's record of slow syncs, so a slow disk is told without filling the log.
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

fn run_sync(request: SyncRequest, slow: &mut SlowSyncs) -> Result<u64, String> {
    let started = Instant::now();
    if let Some(outputs) = request.outputs {
        outputs.run().map_err(|error| format!("output sync failed: {error}"))?;
    }
    let upto_seq = request.wal.as_ref().map(|wal| wal.upto_seq());
    if let Some(wal) = request.wal {
        wal.run().map_err(|error| format!("log sync failed: {error}"))?;
    }
    slow.note(started.elapsed(), upto_seq);
    Ok(request.batch)
}

#[cfg(test)]
mod tests {
    use super::*;

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

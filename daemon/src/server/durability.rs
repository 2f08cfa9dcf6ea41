//! Group commit (ARCHITECTURE.md, decision 3). Every turn's output writes and
//! log records are one batch, made durable by one sync at the end of the turn.
//! The turn's replies and output reads are held until then, so no reply ever
//! shows a fact that a crash could take back.
//!
//! The sync runs on the event loop's own thread. Handing each sync to a flusher
//! thread, and waking the loop after it, cost about 40% of the daemon's CPU per
//! task on this project's 2-vCPU machine and bought no latency (docs/hot-path.md):
//! requests that arrive during a sync wait in the socket buffers, and the next
//! turn reads them all and covers them with its one sync.

use std::time::{Duration, Instant};

use apiary_protocol::Reply;
use apiary_storage::{OutputSyncJob, SyncJob};

use crate::core::{ConnId, OutputRead};
use crate::logging;

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

#[derive(Default)]
pub struct Durability {
    /// Records or output were written since the last sync.
    unsynced: bool,
    /// In the order they were produced; each waits for everything written before it.
    held: Vec<Held>,
    slow: SlowSyncs,
}

impl Durability {
    /// Marks that records or output were written: a sync is due.
    pub fn wrote(&mut self) {
        self.unsynced = true;
    }

    /// Holds an item until everything written so far is durable.
    pub fn hold(&mut self, item: Held) {
        self.held.push(item);
    }

    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Makes everything written so far durable (output first, then the log)
    /// and says how long that took; an error is fatal: durability can no
    /// longer be promised.
    pub fn sync(&mut self, wal: Option<SyncJob>, outputs: Option<OutputSyncJob>) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(outputs) = outputs {
            outputs.run().map_err(|error| format!("output sync failed: {error}"))?;
        }
        let upto_seq = wal.as_ref().map(|wal| wal.upto_seq());
        if let Some(wal) = wal {
            wal.run().map_err(|error| format!("log sync failed: {error}"))?;
        }
        let took = started.elapsed();
        self.slow.note(took, upto_seq);
        self.unsynced = false;
        Ok(took)
    }

    /// The held items, in order, once nothing written is waiting for a sync.
    pub fn releasable(&mut self) -> std::vec::Drain<'_, Held> {
        let ready = if self.unsynced { 0 } else { self.held.len() };
        self.held.drain(..ready)
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

    #[test]
    fn held_replies_leave_in_order_once_what_was_written_is_synced() {
        let mut durability = Durability::default();
        durability.hold(reply(1));
        assert_eq!(released(&mut durability), [1], "nothing written: nothing to wait for");
        durability.wrote();
        durability.hold(reply(2));
        durability.hold(reply(3));
        assert!(durability.needs_sync());
        assert!(released(&mut durability).is_empty(), "written, not yet synced");
        durability.sync(None, None).unwrap();
        assert!(!durability.needs_sync());
        assert_eq!(released(&mut durability), [2, 3]);
        assert!(released(&mut durability).is_empty());
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

//! Events: the only way durable state changes. The core decides them from
//! inputs and applies them with one function (`Core::apply`); recovery runs the
//! same function over the log. Every event carries its own ids and times, so a
//! replay rebuilds the same state bit for bit.

use apiary_protocol::cas::{CasStats, Digest};
use apiary_protocol::{NewTaskRequest, StringPair, TaskState, TimeoutKind};
use rkyv::{Archive, Deserialize, Serialize, rancor};

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    TaskCreated(TaskCreated),
    /// The task's current slice expired unclaimed; it moves to `slice_index`.
    SliceAdvanced {
        task_id: u64,
        slice_index: u32,
        at_ms: u64,
    },
    TaskAssigned(TaskAssigned),
    /// A client asked to stop a running run: its bot is told on its next update.
    KillRequested {
        run_id: u64,
        at_ms: u64,
    },
    /// The one terminal event of a task (see `Core::finish`).
    TaskFinished(TaskFinished),
    /// A run of an idempotent task ended BOT_DIED; the task is pending again.
    /// `output_len` is what the dead run left: the task shows it until the next run.
    TaskRetried {
        run_id: u64,
        reason: String,
        output_len: u64,
        at_ms: u64,
    },
    /// A bot came with a new session, new dimensions or new software, or came back.
    BotConnected(BotConnected),
    BotChanged {
        bot_id: String,
        change: BotChange,
        at_ms: u64,
    },
    /// Finished tasks created before `cutoff_ms` are let go (docs/state.md, section 2).
    RetentionApplied {
        cutoff_ms: u64,
    },
    /// A change of a bot's standing that principal `by` asked for.
    BotChangedBy {
        bot_id: String,
        change: BotChange,
        at_ms: u64,
        by: String,
    },
    /// Where a task just created comes from: its request uuid, its parent. Follows
    /// its `TaskCreated` in the same turn.
    TaskLinked(TaskLinked),
    /// What a run left in the content-addressed store, and what moving its
    /// files cost; or, for a deduplicated task, the outputs of the run it
    /// reused. Comes right before the task's `TaskFinished`, which takes it.
    TaskOutputs(TaskOutputs),
}

// New variants go last and stay smaller than the largest: the archived event
// then keeps its size and every older variant its tag, so the log records of
// an older daemon still decode as they were written (tested with such records
// in `tests::older_records_still_decode`).
const _: () = assert!(std::mem::size_of::<ArchivedEvent>() == ARCHIVED_EVENT_BYTES);
const _: () = assert!(std::mem::align_of::<ArchivedEvent>() == 8);
/// The size of an archived event since the log's first records.
const ARCHIVED_EVENT_BYTES: usize = 160;

/// Changes of a bot's standing that decide whether it gets work.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum BotChange {
    /// Not heard from for the bot death timeout.
    Missing,
    /// By its own health check (`by_server` false) or by a person.
    Quarantined {
        reason: String,
        by_server: bool,
    },
    Unquarantined,
    TerminateRequested,
    /// The bot exited on a terminate request.
    ShutDown,
    /// Asked to exit, with a person's reason. (New variants go last, so older
    /// records keep their tags.)
    TerminateRequestedBecause {
        reason: String,
    },
    /// Forgotten at a person's request: it was dead or not connected.
    Deleted,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskCreated {
    pub task_id: u64,
    pub created_ms: u64,
    /// The first slice some bot could serve (or that waits for capacity).
    pub slice_index: u32,
    pub request: NewTaskRequest,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskLinked {
    pub task_id: u64,
    /// Who sent the uuid (the principal, or the request's user while access is
    /// open) and the uuid; both empty when the request had none.
    pub requester: String,
    pub request_uuid: String,
    /// The parent's request id.
    pub parent_task_id: Option<u64>,
    pub created_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskOutputs {
    pub task_id: u64,
    pub output_root: Option<Digest>,
    pub stats: CasStats,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskAssigned {
    pub run_id: u64,
    pub slice_index: u32,
    pub bot_id: String,
    pub session_id: u64,
    pub at_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskFinished {
    pub task_id: u64,
    /// The attempt that ended, when one was running.
    pub run_id: Option<u64>,
    pub state: StoredState,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    pub teardown_ms: Option<u64>,
    pub timeout: Option<TimeoutKind>,
    pub internal_failure: bool,
    pub reason: String,
    pub output_len: u64,
    pub output_truncated: bool,
    /// The earlier run whose result an idempotent task reused.
    pub deduped_from: Option<u64>,
    pub at_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BotConnected {
    pub bot_id: String,
    pub session_id: u64,
    pub dimensions: Vec<StringPair>,
    pub software: String,
    pub at_ms: u64,
}

/// Task states as stored in the log: the terminal ones only, with fixed codes
/// so a reordering of `TaskState` never changes the meaning of old records.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredState {
    Completed = 1,
    TimedOut = 2,
    BotDied = 3,
    Expired = 4,
    Killed = 5,
    Canceled = 6,
    NoResource = 7,
    ClientError = 8,
}

impl StoredState {
    pub fn from_state(state: TaskState) -> StoredState {
        match state {
            TaskState::Completed => StoredState::Completed,
            TaskState::TimedOut => StoredState::TimedOut,
            TaskState::BotDied => StoredState::BotDied,
            TaskState::Expired => StoredState::Expired,
            TaskState::Killed => StoredState::Killed,
            TaskState::Canceled => StoredState::Canceled,
            TaskState::NoResource => StoredState::NoResource,
            TaskState::ClientError => StoredState::ClientError,
            TaskState::Pending | TaskState::Running => panic!("{state:?} is not a terminal state"),
        }
    }

    pub fn state(self) -> TaskState {
        match self {
            StoredState::Completed => TaskState::Completed,
            StoredState::TimedOut => TaskState::TimedOut,
            StoredState::BotDied => TaskState::BotDied,
            StoredState::Expired => TaskState::Expired,
            StoredState::Killed => TaskState::Killed,
            StoredState::Canceled => TaskState::Canceled,
            StoredState::NoResource => TaskState::NoResource,
            StoredState::ClientError => TaskState::ClientError,
        }
    }
}

/// The record kind under which events are stored in the log. Kind 1 holds
/// events from before tasks had inputs (`legacy_events`), whose requests lack
/// `cas_input_root`; they are still read.
pub const EVENT_RECORD_KIND: u16 = 2;

#[derive(Debug, thiserror::Error)]
#[error("invalid event record: {0}")]
pub struct EventDecodeError(pub(crate) String);

/// Encodes a turn's events for the log one after the other into a buffer it
/// keeps, each at a 16-byte aligned offset, with rkyv's scratch space and
/// sharing map kept too: encoding a turn's events allocates nothing once the
/// buffers have grown. An event's bytes are the same wherever it lies in the
/// turn (`Event::encode` is one alone).
#[derive(Default)]
pub struct EventEncoder {
    bytes: rkyv::util::AlignedVec,
    /// Where each event's bytes start and end in `bytes`.
    spans: Vec<(usize, usize)>,
    arena: rkyv::ser::allocator::Arena,
    share: rkyv::ser::sharing::Share,
}

/// Buffer room an encoder keeps from one turn to the next; a turn that needed
/// more gives its buffers back.
const KEPT_EVENT_ENCODER_BYTES: usize = 1 << 20;

impl EventEncoder {
    /// Forgets the events encoded so far.
    pub fn clear(&mut self) {
        if self.bytes.capacity() > KEPT_EVENT_ENCODER_BYTES {
            self.bytes = rkyv::util::AlignedVec::new();
        }
        if self.arena.capacity() > KEPT_EVENT_ENCODER_BYTES {
            self.arena = rkyv::ser::allocator::Arena::new();
        }
        self.bytes.clear();
        self.spans.clear();
    }

    /// Encodes `event` after the ones before it; returns its size in bytes.
    pub fn push(&mut self, event: &Event) -> usize {
        let start = self.bytes.len().next_multiple_of(rkyv::util::AlignedVec::<16>::ALIGNMENT);
        self.bytes.resize(start, 0);
        let share = std::mem::take(&mut self.share);
        let mut serializer = rkyv::ser::Serializer::new(&mut self.bytes, self.arena.acquire(), share);
        rkyv::api::serialize_using::<_, rancor::Error>(event, &mut serializer).expect("events always serialize");
        self.share = serializer.sharing;
        self.share.clear();
        self.spans.push((start, self.bytes.len()));
        self.bytes.len() - start
    }

    /// The events' bytes, in the order they were pushed.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(start, end)| &self.bytes[start..end])
    }
}

impl Event {
    /// The event's bytes for the log, alone (the event loop encodes a turn's
    /// events together with an `EventEncoder`).
    pub fn encode(&self) -> rkyv::util::AlignedVec {
        let mut encoder = EventEncoder::default();
        encoder.push(self);
        encoder.bytes
    }

    /// Decodes (and validates) an event from the log. The bytes must be 16-byte aligned.
    pub fn decode(bytes: &[u8]) -> Result<Event, EventDecodeError> {
        rkyv::from_bytes::<Event, rancor::Error>(bytes).map_err(|e| EventDecodeError(e.to_string()))
    }

    /// One line for the daemon's log.
    pub fn describe(&self) -> String {
        use apiary_protocol::ids::format_task_id as id;
        match self {
            Event::TaskCreated(created) => {
                let name = &created.request.name;
                format!("task {} created: {name:?} priority {}", id(created.task_id), created.request.priority)
            }
            Event::SliceAdvanced { task_id, slice_index, .. } => {
                format!("task {} moved to slice {slice_index}", id(*task_id))
            }
            Event::TaskAssigned(assigned) => {
                format!("run {} assigned to bot {}", id(assigned.run_id), assigned.bot_id)
            }
            Event::KillRequested { run_id, .. } => format!("run {} is to be killed", id(*run_id)),
            Event::TaskFinished(finished) => {
                let mut line = format!("task {} ended {}", id(finished.task_id), finished.state.state().name());
                if let Some(code) = finished.exit_code {
                    line.push_str(&format!(" exit code {code}"));
                }
                if let Some(source) = finished.deduped_from {
                    line.push_str(&format!(" deduplicated from run {}", id(source)));
                }
                if !finished.reason.is_empty() {
                    line.push_str(&format!(": {}", finished.reason));
                }
                line
            }
            Event::TaskRetried { run_id, reason, .. } => {
                format!("run {} died ({reason}); the task is retried", id(*run_id))
            }
            Event::BotConnected(bot) => format!("bot {} connected (session {:016x})", bot.bot_id, bot.session_id),
            Event::BotChanged { bot_id, change, .. } => match change {
                BotChange::Missing => format!("bot {bot_id} is missing"),
                BotChange::Quarantined { reason, .. } => format!("bot {bot_id} quarantined: {reason}"),
                BotChange::Unquarantined => format!("bot {bot_id} unquarantined"),
                BotChange::TerminateRequested => format!("bot {bot_id} is to terminate"),
                BotChange::TerminateRequestedBecause { reason } => format!("bot {bot_id} is to terminate: {reason}"),
                BotChange::ShutDown => format!("bot {bot_id} shut down"),
                BotChange::Deleted => format!("bot {bot_id} deleted"),
            },
            Event::BotChangedBy { bot_id, change, by, .. } => match change {
                BotChange::Quarantined { reason, .. } => format!("bot {bot_id} quarantined by {by}: {reason}"),
                BotChange::Unquarantined => format!("bot {bot_id} unquarantined by {by}"),
                BotChange::TerminateRequested => format!("bot {bot_id} is to terminate, asked by {by}"),
                BotChange::TerminateRequestedBecause { reason } => {
                    format!("bot {bot_id} is to terminate, asked by {by}: {reason}")
                }
                BotChange::Deleted => format!("bot {bot_id} deleted by {by}"),
                BotChange::Missing | BotChange::ShutDown => format!("bot {bot_id} changed by {by}: {change:?}"),
            },
            Event::RetentionApplied { cutoff_ms } => {
                format!("finished tasks created before {cutoff_ms} (Unix ms) are let go by retention")
            }
            Event::TaskOutputs(outputs) => match outputs.output_root {
                Some(root) => format!("task {} left outputs {root}", id(outputs.task_id)),
                None => format!("task {} left no outputs", id(outputs.task_id)),
            },
            Event::TaskLinked(linked) => {
                let mut line = format!("task {}", id(linked.task_id));
                if !linked.request_uuid.is_empty() {
                    line.push_str(&format!(" has request uuid {:?} of {:?}", linked.request_uuid, linked.requester));
                }
                if let Some(parent) = linked.parent_task_id {
                    line.push_str(&format!(" is a child of task {}", id(parent)));
                }
                line
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// `Event` as the log's first records were written, before `BotChangedBy`:
    /// frozen here so that its records can be made and read back as `Event`
    /// (its task creations are read by `legacy_events`, tested there).
    #[derive(Archive, Serialize)]
    #[expect(dead_code, reason = "every variant is part of the frozen layout; a few are enough to encode")]
    enum EventBeforePrincipals {
        TaskCreated(TaskCreated),
        SliceAdvanced { task_id: u64, slice_index: u32, at_ms: u64 },
        TaskAssigned(TaskAssigned),
        KillRequested { run_id: u64, at_ms: u64 },
        TaskFinished(TaskFinished),
        TaskRetried { run_id: u64, reason: String, output_len: u64, at_ms: u64 },
        BotConnected(BotConnected),
        BotChanged { bot_id: String, change: BotChange, at_ms: u64 },
        RetentionApplied { cutoff_ms: u64 },
    }

    #[test]
    fn older_records_still_decode() {
        assert_eq!(std::mem::size_of::<ArchivedEventBeforePrincipals>(), ARCHIVED_EVENT_BYTES);
        let quarantined = BotChange::Quarantined { reason: "disk".into(), by_server: true };
        let pairs = [
            (
                EventBeforePrincipals::BotChanged { bot_id: "bot-1".into(), change: quarantined.clone(), at_ms: 9 },
                Event::BotChanged { bot_id: "bot-1".into(), change: quarantined, at_ms: 9 },
            ),
            (
                EventBeforePrincipals::TaskRetried { run_id: 0x11, reason: "gone".into(), output_len: 3, at_ms: 4 },
                Event::TaskRetried { run_id: 0x11, reason: "gone".into(), output_len: 3, at_ms: 4 },
            ),
            (EventBeforePrincipals::RetentionApplied { cutoff_ms: 77 }, Event::RetentionApplied { cutoff_ms: 77 }),
        ];
        for (older, now) in pairs {
            let bytes = rkyv::to_bytes::<rancor::Error>(&older).unwrap();
            assert_eq!(crate::core::legacy_events::decode(&bytes).unwrap(), now);
        }
    }
}

//! What a snapshot holds of the core (docs/state.md, section 1): the durable
//! state, and nothing that is not durable. Held polls, watchers, followers,
//! timers, queue and class numbering and capacity counts are rebuilt when a
//! snapshot is loaded, as a replay of the log rebuilds them.
//!
//! Tasks that ended are not in a snapshot but in the history runs it lists
//! (`core::history`); a `TaskRecord` is also what a run holds of a task.
//!
//! Only a core that has applied events and nothing else (the snapshot thread's
//! private core) is snapshotted: the live core also holds facts that are not
//! events (how far a running task's output got, when a bot last polled).
//!
//! The same state always gives the same bytes: tasks in creation order, bots
//! by id, dedup entries by run id. Tests compare a core rebuilt from a snapshot
//! and the log after it with one rebuilt from the whole log, byte for byte.

use std::sync::Arc;

use apiary_protocol::{BotEventKind, NewTaskRequest, PackedDimensions, TaskProperties, TaskState, TimeoutKind};
use rkyv::{Archive, Deserialize, Serialize, rancor};

use super::history::RunEntry;

/// Bumped whenever the archived shape below changes: an older daemon's
/// snapshot is then refused by name instead of misread.
pub const SNAPSHOT_SCHEMA: u32 = 2;

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct CoreSnapshot {
    pub schema: u32,
    pub last_task_id: Option<u64>,
    /// Finished tasks created before this were let go by retention.
    pub retained_from_ms: u64,
    /// The tasks not in a history run: every task that has not ended.
    pub tasks: Vec<TaskRecord>,
    /// The history runs that hold the tasks that ended.
    pub history: Vec<RunEntry>,
    pub bots: Vec<BotRecord>,
    /// The latest successful run of each idempotent set of properties.
    pub successes: Vec<SuccessRecord>,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub task_id: u64,
    pub request: NewTaskRequest,
    pub created_ms: u64,
    pub state: TaskState,
    pub slice_index: u32,
    pub slice_started_ms: u64,
    pub try_number: u8,
    pub run: Option<RunRecord>,
    pub started_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub abandoned_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    pub teardown_ms: Option<u64>,
    pub timeout: Option<TimeoutKind>,
    pub internal_failure: bool,
    pub failure_reason: String,
    pub output_len: u64,
    pub output_truncated: bool,
    pub has_secret_bytes: bool,
    pub kill_requested: bool,
    pub deduped_from: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub run_id: u64,
    pub bot_id: String,
    pub session_id: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct BotRecord {
    pub bot_id: String,
    pub session_id: u64,
    /// Shared with the bot's events, once in the archive.
    pub dimensions: Arc<PackedDimensions>,
    pub software: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub current_run: Option<u64>,
    pub dead: bool,
    pub quarantine: Option<QuarantineRecord>,
    pub terminate_requested: bool,
    pub shut_down: bool,
    pub events: Vec<BotEventEntry>,
    pub next_event_number: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct QuarantineRecord {
    pub reason: String,
    pub by_server: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct BotEventEntry {
    pub number: u64,
    pub at_ms: u64,
    pub kind: BotEventKind,
    pub dimensions: Arc<PackedDimensions>,
    pub run_id: Option<u64>,
    pub message: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct SuccessRecord {
    /// Shared with the task whose run succeeded, when it is still held.
    pub properties: Arc<TaskProperties>,
    pub run_id: u64,
    pub ended_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    #[error("the snapshot's archive is invalid: {0}")]
    Invalid(String),
    #[error("the snapshot has schema {found}; this daemon reads schema {SNAPSHOT_SCHEMA}")]
    Schema { found: u32 },
}

impl CoreSnapshot {
    pub fn encode(&self) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rancor::Error>(self).expect("a snapshot always serializes")
    }

    /// Validates a snapshot's payload and its schema, for reading in place
    /// (`Core::restore`). The bytes must be 16-byte aligned.
    pub fn access(bytes: &[u8]) -> Result<&ArchivedCoreSnapshot, SnapshotDecodeError> {
        let snapshot = rkyv::access::<ArchivedCoreSnapshot, rancor::Error>(bytes)
            .map_err(|error| SnapshotDecodeError::Invalid(error.to_string()))?;
        if snapshot.schema != SNAPSHOT_SCHEMA {
            return Err(SnapshotDecodeError::Schema { found: snapshot.schema.to_native() });
        }
        Ok(snapshot)
    }
}

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

use apiary_protocol::cas::{CasStats, Digest};
use apiary_protocol::{BotEventKind, NewTaskRequest, PackedDimensions, TaskProperties, TaskState, TimeoutKind};
use rkyv::rancor::{self, Fallible};
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::Skip;
use rkyv::{Archive, Deserialize, Place, Serialize};

use super::events::TaskOutputs;
use super::history::RunEntry;
use super::task_store::TASK_CHUNK;

/// Bumped whenever the archived shape below changes: an older daemon's
/// snapshot is then refused by name instead of misread.
pub const SNAPSHOT_SCHEMA: u32 = 5;

/// The durable state. Its payload (`encode`) is the tasks in parts, then the
/// rest (the *head*), each an rkyv archive that is validated apart, so that a
/// restore validates and decodes the parts on several threads at once:
///
/// ```text
/// payload := part_0 | part_1 | ... | part_n-1 | head   (each part 16-byte aligned)
/// part_i  := archive of a Vec<TaskRecord>: PART_TASKS tasks (the last: up to that many)
/// head    := archive of this struct without `tasks`; `task_parts` gives each part's
///            (offset, length) in the payload. rkyv puts an archive's root at its end,
///            so the head's root is the payload's last bytes.
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct CoreSnapshot {
    pub schema: u32,
    pub last_task_id: Option<u64>,
    /// Finished tasks created before this were let go by retention.
    pub retained_from_ms: u64,
    /// The tasks not in a history run: every task that has not ended. In the
    /// payload's parts, not in the head.
    #[rkyv(with = Skip)]
    pub tasks: Vec<TaskRecord>,
    /// Where the parts holding `tasks` are in the payload; set by `encode`.
    pub task_parts: Vec<PartSpan>,
    /// The history runs that hold the tasks that ended.
    pub history: Vec<RunEntry>,
    pub bots: Vec<BotRecord>,
    /// The latest successful run of each idempotent set of properties.
    pub successes: Vec<SuccessRecord>,
    /// The task each request uuid created, by task id (schema 4).
    pub request_uuids: Vec<UuidRecord>,
    /// The tasks that have not ended and have a parent, by child id (schema 4).
    pub links: Vec<LinkRecord>,
    /// Outputs recorded for tasks whose end is not yet applied, by task id (schema 5).
    pub outputs_to_finish: Vec<TaskOutputs>,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct UuidRecord {
    pub requester: String,
    pub request_uuid: String,
    pub task_id: u64,
    pub created_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct LinkRecord {
    pub child: u64,
    pub parent: u64,
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
    /// Schema 5 (history format 2).
    pub cas_output_root: Option<Digest>,
    pub cas_stats: Option<CasStats>,
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

/// Where a part of a snapshot's tasks is in its payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpan {
    pub offset: u64,
    pub len: u64,
}

/// Tasks per part of a snapshot: a whole number of the task store's chunks, so
/// that the chunks a restore decodes from each part line up.
pub const PART_TASKS: usize = 16 * TASK_CHUNK;

impl CoreSnapshot {
    /// The payload (see the layout above).
    pub fn encode(mut self) -> AlignedVec {
        let mut payload = AlignedVec::new();
        for part in self.tasks.chunks(PART_TASKS) {
            let bytes = rkyv::to_bytes::<rancor::Error>(&TaskPart(part)).expect("tasks always serialize");
            pad_to_16(&mut payload);
            self.task_parts.push(PartSpan { offset: payload.len() as u64, len: bytes.len() as u64 });
            payload.extend_from_slice(&bytes);
        }
        pad_to_16(&mut payload);
        payload.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(&self).expect("a snapshot always serializes"));
        payload
    }

    /// Validates a snapshot's head and its schema, for reading in place
    /// (`Core::restore`); each part of its tasks is validated when it is read
    /// (`SnapshotView::part`). The bytes must be 16-byte aligned.
    pub fn access(payload: &[u8]) -> Result<SnapshotView<'_>, SnapshotDecodeError> {
        let head = rkyv::access::<ArchivedCoreSnapshot, rancor::Error>(payload)
            .map_err(|error| SnapshotDecodeError::Invalid(error.to_string()))?;
        if head.schema != SNAPSHOT_SCHEMA {
            return Err(SnapshotDecodeError::Schema { found: head.schema.to_native() });
        }
        Ok(SnapshotView { head, payload })
    }
}

/// Zeros up to the next multiple of 16 bytes, where an archive may start.
fn pad_to_16(payload: &mut AlignedVec) {
    payload.extend_from_slice(&[0; 16][..payload.len().next_multiple_of(16) - payload.len()]);
}

/// A snapshot read in place: its head validated, its parts not yet.
pub struct SnapshotView<'a> {
    pub head: &'a ArchivedCoreSnapshot,
    payload: &'a [u8],
}

impl<'a> SnapshotView<'a> {
    pub fn part_count(&self) -> usize {
        self.head.task_parts.len()
    }

    /// The tasks of part `number`, validated. Every part but the last holds
    /// `PART_TASKS` tasks.
    pub fn part(&self, number: usize) -> Result<&'a [ArchivedTaskRecord], SnapshotDecodeError> {
        let invalid = |reason: String| SnapshotDecodeError::Invalid(format!("task part {number}: {reason}"));
        let span = &self.head.task_parts[number];
        let (offset, len) = (span.offset.to_native(), span.len.to_native());
        let bytes = usize::try_from(offset)
            .ok()
            .filter(|offset| offset % 16 == 0)
            .zip(usize::try_from(len).ok())
            .and_then(|(offset, len)| self.payload.get(offset..offset.checked_add(len)?))
            .ok_or_else(|| invalid(format!("{len} bytes at {offset} are not within the payload, 16-byte aligned")))?;
        let tasks = rkyv::access::<ArchivedVec<ArchivedTaskRecord>, rancor::Error>(bytes)
            .map_err(|error| invalid(error.to_string()))?;
        let is_last = number + 1 == self.part_count();
        if tasks.is_empty() || tasks.len() > PART_TASKS || (!is_last && tasks.len() != PART_TASKS) {
            return Err(invalid(format!("it holds {} tasks; parts before the last hold {PART_TASKS}", tasks.len())));
        }
        Ok(tasks.as_slice())
    }
}

/// A part of the tasks, archived as a `Vec<TaskRecord>` without copying them into one.
struct TaskPart<'a>(&'a [TaskRecord]);

impl Archive for TaskPart<'_> {
    type Archived = ArchivedVec<ArchivedTaskRecord>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for TaskPart<'_>
where
    TaskRecord: Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

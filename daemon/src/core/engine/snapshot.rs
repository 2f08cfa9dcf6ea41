//! Snapshots of the core: the durable state out (`snapshot`) and back in
//! (`restore`), with everything that is not durable rebuilt as replay would.

use super::*;
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::mpsc;
use std::thread;

use rkyv::de::Pool;

use super::apply::slice_expiry_ms;
use crate::core::model::{RequestText, TaskText};
use crate::core::task_store::TASK_CHUNK;
use apiary_protocol::{ArchivedTaskProperties, ArchivedTaskSlice, SecretBytes, TaskSlice};
use rkyv::{Archive, rancor};

use crate::core::snapshot::{
    ArchivedTaskRecord, BotEventEntry, BotRecord, CoreSnapshot, LinkRecord, PART_TASKS, QuarantineRecord, RunRecord,
    SNAPSHOT_SCHEMA, SnapshotDecodeError, SnapshotView, SuccessRecord, TaskRecord, UuidRecord,
};

impl Core {
    /// The durable state. Only meaningful for a core that has applied events
    /// and nothing else (see `core::snapshot`).
    pub fn snapshot(&self) -> CoreSnapshot {
        let mut bots: Vec<BotRecord> = self.bots.values().map(bot_record).collect();
        bots.sort_unstable_by(|a, b| a.bot_id.cmp(&b.bot_id));
        let mut successes: Vec<SuccessRecord> = self
            .successes
            .iter()
            .map(|(properties, &(run_id, ended_ms))| SuccessRecord {
                properties: Arc::clone(properties),
                run_id: run_id.as_u64(),
                ended_ms,
            })
            .collect();
        successes.sort_unstable_by_key(|success| success.run_id);
        let (uuids, links) = self.lineage.records();
        let request_uuids = uuids
            .into_iter()
            .map(|((requester, request_uuid), task_id, created_ms)| UuidRecord {
                requester,
                request_uuid,
                task_id,
                created_ms,
            })
            .collect();
        let links = links.into_iter().map(|(child, parent)| LinkRecord { child, parent }).collect();
        let mut outputs_to_finish: Vec<TaskOutputs> = self.outputs_to_finish.values().cloned().collect();
        outputs_to_finish.sort_unstable_by_key(|outputs| outputs.task_id);
        CoreSnapshot {
            schema: SNAPSHOT_SCHEMA,
            last_task_id: self.last_task_id.map(RequestId::as_u64),
            retained_from_ms: self.retained_from_ms,
            task_parts: Vec::new(),
            tasks: self.tasks.values().map(|task| snapshot_record(task, &self.text_of(task))).collect(),
            history: self.history.entries().copied().collect(),
            bots,
            successes,
            request_uuids,
            links,
            outputs_to_finish,
        }
    }

    /// A core with the snapshot's state, as if it had applied the events the
    /// snapshot covers. Follow with `apply` for the log after it, then the
    /// same steps as after a replay (`set_output_len`, `recovered`).
    ///
    /// Records are read from the archive in place: decoding the whole
    /// snapshot first would hold a second copy of every task (a third of a
    /// gigabyte at a million) and take as long again. The parts of the tasks
    /// are validated and decoded on `DECODERS` threads, a store chunk at a
    /// time, while this thread takes the chunks in order into the task store,
    /// the queues and the timers (a million tasks restore in about a third of
    /// the time one thread takes).
    pub fn restore(config: CoreConfig, view: &SnapshotView) -> Result<Core, SnapshotDecodeError> {
        let snapshot = view.head;
        let mut pool = Pool::new();
        let mut core = Core::new(config);
        let last_task_id = snapshot.last_task_id.as_ref().map(|id| id.to_native());
        core.last_task_id = last_task_id.map(|id| RequestId::from_u64(id).expect("a request id"));
        core.retained_from_ms = snapshot.retained_from_ms.to_native();
        for record in snapshot.bots.iter() {
            core.restore_bot(decode(record, &mut pool)?);
        }
        core.restore_tasks(view)?;
        for entry in snapshot.history.iter() {
            core.history.add(decode(entry, &mut pool)?, None);
        }
        for success in snapshot.successes.iter() {
            let success: SuccessRecord = decode(success, &mut pool)?;
            let run_id = RunId::from_u64(success.run_id).expect("a run id");
            let properties = core.properties.intern(&success.properties);
            core.successes.insert(properties, (run_id, success.ended_ms));
        }
        for uuid in snapshot.request_uuids.iter() {
            let uuid: UuidRecord = decode(uuid, &mut pool)?;
            let task_id = RequestId::from_u64(uuid.task_id).expect("a request id");
            core.lineage.record_uuid((uuid.requester, uuid.request_uuid), task_id, uuid.created_ms);
        }
        for link in snapshot.links.iter() {
            let child = RequestId::from_u64(link.child.to_native()).expect("a request id");
            core.lineage.link(child, RequestId::from_u64(link.parent.to_native()).expect("a request id"));
        }
        for outputs in snapshot.outputs_to_finish.iter() {
            let outputs: TaskOutputs = decode(outputs, &mut pool)?;
            core.outputs_to_finish.insert(RequestId::from_u64(outputs.task_id).expect("a request id"), outputs);
        }
        Ok(core)
    }

    fn restore_bot(&mut self, record: BotRecord) {
        let class = self.queues.class_for(queues::canonical_bot_dimensions(&model::unpack(&record.dimensions)));
        let mut bot = Bot::new(&record.bot_id, class, record.first_seen_ms);
        bot.session_id = record.session_id;
        bot.dimensions = record.dimensions;
        bot.software = record.software;
        bot.last_seen_ms = record.last_seen_ms;
        bot.current_run = record.current_run.map(|run_id| RunId::from_u64(run_id).expect("a run id"));
        bot.dead = record.dead;
        bot.quarantine = record
            .quarantine
            .map(|quarantine| Quarantine { reason: quarantine.reason, by_server: quarantine.by_server });
        bot.terminate_requested = record.terminate_requested;
        bot.shut_down = record.shut_down;
        bot.next_event_number = record.next_event_number;
        bot.events = record
            .events
            .into_iter()
            .map(|event| BotEventRecord {
                number: event.number,
                at_ms: event.at_ms,
                kind: event.kind,
                dimensions: event.dimensions,
                run_id: event.run_id.map(|run_id| RunId::from_u64(run_id).expect("a run id")),
                message: event.message,
            })
            .collect();
        let (live, busy) = bot.capacity_share();
        self.queues.count_bot(class, live, busy);
        self.bots.insert(record.bot_id, bot);
    }

    /// The tasks of a snapshot: decoded on other threads, taken in here in order.
    fn restore_tasks(&mut self, view: &SnapshotView) -> Result<(), SnapshotDecodeError> {
        thread::scope(|scope| {
            let (sender, receiver) = mpsc::channel();
            for decoder in 0..DECODERS {
                let sender = sender.clone();
                scope.spawn(move || decode_parts(view, decoder, &sender));
            }
            drop(sender);
            let mut arrived = BTreeMap::new();
            let mut next = 0;
            let mut shared = RestoredSlices::default();
            for (number, chunk) in receiver {
                arrived.insert(number, chunk);
                while let Some(chunk) = arrived.remove(&next) {
                    let (tasks, records) = chunk?;
                    self.restore_chunk(tasks, records, &mut shared);
                    next += 1;
                }
            }
            Ok(())
        })
    }

    /// Takes a decoded chunk of tasks into the task store, and queues them
    /// and arms their timers as applying their events would have. A task's
    /// text is in the snapshot's text file; its tags are also in its record,
    /// for the tag index.
    fn restore_chunk(&mut self, chunk: Vec<Option<Task>>, records: &[ArchivedTaskRecord], shared: &mut RestoredSlices) {
        let len = chunk.len();
        let first = self.tasks.push_chunk(chunk, |index| records[index].request.tags.iter().map(|tag| tag.as_str()));
        for position in first..first + len as u32 {
            let task = self.tasks.at_position_mut(position);
            task.slices = shared.intern(&task.slices, &mut self.properties);
            match task.state {
                TaskState::Pending => {
                    let queue = shared.queue(task, &mut self.queues);
                    task.queued = Some(queue);
                    self.timers.push(slice_expiry_ms(task), Timer::SliceExpiry { task_id: task.id });
                    self.queues.push(queue, task.queue_key(position));
                }
                // Due at once: the timer looks at the run's last word and waits
                // again (after `recovered`, a fresh tolerance from the restart).
                TaskState::Running => {
                    let run_id = task.current_run().expect("a running task has a run").run_id;
                    self.timers.push(0, Timer::RunPing { run_id });
                }
                _ => {}
            }
        }
    }
}

/// A chunk of tasks decoded with the records they came from (or why they
/// could not be), and its number among all chunks.
type DecodedChunk<'a> = (usize, Result<(Vec<Option<Task>>, &'a [ArchivedTaskRecord]), SnapshotDecodeError>);

/// Store chunks per part of a snapshot.
const CHUNKS_PER_PART: usize = PART_TASKS / TASK_CHUNK;

/// Threads that decode a snapshot's tasks.
const DECODERS: usize = 2;

/// Validates and decodes every `DECODERS`-th part of the tasks from
/// `decoder` on, and sends each chunk of it (or why it could not) with its
/// number. Slice lists are shared within the thread; `restore_chunk` shares
/// them between threads.
fn decode_parts<'a>(view: &SnapshotView<'a>, decoder: usize, sender: &mpsc::Sender<DecodedChunk<'a>>) {
    let mut pool = Pool::new();
    let mut interned = InternedProperties::default();
    let mut shared = SharedSlices::default();
    for part in (decoder..view.part_count()).step_by(DECODERS) {
        let records = match view.part(part) {
            Ok(records) => records,
            Err(error) => {
                let _ = sender.send((part * CHUNKS_PER_PART, Err(error)));
                return;
            }
        };
        for (index, records) in records.chunks(TASK_CHUNK).enumerate() {
            let chunk = records
                .iter()
                .map(|record| {
                    let slices = shared.slices_of(record, &mut interned, &mut pool)?;
                    Ok(Some(task_from_archived(record, slices, TaskText::Filed)))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|tasks| (tasks, records));
            // A send fails once the restore stopped at an earlier chunk that could not be decoded.
            if sender.send((part * CHUNKS_PER_PART + index, chunk)).is_err() {
                return;
            }
        }
    }
}

/// What restored tasks share, as `restore_chunk` takes them in: the slice
/// list last seen (lists decoded on other threads become the core's own
/// shared ones) and the queue of the last list and slice.
#[derive(Default)]
struct RestoredSlices {
    /// A list as decoded, and the core's shared one.
    last: Option<(Slices, Slices)>,
    last_queue: Option<(Slices, u32, QueueId)>,
}

type Slices = Arc<[TaskSlice]>;

impl RestoredSlices {
    fn intern(&mut self, slices: &Arc<[TaskSlice]>, interned: &mut InternedProperties) -> Arc<[TaskSlice]> {
        match &self.last {
            Some((decoded, shared)) if Arc::ptr_eq(decoded, slices) => Arc::clone(shared),
            _ => {
                let shared = interned.intern_slices(slices);
                self.last = Some((Arc::clone(slices), Arc::clone(&shared)));
                shared
            }
        }
    }

    fn queue(&mut self, task: &Task, queues: &mut Queues) -> QueueId {
        match &self.last_queue {
            Some((slices, slice_index, queue))
                if Arc::ptr_eq(slices, &task.slices) && *slice_index == task.slice_index =>
            {
                *queue
            }
            _ => {
                let queue = queues.queue_for_task(task.dimensions());
                self.last_queue = Some((Arc::clone(&task.slices), task.slice_index, queue));
                queue
            }
        }
    }
}

/// The slice lists of the tasks restored so far. Tasks of one workflow point
/// at the same properties in the archive (rkyv writes a shared `Arc` once);
/// the last list decoded is kept by those addresses, so the next task with
/// the same slices takes it without decoding or hashing anything.
#[derive(Default)]
struct SharedSlices {
    last: Option<(Vec<ArchivedSliceIdentity>, Arc<[TaskSlice]>)>,
}

/// A slice in the archive: where its properties are, and its settings.
type ArchivedSliceIdentity = (usize, u32, bool);

impl SharedSlices {
    fn slices_of(
        &mut self,
        record: &ArchivedTaskRecord,
        interned: &mut InternedProperties,
        pool: &mut Pool,
    ) -> Result<Arc<[TaskSlice]>, SnapshotDecodeError> {
        let archived = &record.request.task_slices;
        let identity = |slice: &ArchivedTaskSlice| -> ArchivedSliceIdentity {
            let properties: &ArchivedTaskProperties = &slice.properties;
            (
                properties as *const ArchivedTaskProperties as usize,
                slice.expiration_secs.to_native(),
                slice.wait_for_capacity,
            )
        };
        if let Some((identities, slices)) = &self.last
            && archived.iter().map(identity).eq(identities.iter().copied())
        {
            return Ok(Arc::clone(slices));
        }
        let decoded: Vec<TaskSlice> = decode(archived, pool)?;
        let slices = interned.intern_slices(&decoded);
        self.last = Some((archived.iter().map(identity).collect(), Arc::clone(&slices)));
        Ok(slices)
    }
}

/// One record of the archive, decoded with the shared pool.
fn decode<T, A>(archived: &A, pool: &mut Pool) -> Result<T, SnapshotDecodeError>
where
    A: rkyv::Deserialize<T, rkyv::rancor::Strategy<Pool, rancor::Error>>,
{
    rkyv::api::deserialize_using::<T, _, rancor::Error>(archived, pool)
        .map_err(|error| SnapshotDecodeError::Invalid(error.to_string()))
}

/// A task as its archived record says, holding nothing (not queued, no
/// timers), with the slices and text the caller decoded (a restore shares the
/// slices between tasks and leaves the text in the text file). Read field by
/// field from the archive: no owned copy of the record is made first.
pub(in crate::core) fn task_from_archived(
    record: &ArchivedTaskRecord,
    slices: Arc<[TaskSlice]>,
    text: TaskText,
) -> Task {
    let request = &record.request;
    let created_ms = record.created_ms.to_native();
    let mut task =
        Task::blank(RequestId::from_u64(record.task_id.to_native()).expect("a request id"), created_ms, slices);
    task.text = text;
    task.priority = request.priority;
    task.bot_ping_tolerance_secs = request.bot_ping_tolerance_secs.to_native();
    task.secret_bytes = request.secret_bytes.as_ref().map(|bytes| Box::new(SecretBytes(bytes.0.to_vec())));
    task.state = plain(&record.state);
    task.slice_index = record.slice_index.to_native();
    task.slice_started_ms = record.slice_started_ms.to_native();
    task.try_number = record.try_number;
    let started_ms = record.started_ms.as_ref().map(|started| started.to_native());
    task.run = record.run.as_ref().map(|run| {
        Box::new(Run {
            run_id: RunId::from_u64(run.run_id.to_native()).expect("a run id"),
            bot_id: run.bot_id.to_string(),
            session_id: run.session_id.to_native(),
            last_heard_ms: started_ms.unwrap_or(created_ms),
            // `restore_task` arms its ping timer for at once.
            ping_due_ms: 0,
            output_received: record.output_len.to_native(),
        })
    });
    task.started_ms = started_ms.and_then(NonZeroU64::new);
    let native =
        |value: &rkyv::option::ArchivedOption<rkyv::rend::u64_le>| value.as_ref().map(|value| value.to_native());
    task.outcome = record.completed_ms.as_ref().map(|completed_ms| {
        Box::new(Outcome {
            completed_ms: completed_ms.to_native(),
            abandoned_ms: native(&record.abandoned_ms),
            exit_code: record.exit_code.as_ref().map(|code| code.to_native()),
            duration_ms: native(&record.duration_ms),
            setup_ms: native(&record.setup_ms),
            teardown_ms: native(&record.teardown_ms),
            timeout: record.timeout.as_ref().map(plain),
            internal_failure: record.internal_failure,
            failure_reason: record.failure_reason.to_string(),
            deduped_from: native(&record.deduped_from).map(|run_id| RunId::from_u64(run_id).expect("a run id")),
            cas_output_root: record.cas_output_root.as_ref().map(plain),
            cas_stats: record.cas_stats.as_ref().map(plain),
        })
    });
    task.output_len = record.output_len.to_native();
    task.output_truncated = record.output_truncated;
    task.has_secret_bytes = record.has_secret_bytes;
    task.kill_requested = record.kill_requested;
    task
}

/// An ended task as its history run holds it, whole (its own slices and text).
pub(super) fn task_from_history(record: &ArchivedTaskRecord) -> Result<Task, String> {
    let invalid = |error: SnapshotDecodeError| format!("a history record is invalid: {error}");
    let mut pool = Pool::new();
    let slices: Vec<TaskSlice> = decode(&record.request.task_slices, &mut pool).map_err(invalid)?;
    let request = &record.request;
    let text = RequestText {
        name: request.name.to_string(),
        tags: request.tags.iter().map(|tag| tag.to_string()).collect(),
        user: request.user.to_string(),
    };
    Ok(task_from_archived(record, slices.into(), TaskText::Held(Box::new(text))))
}

/// A field without heap parts (an enum), from the archive.
fn plain<T: Archive>(archived: &T::Archived) -> T
where
    T::Archived: rkyv::Deserialize<T, rkyv::rancor::Strategy<Pool, rancor::Panic>>,
{
    match rkyv::deserialize::<T, rancor::Panic>(archived) {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// A task as a snapshot holds it: its name and user are in the snapshot's
/// text file, not here, and of its tags only those it stores (`core::tags`);
/// its secret bytes (only a task that has not ended has them) are, so they
/// survive a restart.
fn snapshot_record(task: &Task, text: &RequestText) -> TaskRecord {
    let text = RequestText { tags: text.tags.clone(), ..RequestText::default() };
    let secret_bytes = task.secret_bytes.as_deref().cloned();
    record(task, NewTaskRequest { secret_bytes, ..task.stored_request(text) })
}

/// A task as a history run holds it: all of it, with every tag it shows, so
/// the run's posting lists find its derived tags too.
pub(super) fn history_record(task: &Task, text: RequestText) -> TaskRecord {
    record(task, task.request(text))
}

fn record(task: &Task, request: NewTaskRequest) -> TaskRecord {
    let none = Outcome::default();
    let outcome = task.outcome.as_deref().unwrap_or(&none);
    TaskRecord {
        task_id: task.id.as_u64(),
        request,
        created_ms: task.created_ms(),
        state: task.state,
        slice_index: task.slice_index,
        slice_started_ms: task.slice_started_ms,
        try_number: task.try_number,
        run: task.run.as_ref().map(|run| RunRecord {
            run_id: run.run_id.as_u64(),
            bot_id: run.bot_id.clone(),
            session_id: run.session_id,
        }),
        started_ms: task.started_ms.map(NonZeroU64::get),
        completed_ms: task.outcome.as_ref().map(|outcome| outcome.completed_ms),
        abandoned_ms: outcome.abandoned_ms,
        exit_code: outcome.exit_code,
        duration_ms: outcome.duration_ms,
        setup_ms: outcome.setup_ms,
        teardown_ms: outcome.teardown_ms,
        timeout: outcome.timeout,
        internal_failure: outcome.internal_failure,
        failure_reason: outcome.failure_reason.clone(),
        output_len: task.output_len,
        output_truncated: task.output_truncated,
        has_secret_bytes: task.has_secret_bytes,
        kill_requested: task.kill_requested,
        deduped_from: outcome.deduped_from.map(RunId::as_u64),
        cas_output_root: outcome.cas_output_root,
        cas_stats: outcome.cas_stats,
    }
}

fn bot_record(bot: &Bot) -> BotRecord {
    BotRecord {
        bot_id: bot.bot_id.clone(),
        session_id: bot.session_id,
        dimensions: Arc::clone(&bot.dimensions),
        software: bot.software.clone(),
        first_seen_ms: bot.first_seen_ms,
        last_seen_ms: bot.last_seen_ms,
        current_run: bot.current_run.map(RunId::as_u64),
        dead: bot.dead,
        quarantine: bot
            .quarantine
            .as_ref()
            .map(|quarantine| QuarantineRecord { reason: quarantine.reason.clone(), by_server: quarantine.by_server }),
        terminate_requested: bot.terminate_requested,
        shut_down: bot.shut_down,
        events: bot
            .events
            .iter()
            .map(|event| BotEventEntry {
                number: event.number,
                at_ms: event.at_ms,
                kind: event.kind,
                dimensions: Arc::clone(&event.dimensions),
                run_id: event.run_id.map(RunId::as_u64),
                message: event.message.clone(),
            })
            .collect(),
        next_event_number: bot.next_event_number,
    }
}

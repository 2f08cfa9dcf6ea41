//! Snapshots of the core: the durable state out (`snapshot`) and back in
//! (`restore`), with everything that is not durable rebuilt as replay would.

use super::*;
use std::num::NonZeroU64;

use rkyv::de::Pool;

use super::apply::slice_expiry_ms;
use crate::core::model::{RequestText, TaskText};
use rkyv::rancor;

use crate::core::snapshot::{
    ArchivedCoreSnapshot, BotEventEntry, BotRecord, CoreSnapshot, QuarantineRecord, RunRecord, SNAPSHOT_SCHEMA,
    SnapshotDecodeError, SuccessRecord, TaskRecord,
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
        CoreSnapshot {
            schema: SNAPSHOT_SCHEMA,
            last_task_id: self.last_task_id.map(RequestId::as_u64),
            retained_from_ms: self.retained_from_ms,
            tasks: self.tasks.values().map(|task| snapshot_record(task, &self.text_of(task))).collect(),
            history: self.history.entries().copied().collect(),
            bots,
            successes,
        }
    }

    /// A core with the snapshot's state, as if it had applied the events the
    /// snapshot covers. Follow with `apply` for the log after it, then the
    /// same steps as after a replay (`set_output_len`, `recovered`).
    ///
    /// Records are read from the archive in place, one at a time: decoding
    /// the whole snapshot first would hold a second copy of every task (a
    /// third of a gigabyte at a million) and take as long again. One pool
    /// decodes every shared `Arc` once, so tasks that share their properties
    /// in the archive share them here too.
    pub fn restore(config: CoreConfig, snapshot: &ArchivedCoreSnapshot) -> Result<Core, SnapshotDecodeError> {
        let mut pool = Pool::new();
        let mut core = Core::new(config);
        let last_task_id = snapshot.last_task_id.as_ref().map(|id| id.to_native());
        core.last_task_id = last_task_id.map(|id| RequestId::from_u64(id).expect("a request id"));
        core.retained_from_ms = snapshot.retained_from_ms.to_native();
        for record in snapshot.bots.iter() {
            core.restore_bot(decode(record, &mut pool)?);
        }
        // Room for every task at once: growing by doubling would copy the
        // index several times on the way to a million.
        core.tasks.reserve(snapshot.tasks.len());
        let mut restored = Restored {
            queued: Vec::with_capacity(snapshot.tasks.len()),
            due: Vec::with_capacity(snapshot.tasks.len()),
        };
        for record in snapshot.tasks.iter() {
            core.restore_task(decode(record, &mut pool)?, &mut restored);
        }
        // Built at once from what the tasks gave, in full B-tree nodes: one
        // insertion per task would cost a search each and leave nodes half empty.
        core.queues.fill(restored.queued);
        core.timers.fill(restored.due);
        for entry in snapshot.history.iter() {
            core.history.add(decode(entry, &mut pool)?, None);
        }
        for success in snapshot.successes.iter() {
            let success: SuccessRecord = decode(success, &mut pool)?;
            let run_id = RunId::from_u64(success.run_id).expect("a run id");
            let properties = core.properties.intern(&success.properties);
            core.successes.insert(properties, (run_id, success.ended_ms));
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

    /// A task of a snapshot: its text is in the snapshot's text file, its tags
    /// also in the record, for the tag index.
    /// The queue entries and timers go to `restored`, for `restore` to build
    /// the queues and the timer set from at once.
    fn restore_task(&mut self, record: TaskRecord, restored: &mut Restored) {
        let tags = record.request.tags.clone();
        let mut task = task_from_record(record);
        task.text = TaskText::Filed;
        for slice in &mut task.slices {
            slice.properties = self.properties.intern(&slice.properties);
        }
        match task.state {
            TaskState::Pending => {
                let queue = self.queues.queue_for_task(task.dimensions());
                task.queued = Some(queue);
                let (task_id, slice_index) = (task.id, task.slice_index);
                restored.due.push((slice_expiry_ms(&task), Timer::SliceExpiry { task_id, slice_index }));
                let position = self.tasks.insert(task, &tags);
                let key = self.tasks.at_position(position).queue_key(position);
                restored.queued.push((queue, key));
            }
            // Due at once: the timer looks at the run's last word and waits
            // again (after `recovered`, a fresh tolerance from the restart).
            TaskState::Running => {
                let run_id = task.current_run().expect("a running task has a run").run_id;
                restored.due.push((0, Timer::RunPing { run_id }));
                self.tasks.insert(task, &tags);
            }
            _ => {
                self.tasks.insert(task, &tags);
            }
        }
    }
}

/// What restored tasks ask of the queues and the timers.
struct Restored {
    queued: Vec<(QueueId, QueueKey)>,
    due: Vec<(u64, Timer)>,
}

/// One record of the archive, decoded with the shared pool.
fn decode<T, A>(archived: &A, pool: &mut Pool) -> Result<T, SnapshotDecodeError>
where
    A: rkyv::Deserialize<T, rkyv::rancor::Strategy<Pool, rancor::Error>>,
{
    rkyv::api::deserialize_using::<T, _, rancor::Error>(archived, pool)
        .map_err(|error| SnapshotDecodeError::Invalid(error.to_string()))
}

/// A task as its record says, holding nothing (not queued, no timers).
pub(super) fn task_from_record(record: TaskRecord) -> Task {
    let task_id = RequestId::from_u64(record.task_id).expect("a request id");
    let mut task = Task::new(task_id, record.request, record.created_ms);
    task.state = record.state;
    task.slice_index = record.slice_index;
    task.slice_started_ms = record.slice_started_ms;
    task.try_number = record.try_number;
    task.run = record.run.map(|run| {
        Box::new(Run {
            run_id: RunId::from_u64(run.run_id).expect("a run id"),
            bot_id: run.bot_id,
            session_id: run.session_id,
            last_heard_ms: record.started_ms.unwrap_or(record.created_ms),
            // `restore_task` arms its ping timer for at once.
            ping_due_ms: 0,
            output_received: record.output_len,
        })
    });
    task.started_ms = record.started_ms.and_then(NonZeroU64::new);
    task.outcome = record.completed_ms.map(|completed_ms| {
        Box::new(Outcome {
            completed_ms,
            abandoned_ms: record.abandoned_ms,
            exit_code: record.exit_code,
            duration_ms: record.duration_ms,
            setup_ms: record.setup_ms,
            teardown_ms: record.teardown_ms,
            timeout: record.timeout,
            internal_failure: record.internal_failure,
            failure_reason: record.failure_reason,
            deduped_from: record.deduped_from.map(|run_id| RunId::from_u64(run_id).expect("a run id")),
        })
    });
    task.output_len = record.output_len;
    task.output_truncated = record.output_truncated;
    task.has_secret_bytes = record.has_secret_bytes;
    task.kill_requested = record.kill_requested;
    task
}

/// A task as a snapshot holds it: its name and user are in the snapshot's
/// text file, not here; its secret bytes (only a task that has not ended has
/// them) are, so they survive a restart.
fn snapshot_record(task: &Task, text: &RequestText) -> TaskRecord {
    let text = RequestText { tags: text.tags.clone(), ..RequestText::default() };
    let secret_bytes = task.secret_bytes.as_deref().cloned();
    record(task, NewTaskRequest { secret_bytes, ..task.request(&text) })
}

/// A task as a history run holds it: all of it.
pub(super) fn history_record(task: &Task, text: &RequestText) -> TaskRecord {
    record(task, task.request(text))
}

fn record(task: &Task, request: NewTaskRequest) -> TaskRecord {
    let none = Outcome::default();
    let outcome = task.outcome.as_deref().unwrap_or(&none);
    TaskRecord {
        task_id: task.id.as_u64(),
        request,
        created_ms: task.created_ms,
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

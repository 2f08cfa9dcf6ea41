//! `apiary-load state-fixture`: a data directory holding a large state, written
//! directly in the daemon's own formats, so restart and history benchmarks do
//! not first spend an hour pushing tens of millions of tasks through a daemon.
//!
//! What it writes, as a daemon would have after running that many tasks: a
//! snapshot holding the pending tasks (their names in its text file), and
//! history runs holding the ended ones (each run a contiguous stretch of ids,
//! as a snapshot interval makes them).
//! Ended tasks carry the tags `pool:fixture`, `shard:<n % 100>` and
//! `user:<n % 1000>`; 1 in 20 is `EXPIRED`, the rest `COMPLETED`. Pending tasks
//! ask for `pool=fixture-pending`, which no bot has, and wait for capacity.

use std::path::PathBuf;
use std::sync::Arc;

use apiary_daemon::core::events::{EVENT_RECORD_KIND, Event};
use apiary_daemon::core::history::{self, RunEntry};
use apiary_daemon::core::snapshot::{RunRecord, SNAPSHOT_SCHEMA, TaskRecord};
use apiary_daemon::core::texts;
use apiary_daemon::core::{CoreSnapshot, RequestText};
use apiary_protocol::{NewTaskRequest, RequestId, StringPair, TaskProperties, TaskSlice, TaskState};
use apiary_storage::{HistoryDir, LogStart, SnapshotStore, Wal, WalOptions};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(clap::Args, Debug)]
pub struct FixtureArgs {
    /// The data directory to fill; it must not hold a daemon's state yet.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Ended tasks, in history runs.
    #[arg(long, default_value_t = 10_000_000)]
    pub finished: u64,
    /// Pending tasks, in the snapshot.
    #[arg(long, default_value_t = 1_000_000)]
    pub pending: u64,
    /// Ended tasks per history run.
    #[arg(long, default_value_t = 100_000)]
    pub per_run: u64,
    /// Bytes of each task's name.
    #[arg(long, default_value_t = 32)]
    pub name_bytes: usize,
}

/// What was written.
pub struct Fixture {
    pub runs: usize,
    pub history_bytes: u64,
    pub snapshot_bytes: u64,
}

pub fn write(args: &FixtureArgs, now_ms: u64) -> Result<Fixture, String> {
    if args.data_dir.join("snapshots").exists() || args.data_dir.join("wal").exists() {
        return Err(format!("{} already holds a daemon's state", args.data_dir.display()));
    }
    let history = HistoryDir::open(&args.data_dir.join("history")).map_err(|error| error.to_string())?;
    // Ended tasks were created over the last 20 days, pending ones in the last hour.
    let finished_from = now_ms - 20 * DAY_MS;
    let finished_step = (19 * DAY_MS / args.finished.max(1)).max(1);
    let mut ids = IdClock::default();
    let mut entries = Vec::new();
    let mut history_bytes = 0;
    let mut written = 0;
    while written < args.finished {
        let number = entries.len() as u64 + 1;
        let mut writer = history.create(number).map_err(|error| error.to_string())?;
        let end = (written + args.per_run).min(args.finished);
        for n in written..end {
            let created_ms = finished_from + n * finished_step;
            let record = ended_record(ids.next(created_ms), created_ms, n, args.name_bytes);
            let keys = history::keys_of(&record);
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            writer.push(record.task_id, &history::encode_record(&record), &keys).map_err(|error| error.to_string())?;
        }
        written = end;
        let path = writer.finish().map_err(|error| error.to_string())?;
        history_bytes += std::fs::metadata(&path).map_err(|error| error.to_string())?.len();
        let run = history.open_run(number).map_err(|error| error.to_string())?;
        entries.push(RunEntry::of(number, &run));
    }
    let pending_from = now_ms - 3_600_000;
    let pending_step = (3_000_000 / args.pending.max(1)).max(1);
    let properties = Arc::new(TaskProperties {
        command: vec!["true".into()],
        dimensions: vec![StringPair::new("pool", "fixture-pending")],
        ..TaskProperties::default()
    });
    let covered_seq = write_log(&args.data_dir)?;
    let snapshots_dir = args.data_dir.join("snapshots");
    let texts = HistoryDir::open_with_suffix(&snapshots_dir, ".text").map_err(|error| error.to_string())?;
    let mut text_file = texts.create(covered_seq).map_err(|error| error.to_string())?;
    let mut tasks = Vec::with_capacity(args.pending as usize);
    for n in 0..args.pending {
        let created_ms = pending_from + n * pending_step;
        let mut record = pending_record(ids.next(created_ms), created_ms, n, args.name_bytes, &properties);
        // As the daemon writes a snapshot: the name and user in the text file, the tags in both.
        let request = &mut record.request;
        let text = RequestText {
            name: std::mem::take(&mut request.name),
            tags: request.tags.clone(),
            user: std::mem::take(&mut request.user),
        };
        text_file.push(record.task_id, &texts::encode(&text), &[]).map_err(|error| error.to_string())?;
        tasks.push(record);
    }
    text_file.finish().map_err(|error| error.to_string())?;
    let snapshot = CoreSnapshot {
        schema: SNAPSHOT_SCHEMA,
        last_task_id: ids.last.map(RequestId::as_u64),
        retained_from_ms: 0,
        tasks,
        task_parts: Vec::new(),
        history: entries,
        bots: Vec::new(),
        successes: Vec::new(),
        request_uuids: Vec::new(),
        links: Vec::new(),
        outputs_to_finish: Vec::new(),
    };
    let runs = snapshot.history.len();
    let bytes = snapshot.encode();
    let store = SnapshotStore::open(&snapshots_dir).map_err(|error| error.to_string())?;
    store.write(covered_seq, now_ms, &bytes).map_err(|error| error.to_string())?;
    Ok(Fixture { runs, history_bytes, snapshot_bytes: bytes.len() as u64 })
}

/// A log of one record that changes nothing, which the snapshot covers: the
/// daemon opens the log after it, as after any snapshot.
fn write_log(data_dir: &std::path::Path) -> Result<u64, String> {
    let start = LogStart { first_needed_seq: 1, accept_loss: false };
    let (mut wal, _) =
        Wal::open(&data_dir.join("wal"), WalOptions::default(), start).map_err(|error| error.to_string())?;
    let event = Event::RetentionApplied { cutoff_ms: 0 };
    let seq = wal.append(EVENT_RECORD_KIND, &event.encode()).map_err(|error| error.to_string())?;
    let job = wal.take_sync_job().ok_or("a sync job after an append")?;
    job.run().map_err(|error| error.to_string())?;
    Ok(seq)
}

/// Task ids in creation order, several per millisecond when needed.
#[derive(Default)]
struct IdClock {
    last: Option<RequestId>,
}

impl IdClock {
    fn next(&mut self, created_ms: u64) -> RequestId {
        let from_clock = RequestId::first_of_millisecond(created_ms);
        let id = match self.last {
            Some(last) if last >= from_clock => last.next(),
            _ => from_clock,
        };
        self.last = Some(id);
        id
    }
}

fn name(n: u64, bytes: usize) -> String {
    let mut name = format!("fixture-{n}-");
    while name.len() < bytes {
        name.push((b'a' + (n as usize + name.len()) as u8 % 26) as char);
    }
    name.truncate(bytes);
    name
}

fn request(n: u64, name_bytes: usize, properties: Arc<TaskProperties>, tags: Vec<String>) -> NewTaskRequest {
    NewTaskRequest {
        name: name(n, name_bytes),
        tags,
        user: "fixture".into(),
        task_slices: vec![TaskSlice { properties, expiration_secs: 7 * 86_400, wait_for_capacity: true }],
        ..NewTaskRequest::default()
    }
}

fn ended_record(id: RequestId, created_ms: u64, n: u64, name_bytes: usize) -> TaskRecord {
    let properties = Arc::new(TaskProperties {
        command: vec!["make".into(), format!("target-{}", n % 100)],
        dimensions: vec![StringPair::new("pool", "fixture")],
        ..TaskProperties::default()
    });
    let tags = vec!["pool:fixture".into(), format!("shard:{}", n % 100), format!("user:{}", n % 1000)];
    let expired = n % 20 == 7;
    let started_ms = (!expired).then_some(created_ms + 40);
    TaskRecord {
        task_id: id.as_u64(),
        request: request(n, name_bytes, properties, tags),
        created_ms,
        state: if expired { TaskState::Expired } else { TaskState::Completed },
        slice_index: 0,
        slice_started_ms: created_ms,
        try_number: u8::from(!expired),
        run: (!expired).then(|| RunRecord {
            run_id: id.run(1).as_u64(),
            bot_id: format!("bot-{}", n % 500),
            session_id: n,
        }),
        started_ms,
        completed_ms: Some(created_ms + 5_000),
        abandoned_ms: None,
        exit_code: (!expired).then_some(0),
        duration_ms: (!expired).then_some(4_900),
        setup_ms: started_ms.map(|_| 10),
        teardown_ms: started_ms.map(|_| 5),
        timeout: None,
        internal_failure: false,
        failure_reason: if expired {
            "slice 0 expired and no later slice could be served".into()
        } else {
            String::new()
        },
        output_len: 0,
        output_truncated: false,
        has_secret_bytes: false,
        kill_requested: false,
        deduped_from: None,
        cas_output_root: None,
        cas_stats: None,
    }
}

fn pending_record(
    id: RequestId,
    created_ms: u64,
    n: u64,
    name_bytes: usize,
    properties: &Arc<TaskProperties>,
) -> TaskRecord {
    TaskRecord {
        task_id: id.as_u64(),
        request: request(n, name_bytes, Arc::clone(properties), vec!["pool:fixture-pending".into()]),
        created_ms,
        state: TaskState::Pending,
        slice_index: 0,
        slice_started_ms: created_ms,
        try_number: 0,
        run: None,
        started_ms: None,
        completed_ms: None,
        abandoned_ms: None,
        exit_code: None,
        duration_ms: None,
        setup_ms: None,
        teardown_ms: None,
        timeout: None,
        internal_failure: false,
        failure_reason: String::new(),
        output_len: 0,
        output_truncated: false,
        has_secret_bytes: false,
        kill_requested: false,
        deduped_from: None,
        cas_output_root: None,
        cas_stats: None,
    }
}

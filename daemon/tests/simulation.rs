//! Deterministic simulation of the core (STYLE.md, "Deterministic simulation of the
//! core"). One seeded PRNG drives clients (submits, waits, cancels and kills, output
//! reads), bots (polls, output and final reports that are duplicated, delayed and
//! late, health checks, restarts, hangs), people (quarantine, terminate),
//! disconnects, clock steps forward and back, and daemon restarts that rebuild the
//! core from its durable events alone, sometimes losing the last step that never
//! became durable. After every step the core checks its invariants and the test
//! checks a model of what clients and bots were told.
//!
//! `SIM_SEEDS` seeds (default 256) of `SIM_STEPS` steps (default 2000) run inside
//! `cargo test`; a failure names its seed, and `SIM_SEED=<n>` replays that one
//! (`SIM_TRACE=1` prints every step).
//!
//! The two races of ARCHITECTURE.md ("Exactly-once finalization") have their own
//! regression tests at the end.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use apiary_daemon::core::history::{self, RunEntry};
use apiary_daemon::core::texts;
use apiary_daemon::core::{ConnId, Core, CoreConfig, CoreSnapshot, DISK_FULL_MARKER, Event, Input, Output};
use apiary_protocol::{
    BotInfo, BotPoll, CacheInfo, CancelOutcome, ErrorCode, ErrorReply, NamedCache, NewTaskAck, NewTaskRequest,
    PackedDimensions, Reply, Request, RequestId, RunEnd, RunId, RunOutcome, StringPair, TaskLineage, TaskQuery,
    TaskResult, TaskSlice, TaskState, TaskUpdate,
};
use apiary_storage::HistoryDir;
use rkyv::util::AlignedVec;

// ------------------------------------------------------------------- the PRNG

/// splitmix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

// ------------------------------------------------------------- the daemon shell

const START_MS: u64 = 1_700_000_000_000;

fn config() -> CoreConfig {
    CoreConfig {
        long_poll_ms: 5_000,
        dedup_window_ms: 120_000,
        bot_death_timeout_ms: 20_000,
        bot_events_per_bot: 50,
        bot_event_max_age_ms: 600_000,
        // A run's simulated time passes it, so retention lets tasks go.
        task_retention_ms: 600_000,
        ..CoreConfig::default()
    }
}

/// The messages a bot sends, built in one place.
fn bot_poll(bot_id: &str, session_id: u64, dimensions: Vec<StringPair>, quarantine_reason: String) -> BotPoll {
    BotPoll {
        bot_id: bot_id.into(),
        session_id,
        dimensions: PackedDimensions::new(&dimensions),
        software: "sim-agent".into(),
        quarantine_reason,
        caches: caches_of_session(session_id),
    }
}

const CACHE_NAMES: [&str; 2] = ["git", "pip"];

/// The named caches a bot holds: a few, varying from session to session.
fn caches_of_session(session_id: u64) -> Vec<CacheInfo> {
    let held = CACHE_NAMES.iter().enumerate().filter(|&(bit, _)| session_id >> bit & 1 == 1);
    held.map(|(_, name)| CacheInfo { name: name.to_string(), size_bytes: 1 }).collect()
}

fn run_outcome(exit_code: Option<i64>, duration_ms: u64, end: RunEnd) -> RunOutcome {
    RunOutcome { exit_code, duration_ms, setup_ms: 0, teardown_ms: 0, end, ..RunOutcome::default() }
}

/// What the real daemon's shell keeps around the core: the durable event log and
/// the output store. A step's output becomes durable (output bytes, then events)
/// before its replies leave.
struct Daemon {
    core: Core,
    /// The newest snapshot, as the snapshot thread writes it.
    snapshot: Option<AlignedVec>,
    /// Every durable event after the snapshot, as it reads back from its bytes.
    log: Vec<Event>,
    /// A core that has applied every durable event since the start and
    /// nothing else, to check snapshots against.
    applied_all: Core,
    /// The output store: the bytes held for each run, appended at known offsets.
    store: BTreeMap<RunId, Vec<u8>>,
    /// The history runs and text files snapshots write, in a temporary directory.
    history: HistoryDir,
    texts: HistoryDir,
    _history_dir: tempfile::TempDir,
    /// Run numbers, as the daemon's are the log records of their snapshots.
    snapshots_taken: u64,
}

impl Daemon {
    fn new() -> Daemon {
        let history_dir = tempfile::tempdir().expect("a temporary directory");
        Daemon {
            history: HistoryDir::open(history_dir.path()).expect("a history directory"),
            texts: HistoryDir::open_with_suffix(history_dir.path(), ".text").expect("a text directory"),
            _history_dir: history_dir,
            snapshots_taken: 0,
            core: Core::new(config()),
            snapshot: None,
            log: Vec::new(),
            applied_all: Core::new(config()),
            store: BTreeMap::new(),
        }
    }

    fn request(&mut self, now_ms: u64, conn: ConnId, request_id: u64, request: Request, out: &mut Output) {
        self.core.handle(now_ms, Input::Request { conn, request_id, request, principal: None, grants: None }, out);
    }

    fn write_output(&mut self, out: &Output) {
        for write in &out.output_writes {
            let held = self.store.entry(write.run_id).or_default();
            assert_eq!(write.offset, held.len() as u64, "output of run {} is written at its end", write.run_id);
            assert!(!write.data.is_empty(), "an output write carries bytes");
            held.extend_from_slice(&write.data);
        }
    }

    fn persist_events(&mut self, out: &Output) {
        for event in &out.events {
            let decoded = Event::decode(&event.encode()).expect("an event decodes");
            assert_eq!(&decoded, event, "an event reads back as it was written");
            self.applied_all.apply(&decoded);
            self.log.push(decoded);
        }
    }

    fn store_len(&self, run_id: RunId) -> u64 {
        self.store.get(&run_id).map_or(0, |bytes| bytes.len() as u64)
    }

    /// A restart: a new core from the durable events alone, as the real daemon
    /// builds it (replay, output lengths of running tasks from the store, `recovered`).
    fn restart(&mut self, now_ms: u64) {
        let mut core = self.replay();
        for run_id in core.running_runs() {
            let stored = self.store.get(&run_id).map_or(&[][..], Vec::as_slice);
            core.set_output_len(run_id, stored.len() as u64, stored.ends_with(DISK_FULL_MARKER.as_bytes()));
        }
        core.recovered(now_ms);
        core.check_invariants();
        self.core = core;
    }
}

impl Daemon {
    /// A core from the snapshot and the log after it, before the steps that
    /// only a restart takes.
    fn replay(&self) -> Core {
        let mut core = match &self.snapshot {
            Some(bytes) => {
                let mut core = Core::restore(config(), &CoreSnapshot::access(bytes).expect("a snapshot reads back"))
                    .expect("a snapshot restores");
                let texts = self.texts.open_run(self.snapshots_taken).expect("a snapshot's text file opens");
                core.add_restored_text_file(Arc::new(texts));
                core
            }
            None => Core::new(config()),
        };
        for run in core.history_runs() {
            core.attach_history_run(
                run.number,
                Arc::new(self.history.open_run(run.number).expect("a listed run opens")),
            );
        }
        for event in &self.log {
            core.apply(event);
        }
        core
    }

    /// What the snapshot thread does: the state after every durable event,
    /// from the last snapshot and the log after it; then the log it covers
    /// goes. It must be the state a replay of the whole log gives, byte for byte.
    fn take_snapshot(&mut self) {
        let mut job = self.replay();
        let ended = job.take_ended_for_history();
        assert_eq!(ended, self.applied_all.take_ended_for_history(), "both cores hand history the same tasks");
        self.snapshots_taken += 1;
        if !ended.is_empty() {
            let number = self.snapshots_taken;
            let mut writer = self.history.create(number).expect("a run is created");
            for record in &ended {
                let keys = history::keys_of(record);
                let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                writer.push(record.task_id, &history::encode_record(record), &keys).expect("a record is written");
            }
            writer.finish().expect("a run is written");
            let run = self.history.open_run(number).expect("a run opens");
            // As the daemon's background check does before the loop lets go of copies.
            run.index().expect("a new run's index checks out");
            let entry = RunEntry::of(number, &run);
            job.add_history_run(entry, None);
            self.applied_all.add_history_run(entry, None);
            self.core.add_history_run(entry, Some(Arc::new(run)));
        }
        // The texts of the tasks that have not ended, beside the snapshot.
        let mut writer = self.texts.create(self.snapshots_taken).expect("a text file is created");
        for (task_id, text) in job.texts_to_file() {
            writer.push(task_id.as_u64(), &texts::encode(&text), &[]).expect("a text is written");
        }
        writer.finish().expect("a text file is written");
        let bytes = job.snapshot().encode();
        assert!(
            bytes[..] == self.applied_all.snapshot().encode()[..],
            "a snapshot from the last one and the log after it equals one from the whole log"
        );
        let text_file = self.texts.open_run(self.snapshots_taken).expect("a text file opens");
        text_file.index().expect("a text file's index checks out");
        self.core.add_text_file(Arc::new(text_file));
        self.snapshot = Some(bytes);
        self.log.clear();
    }
}

fn request_id(raw: u64) -> RequestId {
    RequestId::from_u64(raw & !0xf).expect("a masked id is a request id")
}

/// The byte at `offset` of a run's output: each attempt writes its own bytes.
fn output_byte(run_id: u64, offset: u64) -> u8 {
    (run_id.wrapping_mul(0x9e37_79b9) ^ (run_id >> 7) ^ offset.wrapping_mul(131)) as u8
}

fn run_output(run_id: u64, from: u64, to: u64) -> Vec<u8> {
    (from..to).map(|offset| output_byte(run_id, offset)).collect()
}

/// The state a run's final report ends its task in (`None`: it may be retried).
fn expected_state(end: &RunEnd) -> Option<TaskState> {
    match end {
        RunEnd::Exited => Some(TaskState::Completed),
        RunEnd::HardTimeout | RunEnd::IoTimeout => Some(TaskState::TimedOut),
        RunEnd::Killed => Some(TaskState::Killed),
        RunEnd::ClientError(_) => Some(TaskState::ClientError),
        RunEnd::InternalError(_) => None,
    }
}

// ------------------------------------------------------------------ the world

const BOT_DIMENSIONS: &[&[(&str, &str)]] = &[
    &[("pool", "ci"), ("os", "Linux")],
    &[("pool", "ci"), ("os", "Mac")],
    &[("pool", "ci"), ("os", "Linux"), ("gpu", "yes")],
    &[("pool", "ci"), ("os", "Mac"), ("os", "Mac-14")],
];

const TASK_DIMENSIONS: &[&[(&str, &str)]] = &[
    &[("pool", "ci")],
    &[("pool", "ci"), ("os", "Linux")],
    &[("pool", "ci"), ("os", "Mac")],
    &[("pool", "ci"), ("os", "Linux|Mac")],
    &[("pool", "ci"), ("gpu", "yes")],
    &[("pool", "ci"), ("os", "Windows")],
    &[("pool", "ci"), ("id", "bot-1")],
    &[("pool", "ci"), ("os", "Mac"), ("id", "bot-0|bot-2")],
];

fn pairs(list: &[(&str, &str)]) -> Vec<StringPair> {
    list.iter().map(|(key, value)| StringPair::new(key, value)).collect()
}

/// One of the bot dimension sets; like `apiary-bot`, most bots also report their `id`.
fn bot_dimensions(rng: &mut Rng, bot_id: &str) -> Vec<StringPair> {
    let mut dimensions = pairs(BOT_DIMENSIONS[rng.index(BOT_DIMENSIONS.len())]);
    if rng.chance(70) {
        dimensions.push(StringPair::new("id", bot_id));
    }
    dimensions
}

/// Whether a bot has every asked key with one of the asked values; `id` is its bot id.
fn bot_has(bot: &SimBot, wanted: &[StringPair]) -> bool {
    wanted.iter().all(|pair| {
        pair.value.split('|').any(|value| {
            if pair.key == "id" {
                value == bot.bot_id
            } else {
                bot.dimensions.iter().any(|have| have.key == pair.key && have.value == value)
            }
        })
    })
}

/// An attempt as its bot sees it.
struct BotRun {
    run_id: u64,
    session_id: u64,
    /// What the daemon said it holds: the next update starts there.
    acked: u64,
    /// Output the command has written so far.
    produced: u64,
    must_stop: bool,
    /// Once decided, the final outcome is resent until it is acknowledged.
    outcome: Option<RunOutcome>,
}

struct SimBot {
    bot_id: String,
    session_id: u64,
    dimensions: Vec<StringPair>,
    conn: Option<ConnId>,
    /// The poll the bot waits on.
    polling: Option<(ConnId, u64)>,
    run: Option<BotRun>,
    /// Runs the bot gave up on, with their sessions: the source of late reports.
    old_runs: Vec<(u64, u64)>,
    last_update: Option<TaskUpdate>,
    /// Why the bot's health check fails; empty while it passes.
    health: String,
    /// Hung (or its machine is off) until then: it says nothing.
    asleep_until_ms: u64,
    /// It exited on a terminate request.
    exited: bool,
}

/// A request waiting for its reply, and what it was.
#[derive(Clone)]
enum Asked {
    Poll {
        bot: usize,
        session_id: u64,
    },
    Update {
        bot: usize,
        update: TaskUpdate,
    },
    NewTask,
    /// A new task with a request uuid or a parent: the uuid may answer with an
    /// earlier task, and a parent may have ended meanwhile.
    NewTaskWithLineage,
    Wait {
        task_id: u64,
    },
    Cancel {
        task_id: u64,
    },
    /// Deleting a bot: refused while it is connected or holds a run.
    DeleteBot,
    Output,
    /// Any other request: answered at once.
    Other,
}

/// Something the step's replies promised about the state after the step.
enum Expect {
    /// The run is RUNNING on this bot.
    Running { run_id: u64, bot_id: String },
    /// The run is not RUNNING (it ended, or the bot was told it is stale).
    NotRunning { run_id: u64, why: &'static str },
    /// The run was current and its final report was taken: the task ended as reported.
    EndedAs { run_id: u64, outcome: RunOutcome },
    /// The run was current and its report had a gap: nothing ended.
    StillRunning { run_id: u64 },
}

struct Sim {
    rng: Rng,
    now_ms: u64,
    daemon: Daemon,
    bots: Vec<SimBot>,
    clients: Vec<Option<ConnId>>,
    next_conn: u64,
    next_request_id: u64,
    asked: BTreeMap<(ConnId, u64), Asked>,
    /// Polls whose connection closed: the daemon must never answer them.
    closed_polls: BTreeSet<(ConnId, u64)>,
    expects: Vec<Expect>,
    // The model.
    /// The last result seen of every task, after the last durable step.
    seen: BTreeMap<RequestId, TaskResult>,
    /// Tasks not terminal when last seen.
    active: BTreeSet<RequestId>,
    /// Tasks whose creation reached a client.
    acknowledged: Vec<RequestId>,
    /// Bots as last seen.
    seen_bots: BTreeMap<String, BotInfo>,
    ended_runs: BTreeSet<u64>,
    assigned_runs: BTreeSet<u64>,
    /// The dimensions of every task's slices, to check each assignment against.
    slice_dimensions: BTreeMap<u64, Vec<Vec<StringPair>>>,
    finished_tasks: BTreeSet<u64>,
    /// Each child task's parent, from the links the daemon recorded.
    parents: BTreeMap<u64, u64>,
    /// Tasks that went back to pending after a run died.
    retried_tasks: BTreeSet<RequestId>,
    /// The disk is full: no new task is taken and no new run starts.
    disk_full: bool,
    /// Tasks let go by retention, and those let go in this step.
    retired: BTreeSet<RequestId>,
    newly_retired: Vec<RequestId>,
    // Diagnostics.
    step: u64,
    trace: VecDeque<String>,
    print_trace: bool,
    /// How often each kind of event and ending happened, to see what a run covers.
    stats: BTreeMap<&'static str, u64>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let bot_count = rng.between(2, 5) as usize;
        let bots = (0..bot_count)
            .map(|index| SimBot {
                bot_id: format!("bot-{index}"),
                session_id: rng.next_u64() >> 1,
                dimensions: bot_dimensions(&mut rng, &format!("bot-{index}")),
                conn: None,
                polling: None,
                run: None,
                old_runs: Vec::new(),
                last_update: None,
                health: String::new(),
                asleep_until_ms: 0,
                exited: false,
            })
            .collect();
        Sim {
            rng,
            now_ms: START_MS,
            daemon: Daemon::new(),
            bots,
            clients: vec![None; 3],
            next_conn: 1,
            next_request_id: 1,
            asked: BTreeMap::new(),
            closed_polls: BTreeSet::new(),
            expects: Vec::new(),
            seen: BTreeMap::new(),
            active: BTreeSet::new(),
            acknowledged: Vec::new(),
            seen_bots: BTreeMap::new(),
            slice_dimensions: BTreeMap::new(),
            ended_runs: BTreeSet::new(),
            assigned_runs: BTreeSet::new(),
            finished_tasks: BTreeSet::new(),
            parents: BTreeMap::new(),
            retried_tasks: BTreeSet::new(),
            disk_full: false,
            retired: BTreeSet::new(),
            newly_retired: Vec::new(),
            step: 0,
            trace: VecDeque::new(),
            print_trace: std::env::var_os("SIM_TRACE").is_some(),
            stats: BTreeMap::new(),
        }
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.print_trace {
            eprintln!("[{} @{}] {}", self.step, self.now_ms as i64 - START_MS as i64, what());
            return;
        }
        if self.trace.len() == 16 {
            self.trace.pop_front();
        }
        let line = format!("step {} at +{} ms: {}", self.step, self.now_ms as i64 - START_MS as i64, what());
        self.trace.push_back(line);
    }

    fn run(&mut self, steps: u64) {
        for step in 0..steps {
            self.step = step;
            self.one_step();
        }
        self.check_everything();
        self.check_tag_queries();
    }

    fn one_step(&mut self) {
        // As the event loop does each turn: a few heap copies of archived tasks go.
        let budget = self.rng.between(0, 8) as usize;
        let held = self.daemon.core.task_count();
        self.daemon.core.forget_archived(budget);
        let let_go = (held - self.daemon.core.task_count()) as u64;
        *self.stats.entry("tasks the heap let go to history").or_default() += let_go;
        self.daemon.core.forget_texts(budget);
        if self.disk_full && self.rng.chance(4) {
            // A turn of its own: its replies leave before anything else happens.
            let mut freed = Output::default();
            self.disk_frees(&mut freed);
            self.commit(freed);
        }
        let mut out = Output::default();
        let roll = self.rng.below(1000);
        match roll {
            0..80 => self.submit(&mut out),
            80..400 => {
                let bot = self.rng.index(self.bots.len());
                self.bot_acts(bot, &mut out);
            }
            400..440 => self.late_report(&mut out),
            440..480 => self.duplicate_report(&mut out),
            480..520 => self.cancel(&mut out),
            520..560 => self.wait(&mut out),
            560..590 => self.read(&mut out),
            590..620 => self.person_acts_on_bot(&mut out),
            620..650 => self.disconnect(&mut out),
            650..670 => self.bot_crashes(&mut out),
            670..690 => self.bot_health_changes(),
            690..696 => self.bot_hangs(),
            696..700 => self.disk_fills(&mut out),
            700..880 => {
                let ms = self.rng.between(0, 3_000);
                self.advance(ms, 85, &mut out);
            }
            880..895 => {
                let ms = self.rng.between(15_000, 90_000);
                self.advance(ms, 100, &mut out);
            }
            895..925 => {
                let back = self.rng.between(1, 30_000);
                self.now_ms -= back;
                self.note(|| format!("the clock steps back {back} ms"));
                if self.rng.chance(50) {
                    self.daemon.core.tick(self.now_ms, &mut out);
                }
            }
            925..995 => {
                self.note(|| "tick".into());
                self.daemon.core.tick(self.now_ms, &mut out);
            }
            995..998 => {
                self.commit(out);
                self.restart("restart", None);
                return;
            }
            _ => {
                // The daemon dies before the step's events are durable: none of its
                // replies left, and its output bytes may or may not be in the store.
                self.bot_acts_or_submits(&mut out);
                self.restart("crash before the step was durable", Some(out));
                return;
            }
        }
        self.commit(out);
    }

    fn bot_acts_or_submits(&mut self, out: &mut Output) {
        if self.rng.chance(30) {
            self.submit(out);
        } else {
            let bot = self.rng.index(self.bots.len());
            self.bot_acts(bot, out);
        }
    }

    // ------------------------------------------------------------- connections

    fn new_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn bot_conn(&mut self, bot: usize) -> ConnId {
        match self.bots[bot].conn {
            Some(conn) => conn,
            None => {
                let conn = self.new_conn();
                self.bots[bot].conn = Some(conn);
                conn
            }
        }
    }

    fn client_conn(&mut self) -> ConnId {
        let client = self.rng.index(self.clients.len());
        match self.clients[client] {
            Some(conn) => conn,
            None => {
                let conn = self.new_conn();
                self.clients[client] = Some(conn);
                conn
            }
        }
    }

    fn send(&mut self, conn: ConnId, request: Request, asked: Asked, out: &mut Output) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.asked.insert((conn, request_id), asked);
        self.daemon.request(self.now_ms, conn, request_id, request, out);
        request_id
    }

    // ----------------------------------------------------------------- clients

    fn random_request(&mut self) -> NewTaskRequest {
        let rng = &mut self.rng;
        let mut slices: Vec<TaskSlice> = Vec::new();
        for _ in 0..rng.between(1, 3) {
            let mut slice = TaskSlice {
                expiration_secs: rng.between(1, 60) as u32,
                wait_for_capacity: rng.chance(40),
                ..TaskSlice::default()
            };
            Arc::make_mut(&mut slice.properties).command = vec!["build".into(), ["a", "b", "c"][rng.index(3)].into()];
            Arc::make_mut(&mut slice.properties).dimensions = pairs(TASK_DIMENSIONS[rng.index(TASK_DIMENSIONS.len())]);
            Arc::make_mut(&mut slice.properties).idempotent = rng.chance(40);
            let cache_count = if rng.chance(30) { rng.between(1, 2) as usize } else { 0 };
            Arc::make_mut(&mut slice.properties).caches = CACHE_NAMES[..cache_count]
                .iter()
                .map(|name| NamedCache { name: name.to_string(), path: format!("cache/{name}") })
                .collect();
            if !slices.contains(&slice) {
                slices.push(slice);
            }
        }
        NewTaskRequest {
            name: "sim".into(),
            priority: [50, 100, 200][rng.index(3)],
            task_slices: slices,
            bot_ping_tolerance_secs: rng.between(5, 60) as u32,
            ..NewTaskRequest::default()
        }
    }

    fn submit(&mut self, out: &mut Output) {
        if self.active.len() > 40 {
            return;
        }
        let request = self.random_request();
        let conn = self.client_conn();
        self.note(|| format!("submit {} slice(s) on {conn:?}", request.task_slices.len()));
        let lineage = self.random_lineage();
        if lineage.is_empty() {
            self.send(conn, Request::NewTask(request), Asked::NewTask, out);
        } else {
            self.note(|| format!("  with {lineage:?}"));
            self.send(conn, Request::NewTaskWithLineage { request, lineage }, Asked::NewTaskWithLineage, out);
        }
    }

    /// Mostly none; else a uuid from a few (so some repeat) and a parent in flight.
    fn random_lineage(&mut self) -> TaskLineage {
        let mut lineage = TaskLineage::default();
        if self.rng.chance(10) {
            lineage.request_uuid = format!("uuid-{}", self.rng.below(4));
        }
        if self.rng.chance(20) && !self.active.is_empty() {
            let index = self.rng.index(self.active.len());
            lineage.parent_task_id = self.active.iter().nth(index).map(|id| id.as_u64());
        }
        lineage
    }

    /// A task a client knows: mostly one still in flight.
    fn known_task(&mut self) -> Option<u64> {
        if !self.active.is_empty() && self.rng.chance(75) {
            let index = self.rng.index(self.active.len());
            return self.active.iter().nth(index).map(|id| id.as_u64());
        }
        (!self.acknowledged.is_empty()).then(|| self.acknowledged[self.rng.index(self.acknowledged.len())].as_u64())
    }

    fn cancel(&mut self, out: &mut Output) {
        let Some(task_id) = self.known_task() else { return };
        let kill_running = self.rng.chance(60);
        let conn = self.client_conn();
        self.note(|| format!("cancel {task_id:x} kill_running {kill_running}"));
        self.send(conn, Request::CancelTask { task_id, kill_running }, Asked::Cancel { task_id }, out);
    }

    fn wait(&mut self, out: &mut Output) {
        let Some(task_id) = self.known_task() else { return };
        let timeout_ms = if self.rng.chance(10) { 0 } else { self.rng.between(1, 15_000) };
        let conn = self.client_conn();
        self.note(|| format!("wait for {task_id:x} up to {timeout_ms} ms on {conn:?}"));
        self.send(conn, Request::WaitTask { task_id, timeout_ms }, Asked::Wait { task_id }, out);
    }

    fn read(&mut self, out: &mut Output) {
        let Some(task_id) = self.known_task() else { return };
        let conn = self.client_conn();
        if self.rng.chance(50) {
            self.note(|| format!("get task {task_id:x}"));
            self.send(conn, Request::GetTask { task_id }, Asked::Other, out);
        } else {
            let offset = self.rng.between(0, 64);
            self.note(|| format!("get output of {task_id:x} from {offset}"));
            self.send(conn, Request::GetOutput { task_id, offset, max_bytes: 64 }, Asked::Output, out);
        }
    }

    fn person_acts_on_bot(&mut self, out: &mut Output) {
        let bot_id = self.bots[self.rng.index(self.bots.len())].bot_id.clone();
        let request = match self.rng.below(7) {
            0 | 1 => Request::QuarantineBot { bot_id, reason: "flaky disk".into() },
            2 | 3 => Request::UnquarantineBot { bot_id },
            4 => Request::TerminateBot { bot_id, reason: String::new() },
            // Refused while the bot is connected or holds a run; else it is forgotten,
            // and comes back as a new bot when it polls again.
            5 => Request::DeleteBot { bot_id },
            _ => Request::CountBots { dimensions: Vec::new() },
        };
        let asked = if matches!(request, Request::DeleteBot { .. }) { Asked::DeleteBot } else { Asked::Other };
        let conn = self.client_conn();
        self.note(|| format!("{request:?}"));
        self.send(conn, request, asked, out);
    }

    fn disconnect(&mut self, out: &mut Output) {
        let mut open: Vec<ConnId> = self.clients.iter().flatten().copied().collect();
        open.extend(self.bots.iter().filter_map(|bot| bot.conn));
        if open.is_empty() {
            return;
        }
        let conn = open[self.rng.index(open.len())];
        self.close(conn, out);
    }

    fn close(&mut self, conn: ConnId, out: &mut Output) {
        self.note(|| format!("{conn:?} closes"));
        for client in &mut self.clients {
            if *client == Some(conn) {
                *client = None;
            }
        }
        for bot in &mut self.bots {
            if bot.conn == Some(conn) {
                bot.conn = None;
            }
            if let Some(poll) = bot.polling.filter(|(poll_conn, _)| *poll_conn == conn) {
                bot.polling = None;
                self.closed_polls.insert(poll);
            }
        }
        self.daemon.core.handle(self.now_ms, Input::Disconnected { conn }, out);
    }

    // -------------------------------------------------------------------- bots

    fn bot_acts(&mut self, bot: usize, out: &mut Output) {
        if self.bots[bot].asleep_until_ms > self.now_ms {
            return;
        }
        if self.bots[bot].exited {
            if self.rng.chance(20) {
                // Started again by its machine: a new session.
                let sim_bot = &mut self.bots[bot];
                sim_bot.exited = false;
                sim_bot.session_id += 1;
                self.poll(bot, out);
            }
            return;
        }
        if self.bots[bot].run.is_some() {
            self.report(bot, out);
        } else if self.bots[bot].polling.is_none() || self.rng.chance(10) {
            self.poll(bot, out);
        }
    }

    fn poll(&mut self, bot: usize, out: &mut Output) {
        let conn = self.bot_conn(bot);
        let sim_bot = &self.bots[bot];
        let poll = bot_poll(&sim_bot.bot_id, sim_bot.session_id, sim_bot.dimensions.clone(), sim_bot.health.clone());
        let session_id = sim_bot.session_id;
        self.note(|| format!("{} polls on {conn:?} (session {session_id:x})", poll.bot_id));
        let request_id = self.send(conn, Request::BotPoll(poll), Asked::Poll { bot, session_id }, out);
        self.bots[bot].polling = Some((conn, request_id));
    }

    fn random_outcome(&mut self, must_stop: bool) -> RunOutcome {
        let end = if must_stop && self.rng.chance(80) {
            RunEnd::Killed
        } else {
            match self.rng.below(10) {
                0..6 => RunEnd::Exited,
                6 => RunEnd::HardTimeout,
                7 => RunEnd::IoTimeout,
                8 => RunEnd::InternalError("the work directory could not be removed".into()),
                _ => RunEnd::ClientError("no such command".into()),
            }
        };
        let exit_code = match end {
            RunEnd::Exited => Some(if self.rng.chance(70) { 0 } else { self.rng.between(1, 2) as i64 }),
            RunEnd::ClientError(_) | RunEnd::InternalError(_) => None,
            _ => Some(-1),
        };
        let mut outcome = run_outcome(exit_code, self.rng.between(1, 100_000), end);
        if self.rng.chance(30) {
            // Outputs uploaded: they must survive snapshots and replays like the rest.
            let seed = self.rng.between(1, 1_000_000);
            let mut cas = apiary_protocol::CasOutcome {
                output_root: Some(apiary_protocol::cas::Digest::of(&seed.to_le_bytes())),
                ..Default::default()
            };
            cas.stats.upload.items_cold = seed;
            outcome.cas = Some(Box::new(cas));
        }
        outcome
    }

    /// The bot reports on its run: new output from what the daemon holds, and
    /// sometimes the final outcome.
    fn report(&mut self, bot: usize, out: &mut Output) {
        let conn = self.bot_conn(bot);
        let must_stop = self.bots[bot].run.as_ref().expect("a run").must_stop;
        let decide_end = self.rng.chance(if must_stop { 70 } else { 20 });
        let outcome = decide_end.then(|| self.random_outcome(must_stop));
        let more = if self.rng.chance(70) { self.rng.between(1, 40) } else { 0 };
        let sim_bot = &mut self.bots[bot];
        let run = sim_bot.run.as_mut().expect("a run");
        if run.outcome.is_none() {
            run.produced += more;
            run.outcome = outcome;
        }
        let update = TaskUpdate {
            bot_id: sim_bot.bot_id.clone(),
            session_id: run.session_id,
            run_id: run.run_id,
            output_offset: run.acked,
            output: run_output(run.run_id, run.acked, run.produced),
            outcome: run.outcome.clone(),
        };
        sim_bot.last_update = Some(update.clone());
        self.note(|| {
            let TaskUpdate { bot_id, run_id, output_offset, output, outcome, .. } = &update;
            format!("{bot_id} reports run {run_id:x} at {output_offset} +{} outcome {outcome:?}", output.len())
        });
        self.send(conn, Request::TaskUpdate(update.clone()), Asked::Update { bot, update }, out);
    }

    /// The bot's last update again: a retry after a lost reply.
    fn duplicate_report(&mut self, out: &mut Output) {
        let bot = self.rng.index(self.bots.len());
        let Some(update) = self.bots[bot].last_update.clone() else { return };
        let conn = self.bot_conn(bot);
        self.note(|| format!("{} resends its update of run {:x}", update.bot_id, update.run_id));
        self.send(conn, Request::TaskUpdate(update.clone()), Asked::Update { bot, update }, out);
    }

    /// A report about a run the bot gave up on, delayed in the network or sent by
    /// an old process of the bot.
    fn late_report(&mut self, out: &mut Output) {
        let bot = self.rng.index(self.bots.len());
        if self.bots[bot].old_runs.is_empty() {
            return;
        }
        let (run_id, session_id) = self.bots[bot].old_runs[self.rng.index(self.bots[bot].old_runs.len())];
        let offset = self.rng.between(0, 80);
        let len = self.rng.between(0, 20);
        let outcome = self.rng.chance(60).then(|| self.random_outcome(false));
        let conn = self.bot_conn(bot);
        let update = TaskUpdate {
            bot_id: self.bots[bot].bot_id.clone(),
            session_id,
            run_id,
            output_offset: offset,
            output: run_output(run_id, offset, offset + len),
            outcome,
        };
        self.note(|| format!("{} sends a late report for run {run_id:x}: {:?}", update.bot_id, update.outcome));
        self.send(conn, Request::TaskUpdate(update.clone()), Asked::Update { bot, update }, out);
    }

    /// The bot's process dies: it loses its run and comes back with a new session.
    fn bot_crashes(&mut self, out: &mut Output) {
        let bot = self.rng.index(self.bots.len());
        let bot_id = self.bots[bot].bot_id.clone();
        self.note(|| format!("{bot_id} crashes"));
        if let Some(conn) = self.bots[bot].conn {
            self.close(conn, out);
        }
        let asleep_ms = if self.rng.chance(50) { self.rng.between(0, 60_000) } else { 0 };
        let new_dimensions = self.rng.chance(20).then(|| bot_dimensions(&mut self.rng, &bot_id));
        let sim_bot = &mut self.bots[bot];
        if let Some(run) = sim_bot.run.take() {
            sim_bot.old_runs.push((run.run_id, run.session_id));
        }
        sim_bot.session_id += 1;
        sim_bot.polling = None;
        sim_bot.exited = false;
        sim_bot.asleep_until_ms = self.now_ms + asleep_ms;
        if let Some(dimensions) = new_dimensions {
            sim_bot.dimensions = dimensions;
        }
    }

    fn bot_health_changes(&mut self) {
        let bot = self.rng.index(self.bots.len());
        let sim_bot = &mut self.bots[bot];
        let fails = sim_bot.health.is_empty() && self.rng.chance(40);
        sim_bot.health = if fails { "disk full".into() } else { String::new() };
        let (bot_id, health) = (sim_bot.bot_id.clone(), sim_bot.health.clone());
        self.note(|| format!("{bot_id} health check says {health:?}"));
    }

    /// The daemon's disk fills up, as its shell would say; it has room again
    /// some steps later (`disk_frees`).
    fn disk_fills(&mut self, out: &mut Output) {
        if self.disk_full {
            return;
        }
        self.disk_full = true;
        *self.stats.entry("disk full").or_default() += 1;
        self.note(|| "the disk is full".into());
        self.daemon.core.set_storage_trouble(Some("no space".into()), out);
    }

    fn disk_frees(&mut self, out: &mut Output) {
        self.disk_full = false;
        self.note(|| "the disk has room again".into());
        self.daemon.core.set_storage_trouble(None, out);
    }

    /// The bot hangs (or its network is down) for a while: no polls, no reports.
    fn bot_hangs(&mut self) {
        let bot = self.rng.index(self.bots.len());
        let ms = self.rng.between(5_000, 90_000);
        self.bots[bot].asleep_until_ms = self.now_ms + ms;
        let bot_id = self.bots[bot].bot_id.clone();
        self.note(|| format!("{bot_id} hangs for {ms} ms"));
    }

    // ------------------------------------------------------------------- clock

    fn advance(&mut self, ms: u64, tick_percent: u64, out: &mut Output) {
        self.now_ms += ms;
        let tick = self.rng.chance(tick_percent);
        self.note(|| format!("the clock moves {ms} ms{}", if tick { ", tick" } else { "" }));
        if tick {
            self.daemon.core.tick(self.now_ms, out);
        }
    }

    // ------------------------------------------------------------------ replies

    /// The step's output becomes durable, then its replies reach their peers,
    /// then the model checks the core.
    fn commit(&mut self, out: Output) {
        self.daemon.write_output(&out);
        let mut touched: BTreeSet<RequestId> = out.output_writes.iter().map(|write| write.run_id.request()).collect();
        for event in &out.events {
            self.check_event(event, &mut touched);
        }
        self.daemon.persist_events(&out);
        // Each simulated bot has an id of its own, and its old connection is
        // closed before it comes back: no session ever takes over another's.
        assert!(out.closings.is_empty(), "a connection closed by the core: {:?}", out.closings);
        let mut answered = BTreeSet::new();
        for outgoing in out.replies {
            let key = (outgoing.conn, outgoing.request_id);
            assert!(!self.closed_polls.contains(&key), "a reply to the poll {key:?} whose connection closed");
            assert!(answered.insert(key), "two replies to request {key:?} in one step");
            let asked =
                self.asked.remove(&key).unwrap_or_else(|| panic!("a reply to {key:?}, never asked or answered"));
            self.on_reply(asked, key, outgoing.reply);
        }
        for read in out.output_reads {
            let key = (read.conn, read.request_id);
            assert!(matches!(self.asked.remove(&key), Some(Asked::Output)), "an output read answers a GetOutput");
            if let Some(run_id) = read.run_id {
                assert_eq!(read.output_len, self.daemon.store_len(run_id), "output length of a read");
                // The run a deduplicated task reused may be older than retention.
                let Some(result) = self.daemon.core.task(run_id.request()) else {
                    let created_ms = run_id.request().created_unix_ms();
                    assert!(created_ms + config().task_retention_ms < self.now_ms, "output of a known task");
                    continue;
                };
                if read.task_ended {
                    assert!(result.state.is_terminal(), "an output read says ended only of an ended task");
                }
            } else {
                assert_eq!(read.output_len, 0, "a task that never ran has no output");
            }
        }
        // Anything but a poll or a wait is answered at once.
        for (key, asked) in &self.asked {
            assert!(
                matches!(asked, Asked::Poll { .. } | Asked::Wait { .. }),
                "request {key:?} was not answered in its step"
            );
        }
        self.daemon.core.check_invariants();
        if self.rng.below(400) == 0 {
            *self.stats.entry("snapshot").or_default() += 1;
            self.note(|| "snapshot".into());
            self.daemon.take_snapshot();
        }
        self.observe(&touched);
        for expect in std::mem::take(&mut self.expects) {
            self.check_expect(expect);
        }
        if self.step.is_multiple_of(256) {
            self.check_everything();
            self.check_tag_queries();
        }
    }

    fn check_event(&mut self, event: &Event, touched: &mut BTreeSet<RequestId>) {
        let kind = match event {
            Event::TaskCreated(_) => "TaskCreated",
            Event::SliceAdvanced { .. } => "SliceAdvanced",
            Event::TaskAssigned(assigned) if assigned.run_id & 0xf == 2 => "TaskAssigned (retry)",
            Event::TaskAssigned(_) => "TaskAssigned",
            Event::KillRequested { .. } => "KillRequested",
            Event::TaskFinished(finished) if finished.deduped_from.is_some() => "TaskFinished deduplicated",
            Event::TaskFinished(finished) => finished.state.state().name(),
            Event::TaskRetried { .. } => "TaskRetried",
            Event::BotConnected(_) => "BotConnected",
            Event::BotChanged { .. } => "BotChanged",
            Event::BotChangedBy { .. } => "BotChangedBy",
            Event::RetentionApplied { .. } => "RetentionApplied",
            Event::TaskLinked(_) => "TaskLinked",
            Event::TaskOutputs(_) => "TaskOutputs",
        };
        *self.stats.entry(kind).or_default() += 1;
        let mut touch = |raw: u64, finished_tasks: &BTreeSet<u64>, what: &str| {
            let task_id = request_id(raw);
            touched.insert(task_id);
            assert!(!finished_tasks.contains(&task_id.as_u64()), "{what} for task {task_id} after it ended");
        };
        match event {
            Event::TaskCreated(created) => {
                touched.insert(request_id(created.task_id));
                assert!(!self.seen.contains_key(&request_id(created.task_id)), "a task id is used once");
                let slices = created.request.task_slices.iter().map(|slice| slice.properties.dimensions.clone());
                self.slice_dimensions.insert(created.task_id, slices.collect());
            }
            Event::SliceAdvanced { task_id, .. } => touch(*task_id, &self.finished_tasks, "a slice change"),
            Event::TaskAssigned(assigned) => {
                assert!(!self.disk_full, "run {:x} started on a full disk", assigned.run_id);
                touch(assigned.run_id, &self.finished_tasks, "an assignment");
                assert!(self.assigned_runs.insert(assigned.run_id), "run {:x} assigned twice", assigned.run_id);
                assert!(assigned.run_id & 0xf <= 2, "at most one retry: run {:x}", assigned.run_id);
                let wanted = &self.slice_dimensions[&(assigned.run_id & !0xf)][assigned.slice_index as usize];
                let bot = self.bots.iter().find(|bot| bot.bot_id == assigned.bot_id).expect("a simulated bot");
                assert!(
                    bot_has(bot, wanted),
                    "run {:x} went to {} with {:?}",
                    assigned.run_id,
                    bot.bot_id,
                    bot.dimensions
                );
            }
            Event::KillRequested { run_id, .. } => touch(*run_id, &self.finished_tasks, "a kill request"),
            Event::TaskOutputs(outputs) => touch(outputs.task_id, &self.finished_tasks, "outputs"),
            Event::TaskRetried { run_id, .. } => {
                touch(*run_id, &self.finished_tasks, "a retry");
                self.retried_tasks.insert(request_id(*run_id));
                assert!(self.ended_runs.insert(*run_id), "run {run_id:x} ended twice (the second time retried)");
            }
            Event::TaskFinished(finished) => {
                touch(finished.task_id, &self.finished_tasks, "a second terminal event");
                self.finished_tasks.insert(finished.task_id);
                if let Some(run_id) = finished.run_id {
                    assert!(self.ended_runs.insert(run_id), "run {run_id:x} ended twice");
                    assert!(self.assigned_runs.contains(&run_id), "run {run_id:x} ended without starting");
                }
            }
            Event::BotConnected(_) | Event::BotChanged { .. } | Event::BotChangedBy { .. } => {}
            Event::RetentionApplied { cutoff_ms } => self.retire(*cutoff_ms, touched),
            Event::TaskLinked(linked) => {
                touch(linked.task_id, &self.finished_tasks, "a link");
                if let Some(parent) = linked.parent_task_id {
                    assert!(
                        !self.finished_tasks.contains(&parent),
                        "task {:x} linked to an ended parent",
                        linked.task_id
                    );
                    self.parents.insert(linked.task_id, parent);
                }
            }
        }
    }

    /// The model's retention: every task created before the cutoff that ended
    /// (by now, in this step too) is let go; nothing else is.
    fn retire(&mut self, cutoff_ms: u64, touched: &mut BTreeSet<RequestId>) {
        let before = RequestId::first_of_millisecond(cutoff_ms);
        let ended = |task_id: &RequestId| self.finished_tasks.contains(&task_id.as_u64());
        let retired: Vec<RequestId> =
            self.seen.keys().chain(touched.iter()).copied().filter(|id| *id < before).filter(ended).collect();
        for task_id in retired {
            if self.retired.insert(task_id) {
                self.newly_retired.push(task_id);
            }
            self.seen.remove(&task_id);
            self.active.remove(&task_id);
            touched.remove(&task_id);
        }
        let retired = &self.retired;
        self.acknowledged.retain(|task_id| !retired.contains(task_id));
    }

    fn on_reply(&mut self, asked: Asked, key: (ConnId, u64), reply: Reply) {
        match asked {
            Asked::Poll { bot, session_id } => self.on_poll_reply(bot, session_id, key, reply),
            Asked::Update { bot, update } => self.on_update_reply(bot, update, reply),
            Asked::NewTask => match reply {
                Reply::Created(ack) => {
                    let task_id = request_id_of_ack(&ack);
                    self.acknowledged.push(task_id);
                    let fresh = [TaskState::Pending, TaskState::Running, TaskState::Completed, TaskState::NoResource];
                    assert!(fresh.contains(&ack.state), "a new task: {ack:?}");
                    assert_eq!(ack.deduped_from.is_some(), ack.state == TaskState::Completed, "{ack:?}");
                }
                Reply::Error(ErrorReply { code: ErrorCode::Unavailable, .. }) if self.disk_full => {
                    *self.stats.entry("new task refused: disk full").or_default() += 1;
                }
                other => panic!("a valid new task was refused: {other:?}"),
            },
            Asked::NewTaskWithLineage => match reply {
                Reply::Created(ack) => {
                    let task_id = request_id_of_ack(&ack);
                    if !self.acknowledged.contains(&task_id) {
                        self.acknowledged.push(task_id);
                    }
                }
                Reply::Error(ErrorReply { code: ErrorCode::InvalidRequest, message })
                    if message.starts_with("parent_task_id: ") =>
                {
                    *self.stats.entry("new child refused: its parent ended").or_default() += 1;
                }
                Reply::Error(ErrorReply { code: ErrorCode::Unavailable, .. }) if self.disk_full => {
                    *self.stats.entry("new task refused: disk full").or_default() += 1;
                }
                other => panic!("a valid new task was refused: {other:?}"),
            },
            Asked::Wait { task_id } => match reply {
                Reply::Task(result) => assert_eq!(result.task_id, task_id & !0xf, "a wait answers its task"),
                other => panic!("a wait for a known task got {other:?}"),
            },
            Asked::Cancel { task_id } => match reply {
                Reply::Canceled { outcome, task } => {
                    let before = self.seen.get(&request_id(task_id)).map(|result| result.state);
                    let consistent = match outcome {
                        CancelOutcome::Canceled => task.state == TaskState::Canceled,
                        CancelOutcome::AlreadyEnded => before.is_some_and(TaskState::is_terminal),
                        CancelOutcome::KillRequested | CancelOutcome::LeftRunning => task.state == TaskState::Running,
                    };
                    assert!(consistent, "cancel said {outcome:?} of a task {:?} (before {before:?})", task.state);
                }
                other => panic!("a cancel of a known task got {other:?}"),
            },
            Asked::DeleteBot => match reply {
                Reply::BotDeleted => {}
                Reply::Error(error) => {
                    let refused = error.code == ErrorCode::InvalidRequest
                        && (error.message.contains("is connected") || error.message.contains("still holds run"));
                    assert!(refused || error.code == ErrorCode::NotFound, "{error:?}");
                }
                other => panic!("a bot deletion got {other:?}"),
            },
            Asked::Output => panic!("a GetOutput is answered by an output read, not {reply:?}"),
            Asked::Other => {
                if let Reply::Error(error) = &reply {
                    assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");
                }
            }
        }
    }

    fn on_poll_reply(&mut self, bot: usize, session_id: u64, key: (ConnId, u64), reply: Reply) {
        let sim_bot = &mut self.bots[bot];
        let current = sim_bot.polling == Some(key) && sim_bot.session_id == session_id;
        if current {
            sim_bot.polling = None;
        }
        match reply {
            Reply::Assignment(assignment) => {
                let bot_id = sim_bot.bot_id.clone();
                self.expects.push(Expect::Running { run_id: assignment.run_id, bot_id });
                if current {
                    assert!(sim_bot.run.is_none(), "work for {} that runs something", sim_bot.bot_id);
                    sim_bot.run = Some(BotRun {
                        run_id: assignment.run_id,
                        session_id,
                        acked: 0,
                        produced: 0,
                        must_stop: false,
                        outcome: None,
                    });
                }
            }
            Reply::NoWork => {}
            Reply::Terminate => {
                if current {
                    sim_bot.exited = true;
                }
            }
            other => panic!("a valid poll got {other:?}"),
        }
    }

    fn on_update_reply(&mut self, bot: usize, update: TaskUpdate, reply: Reply) {
        let run_id = update.run_id;
        let task_id = request_id(run_id);
        let was_current =
            self.seen.get(&task_id).is_some_and(|seen| seen.state == TaskState::Running && seen.run_id == Some(run_id));
        let sim_bot = &mut self.bots[bot];
        let own_run =
            sim_bot.run.as_ref().is_some_and(|run| run.run_id == run_id && run.session_id == update.session_id);
        match reply {
            Reply::UpdateAck { output_len, must_stop } => {
                let gap = update.output_offset > output_len;
                let sent_end = update.output_offset + update.output.len() as u64;
                if !gap {
                    assert!(output_len >= sent_end || !was_current, "the daemon holds what it acknowledged");
                }
                match (&update.outcome, gap) {
                    (Some(outcome), false) if was_current => {
                        self.expects.push(Expect::EndedAs { run_id, outcome: outcome.clone() });
                    }
                    (Some(_), false) => {
                        self.expects.push(Expect::NotRunning { run_id, why: "its final report was acknowledged" })
                    }
                    (_, true) if was_current => self.expects.push(Expect::StillRunning { run_id }),
                    _ => {}
                }
                if own_run {
                    if update.outcome.is_some() && !gap {
                        let run = sim_bot.run.take().expect("own run");
                        sim_bot.old_runs.push((run.run_id, run.session_id));
                    } else {
                        let run = sim_bot.run.as_mut().expect("own run");
                        run.acked = output_len;
                        run.produced = run.produced.max(output_len);
                        run.must_stop |= must_stop;
                    }
                }
            }
            Reply::Error(ErrorReply { code: ErrorCode::StaleRun, message }) => {
                assert!(!was_current, "a report of the current run {run_id:x} was called stale: {message}");
                self.expects.push(Expect::NotRunning { run_id, why: "its bot was told it is stale" });
                if own_run {
                    let run = sim_bot.run.take().expect("own run");
                    sim_bot.old_runs.push((run.run_id, run.session_id));
                }
            }
            other => panic!("a well-formed update got {other:?}"),
        }
    }

    fn running(&self, run_id: u64) -> Option<TaskResult> {
        self.daemon
            .core
            .task(request_id(run_id))
            .filter(|result| result.state == TaskState::Running && result.run_id == Some(run_id))
    }

    fn check_expect(&self, expect: Expect) {
        match expect {
            Expect::Running { run_id, bot_id } => {
                let result = self.running(run_id).unwrap_or_else(|| panic!("run {run_id:x} handed out is not running"));
                assert_eq!(result.bot_id.as_deref(), Some(bot_id.as_str()), "run {run_id:x} runs on its bot");
            }
            Expect::NotRunning { run_id, why } => {
                assert!(self.running(run_id).is_none(), "run {run_id:x} still runs, though {why}");
            }
            Expect::StillRunning { run_id } => {
                assert!(self.running(run_id).is_some(), "run {run_id:x} ended on a report with a gap");
            }
            Expect::EndedAs { run_id, outcome } => {
                let result = self.daemon.core.task(request_id(run_id)).expect("a known task");
                match expected_state(&outcome.end) {
                    Some(state) => {
                        assert_eq!(result.state, state, "run {run_id:x} ended as reported: {outcome:?}");
                        assert_eq!(result.exit_code, outcome.exit_code, "run {run_id:x} keeps its exit code");
                        assert_eq!(result.run_id, Some(run_id));
                    }
                    None => {
                        // BOT_DIED, or retried: pending again, or already handed to a parked bot.
                        let ended = result.run_id == Some(run_id)
                            && matches!(result.state, TaskState::BotDied | TaskState::Pending);
                        let handed_on = result.run_id == Some(run_id + 1) && result.state == TaskState::Running;
                        assert!(ended || handed_on, "run {run_id:x} ended with an internal error: {result:?}");
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------- model

    /// Looks at the tasks that may have changed (named by an event or an output
    /// write: nothing else changes a task), and at every bot. `check_everything`
    /// looks at all tasks now and then, and a restart at all of them.
    fn observe(&mut self, touched: &BTreeSet<RequestId>) {
        for task_id in std::mem::take(&mut self.newly_retired) {
            assert!(self.daemon.core.task(task_id).is_none(), "task {task_id} was let go by retention");
        }
        let mut running_on: BTreeMap<String, u64> = BTreeMap::new();
        for &task_id in touched {
            let result = self.daemon.core.task(task_id).unwrap_or_else(|| panic!("task {task_id} was lost"));
            self.check_task(task_id, &result);
            if result.state == TaskState::Running {
                let bot_id = result.bot_id.clone().expect("a running task has a bot");
                let run_id = result.run_id.expect("a running task has a run");
                if let Some(other) = running_on.insert(bot_id.clone(), run_id) {
                    panic!("bot {bot_id} holds two tasks: runs {other:x} and {run_id:x}");
                }
            }
            if result.state.is_terminal() {
                self.active.remove(&task_id);
            } else {
                self.active.insert(task_id);
            }
            self.seen.insert(task_id, result);
        }
        for index in 0..self.bots.len() {
            let bot_id = &self.bots[index].bot_id;
            let Some(info) = self.daemon.core.bot(bot_id) else {
                // Never seen yet, or deleted.
                self.seen_bots.remove(bot_id);
                continue;
            };
            if let Some(run_id) = info.current_run_id {
                let result = self.running(run_id).unwrap_or_else(|| panic!("{bot_id} holds {run_id:x}, not running"));
                assert_eq!(result.bot_id.as_deref(), Some(bot_id.as_str()), "{bot_id} holds {run_id:x} of another");
            }
            if let Some(&run_id) = running_on.get(bot_id) {
                assert_eq!(Some(run_id), info.current_run_id, "{bot_id} holds what runs on it");
            }
            self.seen_bots.insert(bot_id.clone(), info);
        }
    }

    fn check_task(&self, task_id: RequestId, result: &TaskResult) {
        if let Some(parent) = self.parents.get(&task_id.as_u64())
            && result.state == TaskState::Pending
            && result.try_number == 0
        {
            assert!(!self.finished_tasks.contains(parent), "task {task_id} waits though its parent {parent:x} ended");
        }
        if let Some(before) = self.seen.get(&task_id) {
            if before.state.is_terminal() {
                assert_eq!(result, before, "task {task_id} changed after it ended {}", before.state.name());
            }
            assert!(result.try_number >= before.try_number, "task {task_id}: the try number went back");
            assert!(result.run_id >= before.run_id, "task {task_id}: the run id went back");
        }
        assert!(result.try_number <= 2, "task {task_id} tried {} times", result.try_number);
        if result.state == TaskState::Running {
            let bot_id = result.bot_id.as_deref().expect("a running task has a bot");
            let bot = self.daemon.core.bot(bot_id).expect("a running task's bot is known");
            assert_eq!(bot.current_run_id, result.run_id, "task {task_id} runs on {bot_id}, which holds it");
        }
        let output_run = result.deduped_from.or(result.run_id).and_then(RunId::from_u64);
        if let Some(output_run) = output_run {
            let stored = self.daemon.store.get(&output_run).map_or(&[][..], Vec::as_slice);
            assert_eq!(result.output_len, stored.len() as u64, "task {task_id}: output length is what is stored");
            if let (TaskState::Running, Some(run_id)) = (result.state, result.run_id) {
                // Output that came while the disk was full was dropped behind the
                // marker, which stands where those bytes would be.
                let marker = DISK_FULL_MARKER.as_bytes();
                let at = stored.windows(marker.len()).position(|window| window == marker);
                let (own_ranges, end) = match at {
                    Some(at) => ([(0, at), (at + marker.len(), stored.len())], stored.len()),
                    None => ([(0, stored.len()), (stored.len(), stored.len())], stored.len()),
                };
                assert_eq!(end as u64, result.output_len);
                for (from, to) in own_ranges {
                    let own = run_output(run_id, from as u64, to as u64);
                    assert!(stored[from..to] == own, "task {task_id}: the output of run {run_id:x} is its own bytes");
                }
            }
        }
    }

    /// Every task and every bot, against what was seen.
    fn check_everything(&self) {
        let ids = self.daemon.core.task_ids();
        assert!(ids.iter().eq(self.seen.keys()), "the core has exactly the tasks seen");
        for task_id in ids {
            let result = self.daemon.core.task(task_id).expect("listed");
            self.check_task(task_id, &result);
            assert_eq!(&result, &self.seen[&task_id], "task {task_id} is as last seen");
        }
    }

    /// Tag queries find exactly the tasks whose results show the tags, newest
    /// first: held, archived and restored tasks alike, with tags the daemon
    /// derives from dimensions, stores (`priority:`), or both.
    fn check_tag_queries(&mut self) {
        let mut queries: Vec<Vec<String>> = TASK_DIMENSIONS
            .iter()
            .flat_map(|dimensions| dimensions.iter())
            .map(|(key, value)| vec![format!("{key}:{value}")])
            .collect();
        queries.sort();
        queries.dedup();
        queries.push(vec!["priority:100".into()]);
        queries.push(vec!["os:Mac".into(), "priority:200".into()]);
        queries.push(vec!["priority:50".into(), "pool:ci".into(), "os:Linux|Mac".into()]);
        for tags in queries {
            let expected: Vec<u64> = self
                .seen
                .iter()
                .rev()
                .filter(|(_, result)| tags.iter().all(|tag| result.request.tags.contains(tag)))
                .map(|(task_id, _)| task_id.as_u64())
                .collect();
            assert_eq!(self.list_tagged(&tags), expected, "tasks tagged {tags:?}");
        }
    }

    /// Every task a listing by `tags` gives, page by page.
    fn list_tagged(&mut self, tags: &[String]) -> Vec<u64> {
        const LISTER: ConnId = ConnId(u64::MAX);
        let mut listed = Vec::new();
        let mut cursor = None;
        loop {
            let query = TaskQuery { tags: tags.to_vec(), limit: 7, cursor, ..TaskQuery::default() };
            let mut out = Output::default();
            let input = Input::Request {
                conn: LISTER,
                request_id: 1,
                request: Request::ListTasks(query),
                principal: None,
                grants: None,
            };
            self.daemon.core.handle(self.now_ms, input, &mut out);
            assert!(out.events.is_empty(), "a listing changes nothing");
            let Some(Reply::Tasks { tasks, next_cursor }) = out.replies.pop().map(|outgoing| outgoing.reply) else {
                panic!("a listing answers with tasks")
            };
            listed.extend(tasks.iter().map(|task| task.task_id));
            match next_cursor {
                Some(next) => cursor = Some(next),
                None => return listed,
            }
        }
    }

    // ----------------------------------------------------------------- restart

    /// A restart: the new core comes from the durable log alone. With `lost`, the
    /// last step ran but never became durable.
    fn restart(&mut self, why: &'static str, lost: Option<Output>) {
        *self.stats.entry(if lost.is_some() { "restart losing a step" } else { "restart" }).or_default() += 1;
        self.note(|| why.into());
        if let Some(lost) = &lost
            && self.rng.chance(50)
        {
            // Output is written before events: it may have reached the store.
            self.daemon.write_output(lost);
        }
        self.daemon.restart(self.now_ms);
        // Not durable: the shell tells the new core at its first turn.
        let mut told = Output::default();
        self.daemon.core.set_storage_trouble(self.disk_full.then(|| "no space".into()), &mut told);
        assert!(told.replies.is_empty() && told.events.is_empty(), "a restarted core holds no poll");
        self.asked.clear();
        self.closed_polls.clear();
        self.expects.clear();
        for client in &mut self.clients {
            *client = None;
        }
        for bot in &mut self.bots {
            bot.conn = None;
            bot.polling = None;
        }
        for task_id in &self.acknowledged {
            assert!(self.daemon.core.task(*task_id).is_some(), "acknowledged task {task_id} lost in a restart");
        }
        let ids = self.daemon.core.task_ids();
        assert!(ids.iter().eq(self.seen.keys()), "a restart keeps exactly the durable tasks");
        for task_id in ids {
            let mut result = self.daemon.core.task(task_id).expect("listed");
            let before = &self.seen[&task_id];
            if result.state == TaskState::Running && lost.is_some() {
                // Output of the lost step may have been kept.
                assert!(result.output_len >= before.output_len, "task {task_id} lost durable output");
                let run_id = result.run_id.and_then(RunId::from_u64).expect("a running task has a run");
                assert_eq!(result.output_len, self.daemon.store_len(run_id));
                // And with it the marker of a full disk that cut the output.
                (result.output_len, result.output_truncated) = (before.output_len, before.output_truncated);
            }
            assert_eq!(&result, before, "task {task_id} is the same after a restart");
        }
        for bot in &self.bots {
            let after = self.daemon.core.bot(&bot.bot_id);
            let before = self.seen_bots.get(&bot.bot_id);
            assert_eq!(after.is_some(), before.is_some(), "bot {} known before and after", bot.bot_id);
            if let (Some(mut after), Some(before)) = (after, before) {
                // Not durable: whether it is connected, when it was last heard of,
                // and the caches its last poll reported.
                (after.connected, after.last_seen_unix_ms) = (before.connected, before.last_seen_unix_ms);
                after.caches.clone_from(&before.caches);
                assert_eq!(&after, before, "bot {} is the same after a restart", bot.bot_id);
            }
        }
        let touched: BTreeSet<RequestId> = self.seen.keys().copied().collect();
        self.observe(&touched);
    }
}

fn request_id_of_ack(ack: &NewTaskAck) -> RequestId {
    RequestId::from_u64(ack.task_id).expect("a task id ends in 0")
}

// --------------------------------------------------------------------- seeds

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else {
        "(no message)".into()
    }
}

/// Runs one seed; a failure names the seed, the step, the last steps, and how to replay it.
fn check_seed(seed: u64, steps: u64) -> BTreeMap<&'static str, u64> {
    let mut sim = Sim::new(seed);
    let result = panic::catch_unwind(AssertUnwindSafe(|| sim.run(steps)));
    if let Err(payload) = result {
        let trace: Vec<String> = sim.trace.iter().cloned().collect();
        panic!(
            "seed {seed}: {}\nat step {}; the last steps:\n  {}\nseed {seed}: replay with SIM_SEED={seed} cargo test -p apiary-daemon --test simulation",
            panic_message(payload.as_ref()),
            sim.step,
            trace.join("\n  ")
        );
    }
    sim.stats
}

#[test]
fn simulation_of_many_seeds() {
    let steps = env_u64("SIM_STEPS").unwrap_or(2000);
    if let Some(seed) = env_u64("SIM_SEED") {
        check_seed(seed, steps);
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(256);
    let started = Instant::now();
    let mut stats: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 0..seeds {
        for (kind, count) in check_seed(seed, steps) {
            *stats.entry(kind).or_default() += count;
        }
    }
    eprintln!("{seeds} seeds x {steps} steps in {:.1?}: {stats:?}", started.elapsed());
    // Without this, every read of an ended task would come from the heap.
    assert!(stats.get("tasks the heap let go to history").is_some_and(|&count| count > 1000), "{stats:?}");
}

// ---------------------------------------------------------------- regressions

/// A small daemon with one bot for the regression tests.
struct Bench {
    daemon: Daemon,
    now_ms: u64,
    next_request_id: u64,
}

const CLIENT: ConnId = ConnId(1);
const BOT_CONN: ConnId = ConnId(2);
const BOT: &str = "bot-1";
const SESSION: u64 = 7;

impl Bench {
    fn new() -> Bench {
        Bench { daemon: Daemon::new(), now_ms: START_MS, next_request_id: 1 }
    }

    fn send(&mut self, conn: ConnId, request: Request) -> Output {
        let mut out = Output::default();
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.daemon.request(self.now_ms, conn, request_id, request, &mut out);
        self.durable(&out);
        out
    }

    fn tick(&mut self) -> Output {
        let mut out = Output::default();
        self.daemon.core.tick(self.now_ms, &mut out);
        self.durable(&out);
        out
    }

    fn durable(&mut self, out: &Output) {
        self.daemon.write_output(out);
        self.daemon.persist_events(out);
        self.daemon.core.check_invariants();
    }

    fn submit(&mut self, idempotent: bool, tolerance_secs: u32) -> RequestId {
        let mut slice = TaskSlice { wait_for_capacity: true, ..TaskSlice::default() };
        Arc::make_mut(&mut slice.properties).command = vec!["build".into()];
        Arc::make_mut(&mut slice.properties).dimensions = pairs(&[("pool", "ci")]);
        Arc::make_mut(&mut slice.properties).idempotent = idempotent;
        let request =
            NewTaskRequest { task_slices: vec![slice], bot_ping_tolerance_secs: tolerance_secs, ..Default::default() };
        match &self.send(CLIENT, Request::NewTask(request)).replies[0].reply {
            Reply::Created(ack) => request_id_of_ack(ack),
            other => panic!("{other:?}"),
        }
    }

    fn poll(&mut self, session_id: u64) -> Output {
        let poll = bot_poll(BOT, session_id, pairs(&[("pool", "ci"), ("os", "Linux")]), String::new());
        self.send(BOT_CONN, Request::BotPoll(poll))
    }

    fn take_work(&mut self) -> u64 {
        match &self.poll(SESSION).replies[..] {
            [outgoing] => match &outgoing.reply {
                Reply::Assignment(assignment) => assignment.run_id,
                other => panic!("expected work, got {other:?}"),
            },
            other => panic!("expected work, got {other:?}"),
        }
    }

    fn report(&mut self, run_id: u64, offset: u64, output: &[u8], end: Option<RunEnd>) -> (Reply, Vec<Event>) {
        let outcome = end.map(|end| {
            let exit_code = matches!(end, RunEnd::Exited).then_some(0);
            run_outcome(exit_code, 1_000, end)
        });
        let update = TaskUpdate {
            bot_id: BOT.into(),
            session_id: SESSION,
            run_id,
            output_offset: offset,
            output: output.to_vec(),
            outcome,
        };
        let out = self.send(BOT_CONN, Request::TaskUpdate(update));
        (out.replies.into_iter().next().expect("a reply").reply, out.events)
    }

    fn task(&self, task_id: RequestId) -> TaskResult {
        self.daemon.core.task(task_id).expect("a known task")
    }

    /// How many events ended this run (finished or retried it).
    fn endings_of(&self, run_id: u64) -> usize {
        let ends = |event: &&Event| match event {
            Event::TaskFinished(finished) => finished.run_id == Some(run_id),
            Event::TaskRetried { run_id: retried, .. } => *retried == run_id,
            _ => false,
        };
        self.daemon.log.iter().filter(ends).count()
    }

    /// Rebuilds the core from the log and checks that every task reads the same.
    fn restart_keeps_every_task(&mut self) {
        let before: Vec<TaskResult> = self.daemon.core.task_ids().into_iter().map(|id| self.task(id)).collect();
        self.daemon.restart(self.now_ms);
        let after: Vec<TaskResult> = self.daemon.core.task_ids().into_iter().map(|id| self.task(id)).collect();
        assert_eq!(after, before, "a restart changes no task");
    }
}

fn is_stale(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(ErrorReply { code: ErrorCode::StaleRun, .. }))
}

/// Swarming once showed a task COMPLETED for a moment, then BOT_DIED, when its
/// bot failed around the task after the command ended. Here a terminal state is
/// final: nothing the bot or the clock does afterwards changes it.
#[test]
fn regression_a_finished_task_never_shows_a_later_bot_died() {
    let mut bench = Bench::new();
    let task_id = bench.submit(false, 10);
    let run_id = bench.take_work();
    let (reply, _) = bench.report(run_id, 0, b"done\n", Some(RunEnd::Exited));
    assert_eq!(reply, Reply::UpdateAck { output_len: 5, must_stop: false });
    let completed = bench.task(task_id);
    assert_eq!((completed.state, completed.exit_code), (TaskState::Completed, Some(0)));

    // The bot's failure around the task comes after its final report...
    let (reply, events) = bench.report(run_id, 5, b"", Some(RunEnd::InternalError("cleanup failed".into())));
    assert!(is_stale(&reply), "{reply:?}");
    assert!(events.is_empty(), "a late internal error writes nothing: {events:?}");
    assert_eq!(bench.task(task_id), completed);
    // ...the ping tolerance and the bot death timeout pass...
    bench.now_ms += 10_000 + config().bot_death_timeout_ms;
    let out = bench.tick();
    assert!(!out.events.iter().any(|event| matches!(event, Event::TaskFinished(_))), "{:?}", out.events);
    assert_eq!(bench.task(task_id), completed);
    // ...the bot restarts, and its old process resends its final report.
    bench.poll(SESSION + 1);
    assert_eq!(bench.task(task_id), completed);
    bench.report(run_id, 5, b"", Some(RunEnd::Exited));
    assert_eq!(bench.task(task_id), completed);
    assert_eq!(bench.endings_of(run_id), 1, "one terminal event");
    bench.restart_keeps_every_task();
    assert_eq!(bench.task(task_id), completed);

    // The other way round: BOT_DIED first, and a late success does not turn it COMPLETED.
    let mut bench = Bench::new();
    let task_id = bench.submit(false, 10);
    let run_id = bench.take_work();
    bench.report(run_id, 0, b"", Some(RunEnd::InternalError("disk gone".into())));
    let died = bench.task(task_id);
    assert_eq!((died.state, died.internal_failure), (TaskState::BotDied, true));
    let (reply, events) = bench.report(run_id, 0, b"late", Some(RunEnd::Exited));
    assert!(is_stale(&reply), "{reply:?}");
    assert!(events.is_empty(), "a late success writes nothing: {events:?}");
    assert_eq!(bench.task(task_id), died);
    assert_eq!(bench.endings_of(run_id), 1);
    bench.restart_keeps_every_task();
}

/// A runner's final report and the dead-runner reconciler once raced so that a
/// task looked finished while its slots stayed held. Here, when the ping tolerance
/// ends at the very instant the late final report arrives, in either order, one
/// terminal event is written and the bot's slot is released.
#[test]
fn regression_late_final_report_and_ping_timeout_release_the_slot_once() {
    for idempotent in [false, true] {
        for timeout_first in [true, false] {
            let case = format!("idempotent {idempotent}, ping timeout first {timeout_first}");
            let mut bench = Bench::new();
            let task_id = bench.submit(idempotent, 10);
            let run_id = bench.take_work();
            bench.now_ms += 4_000;
            bench.report(run_id, 0, b"half", None);
            // The tolerance counts from the last word: it ends exactly now.
            bench.now_ms += 10_000;
            assert!(bench.daemon.core.next_deadline_ms().is_some_and(|deadline| deadline <= bench.now_ms));
            let final_report = |bench: &mut Bench| bench.report(run_id, 4, b"!", Some(RunEnd::Exited)).0;
            let reply = if timeout_first {
                bench.tick();
                final_report(&mut bench)
            } else {
                let reply = final_report(&mut bench);
                bench.tick();
                reply
            };
            assert_eq!(bench.endings_of(run_id), 1, "{case}: one terminal event for the run");
            let bot = bench.daemon.core.bot(BOT).expect("known bot");
            assert_eq!(bot.current_run_id, None, "{case}: the bot's slot is released");
            let result = bench.task(task_id);
            match (timeout_first, idempotent) {
                (false, _) => {
                    assert_eq!(reply, Reply::UpdateAck { output_len: 5, must_stop: false }, "{case}");
                    assert_eq!((result.state, result.exit_code), (TaskState::Completed, Some(0)), "{case}");
                }
                (true, false) => {
                    assert!(is_stale(&reply), "{case}: the bot is told its run ended: {reply:?}");
                    assert_eq!(result.state, TaskState::BotDied, "{case}");
                }
                (true, true) => {
                    assert!(is_stale(&reply), "{case}: the retried run's report is stale: {reply:?}");
                    assert_eq!((result.state, result.try_number), (TaskState::Pending, 1), "{case}");
                    // The released bot takes the retry.
                    assert_eq!(bench.take_work(), run_id + 1, "{case}");
                }
            }
            // Nothing more happens for the run, whatever comes later.
            bench.now_ms += 60_000;
            bench.tick();
            bench.report(run_id, 5, b"", Some(RunEnd::Exited));
            assert_eq!(bench.endings_of(run_id), 1, "{case}: still one terminal event");
            bench.restart_keeps_every_task();
        }
    }
}

/// An idempotent task whose first attempt wrote output, then missed its ping
/// tolerance: it is pending again. Returns the bench, the task and the first run.
fn retried_after_output() -> (Bench, RequestId, u64) {
    let mut bench = Bench::new();
    let task_id = bench.submit(true, 10);
    let first = bench.take_work();
    bench.report(first, 0, b"first attempt\n", None);
    bench.now_ms += 10_000;
    bench.tick();
    assert_eq!(bench.task(task_id).state, TaskState::Pending, "the idempotent task is retried");
    (bench, task_id, first)
}

/// Found by the simulation. A retried attempt starts a new output: the daemon
/// must not take the dead attempt's output length for the new attempt's, which
/// drops the new attempt's first bytes (its agent hears "the daemon is ahead" and
/// discards them) and splices the two attempts' output together.
#[test]
fn regression_a_retried_attempt_keeps_its_own_output() {
    let (mut bench, task_id, first) = retried_after_output();
    let second = bench.take_work();
    assert_eq!(second, first + 1);
    let (reply, _) = bench.report(second, 0, b"second\n", None);
    let Reply::UpdateAck { output_len, .. } = reply else { panic!("{reply:?}") };
    let stored = bench.daemon.store.get(&RunId::from_u64(second).unwrap()).cloned().unwrap_or_default();
    let shown = String::from_utf8_lossy(&stored);
    assert_eq!(stored, b"second\n", "the second attempt's output is its own: the store holds {shown:?}");
    assert_eq!(output_len, stored.len() as u64);
    assert_eq!(bench.task(task_id).output_len, stored.len() as u64);
}

/// Found by the simulation. A task retried after its first attempt wrote output
/// reads the same after a restart: the live core keeps the dead attempt's output
/// length, a replay of the same events starts from 0.
#[test]
fn regression_a_restart_does_not_change_a_retried_task() {
    let (mut bench, _, _) = retried_after_output();
    bench.restart_keeps_every_task();
}

//! Criterion benches of the sans-IO core alone: no sockets, no log, no clock.
//!
//! Three groups, each at 1k, 10k, 100k and 1M pending tasks:
//! - `submit`: one `NewTask` into a core holding N pending tasks and no parked bot;
//! - `dispatch`: one bot poll that takes the best pending task for its class;
//! - `handoff`: one `NewTask` handed straight to a parked bot that can run it.
//!
//! The workload: pending tasks spread over 1,000 dimension sets (`pool=ci`, `os=os-<0..10>`,
//! `kind=k-<0..100>`, priority 100..103 by set); 10,000 bots in 100 classes, class `c` having
//! `os=os-<c % 10>` and the ten kinds `k` with `k % 10 == c / 10`, so each class serves ten
//! sets and each set is served by one class. Every bot also reports its own `id`, which
//! the daemon keeps out of classes. The handoff bots are 64 more bots of a 101st
//! class (`kind=handoff`) whose set never has pending work, so their polls park.
//!
//! Each core is built once per size and reused by every sample. Only the operation itself is
//! timed, in batches of up to 64 (`iter_custom`); around each batch, untimed, the bench puts
//! the core back as it was, so the pending count stays within 64 of N:
//! - `submit`: bots of the matching class take and finish as many tasks as were submitted;
//! - `dispatch`: the bots finish their runs and a replacement task goes to each taken set;
//! - `handoff`: the handoff bots poll (and park) before, and finish their runs after.
//!
//! Building requests and dropping the core's `Output` (events and replies) are not timed.
//! The core keeps every task it ever saw, ended ones included, so each timed operation also
//! grows its task store by one; `tick` runs between batches so stale poll timers are dropped.
//!
//! `APIARY_BENCH_QUICK=1`, or a run as a test (`cargo test --benches`, which runs each
//! benchmark once), keeps only the 1k size, so CI proves the benches still work in seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_daemon::core::{ConnId, Core, CoreConfig, Input, Outgoing, Output};
use apiary_protocol::{
    BotPoll, NewTaskRequest, PackedDimensions, Reply, Request, RunEnd, RunOutcome, StringPair, TaskSlice, TaskState,
    TaskUpdate,
};
use criterion::{BenchmarkId, Criterion, Throughput};

/// The allocator `apiaryd` runs with, so the core costs here what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];
const OS_COUNT: usize = 10;
const KIND_COUNT: usize = 100;
const DIMENSION_SETS: usize = OS_COUNT * KIND_COUNT;
const BOT_CLASSES: usize = 100;
const KIND_GROUPS: usize = BOT_CLASSES / OS_COUNT;
const KINDS_PER_CLASS: usize = KIND_COUNT / KIND_GROUPS;
const BOTS: usize = 10_000;
const BOTS_PER_CLASS: usize = BOTS / BOT_CLASSES;
/// Timed operations per batch; the untimed repair between batches restores the core.
const BATCH: usize = 64;
const HANDOFF_BOTS: usize = BATCH;
/// Consecutive bots have distinct classes, so a batch of polls never drains a class.
const _: () =
    assert!(BATCH < BOT_CLASSES && BOT_CLASSES.is_multiple_of(OS_COUNT) && KIND_COUNT.is_multiple_of(KIND_GROUPS));
const SUBMITTER: ConnId = ConnId(u64::MAX);

/// A simulated bot: its poll is built once and cloned for each request.
struct SimBot {
    bot_id: String,
    session_id: u64,
    conn: ConnId,
    poll: BotPoll,
}

impl SimBot {
    /// Like every `apiary-bot`, the bot also reports its `id` dimension.
    fn new(bot_id: String, conn: ConnId, mut dimensions: Vec<StringPair>) -> SimBot {
        dimensions.push(StringPair::new("id", &bot_id));
        let session_id = conn.0 + 1;
        let poll = BotPoll {
            bot_id: bot_id.clone(),
            session_id,
            dimensions: PackedDimensions::new(&dimensions),
            software: "bench".into(),
            quarantine_reason: String::new(),
            caches: Vec::new(),
        };
        SimBot { bot_id, session_id, conn, poll }
    }
}

fn regular_bot(index: usize) -> SimBot {
    let class = index % BOT_CLASSES;
    let mut dimensions =
        vec![StringPair::new("pool", "ci"), StringPair::new("os", &format!("os-{}", class % OS_COUNT))];
    let kind_group = class / OS_COUNT;
    for kind in (0..KIND_COUNT).filter(|kind| kind % KIND_GROUPS == kind_group) {
        dimensions.push(StringPair::new("kind", &format!("k-{kind}")));
    }
    assert_eq!(dimensions.len(), 2 + KINDS_PER_CLASS);
    SimBot::new(format!("bot-{index:05}"), ConnId(index as u64), dimensions)
}

fn handoff_bot(index: usize) -> SimBot {
    let dimensions = vec![StringPair::new("pool", "ci"), StringPair::new("kind", "handoff")];
    SimBot::new(format!("handoff-{index:03}"), ConnId((BOTS + index) as u64), dimensions)
}

/// The bot class that serves a dimension set (exactly one does).
fn class_for_set(set: usize) -> usize {
    let (os, kind) = (set % OS_COUNT, set / OS_COUNT);
    os + OS_COUNT * (kind % KIND_GROUPS)
}

fn new_task(name: String, dimensions: Vec<StringPair>, priority: u8) -> Request {
    let mut slice = TaskSlice::default();
    Arc::make_mut(&mut slice.properties).command = vec!["true".into()];
    Arc::make_mut(&mut slice.properties).dimensions = dimensions;
    Request::NewTask(NewTaskRequest { name, priority, task_slices: vec![slice], ..NewTaskRequest::default() })
}

/// A task for one of the 1,000 dimension sets; its name carries the set.
fn task_for_set(set: usize) -> Request {
    let dimensions = vec![
        StringPair::new("pool", "ci"),
        StringPair::new("os", &format!("os-{}", set % OS_COUNT)),
        StringPair::new("kind", &format!("k-{}", set / OS_COUNT)),
    ];
    new_task(format!("set-{set}"), dimensions, 100 + (set % 4) as u8)
}

fn handoff_task() -> Request {
    new_task("handoff".into(), vec![StringPair::new("pool", "ci"), StringPair::new("kind", "handoff")], 100)
}

struct World {
    core: Core,
    out: Output,
    now_ms: u64,
    next_request_id: u64,
    bots: Vec<SimBot>,
    handoff_bots: Vec<SimBot>,
    /// Rotates through the bots (dispatch) and through a class's bots (submit repair).
    next_bot: usize,
    next_set: usize,
}

impl World {
    /// A core with every bot known but none parked, and `pending` tasks spread over the sets.
    fn build(pending: usize) -> World {
        let mut world = World {
            core: Core::new(CoreConfig::default()),
            out: Output::default(),
            now_ms: 1_700_000_000_000,
            next_request_id: 1,
            bots: (0..BOTS).map(regular_bot).collect(),
            handoff_bots: (0..HANDOFF_BOTS).map(handoff_bot).collect(),
            next_bot: 0,
            next_set: 0,
        };
        let all_bots: Vec<(ConnId, BotPoll)> =
            world.bots.iter().chain(&world.handoff_bots).map(|bot| (bot.conn, bot.poll.clone())).collect();
        for (conn, poll) in all_bots {
            world.send(conn, Request::BotPoll(poll));
            assert!(world.out.replies.is_empty(), "an idle core parks every poll");
            world.core.handle(world.now_ms, Input::Disconnected { conn }, &mut world.out);
        }
        world.out = Output::default();
        for index in 0..pending {
            world.send(SUBMITTER, task_for_set(index % DIMENSION_SETS));
            let reply = world.out.replies.pop().expect("a new task is answered");
            assert!(matches!(reply.reply, Reply::Created(ref ack) if ack.state == TaskState::Pending));
            world.out.events.clear();
        }
        world.next_set = pending % DIMENSION_SETS;
        if pending <= 10_000 {
            world.core.check_invariants();
        }
        world
    }

    fn send(&mut self, conn: ConnId, request: Request) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.core.handle(
            self.now_ms,
            Input::Request { conn, request_id, request, principal: None, grants: None },
            &mut self.out,
        );
    }

    /// Untimed, between batches: time moves on, stale timers fire, the output is
    /// cleared (and keeps its capacity, as the daemon's does from turn to turn).
    fn between_batches(&mut self) {
        self.now_ms += 1;
        self.core.tick(self.now_ms, &mut self.out);
        self.clear_output();
    }

    fn clear_output(&mut self) {
        let Output { events, replies, output_writes, output_reads, closings } = &mut self.out;
        events.clear();
        closings.clear();
        replies.clear();
        output_writes.clear();
        output_reads.clear();
    }

    /// Runs `iterations` timed operations in batches; `prepare` builds a batch's inputs
    /// (untimed), `repair` restores the core after it (untimed).
    fn measure<C>(
        &mut self,
        iterations: u64,
        mut prepare: impl FnMut(&mut World, usize) -> (Vec<(ConnId, Request)>, C),
        mut repair: impl FnMut(&mut World, Vec<Outgoing>, C),
    ) -> Duration {
        let mut measured = Duration::ZERO;
        let mut remaining = iterations as usize;
        while remaining > 0 {
            let batch = remaining.min(BATCH);
            remaining -= batch;
            self.between_batches();
            let (inputs, context) = prepare(self, batch);
            let first_request_id = self.next_request_id;
            self.next_request_id += batch as u64;
            let (core, out, now_ms) = (&mut self.core, &mut self.out, self.now_ms);
            let started = Instant::now();
            for (request_id, (conn, request)) in (first_request_id..).zip(inputs) {
                core.handle(now_ms, Input::Request { conn, request_id, request, principal: None, grants: None }, out);
            }
            measured += started.elapsed();
            let replies = self.out.replies.drain(..).collect();
            repair(self, replies, context);
        }
        measured
    }

    // ----------------------------------------------------------------- benches

    fn submit(&mut self, iterations: u64) -> Duration {
        self.measure(
            iterations,
            |world, batch| {
                let sets: Vec<usize> = (0..batch).map(|offset| (world.next_set + offset) % DIMENSION_SETS).collect();
                world.next_set = (world.next_set + batch) % DIMENSION_SETS;
                (sets.iter().map(|&set| (SUBMITTER, task_for_set(set))).collect(), sets)
            },
            |world, replies, sets| {
                let pending =
                    replies.iter().filter(|r| matches!(&r.reply, Reply::Created(t) if t.state == TaskState::Pending));
                assert_eq!(pending.count(), sets.len(), "each submit leaves a pending task");
                for set in sets {
                    world.next_bot += 1;
                    let bot = class_for_set(set) + BOT_CLASSES * (world.next_bot % BOTS_PER_CLASS);
                    let run_id = world.poll_for_work(bot);
                    world.finish(bot, run_id);
                }
            },
        )
    }

    fn dispatch(&mut self, iterations: u64) -> Duration {
        self.measure(
            iterations,
            |world, batch| {
                let polled: Vec<usize> = (0..batch).map(|offset| (world.next_bot + offset) % BOTS).collect();
                world.next_bot += batch;
                let bots = &world.bots;
                (polled.iter().map(|&bot| (bots[bot].conn, Request::BotPoll(bots[bot].poll.clone()))).collect(), polled)
            },
            |world, replies, polled| {
                assert_eq!(replies.len(), polled.len(), "every poll takes a task");
                for (reply, bot) in replies.into_iter().zip(polled) {
                    assert_eq!(reply.conn, world.bots[bot].conn);
                    let Reply::Assignment(assignment) = reply.reply else { panic!("no assignment: {:?}", reply.reply) };
                    world.finish(bot, assignment.run_id);
                    let set = assignment.task_name.strip_prefix("set-").and_then(|set| set.parse().ok());
                    world.send(SUBMITTER, task_for_set(set.expect("a task named after its set")));
                }
            },
        )
    }

    fn handoff(&mut self, iterations: u64) -> Duration {
        self.measure(
            iterations,
            |world, batch| {
                for bot in 0..batch {
                    let (conn, poll) = (world.handoff_bots[bot].conn, world.handoff_bots[bot].poll.clone());
                    world.send(conn, Request::BotPoll(poll));
                }
                assert!(world.out.replies.is_empty(), "handoff bots park");
                ((0..batch).map(|_| (SUBMITTER, handoff_task())).collect(), batch)
            },
            |world, replies, batch| {
                let mut handed = 0;
                for reply in replies {
                    match reply.reply {
                        Reply::Assignment(assignment) => {
                            let bot = world.handoff_bots.iter().position(|bot| bot.conn == reply.conn);
                            world.finish_handoff(bot.expect("a handoff bot"), assignment.run_id);
                            handed += 1;
                        }
                        Reply::Created(ack) => assert_eq!(ack.state, TaskState::Running, "handed over at once"),
                        other => panic!("unexpected reply {other:?}"),
                    }
                }
                assert_eq!(handed, batch, "a parked bot took each new task");
                assert!(world.out.replies.iter().all(|reply| matches!(reply.reply, Reply::UpdateAck { .. })));
            },
        )
    }

    // ------------------------------------------------------------------ repair

    /// A free bot polls and must get work at once; returns the run id.
    fn poll_for_work(&mut self, bot: usize) -> u64 {
        let (conn, poll) = (self.bots[bot].conn, self.bots[bot].poll.clone());
        self.send(conn, Request::BotPoll(poll));
        let reply = self.out.replies.pop().expect("a bot of a class with pending work gets a task");
        assert_eq!(reply.conn, conn);
        let Reply::Assignment(assignment) = reply.reply else { panic!("no assignment: {:?}", reply.reply) };
        assignment.run_id
    }

    fn finish(&mut self, bot: usize, run_id: u64) {
        let (conn, update) = final_update(&self.bots[bot], run_id);
        self.send(conn, Request::TaskUpdate(update));
        let reply = self.out.replies.pop().expect("an update is answered");
        assert!(matches!(reply.reply, Reply::UpdateAck { .. }), "{:?}", reply.reply);
    }

    fn finish_handoff(&mut self, bot: usize, run_id: u64) {
        let (conn, update) = final_update(&self.handoff_bots[bot], run_id);
        self.send(conn, Request::TaskUpdate(update));
    }
}

fn final_update(bot: &SimBot, run_id: u64) -> (ConnId, TaskUpdate) {
    let outcome = RunOutcome {
        exit_code: Some(0),
        duration_ms: 1,
        setup_ms: 0,
        teardown_ms: 0,
        end: RunEnd::Exited,
        ..RunOutcome::default()
    };
    let update = TaskUpdate {
        bot_id: bot.bot_id.clone(),
        session_id: bot.session_id,
        run_id,
        output_offset: 0,
        output: Vec::new(),
        outcome: Some(outcome),
    };
    (bot.conn, update)
}

/// Tiny parameters when asked for, and whenever criterion runs as a test: `cargo bench`
/// passes `--bench`; `cargo test --benches` does not.
fn quick() -> bool {
    let asked = std::env::var("APIARY_BENCH_QUICK").is_ok_and(|value| value == "1");
    let args: Vec<String> = std::env::args().collect();
    let as_test = !args.iter().any(|arg| arg == "--bench") || args.iter().any(|arg| arg == "--test");
    asked || as_test
}

fn sizes() -> &'static [usize] {
    if quick() { &SIZES[..1] } else { &SIZES }
}

fn bench_group(criterion: &mut Criterion, name: &str, operation: fn(&mut World, u64) -> Duration) {
    let mut group = criterion.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for &size in sizes() {
        // Built on first use, so a filtered-out size costs nothing; dropped after its size.
        let mut world: Option<World> = None;
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |bencher, &size| {
            let world = world.get_or_insert_with(|| World::build(size));
            bencher.iter_custom(|iterations| operation(world, iterations));
        });
    }
    group.finish();
}

fn main() {
    // As `apiaryd` runs: without transparent huge pages.
    apiary_daemon::server::os::disable_transparent_huge_pages().expect("transparent huge pages turn off");
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_group(&mut criterion, "submit", World::submit);
    bench_group(&mut criterion, "dispatch", World::dispatch);
    bench_group(&mut criterion, "handoff", World::handoff);
    criterion.final_summary();
}

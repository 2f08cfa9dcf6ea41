//! Allocator calls per task on the daemon's hot path, counted by a global
//! allocator that wraps the daemon's own (mimalloc) in this test binary only.
//!
//! One task is what `apiary-load` makes of it: a bot's poll parks, a `NewTask`
//! is handed straight to the parked bot (replies: the task, the assignment),
//! the bot's final `TaskUpdate` ends it (reply: the ack). For each request the
//! test does what the event loop does with a frame's payload, in the same
//! calls: decode the request, `Core::handle`, encode each reply into a frame,
//! encode each event for the log. Reading from the socket, the log's own
//! writes and the daemon's log lines are not counted here (`docs/hot-path.md`
//! counts the whole daemon with uprobes).
//!
//! The counts are per thread, so tests running alongside do not disturb them.
//! Run with `--nocapture` to see where the calls are made.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::Arc;

use apiary_daemon::core::events::EventEncoder;
use apiary_daemon::core::{ConnId, Core, CoreConfig, Input, Output};
use apiary_protocol::frame::{self, FrameEncoder, FrameKind, HEADER_BYTES};
use apiary_protocol::{
    BotPoll, NewTaskRequest, PackedDimensions, Reply, Request, RunEnd, RunOutcome, StringPair, TaskSlice, TaskUpdate,
};

/// Allocator calls a task may take: decode, core, reply and event encoding.
/// It took 74 (59 `alloc` + 15 `realloc`) when this test was written, 60
/// once replies were encoded with a kept `FrameEncoder`, 55 once events were
/// encoded into a buffer of their size, 49 once a finished task's result
/// was built only for those waiting for it, 43 once a new task's text was
/// packed straight from its request, 40 after two more copied strings went,
/// 39 once slice lists were interned without a vector of their own; 45 once
/// tasks carried Swarming's automatic tags (here `priority:N`, `pool:load` and
/// `class:0`: a string each, the list grown once, and their place in the tag
/// index); 39 again once the dimension tags were derived from the slices
/// instead of stored, and an assignment read only its task's name; 35 once
/// a turn's events were encoded into buffers the event loop keeps.
const MAX_ALLOCATIONS_PER_TASK: u64 = 35;

/// Tasks run before counting, so that maps and queues reach their size.
const WARM_UP_TASKS: u64 = 2_000;
const COUNTED_TASKS: u64 = 2_000;

struct Counting;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Calls {
    alloc: u64,
    realloc: u64,
}

impl Calls {
    fn total(self) -> u64 {
        self.alloc + self.realloc
    }

    fn since(self, earlier: Calls) -> Calls {
        Calls { alloc: self.alloc - earlier.alloc, realloc: self.realloc - earlier.realloc }
    }
}

thread_local! {
    static CALLS: Cell<Calls> = const { Cell::new(Calls { alloc: 0, realloc: 0 }) };
}

fn count(add: impl Fn(&mut Calls)) {
    // A thread being torn down has no counter left: its calls are not counted.
    let _ = CALLS.try_with(|calls| {
        let mut now = calls.get();
        add(&mut now);
        calls.set(now);
    });
}

fn calls() -> Calls {
    CALLS.with(Cell::get)
}

// SAFETY: every call is passed on unchanged to mimalloc, which upholds the
// `GlobalAlloc` contract; counting touches only a thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(|calls| calls.alloc += 1);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(|calls| calls.alloc += 1);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(|calls| calls.realloc += 1);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Where a request's allocator calls were made.
#[derive(Default, Clone, Copy)]
struct Phases {
    decode: Calls,
    core: Calls,
    replies: Calls,
    events: Calls,
}

impl Phases {
    fn add(&mut self, other: Phases) {
        for (mine, theirs) in [
            (&mut self.decode, other.decode),
            (&mut self.core, other.core),
            (&mut self.replies, other.replies),
            (&mut self.events, other.events),
        ] {
            mine.alloc += theirs.alloc;
            mine.realloc += theirs.realloc;
        }
    }

    fn total(&self) -> Calls {
        let mut total = Calls::default();
        for phase in [self.decode, self.core, self.replies, self.events] {
            total.alloc += phase.alloc;
            total.realloc += phase.realloc;
        }
        total
    }
}

struct World {
    core: Core,
    out: Output,
    now_ms: u64,
    next_request_id: u64,
    bot_poll: Vec<u8>,
    sequence: u64,
    /// The event loop's reply encoder.
    encoder: FrameEncoder,
    /// The event loop's event encoder.
    events: EventEncoder,
}

const SUBMITTER: ConnId = ConnId(1);
const BOT: ConnId = ConnId(2);
const BOT_ID: &str = "load-bot-00000";

impl World {
    fn new() -> World {
        let poll = Request::BotPoll(BotPoll {
            bot_id: BOT_ID.into(),
            session_id: 7,
            dimensions: PackedDimensions::new(&[
                StringPair::new("pool", "load"),
                StringPair::new("class", "0"),
                StringPair::new("id", BOT_ID),
            ]),
            software: "allocations".into(),
            quarantine_reason: String::new(),
            caches: Vec::new(),
        });
        World {
            core: Core::new(CoreConfig::default()),
            out: Output::default(),
            now_ms: 1_700_000_000_000,
            next_request_id: 1,
            bot_poll: payload(&poll),
            sequence: 0,
            encoder: FrameEncoder::default(),
            events: EventEncoder::default(),
        }
    }

    /// One task as `apiary-load` makes it (its `task_request`, one class).
    fn new_task(&mut self) -> Vec<u8> {
        let mut slice = TaskSlice::default();
        Arc::make_mut(&mut slice.properties).command = vec!["true".into()];
        Arc::make_mut(&mut slice.properties).dimensions =
            vec![StringPair::new("pool", "load"), StringPair::new("class", "0")];
        let name = format!("load-0-{}", self.sequence);
        self.sequence += 1;
        payload(&Request::NewTask(NewTaskRequest {
            name,
            priority: 1 + (self.sequence % 3) as u8,
            task_slices: vec![slice],
            ..NewTaskRequest::default()
        }))
    }

    fn final_update(run_id: u64) -> Vec<u8> {
        let outcome = RunOutcome {
            exit_code: Some(0),
            duration_ms: 0,
            setup_ms: 0,
            teardown_ms: 0,
            end: RunEnd::Exited,
            ..RunOutcome::default()
        };
        let update = TaskUpdate {
            bot_id: BOT_ID.into(),
            session_id: 7,
            run_id,
            output_offset: 0,
            output: Vec::new(),
            outcome: Some(outcome),
        };
        payload(&Request::TaskUpdate(update))
    }

    /// Handles one request's payload as the event loop does; returns where
    /// its allocator calls went and the replies, encoded.
    fn request(&mut self, conn: ConnId, payload: &[u8]) -> (Phases, Vec<Vec<u8>>) {
        let mut phases = Phases::default();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(payload);
        let frame =
            apiary_protocol::Frame { kind: FrameKind::Request, request_id: self.next_request_id, payload: aligned };
        self.next_request_id += 1;

        let before = calls();
        let request = frame.decode_request().expect("a valid request");
        phases.decode = calls().since(before);

        let before = calls();
        let input = Input::Request { conn, request_id: frame.request_id, request, principal: None, grants: None };
        self.core.handle(self.now_ms, input, &mut self.out);
        phases.core = calls().since(before);

        let mut frames = Vec::with_capacity(self.out.replies.len());
        let before = calls();
        for outgoing in &self.out.replies {
            frames.push(self.encoder.reply(outgoing.request_id, &outgoing.reply).expect("a reply encodes"));
        }
        phases.replies = calls().since(before);

        let before = calls();
        self.events.clear();
        for event in &self.out.events {
            assert!(self.events.push(event) > 0);
        }
        phases.events = calls().since(before);

        self.out.replies.clear();
        self.out.events.clear();
        (phases, frames)
    }

    /// Polls (parks), submits (handed to the bot), finishes: one task.
    fn task(&mut self) -> [Phases; 3] {
        let poll = self.bot_poll.clone();
        let (polled, replies) = self.request(BOT, &poll);
        assert!(replies.is_empty(), "the poll parks");
        let new_task = self.new_task();
        let (submitted, replies) = self.request(SUBMITTER, &new_task);
        assert_eq!(replies.len(), 2, "the task's ack and the bot's assignment");
        let assignment = replies.iter().map(|frame| decode_reply(frame)).find_map(|reply| match reply {
            Reply::Assignment(assignment) => Some(assignment.run_id),
            _ => None,
        });
        let update = World::final_update(assignment.expect("the parked bot got the task"));
        let (finished, replies) = self.request(BOT, &update);
        assert!(matches!(decode_reply(&replies[0]), Reply::UpdateAck { .. }));
        self.now_ms += 1;
        [polled, submitted, finished]
    }
}

fn payload(request: &Request) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame::encode_request(1, request, &mut bytes).expect("a request encodes");
    bytes[HEADER_BYTES..].to_vec()
}

fn decode_reply(frame_bytes: &[u8]) -> Reply {
    let mut payload = rkyv::util::AlignedVec::<16>::new();
    payload.extend_from_slice(&frame_bytes[HEADER_BYTES..]);
    apiary_protocol::Frame { kind: FrameKind::Reply, request_id: 0, payload }.decode_reply().expect("a valid reply")
}

#[test]
fn a_task_takes_few_allocator_calls_on_the_hot_path() {
    let mut world = World::new();
    for _ in 0..WARM_UP_TASKS {
        world.task();
    }
    let mut by_request = [Phases::default(); 3];
    let before = calls();
    for _ in 0..COUNTED_TASKS {
        for (sum, phases) in by_request.iter_mut().zip(world.task()) {
            sum.add(phases);
        }
    }
    let whole_loop = calls().since(before);
    let per_task = |calls: Calls| {
        format!(
            "{:5.1} ({:.1} + {:.1})",
            calls.total() as f64 / COUNTED_TASKS as f64,
            calls.alloc as f64 / COUNTED_TASKS as f64,
            calls.realloc as f64 / COUNTED_TASKS as f64
        )
    };
    let mut total = Phases::default();
    println!("allocator calls per task (alloc + realloc):");
    println!("{:<10} {:>18} {:>18} {:>18} {:>18}", "request", "decode", "core", "replies", "events");
    for (name, phases) in ["BotPoll", "NewTask", "TaskUpdate"].iter().zip(by_request) {
        println!(
            "{name:<10} {:>18} {:>18} {:>18} {:>18}",
            per_task(phases.decode),
            per_task(phases.core),
            per_task(phases.replies),
            per_task(phases.events)
        );
        total.add(phases);
    }
    println!(
        "hot path: {}; with the test's own requests and checks: {}",
        per_task(total.total()),
        per_task(whole_loop)
    );
    let counted = total.total().total() / COUNTED_TASKS;
    assert!(counted <= MAX_ALLOCATIONS_PER_TASK, "{counted} allocator calls per task, over {MAX_ALLOCATIONS_PER_TASK}");
    world.core.check_invariants();
}

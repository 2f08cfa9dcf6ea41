//! `apiary-load`: drives a running `apiaryd` over loopback with simulated bots and
//! submitters, then prints throughput and submit-to-dispatch latency.
//!
//! - Submitters (one thread each, the blocking `apiary_protocol::Client`) send `NewTask`
//!   one at a time, each waiting for its reply, and note when they *sent* it.
//! - Simulated bots are non-blocking connections spread over a few threads (`--bot-threads`),
//!   each thread a mio loop. A bot says hello as `Role::Bot`, long-polls with its own bot id
//!   and a random session id, and on an assignment notes the arrival time, waits
//!   `--task-ms`, sends its final `TaskUpdate` (exit code 0, empty output), waits for the
//!   acknowledgement and polls again. Bot `i` has dimensions `pool=<pool>`,
//!   `class=<i mod K>` and, as every `apiary-bot` does, `id=<its bot id>`; each task
//!   asks for a random class that some bot has.
//! - Submit-to-dispatch latency is the assignment's arrival minus the moment its `NewTask`
//!   was sent, matched by task id (the run id with its last hex digit cleared).
//!
//! The run stops by itself: submitting ends after `--tasks` tasks or `--duration` seconds
//! (whichever comes first; 10 s if neither is given), then the bots finish what was
//! submitted (at most `--drain-secs`), and the program prints its figures and exits 0.
//! It exits 1 when the daemon refuses or drops a connection, or when tasks are left over.

use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use apiary_benches::Rng;
use apiary_protocol::frame::{self, FrameKind, HEADER_BYTES};
use apiary_protocol::{
    BotPoll, Client, FrameReader, Hello, NewTaskRequest, PackedDimensions, Reply, Request, Role, RunEnd, RunOutcome,
    StringPair, TaskSlice, TaskUpdate,
};
use clap::Parser;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Exit codes: 0 the run completed; 1 it failed (details on stderr); 2 bad flags (clap).
const EXIT_FAILED: u8 = 1;
/// How long bots may take to connect and be welcomed before the run is called off.
const CONNECT_PATIENCE: Duration = Duration::from_secs(120);
/// The longest a bot thread sleeps before it looks at the stop flag again.
const BOT_LOOP_TICK: Duration = Duration::from_millis(20);
const SOFTWARE: &str = concat!("apiary-load/", env!("CARGO_PKG_VERSION"));

/// Load generator for apiaryd: simulated bots and submitters over loopback.
#[derive(Parser, Debug, Clone)]
#[command(name = "apiary-load", version)]
struct Args {
    /// The daemon's address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    server: String,
    /// Simulated bots (each one connection).
    #[arg(long, default_value_t = 100)]
    bots: usize,
    /// Submitters, each sending one NewTask at a time.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// Stop submitting after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop submitting after this many tasks in all.
    #[arg(long)]
    tasks: Option<u64>,
    /// The pool every bot is in and every task asks for.
    #[arg(long, default_value = "load")]
    pool: String,
    /// Bot i gets dimension class=<i mod K>; each task asks for a random class.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    bot_classes: u64,
    /// Each task gets a random priority in 1..=P.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    priorities: u8,
    /// Simulated task duration: a bot waits this long before its final update.
    #[arg(long, default_value_t = 0)]
    task_ms: u64,
    /// Threads driving the bot connections.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    bot_threads: u64,
    /// After submitting stops, how long to wait for the submitted tasks to complete.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// Seed for priorities, classes and session ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Args {
    fn describe(&self) -> String {
        let mut stop = Vec::new();
        if let Some(tasks) = self.tasks {
            stop.push(format!("{tasks} tasks"));
        }
        stop.push(format!("{} s", self.duration_secs()));
        format!(
            "server {}, {} bots ({} threads), {} submitters, pool {}, {} bot classes, priorities 1..={}, \
             task-ms {}, stop after {}",
            self.server,
            self.bots,
            self.bot_threads,
            self.submitters,
            self.pool,
            self.bot_classes,
            self.priorities,
            self.task_ms,
            stop.join(" or ")
        )
    }

    fn duration_secs(&self) -> f64 {
        match (self.duration, self.tasks) {
            (Some(secs), _) => secs,
            (None, Some(_)) => f64::INFINITY,
            (None, None) => 10.0,
        }
    }

    /// Tasks ask only for classes some bot has.
    fn task_classes(&self) -> u64 {
        self.bot_classes.min(self.bots as u64).max(1)
    }
}

/// What all threads share; times are nanoseconds since `start`.
struct Shared {
    start: Instant,
    welcomed: AtomicUsize,
    stop_bots: AtomicBool,
    stop_submitting: AtomicBool,
    claimed: AtomicU64,
    submitted: AtomicU64,
    dispatched: AtomicU64,
    completed: AtomicU64,
    last_dispatch_ns: AtomicU64,
    last_completion_ns: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records the first failure and stops everything.
    fn fail(&self, message: String) {
        self.failure.lock().unwrap().get_or_insert(message);
        self.stop_submitting.store(true, Ordering::SeqCst);
        self.stop_bots.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failure.lock().unwrap().is_some()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("apiary-load: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.bots == 0 || args.submitters == 0 {
        return Err("--bots and --submitters must be at least 1".into());
    }
    let nofile = raise_open_file_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let addr = args
        .server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", args.server))?
        .next()
        .ok_or_else(|| format!("{} resolves to nothing", args.server))?;
    println!("apiary-load: {}", args.describe());
    let shared = Arc::new(Shared {
        start: Instant::now(),
        welcomed: AtomicUsize::new(0),
        stop_bots: AtomicBool::new(false),
        stop_submitting: AtomicBool::new(false),
        claimed: AtomicU64::new(0),
        submitted: AtomicU64::new(0),
        dispatched: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        last_dispatch_ns: AtomicU64::new(0),
        last_completion_ns: AtomicU64::new(0),
        failure: Mutex::new(None),
    });

    let bot_threads: Vec<_> = (0..args.bot_threads as usize)
        .map(|thread_index| {
            let (args, shared) = (args.clone(), Arc::clone(&shared));
            thread::Builder::new()
                .name(format!("bots-{thread_index}"))
                .spawn(move || run_bot_thread(&args, addr, thread_index, &shared))
                .expect("spawn a bot thread")
        })
        .collect();
    let connect_started = Instant::now();
    while shared.welcomed.load(Ordering::SeqCst) < args.bots && !shared.failed() {
        if connect_started.elapsed() > CONNECT_PATIENCE {
            let welcomed = shared.welcomed.load(Ordering::SeqCst);
            shared.fail(format!("only {welcomed} of {} bots were welcomed within {CONNECT_PATIENCE:?}", args.bots));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    if !shared.failed() {
        println!("bots connected: {} of {} in {connect_secs:.2} s (open-file limit {nofile})", args.bots, args.bots);
    }

    let submit_started_ns = shared.now_ns();
    let submitter_threads: Vec<_> = (0..args.submitters)
        .map(|index| {
            let (args, shared) = (args.clone(), Arc::clone(&shared));
            thread::Builder::new()
                .name(format!("submitter-{index}"))
                .spawn(move || run_submitter(&args, index, &shared, submit_started_ns))
                .expect("spawn a submitter thread")
        })
        .collect();
    let mut sent = Vec::new();
    for handle in submitter_threads {
        sent.extend(handle.join().expect("a submitter thread panicked"));
    }
    let submit_ended_ns = shared.now_ns();

    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while !shared.failed()
        && shared.completed.load(Ordering::SeqCst) < shared.submitted.load(Ordering::SeqCst)
        && Instant::now() < drain_deadline
    {
        thread::sleep(Duration::from_millis(2));
    }
    shared.stop_bots.store(true, Ordering::SeqCst);
    let mut arrivals = Vec::new();
    for handle in bot_threads {
        arrivals.extend(handle.join().expect("a bot thread panicked"));
    }
    if let Some(failure) = shared.failure.lock().unwrap().take() {
        return Err(failure);
    }
    let report = Report::new(&shared, &sent, &arrivals, submit_started_ns, submit_ended_ns);
    report.print();
    if report.completed < report.submitted {
        return Err(format!(
            "{} of {} submitted tasks did not complete within {} s of the end of submitting",
            report.submitted - report.completed,
            report.submitted,
            args.drain_secs
        ));
    }
    Ok(())
}

// --------------------------------------------------------------------- submitters

/// A task submitted: its id, when its NewTask was sent and when the reply came (ns).
struct Sent {
    task_id: u64,
    sent_ns: u64,
    replied_ns: u64,
}

/// Submits until the task count or the duration (counted from `started_ns`) is reached.
fn run_submitter(args: &Args, index: usize, shared: &Shared, started_ns: u64) -> Vec<Sent> {
    let mut client = match Client::connect(&args.server, Role::Client, SOFTWARE) {
        Ok(client) => client,
        Err(error) => {
            shared.fail(format!("submitter {index}: {error}"));
            return Vec::new();
        }
    };
    let mut rng = Rng::new(args.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let deadline_ns = started_ns.saturating_add((args.duration_secs() * 1e9).min(u64::MAX as f64) as u64);
    let mut sent = Vec::new();
    let mut sequence = 0;
    loop {
        if shared.stop_submitting.load(Ordering::Relaxed) || shared.now_ns() >= deadline_ns {
            break;
        }
        if args.tasks.is_some_and(|limit| shared.claimed.fetch_add(1, Ordering::SeqCst) >= limit) {
            break;
        }
        let request = task_request(args, &mut rng, index, sequence);
        sequence += 1;
        let sent_ns = shared.now_ns();
        match client.call(&request) {
            Ok(Reply::Task(task)) => {
                sent.push(Sent { task_id: task.task_id, sent_ns, replied_ns: shared.now_ns() });
                shared.submitted.fetch_add(1, Ordering::SeqCst);
            }
            Ok(other) => {
                shared.fail(format!("submitter {index}: unexpected reply to NewTask: {other:?}"));
                break;
            }
            Err(error) => {
                shared.fail(format!("submitter {index}: {error}"));
                break;
            }
        }
    }
    sent
}

fn task_request(args: &Args, rng: &mut Rng, submitter: usize, sequence: u64) -> Request {
    let mut slice = TaskSlice::default();
    Arc::make_mut(&mut slice.properties).command = vec!["true".into()];
    Arc::make_mut(&mut slice.properties).dimensions = vec![
        StringPair::new("pool", &args.pool),
        StringPair::new("class", &rng.below(args.task_classes()).to_string()),
    ];
    let priority = 1 + rng.below(u64::from(args.priorities)) as u8;
    let name = format!("load-{submitter}-{sequence}");
    Request::NewTask(NewTaskRequest { name, priority, task_slices: vec![slice], ..NewTaskRequest::default() })
}

// ---------------------------------------------------------------------------- bots

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BotState {
    /// The hello is sent; the welcome has not come yet.
    Greeting,
    /// A poll is out (and probably parked in the daemon).
    Polling,
    /// Running a task: the final update goes out at `SimBot::report_at`.
    Running,
    /// The final update is out; waiting for its acknowledgement.
    Reporting,
}

struct SimBot {
    bot_id: String,
    session_id: u64,
    stream: TcpStream,
    reader: FrameReader,
    /// Bytes not yet taken by the socket.
    unsent: Vec<u8>,
    state: BotState,
    /// The poll request's payload, encoded once; each poll only gets a new header.
    poll_payload: Vec<u8>,
    next_request_id: u64,
    run_id: u64,
}

/// A task's assignment reached a bot: the task id and when (ns).
struct Arrival {
    task_id: u64,
    arrived_ns: u64,
}

/// One thread's bots: those with `index % threads == thread_index`.
fn run_bot_thread(args: &Args, addr: SocketAddr, thread_index: usize, shared: &Shared) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    if let Err(error) = drive_bots(args, addr, thread_index, shared, &mut arrivals) {
        shared.fail(format!("bot thread {thread_index}: {error}"));
    }
    arrivals
}

fn drive_bots(
    args: &Args,
    addr: SocketAddr,
    thread_index: usize,
    shared: &Shared,
    arrivals: &mut Vec<Arrival>,
) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
    let mut rng = Rng::new(args.seed ^ 0x5eed_0000_0000_0000 ^ thread_index as u64);
    let mut bots = Vec::new();
    let indexes = (thread_index..args.bots).step_by(args.bot_threads as usize);
    for (token, bot_index) in indexes.enumerate() {
        if shared.stop_bots.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut bot = connect_bot(args, addr, bot_index, rng.next_u64())?;
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut bot.stream, Token(token), interest).map_err(|e| format!("register: {e}"))?;
        bots.push(bot);
    }
    let mut events = Events::with_capacity(1024);
    let mut due: BinaryHeap<std::cmp::Reverse<(Instant, usize)>> = BinaryHeap::new();
    let task_time = Duration::from_millis(args.task_ms);
    let mut read_buffer = vec![0u8; 64 << 10];
    while !shared.stop_bots.load(Ordering::Relaxed) {
        let now = Instant::now();
        let timeout = due.peek().map_or(BOT_LOOP_TICK, |entry| entry.0.0.saturating_duration_since(now));
        poll.poll(&mut events, Some(timeout.min(BOT_LOOP_TICK))).or_else(ignore_interrupt)?;
        for event in &events {
            let token = event.token().0;
            let bot = &mut bots[token];
            if event.is_writable() {
                bot.flush().map_err(|e| format!("{}: write: {e}", bot.bot_id))?;
            }
            if event.is_readable() {
                let arrived_ns = shared.now_ns();
                bot.read_available(&mut read_buffer).map_err(|e| format!("{}: {e}", bot.bot_id))?;
                while let Some(frame) = bot.reader.next_frame().map_err(|e| format!("{}: {e}", bot.bot_id))? {
                    let reply = frame.decode_reply().map_err(|e| format!("{}: {e}", bot.bot_id))?;
                    let run_at = bot.on_reply(reply, shared, arrived_ns, task_time, arrivals)?;
                    if let Some(run_at) = run_at {
                        due.push(std::cmp::Reverse((run_at, token)));
                    }
                }
            }
        }
        let now = Instant::now();
        while due.peek().is_some_and(|entry| entry.0.0 <= now) {
            let std::cmp::Reverse((_, token)) = due.pop().expect("peeked");
            bots[token].report()?;
        }
    }
    Ok(())
}

fn ignore_interrupt(error: io::Error) -> Result<(), String> {
    if error.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(format!("poll: {error}")) }
}

fn connect_bot(args: &Args, addr: SocketAddr, bot_index: usize, session_id: u64) -> Result<SimBot, String> {
    let bot_id = format!("load-bot-{bot_index:05}");
    let stream = StdTcpStream::connect(addr).map_err(|e| format!("{bot_id}: cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("{bot_id}: set_nodelay: {e}"))?;
    stream.set_nonblocking(true).map_err(|e| format!("{bot_id}: set_nonblocking: {e}"))?;
    let poll_request = Request::BotPoll(BotPoll {
        bot_id: bot_id.clone(),
        session_id,
        dimensions: PackedDimensions::new(&[
            StringPair::new("pool", &args.pool),
            StringPair::new("class", &(bot_index as u64 % args.bot_classes).to_string()),
            StringPair::new("id", &bot_id),
        ]),
        software: SOFTWARE.into(),
        quarantine_reason: String::new(),
        caches: Vec::new(),
    });
    let mut encoded = Vec::new();
    frame::encode_request(0, &poll_request, &mut encoded).map_err(|e| format!("{bot_id}: {e}"))?;
    let mut bot = SimBot {
        bot_id,
        session_id,
        stream: TcpStream::from_std(stream),
        reader: FrameReader::new(),
        unsent: Vec::new(),
        state: BotState::Greeting,
        poll_payload: encoded[HEADER_BYTES..].to_vec(),
        next_request_id: 1,
        run_id: 0,
    };
    let mut hello = Vec::new();
    frame::encode_hello(&Hello::new(Role::Bot, SOFTWARE), &mut hello).map_err(|e| format!("hello: {e}"))?;
    bot.send(&hello).map_err(|e| format!("{}: write: {e}", bot.bot_id))?;
    Ok(bot)
}

impl SimBot {
    /// Handles one reply; returns when the current task's final update is due, if later.
    fn on_reply(
        &mut self,
        reply: Reply,
        shared: &Shared,
        arrived_ns: u64,
        task_time: Duration,
        arrivals: &mut Vec<Arrival>,
    ) -> Result<Option<Instant>, String> {
        match (self.state, reply) {
            (BotState::Greeting, Reply::Welcome { .. }) => {
                shared.welcomed.fetch_add(1, Ordering::SeqCst);
                self.send_poll()?;
            }
            (BotState::Polling, Reply::NoWork) => self.send_poll()?,
            (BotState::Polling, Reply::Assignment(assignment)) => {
                arrivals.push(Arrival { task_id: assignment.run_id & !0xf, arrived_ns });
                shared.dispatched.fetch_add(1, Ordering::Relaxed);
                shared.last_dispatch_ns.fetch_max(arrived_ns, Ordering::Relaxed);
                self.run_id = assignment.run_id;
                self.state = BotState::Running;
                if task_time.is_zero() {
                    self.report()?;
                } else {
                    return Ok(Some(Instant::now() + task_time));
                }
            }
            (BotState::Reporting, Reply::UpdateAck { .. }) => {
                shared.completed.fetch_add(1, Ordering::Relaxed);
                shared.last_completion_ns.fetch_max(shared.now_ns(), Ordering::Relaxed);
                self.send_poll()?;
            }
            (state, Reply::Error(error)) => {
                return Err(format!(
                    "{}: the daemon refused ({state:?}): {:?}: {}",
                    self.bot_id, error.code, error.message
                ));
            }
            (state, other) => return Err(format!("{}: unexpected reply while {state:?}: {other:?}", self.bot_id)),
        }
        Ok(None)
    }

    fn send_poll(&mut self) -> Result<(), String> {
        let request_id = self.take_request_id();
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.poll_payload.len());
        frame::append_frame(FrameKind::Request, request_id, &self.poll_payload, &mut bytes)
            .map_err(|e| format!("{}: {e}", self.bot_id))?;
        self.state = BotState::Polling;
        self.send(&bytes).map_err(|e| format!("{}: write: {e}", self.bot_id))
    }

    /// Sends the final update of the current run.
    fn report(&mut self) -> Result<(), String> {
        assert_eq!(self.state, BotState::Running, "{} reports only a running task", self.bot_id);
        let update = TaskUpdate {
            bot_id: self.bot_id.clone(),
            session_id: self.session_id,
            run_id: self.run_id,
            output_offset: 0,
            output: Vec::new(),
            outcome: Some(RunOutcome {
                exit_code: Some(0),
                duration_ms: 0,
                setup_ms: 0,
                teardown_ms: 0,
                end: RunEnd::Exited,
            }),
        };
        let request_id = self.take_request_id();
        let mut bytes = Vec::new();
        frame::encode_request(request_id, &Request::TaskUpdate(update), &mut bytes)
            .map_err(|e| format!("{}: {e}", self.bot_id))?;
        self.state = BotState::Reporting;
        self.send(&bytes).map_err(|e| format!("{}: write: {e}", self.bot_id))
    }

    fn take_request_id(&mut self) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        request_id
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.unsent.extend_from_slice(bytes);
        self.flush()
    }

    /// Writes what the socket takes now; the rest waits for the next writable event.
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.unsent.len() {
            match self.stream.write(&self.unsent[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.unsent.drain(..written);
        Ok(())
    }

    /// Reads until the socket is empty (mio's readiness is edge-triggered).
    fn read_available(&mut self, buffer: &mut [u8]) -> Result<(), String> {
        loop {
            match self.stream.read(buffer) {
                Ok(0) => return Err(format!("the daemon closed the connection while {:?}", self.state)),
                Ok(count) => self.reader.extend(&buffer[..count]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("read: {error}")),
            }
        }
    }
}

// -------------------------------------------------------------------------- report

struct Report {
    submitted: u64,
    dispatched: u64,
    completed: u64,
    submit_secs: f64,
    dispatch_secs: f64,
    complete_secs: f64,
    /// Submit-to-dispatch, µs, sorted.
    latencies_us: Vec<u64>,
    /// NewTask sent to its reply (the creation is durable), µs, sorted.
    round_trips_us: Vec<u64>,
    /// Assignments of tasks this run did not submit (left over in the data directory).
    foreign: usize,
}

impl Report {
    fn new(shared: &Shared, sent: &[Sent], arrivals: &[Arrival], started_ns: u64, submit_ended_ns: u64) -> Report {
        let sent_at: HashMap<u64, u64> = sent.iter().map(|sent| (sent.task_id, sent.sent_ns)).collect();
        let mut latencies_us = Vec::with_capacity(arrivals.len());
        let mut foreign = 0;
        for arrival in arrivals {
            match sent_at.get(&arrival.task_id) {
                Some(&sent_ns) => latencies_us.push(arrival.arrived_ns.saturating_sub(sent_ns) / 1000),
                None => foreign += 1,
            }
        }
        latencies_us.sort_unstable();
        let mut round_trips_us: Vec<u64> = sent.iter().map(|sent| (sent.replied_ns - sent.sent_ns) / 1000).collect();
        round_trips_us.sort_unstable();
        let secs_since_start = |end_ns: u64| end_ns.saturating_sub(started_ns) as f64 / 1e9;
        Report {
            submitted: shared.submitted.load(Ordering::SeqCst),
            dispatched: shared.dispatched.load(Ordering::SeqCst),
            completed: shared.completed.load(Ordering::SeqCst),
            submit_secs: secs_since_start(submit_ended_ns),
            dispatch_secs: secs_since_start(shared.last_dispatch_ns.load(Ordering::SeqCst)),
            complete_secs: secs_since_start(shared.last_completion_ns.load(Ordering::SeqCst)),
            latencies_us,
            round_trips_us,
            foreign,
        }
    }

    fn print(&self) {
        let rate = |count: u64, secs: f64| if secs > 0.0 { count as f64 / secs } else { 0.0 };
        let (submitted, dispatched, completed) = (self.submitted, self.dispatched, self.completed);
        println!("submitted: {submitted} in {:.2} s, {:.0}/s", self.submit_secs, rate(submitted, self.submit_secs));
        println!(
            "dispatched: {dispatched} in {:.2} s, {:.0}/s",
            self.dispatch_secs,
            rate(dispatched, self.dispatch_secs)
        );
        println!("completed: {completed} in {:.2} s, {:.0}/s", self.complete_secs, rate(completed, self.complete_secs));
        println!("submit->dispatch latency µs: {}", percentiles(&self.latencies_us));
        println!("NewTask round trip µs: {}", percentiles(&self.round_trips_us));
        if self.foreign > 0 {
            println!("assignments of tasks not submitted by this run: {}", self.foreign);
        }
    }
}

fn percentiles(sorted: &[u64]) -> String {
    let at = |fraction: f64| {
        let rank = (fraction * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    };
    if sorted.is_empty() {
        return "no samples".into();
    }
    let max = sorted[sorted.len() - 1];
    format!("p50 {}, p99 {}, p999 {}, max {} (n={})", at(0.5), at(0.99), at(0.999), max, sorted.len())
}

/// Raises this process's open-file soft limit to the hard limit; returns the new limit.
fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_max)
}

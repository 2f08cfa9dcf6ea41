//! Simulated bots: non-blocking connections spread over a few threads, each thread a
//! mio loop. A bot says hello as `Role::Bot`, long-polls with its own bot id and a
//! random session id, and on an assignment notes the arrival time, waits `--task-ms`,
//! sends its final `TaskUpdate` (exit code 0, empty output), waits for the
//! acknowledgement and polls again.

use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apiary_benches::Rng;
use apiary_protocol::frame::{self, FrameKind, HEADER_BYTES};
use apiary_protocol::tls::Transport;
use apiary_protocol::{
    BotPoll, FrameReader, Hello, PackedDimensions, Reply, Request, Role, RunOutcome, StringPair, TaskUpdate,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::{LoadArgs, SOFTWARE, Shared};

/// The longest a bot thread sleeps before it looks at the stop flag again.
const BOT_LOOP_TICK: Duration = Duration::from_millis(20);

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
    stream: Transport<TcpStream>,
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
pub(crate) struct Arrival {
    pub(crate) task_id: u64,
    pub(crate) arrived_ns: u64,
}

/// One thread's bots: those with `index % threads == thread_index`.
pub(crate) fn run_bot_thread(args: &LoadArgs, addr: SocketAddr, thread_index: usize, shared: &Shared) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    if let Err(error) = drive_bots(args, addr, thread_index, shared, &mut arrivals) {
        shared.fail(format!("bot thread {thread_index}: {error}"));
    }
    arrivals
}

fn drive_bots(
    args: &LoadArgs,
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
        poll.registry()
            .register(bot.stream.socket_mut(), Token(token), interest)
            .map_err(|e| format!("register: {e}"))?;
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

fn connect_bot(args: &LoadArgs, addr: SocketAddr, bot_index: usize, session_id: u64) -> Result<SimBot, String> {
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
    let stream = Transport::new(&args.server, TcpStream::from_std(stream), &args.security)
        .map_err(|e| format!("{bot_id}: {e}"))?;
    let mut bot = SimBot {
        bot_id,
        session_id,
        stream,
        reader: FrameReader::new(),
        unsent: Vec::new(),
        state: BotState::Greeting,
        poll_payload: encoded[HEADER_BYTES..].to_vec(),
        next_request_id: 1,
        run_id: 0,
    };
    let mut hello = Vec::new();
    frame::encode_hello(&Hello::with_token(Role::Bot, SOFTWARE, &args.bot_token), &mut hello)
        .map_err(|e| format!("hello: {e}"))?;
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
            outcome: Some(RunOutcome { exit_code: Some(0), ..RunOutcome::default() }),
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
        // TLS records of the handshake, or of what was just written.
        match self.stream.flush() {
            Err(error) if error.kind() != io::ErrorKind::WouldBlock => Err(error),
            _ => Ok(()),
        }
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

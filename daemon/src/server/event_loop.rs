//! The event loop (ARCHITECTURE.md, decision 4): one thread owns the core and
//! every connection. A turn reads all ready input, lets the core decide, writes
//! the turn's output and log records, hands the sync to the flusher, and sends
//! the replies whose facts are durable.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiary_protocol::frame::FrameError;
use apiary_protocol::{ErrorCode, ErrorReply, Frame, FrameKind, MAGIC, PROTOCOL_VERSION, Reply, Request, Role};
use apiary_storage::{OutputStore, Wal};
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::ServerError;
use super::connection::{Connection, ReadStatus};
use super::disk::Disk;
use super::durability::{Durability, Held};
use super::log;
use super::snapshots::{Snapshots, StateFiles};
use super::startup::{Recovered, ServerConfig};
use crate::core::events::{EVENT_RECORD_KIND, Event, TaskFinished};
use crate::core::{ConnId, Core, Input, Output, OutputRead};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Heap copies of archived tasks (and of texts a snapshot's text file holds)
/// dropped per turn (about 0.2 ms of work), so a large history run or text
/// file never makes one long turn.
const ARCHIVED_PER_TURN: usize = 1024;

pub const SOFTWARE: &str = concat!("apiaryd/", env!("CARGO_PKG_VERSION"));

pub struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    /// Kept open: SIGTERM and SIGINT write to its other end.
    _signals: UnixStream,
    connections: Slab<Connection>,
    max_connections: usize,
    next_connection_serial: u64,
    /// Connections whose read budget ran out last turn: read again without waiting.
    unfinished_reads: Vec<Token>,
    /// Connections with replies queued this turn.
    to_flush: Vec<Token>,
    core: Core,
    wal: Wal,
    outputs: OutputStore,
    durability: Durability,
    snapshots: Snapshots,
    disk: Disk,
    /// Whether the core still holds copies of what a history run or text file now holds.
    archiving: bool,
    shutting_down: bool,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl EventLoop {
    pub fn new(listener: TcpListener, config: &ServerConfig, recovered: Recovered) -> Result<EventLoop, ServerError> {
        let io_error = |context: &str| {
            let context = context.to_string();
            move |source| ServerError::Io { context, source }
        };
        let poll = Poll::new().map_err(io_error("create the poller"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_error("create the waker"))?);
        let (signal_reader, signal_writer) = StdUnixStream::pair().map_err(io_error("create the signal pipe"))?;
        signal_reader.set_nonblocking(true).map_err(io_error("set up the signal pipe"))?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let writer = signal_writer.try_clone().map_err(io_error("set up the signal pipe"))?;
            signal_hook::low_level::pipe::register(signal, writer).map_err(io_error("register signal handlers"))?;
        }
        let mut signals = UnixStream::from_std(signal_reader);
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE).map_err(io_error("register signals"))?;
        let mut listener = listener;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(io_error("register listener"))?;
        let Recovered { core, wal, outputs, snapshots, history, texts, snapshot_seq } = recovered;
        let files = StateFiles { data_dir: config.data_dir.clone(), snapshots, history, texts };
        let snapshots = Snapshots::new(
            config.snapshots,
            files,
            config.core.clone(),
            Arc::clone(&waker),
            snapshot_seq,
            now_unix_ms(),
        );
        Ok(EventLoop {
            poll,
            listener: Some(listener),
            _signals: signals,
            connections: Slab::new(),
            max_connections: config.max_connections,
            next_connection_serial: 1,
            unfinished_reads: Vec::new(),
            to_flush: Vec::new(),
            core,
            wal,
            outputs,
            durability: Durability::start(waker),
            snapshots,
            disk: Disk::new(config.data_dir.clone()),
            archiving: false,
            shutting_down: false,
        })
    }

    /// Runs until SIGTERM or SIGINT, then makes everything durable and returns.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        // One output for every turn: its vectors keep their capacity.
        let mut out = Output::default();
        while !self.shutting_down {
            let timeout = self.poll_timeout();
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                return Err(ServerError::Io { context: "poll for events".into(), source: error });
            }
            let turn_started = Instant::now();
            let now_ms = now_unix_ms();
            self.disk.check(&self.wal, &mut self.core, &mut out);
            for token in std::mem::take(&mut self.unfinished_reads) {
                self.read_connection(token, now_ms, &mut out);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.durability.collect(false).map_err(ServerError::Sync)?,
                    SIGNALS => self.shutting_down = true,
                    token => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_connection(token, now_ms, &mut out);
                        }
                        if event.is_writable() {
                            self.to_flush.push(token);
                        }
                    }
                }
            }
            self.core.tick(now_ms, &mut out);
            self.commit(&mut out)?;
            if self.snapshots.step(now_ms, &mut self.wal, &mut self.core) {
                // The sealed log's new segment is installed by a sync job.
                self.durability.wrote();
            }
            self.start_sync_if_needed();
            self.release_durable();
            self.flush_connections();
            self.disk.remove_expired_output(&self.core, &mut self.outputs);
            let more_archived = self.core.forget_archived(ARCHIVED_PER_TURN);
            self.archiving = self.core.forget_texts(ARCHIVED_PER_TURN) || more_archived;
            self.snapshots.turn_took(turn_started.elapsed());
        }
        self.shut_down()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unfinished_reads.is_empty() || self.archiving {
            return Some(Duration::ZERO);
        }
        let deadline = [self.core.next_deadline_ms(), self.snapshots.next_deadline_ms()].into_iter().flatten().min()?;
        Some(Duration::from_millis(deadline.saturating_sub(now_unix_ms())))
    }

    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else { return };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // Out of file descriptors and the like: the listener stays up.
                    log(format!("cannot accept a connection: {error}"));
                    return;
                }
            };
            if self.connections.len() >= self.max_connections {
                log(format!("refusing connection from {peer}: at the limit of {} connections", self.max_connections));
                refuse_at_limit(stream, self.max_connections);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let entry = self.connections.vacant_entry();
            let token = Token(entry.key());
            let id = ConnId((self.next_connection_serial << 32) | token.0 as u64);
            self.next_connection_serial += 1;
            if let Err(error) =
                self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log(format!("cannot register connection from {peer}: {error}"));
                continue;
            }
            entry.insert(Connection::new(id, peer, stream));
        }
    }

    fn read_connection(&mut self, token: Token, now_ms: u64, out: &mut Output) {
        let Some(connection) = self.connections.get_mut(token.0) else { return };
        if connection.closing {
            return;
        }
        let status = connection.read_available();
        loop {
            let connection = &mut self.connections[token.0];
            if connection.closing {
                break;
            }
            match connection.next_frame() {
                Ok(Some(frame)) => self.on_frame(token, frame, now_ms, out),
                Ok(None) => break,
                Err(error) => {
                    self.refuse_frame(token, error);
                    break;
                }
            }
        }
        match status {
            ReadStatus::Drained => {}
            ReadStatus::MoreToRead => self.unfinished_reads.push(token),
            ReadStatus::Closed => self.close(token, now_ms, out, None),
        }
        self.to_flush.push(token);
    }

    fn refuse_frame(&mut self, token: Token, error: FrameError) {
        let connection = &mut self.connections[token.0];
        let code = match error {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::InvalidRequest,
        };
        log(format!("closing connection from {}: {error}", connection.peer));
        connection.refuse(0, code, error.to_string());
    }

    fn on_frame(&mut self, token: Token, frame: Frame, now_ms: u64, out: &mut Output) {
        let connection = &mut self.connections[token.0];
        let Some(role) = connection.role else {
            self.on_hello(token, &frame);
            return;
        };
        if frame.kind != FrameKind::Request {
            log(format!("closing connection from {}: a {:?} frame after the hello", connection.peer, frame.kind));
            connection.refuse(frame.request_id, ErrorCode::InvalidRequest, "expected a request frame".into());
            return;
        }
        let request = match frame.decode_request() {
            Ok(request) => request,
            Err(error) => {
                log(format!("closing connection from {}: {error}", connection.peer));
                connection.refuse(frame.request_id, ErrorCode::InvalidRequest, error.to_string());
                return;
            }
        };
        let is_bot_request = matches!(request, Request::BotPoll(_) | Request::TaskUpdate(_));
        if is_bot_request && role != Role::Bot {
            let message = "bot requests need a connection whose hello says role Bot".to_string();
            let refusal = Reply::Error(ErrorReply { code: ErrorCode::InvalidRequest, message });
            connection.queue_reply(frame.request_id, &refusal);
            return;
        }
        let conn = connection.id;
        self.core.handle(now_ms, Input::Request { conn, request_id: frame.request_id, request }, out);
    }

    fn on_hello(&mut self, token: Token, frame: &Frame) {
        let connection = &mut self.connections[token.0];
        let hello = match (frame.kind, frame.decode_hello()) {
            (FrameKind::Hello, Ok(hello)) => hello,
            (FrameKind::Hello, Err(error)) => {
                log(format!("closing connection from {}: {error}", connection.peer));
                return connection.refuse(0, ErrorCode::BadHello, error.to_string());
            }
            (kind, _) => {
                log(format!("closing connection from {}: a {kind:?} frame before the hello", connection.peer));
                return connection.refuse(0, ErrorCode::BadHello, "the first frame must be a hello".into());
            }
        };
        if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
            let message = format!(
                "this daemon speaks protocol version {PROTOCOL_VERSION}; the hello said version {} (magic {:?})",
                hello.version, hello.magic
            );
            log(format!("closing connection from {}: {message}", connection.peer));
            return connection.refuse(0, ErrorCode::BadHello, message);
        }
        connection.role = Some(hello.role);
        connection.queue_reply(0, &Reply::Welcome { server_software: SOFTWARE.to_string() });
    }

    fn close(&mut self, token: Token, now_ms: u64, out: &mut Output, reason: Option<&str>) {
        let Some(mut connection) = self.connections.try_remove(token.0) else { return };
        if let Some(reason) = reason {
            log(format!("closing connection from {}: {reason}", connection.peer));
        }
        let _ = self.poll.registry().deregister(&mut connection.stream);
        self.core.handle(now_ms, Input::Disconnected { conn: connection.id }, out);
    }

    /// Writes the turn's output bytes and log records, and holds its replies
    /// until they are durable.
    fn commit(&mut self, out: &mut Output) -> Result<(), ServerError> {
        let wrote = !out.output_writes.is_empty() || !out.events.is_empty();
        for write in out.output_writes.drain(..) {
            self.disk.write_output(&mut self.outputs, &mut self.core, write)?;
        }
        let mut log_lines = String::new();
        for event in out.events.drain(..) {
            log_lines.push_str("apiaryd: ");
            log_lines.push_str(&event.describe());
            log_lines.push('\n');
            let payload = event.encode();
            self.wal.append(EVENT_RECORD_KIND, &payload).map_err(ServerError::Wal)?;
            self.snapshots.wrote_log_bytes(payload.len());
            match event {
                Event::TaskFinished(TaskFinished { run_id: Some(run_id), .. }) => self.outputs.close(run_id),
                Event::RetentionApplied { .. } => self.disk.retention_applied(),
                _ => {}
            }
        }
        // One write for the turn's log lines: at thousands of tasks a second,
        // a write per line would cost more than the scheduling.
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), log_lines.as_bytes());
        if wrote {
            self.durability.wrote();
        }
        for reply in out.replies.drain(..) {
            self.durability.hold(Held::Reply(reply));
        }
        for read in out.output_reads.drain(..) {
            self.durability.hold(Held::Read(read));
        }
        Ok(())
    }

    fn start_sync_if_needed(&mut self) {
        if self.durability.needs_sync() {
            let wal = self.wal.take_sync_job();
            let outputs = self.outputs.take_sync_job();
            self.durability.start_sync(wal, outputs);
        }
    }

    fn release_durable(&mut self) {
        let held: Vec<Held> = self.durability.releasable().collect();
        for item in held {
            match item {
                Held::Reply(outgoing) => self.send(outgoing.conn, outgoing.request_id, &outgoing.reply),
                Held::Read(read) => {
                    let reply = self.read_output(&read);
                    self.send(read.conn, read.request_id, &reply);
                }
            }
        }
    }

    fn read_output(&mut self, read: &OutputRead) -> Reply {
        let available = read.output_len.saturating_sub(read.offset);
        let max_bytes = (available as usize).min(read.max_bytes);
        let data = match read.run_id.filter(|_| max_bytes > 0) {
            None => Vec::new(),
            Some(run_id) => match self.outputs.read(run_id.as_u64(), read.offset, max_bytes) {
                Ok(data) => data,
                Err(error) => {
                    log(format!("cannot read the output of run {run_id}: {error}"));
                    let message = format!("cannot read the output: {error}");
                    return Reply::Error(ErrorReply { code: ErrorCode::Internal, message });
                }
            },
        };
        Reply::Output { offset: read.offset, data, output_len: read.output_len, task_ended: read.task_ended }
    }

    /// Queues a reply on its connection, if that connection is still open.
    fn send(&mut self, conn: ConnId, request_id: u64, reply: &Reply) {
        let token = (conn.0 & 0xffff_ffff) as usize;
        let Some(connection) = self.connections.get_mut(token).filter(|c| c.id == conn) else { return };
        connection.queue_reply(request_id, reply);
        self.to_flush.push(Token(token));
    }

    fn flush_connections(&mut self) {
        let mut out = Output::default();
        let now_ms = now_unix_ms();
        for token in std::mem::take(&mut self.to_flush) {
            let Some(connection) = self.connections.get_mut(token.0) else { continue };
            if !connection.flush() {
                self.close(token, now_ms, &mut out, None);
            } else if connection.write_buffer_overflowed() {
                self.close(token, now_ms, &mut out, Some("the peer does not read its replies"));
            } else if connection.closing && !connection.has_unwritten() {
                self.close(token, now_ms, &mut out, None);
            }
        }
        // Closing only unparks bots and drops waits: nothing to persist or send.
        debug_assert!(out.events.is_empty() && out.replies.is_empty());
    }

    /// Stops accepting, makes everything durable, sends what can be sent.
    fn shut_down(mut self) -> Result<(), ServerError> {
        log("shutting down: no new connections; making everything durable".to_string());
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        while self.durability.sync_in_flight() || self.durability.needs_sync() {
            if self.durability.needs_sync() {
                self.start_sync_if_needed();
            }
            self.durability.collect(true).map_err(ServerError::Sync)?;
        }
        self.release_durable();
        self.flush_connections();
        self.durability.stop();
        log(format!("stopped; the log ends at record {}", self.wal.last_seq()));
        Ok(())
    }
}

/// Tells a peer over the connection limit why, without blocking, and drops it.
fn refuse_at_limit(stream: mio::net::TcpStream, limit: usize) {
    use std::io::Write;
    let message = format!("the daemon is at its limit of {limit} connections");
    let reply = Reply::Error(ErrorReply { code: ErrorCode::Unavailable, message });
    let mut bytes = Vec::new();
    if apiary_protocol::frame::encode_reply(0, &reply, &mut bytes).is_ok() {
        let mut stream = stream;
        let _ = stream.write(&bytes);
    }
}

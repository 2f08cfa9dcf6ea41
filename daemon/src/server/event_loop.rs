//! The event loop (ARCHITECTURE.md, decision 4): one thread owns the core and
//! every connection. A turn reads all ready input, lets the core decide, writes
//! the turn's output and log records, makes them durable with one sync, and
//! sends the replies. It applies the peer limits
//! (`peer_limits`): a connection is read only while it is owed little and its
//! next frame has memory, and is closed at its hello or idle timeout.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiary_protocol::frame::{FrameEncoder, FrameError};
use apiary_protocol::tls::{TlsStream, Transport};
use apiary_protocol::{ErrorCode, ErrorReply, FrameKind, FrameView, Reply, Request, Role};
use apiary_storage::{OutputStore, Wal};
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rkyv::util::AlignedVec;
use slab::Slab;

use super::ServerError;
use super::bot_admission;
use super::cas::CasService;
use super::cas_gc::{self, GcSchedule};
use super::connection::{Connection, MAX_READ_BYTES_PER_TURN, Pause, Timeout};
use super::deadlines::Deadlines;
use super::disk::Disk;
use super::durability::{Durability, Held};
use super::hello;
use super::inbound::{InputBudget, ReadOutcome};
use super::log;
use super::outbound::{self, Queued};
use super::peer_limits::PeerLimits;
use super::reload;
use super::service_manager::ServiceManager;
use super::snapshots::{self, Snapshots, StateFiles};
use super::startup::{Recovered, Reload, ServerConfig};
use super::tls::TlsFiles;
use crate::auth::Access;
use crate::core::events::{EVENT_RECORD_KIND, Event, EventEncoder, TaskFinished};
use crate::core::{ConnId, Core, Input, Output, OutputRead};
use crate::logging::{self, Level};
use crate::metrics::{ConnectionKind, Metrics, Refusal, StateReading};

mod cas;
mod http;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const RELOAD: Token = Token(usize::MAX - 4);
const HTTP_LISTENER: Token = Token(usize::MAX - 5);

/// Heap copies of archived tasks (and of texts a snapshot's text file holds)
/// dropped per turn (about 0.2 ms of work), so a large history run or text
/// file never makes one long turn.
const ARCHIVED_PER_TURN: usize = 1024;

/// Bot ids remembered as having had their dimensions overridden (and logged);
/// past it the memory starts again, so a host of ids cannot grow it.
const MAX_OVERRIDES_LOGGED: usize = 100_000;

pub const SOFTWARE: &str = concat!("apiaryd/", env!("CARGO_PKG_VERSION"));

pub struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    /// Where HTTP clients connect (`--http-listen`), when it is set.
    http_listener: Option<TcpListener>,
    /// Kept open: SIGTERM and SIGINT write to its other end.
    _signals: UnixStream,
    /// SIGHUP writes to its other end: read the configuration file again.
    reload_signals: UnixStream,
    /// Who may connect now.
    access: Access,
    /// The certificate new connections get, when the daemon serves TLS.
    tls: Option<ServingTls>,
    /// Bots whose overridden dimensions were logged since the last reload.
    overrides_logged: hashbrown::HashSet<String>,
    reload: Option<Reload>,
    connections: Slab<Connection>,
    max_connections: usize,
    next_connection_serial: u64,
    limits: PeerLimits,
    /// Memory for large partial frames, shared by all connections.
    input_budget: InputBudget,
    /// Connections whose next frame waits for room in `input_budget`.
    waiting_for_memory: Vec<Token>,
    /// When connections are due for their hello or idle timeout.
    deadlines: Deadlines,
    /// The origin of the monotonic clock that connection timeouts use.
    started: Instant,
    /// Connections whose read budget ran out last turn: read again without waiting.
    unfinished_reads: Vec<Token>,
    /// Connections with replies queued this turn.
    to_flush: Vec<Token>,
    /// Encodes the replies the core makes, keeping its buffers from one to the next.
    encoder: FrameEncoder,
    /// Encodes the turn's events for the log, keeping its buffers from one turn to the next.
    event_encoder: EventEncoder,
    /// Where a request whose payload is not aligned in its connection's buffer is
    /// copied to be decoded; kept from one to the next.
    unaligned_payload: AlignedVec,
    core: Core,
    wal: Wal,
    outputs: OutputStore,
    /// The content-addressed store, served on its own thread.
    cas: CasService,
    /// When the store's garbage is collected next.
    cas_gc: GcSchedule,
    durability: Durability,
    /// The held items released in a turn; kept from one turn to the next.
    released: Vec<Held>,
    snapshots: Snapshots,
    disk: Disk,
    /// Whether the core still holds copies of what a history run or text file now holds.
    archiving: bool,
    shutting_down: bool,
    /// Counters and histograms for `/metrics` (`render_metrics`).
    metrics: Metrics,
    /// What systemd is told: readiness, status, the watchdog, stopping.
    service: ServiceManager,
}

/// The TLS certificate in force, and the files SIGHUP reads it from again.
pub struct ServingTls {
    pub files: TlsFiles,
    pub config: Arc<rustls::ServerConfig>,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl EventLoop {
    pub fn new(
        listener: TcpListener,
        http_listener: Option<TcpListener>,
        tls: Option<ServingTls>,
        config: &ServerConfig,
        recovered: Recovered,
        service: ServiceManager,
    ) -> Result<EventLoop, ServerError> {
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
        let (reload_reader, reload_writer) = StdUnixStream::pair().map_err(io_error("create the SIGHUP pipe"))?;
        reload_reader.set_nonblocking(true).map_err(io_error("set up the SIGHUP pipe"))?;
        reload_writer.set_nonblocking(true).map_err(io_error("set up the SIGHUP pipe"))?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_writer)
            .map_err(io_error("register the SIGHUP handler"))?;
        let mut reload_signals = UnixStream::from_std(reload_reader);
        poll.registry()
            .register(&mut reload_signals, RELOAD, Interest::READABLE)
            .map_err(io_error("register SIGHUP"))?;
        let mut listener = listener;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(io_error("register listener"))?;
        let mut http_listener = http_listener;
        if let Some(http_listener) = &mut http_listener {
            poll.registry()
                .register(http_listener, HTTP_LISTENER, Interest::READABLE)
                .map_err(io_error("register the HTTP listener"))?;
        }
        let Recovered { core, wal, outputs, snapshots, history, texts, snapshot_seq } = recovered;
        let use_refresh = cas_gc::use_refresh(config.cas_grace);
        let cas =
            CasService::start(&config.data_dir.join("cas"), config.cas_max_bytes, use_refresh, Arc::clone(&waker))?;
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
            http_listener,
            _signals: signals,
            reload_signals,
            access: config.access.clone(),
            tls,
            overrides_logged: hashbrown::HashSet::new(),
            reload: config.reload.clone(),
            connections: Slab::new(),
            max_connections: config.max_connections,
            next_connection_serial: 1,
            limits: config.peer_limits,
            input_budget: InputBudget::new(config.peer_limits.max_input_buffer_bytes),
            waiting_for_memory: Vec::new(),
            deadlines: Deadlines::default(),
            started: Instant::now(),
            unfinished_reads: Vec::new(),
            to_flush: Vec::new(),
            encoder: FrameEncoder::default(),
            event_encoder: EventEncoder::default(),
            unaligned_payload: AlignedVec::new(),
            core,
            wal,
            outputs,
            cas,
            cas_gc: GcSchedule::new(config.cas_grace, Instant::now()),
            durability: Durability::start(Arc::clone(&waker)),
            released: Vec::new(),
            snapshots,
            disk: Disk::new(config.data_dir.clone()),
            archiving: false,
            shutting_down: false,
            metrics: Metrics::default(),
            service,
        })
    }

    /// Runs until SIGTERM or SIGINT, then makes everything durable and returns.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        // One output for every turn: its vectors keep their capacity.
        let mut out = Output::default();
        // Recovered, and every listener registered: connections waiting in a
        // backlog are accepted at the first turn.
        self.service.ready(self.service_status(), Instant::now());
        while !self.shutting_down {
            self.turn(&mut events, &mut out, None)?;
        }
        self.shut_down()
    }

    /// One turn: waits for events (at most `longest_wait`, when given), reads
    /// the ready input, lets the core decide, commits, syncs and sends.
    fn turn(
        &mut self,
        events: &mut Events,
        out: &mut Output,
        longest_wait: Option<Duration>,
    ) -> Result<(), ServerError> {
        let timeout = self.poll_timeout().into_iter().chain(longest_wait).min();
        if let Err(error) = self.poll.poll(events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(ServerError::Io { context: "poll for events".into(), source: error });
        }
        let turn_started = Instant::now();
        let now_ms = now_unix_ms();
        let (service, core, connections) = (&mut self.service, &self.core, &self.connections);
        service.tick(turn_started, || serving_status(core, connections.len()));
        self.disk.check(&self.wal, &mut self.core, out);
        let mut unfinished = std::mem::take(&mut self.unfinished_reads);
        for token in unfinished.drain(..) {
            self.read_connection(token, now_ms, out, true);
        }
        keep_room(&mut self.unfinished_reads, unfinished);
        self.take_cas_completions(now_ms, out);
        self.take_cas_gc_report();
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(Protocol::Binary),
                HTTP_LISTENER => self.accept_all(Protocol::Http),
                WAKER => {} // A background check finished; the turn looks at its results.
                SIGNALS => self.shutting_down = true,
                RELOAD => self.reload_configuration(now_ms, out),
                token => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        let to_would_block = event.is_read_closed() || event.is_error();
                        self.read_connection(token, now_ms, out, to_would_block);
                    }
                    if event.is_writable() {
                        self.to_flush.push(token);
                    }
                }
            }
        }
        self.core.tick(now_ms, out);
        self.close_timed_out(now_ms, out);
        self.commit(out)?;
        if self.snapshots.step(now_ms, &mut self.wal, &mut self.core) {
            // The sealed log's new segment is installed by a sync job.
            self.durability.log_changed();
        }
        self.sync_if_needed()?;
        self.release_durable();
        self.flush_connections();
        self.disk.remove_expired_output(&self.core, &mut self.outputs);
        self.collect_cas_garbage_if_due();
        let was_archiving = self.archiving;
        let more_archived = self.core.forget_archived(ARCHIVED_PER_TURN);
        self.archiving = self.core.forget_texts(ARCHIVED_PER_TURN) || more_archived;
        if was_archiving && !self.archiving {
            // Letting go read the new files' indexes: their pages leave the resident set.
            snapshots::release_pages_in_background(self.core.newest_files());
        }
        self.snapshots.turn_took(turn_started.elapsed());
        Ok(())
    }

    /// SIGHUP: the TLS certificate is read again from its files, and who may
    /// connect from the configuration file; connections whose token is no
    /// longer accepted are closed.
    fn reload_configuration(&mut self, now_ms: u64, out: &mut Output) {
        let mut drained = [0u8; 64];
        while matches!(io::Read::read(&mut self.reload_signals, &mut drained), Ok(read) if read > 0) {}
        if let Some(tls) = &mut self.tls {
            match tls.files.load() {
                Ok(config) => {
                    tls.config = config;
                    log(format!(
                        "SIGHUP: reloaded the TLS certificate from {}; new connections get it",
                        tls.files.cert_file.display()
                    ));
                }
                Err(reason) => logging::error(format!("SIGHUP: keeping the TLS certificate in force: {reason}")),
            }
        }
        let Some(reload) = &self.reload else {
            if self.tls.is_none() {
                logging::warn("SIGHUP: the daemon was started without --config, so there is nothing to reload");
            }
            return;
        };
        let access = match reload::read_again(reload, &self.access) {
            Ok(access) => access,
            Err(reason) => {
                logging::error(format!("SIGHUP: cannot reload the configuration, keeping the one in force: {reason}"));
                return;
            }
        };
        let revoked: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                // An HTTP request presents its token itself, checked against the access of its time.
                let settled_at_hello = connection.role.is_some() && connection.http.is_none();
                settled_at_hello && !reload::still_admitted(&access, connection.principal.as_deref())
            })
            .map(|(key, _)| Token(key))
            .collect();
        let line = reload::describe(reload, &access, revoked.len());
        if let Access::Tokens(principals) = &access {
            // Kept connections act with their principal's grants of now.
            for (_, connection) in self.connections.iter_mut() {
                let current = connection.principal.as_deref().and_then(|principal| principals.current(principal));
                if let Some(current) = current {
                    connection.principal = Some(Arc::clone(current));
                    connection.enforced_dimensions = None;
                }
            }
        }
        self.overrides_logged.clear();
        self.access = access;
        for token in revoked {
            let principal = self.connections[token.0].principal.as_ref().map_or("none".into(), |p| p.name.clone());
            let reason = format!("the token it presented (principal {principal}) is no longer accepted");
            self.close(token, now_ms, out, Some(&reason));
        }
        log(line);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unfinished_reads.is_empty() || self.archiving {
            return Some(Duration::ZERO);
        }
        let deadline = [self.core.next_deadline_ms(), self.snapshots.next_deadline_ms()].into_iter().flatten().min();
        let until_deadline = deadline.map(|deadline| Duration::from_millis(deadline.saturating_sub(now_unix_ms())));
        let until_timeout =
            self.deadlines.next_due_ms().map(|due| Duration::from_millis(due.saturating_sub(self.monotonic_ms())));
        let until_service = self.service.next_due().map(|due| due.saturating_duration_since(Instant::now()));
        until_deadline.into_iter().chain(until_timeout).chain(until_service).min()
    }

    /// Every series of `/metrics`, its gauges read now: a pass over the
    /// queues and the bots, none over the tasks.
    pub fn render_metrics(&self) -> String {
        let bots = self.core.bot_standings();
        let state = StateReading {
            pending_by_pool: self.core.pending_by_pool(),
            running_tasks: bots.busy,
            bots,
            wal_bytes: self.wal.record_bytes(),
            wal_segments: self.wal.segment_count() as u64,
            wal_stalled_rotations: self.wal.stalled_rotations(),
            snapshot_age_seconds: self.snapshots.newest_age_ms(now_unix_ms()).map(|age_ms| age_ms as f64 / 1000.0),
        };
        self.metrics.render(&state)
    }

    /// The line `systemctl status` shows once the daemon serves.
    fn service_status(&self) -> String {
        serving_status(&self.core, self.connections.len())
    }

    /// Milliseconds since the loop started, for connection timeouts: a step of
    /// the wall clock must not close connections.
    fn monotonic_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn accept_all(&mut self, protocol: Protocol) {
        let listener = match protocol {
            Protocol::Binary => &self.listener,
            Protocol::Http => &self.http_listener,
        };
        let Some(listener) = listener else { return };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // Out of file descriptors and the like: the listener stays up.
                    logging::warn(format!("cannot accept a connection: {error}"));
                    return;
                }
            };
            if self.connections.len() >= self.max_connections {
                self.metrics.refused(Refusal::ConnectionLimit);
                logging::warn_peer(
                    peer,
                    format!("refusing connection: at the limit of {} connections", self.max_connections),
                );
                if self.tls.is_none() {
                    // A TLS peer could not read the plaintext reason.
                    refuse_at_limit(stream, self.max_connections, protocol);
                }
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
                logging::warn_peer(peer, format!("cannot register connection: {error}"));
                continue;
            }
            let stream = match &self.tls {
                None => Transport::Plain(stream),
                Some(tls) => match rustls::ServerConnection::new(Arc::clone(&tls.config)) {
                    Ok(session) => Transport::Tls(Box::new(TlsStream::new(session, stream))),
                    Err(error) => {
                        logging::warn_peer(peer, format!("cannot start TLS: {error}"));
                        let _ = self.poll.registry().deregister(&mut stream);
                        continue;
                    }
                },
            };
            let now_ms = self.started.elapsed().as_millis() as u64;
            self.metrics.connection_opened(match protocol {
                Protocol::Binary => ConnectionKind::AwaitingHello,
                Protocol::Http => ConnectionKind::Http,
            });
            let connection = entry.insert(match protocol {
                Protocol::Binary => Connection::new(id, peer, stream, now_ms),
                Protocol::Http => Connection::new_http(id, peer, stream, now_ms),
            });
            let (due_ms, _) = connection.deadline(&self.limits).expect("a new connection has a hello or idle timeout");
            self.deadlines.arm(token, id, due_ms, &mut connection.armed_ms);
        }
    }

    /// Makes sure the connection's timeout, if one applies now, is in `deadlines`.
    fn arm_deadline(&mut self, token: Token) {
        let Some(connection) = self.connections.get_mut(token.0) else { return };
        if let Some((due_ms, _)) = connection.deadline(&self.limits) {
            self.deadlines.arm(token, connection.id, due_ms, &mut connection.armed_ms);
        }
    }

    /// Closes the connections whose hello or idle timeout passed; a connection
    /// that is due later now is armed again.
    fn close_timed_out(&mut self, now_ms: u64, out: &mut Output) {
        let monotonic_ms = self.monotonic_ms();
        while let Some((due_ms, token, id)) = self.deadlines.pop_due(monotonic_ms) {
            let Some(connection) = self.connections.get_mut(token.0).filter(|c| c.id == id) else { continue };
            if connection.armed_ms != Some(due_ms) {
                continue; // An entry made stale by an earlier one.
            }
            connection.armed_ms = None;
            match connection.deadline(&self.limits) {
                Some((deadline_ms, timeout)) if deadline_ms <= monotonic_ms => {
                    self.metrics.refused(match timeout {
                        Timeout::Hello => Refusal::HelloTimeout,
                        Timeout::Idle => Refusal::IdleTimeout,
                        Timeout::Stalled => Refusal::Stalled,
                    });
                    let reason = connection.timeout_reason(timeout, &self.limits);
                    self.close(token, now_ms, out, Some(&reason));
                }
                Some((deadline_ms, _)) => self.deadlines.arm(token, id, deadline_ms, &mut connection.armed_ms),
                None => {}
            }
        }
    }

    /// Handles the frames a connection sent, reading more as they are taken,
    /// until its socket is drained, its turn's budget is spent, or it must wait
    /// (for its peer to take replies, or for input memory).
    ///
    /// A read that got less than it had room for drained a plaintext socket at
    /// that moment (epoll(7)): bytes that arrive later raise a new edge, so the
    /// read that would only say `WouldBlock` is left out. Not when
    /// `to_would_block`: the event said the peer closed or the socket failed
    /// (no later event says it again), or there was no event (a read resumed
    /// after a pause, whose edges were not read). Nor over TLS, where rustls
    /// may hold decrypted bytes the socket no longer has.
    fn read_connection(&mut self, token: Token, now_ms: u64, out: &mut Output, to_would_block: bool) {
        let Some(connection) = self.connections.get(token.0) else { return };
        if connection.closing || connection.paused.is_some() {
            return;
        }
        if connection.http.is_some() {
            self.read_http(token, now_ms, out);
            return;
        }
        let stops_at_short_read = !to_would_block && matches!(connection.stream, Transport::Plain(_));
        let mut read_bytes = 0;
        let mut drained = false;
        loop {
            if !self.take_frames(token, now_ms, out) || drained {
                break;
            }
            if read_bytes >= MAX_READ_BYTES_PER_TURN {
                self.unfinished_reads.push(token);
                break;
            }
            let connection = &mut self.connections[token.0];
            let max_payload = connection.max_payload();
            match connection.inbound.read_from(&mut connection.stream, &mut self.input_budget, max_payload) {
                Ok(ReadOutcome::Read { read, asked }) => {
                    read_bytes += read;
                    drained = stops_at_short_read && read < asked;
                }
                Ok(ReadOutcome::FrameReady) => {}
                Ok(ReadOutcome::Drained) => break,
                Ok(ReadOutcome::Closed) => {
                    self.close(token, now_ms, out, None);
                    return;
                }
                Ok(ReadOutcome::Broken(reason)) => {
                    self.close(token, now_ms, out, Some(&reason));
                    return;
                }
                Ok(ReadOutcome::NeedsMemory { frame_bytes }) => {
                    self.wait_for_memory(token, frame_bytes);
                    break;
                }
                Err(error) => {
                    self.refuse_frame(token, error);
                    break;
                }
            }
        }
        self.to_flush.push(token);
        self.arm_deadline(token);
    }

    /// Handles the whole frames buffered; false when the connection must not
    /// be read further now (closing, paused, or a bad frame).
    fn take_frames(&mut self, token: Token, now_ms: u64, out: &mut Output) -> bool {
        loop {
            let connection = &mut self.connections[token.0];
            if connection.closing || connection.paused.is_some() {
                return false;
            }
            // Checked before each request: no more replies are built for a peer that does not take them.
            if connection.outbound.owed_bytes() > self.limits.max_unsent_bytes {
                self.pause_for_output(token);
                return false;
            }
            let max_payload = connection.max_payload();
            let frame = match connection.inbound.front_frame(max_payload, &mut self.unaligned_payload) {
                Ok(Some(frame)) => frame,
                Ok(None) => return true,
                Err(error) => {
                    self.refuse_frame(token, error);
                    return false;
                }
            };
            // Decoded where it lies in the buffer, then dropped from it.
            let received = Received::decode(frame, connection.role.is_some(), &self.access);
            connection.inbound.take_front(&mut self.input_budget);
            connection.progressed(self.started.elapsed().as_millis() as u64);
            connection.told_waiting_for_memory = false;
            self.on_frame(token, received, now_ms, out);
            self.account_output(out);
            self.wake_waiting_for_memory();
        }
    }

    fn pause_for_output(&mut self, token: Token) {
        let connection = &mut self.connections[token.0];
        connection.paused = Some(Pause::ForOutput);
        logging::warn_peer(
            connection.peer,
            format!(
                "not reading requests while {} bytes of replies to it are unsent, over the limit of {} \
                 (--max-unsent-bytes); reading again once it takes them",
                connection.outbound.owed_bytes(),
                self.limits.max_unsent_bytes
            ),
        );
    }

    fn wait_for_memory(&mut self, token: Token, frame_bytes: usize) {
        let connection = &mut self.connections[token.0];
        connection.paused = Some(Pause::ForMemory);
        self.waiting_for_memory.push(token);
        if std::mem::replace(&mut connection.told_waiting_for_memory, true) {
            return; // Said once per frame, not at every try.
        }
        logging::warn_peer(
            connection.peer,
            format!(
                "a frame of {frame_bytes} bytes waits: partial frames hold {} bytes of the limit of {} \
                 (--max-input-buffer-bytes)",
                self.input_budget.used_bytes(),
                self.input_budget.limit_bytes()
            ),
        );
    }

    /// Once input memory was given back, the connections waiting for it try again.
    fn wake_waiting_for_memory(&mut self) {
        if self.waiting_for_memory.is_empty() || self.input_budget.used_bytes() == self.input_budget.limit_bytes() {
            return;
        }
        for token in std::mem::take(&mut self.waiting_for_memory) {
            if let Some(connection) = self.connections.get_mut(token.0)
                && connection.paused == Some(Pause::ForMemory)
            {
                connection.paused = None;
                self.unfinished_reads.push(token);
            }
        }
    }

    fn refuse_frame(&mut self, token: Token, error: FrameError) {
        let connection = &mut self.connections[token.0];
        let code = match error {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::InvalidRequest,
        };
        let message = match (&error, connection.role) {
            (FrameError::TooLarge { len, limit }, None) => {
                format!("a frame of {len} bytes before the hello is over the limit of {limit} bytes")
            }
            _ => error.to_string(),
        };
        let before_hello = connection.role.is_none();
        let message = match before_hello.then(|| connection.inbound.http_request_line()).flatten() {
            Some(line) => format!(
                "the peer speaks HTTP ({line:?}), not Apiary's protocol: point apiary and apiary-bot at \
                 this address, and HTTP clients at the --http-listen address"
            ),
            None if before_hello && connection.inbound.starts_like_tls() => {
                format!("{message} (it starts like a TLS handshake, and this daemon serves plaintext)")
            }
            None => message,
        };
        logging::warn_peer(connection.peer, format!("closing connection: {message}"));
        refuse(&mut self.metrics, connection, 0, code, message);
    }

    fn on_frame(&mut self, token: Token, frame: Received, now_ms: u64, out: &mut Output) {
        let connection = &mut self.connections[token.0];
        let request = match frame.payload {
            Payload::Hello(verdict) => {
                self.on_hello(token, verdict);
                return;
            }
            Payload::NotARequest => {
                logging::warn_peer(
                    connection.peer,
                    format!("closing connection: a {:?} frame after the hello", frame.kind),
                );
                let message = "expected a request frame".to_string();
                refuse(&mut self.metrics, connection, frame.request_id, ErrorCode::InvalidRequest, message);
                return;
            }
            Payload::Request(Err(error)) => {
                logging::warn_peer(connection.peer, format!("closing connection: {error}"));
                refuse(&mut self.metrics, connection, frame.request_id, ErrorCode::InvalidRequest, error.to_string());
                return;
            }
            Payload::Request(Ok(request)) => request,
        };
        let role = connection.role.expect("requests are decoded after the hello");
        if super::cas::is_cas_request(&request) {
            self.submit_cas(token, frame.request_id, request);
            return;
        }
        let is_bot_request = matches!(request, Request::BotPoll(_) | Request::TaskUpdate(_));
        if is_bot_request && role != Role::Bot {
            let message = "bot requests need a connection whose hello says role Bot".to_string();
            push_error(&mut self.metrics, connection, frame.request_id, ErrorCode::InvalidRequest, message);
            return;
        }
        let request = match bot_admission::admit(connection, &self.access, request) {
            Ok((request, overridden)) => {
                if let Some(overridden) = overridden {
                    self.log_override_once(overridden);
                }
                request
            }
            Err(message) => {
                let connection = &mut self.connections[token.0];
                // Once per connection: a peer that keeps asking must not fill the log.
                if !std::mem::replace(&mut connection.told_bot_refusal, true) {
                    logging::warn_peer(connection.peer, format!("refusing a bot request: {message}"));
                }
                push_error(&mut self.metrics, connection, frame.request_id, ErrorCode::PermissionDenied, message);
                return;
            }
        };
        let connection = &mut self.connections[token.0];
        connection.requests_in_flight += 1;
        let conn = connection.id;
        let principal = connection.principal.as_ref().map(|principal| Arc::clone(&principal.name));
        let grants = connection.principal.as_ref().map(|principal| Arc::clone(&principal.grants));
        let input = Input::Request { conn, request_id: frame.request_id, request, principal, grants };
        self.hand_over(token, input, now_ms, out);
    }

    /// A bot's reported dimensions were overridden by its group: said once
    /// per bot id (until a reload), not at every poll.
    fn log_override_once(&mut self, overridden: bot_admission::Overridden) {
        if self.overrides_logged.len() >= MAX_OVERRIDES_LOGGED {
            self.overrides_logged.clear();
        }
        if self.overrides_logged.insert(overridden.bot_id.clone()) {
            log(format!(
                "bot {:?}: its group (bot_groups[{}]) enforces {}; the values it reported for those keys are replaced",
                overridden.bot_id, overridden.group_index, overridden.enforced
            ));
        }
    }

    fn on_hello(&mut self, token: Token, verdict: Result<hello::Accepted, hello::Refusal>) {
        let connection = &mut self.connections[token.0];
        match verdict {
            Ok(accepted) => {
                self.metrics.connection_identified(ConnectionKind::AwaitingHello, connection_kind(Some(accepted.role)));
                connection.role = Some(accepted.role);
                connection.principal = accepted.principal;
                let welcome = Reply::Welcome { server_software: SOFTWARE.to_string() };
                connection.outbound.push_now(outbound::encode_reply(0, &welcome));
            }
            Err(refusal) => {
                logging::warn_peer(connection.peer, format!("closing connection: {}", refusal.message));
                refuse(&mut self.metrics, connection, 0, refusal.code, refusal.message);
            }
        }
    }

    /// Encodes the replies and reads the core produced since the last call and
    /// counts them against their connections at once, so the next request of a
    /// connection over its bound is not read; they are held once the turn's
    /// records are written. Output for a connection that is gone is dropped.
    fn account_output(&mut self, out: &mut Output) {
        for outgoing in out.replies.drain(..) {
            if let Reply::Error(error) = &outgoing.reply {
                self.metrics.refused(Refusal::Error(error.code));
            }
            let Some(connection) = connection_of(&mut self.connections, outgoing.conn) else { continue };
            if connection.http.is_some() {
                let (conn, request_id, reply) = (outgoing.conn, outgoing.request_id, outgoing.reply);
                self.durability.hold(Held::HttpReply { conn, request_id, reply: Box::new(reply) });
                continue;
            }
            let frame = outbound::encode_reply_with(&mut self.encoder, outgoing.request_id, &outgoing.reply);
            connection.outbound.owe(frame.len());
            connection.requests_in_flight = connection.requests_in_flight.saturating_sub(1);
            self.durability.hold(Held::Reply { conn: outgoing.conn, frame });
        }
        for read in out.output_reads.drain(..) {
            let Some(connection) = connection_of(&mut self.connections, read.conn) else { continue };
            if connection.http.is_some() {
                // Owed once released: only then is it known to be part of a response.
                self.durability.hold(Held::Read(read));
                continue;
            }
            connection.outbound.owe(outbound::read_bytes_at_most(&read));
            if read.ends_request {
                connection.requests_in_flight = connection.requests_in_flight.saturating_sub(1);
            }
            self.durability.hold(Held::Read(read));
        }
        for closing in out.closings.drain(..) {
            let Some(connection) = connection_of(&mut self.connections, closing.conn) else { continue };
            logging::warn_peer(connection.peer, format!("closing connection: {}", closing.message));
            if connection.http.is_some() {
                connection.closing = true;
            } else {
                refuse(&mut self.metrics, connection, 0, closing.code, closing.message);
            }
            self.to_flush.push(token_of(closing.conn));
        }
    }

    fn close(&mut self, token: Token, now_ms: u64, out: &mut Output, reason: Option<&str>) {
        let Some(mut connection) = self.connections.try_remove(token.0) else { return };
        let kind = if connection.http.is_some() { ConnectionKind::Http } else { connection_kind(connection.role) };
        self.metrics.connection_closed(kind);
        if let Some(reason) = reason {
            logging::warn_peer(connection.peer, format!("closing connection: {reason}"));
        }
        connection.stream.close();
        let _ = self.poll.registry().deregister(connection.stream.socket_mut());
        connection.inbound.release_into(&mut self.input_budget);
        if let Some(http) = &connection.http {
            self.input_budget.give_back(http.granted_bytes);
        }
        self.wake_waiting_for_memory();
        self.core.handle(now_ms, Input::Disconnected { conn: connection.id }, out);
    }

    /// Writes the turn's output bytes and log records, and holds its replies
    /// until they are durable.
    fn commit(&mut self, out: &mut Output) -> Result<(), ServerError> {
        self.account_output(out);
        let records = out.events.len();
        let wrote = !out.output_writes.is_empty() || records > 0;
        for write in out.output_writes.drain(..) {
            self.disk.write_output(&mut self.outputs, &mut self.core, write)?;
        }
        self.event_encoder.clear();
        for event in out.events.drain(..) {
            self.metrics.record_event(&event);
            let level = event_level(&event);
            // Per-task events are debug lines: at the default level they cost nothing here.
            if logging::enabled(level) {
                logging::write(level, None, event.describe());
            }
            let bytes = self.event_encoder.push(&event);
            self.snapshots.wrote_log_bytes(bytes);
            match event {
                Event::TaskFinished(TaskFinished { run_id: Some(run_id), .. }) => self.outputs.close(run_id),
                Event::RetentionApplied { .. } => {
                    self.disk.retention_applied();
                    self.cas_gc.retention_applied();
                }
                _ => {}
            }
        }
        // One write for the turn's records.
        self.wal.append_all(EVENT_RECORD_KIND, self.event_encoder.payloads()).map_err(ServerError::Wal)?;
        self.durability.end_batch(records, wrote);
        Ok(())
    }

    /// Collects the sync thread's sync if it finished, then starts one sync
    /// for everything written since the last began (group commit): on this
    /// thread after a small turn, on the sync thread after a large one.
    fn sync_if_needed(&mut self) -> Result<(), ServerError> {
        if let Some(finished) = self.durability.finished_in_background() {
            self.metrics.synced_in_background(finished.map_err(ServerError::Sync)?);
        }
        if !self.durability.sync_due() {
            return Ok(());
        }
        let wal = self.wal.take_sync_job();
        let outputs = self.outputs.take_sync_job();
        if self.durability.due_in_background() {
            self.durability.sync_in_background(wal, outputs).map_err(ServerError::Sync)?;
        } else {
            let took = self.durability.sync(wal, outputs).map_err(ServerError::Sync)?;
            self.metrics.synced(took);
        }
        Ok(())
    }

    /// Queues the durable replies and reads on their connections.
    fn release_durable(&mut self) {
        let now_ms = self.monotonic_ms();
        let mut released = std::mem::take(&mut self.released);
        released.extend(self.durability.releasable());
        for item in released.drain(..) {
            let conn = item.conn();
            let Some(connection) = connection_of(&mut self.connections, conn) else { continue };
            let queued = match item {
                _ if connection.http.is_some() => {
                    self.release_http(item);
                    continue;
                }
                Held::Reply { frame, .. } => Queued::Frame(frame),
                Held::Read(read) => Queued::Read(read),
                Held::HttpReply { .. } => unreachable!("held only for HTTP connections"),
            };
            if !connection.outbound.has_unwritten() {
                // The peer's time to take this output starts now.
                connection.progressed(now_ms);
            }
            connection.outbound.push(queued);
            self.to_flush.push(token_of(conn));
        }
        self.released = released;
    }

    fn flush_connections(&mut self) {
        let mut out = Output::default();
        let now_ms = now_unix_ms();
        let monotonic_ms = self.monotonic_ms();
        let mut to_flush = std::mem::take(&mut self.to_flush);
        for token in to_flush.drain(..) {
            let Some(connection) = self.connections.get_mut(token.0) else { continue };
            let (outputs, encoder, metrics) = (&mut self.outputs, &mut self.encoder, &mut self.metrics);
            let is_http = connection.http.is_some();
            let mut read_failed = false;
            let written = connection.outbound.write_to(&mut connection.stream, |read| {
                let reply = read_output(outputs, read);
                if let Reply::Error(error) = &reply {
                    metrics.refused(Refusal::Error(error.code));
                }
                match is_http {
                    true => http::output_chunk(reply, read.ends_request, &mut read_failed),
                    false => outbound::encode_reply_with(encoder, read.request_id, &reply),
                }
            });
            if read_failed {
                self.close(token, now_ms, &mut out, Some("a read of task output failed in the middle of its body"));
                continue;
            }
            let all_sent = matches!(written, outbound::WriteOutcome::Done);
            let answered_last =
                connection.http.as_ref().is_some_and(|http| http.close_after_response && http.exchange.is_none());
            match written {
                outbound::WriteOutcome::Failed => {
                    self.close(token, now_ms, &mut out, None);
                    continue;
                }
                outbound::WriteOutcome::Done | outbound::WriteOutcome::Blocked { wrote_any: true } => {
                    connection.progressed(monotonic_ms);
                }
                outbound::WriteOutcome::Blocked { wrote_any: false } => {}
            }
            if (connection.closing || answered_last) && all_sent {
                self.close(token, now_ms, &mut out, None);
                continue;
            }
            if connection.paused == Some(Pause::ForOutput)
                && connection.outbound.owed_bytes() <= self.limits.max_unsent_bytes
            {
                connection.paused = None;
                self.unfinished_reads.push(token);
            }
            self.arm_deadline(token);
        }
        keep_room(&mut self.to_flush, to_flush);
        // Closing only unparks bots and drops waits: nothing to persist, send or close.
        debug_assert!(out.events.is_empty() && out.replies.is_empty() && out.closings.is_empty());
    }

    /// Stops accepting, makes everything durable, sends what can be sent.
    fn shut_down(mut self) -> Result<(), ServerError> {
        self.service.stopping("shutting down: making everything durable");
        log("shutting down: no new connections; making everything durable".to_string());
        for mut listener in [self.listener.take(), self.http_listener.take()].into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.durability.wait_for_background().map_err(ServerError::Sync)?;
        self.sync_if_needed()?;
        self.durability.wait_for_background().map_err(ServerError::Sync)?;
        self.release_durable();
        self.flush_connections();
        log(format!("stopped; the log ends at record {}", self.wal.last_seq()));
        Ok(())
    }
}

/// A frame taken from a connection's buffer: its header, and its payload
/// decoded where it lay, as the connection's stage reads it.
struct Received {
    kind: FrameKind,
    request_id: u64,
    payload: Payload,
}

enum Payload {
    /// Before the hello was accepted: the first frame, checked as the hello.
    Hello(Result<hello::Accepted, hello::Refusal>),
    Request(Result<Request, FrameError>),
    /// After the hello, a frame of another kind (not decoded).
    NotARequest,
}

impl Received {
    fn decode(frame: FrameView<'_>, after_hello: bool, access: &Access) -> Received {
        let payload = match (after_hello, frame.kind) {
            (false, _) => Payload::Hello(hello::check_hello(frame, access)),
            (true, FrameKind::Request) => Payload::Request(frame.decode_request()),
            (true, _) => Payload::NotARequest,
        };
        Received { kind: frame.kind, request_id: frame.request_id, payload }
    }
}

/// Puts back a list of the turn that was taken and emptied, with its room,
/// so that the next turn's pushes allocate nothing; what was pushed meanwhile stays.
fn keep_room(list: &mut Vec<Token>, mut emptied: Vec<Token>) {
    debug_assert!(emptied.is_empty());
    emptied.append(list);
    *list = emptied;
}

/// Queues an error reply, counted by its code.
fn push_error(metrics: &mut Metrics, connection: &mut Connection, request_id: u64, code: ErrorCode, message: String) {
    metrics.refused(Refusal::Error(code));
    let reply = Reply::Error(ErrorReply { code, message });
    connection.outbound.push_now(outbound::encode_reply(request_id, &reply));
}

/// Queues an error and closes the connection once it is written.
fn refuse(metrics: &mut Metrics, connection: &mut Connection, request_id: u64, code: ErrorCode, message: String) {
    push_error(metrics, connection, request_id, code, message);
    connection.closing = true;
}

/// What a connection of the binary protocol counts as, by its hello's role.
fn connection_kind(role: Option<Role>) -> ConnectionKind {
    match role {
        None => ConnectionKind::AwaitingHello,
        Some(Role::Client) => ConnectionKind::Client,
        Some(Role::Bot) => ConnectionKind::Bot,
    }
}

/// The status line while serving: counts the core keeps at hand.
fn serving_status(core: &Core, connections: usize) -> String {
    format!("serving: {} pending tasks, {} bots, {connections} connections", core.pending_count(), core.bot_count())
}

/// The slab slot of a core handle (its low 32 bits; the high ones are a serial).
fn token_of(conn: ConnId) -> Token {
    Token((conn.0 & 0xffff_ffff) as usize)
}

/// The open connection a core handle names, if it is still open.
fn connection_of(connections: &mut Slab<Connection>, conn: ConnId) -> Option<&mut Connection> {
    connections.get_mut(token_of(conn).0).filter(|connection| connection.id == conn)
}

/// Reads a chunk of output for a read or a follow.
fn read_output(outputs: &mut OutputStore, read: &OutputRead) -> Reply {
    let available = read.output_len.saturating_sub(read.offset);
    let max_bytes = (available as usize).min(read.max_bytes);
    let data = match read.run_id.filter(|_| max_bytes > 0) {
        None => Vec::new(),
        Some(run_id) => match outputs.read(run_id.as_u64(), read.offset, max_bytes) {
            Ok(data) => data,
            Err(error) => {
                logging::error(format!("cannot read the output of run {run_id}: {error}"));
                let message = format!("cannot read the output: {error}");
                return Reply::Error(ErrorReply { code: ErrorCode::Internal, message });
            }
        },
    };
    Reply::Output { offset: read.offset, data, output_len: read.output_len, task_ended: read.task_ended }
}

/// The level of an event's log line: a bot's changes are notable, the
/// thousands of task events a second are not.
fn event_level(event: &Event) -> Level {
    match event {
        Event::BotConnected(_) | Event::BotChanged { .. } | Event::BotChangedBy { .. } => Level::Info,
        Event::TaskCreated(_)
        | Event::SliceAdvanced { .. }
        | Event::TaskAssigned(_)
        | Event::KillRequested { .. }
        | Event::TaskFinished(_)
        | Event::TaskRetried { .. }
        | Event::RetentionApplied { .. }
        | Event::TaskLinked(_)
        | Event::TaskOutputs(_) => Level::Debug,
    }
}

/// Which protocol a listener's connections speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Binary,
    Http,
}

/// Tells a peer over the connection limit why, without blocking, and drops it.
fn refuse_at_limit(stream: mio::net::TcpStream, limit: usize, protocol: Protocol) {
    use std::io::Write;
    let message = format!("the daemon is at its limit of {limit} connections");
    let mut bytes = Vec::new();
    match protocol {
        Protocol::Binary => {
            let reply = Reply::Error(ErrorReply { code: ErrorCode::Unavailable, message });
            if apiary_protocol::frame::encode_reply(0, &reply, &mut bytes).is_err() {
                return;
            }
        }
        Protocol::Http => bytes = super::http::response::text(503, &message, false),
    }
    let mut stream = stream;
    let _ = stream.write(&bytes);
}

#[cfg(test)]
#[path = "event_loop_tests.rs"]
mod tests;

//! The daemon's series: what each counts, its labels, and where its numbers
//! come from. Counters and histograms live in [`Metrics`], bumped by the event
//! loop as it commits events, syncs, opens and closes connections and refuses
//! requests; gauges come in a [`StateReading`] taken at each scrape.
//!
//! Every label value of a counter is known in advance (states, kinds,
//! reasons), so each is written from zero on and `rate()` sees its first
//! increment; pools are as many as the queues the core keeps.

use apiary_protocol::{ErrorCode, RunId};

use super::exposition::{Exposition, MetricKind};
use super::histogram::Histogram;
use crate::core::events::{StoredState, TaskAssigned};
use crate::core::{BotStandings, Event};

/// Dispatch waits, from a second to an hour: tasks wait for bots as long as
/// there are none free.
static DISPATCH_BOUNDS_US: [u64; 18] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
];

/// Syncs, from a tenth of a millisecond (a drive with a write cache that
/// survives power loss) to seconds (a disk that is failing).
static SYNC_BOUNDS_US: [u64; 14] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000];

/// The terminal states, in the order of their stored codes (1, 2, ...).
const ENDED_STATES: [StoredState; 8] = [
    StoredState::Completed,
    StoredState::TimedOut,
    StoredState::BotDied,
    StoredState::Expired,
    StoredState::Killed,
    StoredState::Canceled,
    StoredState::NoResource,
    StoredState::ClientError,
];

fn ended_index(state: StoredState) -> usize {
    state as usize - 1
}

/// What an open connection is, for `apiary_connections{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// Accepted on the binary protocol; its hello has not been accepted yet.
    AwaitingHello,
    Client,
    Bot,
    /// A connection of the HTTP listener.
    Http,
}

impl ConnectionKind {
    const ALL: [ConnectionKind; 4] =
        [ConnectionKind::AwaitingHello, ConnectionKind::Client, ConnectionKind::Bot, ConnectionKind::Http];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            ConnectionKind::AwaitingHello => "awaiting_hello",
            ConnectionKind::Client => "client",
            ConnectionKind::Bot => "bot",
            ConnectionKind::Http => "http",
        }
    }
}

/// Why a request or a connection was refused, for
/// `apiary_refused_requests_total{reason}`: an error reply's code, or a
/// refusal of the connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Error(ErrorCode),
    /// Accepted past `--max-connections` and closed at once.
    ConnectionLimit,
    /// No hello within the hello timeout.
    HelloTimeout,
    /// Nothing in flight for the idle timeout.
    IdleTimeout,
    /// The peer took none of the replies owed to it for the idle timeout.
    Stalled,
}

impl Refusal {
    const ALL: [Refusal; 15] = [
        Refusal::Error(ErrorCode::InvalidRequest),
        Refusal::Error(ErrorCode::NotFound),
        Refusal::Error(ErrorCode::BadHello),
        Refusal::Error(ErrorCode::Unauthenticated),
        Refusal::Error(ErrorCode::FrameTooLarge),
        Refusal::Error(ErrorCode::Unavailable),
        Refusal::Error(ErrorCode::StaleRun),
        Refusal::Error(ErrorCode::Internal),
        Refusal::Error(ErrorCode::Superseded),
        Refusal::Error(ErrorCode::PermissionDenied),
        Refusal::ConnectionLimit,
        Refusal::HelloTimeout,
        Refusal::IdleTimeout,
        Refusal::Stalled,
        Refusal::Error(ErrorCode::ResourceExhausted),
    ];

    /// Its place in `ALL` (a new error code fails to compile here until it has one).
    fn index(self) -> usize {
        match self {
            Refusal::Error(code) => match code {
                ErrorCode::InvalidRequest => 0,
                ErrorCode::NotFound => 1,
                ErrorCode::BadHello => 2,
                ErrorCode::Unauthenticated => 3,
                ErrorCode::FrameTooLarge => 4,
                ErrorCode::Unavailable => 5,
                ErrorCode::StaleRun => 6,
                ErrorCode::Internal => 7,
                ErrorCode::Superseded => 8,
                ErrorCode::PermissionDenied => 9,
                ErrorCode::ResourceExhausted => 14,
            },
            Refusal::ConnectionLimit => 10,
            Refusal::HelloTimeout => 11,
            Refusal::IdleTimeout => 12,
            Refusal::Stalled => 13,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Error(code) => match code {
                ErrorCode::InvalidRequest => "invalid_request",
                ErrorCode::NotFound => "not_found",
                ErrorCode::BadHello => "bad_hello",
                ErrorCode::Unauthenticated => "unauthenticated",
                ErrorCode::FrameTooLarge => "frame_too_large",
                ErrorCode::Unavailable => "unavailable",
                ErrorCode::StaleRun => "stale_run",
                ErrorCode::Internal => "internal",
                ErrorCode::Superseded => "superseded",
                ErrorCode::PermissionDenied => "permission_denied",
                ErrorCode::ResourceExhausted => "resource_exhausted",
            },
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HelloTimeout => "hello_timeout",
            Refusal::IdleTimeout => "idle_timeout",
            Refusal::Stalled => "stalled",
        }
    }
}

/// The gauges, read from the core and the shell when a scrape renders them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateReading<'a> {
    /// Pending tasks per pool, one entry per pool, in any order.
    pub pending_by_pool: Vec<(&'a str, u64)>,
    pub running_tasks: u64,
    pub bots: BotStandings,
    /// Bytes of records in the log's segments, and how many segments it has.
    pub wal_bytes: u64,
    pub wal_segments: u64,
    pub wal_stalled_rotations: u64,
    /// Since the newest snapshot was written; `None` before the first.
    pub snapshot_age_seconds: Option<f64>,
}

/// The counters and histograms, owned by the event loop.
#[derive(Clone, Debug)]
pub struct Metrics {
    tasks_created: u64,
    tasks_ended: [u64; ENDED_STATES.len()],
    dispatch_latency: Histogram,
    fsync_latency: Histogram,
    syncs_in_background: u64,
    connections: [u64; ConnectionKind::ALL.len()],
    refused: [u64; Refusal::ALL.len()],
    cas_gc_passes: u64,
    cas_gc_removed_blobs: u64,
    cas_gc_removed_bytes: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            tasks_created: 0,
            tasks_ended: [0; ENDED_STATES.len()],
            dispatch_latency: Histogram::new(&DISPATCH_BOUNDS_US),
            fsync_latency: Histogram::new(&SYNC_BOUNDS_US),
            syncs_in_background: 0,
            connections: [0; ConnectionKind::ALL.len()],
            refused: [0; Refusal::ALL.len()],
            cas_gc_passes: 0,
            cas_gc_removed_blobs: 0,
            cas_gc_removed_bytes: 0,
        }
    }
}

impl Metrics {
    /// Counts what an event the event loop commits says about tasks.
    pub fn record_event(&mut self, event: &Event) {
        match event {
            Event::TaskCreated(_) => self.tasks_created += 1,
            Event::TaskFinished(finished) => self.tasks_ended[ended_index(finished.state)] += 1,
            Event::TaskAssigned(assigned) => self.task_assigned(assigned),
            _ => {}
        }
    }

    /// The wait of a task's first run, from the task's creation (its id says
    /// when) to its assignment. A retry is not counted: it was queued again
    /// when its first run died, a time no event keeps.
    fn task_assigned(&mut self, assigned: &TaskAssigned) {
        let Some(run_id) = RunId::from_u64(assigned.run_id).filter(|run_id| run_id.try_number() == 1) else {
            return;
        };
        let waited_ms = assigned.at_ms.saturating_sub(run_id.request().created_unix_ms());
        self.dispatch_latency.observe_micros(waited_ms.saturating_mul(1000));
    }

    /// One sync of the log and the output store made a turn's writes durable.
    pub fn synced(&mut self, took: std::time::Duration) {
        self.fsync_latency.observe_micros(took.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// A sync as `synced`, run on the sync thread after a large turn.
    pub fn synced_in_background(&mut self, took: std::time::Duration) {
        self.synced(took);
        self.syncs_in_background += 1;
    }

    pub fn connection_opened(&mut self, kind: ConnectionKind) {
        self.connections[kind.index()] += 1;
    }

    pub fn connection_closed(&mut self, kind: ConnectionKind) {
        let open = &mut self.connections[kind.index()];
        debug_assert!(*open > 0, "a {} connection closed that was not counted open", kind.name());
        *open = open.saturating_sub(1);
    }

    /// A connection's hello was accepted: it is now a client or a bot.
    pub fn connection_identified(&mut self, from: ConnectionKind, to: ConnectionKind) {
        self.connection_closed(from);
        self.connection_opened(to);
    }

    pub fn refused(&mut self, refusal: Refusal) {
        self.refused[refusal.index()] += 1;
    }

    /// A garbage collection pass of the content-addressed store ended.
    pub fn cas_garbage_collected(&mut self, removed_blobs: u64, removed_bytes: u64) {
        self.cas_gc_passes += 1;
        self.cas_gc_removed_blobs += removed_blobs;
        self.cas_gc_removed_bytes += removed_bytes;
    }

    /// Every series, with the gauges of `state`, in the text format.
    pub fn render(&self, state: &StateReading<'_>) -> String {
        let mut out = Exposition::default();
        self.render_tasks(state, &mut out);
        render_bots(&state.bots, &mut out);
        out.family(
            "apiary_dispatch_latency_seconds",
            MetricKind::Histogram,
            "Time from a task's creation to the assignment of its first run to a bot.",
        );
        out.histogram("apiary_dispatch_latency_seconds", &[], &self.dispatch_latency);
        out.family(
            "apiary_fsync_latency_seconds",
            MetricKind::Histogram,
            "Time of one sync that makes a turn's log records and task output durable; replies wait for it.",
        );
        out.histogram("apiary_fsync_latency_seconds", &[], &self.fsync_latency);
        out.family(
            "apiary_syncs_in_background_total",
            MetricKind::Counter,
            "Of those syncs, the ones run on the sync thread while the event loop went on (after turns that wrote 128 records or more).",
        );
        out.integer("apiary_syncs_in_background_total", &[], self.syncs_in_background);
        render_storage(state, &mut out);
        self.render_cas_gc(&mut out);
        out.family("apiary_connections", MetricKind::Gauge, "Open connections by kind.");
        for kind in ConnectionKind::ALL {
            out.integer("apiary_connections", &[("kind", kind.name())], self.connections[kind.index()]);
        }
        out.family(
            "apiary_refused_requests_total",
            MetricKind::Counter,
            "Requests answered with an error, by its code, and connections refused or closed, by why.",
        );
        for refusal in Refusal::ALL {
            out.integer("apiary_refused_requests_total", &[("reason", refusal.name())], self.refused[refusal.index()]);
        }
        out.finish()
    }

    fn render_cas_gc(&self, out: &mut Exposition) {
        let series = [
            (
                "apiary_cas_gc_passes_total",
                "Garbage collection passes of the content-addressed store that ended.",
                self.cas_gc_passes,
            ),
            (
                "apiary_cas_gc_removed_blobs_total",
                "Blobs of the content-addressed store that no retained task named and none used within --cas-grace, \
                 removed.",
                self.cas_gc_removed_blobs,
            ),
            (
                "apiary_cas_gc_removed_bytes_total",
                "Bytes of the blobs those passes removed.",
                self.cas_gc_removed_bytes,
            ),
        ];
        for (name, help, value) in series {
            out.family(name, MetricKind::Counter, help);
            out.integer(name, &[], value);
        }
    }

    fn render_tasks(&self, state: &StateReading<'_>, out: &mut Exposition) {
        out.family("apiary_tasks_created_total", MetricKind::Counter, "Tasks created since the daemon started.");
        out.integer("apiary_tasks_created_total", &[], self.tasks_created);
        out.family(
            "apiary_tasks_ended_total",
            MetricKind::Counter,
            "Tasks that ended since the daemon started, by their final state as Swarming names it.",
        );
        for state in ENDED_STATES {
            let name = state.state().name();
            out.integer("apiary_tasks_ended_total", &[("state", name)], self.tasks_ended[ended_index(state)]);
        }
        out.family("apiary_tasks_pending", MetricKind::Gauge, "Tasks waiting for a bot, by pool.");
        for (pool, pending) in &state.pending_by_pool {
            out.integer("apiary_tasks_pending", &[("pool", pool)], *pending);
        }
        out.family("apiary_tasks_running", MetricKind::Gauge, "Tasks running on a bot.");
        out.integer("apiary_tasks_running", &[], state.running_tasks);
    }
}

fn render_bots(bots: &BotStandings, out: &mut Exposition) {
    out.family(
        "apiary_bots",
        MetricKind::Gauge,
        "Known bots by status: alive (not dead), busy (running a task), idle (alive, no task), dead, quarantined; \
         a bot may be in several.",
    );
    let statuses = [
        ("alive", bots.alive),
        ("busy", bots.busy),
        ("idle", bots.idle),
        ("dead", bots.dead),
        ("quarantined", bots.quarantined),
    ];
    for (status, count) in statuses {
        out.integer("apiary_bots", &[("status", status)], count);
    }
}

fn render_storage(state: &StateReading<'_>, out: &mut Exposition) {
    out.family("apiary_wal_bytes", MetricKind::Gauge, "Bytes of records in the write-ahead log's segments.");
    out.integer("apiary_wal_bytes", &[], state.wal_bytes);
    out.family("apiary_wal_segments", MetricKind::Gauge, "Segment files of the write-ahead log.");
    out.integer("apiary_wal_segments", &[], state.wal_segments);
    out.family(
        "apiary_wal_stalled_rotations_total",
        MetricKind::Counter,
        "Log segments the event loop had to make itself because no spare was ready: each stalls a turn.",
    );
    out.integer("apiary_wal_stalled_rotations_total", &[], state.wal_stalled_rotations);
    out.family(
        "apiary_snapshot_age_seconds",
        MetricKind::Gauge,
        "Seconds since the newest snapshot was written; no sample before the first.",
    );
    if let Some(age) = state.snapshot_age_seconds {
        out.float("apiary_snapshot_age_seconds", &[], age);
    }
}

#[cfg(test)]
mod tests {
    use apiary_protocol::RequestId;

    use super::*;
    use crate::core::events::TaskFinished;

    #[test]
    fn every_label_list_is_in_the_order_of_its_indexes() {
        for (index, state) in ENDED_STATES.into_iter().enumerate() {
            assert_eq!(ended_index(state), index);
        }
        for (index, kind) in ConnectionKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), index);
        }
        for (index, refusal) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(refusal.index(), index, "{}", refusal.name());
        }
    }

    fn finished(state: StoredState) -> Event {
        Event::TaskFinished(TaskFinished {
            task_id: 0x10,
            run_id: None,
            state,
            exit_code: None,
            duration_ms: None,
            setup_ms: None,
            teardown_ms: None,
            timeout: None,
            internal_failure: false,
            reason: String::new(),
            output_len: 0,
            output_truncated: false,
            deduped_from: None,
            at_ms: 0,
        })
    }

    fn assigned(run_id: RunId, at_ms: u64) -> Event {
        let (slice_index, session_id) = (0, 1);
        Event::TaskAssigned(TaskAssigned {
            run_id: run_id.as_u64(),
            slice_index,
            bot_id: "b".into(),
            session_id,
            at_ms,
        })
    }

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        let line = text.lines().find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
        line.unwrap_or_else(|| panic!("no {series} in\n{text}")).rsplit(' ').next().unwrap()
    }

    #[test]
    fn events_count_tasks_and_first_runs_their_wait() {
        let mut metrics = Metrics::default();
        let task = RequestId::first_of_millisecond(10_000);
        metrics.record_event(&finished(StoredState::Completed));
        metrics.record_event(&finished(StoredState::Completed));
        metrics.record_event(&finished(StoredState::BotDied));
        metrics.record_event(&assigned(task.run(1), 10_003));
        metrics.record_event(&assigned(task.run(2), 99_000));
        let text = metrics.render(&StateReading::default());
        assert_eq!(sample(&text, "apiary_tasks_created_total"), "0");
        assert_eq!(sample(&text, "apiary_tasks_ended_total{state=\"COMPLETED\"}"), "2");
        assert_eq!(sample(&text, "apiary_tasks_ended_total{state=\"BOT_DIED\"}"), "1");
        assert_eq!(sample(&text, "apiary_tasks_ended_total{state=\"EXPIRED\"}"), "0", "written from zero on");
        assert_eq!(sample(&text, "apiary_dispatch_latency_seconds_count"), "1", "the retry is not counted");
        assert_eq!(sample(&text, "apiary_dispatch_latency_seconds_sum"), "0.003");
        assert_eq!(sample(&text, "apiary_dispatch_latency_seconds_bucket{le=\"0.0025\"}"), "0");
        assert_eq!(sample(&text, "apiary_dispatch_latency_seconds_bucket{le=\"0.005\"}"), "1");
    }

    #[test]
    fn connections_move_between_kinds_and_refusals_count_by_reason() {
        let mut metrics = Metrics::default();
        metrics.connection_opened(ConnectionKind::AwaitingHello);
        metrics.connection_opened(ConnectionKind::AwaitingHello);
        metrics.connection_identified(ConnectionKind::AwaitingHello, ConnectionKind::Bot);
        metrics.connection_opened(ConnectionKind::Http);
        metrics.connection_closed(ConnectionKind::Http);
        metrics.refused(Refusal::Error(ErrorCode::PermissionDenied));
        metrics.refused(Refusal::HelloTimeout);
        metrics.refused(Refusal::HelloTimeout);
        let text = metrics.render(&StateReading::default());
        assert_eq!(sample(&text, "apiary_connections{kind=\"awaiting_hello\"}"), "1");
        assert_eq!(sample(&text, "apiary_connections{kind=\"bot\"}"), "1");
        assert_eq!(sample(&text, "apiary_connections{kind=\"http\"}"), "0");
        assert_eq!(sample(&text, "apiary_refused_requests_total{reason=\"permission_denied\"}"), "1");
        assert_eq!(sample(&text, "apiary_refused_requests_total{reason=\"hello_timeout\"}"), "2");
        assert_eq!(sample(&text, "apiary_refused_requests_total{reason=\"not_found\"}"), "0");
    }

    #[test]
    fn gauges_are_written_from_the_state_reading() {
        let mut metrics = Metrics::default();
        metrics.synced_in_background(std::time::Duration::from_micros(700));
        let state = StateReading {
            pending_by_pool: vec![("ci", 3), ("say \"hi\"", 1)],
            running_tasks: 2,
            bots: BotStandings { alive: 4, busy: 2, idle: 2, dead: 1, quarantined: 1 },
            wal_bytes: 4096,
            wal_segments: 2,
            wal_stalled_rotations: 1,
            snapshot_age_seconds: Some(1.5),
        };
        let text = metrics.render(&state);
        let expected = [
            "apiary_tasks_pending{pool=\"ci\"} 3",
            "apiary_tasks_pending{pool=\"say \\\"hi\\\"\"} 1",
            "apiary_tasks_running 2",
            "apiary_bots{status=\"alive\"} 4",
            "apiary_bots{status=\"idle\"} 2",
            "apiary_bots{status=\"quarantined\"} 1",
            "apiary_fsync_latency_seconds_bucket{le=\"0.0005\"} 0",
            "apiary_fsync_latency_seconds_bucket{le=\"0.001\"} 1",
            "apiary_syncs_in_background_total 1",
            "apiary_wal_bytes 4096",
            "apiary_wal_segments 2",
            "apiary_wal_stalled_rotations_total 1",
            "apiary_snapshot_age_seconds 1.5",
        ];
        for line in expected {
            assert!(text.lines().any(|written| written == line), "no line {line:?} in\n{text}");
        }
        let none = metrics.render(&StateReading::default());
        assert!(!none.lines().any(|line| line.starts_with("apiary_snapshot_age_seconds")), "no snapshot, no sample");
        assert!(none.contains("# TYPE apiary_snapshot_age_seconds gauge"), "the family is still described");
    }
}

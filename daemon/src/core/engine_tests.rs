//! Unit tests of the core, without sockets: each step checks the invariants,
//! and every test ends by rebuilding the core from its events alone.

use apiary_protocol::cas::{CasReference, CasStats, Digest};
use apiary_protocol::{
    BotEvent, BotEventKind, BotEventQuery, CacheInfo, CancelOutcome, NamedCache, NewTaskRequest, PendingInfo,
    StringPair, TaskQuery, TaskResult, TaskSlice, TimeoutKind,
};

use super::*;
use crate::core::events::EventEncoder;

struct Harness {
    core: Core,
    log: Vec<Event>,
    now_ms: u64,
    next_request_id: u64,
    /// Who the requests come from (`None`: open access).
    principal: Option<std::sync::Arc<str>>,
    /// What that principal may do (`None`: open access, everything).
    grants: Option<std::sync::Arc<crate::auth::Grants>>,
}

const CLIENT: ConnId = ConnId(1);

#[derive(Clone, Copy)]
struct TestBot {
    conn: ConnId,
    bot_id: &'static str,
    session_id: u64,
}

const BOT_1: TestBot = TestBot { conn: ConnId(2), bot_id: "bot-1", session_id: 7 };

impl Harness {
    fn new() -> Harness {
        Harness {
            core: Core::new(CoreConfig::default()),
            log: Vec::new(),
            now_ms: 1_700_000_000_000,
            next_request_id: 1,
            principal: None,
            grants: None,
        }
    }

    fn send(&mut self, conn: ConnId, request: Request) -> (u64, Output) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut out = Output::default();
        self.core.handle(
            self.now_ms,
            Input::Request {
                conn,
                request_id,
                request,
                principal: self.principal.clone(),
                grants: self.grants.clone(),
            },
            &mut out,
        );
        self.record(&out);
        (request_id, out)
    }

    fn record(&mut self, out: &Output) {
        self.log.extend(out.events.iter().cloned());
        self.core.check_invariants();
    }

    fn advance(&mut self, ms: u64) -> Output {
        self.now_ms += ms;
        let mut out = Output::default();
        self.core.tick(self.now_ms, &mut out);
        self.record(&out);
        out
    }

    /// Creates the task and returns it as `GetTask` shows it right after.
    fn submit(&mut self, request: NewTaskRequest) -> TaskResult {
        let (_, out) = self.send(CLIENT, Request::NewTask(request));
        let ack = match &out.replies.last().expect("a reply").reply {
            Reply::Created(ack) => *ack,
            other => panic!("expected a task acknowledgement, got {other:?}"),
        };
        let (_, out) = self.send(CLIENT, Request::GetTask { task_id: ack.task_id });
        match &out.replies[0].reply {
            Reply::Task(result) => {
                assert_eq!((result.state, result.deduped_from), (ack.state, ack.deduped_from), "the ack agrees");
                *result.clone()
            }
            other => panic!("expected a task, got {other:?}"),
        }
    }

    fn poll(&mut self, conn: ConnId, bot_id: &str, session_id: u64, dimensions: &[(&str, &str)]) -> Output {
        let dimensions = dimensions.iter().map(|(key, value)| StringPair::new(key, value)).collect();
        let poll = BotPoll {
            bot_id: bot_id.into(),
            session_id,
            dimensions,
            software: "test".into(),
            quarantine_reason: String::new(),
            caches: Vec::new(),
        };
        self.send(conn, Request::BotPoll(poll)).1
    }

    /// A bot's update on its run; returns everything the core asked for.
    fn update(&mut self, bot: TestBot, run_id: u64, offset: u64, output: &[u8], outcome: Option<RunOutcome>) -> Output {
        let (bot_id, session_id, output) = (bot.bot_id.to_string(), bot.session_id, output.to_vec());
        let update = TaskUpdate { bot_id, session_id, run_id, output_offset: offset, output, outcome };
        self.send(bot.conn, Request::TaskUpdate(update)).1
    }

    /// An update, its final report an exit with `exit_code` when given; returns the reply.
    fn report(&mut self, bot: TestBot, run_id: u64, offset: u64, output: &[u8], exit_code: Option<i64>) -> Reply {
        let outcome = exit_code.map(|code| outcome(Some(code), RunEnd::Exited));
        self.update(bot, run_id, offset, output, outcome).replies.into_iter().last().expect("a reply").reply
    }

    fn state(&self, task_id: u64) -> TaskState {
        self.core.task(RequestId::from_u64(task_id).unwrap()).unwrap().state
    }

    /// Rebuilds a core from the events alone and compares every task.
    fn check_replay(&self) {
        let mut replayed = Core::new(CoreConfig::default());
        let mut encoder = EventEncoder::default();
        for event in &self.log {
            encoder.push(event);
        }
        for (event, payload) in self.log.iter().zip(encoder.payloads()) {
            assert_eq!(payload, &event.encode()[..], "one encoder for a turn's events writes each as alone");
            let decoded = Event::decode(payload).expect("events round-trip");
            assert_eq!(&decoded, event);
            replayed.apply(&decoded);
        }
        replayed.check_invariants();
        assert_eq!(replayed.task_count(), self.core.task_count());
        for task_id in self.core.tasks.values().map(|task| task.id) {
            assert_eq!(replayed.task(task_id), self.core.task(task_id), "task {task_id} after replay");
        }
    }
}

/// A request that waits for capacity, so it may come before its bots.
fn outcome(exit_code: Option<i64>, end: RunEnd) -> RunOutcome {
    RunOutcome { exit_code, duration_ms: 5, setup_ms: 1, teardown_ms: 1, end, ..RunOutcome::default() }
}

fn request(priority: u8, dimensions: &[(&str, &str)]) -> NewTaskRequest {
    let mut slice = TaskSlice { wait_for_capacity: true, ..TaskSlice::default() };
    Arc::make_mut(&mut slice.properties).command = vec!["echo".into(), "hi".into()];
    Arc::make_mut(&mut slice.properties).dimensions =
        dimensions.iter().map(|(key, value)| StringPair::new(key, value)).collect();
    NewTaskRequest { priority, task_slices: vec![slice], ..NewTaskRequest::default() }
}

fn assignment(out: &Output) -> Option<&Assignment> {
    out.replies.iter().find_map(|outgoing| match &outgoing.reply {
        Reply::Assignment(assignment) => Some(assignment),
        _ => None,
    })
}

const LINUX: &[(&str, &str)] = &[("pool", "ci"), ("os", "Linux")];

#[test]
fn a_task_runs_on_a_polling_bot_and_completes() {
    let mut h = Harness::new();
    let task = h.submit(request(100, &[("pool", "ci")]));
    assert_eq!(task.state, TaskState::Pending);
    assert!(format!("{:016x}", task.task_id).ends_with('0'));
    let out = h.poll(ConnId(2), "bot-1", 7, LINUX);
    let run_id = assignment(&out).expect("assigned").run_id;
    assert_eq!(run_id, task.task_id | 1);
    assert_eq!(h.state(task.task_id), TaskState::Running);
    assert_eq!(h.report(BOT_1, run_id, 0, b"hello ", None), Reply::UpdateAck { output_len: 6, must_stop: false });
    // A resent chunk that overlaps changes nothing but its new tail.
    assert_eq!(h.report(BOT_1, run_id, 3, b"lo world", Some(0)), Reply::UpdateAck { output_len: 11, must_stop: false });
    let result = h.core.task(RequestId::from_u64(task.task_id).unwrap()).unwrap();
    assert_eq!((result.state, result.exit_code, result.output_len), (TaskState::Completed, Some(0), 11));
    assert_eq!(result.bot_id.as_deref(), Some("bot-1"));
    // The retried final report gets the same answer; any other report is stale.
    assert_eq!(h.report(BOT_1, run_id, 11, b"", Some(0)), Reply::UpdateAck { output_len: 11, must_stop: false });
    assert!(matches!(
        h.report(BOT_1, run_id, 11, b"more", None),
        Reply::Error(ErrorReply { code: ErrorCode::StaleRun, .. })
    ));
    h.check_replay();
}

#[test]
fn a_new_task_goes_straight_to_a_parked_bot() {
    let mut h = Harness::new();
    assert!(h.poll(ConnId(2), "bot-1", 7, LINUX).replies.is_empty(), "no work: the poll is held");
    let mac = h.submit(request(100, &[("pool", "ci"), ("os", "Mac")]));
    assert_eq!(mac.state, TaskState::Pending, "a Mac task does not go to a Linux bot");
    let (_, out) = h.send(CLIENT, Request::NewTask(request(100, &[("pool", "ci"), ("os", "Linux|Mac")])));
    let handed = assignment(&out).expect("handed to the parked bot");
    assert_eq!(out.replies[0].conn, ConnId(2));
    assert_eq!(h.state(handed.run_id & !0xf), TaskState::Running);
    h.check_replay();
}

#[test]
fn priority_then_submission_order() {
    let mut h = Harness::new();
    let low = h.submit(request(200, &[("pool", "ci")]));
    let first_high = h.submit(request(10, &[("pool", "ci")]));
    let second_high = h.submit(request(10, &[("pool", "ci"), ("os", "Linux")]));
    let mut order = Vec::new();
    for _ in 0..3 {
        let out = h.poll(ConnId(2), "bot-1", 7, LINUX);
        let run_id = assignment(&out).expect("work").run_id;
        order.push(run_id & !0xf);
        h.report(BOT_1, run_id, 0, b"", Some(0));
    }
    assert_eq!(order, vec![first_high.task_id, second_high.task_id, low.task_id]);
    h.check_replay();
}

#[test]
fn a_lost_assignment_is_handed_over_again_and_a_restarted_bot_loses_its_run() {
    let mut h = Harness::new();
    let task = h.submit(request(100, &[("pool", "ci")]));
    let run_id = assignment(&h.poll(ConnId(2), "bot-1", 7, LINUX)).unwrap().run_id;
    // Same session polls again: it never got the assignment.
    assert_eq!(assignment(&h.poll(ConnId(3), "bot-1", 7, LINUX)).unwrap().run_id, run_id);
    // A new session: the bot restarted, the run is lost.
    h.poll(ConnId(4), "bot-1", 8, LINUX);
    let result = h.core.task(RequestId::from_u64(task.task_id).unwrap()).unwrap();
    assert_eq!(result.state, TaskState::BotDied);
    assert!(result.internal_failure);
    h.check_replay();
}

#[test]
fn a_new_session_takes_over_a_connected_bot_id_and_the_older_connection_is_closed() {
    let mut h = Harness::new();
    let parked = h.poll(ConnId(2), "bot-1", 7, LINUX);
    assert!(parked.replies.is_empty() && parked.closings.is_empty(), "an idle bot's poll is held");
    // The same session on a new connection (a reconnect) closes nothing.
    let reconnected = h.poll(ConnId(3), "bot-1", 7, LINUX);
    assert!(reconnected.closings.is_empty());
    // Another session while connection 3 is open: it takes over, and 3 is told why.
    let taken_over = h.poll(ConnId(4), "bot-1", 8, LINUX);
    assert_eq!(taken_over.closings.len(), 1);
    let closing = &taken_over.closings[0];
    assert_eq!((closing.conn, closing.code), (ConnId(3), ErrorCode::Superseded));
    assert!(closing.message.contains("took over this bot id"), "{}", closing.message);
    assert!(
        taken_over.replies.iter().all(|reply| reply.conn != ConnId(3)),
        "the older connection's held poll is dropped, not answered"
    );
    // Its close changes nothing more; the bot is the newer session's.
    let mut out = Output::default();
    h.core.handle(h.now_ms, Input::Disconnected { conn: ConnId(3) }, &mut out);
    assert!(out.replies.is_empty() && out.events.is_empty());
    assert_eq!(h.core.bots["bot-1"].connection, Some(ConnId(4)));
    // The older session may not take the id back: no turns, no storm of sessions.
    let events_before = h.log.len();
    let came_back = h.poll(ConnId(6), "bot-1", 7, LINUX);
    match &came_back.replies[..] {
        [Outgoing { reply: Reply::Error(ErrorReply { code: ErrorCode::Superseded, .. }), .. }] => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(came_back.closings.is_empty() && h.log.len() == events_before);
    assert_eq!(h.core.bots["bot-1"].connection, Some(ConnId(4)));
    // A new session after the bot's connection closed is a restart: nothing to close.
    let mut out = Output::default();
    h.core.handle(h.now_ms, Input::Disconnected { conn: ConnId(4) }, &mut out);
    assert!(h.poll(ConnId(5), "bot-1", 9, LINUX).closings.is_empty());
    h.check_replay();
}

#[test]
fn slices_fall_back_then_expire() {
    let mut h = Harness::new();
    let mut two_slices = request(100, &[("pool", "ci"), ("gpu", "big")]);
    two_slices.task_slices[0].expiration_secs = 10;
    let mut fallback = two_slices.task_slices[0].clone();
    Arc::make_mut(&mut fallback.properties).dimensions.pop();
    fallback.wait_for_capacity = false;
    fallback.expiration_secs = 20;
    two_slices.task_slices.push(fallback);
    let task = h.submit(two_slices);
    h.poll(ConnId(2), "bot-1", 7, LINUX);
    let out = h.advance(10_000);
    let handed = assignment(&out).expect("the fallback slice goes to the parked bot");
    assert_eq!(handed.slice_index, 1);
    let again = h.submit({
        let mut r = request(100, &[("pool", "other")]);
        r.task_slices[0].expiration_secs = 5;
        r
    });
    h.advance(5_000);
    assert_eq!(h.state(again.task_id), TaskState::Expired);
    assert_eq!(h.state(task.task_id), TaskState::Running);
    h.check_replay();
}

#[test]
fn waits_are_answered_when_the_task_ends_or_the_wait_times_out() {
    let mut h = Harness::new();
    let task = h.submit(request(100, &[("pool", "ci")]));
    let (wait_id, out) = h.send(CLIENT, Request::WaitTask { task_id: task.task_id, timeout_ms: 1_000 });
    assert!(out.replies.is_empty());
    let out = h.advance(1_000);
    assert_eq!(out.replies[0].request_id, wait_id);
    let (wait_id, _) = h.send(CLIENT, Request::WaitTask { task_id: task.task_id, timeout_ms: 50_000 });
    let run_id = assignment(&h.poll(ConnId(2), "bot-1", 7, LINUX)).unwrap().run_id;
    let out = h.update(
        BOT_1,
        run_id,
        0,
        b"",
        Some(RunOutcome {
            exit_code: Some(3),
            duration_ms: 1,
            setup_ms: 1,
            teardown_ms: 1,
            end: RunEnd::Exited,
            ..RunOutcome::default()
        }),
    );
    let answered = out.replies.iter().find(|o| o.request_id == wait_id).expect("the waiter is answered");
    assert!(matches!(&answered.reply, Reply::Task(result) if result.exit_code == Some(3)));
    assert!(h.advance(60_000).replies.is_empty(), "an answered wait does not time out later");
    h.check_replay();
}

#[test]
fn polls_time_out_with_no_work_and_disconnects_unpark() {
    let mut h = Harness::new();
    h.poll(ConnId(2), "bot-1", 7, LINUX);
    let out = h.advance(CoreConfig::default().long_poll_ms);
    assert!(matches!(out.replies[0].reply, Reply::NoWork));
    h.poll(ConnId(2), "bot-1", 7, LINUX);
    let mut out = Output::default();
    h.core.handle(h.now_ms, Input::Disconnected { conn: ConnId(2) }, &mut out);
    h.core.check_invariants();
    let task = h.submit(request(100, &[("pool", "ci")]));
    assert_eq!(task.state, TaskState::Pending, "a disconnected bot gets no work");
}

#[test]
fn invalid_requests_are_refused_with_the_field() {
    let mut h = Harness::new();
    let (_, out) = h.send(CLIENT, Request::NewTask(request(0, &[("pool", "ci")])));
    match &out.replies[0].reply {
        Reply::Error(ErrorReply { code: ErrorCode::InvalidRequest, message }) => {
            assert!(message.starts_with("priority:"))
        }
        other => panic!("{other:?}"),
    }
    assert!(out.events.is_empty());
    let out = h.poll(ConnId(2), "bad id with spaces ", 1, LINUX);
    assert!(matches!(&out.replies[0].reply, Reply::Error(ErrorReply { code: ErrorCode::InvalidRequest, .. })));
}

#[test]
fn ids_stay_unique_and_ordered_when_the_clock_steps_back() {
    let mut h = Harness::new();
    let first = h.submit(request(100, &[("pool", "ci")]));
    h.now_ms -= 60_000;
    let second = h.submit(request(100, &[("pool", "ci")]));
    assert!(second.task_id > first.task_id);
    h.check_replay();
}

fn no_wait(mut request: NewTaskRequest) -> NewTaskRequest {
    for slice in &mut request.task_slices {
        slice.wait_for_capacity = false;
    }
    request
}

fn finish_run(h: &mut Harness, bot: TestBot, run_id: u64, output: &[u8], exit_code: i64) {
    let reply = h.report(bot, run_id, 0, output, Some(exit_code));
    assert!(matches!(reply, Reply::UpdateAck { .. }), "{reply:?}");
}

fn run_one(h: &mut Harness, bot: TestBot, dimensions: &[(&str, &str)]) -> u64 {
    let out = h.poll(bot.conn, bot.bot_id, bot.session_id, dimensions);
    assignment(&out).expect("work for the bot").run_id
}

#[test]
fn no_resource_at_once_when_no_live_bot_could_serve_any_slice() {
    let mut h = Harness::new();
    assert_eq!(h.submit(no_wait(request(100, &[("pool", "ci")]))).state, TaskState::NoResource);
    // A Mac bot is no capacity for a Linux task; a Linux one is, even when busy.
    h.poll(ConnId(3), "mac-1", 1, &[("pool", "ci"), ("os", "Mac")]);
    assert_eq!(h.submit(no_wait(request(100, &[("pool", "ci"), ("os", "Linux")]))).state, TaskState::NoResource);
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX);
    let first = h.submit(no_wait(request(100, &[("pool", "ci"), ("os", "Linux")])));
    assert_eq!(first.state, TaskState::Running, "handed to the parked Linux bot");
    let task = h.submit(no_wait(request(100, &[("pool", "ci"), ("os", "Linux")])));
    assert_eq!(task.state, TaskState::Pending, "the busy Linux bot counts as capacity");
    h.check_replay();
}

#[test]
fn a_task_starts_on_its_first_servable_slice_and_reports_why_it_waits() {
    let mut h = Harness::new();
    h.poll(ConnId(3), "mac-1", 1, &[("pool", "ci"), ("os", "Mac")]);
    h.poll(ConnId(4), "mac-2", 1, &[("pool", "ci"), ("os", "Mac")]);
    let blocker = h.submit(no_wait(request(100, &[("pool", "ci"), ("os", "Mac")])));
    assert_eq!(h.state(blocker.task_id), TaskState::Running);
    let mut two = no_wait(request(100, &[("pool", "ci"), ("gpu", "big")]));
    let mut fallback = two.task_slices[0].clone();
    Arc::make_mut(&mut fallback.properties).dimensions =
        vec![StringPair::new("pool", "ci"), StringPair::new("os", "Mac")];
    two.task_slices.push(fallback);
    let first = h.submit(two.clone());
    assert_eq!((first.state, first.current_task_slice), (TaskState::Running, 1), "straight to the idle mac-2");
    two.name = "second".into();
    let second = h.submit(two);
    assert_eq!((second.state, second.current_task_slice), (TaskState::Pending, 1));
    let (_, out) = h.send(CLIENT, Request::GetTask { task_id: second.task_id });
    let Reply::Task(shown) = &out.replies[0].reply else { panic!() };
    assert_eq!(shown.pending, Some(PendingInfo { matching_bots: 2, busy_bots: 2, queue_position: 0 }));
    h.check_replay();
}

#[test]
fn an_idempotent_task_reuses_a_recent_success_only() {
    let mut h = Harness::new();
    let mut idempotent = request(100, &[("pool", "ci")]);
    Arc::make_mut(&mut idempotent.task_slices[0].properties).idempotent = true;
    let first = h.submit(idempotent.clone());
    let run_id = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, run_id, b"cached", 0);
    let second = h.submit(idempotent.clone());
    assert_eq!((second.state, second.try_number, second.exit_code), (TaskState::Completed, 0, Some(0)));
    assert_eq!((second.deduped_from, second.output_len), (Some(run_id), 6));
    assert_ne!(second.task_id, first.task_id);
    let (_, out) = h.send(CLIENT, Request::GetOutput { task_id: second.task_id, offset: 0, max_bytes: 100 });
    assert_eq!(out.output_reads[0].run_id, Some(RunId::from_u64(run_id).unwrap()), "the output is the first run's");

    // A failure is never a source; a running task neither.
    let mut failing = idempotent.clone();
    Arc::make_mut(&mut failing.task_slices[0].properties).command.push("fail".into());
    h.submit(failing.clone());
    let failed_run = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, failed_run, b"", 1);
    let again = h.submit(failing);
    assert_eq!((again.state, again.deduped_from), (TaskState::Pending, None), "a failure is no source");
    // Past the window, the success is too old.
    h.now_ms += CoreConfig::default().dedup_window_ms + 1;
    assert_eq!(h.submit(idempotent).deduped_from, None);
    h.check_replay();
}

#[test]
fn outputs_are_kept_with_the_result_and_dedup_tells_input_roots_apart() {
    let mut h = Harness::new();
    let with_root = |name: &[u8]| {
        let mut request = request(100, &[("pool", "ci")]);
        let properties = Arc::make_mut(&mut request.task_slices[0].properties);
        properties.idempotent = true;
        properties.cas_input_root =
            Some(Box::new(CasReference { cas_instance: String::new(), digest: Digest::of(name) }));
        request
    };
    h.submit(with_root(b"inputs a"));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    let output_root = Digest::of(b"outputs");
    let mut stats = CasStats::default();
    (stats.download.items_cold, stats.upload.items_cold) = (3, 1);
    let mut ended = outcome(Some(0), RunEnd::Exited);
    ended.cas = Some(Box::new(apiary_protocol::CasOutcome { output_root: Some(output_root), stats }));
    h.update(BOT_1, run_id, 0, b"", Some(ended));
    let (_, out) = h.send(CLIENT, Request::GetTask { task_id: run_id });
    let Reply::Task(first) = &out.replies[0].reply else { panic!() };
    let instance = CoreConfig::default().cas_instance;
    assert_eq!(first.cas_output_root, Some(CasReference { cas_instance: instance.clone(), digest: output_root }));
    assert_eq!(first.cas_stats, Some(stats));

    // The same inputs: the earlier run's outputs, and nothing moved.
    let same = h.submit(with_root(b"inputs a"));
    assert_eq!((same.deduped_from, same.cas_output_root.map(|root| root.digest)), (Some(run_id), Some(output_root)));
    assert_eq!(same.cas_stats, None);
    // Other inputs are another task.
    assert_eq!(h.submit(with_root(b"inputs b")).deduped_from, None);
    // A store other than the daemon's is refused by name.
    let mut foreign = with_root(b"inputs a");
    Arc::make_mut(&mut foreign.task_slices[0].properties).cas_input_root.as_mut().unwrap().cas_instance =
        "projects/other/instances/x".into();
    let (_, out) = h.send(CLIENT, Request::NewTask(foreign));
    let Reply::Error(refusal) = &out.replies[0].reply else { panic!("{:?}", out.replies[0].reply) };
    assert!(refusal.message.contains("task_slices[0].properties.cas_input_root.cas_instance"), "{}", refusal.message);
    assert!(refusal.message.contains(&format!("{instance:?} (--cas-instance)")), "{}", refusal.message);
    h.check_replay();
}

#[test]
fn outputs_a_dead_run_recorded_are_not_the_next_run_s() {
    let mut h = Harness::new();
    let mut r = request(100, &[("pool", "ci")]);
    Arc::make_mut(&mut r.task_slices[0].properties).idempotent = true;
    r.bot_ping_tolerance_secs = 10;
    let task = h.submit(r);
    run_one(&mut h, BOT_1, LINUX);
    // As after a crash that tore the write between a run's outputs and its end.
    let stale =
        TaskOutputs { task_id: task.task_id, output_root: Some(Digest::of(b"stale")), stats: CasStats::default() };
    h.core.apply(&Event::TaskOutputs(stale.clone()));
    h.log.push(Event::TaskOutputs(stale));
    h.advance(10_000);
    assert_eq!(h.state(task.task_id), TaskState::Pending, "retried");
    let second_run = run_one(&mut h, BOT_2, LINUX);
    finish_run(&mut h, BOT_2, second_run, b"ok", 0);
    let (_, out) = h.send(CLIENT, Request::GetTask { task_id: task.task_id });
    let Reply::Task(result) = &out.replies[0].reply else { panic!() };
    assert_eq!((result.state, result.cas_output_root.clone()), (TaskState::Completed, None));
    h.check_replay();
}

#[test]
fn cancel_ends_pending_tasks_and_kill_stops_running_ones_through_their_bot() {
    let mut h = Harness::new();
    let pending = h.submit(request(100, &[("pool", "ci")]));
    let (_, out) = h.send(CLIENT, Request::CancelTask { task_id: pending.task_id, kill_running: false });
    assert!(
        matches!(&out.replies[0].reply, Reply::Canceled { outcome: CancelOutcome::Canceled, task } if task.state == TaskState::Canceled)
    );
    let (_, out) = h.send(CLIENT, Request::CancelTask { task_id: pending.task_id, kill_running: true });
    assert!(matches!(&out.replies[0].reply, Reply::Canceled { outcome: CancelOutcome::AlreadyEnded, .. }));

    let running = h.submit(request(100, &[("pool", "ci")]));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    let (_, out) = h.send(CLIENT, Request::CancelTask { task_id: running.task_id, kill_running: false });
    assert!(matches!(&out.replies[0].reply, Reply::Canceled { outcome: CancelOutcome::LeftRunning, .. }));
    assert_eq!(h.report(BOT_1, run_id, 0, b"", None), Reply::UpdateAck { output_len: 0, must_stop: false });
    let (_, out) = h.send(CLIENT, Request::CancelTask { task_id: running.task_id, kill_running: true });
    assert!(matches!(&out.replies[0].reply, Reply::Canceled { outcome: CancelOutcome::KillRequested, .. }));
    assert_eq!(h.report(BOT_1, run_id, 0, b"bye", None), Reply::UpdateAck { output_len: 3, must_stop: true });
    let outcome = RunOutcome {
        exit_code: Some(-1),
        duration_ms: 9,
        setup_ms: 1,
        teardown_ms: 1,
        end: RunEnd::Killed,
        ..RunOutcome::default()
    };
    h.update(BOT_1, run_id, 3, b"", Some(outcome));
    assert_eq!(h.state(running.task_id), TaskState::Killed);
    h.check_replay();
}

#[test]
fn tasks_list_newest_first_filtered_and_paged() {
    let mut h = Harness::new();
    let mut ids = Vec::new();
    for index in 0..7 {
        let mut r = request(100, &[("pool", "ci")]);
        r.tags = vec![format!("parity:{}", index % 2), "suite:all".into()];
        ids.push(h.submit(r).task_id);
    }
    let (_, out) = h.send(CLIENT, Request::CancelTask { task_id: ids[6], kill_running: false });
    assert_eq!(out.events.len(), 1);
    let page = |h: &mut Harness, query: TaskQuery| {
        let (_, out) = h.send(CLIENT, Request::ListTasks(query));
        match out.replies.into_iter().next().unwrap().reply {
            Reply::Tasks { tasks, next_cursor } => (tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(), next_cursor),
            other => panic!("{other:?}"),
        }
    };
    let even = TaskQuery { tags: vec!["parity:0".into(), "suite:all".into()], limit: 2, ..TaskQuery::default() };
    let (first, cursor) = page(&mut h, even.clone());
    assert_eq!((first, cursor), (vec![ids[6], ids[4]], Some(ids[4])));
    let (second, cursor) = page(&mut h, TaskQuery { cursor, ..even.clone() });
    assert_eq!((second, cursor), (vec![ids[2], ids[0]], None));
    let canceled = TaskQuery { state: StateQuery::One(TaskState::Canceled), ..TaskQuery::default() };
    assert_eq!(page(&mut h, canceled).0, vec![ids[6]]);
    // Over the largest page, a limit is capped, not refused.
    let everything = page(&mut h, TaskQuery { limit: 5000, ..TaskQuery::default() });
    assert_eq!(everything, (ids.iter().rev().copied().collect::<Vec<_>>(), None));
}

#[test]
fn bots_list_filters_by_dimensions_with_alternatives() {
    let mut h = Harness::new();
    h.poll(ConnId(2), "linux-1", 1, LINUX);
    h.poll(ConnId(3), "mac-1", 1, &[("pool", "ci"), ("os", "Mac")]);
    h.poll(ConnId(4), "win-1", 1, &[("pool", "ci"), ("os", "Windows")]);
    let list = |h: &mut Harness, filter: &[(&str, &str)]| {
        let dimensions = filter.iter().map(|(k, v)| StringPair::new(k, v)).collect();
        let (_, out) = h.send(CLIENT, Request::ListBots { dimensions });
        match out.replies.into_iter().next().unwrap().reply {
            Reply::Bots(bots) => bots.into_iter().map(|b| b.bot_id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(list(&mut h, &[]), vec!["linux-1", "mac-1", "win-1"]);
    assert_eq!(list(&mut h, &[("os", "Linux|Mac")]), vec!["linux-1", "mac-1"]);
    assert_eq!(list(&mut h, &[("os", "Windows"), ("pool", "ci")]), vec!["win-1"]);
    // Every bot has its bot id as its `id` dimension, reported or not.
    assert_eq!(list(&mut h, &[("id", "mac-1|win-1"), ("pool", "ci")]), vec!["mac-1", "win-1"]);
    assert_eq!(list(&mut h, &[("id", "mac-1"), ("os", "Linux")]), Vec::<String>::new());
    let (_, out) = h.send(CLIENT, Request::GetBot { bot_id: "nobody".into() });
    assert!(matches!(&out.replies[0].reply, Reply::Error(ErrorReply { code: ErrorCode::NotFound, .. })));
}

const BOT_2: TestBot = TestBot { conn: ConnId(5), bot_id: "bot-2", session_id: 9 };

fn quarantined_poll(h: &mut Harness, bot: TestBot, reason: &str) -> Output {
    let dimensions = LINUX.iter().map(|(key, value)| StringPair::new(key, value)).collect();
    let poll = BotPoll {
        bot_id: bot.bot_id.into(),
        session_id: bot.session_id,
        dimensions,
        software: "test".into(),
        quarantine_reason: reason.into(),
        caches: Vec::new(),
    };
    h.send(bot.conn, Request::BotPoll(poll)).1
}

fn bot_events(h: &mut Harness, query: BotEventQuery) -> (Vec<BotEvent>, Option<u64>) {
    match h.send(CLIENT, Request::ListBotEvents(query)).1.replies.into_iter().next().unwrap().reply {
        Reply::BotEvents { events, next_cursor } => (events, next_cursor),
        other => panic!("{other:?}"),
    }
}

fn count_endings(log: &[Event], run_id: u64) -> usize {
    log.iter()
        .filter(|event| match event {
            Event::TaskFinished(finished) => finished.run_id == Some(run_id),
            Event::TaskRetried { run_id: retried, .. } => *retried == run_id,
            _ => false,
        })
        .count()
}

#[test]
fn a_silent_run_ends_bot_died_after_its_ping_tolerance_and_frees_the_bot() {
    let mut h = Harness::new();
    let mut r = request(100, &[("pool", "ci")]);
    r.bot_ping_tolerance_secs = 30;
    let task = h.submit(r);
    let run_id = run_one(&mut h, BOT_1, LINUX);
    h.advance(20_000);
    h.report(BOT_1, run_id, 0, b"", None);
    h.advance(29_000);
    assert_eq!(h.state(task.task_id), TaskState::Running, "an update restarts the tolerance");
    h.advance(1_000);
    let result = h.core.task(RequestId::from_u64(task.task_id).unwrap()).unwrap();
    assert_eq!((result.state, result.internal_failure), (TaskState::BotDied, true));
    assert_eq!(h.core.bot("bot-1").unwrap().current_run_id, None, "the slot is free");
    h.check_replay();
}

#[test]
fn an_idempotent_task_is_retried_once_on_another_attempt_after_bot_died() {
    let mut h = Harness::new();
    let mut r = request(100, &[("pool", "ci")]);
    Arc::make_mut(&mut r.task_slices[0].properties).idempotent = true;
    r.bot_ping_tolerance_secs = 10;
    let task = h.submit(r);
    let first_run = run_one(&mut h, BOT_1, LINUX);
    h.advance(10_000);
    assert_eq!(h.state(task.task_id), TaskState::Pending, "retried, not ended");
    let second_run = run_one(&mut h, BOT_2, LINUX);
    assert_eq!(second_run, task.task_id | 2, "the retry's run id ends in 2");
    // The first bot's late report is refused and changes nothing.
    let late = h.report(BOT_1, first_run, 0, b"late", Some(0));
    assert!(matches!(late, Reply::Error(ErrorReply { code: ErrorCode::StaleRun, .. })), "{late:?}");
    finish_run(&mut h, BOT_2, second_run, b"ok", 0);
    let result = h.core.task(RequestId::from_u64(task.task_id).unwrap()).unwrap();
    assert_eq!((result.state, result.try_number, result.bot_id.as_deref()), (TaskState::Completed, 2, Some("bot-2")));
    assert_eq!(count_endings(&h.log, first_run), 1);
    // A second death is final.
    let mut r = request(100, &[("pool", "ci")]);
    Arc::make_mut(&mut r.task_slices[0].properties).idempotent = true;
    Arc::make_mut(&mut r.task_slices[0].properties).command.push("again".into());
    r.bot_ping_tolerance_secs = 10;
    let twice = h.submit(r);
    run_one(&mut h, BOT_1, LINUX);
    h.advance(10_000);
    run_one(&mut h, BOT_2, LINUX);
    h.advance(10_000);
    assert_eq!(h.state(twice.task_id), TaskState::BotDied);
    h.check_replay();
}

#[test]
fn a_bot_not_heard_from_is_missing_gets_no_work_and_strands_no_task() {
    let mut h = Harness::new();
    h.poll(ConnId(3), "mac-1", 1, &[("pool", "ci"), ("os", "Mac")]);
    h.advance(CoreConfig::default().long_poll_ms);
    let waiting = h.submit(no_wait(request(100, &[("pool", "ci"), ("os", "Mac"), ("gpu", "none")])));
    assert_eq!(waiting.state, TaskState::NoResource, "no Mac bot has a gpu=none dimension");
    let mut stranded = no_wait(request(100, &[("pool", "ci"), ("os", "Mac")]));
    Arc::make_mut(&mut stranded.task_slices[0].properties).command.push("stranded".into());
    let stranded = h.submit(stranded);
    assert_eq!(stranded.state, TaskState::Pending, "mac-1 is live but not polling");
    h.advance(CoreConfig::default().bot_death_timeout_ms);
    let bot = h.core.bot("mac-1").unwrap();
    assert!(bot.dead);
    assert_eq!(h.state(stranded.task_id), TaskState::NoResource, "its only bot is gone");
    let (events, _) = bot_events(&mut h, BotEventQuery { bot_id: "mac-1".into(), ..BotEventQuery::default() });
    assert!(events.iter().any(|event| event.kind == BotEventKind::Missing));
    h.check_replay();
}

#[test]
fn quarantine_by_health_check_or_by_request_withholds_work_and_capacity() {
    let mut h = Harness::new();
    let out = quarantined_poll(&mut h, BOT_1, "disk full");
    assert!(out.replies.is_empty(), "the poll is held");
    let info = h.core.bot("bot-1").unwrap();
    assert_eq!(info.quarantine_reason.as_deref(), Some("disk full"));
    assert_eq!(h.submit(no_wait(request(100, &[("pool", "ci")]))).state, TaskState::NoResource);
    let pending = h.submit(request(100, &[("pool", "ci")]));
    assert_eq!(pending.state, TaskState::Pending, "a quarantined bot gets no work");
    let out = quarantined_poll(&mut h, BOT_1, "");
    assert!(assignment(&out).is_some(), "a passing check releases the bot");
    assert_eq!(h.core.bot("bot-1").unwrap().quarantine_reason, None);

    let (_, out) = h.send(CLIENT, Request::QuarantineBot { bot_id: "bot-2".into(), reason: "flaky".into() });
    assert!(matches!(&out.replies[0].reply, Reply::Error(ErrorReply { code: ErrorCode::NotFound, .. })));
    h.poll(BOT_2.conn, BOT_2.bot_id, BOT_2.session_id, LINUX);
    let (_, out) = h.send(CLIENT, Request::QuarantineBot { bot_id: "bot-2".into(), reason: "flaky".into() });
    assert!(matches!(out.replies[0].reply, Reply::NoWork), "the held poll is answered so the bot re-polls");
    assert!(quarantined_poll(&mut h, BOT_2, "").replies.is_empty(), "a passing health check does not lift it");
    h.submit(request(100, &[("pool", "ci")]));
    let (_, out) = h.send(CLIENT, Request::UnquarantineBot { bot_id: "bot-2".into() });
    assert!(out.replies.iter().any(|outgoing| matches!(outgoing.reply, Reply::NoWork)));
    assert!(assignment(&h.poll(BOT_2.conn, BOT_2.bot_id, BOT_2.session_id, LINUX)).is_some());
    h.check_replay();
}

#[test]
fn unquarantine_leaves_a_bot_whose_own_health_check_fails_quarantined_and_says_why() {
    let mut h = Harness::new();
    let unquarantine = |h: &mut Harness| {
        let (_, out) = h.send(CLIENT, Request::UnquarantineBot { bot_id: "bot-1".into() });
        match &out.replies.last().unwrap().reply {
            Reply::Bot(info) => info.quarantine_reason.clone(),
            other => panic!("{other:?}"),
        }
    };
    // Quarantined by its own check: a person cannot lift that; the reply says why.
    quarantined_poll(&mut h, BOT_1, "disk full");
    assert_eq!(unquarantine(&mut h).as_deref(), Some("disk full"));
    // Quarantined by a person while the check fails too: lifting the person's
    // quarantine leaves the check's.
    h.send(CLIENT, Request::QuarantineBot { bot_id: "bot-1".into(), reason: "flaky".into() });
    quarantined_poll(&mut h, BOT_1, "disk full");
    assert_eq!(unquarantine(&mut h).as_deref(), Some("disk full"));
    let pending = h.submit(request(100, &[("pool", "ci")]));
    assert_eq!(h.state(pending.task_id), TaskState::Pending, "still no work");
    // Once the check passes, the bot is released.
    assert!(assignment(&quarantined_poll(&mut h, BOT_1, "")).is_some());
    h.check_replay();
}

#[test]
fn terminate_lets_the_current_task_finish_then_shuts_the_bot_down() {
    let mut h = Harness::new();
    h.submit(request(100, &[("pool", "ci")]));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    h.send(CLIENT, Request::TerminateBot { bot_id: "bot-1".into(), reason: String::new() });
    assert_eq!(h.report(BOT_1, run_id, 0, b"", None), Reply::UpdateAck { output_len: 0, must_stop: false });
    finish_run(&mut h, BOT_1, run_id, b"", 0);
    h.submit(request(100, &[("pool", "ci")]));
    let out = h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX);
    assert!(matches!(out.replies[0].reply, Reply::Terminate));
    let info = h.core.bot("bot-1").unwrap();
    assert!(info.shut_down && !info.terminate_requested);
    // A restarted bot is back in service.
    assert!(assignment(&h.poll(BOT_1.conn, BOT_1.bot_id, 99, LINUX)).is_some());
    h.check_replay();
}

#[test]
fn bot_events_are_listed_newest_first_paged_and_bounded() {
    let mut h = Harness::new();
    h.core = Core::new(CoreConfig { bot_events_per_bot: 5, ..CoreConfig::default() });
    for _ in 0..3 {
        h.submit(request(100, &[("pool", "ci")]));
        let run_id = run_one(&mut h, BOT_1, LINUX);
        h.advance(1_000);
        finish_run(&mut h, BOT_1, run_id, b"", 0);
    }
    let query = BotEventQuery { bot_id: "bot-1".into(), limit: 3, ..BotEventQuery::default() };
    let (first, cursor) = bot_events(&mut h, query.clone());
    let kinds: Vec<_> = first.iter().map(|event| event.kind).collect();
    assert_eq!(kinds, vec![BotEventKind::TaskCompleted, BotEventKind::TaskAssigned, BotEventKind::TaskCompleted]);
    assert_eq!(first[0].dimensions, h.core.bot("bot-1").unwrap().dimensions, "with the dimensions of the time");
    let (rest, cursor) = bot_events(&mut h, BotEventQuery { cursor, ..query.clone() });
    assert_eq!((rest.len(), cursor), (2, None), "only the newest 5 are kept");
    let since = first[0].at_unix_ms;
    let (recent, _) = bot_events(&mut h, BotEventQuery { since_unix_ms: Some(since), ..query });
    assert!(recent.iter().all(|event| event.at_unix_ms >= since));
}

/// Swarming once showed a task COMPLETED for a moment before it became
/// BOT_DIED. Here a task's first terminal state is its last.
#[test]
fn regression_a_completed_task_never_becomes_bot_died() {
    let mut h = Harness::new();
    let mut r = request(100, &[("pool", "ci")]);
    r.bot_ping_tolerance_secs = 5;
    let task = h.submit(r);
    let run_id = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, run_id, b"done", 0);
    h.advance(60_000);
    h.poll(BOT_1.conn, BOT_1.bot_id, 1234, LINUX);
    h.advance(CoreConfig::default().bot_death_timeout_ms);
    assert_eq!(h.state(task.task_id), TaskState::Completed);
    assert_eq!(count_endings(&h.log, run_id), 1);
    h.check_replay();
}

/// A runner's final report and the dead-runner reconciler raced, and the task
/// looked finished while its slot stayed held. Here whichever comes first wins,
/// the other changes nothing, and the slot is free either way.
#[test]
fn regression_a_late_final_report_and_the_ping_timeout_release_the_slot_once() {
    for report_first in [true, false] {
        let mut h = Harness::new();
        let mut r = request(100, &[("pool", "ci")]);
        r.bot_ping_tolerance_secs = 5;
        let task = h.submit(r);
        let run_id = run_one(&mut h, BOT_1, LINUX);
        h.now_ms += 5_000;
        let expected = if report_first {
            finish_run(&mut h, BOT_1, run_id, b"", 0);
            h.advance(0);
            TaskState::Completed
        } else {
            h.advance(0);
            let late = h.report(BOT_1, run_id, 0, b"", Some(0));
            assert!(matches!(late, Reply::Error(ErrorReply { code: ErrorCode::StaleRun, .. })));
            TaskState::BotDied
        };
        assert_eq!(h.state(task.task_id), expected);
        assert_eq!(count_endings(&h.log, run_id), 1);
        assert_eq!(h.core.bot("bot-1").unwrap().current_run_id, None);
        h.check_replay();
    }
}

fn poll_with_caches(h: &mut Harness, bot: TestBot, caches: &[&str]) -> Output {
    let dimensions = LINUX.iter().map(|(key, value)| StringPair::new(key, value)).collect();
    let caches = caches.iter().map(|name| CacheInfo { name: name.to_string(), size_bytes: 10 }).collect();
    let poll = BotPoll {
        bot_id: bot.bot_id.into(),
        session_id: bot.session_id,
        dimensions,
        software: "test".into(),
        quarantine_reason: String::new(),
        caches,
    };
    h.send(bot.conn, Request::BotPoll(poll)).1
}

#[test]
fn output_past_the_cap_is_dropped_behind_a_visible_marker_and_the_task_runs_on() {
    let mut h = Harness::new();
    h.core = Core::new(CoreConfig { max_output_bytes: 10, ..CoreConfig::default() });
    let task = h.submit(request(100, &[("pool", "ci")]));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    let out = h.update(BOT_1, run_id, 0, b"0123456789abcdef", None);
    assert_eq!(out.replies[0].reply, Reply::UpdateAck { output_len: 16, must_stop: false }, "all 16 taken");
    let written: Vec<u8> = out.output_writes.iter().flat_map(|write| write.data.clone()).collect();
    assert!(written.starts_with(b"0123456789\n[apiary: output truncated at 10 bytes"), "{written:?}");
    assert_eq!(h.report(BOT_1, run_id, 16, b"more", None), Reply::UpdateAck { output_len: 20, must_stop: false });
    finish_run(&mut h, BOT_1, run_id, b"", 0);
    let result = h.core.task(RequestId::from_u64(task.task_id).unwrap()).unwrap();
    assert!(result.output_truncated);
    assert_eq!(result.output_len, written.len() as u64);
    h.check_replay();
}

#[test]
fn followers_get_output_as_it_arrives_and_a_last_chunk_when_the_task_ends() {
    let mut h = Harness::new();
    let task = h.submit(request(100, &[("pool", "ci")]));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    h.report(BOT_1, run_id, 0, b"early ", None);
    let (follow_id, out) = h.send(CLIENT, Request::FollowOutput { task_id: task.task_id, offset: 0 });
    assert_eq!(out.output_reads.len(), 1);
    assert_eq!(
        (out.output_reads[0].offset, out.output_reads[0].max_bytes, out.output_reads[0].task_ended),
        (0, 6, false)
    );
    let out = h.update(BOT_1, run_id, 6, b"late", None);
    let pushed: Vec<_> = out.output_reads.iter().filter(|read| read.request_id == follow_id).collect();
    assert_eq!(pushed.len(), 1, "the new bytes are pushed");
    assert_eq!((pushed[0].offset, pushed[0].max_bytes, pushed[0].task_ended), (6, 4, false));
    let outcome = RunOutcome {
        exit_code: Some(0),
        duration_ms: 1,
        setup_ms: 1,
        teardown_ms: 1,
        end: RunEnd::Exited,
        ..RunOutcome::default()
    };
    let out = h.update(BOT_1, run_id, 10, b"", Some(outcome));
    let last = out.output_reads.iter().find(|read| read.request_id == follow_id).expect("a last chunk");
    assert!(last.task_ended && last.max_bytes == 0);
    h.check_replay();
}

#[test]
fn secret_bytes_reach_only_the_bot_and_are_forgotten_when_the_task_ends() {
    let mut h = Harness::new();
    let mut r = request(100, &[("pool", "ci")]);
    r.secret_bytes = Some(apiary_protocol::SecretBytes(b"hunter2".to_vec()));
    Arc::make_mut(&mut r.task_slices[0].properties).idempotent = true;
    let task = h.submit(r.clone());
    assert!(task.has_secret_bytes && task.request.secret_bytes.is_none(), "results never carry them");
    let out = h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX);
    let handed = assignment(&out).unwrap();
    assert_eq!(handed.secret_bytes.as_ref().map(|secret| secret.0.as_slice()), Some(&b"hunter2"[..]));
    assert_eq!(format!("{:?}", handed.secret_bytes), "Some(SecretBytes(7 bytes))", "Debug never shows them");
    let run_id = handed.run_id;
    finish_run(&mut h, BOT_1, run_id, b"", 0);
    assert!(h.core.tasks[&RequestId::from_u64(task.task_id).unwrap()].secret_bytes.is_none());
    assert_eq!(h.submit(r).deduped_from, None, "tasks with secrets are never deduplicated");
    h.check_replay();
}

#[test]
fn a_task_goes_to_the_waiting_bot_that_holds_its_named_caches() {
    let mut h = Harness::new();
    poll_with_caches(&mut h, BOT_1, &[]);
    poll_with_caches(&mut h, BOT_2, &["git", "pip"]);
    let mut r = request(100, &[("pool", "ci")]);
    Arc::make_mut(&mut r.task_slices[0].properties).caches =
        vec![NamedCache { name: "git".into(), path: "cache/git".into() }];
    let (_, out) = h.send(CLIENT, Request::NewTask(r));
    let handed = out.replies.iter().find(|outgoing| matches!(outgoing.reply, Reply::Assignment(_))).unwrap();
    assert_eq!(handed.conn, BOT_2.conn, "bot-2 holds the git cache, though bot-1 waited longer");
    assert_eq!(h.core.bot("bot-2").unwrap().caches.len(), 2);
    h.check_replay();
}

#[test]
fn a_timed_out_run_says_which_timeout() {
    let mut h = Harness::new();
    let task = h.submit(request(100, &[("pool", "ci")]));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    let outcome = RunOutcome {
        exit_code: Some(-1),
        duration_ms: 9,
        setup_ms: 2,
        teardown_ms: 3,
        end: RunEnd::IoTimeout,
        ..RunOutcome::default()
    };
    h.update(BOT_1, run_id, 0, b"", Some(outcome));
    let result = h.core.task(RequestId::from_u64(task.task_id).unwrap()).unwrap();
    assert_eq!(
        (result.state, result.timeout, result.setup_ms, result.teardown_ms),
        (TaskState::TimedOut, Some(TimeoutKind::Io), Some(2), Some(3))
    );
    h.check_replay();
}

fn with_id(bot: TestBot) -> Vec<(&'static str, &'static str)> {
    vec![("pool", "ci"), ("os", "Linux"), ("id", bot.bot_id)]
}

#[test]
fn a_task_naming_a_bot_by_id_runs_only_there_and_bots_differing_by_id_share_a_class() {
    let mut h = Harness::new();
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, &with_id(BOT_1));
    h.poll(BOT_2.conn, BOT_2.bot_id, BOT_2.session_id, &with_id(BOT_2));
    let classes = |h: &Harness| (h.core.bots["bot-1"].class, h.core.bots["bot-2"].class);
    let (class_1, class_2) = classes(&h);
    assert_eq!(class_1, class_2, "the id dimension is not part of a class");
    // bot-1 parked first, yet the task names bot-2.
    let (_, out) = h.send(CLIENT, Request::NewTask(request(100, &[("pool", "ci"), ("id", "bot-2")])));
    assert_eq!(assignment(&out).map(|_| out.replies[0].conn), Some(BOT_2.conn));
    // A pending task naming bot-1 waits behind nothing else and only bot-1 takes it.
    let named = h.submit(request(200, &[("pool", "ci"), ("id", "bot-1|bot-3")]));
    assert_eq!(named.state, TaskState::Running, "handed to the parked bot-1");
    let queued = h.submit(request(200, &[("pool", "ci"), ("id", "bot-1")]));
    let anyone = h.submit(request(100, &[("pool", "ci")]));
    let out = h.poll(ConnId(6), "bot-3", 1, &[("pool", "ci"), ("os", "Linux"), ("id", "bot-3")]);
    assert_eq!(assignment(&out).unwrap().run_id & !0xf, anyone.task_id, "bot-3 takes the task for anyone");
    assert_eq!(h.state(queued.task_id), TaskState::Pending);
    let tasks_for = |h: &Harness, bot: &str| h.core.queues.best_for_bot(h.core.bots[bot].class, bot);
    assert!(tasks_for(&h, "bot-2").is_none(), "bot-2 is not named by the queued task");
    assert!(tasks_for(&h, "bot-1").is_some());
    h.check_replay();
}

#[test]
fn a_task_naming_an_unknown_or_unfit_bot_has_no_resource_and_a_named_bot_going_away_strands_it() {
    let mut h = Harness::new();
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, &with_id(BOT_1));
    let ghost = h.submit(no_wait(request(100, &[("pool", "ci"), ("id", "ghost")])));
    assert_eq!(ghost.state, TaskState::NoResource, "no bot has that id");
    let unfit = h.submit(no_wait(request(100, &[("pool", "ci"), ("os", "Mac"), ("id", "bot-1")])));
    assert_eq!(unfit.state, TaskState::NoResource, "bot-1 is not a Mac");
    let running = h.submit(no_wait(request(100, &[("pool", "ci"), ("id", "bot-1")])));
    assert_eq!(running.state, TaskState::Running);
    let mut waiting = no_wait(request(100, &[("pool", "ci"), ("id", "bot-1")]));
    Arc::make_mut(&mut waiting.task_slices[0].properties).command.push("second".into());
    let waiting = h.submit(waiting);
    let (_, out) = h.send(CLIENT, Request::GetTask { task_id: waiting.task_id });
    let Reply::Task(shown) = &out.replies[0].reply else { panic!() };
    assert_eq!(shown.pending, Some(PendingInfo { matching_bots: 1, busy_bots: 1, queue_position: 0 }));
    h.advance(CoreConfig::default().bot_death_timeout_ms);
    assert_eq!(h.state(waiting.task_id), TaskState::NoResource, "its only bot is gone");
    h.check_replay();
}

#[test]
fn a_bot_whose_id_dimension_is_not_its_bot_id_is_refused() {
    let mut h = Harness::new();
    let out = h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, &[("pool", "ci"), ("id", "bot-2")]);
    let Reply::Error(error) = &out.replies[0].reply else { panic!("{:?}", out.replies) };
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(error.message.contains("dimensions[1].value") && error.message.contains("bot-1"), "{}", error.message);
    assert!(h.core.bot("bot-1").is_none());
}

#[test]
fn timers_come_due_in_deadline_order_across_both_heaps() {
    let mut timers = Timers::default();
    let expiry = |n| Timer::SliceExpiry { task_id: RequestId::first_of_millisecond(n) };
    let ping = |n| Timer::RunPing { run_id: RequestId::first_of_millisecond(n).run(1) };
    timers.push(30, expiry(1));
    timers.push(10, ping(1));
    timers.push(20, expiry(2));
    timers.push(40, ping(2));
    timers.push(25, Timer::RetentionPass);
    assert_eq!(timers.next_deadline_ms(), Some(10));
    assert_eq!(timers.pop_due(5), None);
    let due: Vec<Timer> = std::iter::from_fn(|| timers.pop_due(35)).collect();
    assert_eq!(
        due,
        vec![ping(1), expiry(2), Timer::RetentionPass, expiry(1)],
        "an expiry and a ping of one task apart"
    );
    assert_eq!(timers.next_deadline_ms(), Some(40));
    timers.cancel(40, ping(2));
    timers.cancel(40, ping(2));
    assert_eq!(timers.next_deadline_ms(), None, "a cancelled timer never comes due");
}

#[test]
fn a_poll_whose_packed_dimensions_are_malformed_is_refused() {
    // What a peer could send: bytes rkyv accepts as packed dimensions, that do not unpack.
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&vec![9u8, 0, 0, 0, b'p']).unwrap();
    let dimensions = rkyv::from_bytes::<PackedDimensions, rkyv::rancor::Error>(&bytes).unwrap();
    let poll = BotPoll {
        bot_id: "bot-1".into(),
        session_id: 1,
        dimensions,
        software: "test".into(),
        quarantine_reason: String::new(),
        caches: Vec::new(),
    };
    let mut h = Harness::new();
    let (_, out) = h.send(ConnId(2), Request::BotPoll(poll));
    let Reply::Error(error) = &out.replies[0].reply else { panic!("{:?}", out.replies) };
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(error.message.starts_with("dimensions: malformed"), "{}", error.message);
    assert!(h.core.bot("bot-1").is_none());
}

#[test]
fn on_a_full_disk_new_tasks_are_refused_no_run_starts_and_output_ends_behind_a_marker() {
    let mut h = Harness::new();
    let running = h.submit(request(100, &[("pool", "ci")]));
    let run_id = assignment(&h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX)).expect("assigned").run_id;
    let queued = h.submit(request(100, &[("pool", "ci")]));
    let bot_2 = TestBot { conn: ConnId(3), bot_id: "bot-2", session_id: 9 };
    let other_pool: &[(&str, &str)] = &[("pool", "other")];
    assert!(h.poll(ConnId(4), "bot-3", 5, other_pool).replies.is_empty(), "bot-3 waits for work");

    let mut out = Output::default();
    h.core.set_storage_trouble(Some("no space in /data".into()), &mut out);
    h.record(&out);
    let answered: Vec<_> = out.replies.iter().map(|r| (r.conn, r.reply.clone())).collect();
    assert_eq!(answered, [(ConnId(4), Reply::NoWork)], "the waiting bot polls again");
    let (_, refused) = h.send(CLIENT, Request::NewTask(request(100, &[("pool", "ci")])));
    match &refused.replies[0].reply {
        Reply::Error(ErrorReply { code: ErrorCode::Unavailable, message }) => {
            assert!(message.contains("no space in /data"), "{message}");
        }
        other => panic!("a new task on a full disk: {other:?}"),
    }
    assert!(refused.events.is_empty(), "a refusal writes nothing");
    assert!(h.poll(bot_2.conn, bot_2.bot_id, bot_2.session_id, LINUX).replies.is_empty(), "no new run starts");
    assert_eq!(h.state(queued.task_id), TaskState::Pending);

    let out = h.update(BOT_1, run_id, 0, b"lost", None);
    let written: Vec<u8> = out.output_writes.iter().flat_map(|write| write.data.clone()).collect();
    assert_eq!(written, storage_trouble::DISK_FULL_MARKER.as_bytes(), "output ends behind the marker");
    let marker_len = written.len() as u64;
    let reply = h.report(BOT_1, run_id, 4, b"", Some(0));
    assert_eq!(reply, Reply::UpdateAck { output_len: 4, must_stop: false });
    let ended = h.core.task(RequestId::from_u64(running.task_id).unwrap()).unwrap();
    assert_eq!((ended.state, ended.output_truncated), (TaskState::Completed, true), "the running task finishes");
    assert_eq!(ended.output_len, marker_len);

    let mut out = Output::default();
    h.core.set_storage_trouble(None, &mut out);
    h.record(&out);
    assert!(out.replies.iter().any(|r| r.conn == bot_2.conn && r.reply == Reply::NoWork), "bot-2 polls again");
    let back = h.poll(bot_2.conn, bot_2.bot_id, bot_2.session_id, LINUX);
    assert_eq!(
        assignment(&back).map(|a| a.run_id & !0xf),
        Some(queued.task_id),
        "work again once the disk takes writes"
    );
    h.check_replay();
}

/// Whether a reply fits in one frame, as the shell would send it.
fn fits_a_frame(reply: &Reply) -> bool {
    apiary_protocol::frame::encode_reply(1, reply, &mut Vec::new()).is_ok()
}

fn large_tags(index: usize) -> Vec<String> {
    let value_bytes = apiary_protocol::limits::MAX_TAG_VALUE_BYTES;
    (0..apiary_protocol::limits::MAX_TAGS).map(|n| format!("t{index}-{n}:{}", "v".repeat(value_bytes))).collect()
}

#[test]
fn a_page_of_large_tasks_stops_early_by_bytes_and_hands_back_a_cursor() {
    let mut h = Harness::new();
    let mut ids = Vec::new();
    for index in 0..80 {
        let mut large = request(100, &[("pool", "ci")]);
        large.tags = large_tags(index);
        ids.push(h.submit(large).task_id);
    }
    ids.reverse();
    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let (_, out) = h.send(CLIENT, Request::ListTasks(TaskQuery { cursor, ..TaskQuery::default() }));
        let reply = &out.replies[0].reply;
        assert!(fits_a_frame(reply), "a page over the frame limit");
        let Reply::Tasks { tasks, next_cursor } = reply else { panic!("{reply:?}") };
        assert!(!tasks.is_empty());
        listed.extend(tasks.iter().map(|task| task.task_id));
        pages += 1;
        cursor = *next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(listed, ids, "every task once, newest first");
    assert!(pages > 1, "80 tasks of about 70 KiB each take more than one page");
}

#[test]
fn a_task_whose_request_is_near_the_limit_is_shown_and_canceled_and_a_larger_one_refused() {
    let mut h = Harness::new();
    let limit = apiary_protocol::limits::MAX_TASK_REQUEST_BYTES;
    let mut near = request(100, &[("pool", "ci")]);
    let arg = "a".repeat(apiary_protocol::limits::MAX_ARG_BYTES);
    let mut slice_index = 0;
    while wire_size::request_bytes(&near) + 2 * arg.len() < limit {
        let properties = Arc::make_mut(&mut near.task_slices[slice_index].properties);
        if properties.command.len() == apiary_protocol::limits::MAX_COMMAND_ARGS {
            let mut next = near.task_slices[slice_index].clone();
            next.expiration_secs += 1;
            Arc::make_mut(&mut next.properties).command.truncate(1);
            near.task_slices.push(next);
            slice_index += 1;
        } else {
            properties.command.push(arg.clone());
        }
    }
    assert!(wire_size::request_bytes(&near) > limit - 3 * arg.len());
    let mut over = near.clone();
    over.tags = large_tags(0);
    let (_, out) = h.send(CLIENT, Request::NewTask(over));
    assert!(out.events.is_empty(), "a refused request changes nothing");
    let Reply::Error(refusal) = &out.replies[0].reply else { panic!("{:?}", out.replies[0].reply) };
    assert!(
        refusal.message.starts_with("request: ") && refusal.message.ends_with(&format!("limit of {limit}")),
        "{}",
        refusal.message
    );

    let task_id = h.submit(near).task_id;
    let (_, out) = h.send(CLIENT, Request::GetTask { task_id });
    assert!(matches!(out.replies[0].reply, Reply::Task(_)) && fits_a_frame(&out.replies[0].reply));
    let (_, out) = h.send(CLIENT, Request::CancelTask { task_id, kill_running: false });
    assert!(matches!(out.replies[0].reply, Reply::Canceled { outcome: CancelOutcome::Canceled, .. }));
    assert!(fits_a_frame(&out.replies[0].reply));
    h.check_replay();
}

#[test]
fn a_page_of_bot_events_stops_early_by_bytes() {
    let mut h = Harness::new();
    h.core = Core::new(CoreConfig { bot_events_per_bot: 1000, ..CoreConfig::default() });
    let limits = (apiary_protocol::limits::MAX_DIMENSION_KEY_BYTES, apiary_protocol::limits::MAX_DIMENSION_VALUE_BYTES);
    let keys: Vec<String> = (0..100).map(|n| format!("k{n:02}{}", "k".repeat(limits.0 - 4))).collect();
    let value = "v".repeat(limits.1);
    let mut dimensions: Vec<(&str, &str)> = vec![("pool", "ci"), ("id", BOT_1.bot_id)];
    dimensions.extend(keys.iter().map(|key| (key.as_str(), value.as_str())));
    for session_id in 0..200 {
        // Every new session is an event that carries all the bot's dimensions.
        h.poll(BOT_1.conn, BOT_1.bot_id, session_id, &dimensions);
    }
    let query = BotEventQuery { bot_id: BOT_1.bot_id.into(), limit: 1000, ..BotEventQuery::default() };
    let (_, out) = h.send(CLIENT, Request::ListBotEvents(query.clone()));
    assert!(fits_a_frame(&out.replies[0].reply));
    let (first, cursor) = bot_events(&mut h, query.clone());
    assert!(first.len() < 200 && cursor.is_some(), "{} events in the first page", first.len());
    let (rest, cursor) = bot_events(&mut h, BotEventQuery { cursor, ..query });
    assert_eq!((first.len() + rest.len(), cursor), (200, None));
}

#[test]
fn a_bots_long_failure_reason_is_cut_and_its_long_texts_refused_by_name() {
    let mut h = Harness::new();
    h.submit(request(100, &[("pool", "ci")]));
    let run_id = run_one(&mut h, BOT_1, LINUX);
    let reason = "é".repeat(apiary_protocol::limits::MAX_REASON_BYTES);
    let ended = outcome(None, RunEnd::InternalError(reason));
    h.update(BOT_1, run_id, 0, b"", Some(ended));
    let shown = h.core.task(RunId::from_u64(run_id).unwrap().request()).unwrap().failure_reason;
    assert!(shown.len() <= MAX_REASON_BYTES && shown.ends_with(" [cut]"), "{} bytes", shown.len());

    let dimensions = LINUX.iter().map(|(key, value)| StringPair::new(key, value)).collect();
    let long = BotPoll {
        bot_id: "bot-long".into(),
        session_id: 1,
        dimensions,
        software: "s".repeat(MAX_SOFTWARE_BYTES + 1),
        quarantine_reason: String::new(),
        caches: Vec::new(),
    };
    let (_, out) = h.send(ConnId(9), Request::BotPoll(long.clone()));
    let Reply::Error(refusal) = &out.replies[0].reply else { panic!() };
    assert_eq!(
        refusal.message,
        format!("software: {} bytes is over the limit of {MAX_SOFTWARE_BYTES}", MAX_SOFTWARE_BYTES + 1)
    );
    let caches = vec![CacheInfo { name: "c".into(), size_bytes: 1 }; MAX_BOT_CACHES + 1];
    let (_, out) = h.send(ConnId(9), Request::BotPoll(BotPoll { software: "s".into(), caches, ..long }));
    assert!(matches!(&out.replies[0].reply, Reply::Error(e) if e.message.starts_with("caches: ")));
    assert!(h.core.bot("bot-long").is_none(), "a refused poll changes nothing");
}

#[test]
fn a_snapshot_of_more_tasks_than_a_part_restores_whole_and_a_damaged_part_is_refused() {
    use crate::core::snapshot::{CoreSnapshot, PART_TASKS};
    let mut core = Core::new(CoreConfig::default());
    let mut id = RequestId::first_of_millisecond(1_700_000_000_000);
    for n in 0..PART_TASKS + 100 {
        let request = NewTaskRequest { tags: vec![format!("shard:{}", n % 3)], ..request(100, &[("pool", "ci")]) };
        let created = TaskCreated { task_id: id.as_u64(), created_ms: 1_700_000_000_000, slice_index: 0, request };
        core.apply(&Event::TaskCreated(created));
        id = id.next();
    }
    let bytes = core.snapshot().encode();
    let view = CoreSnapshot::access(&bytes).expect("a snapshot reads back");
    assert_eq!(view.part_count(), 2);
    let restored = Core::restore(CoreConfig::default(), &view).expect("restores");
    assert_eq!(restored.task_count(), PART_TASKS + 100);
    restored.check_invariants();
    // Tags come back into the tag index; the rest of the text is in the text
    // file, which this test has none of.
    let last = restored.last_task_id.expect("tasks");
    assert!(restored.tasks.has_tag(last, &format!("shard:{}", (PART_TASKS + 99) % 3)));
    let without_tags = |mut snapshot: CoreSnapshot| {
        snapshot.tasks.iter_mut().for_each(|task| task.request.tags.clear());
        snapshot
    };
    assert!(without_tags(restored.snapshot()) == without_tags(core.snapshot()), "the same state comes back");

    // The last bytes of a part are its root (where its tasks are): pointing
    // them outside the part fails its validation, in whichever thread reads it.
    let mut damaged = bytes.clone();
    let span = &view.head.task_parts[1];
    let end = (span.offset.to_native() + span.len.to_native()) as usize;
    damaged[end - 8..end].fill(0xff);
    let view = CoreSnapshot::access(&damaged).expect("the head is intact");
    let error = Core::restore(CoreConfig::default(), &view).err().expect("a damaged part is refused");
    assert!(error.to_string().contains("task part 1"), "{error}");
}

#[test]
fn the_principal_is_recorded_on_the_tasks_it_creates_and_the_bot_changes_it_asks_for() {
    let mut h = Harness::new();
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX);
    h.principal = Some("alice".into());
    let mut forged = request(100, &[("pool", "ci")]);
    forged.tags.push("authenticated:mallory".into());
    let (_, out) = h.send(CLIENT, Request::NewTask(forged));
    let Reply::Error(refusal) = &out.replies[0].reply else { panic!("a forged principal is refused") };
    assert!(refusal.message.starts_with("tags[0]: \"authenticated:mallory\": the daemon sets"), "{}", refusal.message);
    let created = h.submit(request(100, &[("pool", "other")]));
    assert_eq!(created.request.tags, ["priority:100", "authenticated:alice", "pool:other"]);
    for request in [
        Request::QuarantineBot { bot_id: "bot-1".into(), reason: "flaky".into() },
        Request::UnquarantineBot { bot_id: "bot-1".into() },
        Request::TerminateBot { bot_id: "bot-1".into(), reason: String::new() },
    ] {
        h.send(CLIENT, request);
    }
    let (events, _) = bot_events(&mut h, BotEventQuery { bot_id: "bot-1".into(), ..BotEventQuery::default() });
    let messages: Vec<(BotEventKind, &str)> =
        events.iter().take(3).map(|event| (event.kind, event.message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (BotEventKind::TerminateRequested, "by alice"),
            (BotEventKind::Unquarantined, "by alice"),
            (BotEventKind::Quarantined, "by alice: flaky"),
        ]
    );
    h.principal = None;
    let tags = h.submit(request(100, &[("pool", "other")])).request.tags;
    assert!(!tags.iter().any(|tag| tag.starts_with("authenticated:")), "open access names no one: {tags:?}");
    h.check_replay();
}

/// Sends a new task with a lineage; answers with the task as `GetTask` shows it
/// when it was acknowledged, else with the refusal.
fn with_lineage(h: &mut Harness, request: NewTaskRequest, uuid: &str, parent: Option<u64>) -> Reply {
    let lineage = apiary_protocol::TaskLineage { request_uuid: uuid.to_string(), parent_task_id: parent };
    let (_, out) = h.send(CLIENT, Request::NewTaskWithLineage { request, lineage });
    match &out.replies.last().expect("a reply").reply {
        Reply::Created(ack) => h.send(CLIENT, Request::GetTask { task_id: ack.task_id }).1.replies[0].reply.clone(),
        refusal => refusal.clone(),
    }
}

fn task_of(reply: &Reply) -> &TaskResult {
    match reply {
        Reply::Task(result) => result,
        other => panic!("expected a task, got {other:?}"),
    }
}

/// The lineage of a core rebuilt from a snapshot of `core`, as records.
fn restored_lineage(core: &Core) -> (Vec<crate::core::lineage::UuidEntry>, Vec<crate::core::lineage::LinkEntry>) {
    let bytes = core.snapshot().encode();
    let view = crate::core::CoreSnapshot::access(&bytes).expect("a snapshot reads back");
    Core::restore(CoreConfig::default(), &view).expect("restores").lineage.records()
}

#[test]
fn a_request_uuid_seen_before_answers_with_the_first_task_for_seven_days() {
    let mut h = Harness::new();
    let first = task_of(&with_lineage(&mut h, request(100, &[("pool", "ci")]), "u-1", None)).task_id;
    let (_, out) = h.send(
        CLIENT,
        Request::NewTaskWithLineage {
            request: request(50, &[("pool", "other")]),
            lineage: apiary_protocol::TaskLineage { request_uuid: "u-1".into(), parent_task_id: None },
        },
    );
    assert!(out.events.is_empty(), "nothing is created again");
    let Reply::Created(ack) = &out.replies[0].reply else { panic!("{:?}", out.replies[0].reply) };
    assert_eq!(ack.task_id, first);
    // Another requester's uuid is its own.
    let mut by_bob = request(100, &[("pool", "ci")]);
    by_bob.user = "bob".into();
    assert_ne!(task_of(&with_lineage(&mut h, by_bob, "u-1", None)).task_id, first);
    assert_eq!(restored_lineage(&h.core), h.core.lineage.records(), "a snapshot keeps the uuids");
    h.advance(u64::from(apiary_protocol::limits::REQUEST_UUID_WINDOW_SECS) * 1000 + 1);
    let later = task_of(&with_lineage(&mut h, request(100, &[("pool", "ci")]), "u-1", None)).task_id;
    assert_ne!(later, first, "after seven days the uuid creates a new task");
    h.check_replay();
}

#[test]
fn children_that_have_not_started_are_canceled_when_their_parent_ends() {
    let mut h = Harness::new();
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX);
    let parent = h.submit(request(100, LINUX));
    let run_id = parent.run_id.expect("the parent runs on bot-1");
    let running = task_of(&with_lineage(&mut h, request(100, &[("pool", "ci")]), "", Some(run_id))).clone();
    assert!(
        running.request.tags.contains(&format!("parent_task_id:{:016x}", parent.task_id)),
        "{:?}",
        running.request.tags
    );
    let pending = task_of(&with_lineage(&mut h, request(100, &[("pool", "gpu")]), "", Some(parent.task_id))).clone();
    let grandchild =
        task_of(&with_lineage(&mut h, request(100, &[("pool", "gpu")]), "", Some(pending.task_id))).clone();
    assert_eq!(restored_lineage(&h.core), h.core.lineage.records(), "a snapshot keeps the links");
    h.report(BOT_1, run_id, 0, b"", Some(0));
    assert_eq!(h.state(parent.task_id), TaskState::Completed);
    assert_eq!(h.state(pending.task_id), TaskState::Canceled);
    assert_eq!(h.state(grandchild.task_id), TaskState::Canceled);
    let reason = h.core.task(RequestId::from_u64(pending.task_id).unwrap()).unwrap().failure_reason;
    assert_eq!(reason, format!("its parent task {:016x} ended", parent.task_id));
    h.check_replay();

    let refused = with_lineage(&mut h, request(100, &[("pool", "ci")]), "", Some(parent.task_id));
    let Reply::Error(refusal) = refused else { panic!("{refused:?}") };
    assert_eq!(
        refusal.message,
        format!(
            "parent_task_id: task {:016x} has already ended (COMPLETED); its child would be canceled at once",
            parent.task_id
        )
    );
    let Reply::Error(refusal) = with_lineage(&mut h, request(100, &[("pool", "ci")]), "", Some(0x10)) else { panic!() };
    assert_eq!(refusal.message, "parent_task_id: there is no task 0000000000000010");
}

#[test]
fn automatic_tags_let_tag_queries_find_tasks_as_in_swarming() {
    let mut h = Harness::new();
    let mut asked = request(42, &[("pool", "ci"), ("os", "Linux|Mac"), ("gpu", "nvidia"), ("gpu", "4090")]);
    asked.user = "ana".into();
    asked.tags = vec!["pool:ci".into(), "team:infra".into()];
    let created = h.submit(asked);
    assert_eq!(
        created.request.tags,
        ["pool:ci", "team:infra", "priority:42", "user:ana", "os:Linux|Mac", "gpu:nvidia", "gpu:4090"]
    );
    let (_, out) = h.send(
        CLIENT,
        Request::ListTasks(TaskQuery { tags: vec!["gpu:4090".into(), "user:ana".into()], ..TaskQuery::default() }),
    );
    let Reply::Tasks { tasks, .. } = &out.replies[0].reply else { panic!() };
    assert_eq!(tasks.iter().map(|task| task.task_id).collect::<Vec<_>>(), [created.task_id]);
    let mut forged = request(100, &[("pool", "ci")]);
    forged.tags.push("parent_task_id:0000000000000010".into());
    let (_, out) = h.send(CLIENT, Request::NewTask(forged));
    let Reply::Error(refusal) = &out.replies[0].reply else { panic!() };
    assert_eq!(refusal.message, "tags[0]: \"parent_task_id:0000000000000010\": the daemon sets parent_task_id: itself");
}

#[test]
fn dimension_tags_are_derived_not_stored_and_found_after_a_restore() {
    use crate::core::snapshot::CoreSnapshot;
    let mut h = Harness::new();
    let mut asked = request(42, &[("pool", "ci"), ("os", "Linux|Mac")]);
    asked.tags = vec!["os:Linux|Mac".into(), "team:infra".into()];
    let Reply::ValidRequest(valid) = one_reply(h.send(CLIENT, Request::ValidateTask(asked.clone())).1) else {
        panic!("a valid request")
    };
    let shown = ["os:Linux|Mac", "team:infra", "priority:42", "pool:ci"];
    assert_eq!(valid.tags, shown, "a validated request shows every tag");
    let created = h.submit(asked);
    assert_eq!(created.request.tags, shown);
    let stored = ["os:Linux|Mac", "team:infra", "priority:42"];
    let logged = h.log.iter().find_map(|event| match event {
        Event::TaskCreated(created) => Some(created.request.tags.clone()),
        _ => None,
    });
    assert_eq!(logged.expect("a creation"), stored, "the log stores no derived tag");
    let snapshot = h.core.snapshot();
    assert_eq!(snapshot.tasks[0].request.tags, stored, "nor does a snapshot");

    let bytes = snapshot.encode();
    let mut restored =
        Core::restore(CoreConfig::default(), &CoreSnapshot::access(&bytes).expect("reads back")).expect("restores");
    for tag in ["pool:ci", "os:Linux|Mac", "priority:42", "team:infra"] {
        let query = TaskQuery { tags: vec![tag.into()], ..TaskQuery::default() };
        let mut out = Output::default();
        let input = Input::Request {
            conn: CLIENT,
            request_id: 1,
            request: Request::CountTasks(query),
            principal: None,
            grants: None,
        };
        restored.handle(h.now_ms, input, &mut out);
        assert!(matches!(one_reply(out), Reply::TaskCount { count: 1, .. }), "a restored task is found by {tag}");
    }
    for tag in ["pool:c", "os:Linux", "team:infra2"] {
        let query = TaskQuery { tags: vec![tag.into()], ..TaskQuery::default() };
        assert!(matches!(one_reply(h.send(CLIENT, Request::CountTasks(query)).1), Reply::TaskCount { count: 0, .. }));
    }
    h.check_replay();
}

#[test]
fn a_dimension_key_given_twice_needs_a_bot_with_both_values() {
    let mut h = Harness::new();
    let both = &[("pool", "ci"), ("gpu", "nvidia"), ("gpu", "4090")];
    let task = h.submit(request(100, both));
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, &[("pool", "ci"), ("gpu", "nvidia")]);
    assert_eq!(h.state(task.task_id), TaskState::Pending, "a bot with one of the values does not match");
    let bot_2 = TestBot { conn: ConnId(3), bot_id: "bot-2", session_id: 8 };
    h.poll(bot_2.conn, bot_2.bot_id, bot_2.session_id, &[("pool", "ci"), ("gpu", "4090"), ("gpu", "nvidia")]);
    assert_eq!(h.state(task.task_id), TaskState::Running);
    h.check_replay();
}

fn one_reply(out: Output) -> Reply {
    out.replies.into_iter().next().expect("a reply").reply
}

#[test]
fn swarming_query_states_and_creation_windows_select_and_count_tasks() {
    let mut h = Harness::new();
    let first_ms = h.now_ms;
    let succeeded = h.submit(request(100, &[("pool", "ci")])).task_id;
    let run_id = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, run_id, b"", 0);
    h.advance(1000);
    let failed = h.submit(request(100, &[("pool", "ci")])).task_id;
    let run_id = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, run_id, b"", 3);
    h.advance(1000);
    let mut idempotent = request(100, &[("pool", "ci")]);
    idempotent.task_slices[0] = TaskSlice {
        properties: Arc::new(TaskProperties {
            idempotent: true,
            ..TaskProperties::clone(&idempotent.task_slices[0].properties)
        }),
        ..idempotent.task_slices[0].clone()
    };
    h.submit(idempotent.clone());
    let run_id = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, run_id, b"", 0);
    let deduped = h.submit(idempotent).task_id;
    let running = h.submit(request(100, &[("pool", "ci")])).task_id;
    run_one(&mut h, BOT_1, LINUX);
    let pending = h.submit(request(100, &[("pool", "ci")])).task_id;
    let ids = |h: &mut Harness, query: TaskQuery| match one_reply(h.send(CLIENT, Request::ListTasks(query.clone())).1) {
        Reply::Tasks { tasks, .. } => tasks.iter().map(|task| task.task_id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let count = |h: &mut Harness, query: TaskQuery| match one_reply(h.send(CLIENT, Request::CountTasks(query)).1) {
        Reply::TaskCount { count, capped: false } => count,
        other => panic!("{other:?}"),
    };
    let state = |state| TaskQuery { state, ..TaskQuery::default() };
    assert_eq!(ids(&mut h, state(StateQuery::PendingRunning)), [pending, running]);
    assert_eq!(ids(&mut h, state(StateQuery::CompletedFailure)), [failed]);
    assert_eq!(ids(&mut h, state(StateQuery::Deduped)), [deduped]);
    assert_eq!(ids(&mut h, state(StateQuery::CompletedSuccess)).len(), 3, "the deduped one, its source and the first");
    assert!(ids(&mut h, state(StateQuery::CompletedSuccess)).contains(&succeeded));
    assert_eq!(count(&mut h, state(StateQuery::All)), 6);
    assert_eq!(count(&mut h, state(StateQuery::One(TaskState::Completed))), 4);
    let window = TaskQuery {
        created_since_unix_ms: Some(first_ms + 1),
        created_until_unix_ms: Some(first_ms + 2000),
        ..TaskQuery::default()
    };
    assert_eq!(ids(&mut h, window.clone()), [failed]);
    assert_eq!(count(&mut h, window), 1);
    let huge = TaskQuery { created_since_unix_ms: Some(u64::MAX), ..TaskQuery::default() };
    assert_eq!(count(&mut h, huge), 0, "a time past what an id can name matches nothing, and does not wrap");
    h.check_replay();
}

#[test]
fn cancel_by_tags_takes_every_tag_pages_with_a_cursor_and_leaves_running_tasks_unless_asked() {
    let mut h = Harness::new();
    let tagged = |h: &mut Harness, tags: &[&str]| {
        let mut r = request(100, &[("pool", "ci")]);
        r.tags = tags.iter().map(|tag| tag.to_string()).collect();
        h.submit(r).task_id
    };
    let running = tagged(&mut h, &["build:7", "kind:test"]);
    run_one(&mut h, BOT_1, LINUX);
    let other_kind = tagged(&mut h, &["build:7", "kind:lint"]);
    let pending: Vec<u64> = (0..3).map(|_| tagged(&mut h, &["build:7", "kind:test"])).collect();
    let cancel = |h: &mut Harness, cursor, kill_running| {
        let query =
            TaskQuery { tags: vec!["build:7".into(), "kind:test".into()], limit: 2, cursor, ..TaskQuery::default() };
        match one_reply(h.send(CLIENT, Request::CancelTasks { query, kill_running }).1) {
            Reply::CanceledTasks(canceled) => canceled,
            other => panic!("{other:?}"),
        }
    };
    let first = cancel(&mut h, None, false);
    assert_eq!((first.canceled, first.kill_requested, first.next_cursor), (2, 0, Some(pending[1])));
    let second = cancel(&mut h, first.next_cursor, false);
    assert_eq!((second.canceled, second.next_cursor), (1, None));
    for task_id in &pending {
        assert_eq!(h.state(*task_id), TaskState::Canceled);
    }
    assert_eq!((h.state(other_kind), h.state(running)), (TaskState::Pending, TaskState::Running));
    let killing = cancel(&mut h, None, true);
    assert_eq!((killing.canceled, killing.kill_requested, killing.next_cursor), (0, 1, None));
    let (_, out) = h.send(CLIENT, Request::CancelTasks { query: TaskQuery::default(), kill_running: false });
    assert!(matches!(one_reply(out), Reply::Error(e) if e.message.starts_with("tags:")));
    h.check_replay();
}

#[test]
fn bots_are_counted_their_tasks_listed_and_only_a_disconnected_one_deleted() {
    let mut h = Harness::new();
    let first = h.submit(request(100, &[("pool", "ci")])).task_id;
    let run_id = run_one(&mut h, BOT_1, LINUX);
    finish_run(&mut h, BOT_1, run_id, b"", 0);
    let second = h.submit(request(100, &[("pool", "ci")])).task_id;
    run_one(&mut h, BOT_1, LINUX);
    h.poll(BOT_2.conn, BOT_2.bot_id, BOT_2.session_id, &[("pool", "ci"), ("os", "Mac")]);
    h.send(CLIENT, Request::QuarantineBot { bot_id: "bot-2".into(), reason: "disk".into() });
    let counts = |h: &mut Harness, dimensions: Vec<StringPair>| match one_reply(
        h.send(CLIENT, Request::CountBots { dimensions }).1,
    ) {
        Reply::BotCounts(counts) => counts,
        other => panic!("{other:?}"),
    };
    let all = counts(&mut h, Vec::new());
    assert_eq!((all.count, all.busy, all.quarantined, all.connected, all.dead), (2, 1, 1, 2, 0));
    assert_eq!(counts(&mut h, vec![StringPair::new("os", "Mac")]).count, 1);
    let page = |h: &mut Harness, limit, cursor| {
        let request = Request::ListBotTasks { bot_id: "bot-1".into(), limit, cursor };
        match one_reply(h.send(CLIENT, request).1) {
            Reply::Tasks { tasks, next_cursor } => (tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(), next_cursor),
            other => panic!("{other:?}"),
        }
    };
    let (newest, cursor) = page(&mut h, 1, None);
    assert_eq!(newest, [second]);
    assert!(cursor.is_some());
    assert_eq!(page(&mut h, 1, cursor), (vec![first], None));
    let delete =
        |h: &mut Harness, bot_id: &str| one_reply(h.send(CLIENT, Request::DeleteBot { bot_id: bot_id.into() }).1);
    assert!(matches!(delete(&mut h, "bot-1"), Reply::Error(e) if e.message.contains("still holds run")));
    assert!(matches!(delete(&mut h, "bot-2"), Reply::Error(e) if e.message.contains("is connected")));
    let mut out = Output::default();
    h.core.handle(h.now_ms, Input::Disconnected { conn: BOT_2.conn }, &mut out);
    h.record(&out);
    assert_eq!(delete(&mut h, "bot-2"), Reply::BotDeleted);
    assert!(h.core.bot("bot-2").is_none());
    assert!(matches!(delete(&mut h, "bot-2"), Reply::Error(ErrorReply { code: ErrorCode::NotFound, .. })));
    assert_eq!(counts(&mut h, Vec::new()).count, 1);
    h.check_replay();
}

#[test]
fn a_terminate_reason_goes_into_the_bots_events() {
    let mut h = Harness::new();
    h.poll(BOT_1.conn, BOT_1.bot_id, BOT_1.session_id, LINUX);
    h.send(CLIENT, Request::TerminateBot { bot_id: "bot-1".into(), reason: "host is retired".into() });
    let (events, _) = bot_events(&mut h, BotEventQuery { bot_id: "bot-1".into(), ..BotEventQuery::default() });
    assert_eq!(events[0].kind, BotEventKind::TerminateRequested);
    assert_eq!(events[0].message, "host is retired");
    assert!(h.core.bot("bot-1").unwrap().terminate_requested);
    h.check_replay();
}

#[test]
fn the_store_roots_are_the_inputs_and_outputs_of_held_and_archived_tasks() {
    let mut h = Harness::new();
    let with_root = |name: &[u8]| {
        let mut request = request(100, &[("pool", "ci")]);
        let properties = Arc::make_mut(&mut request.task_slices[0].properties);
        properties.cas_input_root =
            Some(Box::new(CasReference { cas_instance: String::new(), digest: Digest::of(name) }));
        request
    };
    let finished = |h: &mut Harness, input: &[u8], output: &[u8]| {
        h.submit(with_root(input));
        let run_id = run_one(h, BOT_1, LINUX);
        let mut ended = outcome(Some(0), RunEnd::Exited);
        let output_root = Some(Digest::of(output));
        ended.cas = Some(Box::new(apiary_protocol::CasOutcome { output_root, stats: CasStats::default() }));
        h.update(BOT_1, run_id, 0, b"", Some(ended));
        RunId::from_u64(run_id).unwrap().request()
    };
    let sorted = |names: &[&[u8]]| {
        let mut digests: Vec<Digest> = names.iter().map(|name| Digest::of(name)).collect();
        digests.sort();
        digests
    };
    finished(&mut h, b"first in", b"first out");
    let second = finished(&mut h, b"second in", b"second out");
    h.submit(with_root(b"pending in"));
    let mut roots = h.core.cas_roots().unwrap();
    roots.held.sort();
    assert_eq!(roots.held, sorted(&[b"first in", b"first out", b"second in", b"second out", b"pending in"]));
    assert!(roots.runs.is_empty());

    // The ended tasks move to a history run: their roots are read from it.
    let dir = tempfile::tempdir().unwrap();
    let history = apiary_storage::HistoryDir::open(dir.path()).unwrap();
    let mut writer = history.create(1).unwrap();
    for record in h.core.take_ended_for_history() {
        writer.push(record.task_id, &crate::core::history::encode_record(&record), &[]).unwrap();
    }
    writer.finish().unwrap();
    let run = history.open_run(1).unwrap();
    h.core.add_history_run(crate::core::history::RunEntry::of(1, &run), Some(Arc::new(run)));
    let roots = h.core.cas_roots().unwrap();
    assert_eq!(roots.held, sorted(&[b"pending in"]));
    assert_eq!(roots.runs.len(), 1);
    let index = roots.runs[0].index().unwrap();
    let archived_from = |from: u64| {
        let mut found = Vec::new();
        let unreadable =
            crate::core::history::cas_roots_of(&index, index.count_below(from)..index.len(), &mut |d| found.push(d));
        assert_eq!(unreadable, 0);
        found.sort();
        found
    };
    assert_eq!(archived_from(roots.retained_from), sorted(&[b"first in", b"first out", b"second in", b"second out"]));
    assert_eq!(archived_from(second.as_u64()), sorted(&[b"second in", b"second out"]), "retention let the first go");
}

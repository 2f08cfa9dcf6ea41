//! The event loop with real sockets: a client and a bot speak the protocol on
//! a thread of their own while the test's thread turns the loop, then the
//! metrics the loop renders are checked against what they did.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Instant, SystemTime};

use apiary_protocol::cas::reapi::{Directory, FileNode};
use apiary_protocol::cas::{CasReference, Digest};
use apiary_protocol::client::{Client, ClientError};
use apiary_protocol::{
    BotPoll, CasBlob, NewTaskRequest, PackedDimensions, RunEnd, RunOutcome, StringPair, TaskProperties, TaskSlice,
    TaskUpdate,
};
use apiary_storage::WalOptions;

use super::*;
use crate::core::CoreConfig;
use crate::server::peer_limits::PeerLimits;
use crate::server::snapshots::SnapshotSettings;
use crate::server::startup::{Started, start};

/// Generous: the loop and the scenario share a loaded machine; nothing is timed.
const PATIENCE: Duration = Duration::from_secs(60);
/// The longest a turn waits for events, so the test notices a finished scenario.
const TURN_WAIT: Duration = Duration::from_millis(20);

fn config(data_dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: None,
        data_dir: data_dir.to_path_buf(),
        max_connections: 100,
        peer_limits: PeerLimits::default(),
        core: CoreConfig::default(),
        wal: WalOptions::default(),
        snapshots: SnapshotSettings::default(),
        accept_log_loss: false,
        access: Access::Open,
        insecure_no_auth: false,
        reload: None,
        tls: None,
        cas_max_bytes: crate::server::cas::DEFAULT_CAS_MAX_BYTES,
        cas_grace: crate::server::cas_gc::DEFAULT_CAS_GRACE,
    }
}

/// A loop on a fresh data directory, and the lock it holds.
fn started(data_dir: &Path) -> Started {
    start(&config(data_dir), ServiceManager::disabled()).expect("the daemon starts")
}

fn address(event_loop: &EventLoop) -> SocketAddr {
    event_loop.listener.as_ref().expect("listening").local_addr().unwrap()
}

/// Turns the loop until `scenario`, run on its own thread against the loop's
/// address, returns; hands back what it returned.
fn turn_while<T: Send + 'static>(event_loop: &mut EventLoop, scenario: impl FnOnce(String) -> T + Send + 'static) -> T {
    let addr = address(event_loop).to_string();
    let scenario = thread::spawn(move || scenario(addr));
    let (mut events, mut out) = (Events::with_capacity(64), Output::default());
    let deadline = Instant::now() + PATIENCE;
    while !scenario.is_finished() {
        assert!(Instant::now() < deadline, "the scenario did not finish");
        event_loop.turn(&mut events, &mut out, Some(TURN_WAIT)).expect("a turn");
    }
    scenario.join().expect("the scenario succeeds")
}

/// Turns the loop until the metrics it renders satisfy `done`.
fn turn_until(event_loop: &mut EventLoop, what: &str, done: impl Fn(&str) -> bool) {
    let (mut events, mut out) = (Events::with_capacity(64), Output::default());
    let deadline = Instant::now() + PATIENCE;
    while !done(&event_loop.render_metrics()) {
        assert!(Instant::now() < deadline, "gave up waiting for {what}:\n{}", event_loop.render_metrics());
        event_loop.turn(&mut events, &mut out, Some(TURN_WAIT)).expect("a turn");
    }
}

/// The value of one series (name and labels as written) in a scrape.
fn sample<'a>(text: &'a str, series: &str) -> &'a str {
    let line = text.lines().find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    line.unwrap_or_else(|| panic!("no {series} in\n{text}")).rsplit(' ').next().unwrap()
}

fn task_in(pool: &str) -> NewTaskRequest {
    let properties = TaskProperties {
        command: vec!["echo".into(), "hi".into()],
        dimensions: vec![StringPair::new("pool", pool)],
        ..TaskProperties::default()
    };
    // Waits for a bot even where there is none, so it stays pending.
    let slice = TaskSlice { properties: Arc::new(properties), wait_for_capacity: true, ..TaskSlice::default() };
    NewTaskRequest { name: format!("in {pool}"), task_slices: vec![slice], ..NewTaskRequest::default() }
}

const BOT_ID: &str = "bot-1";
const SESSION_ID: u64 = 7;

fn poll() -> Request {
    let dimensions = [StringPair::new("id", BOT_ID), StringPair::new("pool", "ci")];
    Request::BotPoll(BotPoll {
        bot_id: BOT_ID.into(),
        session_id: SESSION_ID,
        dimensions: PackedDimensions::new(&dimensions),
        software: "test-bot".into(),
        quarantine_reason: String::new(),
        caches: Vec::new(),
    })
}

fn completed(run_id: u64) -> Request {
    let outcome = RunOutcome {
        exit_code: Some(0),
        duration_ms: 1,
        setup_ms: 0,
        teardown_ms: 0,
        end: RunEnd::Exited,
        ..RunOutcome::default()
    };
    Request::TaskUpdate(TaskUpdate {
        bot_id: BOT_ID.into(),
        session_id: SESSION_ID,
        run_id,
        output_offset: 0,
        output: b"hi\n".to_vec(),
        outcome: Some(outcome),
    })
}

/// A task runs on a bot and completes, another waits in a pool no bot
/// serves, and a lookup of a task that does not exist is refused.
fn run_tasks(addr: String) -> (Client, Client) {
    let mut client = Client::connect(&addr, Role::Client, "test").expect("a client connects");
    assert!(matches!(client.call(&Request::NewTask(task_in("ci"))), Ok(Reply::Created(_))));
    assert!(matches!(client.call(&Request::NewTask(task_in("gpu"))), Ok(Reply::Created(_))));
    let mut bot = Client::connect(&addr, Role::Bot, "test-bot").expect("a bot connects");
    let Ok(Reply::Assignment(assignment)) = bot.call(&poll()) else { panic!("the bot gets the task in pool ci") };
    bot.call(&completed(assignment.run_id)).expect("the report is taken");
    let missing = client.call(&Request::GetTask { task_id: 0x10 });
    assert!(matches!(missing, Err(ClientError::Refused { code: ErrorCode::NotFound, .. })), "{missing:?}");
    (client, bot)
}

#[test]
fn metrics_count_what_the_loop_committed_and_read_the_state_at_each_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let Started { mut event_loop, .. } = started(dir.path());
    let before = event_loop.render_metrics();
    assert_eq!(sample(&before, "apiary_tasks_created_total"), "0");
    assert_eq!(sample(&before, "apiary_wal_segments"), "1");
    assert!(!before.lines().any(|line| line.starts_with("apiary_snapshot_age_seconds")), "no snapshot yet");

    let connections = turn_while(&mut event_loop, run_tasks);
    let text = event_loop.render_metrics();
    let expected = [
        ("apiary_tasks_created_total", "2"),
        ("apiary_tasks_ended_total{state=\"COMPLETED\"}", "1"),
        ("apiary_tasks_ended_total{state=\"BOT_DIED\"}", "0"),
        ("apiary_tasks_pending{pool=\"ci\"}", "0"),
        ("apiary_tasks_pending{pool=\"gpu\"}", "1"),
        ("apiary_tasks_running", "0"),
        ("apiary_bots{status=\"alive\"}", "1"),
        ("apiary_bots{status=\"idle\"}", "1"),
        ("apiary_bots{status=\"busy\"}", "0"),
        ("apiary_dispatch_latency_seconds_count", "1"),
        ("apiary_connections{kind=\"client\"}", "1"),
        ("apiary_connections{kind=\"bot\"}", "1"),
        ("apiary_connections{kind=\"awaiting_hello\"}", "0"),
        ("apiary_refused_requests_total{reason=\"not_found\"}", "1"),
        ("apiary_refused_requests_total{reason=\"invalid_request\"}", "0"),
    ];
    for (series, value) in expected {
        assert_eq!(sample(&text, series), value, "{series} in\n{text}");
    }
    let syncs: u64 = sample(&text, "apiary_fsync_latency_seconds_count").parse().unwrap();
    assert!(syncs >= 3, "at least the two creations and the report were synced: {syncs}");
    let wal_bytes: u64 = sample(&text, "apiary_wal_bytes").parse().unwrap();
    assert!(wal_bytes > 0, "the log holds the task events");

    drop(connections);
    turn_until(&mut event_loop, "the closed connections", |text| {
        sample(text, "apiary_connections{kind=\"client\"}") == "0"
            && sample(text, "apiary_connections{kind=\"bot\"}") == "0"
    });
}

#[test]
fn connections_refused_at_the_limit_or_closed_at_their_hello_timeout_are_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_connections = 1;
    config.peer_limits.hello_timeout_ms = 100;
    let Started { mut event_loop, .. } = start(&config, ServiceManager::disabled()).expect("the daemon starts");
    let silent = std::net::TcpStream::connect(address(&event_loop)).unwrap();
    turn_until(&mut event_loop, "the silent connection", |text| {
        sample(text, "apiary_connections{kind=\"awaiting_hello\"}") == "1"
    });
    let over_the_limit = std::net::TcpStream::connect(address(&event_loop)).unwrap();
    turn_until(&mut event_loop, "the refusal at the limit", |text| {
        sample(text, "apiary_refused_requests_total{reason=\"connection_limit\"}") == "1"
    });
    turn_until(&mut event_loop, "the hello timeout", |text| {
        sample(text, "apiary_refused_requests_total{reason=\"hello_timeout\"}") == "1"
    });
    let text = event_loop.render_metrics();
    assert_eq!(sample(&text, "apiary_connections{kind=\"awaiting_hello\"}"), "0", "closed at its timeout");
    assert_eq!(sample(&text, "apiary_refused_requests_total{reason=\"bad_hello\"}"), "0");
    drop((silent, over_the_limit));
}

/// A tree of one file: its root and the blobs to upload.
fn tree_of(file: &[u8]) -> (Digest, Vec<CasBlob>) {
    let file_digest = Digest::of(file);
    let node = FileNode { name: "file".into(), digest: Some(file_digest.into()), is_executable: false };
    let (root_bytes, root) = Directory { files: vec![node], ..Directory::default() }.encode_canonical();
    (root, vec![CasBlob { digest: file_digest, data: file.to_vec() }, CasBlob { digest: root, data: root_bytes }])
}

/// Makes a stored blob look last used `ago` before now.
fn age_blob(cas_dir: &Path, digest: Digest, ago: Duration) {
    let name = format!("{}-{}", digest.hex(), digest.size_bytes);
    let path = cas_dir.join("blobs").join(&name[..2]).join(&name);
    std::fs::File::open(path).unwrap().set_modified(SystemTime::now() - ago).unwrap();
}

fn task_reading(root: Digest) -> NewTaskRequest {
    let mut request = task_in("gpu");
    let properties = Arc::make_mut(&mut request.task_slices[0].properties);
    properties.cas_input_root = Some(Box::new(CasReference { cas_instance: String::new(), digest: root }));
    request
}

#[test]
fn a_collection_after_retention_keeps_what_retained_tasks_name_and_removes_old_unnamed_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.core.task_retention_ms = 1000;
    let Started { mut event_loop, .. } = start(&config, ServiceManager::disabled()).expect("the daemon starts");
    let (kept_root, kept_tree) = tree_of(b"named by a pending task");
    let (let_go_root, let_go_tree) = tree_of(b"named by a task retention lets go");
    let old = CasBlob { digest: Digest::of(b"old, named by none"), data: b"old, named by none".to_vec() };
    let fresh = CasBlob { digest: Digest::of(b"fresh, named by none"), data: b"fresh, named by none".to_vec() };
    let mut blobs: Vec<CasBlob> = kept_tree.iter().chain(&let_go_tree).cloned().collect();
    blobs.extend([old.clone(), fresh.clone()]);
    let cas_dir = dir.path().join("cas");
    let fresh_digest = fresh.digest;
    let uploaded = blobs.clone();
    turn_while(&mut event_loop, move |addr| {
        let mut client = Client::connect(&addr, Role::Client, "test").expect("a client connects");
        assert!(matches!(client.call(&Request::CasBatchUpload { blobs: uploaded.clone() }), Ok(Reply::CasStored)));
        for blob in uploaded.iter().filter(|blob| blob.digest != fresh_digest) {
            age_blob(&cas_dir, blob.digest, Duration::from_secs(2 * 24 * 60 * 60));
        }
        assert!(matches!(client.call(&Request::NewTask(task_reading(kept_root))), Ok(Reply::Created(_))));
        let Ok(Reply::Created(ack)) = client.call(&Request::NewTask(task_reading(let_go_root))) else { panic!() };
        client.call(&Request::CancelTask { task_id: ack.task_id, kill_running: false }).expect("canceled");
    });
    turn_until(&mut event_loop, "a collection after retention", |text| {
        sample(text, "apiary_cas_gc_passes_total") == "1"
    });
    let text = event_loop.render_metrics();
    assert_eq!(sample(&text, "apiary_cas_gc_removed_blobs_total"), "3", "the let-go tree and the old blob");
    let removed_bytes: usize = let_go_tree.iter().map(|blob| blob.data.len()).sum::<usize>() + old.data.len();
    assert_eq!(sample(&text, "apiary_cas_gc_removed_bytes_total"), removed_bytes.to_string());
    let digests: Vec<Digest> = blobs.iter().map(|blob| blob.digest).collect();
    let missing = turn_while(&mut event_loop, move |addr| {
        let mut client = Client::connect(&addr, Role::Client, "test").expect("a client connects");
        match client.call(&Request::CasFindMissing { digests }) {
            Ok(Reply::CasMissing { digests }) => digests,
            other => panic!("{other:?}"),
        }
    });
    let mut expected: Vec<Digest> = let_go_tree.iter().map(|blob| blob.digest).collect();
    expected.push(old.digest);
    assert_eq!(missing, expected);
}

//! A pipelined client's acknowledgements survive `kill -9` while the daemon syncs its
//! large turns on the sync thread (`daemon/src/server/durability.rs`). The daemon counts
//! those syncs (`apiary_syncs_in_background_total`), so the test fails if none ran.

use apiary_benches::pipeline::{Answered, Pipeline, PipelineError};
use apiary_protocol::limits::MAX_EXPIRATION_SECS;
use apiary_protocol::tls::Security;
use apiary_protocol::{NewTaskRequest, Reply, Request, StringPair, TaskSlice};
use apiary_tests::http::HttpClient;
use apiary_tests::{Daemon, temp};

/// Deep enough that a turn reads far more than 128 requests.
const DEPTH: usize = 2048;

/// A task no bot will take: it stays pending, so it is there to look up after the crash.
fn new_task(n: usize) -> Request {
    let mut slice = TaskSlice { wait_for_capacity: true, expiration_secs: MAX_EXPIRATION_SECS, ..TaskSlice::default() };
    let properties = std::sync::Arc::make_mut(&mut slice.properties);
    properties.command = vec!["true".into()];
    properties.dimensions = vec![StringPair::new("pool", "nobody")];
    Request::NewTask(NewTaskRequest {
        name: format!("crash-{n}"),
        task_slices: vec![slice],
        ..NewTaskRequest::default()
    })
}

/// Fills the free slots with new tasks, then takes the replies that came: the ids of the
/// tasks acknowledged go to `acknowledged`.
fn exchange(pipeline: &mut Pipeline, sent: &mut usize, acknowledged: &mut Vec<u64>) -> Result<(), PipelineError> {
    let free = pipeline.free_slots();
    pipeline.send(free, 0, || {
        *sent += 1;
        new_task(*sent)
    })?;
    let mut answered: Vec<Answered> = Vec::new();
    pipeline.receive(&mut answered)?;
    for answer in answered {
        let Reply::Created(ack) = answer.reply else { panic!("a NewTask answered with {:?}", answer.reply) };
        acknowledged.push(ack.task_id);
    }
    Ok(())
}

fn syncs_in_background(daemon: &Daemon) -> u64 {
    let scrape = HttpClient::connect(&daemon.http_addr()).get("/metrics").text();
    let line = scrape.lines().find_map(|line| line.strip_prefix("apiary_syncs_in_background_total "));
    line.and_then(|count| count.parse().ok()).unwrap_or_else(|| panic!("no count of background syncs in {scrape}"))
}

#[test]
fn pipelined_acknowledgements_survive_kill_9_while_the_sync_thread_syncs_large_turns() {
    let data = temp();
    let mut daemon = Daemon::start_with(data.path(), "127.0.0.1:0", &["--http-listen", "127.0.0.1:0"]);
    let mut pipeline = Pipeline::connect(&daemon.addr, &Security::Plaintext, "durability-test", "", DEPTH).unwrap();
    let (mut sent, mut acknowledged) = (0, Vec::new());
    while acknowledged.len() < 20_000 {
        exchange(&mut pipeline, &mut sent, &mut acknowledged).unwrap();
    }
    let background = syncs_in_background(&daemon);
    assert!(background > 0, "20,000 pipelined tasks and no sync on the sync thread");

    // A full window in flight, part of it answered, and the daemon dies in the middle.
    exchange(&mut pipeline, &mut sent, &mut acknowledged).unwrap();
    pipeline.send(pipeline.free_slots(), 0, || new_task(usize::MAX)).unwrap();
    daemon.kill9();
    while exchange(&mut pipeline, &mut sent, &mut acknowledged).is_ok() {}
    assert!(acknowledged.len() < sent, "some requests were still unanswered at the kill");

    daemon.restart();
    let mut lookups = Pipeline::connect(&daemon.addr, &Security::Plaintext, "durability-test", "", DEPTH).unwrap();
    let mut found = 0;
    for chunk in acknowledged.chunks(DEPTH) {
        let mut ids = chunk.iter();
        lookups.send(chunk.len(), 0, || Request::GetTask { task_id: *ids.next().unwrap() }).unwrap();
        let mut answered = Vec::new();
        while answered.len() < chunk.len() {
            let result = lookups.receive(&mut answered);
            result.unwrap_or_else(|error| panic!("an acknowledged task is gone after kill -9: {error}"));
        }
        found += answered.iter().filter(|answer| matches!(answer.reply, Reply::Task(_))).count();
    }
    assert_eq!(found, acknowledged.len(), "every acknowledged task is there after kill -9");
    eprintln!(
        "{} acknowledged of {sent} sent, {background} syncs on the sync thread before the kill",
        acknowledged.len()
    );
}

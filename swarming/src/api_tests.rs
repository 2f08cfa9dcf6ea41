//! Every method through `plan` and `finish`: bodies as Swarming's clients send
//! them, the requests the core gets, and the exact JSON of the answers.

use std::sync::Arc;

use apiary_protocol::cas::{CasReference, CasStats, CasTransferStats, Digest};
use apiary_protocol::ids::format_task_id;
use apiary_protocol::*;
use serde_json::{Value, json};

use crate::{ApiError, Call, CallContext, Caller, Finish, GrpcCode, Method, finish_at, plan};

/// 2026-11-30T16:00:00.123Z
const CREATED_MS: u64 = 1_796_054_400_123;
const NOW_MS: u64 = 1_796_054_460_000;
const NOW: &str = "2026-11-30T16:01:00Z";

/// Holds each permission in the pools listed for it.
struct Grants(Vec<(&'static str, &'static str)>);

impl Caller for Grants {
    fn allows(&self, permission: &str, pool: &str) -> bool {
        self.0.iter().any(|(held, where_)| *held == permission && (*where_ == pool || *where_ == "*"))
    }
    fn pools_with(&self, permission: &str) -> Vec<String> {
        self.0.iter().filter(|(held, _)| *held == permission).map(|(_, pool)| pool.to_string()).collect()
    }
}

const EVERYTHING: Grants = Grants(Vec::new());

fn with<T>(caller: &Grants, run: impl FnOnce(&CallContext<'_>) -> T) -> T {
    run(&CallContext { caller, server_version: "apiaryd 0.1.0" })
}

fn ask(method: Method, body: Value) -> (Vec<Request>, Finish) {
    match with(&EVERYTHING, |context| plan(method, &body, context)) {
        Ok(Call::Ask { requests, then }) => (requests, then),
        other => panic!("{method:?} should ask the core, got {other:?}"),
    }
}

fn refused(method: Method, body: Value) -> ApiError {
    match with(&EVERYTHING, |context| plan(method, &body, context)) {
        Err(error) => error,
        Ok(call) => panic!("{method:?} should be refused, got {call:?}"),
    }
}

fn answer(then: Finish, replies: Vec<Reply>) -> Result<Value, ApiError> {
    with(&EVERYTHING, |context| finish_at(then, replies, context, NOW_MS))
}

fn invalid(message: &str) -> ApiError {
    ApiError { code: GrpcCode::InvalidArgument, message: message.to_string() }
}

fn task_id() -> u64 {
    RequestId::first_of_millisecond(CREATED_MS).as_u64()
}

fn id_text() -> String {
    format_task_id(task_id())
}

fn run_text() -> String {
    format_task_id(task_id() + 1)
}

fn dimensions() -> Vec<StringPair> {
    vec![StringPair::new("pool", "ci"), StringPair::new("os", "Linux")]
}

fn request() -> NewTaskRequest {
    NewTaskRequest {
        name: "build".to_string(),
        priority: 100,
        tags: vec!["purpose:test".to_string()],
        user: "alice".to_string(),
        task_slices: vec![TaskSlice {
            properties: Arc::new(TaskProperties {
                command: vec!["make".to_string(), "all".to_string()],
                dimensions: dimensions(),
                env: vec![StringPair::new("LANG", "C")],
                execution_timeout_secs: 3600,
                grace_period_secs: 30,
                ..TaskProperties::default()
            }),
            expiration_secs: 600,
            wait_for_capacity: false,
        }],
        bot_ping_tolerance_secs: 1200,
        secret_bytes: None,
    }
}

/// The request as Swarming's clients send it.
fn request_json() -> Value {
    json!({
        "name": "build", "priority": 100, "tags": ["purpose:test"], "user": "alice",
        "botPingToleranceSecs": 1200,
        "taskSlices": [{"expirationSecs": "600", "properties": {
            "command": ["make", "all"],
            "dimensions": [{"key": "pool", "value": "ci"}, {"key": "os", "value": "Linux"}],
            "env": [{"key": "LANG", "value": "C"}],
            "executionTimeoutSecs": 3600, "gracePeriodSecs": 30}}]
    })
}

/// The request as Apiary answers it: defaults left out.
fn request_answer() -> Value {
    let properties = json!({
        "command": ["make", "all"],
        "dimensions": [{"key": "pool", "value": "ci"}, {"key": "os", "value": "Linux"}],
        "env": [{"key": "LANG", "value": "C"}],
        "executionTimeoutSecs": 3600, "gracePeriodSecs": 30
    });
    json!({
        "taskId": id_text(), "expirationSecs": 600, "name": "build", "priority": 100,
        "tags": ["purpose:test"], "createdTs": "2026-11-30T16:00:00.123Z", "user": "alice",
        "taskSlices": [{"properties": properties, "expirationSecs": 600}],
        "botPingToleranceSecs": 1200, "properties": properties
    })
}

fn completed() -> TaskResult {
    TaskResult {
        task_id: task_id(),
        run_id: Some(task_id() + 1),
        state: TaskState::Completed,
        exit_code: Some(1),
        bot_id: Some("bot-1".to_string()),
        try_number: 1,
        current_task_slice: 0,
        created_unix_ms: CREATED_MS,
        started_unix_ms: Some(CREATED_MS + 1_000),
        completed_unix_ms: Some(CREATED_MS + 3_500),
        abandoned_unix_ms: None,
        duration_ms: Some(2_250),
        internal_failure: false,
        failure_reason: String::new(),
        output_len: 12,
        deduped_from: None,
        timeout: None,
        setup_ms: Some(150),
        teardown_ms: Some(100),
        has_secret_bytes: false,
        output_truncated: false,
        pending: None,
        cas_output_root: None,
        cas_stats: None,
        request: request(),
    }
}

fn completed_answer() -> Value {
    json!({
        "taskId": id_text(), "botId": "bot-1",
        "completedTs": "2026-11-30T16:00:03.623Z", "createdTs": "2026-11-30T16:00:00.123Z",
        "duration": 2.25, "exitCode": "1", "failure": true, "modifiedTs": "2026-11-30T16:00:03.623Z",
        "startedTs": "2026-11-30T16:00:01.123Z", "state": "COMPLETED", "name": "build",
        "tags": ["purpose:test"], "user": "alice", "runId": run_text()
    })
}

fn pending() -> TaskResult {
    TaskResult {
        run_id: None,
        state: TaskState::Pending,
        exit_code: None,
        bot_id: None,
        started_unix_ms: None,
        completed_unix_ms: None,
        duration_ms: None,
        setup_ms: None,
        teardown_ms: None,
        output_len: 0,
        ..completed()
    }
}

fn error(code: ErrorCode, message: &str) -> Reply {
    Reply::Error(ErrorReply { code, message: message.to_string() })
}

fn bot_info(bot_id: &str) -> BotInfo {
    BotInfo {
        bot_id: bot_id.to_string(),
        dimensions: vec![
            StringPair::new("pool", "ci"),
            StringPair::new("os", "Linux"),
            StringPair::new("os", "Debian"),
            StringPair::new("cpu", "x86-64"),
        ],
        current_run_id: None,
        first_seen_unix_ms: CREATED_MS,
        last_seen_unix_ms: NOW_MS,
        connected: true,
        software: "apiary-bot 0.1.0".to_string(),
        dead: false,
        quarantine_reason: None,
        terminate_requested: false,
        shut_down: false,
        caches: Vec::new(),
    }
}

fn bot_answer(bot_id: &str) -> Value {
    json!({
        "botId": bot_id, "firstSeenTs": "2026-11-30T16:00:00.123Z", "lastSeenTs": NOW,
        "dimensions": [{"key": "cpu", "value": ["x86-64"]}, {"key": "os", "value": ["Debian", "Linux"]},
                       {"key": "pool", "value": ["ci"]}],
        "version": "apiary-bot 0.1.0", "state": "{\"connected\":true}"
    })
}

// ------------------------------------------------------------------ Tasks

#[test]
fn new_task_sends_the_request_and_answers_with_it_and_the_pending_result() {
    let (requests, then) = ask(Method::NewTask, request_json());
    assert_eq!(requests, [Request::NewTask(request())]);
    let ack = NewTaskAck { task_id: task_id(), state: TaskState::Pending, deduped_from: None };
    let expected = json!({
        "taskId": id_text(),
        "request": request_answer(),
        "taskResult": {"taskId": id_text(), "createdTs": "2026-11-30T16:00:00.123Z",
                       "modifiedTs": "2026-11-30T16:00:00.123Z", "state": "PENDING", "name": "build",
                       "tags": ["purpose:test"], "user": "alice"}
    });
    assert_eq!(answer(then, vec![Reply::Created(ack)]).unwrap(), expected);
}

#[test]
fn new_task_with_a_uuid_parent_and_secret_keeps_them_and_shows_a_dedup() {
    let mut body = request_json();
    body["requestUuid"] = json!("5b7d-11");
    body["parentTaskId"] = json!(run_text());
    body["taskSlices"][0]["properties"]["secretBytes"] = json!("c2VjcmV0");
    body["taskSlices"][0]["properties"]["idempotent"] = json!(true);
    let (requests, then) = ask(Method::NewTask, body);
    let [Request::NewTaskWithLineage { request: sent, lineage }] = requests.as_slice() else { panic!("{requests:?}") };
    assert_eq!(lineage, &TaskLineage { request_uuid: "5b7d-11".to_string(), parent_task_id: Some(task_id() + 1) });
    assert_eq!(sent.secret_bytes, Some(SecretBytes(b"secret".to_vec())));
    let earlier = task_id() - 0x100 + 1;
    let ack = NewTaskAck { task_id: task_id(), state: TaskState::Completed, deduped_from: Some(earlier) };
    let answer = answer(then, vec![Reply::Created(ack)]).unwrap();
    assert_eq!(answer["request"]["parentTaskId"], json!(run_text()));
    let properties = &answer["request"]["taskSlices"][0]["properties"];
    assert_eq!(properties["secretBytes"], json!("PFJFREFDVEVEPg=="), "<REDACTED>, never the secret");
    assert_eq!(properties["idempotent"], json!(true));
    assert_eq!(answer["taskResult"]["state"], json!("COMPLETED"));
    assert_eq!(answer["taskResult"]["dedupedFrom"], json!(format_task_id(earlier)));
    assert_eq!(answer["taskResult"]["runId"], json!(format_task_id(earlier)));
}

#[test]
fn new_task_evaluate_only_validates_and_answers_without_an_id() {
    let mut body = request_json();
    body["evaluate_only"] = json!(true);
    let (requests, then) = ask(Method::NewTask, body);
    assert_eq!(requests, [Request::ValidateTask(request())]);
    let mut stored = request_answer();
    let object = stored.as_object_mut().unwrap();
    object.remove("taskId");
    object.remove("createdTs");
    assert_eq!(answer(then, vec![Reply::ValidRequest(Box::new(request()))]).unwrap(), json!({"request": stored}));
}

#[test]
fn new_task_refusals_name_every_field_and_the_core_refusal_keeps_its_code() {
    let refusal = refused(Method::NewTask, json!({"priority": 300, "realm": "a:b", "taskSlices": "x"}));
    assert_eq!(
        refusal,
        invalid(
            "priority: 300 is outside 1..=255; 0 means the default; task_slices: expected a list, got the string \
             \"x\"; realm: asks for realms, which Apiary does not implement (only an empty or default value is \
             accepted)"
        )
    );
    let (_, then) = ask(Method::NewTask, request_json());
    let denied = answer(then, vec![error(ErrorCode::PermissionDenied, "permission create_task: lacks it in pool ci")]);
    assert_eq!(denied.unwrap_err().code, GrpcCode::PermissionDenied);
}

#[test]
fn get_result_renders_the_task_result() {
    let (requests, then) = ask(Method::GetResult, json!({"taskId": id_text()}));
    assert_eq!(requests, [Request::GetTask { task_id: task_id() }]);
    assert_eq!(answer(then, vec![Reply::Task(Box::new(completed()))]).unwrap(), completed_answer());

    let (_, then) = ask(Method::GetResult, json!({"task_id": run_text(), "include_performance_stats": true}));
    let mut expected = completed_answer();
    expected["performanceStats"] = json!({"botOverhead": 0.25, "cleanup": {"duration": 0.1}});
    assert_eq!(answer(then, vec![Reply::Task(Box::new(completed()))]).unwrap(), expected);

    // With outputs: the tree and what moving the files cost.
    let digest = Digest::of(b"outputs");
    let mut with_outputs = completed();
    with_outputs.cas_output_root = Some(CasReference { cas_instance: "default_instance".into(), digest });
    let upload = CasTransferStats { duration_ms: 40, items_hot: 1, bytes_hot: 5, items_cold: 2, bytes_cold: 7 };
    with_outputs.cas_stats = Some(CasStats { upload, ..CasStats::default() });
    let (_, then) = ask(Method::GetResult, json!({"task_id": run_text(), "include_performance_stats": true}));
    expected["casOutputRoot"] =
        json!({"casInstance": "default_instance", "digest": {"hash": digest.hex(), "sizeBytes": "7"}});
    expected["performanceStats"]["isolatedDownload"] = json!({});
    expected["performanceStats"]["isolatedUpload"] = json!({
        "duration": 0.04, "numItemsHot": "1", "totalBytesItemsHot": "5", "numItemsCold": "2", "totalBytesItemsCold": "7"
    });
    assert_eq!(answer(then, vec![Reply::Task(Box::new(with_outputs))]).unwrap(), expected);

    let (_, then) = ask(Method::GetResult, json!({"taskId": id_text()}));
    let expected = json!({
        "taskId": id_text(), "createdTs": "2026-11-30T16:00:00.123Z", "modifiedTs": "2026-11-30T16:00:00.123Z",
        "state": "PENDING", "name": "build", "tags": ["purpose:test"], "user": "alice"
    });
    assert_eq!(answer(then, vec![Reply::Task(Box::new(pending()))]).unwrap(), expected);
}

#[test]
fn get_result_refuses_a_missing_or_malformed_id_and_passes_not_found_on() {
    assert_eq!(refused(Method::GetResult, json!({})), invalid("task_id: is required"));
    assert_eq!(
        refused(Method::GetResult, json!({"taskId": "123"})),
        invalid("task_id: \"123\" is not a task id (16 hexadecimal digits)")
    );
    assert_eq!(
        refused(Method::GetResult, json!({"taskId": id_text(), "verbose": true})).message,
        "verbose: is not a field of swarming.v2.TaskIdWithPerfRequest (its fields: task_id, include_performance_stats)"
    );
    let (_, then) = ask(Method::GetResult, json!({"taskId": id_text()}));
    let missing = answer(then, vec![error(ErrorCode::NotFound, "no task 1")]).unwrap_err();
    assert_eq!(missing, ApiError { code: GrpcCode::NotFound, message: "no task 1".to_string() });
}

#[test]
fn batch_get_result_asks_for_each_task_and_renders_errors_per_item() {
    let other = format_task_id(task_id() + 0x10);
    let (requests, then) = ask(Method::BatchGetResult, json!({"taskIds": [id_text(), other]}));
    assert_eq!(requests, [Request::GetTask { task_id: task_id() }, Request::GetTask { task_id: task_id() + 0x10 }]);
    let replies = vec![Reply::Task(Box::new(completed())), error(ErrorCode::NotFound, "no such task")];
    let expected = json!({"results": [
        {"taskId": id_text(), "result": completed_answer()},
        {"taskId": other, "error": {"code": 5, "message": "no such task"}}
    ]});
    assert_eq!(answer(then, replies).unwrap(), expected);
}

#[test]
fn batch_get_result_refuses_none_too_many_and_the_same_task_twice() {
    assert_eq!(refused(Method::BatchGetResult, json!({"task_ids": []})), invalid("task_ids: is required"));
    let many: Vec<String> = (0..301).map(|n| format_task_id(task_id() + n * 0x10)).collect();
    assert_eq!(
        refused(Method::BatchGetResult, json!({"task_ids": many})),
        invalid("task_ids: 301 ids is over the limit of 300")
    );
    assert_eq!(
        refused(Method::BatchGetResult, json!({"task_ids": [id_text(), run_text()]})),
        invalid(&format!("task_ids[1]: {} names a task given more than once", run_text()))
    );
}

#[test]
fn list_task_states_lists_states_and_fails_on_the_first_unreadable_task() {
    let other = format_task_id(task_id() + 0x10);
    let (requests, then) = ask(Method::ListTaskStates, json!({"taskId": [id_text(), other.clone()]}));
    assert_eq!(requests.len(), 2);
    let states = answer(then, vec![Reply::Task(Box::new(completed())), Reply::Task(Box::new(pending()))]).unwrap();
    assert_eq!(states, json!({"states": ["COMPLETED", "PENDING"]}));
    let (_, then) = ask(Method::ListTaskStates, json!({"task_id": [id_text(), other.clone()]}));
    let failed = answer(then, vec![Reply::Task(Box::new(completed())), error(ErrorCode::NotFound, "no such task")]);
    assert_eq!(failed, Err(ApiError { code: GrpcCode::NotFound, message: format!("{other}: no such task") }));
}

#[test]
fn get_request_renders_the_stored_request_with_who_created_it() {
    let (requests, then) = ask(Method::GetRequest, json!({"taskId": id_text()}));
    assert_eq!(requests, [Request::GetTask { task_id: task_id() }]);
    let mut result = completed();
    result.request.tags.extend(["authenticated:ci-bot".to_string(), format!("parent_task_id:{}", run_text())]);
    let mut expected = request_answer();
    expected["tags"] = json!(["purpose:test", "authenticated:ci-bot", format!("parent_task_id:{}", run_text())]);
    expected["authenticated"] = json!("ci-bot");
    expected["parentTaskId"] = json!(run_text());
    assert_eq!(answer(then, vec![Reply::Task(Box::new(result))]).unwrap(), expected);
}

#[test]
fn get_stdout_reads_from_the_offset_and_answers_with_base64_and_the_state() {
    let (requests, then) = ask(Method::GetStdout, json!({"taskId": id_text(), "offset": "6", "length": 100}));
    assert_eq!(
        requests,
        [Request::GetTask { task_id: task_id() }, Request::GetOutput { task_id: task_id(), offset: 6, max_bytes: 100 }]
    );
    let output = Reply::Output { offset: 6, data: b"world\n".to_vec(), output_len: 12, task_ended: true };
    let answered = answer(then, vec![Reply::Task(Box::new(completed())), output]).unwrap();
    assert_eq!(answered, json!({"output": "d29ybGQK", "state": "COMPLETED"}));

    let (requests, _) = ask(Method::GetStdout, json!({"task_id": id_text()}));
    let max = limits::MAX_OUTPUT_CHUNK_BYTES as u32;
    assert_eq!(requests[1], Request::GetOutput { task_id: task_id(), offset: 0, max_bytes: max });
    let (requests, then) = ask(Method::GetStdout, json!({"task_id": id_text(), "length": "1000000000"}));
    assert_eq!(requests[1], Request::GetOutput { task_id: task_id(), offset: 0, max_bytes: max });
    let nothing = Reply::Output { offset: 0, data: Vec::new(), output_len: 0, task_ended: false };
    assert_eq!(answer(then, vec![Reply::Task(Box::new(pending())), nothing]).unwrap(), json!({"state": "PENDING"}));
    assert_eq!(
        refused(Method::GetStdout, json!({"taskId": id_text(), "offset": -1})),
        invalid("offset: -1 is negative")
    );
}

#[test]
fn cancel_task_says_whether_it_canceled_and_whether_the_task_ran() {
    let (requests, then) = ask(Method::CancelTask, json!({"taskId": id_text(), "killRunning": true}));
    assert_eq!(requests, [Request::CancelTask { task_id: task_id(), kill_running: true }]);
    let reply = Reply::Canceled { outcome: CancelOutcome::KillRequested, task: Box::new(completed()) };
    assert_eq!(answer(then, vec![reply]).unwrap(), json!({"canceled": true, "wasRunning": true}));
    for (outcome, expected) in [
        (CancelOutcome::Canceled, json!({"canceled": true})),
        (CancelOutcome::LeftRunning, json!({"wasRunning": true})),
        (CancelOutcome::AlreadyEnded, json!({})),
    ] {
        let (_, then) = ask(Method::CancelTask, json!({"task_id": id_text()}));
        assert_eq!(answer(then, vec![Reply::Canceled { outcome, task: Box::new(pending()) }]).unwrap(), expected);
    }
}

#[test]
fn cancel_tasks_cancels_by_tags_within_a_time_range() {
    let body = json!({"tags": ["purpose:test"], "limit": 50, "killRunning": true,
                      "start": "2026-11-30T00:00:00Z", "end": "2026-12-01T00:00:00Z"});
    let (requests, then) = ask(Method::CancelTasks, body);
    let query = TaskQuery {
        state: StateQuery::All,
        tags: vec!["purpose:test".to_string()],
        limit: 50,
        cursor: None,
        created_since_unix_ms: Some(1_796_083_200_000 - 86_400_000),
        created_until_unix_ms: Some(1_796_083_200_000),
    };
    assert_eq!(requests, [Request::CancelTasks { query, kill_running: true }]);
    let canceled = CanceledTasks { canceled: 3, kill_requested: 1, matched: 4, next_cursor: Some(0xabc0) };
    let expected = json!({"cursor": "abc0", "now": NOW, "matched": 4});
    assert_eq!(answer(then, vec![Reply::CanceledTasks(canceled)]).unwrap(), expected);

    let (requests, _) = ask(Method::CancelTasks, json!({"tags": ["a:b"], "cursor": "abc0"}));
    let Request::CancelTasks { query, kill_running: false } = &requests[0] else { panic!("{requests:?}") };
    assert_eq!((query.limit, query.cursor), (100, Some(0xabc0)));
    assert_eq!(
        refused(Method::CancelTasks, json!({"limit": 10})),
        invalid("tags: is required: tasks are canceled by tags, at least one")
    );
}

#[test]
fn list_tasks_maps_the_query_and_renders_a_page() {
    let body = json!({"limit": 2, "state": "QUERY_COMPLETED_FAILURE", "tags": ["purpose:test"],
                      "start": "2026-11-30T16:00:00Z", "includePerformanceStats": false, "sort": "QUERY_CREATED_TS"});
    let (requests, then) = ask(Method::ListTasks, body);
    let query = TaskQuery {
        state: StateQuery::CompletedFailure,
        tags: vec!["purpose:test".to_string()],
        limit: 2,
        cursor: None,
        created_since_unix_ms: Some(CREATED_MS - 123),
        created_until_unix_ms: None,
    };
    assert_eq!(requests, [Request::ListTasks(query)]);
    let reply = Reply::Tasks { tasks: vec![completed()], next_cursor: Some(task_id()) };
    let expected = json!({"cursor": format!("{:x}", task_id()), "items": [completed_answer()], "now": NOW});
    assert_eq!(answer(then, vec![reply]).unwrap(), expected);

    let (_, then) = ask(Method::ListTasks, json!({"state": "QUERY_ALL"}));
    let empty = Reply::Tasks { tasks: Vec::new(), next_cursor: None };
    assert_eq!(answer(then, vec![empty]).unwrap(), json!({"now": NOW}));
}

#[test]
fn list_tasks_defaults_follow_swarming_and_every_state_query_maps() {
    let (requests, _) = ask(Method::ListTasks, Value::Null);
    let Request::ListTasks(query) = &requests[0] else { panic!("{requests:?}") };
    assert_eq!((query.state, query.limit), (StateQuery::One(TaskState::Pending), 200), "proto3's default state");
    for (name, number, state) in crate::tasks::STATE_QUERIES {
        for spelling in [json!(name), json!(number)] {
            let (requests, _) = ask(Method::ListTasks, json!({"state": spelling}));
            let Request::ListTasks(query) = &requests[0] else { panic!("{requests:?}") };
            assert_eq!(query.state, state, "{name}");
        }
        assert_eq!(state.name(), name.trim_start_matches("QUERY_"), "Apiary names it as Swarming does");
    }
}

#[test]
fn list_tasks_refuses_what_apiary_cannot_honour() {
    assert_eq!(
        refused(Method::ListTasks, json!({"sort": "QUERY_COMPLETED_TS"})),
        invalid(
            "sort: QUERY_COMPLETED_TS is not supported: Apiary lists tasks newest created first (accepted: QUERY_CREATED_TS)"
        )
    );
    assert_eq!(refused(Method::ListTasks, json!({"limit": 1001})), invalid("limit: 1001 is over the limit of 1000"));
    assert_eq!(
        refused(Method::ListTasks, json!({"cursor": "next please"})),
        invalid("cursor: \"next please\" is not a cursor this server gave")
    );
    assert_eq!(refused(Method::ListTasks, json!({"state": "QUERY_MAYBE"})).code, GrpcCode::InvalidArgument);
}

#[test]
fn list_task_requests_renders_the_requests() {
    let (requests, then) = ask(Method::ListTaskRequests, json!({"state": "QUERY_ALL", "limit": 1}));
    let Request::ListTasks(query) = &requests[0] else { panic!("{requests:?}") };
    assert_eq!((query.state, query.limit), (StateQuery::All, 1));
    let reply = Reply::Tasks { tasks: vec![completed()], next_cursor: None };
    assert_eq!(answer(then, vec![reply]).unwrap(), json!({"items": [request_answer()], "now": NOW}));
    assert!(
        refused(Method::ListTaskRequests, json!({"include_performance_stats": true}))
            .message
            .starts_with("include_performance_stats: is not a field of swarming.v2.TasksRequest")
    );
}

#[test]
fn count_tasks_counts_the_query() {
    let (requests, then) = ask(Method::CountTasks, json!({"state": "QUERY_RUNNING", "tags": ["os:Linux"]}));
    let query = TaskQuery {
        state: StateQuery::One(TaskState::Running),
        tags: vec!["os:Linux".to_string()],
        ..TaskQuery::default()
    };
    assert_eq!(requests, [Request::CountTasks(query)]);
    let reply = Reply::TaskCount { count: 7, capped: false };
    assert_eq!(answer(then, vec![reply]).unwrap(), json!({"count": 7, "now": NOW}));
}

// ------------------------------------------------------------------- Bots

#[test]
fn get_bot_renders_the_bot() {
    let (requests, then) = ask(Method::GetBot, json!({"botId": "bot-1"}));
    assert_eq!(requests, [Request::GetBot { bot_id: "bot-1".to_string() }]);
    assert_eq!(answer(then, vec![Reply::Bot(Box::new(bot_info("bot-1")))]).unwrap(), bot_answer("bot-1"));

    let (_, then) = ask(Method::GetBot, json!({"bot_id": "bot-2"}));
    let bot = BotInfo {
        current_run_id: Some(task_id() + 1),
        dead: true,
        connected: false,
        quarantine_reason: Some("disk full".to_string()),
        caches: vec![CacheInfo { name: "git".to_string(), size_bytes: 4096 }],
        ..bot_info("bot-2")
    };
    let mut expected = bot_answer("bot-2");
    expected["taskId"] = json!(run_text());
    expected["isDead"] = json!(true);
    expected["quarantined"] = json!(true);
    expected["state"] =
        json!("{\"connected\":false,\"named_caches_bytes\":{\"git\":4096},\"quarantined\":\"disk full\"}");
    assert_eq!(answer(then, vec![Reply::Bot(Box::new(bot))]).unwrap(), expected);
    assert_eq!(refused(Method::GetBot, json!({})), invalid("bot_id: is required"));
}

#[test]
fn delete_and_terminate_bot() {
    let (requests, then) = ask(Method::DeleteBot, json!({"botId": "bot-1"}));
    assert_eq!(requests, [Request::DeleteBot { bot_id: "bot-1".to_string() }]);
    assert_eq!(answer(then, vec![Reply::BotDeleted]).unwrap(), json!({"deleted": true}));
    let (_, then) = ask(Method::DeleteBot, json!({"botId": "bot-1"}));
    let connected = answer(then, vec![error(ErrorCode::InvalidRequest, "bot bot-1 is connected")]);
    assert_eq!(connected.unwrap_err().code, GrpcCode::InvalidArgument);

    let (requests, then) = ask(Method::TerminateBot, json!({"botId": "bot-1", "reason": "reimage"}));
    assert_eq!(requests, [Request::TerminateBot { bot_id: "bot-1".to_string(), reason: "reimage".to_string() }]);
    assert_eq!(answer(then, vec![Reply::Bot(Box::new(bot_info("bot-1")))]).unwrap(), json!({}));
}

#[test]
fn apiary_quarantines_and_unquarantines_a_bot_and_explains_a_pending_task() {
    let (requests, then) = ask(Method::QuarantineBot, json!({"botId": "bot-1", "reason": "flaky disk"}));
    assert_eq!(requests, [Request::QuarantineBot { bot_id: "bot-1".to_string(), reason: "flaky disk".to_string() }]);
    assert_eq!(answer(then, vec![Reply::Bot(Box::new(bot_info("bot-1")))]).unwrap(), bot_answer("bot-1"));
    let (requests, _) = ask(Method::QuarantineBot, json!({"botId": "bot-1"}));
    assert!(matches!(&requests[0], Request::QuarantineBot { reason, .. } if !reason.is_empty()), "a reason is kept");
    let (requests, _) = ask(Method::UnquarantineBot, json!({"bot_id": "bot-1"}));
    assert_eq!(requests, [Request::UnquarantineBot { bot_id: "bot-1".to_string() }]);
    assert_eq!(refused(Method::UnquarantineBot, json!({"botId": "bot-1", "why": 1})).code, GrpcCode::InvalidArgument);

    let (requests, then) = ask(Method::ExplainPending, json!({"taskId": id_text()}));
    assert_eq!(requests, [Request::GetTask { task_id: task_id() }]);
    let waiting =
        TaskResult { pending: Some(PendingInfo { matching_bots: 3, busy_bots: 3, queue_position: 12 }), ..pending() };
    let expected = json!({"state": "PENDING", "matchingBots": 3, "busyBots": 3, "queuePosition": "12"});
    assert_eq!(answer(then, vec![Reply::Task(Box::new(waiting))]).unwrap(), expected);
    let (_, then) = ask(Method::ExplainPending, json!({"taskId": id_text()}));
    assert_eq!(answer(then, vec![Reply::Task(Box::new(completed()))]).unwrap(), json!({"state": "COMPLETED"}));
}

#[test]
fn list_bots_filters_and_pages_by_bot_id() {
    let body = json!({"dimensions": [{"key": "pool", "value": "ci"}], "isDead": "FALSE", "limit": 2});
    let (requests, then) = ask(Method::ListBots, body);
    assert_eq!(requests, [Request::ListBots { dimensions: vec![StringPair::new("pool", "ci")] }]);
    let dead = BotInfo { dead: true, ..bot_info("bot-2") };
    let bots = vec![bot_info("bot-1"), dead, bot_info("bot-3"), bot_info("bot-4")];
    let expected = json!({"cursor": "bot-3", "items": [bot_answer("bot-1"), bot_answer("bot-3")], "now": NOW});
    assert_eq!(answer(then, vec![Reply::Bots(bots.clone())]).unwrap(), expected);

    let (_, then) = ask(Method::ListBots, json!({"cursor": "bot-3", "is_dead": 1, "limit": 2}));
    assert_eq!(
        answer(then, vec![Reply::Bots(bots.clone())]).unwrap(),
        json!({"items": [bot_answer("bot-4")], "now": NOW})
    );

    let (_, then) = ask(Method::ListBots, json!({"inMaintenance": "TRUE"}));
    assert_eq!(answer(then, vec![Reply::Bots(bots)]).unwrap(), json!({"now": NOW}), "Apiary has no maintenance");
    assert_eq!(
        refused(Method::ListBots, json!({"cursor": "../etc"})),
        invalid("cursor: \"../etc\" is not a cursor this server gave")
    );
    assert_eq!(
        refused(Method::ListBots, json!({"quarantined": "YES"})),
        invalid("quarantined: the string \"YES\" is not one of NULL, FALSE, TRUE")
    );
}

#[test]
fn count_bots_counts_by_standing() {
    let (requests, then) = ask(Method::CountBots, json!({"dimensions": [{"key": "os", "value": "Linux"}]}));
    assert_eq!(requests, [Request::CountBots { dimensions: vec![StringPair::new("os", "Linux")] }]);
    let counts = BotCounts { count: 10, busy: 4, dead: 1, quarantined: 2, connected: 9, terminating: 0, shut_down: 0 };
    let expected = json!({"now": NOW, "count": 10, "quarantined": 2, "dead": 1, "busy": 4});
    assert_eq!(answer(then, vec![Reply::BotCounts(counts)]).unwrap(), expected);
}

#[test]
fn list_bot_events_pages_the_events() {
    let body = json!({"botId": "bot-1", "limit": 1, "start": "2026-11-30T16:00:00Z", "cursor": "2a"});
    let (requests, then) = ask(Method::ListBotEvents, body);
    let query = BotEventQuery {
        bot_id: "bot-1".to_string(),
        limit: 1,
        cursor: Some(42),
        since_unix_ms: Some(CREATED_MS - 123),
        until_unix_ms: None,
    };
    assert_eq!(requests, [Request::ListBotEvents(query)]);
    let event = BotEvent {
        number: 41,
        at_unix_ms: CREATED_MS,
        kind: BotEventKind::TaskAssigned,
        dimensions: vec![StringPair::new("pool", "ci")],
        run_id: Some(task_id() + 1),
        message: String::new(),
    };
    let expected = json!({"cursor": "29", "items": [{
        "ts": "2026-11-30T16:00:00.123Z", "eventType": "task_assigned",
        "dimensions": [{"key": "pool", "value": ["ci"]}], "taskId": run_text()
    }], "now": NOW});
    assert_eq!(answer(then, vec![Reply::BotEvents { events: vec![event], next_cursor: Some(41) }]).unwrap(), expected);
}

#[test]
fn list_bot_tasks_filters_the_page_by_state_and_refuses_states_no_bot_has() {
    let (requests, then) = ask(Method::ListBotTasks, json!({"botId": "bot-1", "state": "QUERY_COMPLETED", "limit": 5}));
    assert_eq!(requests, [Request::ListBotTasks { bot_id: "bot-1".to_string(), limit: 5, cursor: None }]);
    let running = TaskResult { state: TaskState::Running, completed_unix_ms: None, ..completed() };
    let reply = Reply::Tasks { tasks: vec![running, completed()], next_cursor: Some(7) };
    assert_eq!(answer(then, vec![reply]).unwrap(), json!({"cursor": "7", "items": [completed_answer()], "now": NOW}));

    let pending_default = refused(Method::ListBotTasks, json!({"botId": "bot-1"}));
    assert!(
        pending_default.message.starts_with("state: the default QUERY_PENDING lists nothing"),
        "{pending_default:?}"
    );
    let canceled = refused(Method::ListBotTasks, json!({"botId": "bot-1", "state": "QUERY_CANCELED"}));
    assert!(canceled.message.contains("perhaps QUERY_KILLED?"), "{canceled:?}");
    assert!(
        refused(Method::ListBotTasks, json!({"botId": "bot-1", "state": "QUERY_ALL", "sort": "QUERY_STARTED_TS"}))
            .message
            .starts_with("sort: QUERY_STARTED_TS is not supported")
    );
}

#[test]
fn get_bot_dimensions_aggregates_the_pools_bots() {
    let (requests, then) = ask(Method::GetBotDimensions, json!({"pool": "ci"}));
    assert_eq!(requests, [Request::ListBots { dimensions: vec![StringPair::new("pool", "ci")] }]);
    let mut arm = bot_info("bot-2");
    arm.dimensions =
        vec![StringPair::new("pool", "ci"), StringPair::new("cpu", "arm64"), StringPair::new("os", "Linux")];
    let expected = json!({"botsDimensions": [
        {"key": "cpu", "value": ["arm64", "x86-64"]},
        {"key": "os", "value": ["Debian", "Linux"]},
        {"key": "pool", "value": ["ci"]}
    ], "ts": NOW});
    assert_eq!(answer(then, vec![Reply::Bots(vec![bot_info("bot-1"), arm])]).unwrap(), expected);
    let (requests, _) = ask(Method::GetBotDimensions, Value::Null);
    assert_eq!(requests, [Request::ListBots { dimensions: Vec::new() }]);
}

// --------------------------------------------------------------- Swarming

#[test]
fn get_details_answers_at_once() {
    let call = with(&EVERYTHING, |context| plan(Method::GetDetails, &json!({}), context)).unwrap();
    let Call::Answer(details) = call else { panic!("{call:?}") };
    assert_eq!(details, json!({"serverVersion": "apiaryd 0.1.0"}));
    let refused = with(&EVERYTHING, |context| plan(Method::GetDetails, &json!({"x": 1}), context)).unwrap_err();
    assert_eq!(refused, invalid("x: is not a field of google.protobuf.Empty (its fields: none)"));
}

#[test]
fn get_permissions_without_ids_answers_from_the_grants() {
    let grants = Grants(vec![("cancel_task", "ci"), ("read_tasks", "ci"), ("read_tasks", "try"), ("delete_bot", "*")]);
    let answer_for = |body: Value| match with(&grants, |context| plan(Method::GetPermissions, &body, context)) {
        Ok(Call::Answer(answer)) => answer,
        other => panic!("{other:?}"),
    };
    let expected = json!({"deleteBot": true, "deleteBots": true, "listTasks": ["ci", "try"]});
    assert_eq!(answer_for(Value::Null), expected);
    let in_ci = json!({"deleteBot": true, "deleteBots": true, "cancelTask": true, "cancelTasks": true,
                       "listTasks": ["ci", "try"]});
    assert_eq!(answer_for(json!({"tags": ["pool:ci", "os:Linux"]})), in_ci);
}

#[test]
fn get_permissions_asks_for_the_task_and_the_bot_to_know_their_pools() {
    let grants = Grants(vec![("cancel_task", "ci"), ("manage_bots", "ci"), ("read_bots", "*")]);
    let body = json!({"taskId": id_text(), "botId": "bot-1"});
    let Call::Ask { requests, then } = with(&grants, |context| plan(Method::GetPermissions, &body, context)).unwrap()
    else {
        panic!("should ask the core")
    };
    assert_eq!(requests, [Request::GetTask { task_id: task_id() }, Request::GetBot { bot_id: "bot-1".to_string() }]);
    let replies = vec![Reply::Task(Box::new(completed())), Reply::Bot(Box::new(bot_info("bot-1")))];
    let answer = with(&grants, |context| finish_at(then, replies, context, NOW_MS)).unwrap();
    assert_eq!(answer, json!({"terminateBot": true, "cancelTask": true, "listBots": ["*"]}));

    let body = json!({"taskId": id_text()});
    let Call::Ask { then, .. } = with(&grants, |context| plan(Method::GetPermissions, &body, context)).unwrap() else {
        panic!("should ask the core")
    };
    let missing =
        with(&grants, |context| finish_at(then, vec![error(ErrorCode::NotFound, "no task")], context, NOW_MS));
    assert_eq!(missing.unwrap_err().code, GrpcCode::NotFound);
}

#[test]
fn a_reply_of_the_wrong_kind_or_count_is_an_internal_error() {
    let (_, then) = ask(Method::GetBot, json!({"botId": "bot-1"}));
    let wrong = answer(then, vec![Reply::NoWork]).unwrap_err();
    assert_eq!(
        wrong,
        ApiError {
            code: GrpcCode::Internal,
            message: "GetBot: the core answered with an unexpected reply (NoWork)".to_string()
        }
    );
    let (_, then) = ask(Method::BatchGetResult, json!({"taskIds": [id_text()]}));
    assert_eq!(answer(then, Vec::new()).unwrap_err().code, GrpcCode::Internal);
}

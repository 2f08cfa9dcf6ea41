//! `swarming.v2.Tasks`: creating, reading, listing and canceling tasks.
//!
//! Where Apiary differs from Swarming:
//! - `NewTask` answers with the request as it was sent (the tags the daemon
//!   adds, such as `authenticated:`, show in `GetRequest`) and a
//!   `task_result` holding what the creation tells: id, state, creation time,
//!   and the run reused by an idempotent task.
//! - Listings sort by creation time only (`QUERY_CREATED_TS`); another `sort`
//!   is refused. `start` and `end` bound the creation time.
//! - `CountTasks` stops counting at `limits::MAX_TASK_COUNT` and then reports
//!   that many.
//! - `GetStdout` reads at most `limits::MAX_OUTPUT_CHUNK_BYTES` per call
//!   (Swarming: 16 MiB); a longer output is read on from the next offset.
//! - `performance_stats` holds the bot's overhead (`bot_overhead`) and clean-up.

use apiary_protocol::limits::{MAX_OUTPUT_CHUNK_BYTES, MAX_TASK_PAGE};
use apiary_protocol::{CancelOutcome, NewTaskRequest, Reply, Request, RequestId, StateQuery, TaskQuery, TaskState};
use serde_json::{Value, json};

use crate::input::{EnumValues, Message, invalid, task_id_of};
use crate::new_task::{self, Origin};
use crate::render::{self, Json};
use crate::{ApiError, Call, GrpcCode, Method, Step as CallStep, one_reply, refusal, unexpected};

/// Swarming's page size of a listing when none is given, and its largest.
pub(crate) const DEFAULT_PAGE: u64 = 200;
pub(crate) const MAX_PAGE: u64 = 1000;
const _: () = assert!(MAX_PAGE <= MAX_TASK_PAGE as u64 && DEFAULT_PAGE <= MAX_PAGE);
/// Swarming's page size of `CancelTasks` when none is given.
const DEFAULT_CANCEL_PAGE: u64 = 100;
/// Task ids in one `BatchGetResult` or `ListTaskStates` (Swarming's limit).
pub(crate) const MAX_BATCH_TASK_IDS: usize = 300;

/// Swarming's `StateQuery`: names, numbers, and the query each is in Apiary.
pub(crate) const STATE_QUERIES: [(&str, i64, StateQuery); 15] = [
    ("QUERY_PENDING", 0, StateQuery::One(TaskState::Pending)),
    ("QUERY_RUNNING", 1, StateQuery::One(TaskState::Running)),
    ("QUERY_PENDING_RUNNING", 2, StateQuery::PendingRunning),
    ("QUERY_COMPLETED", 3, StateQuery::One(TaskState::Completed)),
    ("QUERY_COMPLETED_SUCCESS", 4, StateQuery::CompletedSuccess),
    ("QUERY_COMPLETED_FAILURE", 5, StateQuery::CompletedFailure),
    ("QUERY_EXPIRED", 6, StateQuery::One(TaskState::Expired)),
    ("QUERY_TIMED_OUT", 7, StateQuery::One(TaskState::TimedOut)),
    ("QUERY_BOT_DIED", 8, StateQuery::One(TaskState::BotDied)),
    ("QUERY_CANCELED", 9, StateQuery::One(TaskState::Canceled)),
    ("QUERY_ALL", 10, StateQuery::All),
    ("QUERY_DEDUPED", 11, StateQuery::Deduped),
    ("QUERY_KILLED", 12, StateQuery::One(TaskState::Killed)),
    ("QUERY_NO_RESOURCE", 13, StateQuery::One(TaskState::NoResource)),
    ("QUERY_CLIENT_ERROR", 14, StateQuery::One(TaskState::ClientError)),
];
/// Swarming's `SortQuery`; Apiary lists by creation time only.
pub(crate) const SORTS: &EnumValues =
    &[("QUERY_CREATED_TS", 0), ("QUERY_COMPLETED_TS", 2), ("QUERY_ABANDONED_TS", 3), ("QUERY_STARTED_TS", 4)];

/// What a Tasks call's `finish` needs of its body.
#[derive(Debug)]
pub(crate) enum Step {
    /// The request as sent (without its secret), to show it in the answer.
    NewTask {
        request: Box<NewTaskRequest>,
        has_secret: bool,
        parent_task_id: Option<u64>,
    },
    EvaluateOnly {
        has_secret: bool,
    },
    GetResult {
        performance_stats: bool,
    },
    BatchGetResult {
        task_ids: Vec<String>,
        performance_stats: bool,
    },
    ListTaskStates {
        task_ids: Vec<String>,
    },
    GetRequest,
    GetStdout,
    CancelTask,
    CancelTasks,
    ListTasks {
        performance_stats: bool,
    },
    ListTaskRequests,
    CountTasks,
}

pub(crate) fn plan(method: Method, body: &Value) -> Result<Call, ApiError> {
    let ask = |request: Request, step: Step| Ok(Call::ask(method, vec![request], CallStep::Tasks(step)));
    match method {
        Method::NewTask => new_task(body),
        Method::GetResult => {
            let message =
                Message::read(body, "swarming.v2.TaskIdWithPerfRequest", &["task_id", "include_performance_stats"])?;
            let task_id = message.task_id("task_id")?;
            let performance_stats = message.bool("include_performance_stats")?;
            ask(Request::GetTask { task_id }, Step::GetResult { performance_stats })
        }
        Method::BatchGetResult => {
            let fields = &["task_ids", "include_performance_stats"];
            let message = Message::read(body, "swarming.v2.BatchGetResultRequest", fields)?;
            let (task_ids, requests) = batch(&message, "task_ids")?;
            let step = Step::BatchGetResult { task_ids, performance_stats: message.bool("include_performance_stats")? };
            Ok(Call::ask(method, requests, CallStep::Tasks(step)))
        }
        Method::ListTaskStates => {
            let message = Message::read(body, "swarming.v2.TaskStatesRequest", &["task_id"])?;
            let (task_ids, requests) = batch(&message, "task_id")?;
            Ok(Call::ask(method, requests, CallStep::Tasks(Step::ListTaskStates { task_ids })))
        }
        Method::GetRequest => {
            let message = Message::read(body, "swarming.v2.TaskIdRequest", &["task_id"])?;
            ask(Request::GetTask { task_id: message.task_id("task_id")? }, Step::GetRequest)
        }
        Method::GetStdout => get_stdout(body),
        Method::CancelTask => {
            let message = Message::read(body, "swarming.v2.TaskCancelRequest", &["task_id", "kill_running"])?;
            let request = Request::CancelTask {
                task_id: message.task_id("task_id")?,
                kill_running: message.bool("kill_running")?,
            };
            ask(request, Step::CancelTask)
        }
        Method::CancelTasks => cancel_tasks(body),
        Method::ListTasks => {
            let fields = &["limit", "cursor", "start", "end", "state", "sort", "tags", "include_performance_stats"];
            let message = Message::read(body, "swarming.v2.TasksWithPerfRequest", fields)?;
            let query = listing_query(&message)?;
            ask(
                Request::ListTasks(query),
                Step::ListTasks { performance_stats: message.bool("include_performance_stats")? },
            )
        }
        Method::ListTaskRequests => {
            let fields = &["limit", "cursor", "start", "end", "state", "sort", "tags"];
            let message = Message::read(body, "swarming.v2.TasksRequest", fields)?;
            ask(Request::ListTasks(listing_query(&message)?), Step::ListTaskRequests)
        }
        Method::CountTasks => {
            let message = Message::read(body, "swarming.v2.TasksCountRequest", &["start", "end", "state", "tags"])?;
            let query = TaskQuery {
                state: state_query(&message, "state")?,
                tags: message.strings("tags")?,
                created_since_unix_ms: message.timestamp("start")?,
                created_until_unix_ms: message.timestamp("end")?,
                ..TaskQuery::default()
            };
            ask(Request::CountTasks(query), Step::CountTasks)
        }
        other => unreachable!("{other:?} is not a method of {}", crate::TASKS_SERVICE),
    }
}

fn new_task(body: &Value) -> Result<Call, ApiError> {
    let decoded = new_task::decode(body, "", Origin::ApiCall).map_err(|refusals| {
        let reasons: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        ApiError::new(GrpcCode::InvalidArgument, reasons.join("; "))
    })?;
    let has_secret = decoded.request.secret_bytes.is_some();
    if decoded.evaluate_only {
        let step = Step::EvaluateOnly { has_secret };
        return Ok(Call::ask(Method::NewTask, vec![Request::ValidateTask(decoded.request)], CallStep::Tasks(step)));
    }
    let shown = NewTaskRequest { secret_bytes: None, ..decoded.request.clone() };
    let step = Step::NewTask { request: Box::new(shown), has_secret, parent_task_id: decoded.lineage.parent_task_id };
    let request = if decoded.lineage.is_empty() {
        Request::NewTask(decoded.request)
    } else {
        Request::NewTaskWithLineage { request: decoded.request, lineage: decoded.lineage }
    };
    Ok(Call::ask(Method::NewTask, vec![request], CallStep::Tasks(step)))
}

/// The ids of a batch (1 to `MAX_BATCH_TASK_IDS`, each task once), and a
/// `GetTask` for each.
fn batch(message: &Message, field: &str) -> Result<(Vec<String>, Vec<Request>), ApiError> {
    let task_ids = message.strings(field)?;
    if task_ids.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if task_ids.len() > MAX_BATCH_TASK_IDS {
        return Err(invalid(field, format!("{} ids is over the limit of {MAX_BATCH_TASK_IDS}", task_ids.len())));
    }
    let mut requests: Vec<Request> = Vec::with_capacity(task_ids.len());
    let mut seen = std::collections::HashSet::with_capacity(task_ids.len());
    for (index, text) in task_ids.iter().enumerate() {
        let at = format!("{field}[{index}]");
        let task_id = task_id_of(text, &at)?;
        // A run id names its request's task: both are the same task here.
        if !seen.insert(task_id & !0xf) {
            return Err(invalid(&at, format!("{text} names a task given more than once")));
        }
        requests.push(Request::GetTask { task_id });
    }
    Ok((task_ids, requests))
}

fn get_stdout(body: &Value) -> Result<Call, ApiError> {
    let message = Message::read(body, "swarming.v2.TaskIdWithOffsetRequest", &["task_id", "offset", "length"])?;
    let task_id = message.task_id("task_id")?;
    let offset = message.count("offset", i64::MAX as u64)?;
    let length = message.count("length", i64::MAX as u64)?;
    // As Swarming: 0, or more than one answer holds, reads as much as one answer holds.
    let max_bytes = if length == 0 { MAX_OUTPUT_CHUNK_BYTES as u64 } else { length.min(MAX_OUTPUT_CHUNK_BYTES as u64) };
    let requests =
        vec![Request::GetTask { task_id }, Request::GetOutput { task_id, offset, max_bytes: max_bytes as u32 }];
    Ok(Call::ask(Method::GetStdout, requests, CallStep::Tasks(Step::GetStdout)))
}

fn cancel_tasks(body: &Value) -> Result<Call, ApiError> {
    let fields = &["limit", "cursor", "tags", "kill_running", "start", "end"];
    let message = Message::read(body, "swarming.v2.TasksCancelRequest", fields)?;
    let tags = message.strings("tags")?;
    if tags.is_empty() {
        return Err(invalid("tags", "is required: tasks are canceled by tags, at least one"));
    }
    let query = TaskQuery {
        state: StateQuery::All,
        tags,
        limit: page_limit(&message, DEFAULT_CANCEL_PAGE)?,
        cursor: message.cursor("cursor")?,
        created_since_unix_ms: message.timestamp("start")?,
        created_until_unix_ms: message.timestamp("end")?,
    };
    let request = Request::CancelTasks { query, kill_running: message.bool("kill_running")? };
    Ok(Call::ask(Method::CancelTasks, vec![request], CallStep::Tasks(Step::CancelTasks)))
}

/// The query of `ListTasks` and `ListTaskRequests`.
fn listing_query(message: &Message) -> Result<TaskQuery, ApiError> {
    only_creation_order(message)?;
    Ok(TaskQuery {
        state: state_query(message, "state")?,
        tags: message.strings("tags")?,
        limit: page_limit(message, DEFAULT_PAGE)?,
        cursor: message.cursor("cursor")?,
        created_since_unix_ms: message.timestamp("start")?,
        created_until_unix_ms: message.timestamp("end")?,
    })
}

/// `sort`: Apiary keeps tasks in the order they were created, and lists them newest first.
pub(crate) fn only_creation_order(message: &Message) -> Result<(), ApiError> {
    let sort = message.enumeration("sort", SORTS)?;
    if sort == 0 {
        return Ok(());
    }
    let name = SORTS.iter().find(|(_, number)| *number == sort).map_or("", |(name, _)| *name);
    Err(invalid(
        "sort",
        format!("{name} is not supported: Apiary lists tasks newest created first (accepted: QUERY_CREATED_TS)"),
    ))
}

/// `state`, whose default (proto3's 0) is `QUERY_PENDING`, as in Swarming.
pub(crate) fn state_query(message: &Message, field: &str) -> Result<StateQuery, ApiError> {
    let values: Vec<(&str, i64)> = STATE_QUERIES.iter().map(|(name, number, _)| (*name, *number)).collect();
    let number = message.enumeration(field, &values)?;
    Ok(STATE_QUERIES.iter().find(|(_, known, _)| *known == number).map(|(_, _, query)| *query).unwrap_or_default())
}

/// `limit`: at most `MAX_PAGE`, `default` when 0.
pub(crate) fn page_limit(message: &Message, default: u64) -> Result<u32, ApiError> {
    let limit = message.count("limit", MAX_PAGE)?;
    Ok(if limit == 0 { default } else { limit } as u32)
}

pub(crate) fn finish(step: Step, replies: Vec<Reply>, now_unix_ms: u64) -> Result<Value, ApiError> {
    match step {
        Step::BatchGetResult { task_ids, performance_stats } => batch_results(&task_ids, replies, performance_stats),
        Step::ListTaskStates { task_ids } => task_states(&task_ids, replies),
        Step::GetStdout => stdout(replies),
        step => {
            let method = step.method();
            answer(step, one_reply(method, replies)?, now_unix_ms)
        }
    }
}

impl Step {
    fn method(&self) -> Method {
        match self {
            Step::NewTask { .. } | Step::EvaluateOnly { .. } => Method::NewTask,
            Step::GetResult { .. } => Method::GetResult,
            Step::BatchGetResult { .. } => Method::BatchGetResult,
            Step::ListTaskStates { .. } => Method::ListTaskStates,
            Step::GetRequest => Method::GetRequest,
            Step::GetStdout => Method::GetStdout,
            Step::CancelTask => Method::CancelTask,
            Step::CancelTasks => Method::CancelTasks,
            Step::ListTasks { .. } => Method::ListTasks,
            Step::ListTaskRequests => Method::ListTaskRequests,
            Step::CountTasks => Method::CountTasks,
        }
    }
}

/// The answer to a one-request call; an error when the reply is not of the kind expected.
fn answer(step: Step, reply: Reply, now_unix_ms: u64) -> Result<Value, ApiError> {
    let method = step.method();
    let now = Some(now_unix_ms);
    Ok(match (step, reply) {
        (Step::NewTask { request, has_secret, parent_task_id }, Reply::Created(ack)) => {
            created(&request, has_secret, parent_task_id, &ack)
        }
        (Step::EvaluateOnly { has_secret }, Reply::ValidRequest(request)) => {
            json!({"request": render::task_request(&request, None, None, has_secret).build()})
        }
        (Step::GetResult { performance_stats }, Reply::Task(result)) => render::task_result(&result, performance_stats),
        (Step::GetRequest, Reply::Task(result)) => render::stored_request(&result),
        (Step::CancelTask, Reply::Canceled { outcome, .. }) => {
            let (canceled, was_running) = match outcome {
                CancelOutcome::Canceled => (true, false),
                CancelOutcome::KillRequested => (true, true),
                CancelOutcome::LeftRunning => (false, true),
                CancelOutcome::AlreadyEnded => (false, false),
            };
            Json::new().flag("canceled", canceled).flag("wasRunning", was_running).build()
        }
        (Step::CancelTasks, Reply::CanceledTasks(canceled)) => Json::new()
            .text("cursor", &render::cursor(canceled.next_cursor))
            .time("now", now)
            .int32("matched", i64::from(canceled.matched))
            .build(),
        (Step::ListTasks { performance_stats }, Reply::Tasks { tasks, next_cursor }) => {
            let items = tasks.iter().map(|task| render::task_result(task, performance_stats)).collect();
            task_list(items, next_cursor, now_unix_ms)
        }
        (Step::ListTaskRequests, Reply::Tasks { tasks, next_cursor }) => {
            task_list(tasks.iter().map(render::stored_request).collect(), next_cursor, now_unix_ms)
        }
        (Step::CountTasks, Reply::TaskCount { count, .. }) => {
            Json::new().int32("count", count.min(i32::MAX as u64) as i64).time("now", now).build()
        }
        (_, reply) => return Err(unexpected(method, &reply)),
    })
}

/// `TaskListResponse` and `TaskRequestsResponse`.
pub(crate) fn task_list(items: Vec<Value>, next_cursor: Option<u64>, now_unix_ms: u64) -> Value {
    Json::new().text("cursor", &render::cursor(next_cursor)).list("items", items).time("now", Some(now_unix_ms)).build()
}

/// `TaskRequestMetadataResponse` of a created task: the request as sent, and
/// what the creation tells of the result.
fn created(
    request: &NewTaskRequest,
    has_secret: bool,
    parent_task_id: Option<u64>,
    ack: &apiary_protocol::NewTaskAck,
) -> Value {
    let created_unix_ms = RequestId::from_u64(ack.task_id).map(RequestId::created_unix_ms);
    let shown_request = render::task_request(request, Some(ack.task_id), created_unix_ms, has_secret)
        .task_id("parentTaskId", parent_task_id)
        .build();
    let task_result = Json::new()
        .task_id("taskId", Some(ack.task_id))
        .time("createdTs", created_unix_ms)
        .task_id("dedupedFrom", ack.deduped_from)
        .time("modifiedTs", created_unix_ms)
        .text("state", ack.state.name())
        .text("name", &request.name)
        .texts("tags", &request.tags)
        .text("user", &request.user)
        .task_id("runId", ack.deduped_from)
        .build();
    Json::new()
        .task_id("taskId", Some(ack.task_id))
        .message("request", shown_request)
        .message("taskResult", task_result)
        .build()
}

/// `BatchGetResultResponse`: each task's result or error, in the order asked.
fn batch_results(task_ids: &[String], replies: Vec<Reply>, performance_stats: bool) -> Result<Value, ApiError> {
    check_count(Method::BatchGetResult, task_ids.len(), replies.len())?;
    let mut results = Vec::with_capacity(task_ids.len());
    for (task_id, reply) in task_ids.iter().zip(replies) {
        let outcome = match reply {
            Reply::Task(result) => ("result", render::task_result(&result, performance_stats)),
            Reply::Error(error) => {
                let code = crate::GrpcCode::of(error.code) as i64;
                ("error", Json::new().int32("code", code).text("message", &error.message).build())
            }
            other => return Err(unexpected(Method::BatchGetResult, &other)),
        };
        results.push(Json::new().text("taskId", task_id).message(outcome.0, outcome.1).build());
    }
    Ok(Json::new().list("results", results).build())
}

/// `TaskStates`: one state per id; the first task that cannot be read fails
/// the call, naming it (as Swarming does).
fn task_states(task_ids: &[String], replies: Vec<Reply>) -> Result<Value, ApiError> {
    check_count(Method::ListTaskStates, task_ids.len(), replies.len())?;
    let mut states = Vec::with_capacity(task_ids.len());
    for (task_id, reply) in task_ids.iter().zip(replies) {
        match refusal(reply) {
            Ok(Reply::Task(result)) => states.push(Value::String(result.state.name().to_string())),
            Ok(other) => return Err(unexpected(Method::ListTaskStates, &other)),
            Err(error) => return Err(ApiError::new(error.code, format!("{task_id}: {}", error.message))),
        }
    }
    Ok(Json::new().list("states", states).build())
}

/// `TaskOutputResponse` from the task's result and its output read.
fn stdout(replies: Vec<Reply>) -> Result<Value, ApiError> {
    check_count(Method::GetStdout, 2, replies.len())?;
    let mut replies = replies.into_iter().map(refusal);
    let (Some(task), Some(output)) = (replies.next(), replies.next()) else { unreachable!("two replies, checked") };
    let state = match task? {
        Reply::Task(result) => result.state,
        other => return Err(unexpected(Method::GetStdout, &other)),
    };
    match output? {
        Reply::Output { data, .. } => Ok(Json::new().bytes("output", &data).text("state", state.name()).build()),
        other => Err(unexpected(Method::GetStdout, &other)),
    }
}

fn check_count(method: Method, expected: usize, count: usize) -> Result<(), ApiError> {
    if expected == count {
        return Ok(());
    }
    Err(ApiError::new(
        GrpcCode::Internal,
        format!("{method:?}: expected {expected} replies from the core, got {count}"),
    ))
}

//! `swarming.v2.Bots`: reading, listing and managing bots.
//!
//! Where Apiary differs from Swarming:
//! - Bots have no maintenance state: `in_maintenance: TRUE` lists no bot,
//!   and `maintenance` counts are absent.
//! - `ListBots` pages over the bots the core lists (sorted by id); the cursor
//!   is the last bot id of the page. `death_timeout` is left out.
//! - `TerminateBot` creates no termination task: the bot exits once its
//!   current task ends, and the answer has no `task_id`. Wait for it with
//!   `GetBot` (`state` says `shut_down`) or `ListBotEvents`.
//! - `ListBotTasks` filters its page by `state`, `start` and `end` after the
//!   core read it, so a page may hold fewer than `limit` tasks and still
//!   have a cursor. Only `QUERY_CREATED_TS` sorts.
//! - `GetBotDimensions` aggregates the bots known now (dead ones included).
//! - A bot's `state` is Apiary's JSON: `connected`, `quarantined` (the
//!   reason), `terminate_requested`, `shut_down`, `named_caches_bytes`.

use apiary_protocol::ids::bot_id_error;
use apiary_protocol::{BotEventQuery, BotInfo, Reply, Request, StateQuery, StringPair, TaskResult, TaskState};
use serde_json::{Value, json};

use crate::input::{EnumValues, Message, invalid};
use crate::render::{self, Json};
use crate::tasks::{DEFAULT_PAGE, page_limit, state_query, task_list};
use crate::{ApiError, Call, Method, Step as CallStep, one_reply, unexpected};

/// Swarming's `NullableBool`.
const NULLABLE_BOOL: &EnumValues = &[("NULL", 0), ("FALSE", 1), ("TRUE", 2)];

/// What a Bots call's `finish` needs of its body.
#[derive(Debug)]
pub(crate) enum Step {
    GetBot,
    DeleteBot,
    TerminateBot,
    ListBots { filter: BotFilter, limit: usize, after: Option<String> },
    CountBots,
    ListBotEvents,
    ListBotTasks { filter: TaskFilter, performance_stats: bool },
    GetBotDimensions,
}

/// `BotsRequest`'s filters on a bot's standing: `None` for either.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BotFilter {
    quarantined: Option<bool>,
    in_maintenance: Option<bool>,
    is_dead: Option<bool>,
    is_busy: Option<bool>,
}

impl BotFilter {
    fn matches(&self, bot: &BotInfo) -> bool {
        let wanted = |filter: Option<bool>, value: bool| filter.is_none_or(|wanted| wanted == value);
        wanted(self.quarantined, bot.quarantine_reason.is_some())
            && wanted(self.in_maintenance, false)
            && wanted(self.is_dead, bot.dead)
            && wanted(self.is_busy, bot.current_run_id.is_some())
    }
}

/// `BotTasksRequest`'s filters, applied to the page the core gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskFilter {
    state: StateQuery,
    since_unix_ms: Option<u64>,
    until_unix_ms: Option<u64>,
}

impl TaskFilter {
    fn matches(&self, task: &TaskResult) -> bool {
        self.state.matches(task.state, task.exit_code, task.deduped_from.is_some())
            && self.since_unix_ms.is_none_or(|since| task.created_unix_ms >= since)
            && self.until_unix_ms.is_none_or(|until| task.created_unix_ms < until)
    }
}

pub(crate) fn plan(method: Method, body: &Value) -> Result<Call, ApiError> {
    let ask = |request: Request, step: Step| Ok(Call::ask(method, vec![request], CallStep::Bots(step)));
    match method {
        Method::GetBot => ask(Request::GetBot { bot_id: bot_request(body)? }, Step::GetBot),
        Method::DeleteBot => ask(Request::DeleteBot { bot_id: bot_request(body)? }, Step::DeleteBot),
        Method::TerminateBot => {
            let message = Message::read(body, "swarming.v2.TerminateRequest", &["bot_id", "reason"])?;
            let request =
                Request::TerminateBot { bot_id: message.required_string("bot_id")?, reason: message.string("reason")? };
            ask(request, Step::TerminateBot)
        }
        Method::ListBots => list_bots(body),
        Method::CountBots => {
            let message = Message::read(body, "swarming.v2.BotsCountRequest", &["dimensions"])?;
            ask(Request::CountBots { dimensions: message.string_pairs("dimensions")? }, Step::CountBots)
        }
        Method::ListBotEvents => {
            let message =
                Message::read(body, "swarming.v2.BotEventsRequest", &["bot_id", "limit", "cursor", "start", "end"])?;
            let query = BotEventQuery {
                bot_id: message.required_string("bot_id")?,
                limit: page_limit(&message, DEFAULT_PAGE)?,
                cursor: message.cursor("cursor")?,
                since_unix_ms: message.timestamp("start")?,
                until_unix_ms: message.timestamp("end")?,
            };
            ask(Request::ListBotEvents(query), Step::ListBotEvents)
        }
        Method::ListBotTasks => list_bot_tasks(body),
        Method::GetBotDimensions => {
            let message = Message::read(body, "swarming.v2.BotsDimensionsRequest", &["pool"])?;
            let pool = message.string("pool")?;
            let dimensions = if pool.is_empty() { Vec::new() } else { vec![StringPair::new("pool", &pool)] };
            ask(Request::ListBots { dimensions }, Step::GetBotDimensions)
        }
        other => unreachable!("{other:?} is not a method of {}", crate::BOTS_SERVICE),
    }
}

/// The `bot_id` of a `BotRequest`.
fn bot_request(body: &Value) -> Result<String, ApiError> {
    Message::read(body, "swarming.v2.BotRequest", &["bot_id"])?.required_string("bot_id")
}

fn list_bots(body: &Value) -> Result<Call, ApiError> {
    let fields = &["limit", "cursor", "dimensions", "quarantined", "in_maintenance", "is_dead", "is_busy"];
    let message = Message::read(body, "swarming.v2.BotsRequest", fields)?;
    let nullable = |field: &str| -> Result<Option<bool>, ApiError> {
        Ok(match message.enumeration(field, NULLABLE_BOOL)? {
            0 => None,
            number => Some(number == 2),
        })
    };
    let filter = BotFilter {
        quarantined: nullable("quarantined")?,
        in_maintenance: nullable("in_maintenance")?,
        is_dead: nullable("is_dead")?,
        is_busy: nullable("is_busy")?,
    };
    let after = message.string("cursor")?;
    if !after.is_empty() && bot_id_error(&after).is_some() {
        return Err(invalid("cursor", format!("{after:?} is not a cursor this server gave")));
    }
    let step = Step::ListBots {
        filter,
        limit: page_limit(&message, DEFAULT_PAGE)? as usize,
        after: (!after.is_empty()).then_some(after),
    };
    let request = Request::ListBots { dimensions: message.string_pairs("dimensions")? };
    Ok(Call::ask(Method::ListBots, vec![request], CallStep::Bots(step)))
}

fn list_bot_tasks(body: &Value) -> Result<Call, ApiError> {
    let fields = &["bot_id", "limit", "cursor", "start", "end", "state", "sort", "include_performance_stats"];
    let message = Message::read(body, "swarming.v2.BotTasksRequest", fields)?;
    let bot_id = message.required_string("bot_id")?;
    crate::tasks::only_creation_order(&message)?;
    let state = state_query(&message, "state")?;
    if let Some(reason) = never_on_a_bot(state) {
        return Err(invalid("state", reason));
    }
    let filter =
        TaskFilter { state, since_unix_ms: message.timestamp("start")?, until_unix_ms: message.timestamp("end")? };
    let step = Step::ListBotTasks { filter, performance_stats: message.bool("include_performance_stats")? };
    let request =
        Request::ListBotTasks { bot_id, limit: page_limit(&message, DEFAULT_PAGE)?, cursor: message.cursor("cursor")? };
    Ok(Call::ask(Method::ListBotTasks, vec![request], CallStep::Bots(step)))
}

/// Why a state filter of `ListBotTasks` would always list nothing (Swarming's words).
fn never_on_a_bot(state: StateQuery) -> Option<&'static str> {
    Some(match state {
        StateQuery::One(TaskState::Pending) => {
            "the default QUERY_PENDING lists nothing, since pending tasks are not associated with bots: use \
             another filter (perhaps QUERY_ALL?)"
        }
        StateQuery::PendingRunning => {
            "QUERY_PENDING_RUNNING is QUERY_RUNNING here, since pending tasks are not associated with bots: use \
             QUERY_RUNNING"
        }
        StateQuery::One(TaskState::Expired) => "QUERY_EXPIRED lists nothing, since expired tasks never ran on a bot",
        StateQuery::Deduped => "QUERY_DEDUPED lists nothing, since deduped tasks never ran on a bot",
        StateQuery::One(TaskState::NoResource) => {
            "QUERY_NO_RESOURCE lists nothing, since such tasks never ran on a bot"
        }
        StateQuery::One(TaskState::Canceled) => {
            "QUERY_CANCELED lists nothing, since canceled tasks never ran on a bot (perhaps QUERY_KILLED?)"
        }
        _ => return None,
    })
}

pub(crate) fn finish(step: Step, replies: Vec<Reply>, now_unix_ms: u64) -> Result<Value, ApiError> {
    let method = step.method();
    answer(step, one_reply(method, replies)?, now_unix_ms)
}

impl Step {
    fn method(&self) -> Method {
        match self {
            Step::GetBot => Method::GetBot,
            Step::DeleteBot => Method::DeleteBot,
            Step::TerminateBot => Method::TerminateBot,
            Step::ListBots { .. } => Method::ListBots,
            Step::CountBots => Method::CountBots,
            Step::ListBotEvents => Method::ListBotEvents,
            Step::ListBotTasks { .. } => Method::ListBotTasks,
            Step::GetBotDimensions => Method::GetBotDimensions,
        }
    }
}

/// The answer; an error when the reply is not of the kind expected.
fn answer(step: Step, reply: Reply, now_unix_ms: u64) -> Result<Value, ApiError> {
    let method = step.method();
    let now = Some(now_unix_ms);
    Ok(match (step, reply) {
        (Step::GetBot, Reply::Bot(bot)) => render::bot(&bot),
        (Step::DeleteBot, Reply::BotDeleted) => json!({"deleted": true}),
        (Step::TerminateBot, Reply::Bot(_)) => json!({}),
        (Step::ListBots { filter, limit, after }, Reply::Bots(bots)) => {
            bot_page(&bots, filter, limit, after, now_unix_ms)
        }
        (Step::CountBots, Reply::BotCounts(counts)) => Json::new()
            .time("now", now)
            .int32("count", i64::from(counts.count))
            .int32("quarantined", i64::from(counts.quarantined))
            .int32("dead", i64::from(counts.dead))
            .int32("busy", i64::from(counts.busy))
            .build(),
        (Step::ListBotEvents, Reply::BotEvents { events, next_cursor }) => Json::new()
            .text("cursor", &render::cursor(next_cursor))
            .list("items", events.iter().map(render::bot_event).collect())
            .time("now", now)
            .build(),
        (Step::ListBotTasks { filter, performance_stats }, Reply::Tasks { tasks, next_cursor }) => {
            let items = tasks
                .iter()
                .filter(|task| filter.matches(task))
                .map(|task| render::task_result(task, performance_stats))
                .collect();
            task_list(items, next_cursor, now_unix_ms)
        }
        (Step::GetBotDimensions, Reply::Bots(bots)) => {
            let all: Vec<StringPair> = bots.into_iter().flat_map(|bot| bot.dimensions).collect();
            Json::new().list("botsDimensions", render::dimension_lists(&all)).time("ts", now).build()
        }
        (_, reply) => return Err(unexpected(method, &reply)),
    })
}

/// `BotInfoListResponse`: the bots after `after` (the core lists them sorted
/// by id) that pass `filter`, at most `limit`, and a cursor when more follow.
fn bot_page(bots: &[BotInfo], filter: BotFilter, limit: usize, after: Option<String>, now_unix_ms: u64) -> Value {
    let mut matching = bots
        .iter()
        .filter(|bot| after.as_deref().is_none_or(|after| bot.bot_id.as_str() > after))
        .filter(|bot| filter.matches(bot));
    let page: Vec<&BotInfo> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    let cursor = if more { page.last().map_or("", |bot| bot.bot_id.as_str()) } else { "" };
    Json::new()
        .text("cursor", cursor)
        .list("items", page.into_iter().map(render::bot).collect())
        .time("now", Some(now_unix_ms))
        .build()
}

//! `swarming.v2.Swarming`: what the server is (`GetDetails`) and what the
//! caller may do (`GetPermissions`).
//!
//! Permissions map onto the daemon's `[[permissions]]` as Swarming's do onto
//! its realms: `delete_bot`/`delete_bots` are `delete_bot`, `terminate_bot`
//! is `manage_bots`, `cancel_task`/`cancel_tasks` are `cancel_task`,
//! `list_bots` and `list_tasks` the pools with `read_bots` and `read_tasks`.
//! What Swarming checks at the server level is held here when held in every
//! pool. `get_bootstrap_token`, `get_configs` and `put_configs` are always
//! false: Apiary has no bot bootstrap tokens and no configs to serve.

use apiary_protocol::{BotInfo, Reply, Request, TaskResult};
use serde_json::{Value, json};

use crate::input::Message;
use crate::render::Json;
use crate::{ApiError, Call, CallContext, Caller, GrpcCode, Method, Step as CallStep, refusal, unexpected};

const EVERY_POOL: &str = "*";

/// What `GetPermissions`'s `finish` needs of its body.
#[derive(Debug)]
pub(crate) enum Step {
    Permissions { pools: Vec<String>, task: bool, bot: bool },
}

pub(crate) fn plan(method: Method, body: &Value, context: &CallContext<'_>) -> Result<Call, ApiError> {
    match method {
        Method::GetDetails => {
            Message::read(body, "google.protobuf.Empty", &[])?;
            Ok(Call::Answer(Json::new().text("serverVersion", context.server_version).build()))
        }
        Method::GetPermissions => get_permissions(body, context),
        other => unreachable!("{other:?} is not a method of {}", crate::SWARMING_SERVICE),
    }
}

fn get_permissions(body: &Value, context: &CallContext<'_>) -> Result<Call, ApiError> {
    let message = Message::read(body, "swarming.v2.PermissionsRequest", &["bot_id", "task_id", "tags"])?;
    let pools: Vec<String> =
        message.strings("tags")?.iter().filter_map(|tag| tag.strip_prefix("pool:")).map(str::to_string).collect();
    let mut requests = Vec::new();
    let task = !message.string("task_id")?.is_empty();
    if task {
        requests.push(Request::GetTask { task_id: message.task_id("task_id")? });
    }
    let bot_id = message.string("bot_id")?;
    let bot = !bot_id.is_empty();
    if bot {
        requests.push(Request::GetBot { bot_id });
    }
    let step = Step::Permissions { pools, task, bot };
    if requests.is_empty() {
        return finish(step, Vec::new(), context).map(Call::Answer);
    }
    Ok(Call::ask(Method::GetPermissions, requests, CallStep::Details(step)))
}

pub(crate) fn finish(step: Step, replies: Vec<Reply>, context: &CallContext<'_>) -> Result<Value, ApiError> {
    let Step::Permissions { pools, task, bot } = step;
    let expected = usize::from(task) + usize::from(bot);
    if replies.len() != expected {
        let message = format!("GetPermissions: expected {expected} replies from the core, got {}", replies.len());
        return Err(ApiError::new(GrpcCode::Internal, message));
    }
    let mut replies = replies.into_iter();
    let task = if task { Some(task_of(replies.next())?) } else { None };
    let bot = if bot { Some(bot_of(replies.next())?) } else { None };
    Ok(permissions(context.caller, &pools, task.as_ref(), bot.as_ref()))
}

fn task_of(reply: Option<Reply>) -> Result<TaskResult, ApiError> {
    match reply.map(refusal).transpose()? {
        Some(Reply::Task(result)) => Ok(*result),
        other => Err(unexpected(Method::GetPermissions, &other.unwrap_or(Reply::NoWork))),
    }
}

fn bot_of(reply: Option<Reply>) -> Result<BotInfo, ApiError> {
    match reply.map(refusal).transpose()? {
        Some(Reply::Bot(bot)) => Ok(*bot),
        other => Err(unexpected(Method::GetPermissions, &other.unwrap_or(Reply::NoWork))),
    }
}

/// `ClientPermissions`, checked in the pools of `tags` (or everywhere), of
/// the task's current slice and of the bot, as Swarming checks them.
fn permissions(caller: &dyn Caller, tag_pools: &[String], task: Option<&TaskResult>, bot: Option<&BotInfo>) -> Value {
    let everywhere = |permission: &str| caller.pools_with(permission).iter().any(|pool| pool == EVERY_POOL);
    let in_tag_pools = |permission: &str| {
        if tag_pools.is_empty() {
            everywhere(permission)
        } else {
            tag_pools.iter().all(|pool| caller.allows(permission, pool))
        }
    };
    let on_bot = |permission: &str| match bot {
        None => everywhere(permission),
        Some(bot) => bot_pools(bot).any(|pool| caller.allows(permission, pool)),
    };
    let cancel_tasks = in_tag_pools("cancel_task");
    let cancel_task = task.map_or(cancel_tasks, |task| caller.allows("cancel_task", task_pool(task)));
    Json::new()
        .flag("deleteBot", on_bot("delete_bot"))
        .flag("deleteBots", in_tag_pools("delete_bot"))
        .flag("terminateBot", on_bot("manage_bots"))
        .flag("cancelTask", cancel_task)
        .flag("cancelTasks", cancel_tasks)
        .list("listBots", caller.pools_with("read_bots").into_iter().map(|pool| json!(pool)).collect())
        .list("listTasks", caller.pools_with("read_tasks").into_iter().map(|pool| json!(pool)).collect())
        .build()
}

/// The pool of a task: that of its current slice, as the core checks it.
fn task_pool(task: &TaskResult) -> &str {
    let slices = &task.request.task_slices;
    let slice = slices.get(task.current_task_slice as usize).or(slices.first());
    let dimensions = slice.map_or(&[][..], |slice| &slice.properties.dimensions[..]);
    dimensions.iter().find(|pair| pair.key == "pool").map_or("", |pair| pair.value.as_str())
}

fn bot_pools(bot: &BotInfo) -> impl Iterator<Item = &str> {
    bot.dimensions.iter().filter(|pair| pair.key == "pool").map(|pair| pair.value.as_str())
}

//! Apiary's own calls, beside Swarming's, for what the v2 API has no method
//! for and the web UI needs: quarantining a bot by hand and back (Swarming
//! does that through a bot's configuration), and why a task is still pending.
//! They live in services of their own (`apiary.v1.Bots`, `apiary.v1.Tasks`), so
//! no Swarming name is given a meaning Swarming does not know, and take and
//! give JSON in the same mapping as Swarming's calls.
//!
//! - `apiary.v1.Bots/QuarantineBot {bot_id, reason}` and
//!   `apiary.v1.Bots/UnquarantineBot {bot_id}` answer with the bot as
//!   `swarming.v2.Bots/GetBot` does (`manage_bots` in its pool);
//! - `apiary.v1.Tasks/ExplainPending {task_id}` answers the task's `state`
//!   and, for a pending task, `matchingBots`, `busyBots` and `queuePosition`
//!   (left out when 0, as the JSON mapping does) (`read_tasks` in its pool).

use apiary_protocol::{Reply, Request};
use serde_json::Value;

use crate::input::Message;
use crate::render::{self, Json};
use crate::{ApiError, Call, Method, Step as CallStep, one_reply, unexpected};

pub const APIARY_BOTS_SERVICE: &str = "apiary.v1.Bots";
pub const APIARY_TASKS_SERVICE: &str = "apiary.v1.Tasks";

/// What an Apiary call's `finish` needs of its body.
#[derive(Debug)]
pub(crate) enum Step {
    Bot(Method),
    ExplainPending,
}

pub(crate) fn plan(method: Method, body: &Value) -> Result<Call, ApiError> {
    let ask = |request: Request, step: Step| Ok(Call::ask(method, vec![request], CallStep::Apiary(step)));
    match method {
        Method::QuarantineBot => {
            let message = Message::read(body, "apiary.v1.QuarantineRequest", &["bot_id", "reason"])?;
            let reason = match message.string("reason")? {
                reason if reason.is_empty() => "quarantined from the web UI or the API".to_string(),
                reason => reason,
            };
            let request = Request::QuarantineBot { bot_id: message.required_string("bot_id")?, reason };
            ask(request, Step::Bot(method))
        }
        Method::UnquarantineBot => {
            let message = Message::read(body, "apiary.v1.BotRequest", &["bot_id"])?;
            ask(Request::UnquarantineBot { bot_id: message.required_string("bot_id")? }, Step::Bot(method))
        }
        Method::ExplainPending => {
            let message = Message::read(body, "apiary.v1.TaskIdRequest", &["task_id"])?;
            ask(Request::GetTask { task_id: message.task_id("task_id")? }, Step::ExplainPending)
        }
        other => unreachable!("{other:?} is not one of Apiary's own methods"),
    }
}

pub(crate) fn finish(step: Step, replies: Vec<Reply>) -> Result<Value, ApiError> {
    let method = match step {
        Step::Bot(method) => method,
        Step::ExplainPending => Method::ExplainPending,
    };
    match (step, one_reply(method, replies)?) {
        (Step::Bot(_), Reply::Bot(bot)) => Ok(render::bot(&bot)),
        (Step::ExplainPending, Reply::Task(task)) => {
            let json = Json::new().text("state", task.state.name());
            Ok(match task.pending {
                Some(pending) => json
                    .int32("matchingBots", i64::from(pending.matching_bots))
                    .int32("busyBots", i64::from(pending.busy_bots))
                    .int64("queuePosition", pending.queue_position as i64)
                    .build(),
                None => json.build(),
            })
        }
        (_, reply) => Err(unexpected(method, &reply)),
    }
}

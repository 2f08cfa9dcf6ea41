//! Swarming's v2 API (`swarming.v2.Tasks`, `swarming.v2.Bots`,
//! `swarming.v2.Swarming`) as pRPC carries it in JSON: a call's body decoded
//! into the requests Apiary's core answers, and their replies rendered as the
//! proto3 JSON mapping of Swarming's messages. Pure functions: no I/O, no
//! knowledge of connections; the daemon's HTTP listener does the transport.
//! The one thing read from outside is the wall clock, for the `now` some
//! answers carry (`finish`).
//!
//! A call goes through three steps:
//! 1. `Method::parse` names it from the URL (`/prpc/<service>/<method>`);
//! 2. `plan` reads its body into a `Call`: either an answer at once, or the
//!    requests to hand to the core, in order;
//! 3. `finish` turns the core's replies (one per request, in the same order)
//!    into the answer.
//!
//! What Apiary lacks of Swarming, and what each method does instead, is
//! listed in the README's "Swarming v2 API" section; each module says it
//! again next to the code.

pub mod new_task;

#[cfg(test)]
mod api_tests;
pub mod apiary;
mod bots;
mod details;
mod input;
mod render;
mod tasks;
mod time;

use apiary_protocol::{ErrorCode, Reply, Request};
use serde_json::Value;

/// The calls of Swarming's v2 API that Apiary serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    NewTask,
    GetResult,
    BatchGetResult,
    GetRequest,
    GetStdout,
    CancelTask,
    CancelTasks,
    ListTasks,
    ListTaskStates,
    ListTaskRequests,
    CountTasks,
    GetBot,
    DeleteBot,
    ListBots,
    CountBots,
    ListBotEvents,
    ListBotTasks,
    TerminateBot,
    GetBotDimensions,
    GetDetails,
    GetPermissions,
    /// Apiary's own calls (`apiary`).
    QuarantineBot,
    UnquarantineBot,
    ExplainPending,
}

/// The pRPC service names of the v2 API.
pub const TASKS_SERVICE: &str = "swarming.v2.Tasks";
pub const BOTS_SERVICE: &str = "swarming.v2.Bots";
pub const SWARMING_SERVICE: &str = "swarming.v2.Swarming";

impl Method {
    pub const ALL: [Method; 24] = [
        Method::NewTask,
        Method::GetResult,
        Method::BatchGetResult,
        Method::GetRequest,
        Method::GetStdout,
        Method::CancelTask,
        Method::CancelTasks,
        Method::ListTasks,
        Method::ListTaskStates,
        Method::ListTaskRequests,
        Method::CountTasks,
        Method::GetBot,
        Method::DeleteBot,
        Method::ListBots,
        Method::CountBots,
        Method::ListBotEvents,
        Method::ListBotTasks,
        Method::TerminateBot,
        Method::GetBotDimensions,
        Method::GetDetails,
        Method::GetPermissions,
        Method::QuarantineBot,
        Method::UnquarantineBot,
        Method::ExplainPending,
    ];

    /// The method a pRPC path names: `service` as in `swarming.v2.Tasks`,
    /// `name` as in `NewTask`; `None` for any other.
    pub fn parse(service: &str, name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|method| method.service() == service && method.name() == name)
    }

    /// The pRPC service the method belongs to.
    pub fn service(self) -> &'static str {
        match self {
            Method::NewTask
            | Method::GetResult
            | Method::BatchGetResult
            | Method::GetRequest
            | Method::GetStdout
            | Method::CancelTask
            | Method::CancelTasks
            | Method::ListTasks
            | Method::ListTaskStates
            | Method::ListTaskRequests
            | Method::CountTasks => TASKS_SERVICE,
            Method::GetBot
            | Method::DeleteBot
            | Method::ListBots
            | Method::CountBots
            | Method::ListBotEvents
            | Method::ListBotTasks
            | Method::TerminateBot
            | Method::GetBotDimensions => BOTS_SERVICE,
            Method::GetDetails | Method::GetPermissions => SWARMING_SERVICE,
            Method::QuarantineBot | Method::UnquarantineBot => apiary::APIARY_BOTS_SERVICE,
            Method::ExplainPending => apiary::APIARY_TASKS_SERVICE,
        }
    }

    /// The method's name in its service, as in the URL.
    pub fn name(self) -> &'static str {
        match self {
            Method::NewTask => "NewTask",
            Method::GetResult => "GetResult",
            Method::BatchGetResult => "BatchGetResult",
            Method::GetRequest => "GetRequest",
            Method::GetStdout => "GetStdout",
            Method::CancelTask => "CancelTask",
            Method::CancelTasks => "CancelTasks",
            Method::ListTasks => "ListTasks",
            Method::ListTaskStates => "ListTaskStates",
            Method::ListTaskRequests => "ListTaskRequests",
            Method::CountTasks => "CountTasks",
            Method::GetBot => "GetBot",
            Method::DeleteBot => "DeleteBot",
            Method::ListBots => "ListBots",
            Method::CountBots => "CountBots",
            Method::ListBotEvents => "ListBotEvents",
            Method::ListBotTasks => "ListBotTasks",
            Method::TerminateBot => "TerminateBot",
            Method::GetBotDimensions => "GetBotDimensions",
            Method::GetDetails => "GetDetails",
            Method::GetPermissions => "GetPermissions",
            Method::QuarantineBot => "QuarantineBot",
            Method::UnquarantineBot => "UnquarantineBot",
            Method::ExplainPending => "ExplainPending",
        }
    }
}

/// What the caller may do, asked by `GetPermissions` and by nothing else (the
/// core checks each request's permissions itself).
pub trait Caller {
    /// Whether the caller holds `permission` (a name of the daemon's
    /// `[[permissions]]`, such as `"cancel_task"`) in `pool`.
    fn allows(&self, permission: &str, pool: &str) -> bool;
    /// The pools in which the caller holds `permission`; `["*"]` for every pool.
    fn pools_with(&self, permission: &str) -> Vec<String>;
}

/// What a call may need to know besides its body.
pub struct CallContext<'a> {
    pub caller: &'a dyn Caller,
    /// The daemon's version, as `GetDetails` reports it.
    pub server_version: &'a str,
}

/// What a call's body asks for.
#[derive(Debug)]
pub enum Call {
    /// The answer, known at once (`GetDetails`, or a call that needs no request).
    Answer(Value),
    /// Requests for the core, in order; their replies go to `finish` with `then`.
    Ask { requests: Vec<Request>, then: Finish },
}

/// How a call's replies become its answer: kept by the daemon between `plan`
/// and `finish`, opaque to it (`method` is there for its logs).
#[derive(Debug)]
pub struct Finish {
    pub method: Method,
    /// What the answer needs besides the replies: what the body asked for.
    step: Step,
}

/// What each method's `finish` needs to know of its body.
#[derive(Debug)]
enum Step {
    Tasks(tasks::Step),
    Bots(bots::Step),
    Details(details::Step),
    Apiary(apiary::Step),
}

impl Call {
    fn ask(method: Method, requests: Vec<Request>, step: Step) -> Call {
        Call::Ask { requests, then: Finish { method, step } }
    }
}

impl ApiError {
    pub(crate) fn new(code: GrpcCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
}

/// A refused or failed call: the gRPC status code pRPC sends, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: GrpcCode,
    pub message: String,
}

/// gRPC status codes (grpc/status.proto), as pRPC sends them in the
/// `X-Prpc-Grpc-Code` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The HTTP status pRPC answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            GrpcCode::Ok => 200,
            GrpcCode::InvalidArgument | GrpcCode::FailedPrecondition | GrpcCode::OutOfRange => 400,
            GrpcCode::Unauthenticated => 401,
            GrpcCode::PermissionDenied => 403,
            GrpcCode::NotFound => 404,
            GrpcCode::AlreadyExists | GrpcCode::Aborted => 409,
            GrpcCode::ResourceExhausted => 429,
            GrpcCode::Cancelled => 499,
            GrpcCode::Unimplemented => 501,
            GrpcCode::Unavailable => 503,
            GrpcCode::DeadlineExceeded => 504,
            GrpcCode::Unknown | GrpcCode::Internal | GrpcCode::DataLoss => 500,
        }
    }

    /// The code of a refusal of the binary protocol.
    pub fn of(code: ErrorCode) -> GrpcCode {
        match code {
            ErrorCode::InvalidRequest | ErrorCode::FrameTooLarge | ErrorCode::BadHello => GrpcCode::InvalidArgument,
            ErrorCode::NotFound => GrpcCode::NotFound,
            ErrorCode::Unauthenticated => GrpcCode::Unauthenticated,
            ErrorCode::PermissionDenied => GrpcCode::PermissionDenied,
            ErrorCode::Unavailable => GrpcCode::Unavailable,
            ErrorCode::StaleRun | ErrorCode::Superseded => GrpcCode::FailedPrecondition,
            ErrorCode::Internal => GrpcCode::Internal,
            ErrorCode::ResourceExhausted => GrpcCode::ResourceExhausted,
        }
    }
}

/// Reads a call's body (`null` for an empty one) into what it asks for.
pub fn plan(method: Method, body: &Value, context: &CallContext<'_>) -> Result<Call, ApiError> {
    match method.service() {
        TASKS_SERVICE => tasks::plan(method, body),
        BOTS_SERVICE => bots::plan(method, body),
        SWARMING_SERVICE => details::plan(method, body, context),
        _ => apiary::plan(method, body),
    }
}

/// Turns the core's replies to a call's requests (in their order) into its
/// answer. Listings and counts give the time of this call as `now`.
pub fn finish(then: Finish, replies: Vec<Reply>, context: &CallContext<'_>) -> Result<Value, ApiError> {
    finish_at(then, replies, context, unix_now_ms())
}

/// `finish` at `now_unix_ms`, the time answers give as `now`.
fn finish_at(
    then: Finish,
    replies: Vec<Reply>,
    context: &CallContext<'_>,
    now_unix_ms: u64,
) -> Result<Value, ApiError> {
    match then.step {
        Step::Tasks(step) => tasks::finish(step, replies, now_unix_ms),
        Step::Bots(step) => bots::finish(step, replies, now_unix_ms),
        Step::Details(step) => details::finish(step, replies, context),
        Step::Apiary(step) => apiary::finish(step, replies),
    }
}

fn unix_now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// The one reply a single-request call expects, or the core's refusal as the call's error.
fn one_reply(method: Method, replies: Vec<Reply>) -> Result<Reply, ApiError> {
    let count = replies.len();
    let mut replies = replies.into_iter();
    match (replies.next(), count) {
        (Some(reply), 1) => refusal(reply),
        _ => Err(ApiError::new(GrpcCode::Internal, format!("{method:?}: expected 1 reply from the core, got {count}"))),
    }
}

/// A reply, or the refusal it carries as an error.
fn refusal(reply: Reply) -> Result<Reply, ApiError> {
    match reply {
        Reply::Error(error) => Err(ApiError::new(GrpcCode::of(error.code), error.message)),
        other => Ok(other),
    }
}

/// The error when the core answers a request with a reply of another kind.
fn unexpected(method: Method, reply: &Reply) -> ApiError {
    let kind = reply_kind(reply);
    ApiError::new(GrpcCode::Internal, format!("{method:?}: the core answered with an unexpected reply ({kind})"))
}

fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Welcome { .. } => "Welcome",
        Reply::Error(_) => "Error",
        Reply::Created(_) => "Created",
        Reply::Task(_) => "Task",
        Reply::Output { .. } => "Output",
        Reply::Bots(_) => "Bots",
        Reply::Bot(_) => "Bot",
        Reply::Tasks { .. } => "Tasks",
        Reply::Canceled { .. } => "Canceled",
        Reply::ValidRequest(_) => "ValidRequest",
        Reply::BotEvents { .. } => "BotEvents",
        Reply::TaskCount { .. } => "TaskCount",
        Reply::CanceledTasks(_) => "CanceledTasks",
        Reply::BotCounts(_) => "BotCounts",
        Reply::BotDeleted => "BotDeleted",
        Reply::Terminate => "Terminate",
        Reply::Assignment(_) => "Assignment",
        Reply::NoWork => "NoWork",
        Reply::UpdateAck { .. } => "UpdateAck",
        Reply::CasMissing { .. } => "CasMissing",
        Reply::CasStored => "CasStored",
        Reply::CasUploadOffset { .. } => "CasUploadOffset",
        Reply::CasBlobs { .. } => "CasBlobs",
        Reply::CasData { .. } => "CasData",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_through_its_service_and_name() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.service(), method.name()), Some(method), "{method:?}");
            assert_eq!(format!("{method:?}"), method.name());
        }
        assert_eq!(Method::parse(TASKS_SERVICE, "GetBot"), None);
        assert_eq!(Method::parse("swarming.v1.Tasks", "NewTask"), None);
        assert_eq!(Method::parse(SWARMING_SERVICE, "GetToken"), None);
        assert_eq!(Method::parse(TASKS_SERVICE, "newtask"), None);
    }

    #[test]
    fn the_core_refusals_keep_their_code() {
        let reply = Reply::Error(apiary_protocol::ErrorReply {
            code: ErrorCode::PermissionDenied,
            message: "permission read_tasks: principal ci lacks it in pool p".to_string(),
        });
        assert_eq!(
            one_reply(Method::GetResult, vec![reply]),
            Err(ApiError::new(GrpcCode::PermissionDenied, "permission read_tasks: principal ci lacks it in pool p"))
        );
        let none = one_reply(Method::GetResult, Vec::new()).unwrap_err();
        assert_eq!(none.code, GrpcCode::Internal);
        assert_eq!(
            unexpected(Method::GetBot, &Reply::NoWork).message,
            "GetBot: the core answered with an unexpected reply (NoWork)"
        );
    }
}

//! Swarming's v2 API (`swarming.v2.Tasks`, `swarming.v2.Bots`,
//! `swarming.v2.Swarming`) as pRPC carries it in JSON: a call's body decoded
//! into the requests Apiary's core answers, and their replies rendered as the
//! proto3 JSON mapping of Swarming's messages. Pure functions: no I/O, no
//! knowledge of connections; the daemon's HTTP listener does the transport.
//!
//! A call goes through three steps:
//! 1. `Method::parse` names it from the URL (`/prpc/<service>/<method>`);
//! 2. `plan` reads its body into a `Call`: either an answer at once, or the
//!    requests to hand to the core, in order;
//! 3. `finish` turns the core's replies (one per request, in the same order)
//!    into the answer.

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
}

impl Method {
    /// The method a pRPC path names: `service` as in `swarming.v2.Tasks`,
    /// `name` as in `NewTask`; `None` for any other.
    pub fn parse(service: &str, name: &str) -> Option<Method> {
        let _ = (service, name);
        None
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
/// and `finish`, opaque to it.
#[derive(Debug)]
pub struct Finish {
    pub method: Method,
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
        }
    }
}

/// Reads a call's body (`null` for an empty one) into what it asks for.
pub fn plan(method: Method, body: &Value, context: &CallContext<'_>) -> Result<Call, ApiError> {
    let _ = (body, context);
    Err(ApiError { code: GrpcCode::Unimplemented, message: format!("{method:?} is not served yet") })
}

/// Turns the core's replies to a call's requests (in their order) into its answer.
pub fn finish(then: Finish, replies: Vec<Reply>, context: &CallContext<'_>) -> Result<Value, ApiError> {
    let _ = (replies, context);
    Err(ApiError { code: GrpcCode::Unimplemented, message: format!("{:?} is not served yet", then.method) })
}

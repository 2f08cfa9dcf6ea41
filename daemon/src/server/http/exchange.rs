//! The HTTP side of one connection: the bytes of requests not yet taken, and
//! the one request being answered (its exchange). Requests are answered one
//! at a time, in order: the next is taken from the buffer only once the
//! response to the last is queued whole, so responses never interleave.
//!
//! An exchange collects what the core answers its requests, after the turn's
//! sync made them durable, and says when its response is ready: a pRPC call
//! when every reply is in (`apiary_swarming::finish` makes its answer), an
//! output read or stream as each chunk arrives.

use std::sync::Arc;

use apiary_protocol::{Reply, Request};
use apiary_swarming::{ApiError, CallContext, Finish, GrpcCode};

use super::caller::GrantsCaller;
use super::response;
use crate::auth::Grants;

#[derive(Default)]
pub struct HttpConnection {
    /// Bytes read and not yet taken as a request: at most `SMALL_FRAME_BYTES`,
    /// or the request being read when it was granted more by the input budget.
    pub inbound: Vec<u8>,
    /// Input budget held for the request being read (0: it fits on its own).
    pub granted_bytes: usize,
    pub exchange: Option<Exchange>,
    /// Close once the response is written: `Connection: close`, HTTP/1.0, or
    /// a request that could not be read.
    pub close_after_response: bool,
    /// The peer closed its side: once what it sent is answered, the connection closes.
    pub peer_closed: bool,
    /// `100 Continue` was sent for the request being read.
    pub told_continue: bool,
    /// The request id of the next request handed to the core.
    next_request_id: u64,
}

impl HttpConnection {
    /// Request ids for `count` requests to the core: the first of them.
    pub fn take_request_ids(&mut self, count: usize) -> u64 {
        let first = self.next_request_id.max(1);
        self.next_request_id = first + count as u64;
        first
    }
}

/// The request being answered.
pub enum Exchange {
    Call(CallExchange),
    Output(OutputExchange),
}

/// A pRPC call whose requests are with the core.
pub struct CallExchange {
    /// Taken when the answer is made.
    finish: Option<Finish>,
    pub first_request_id: u64,
    /// One per request, in order, as they arrive.
    pub replies: Vec<Option<Reply>>,
    /// The caller's grants, for `finish` (`None` while access is open).
    pub grants: Option<Arc<Grants>>,
    pub keep_alive: bool,
}

/// What `finish` is told of the daemon.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

impl CallExchange {
    pub fn new(
        finish: Finish,
        requests: &[Request],
        first_request_id: u64,
        grants: Option<Arc<Grants>>,
        keep_alive: bool,
    ) -> Self {
        let replies = requests.iter().map(|_| None).collect();
        CallExchange { finish: Some(finish), first_request_id, replies, grants, keep_alive }
    }

    /// Takes the reply to one of its requests; the response once all are in.
    pub fn reply(&mut self, request_id: u64, reply: Reply) -> Option<Vec<u8>> {
        let index = request_id.checked_sub(self.first_request_id)? as usize;
        let slot = self.replies.get_mut(index)?;
        if slot.is_some() {
            return None; // A request has one reply; a second is not its.
        }
        *slot = Some(reply);
        self.try_answer()
    }

    /// The response, once every reply is in (at once for a call without requests).
    pub fn try_answer(&mut self) -> Option<Vec<u8>> {
        if self.replies.iter().any(Option::is_none) {
            return None;
        }
        let finish = self.finish.take()?;
        let replies = std::mem::take(&mut self.replies).into_iter().flatten().collect();
        let caller = GrantsCaller { grants: self.grants.as_deref() };
        let context = CallContext { caller: &caller, server_version: SERVER_VERSION };
        Some(match apiary_swarming::finish(finish, replies, &context) {
            Ok(answer) => response::prpc_answer(&answer, self.keep_alive),
            Err(ApiError { code, message }) => response::prpc_error(code, &message, self.keep_alive),
        })
    }
}

/// A task's output being sent as a chunked body.
pub struct OutputExchange {
    pub request_id: u64,
    /// The head went out: what follows are chunks.
    pub head_sent: bool,
    pub keep_alive: bool,
}

impl OutputExchange {
    /// The response to a refusal of the read (no such task, no permission).
    pub fn refused(&self, reply: &Reply) -> Vec<u8> {
        let (status, message) = match reply {
            Reply::Error(error) => (GrpcCode::of(error.code).http_status(), error.message.clone()),
            other => (500, format!("unexpected reply to an output read: {other:?}")),
        };
        response::text(status, &message, self.keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_protocol::{ErrorCode, ErrorReply};
    use apiary_swarming::{Call, CallContext, Method};

    use crate::server::http::caller::GrantsCaller;

    #[test]
    fn a_call_answers_once_every_reply_is_in() {
        let caller = GrantsCaller { grants: None };
        let context = CallContext { caller: &caller, server_version: "test" };
        let body = serde_json::json!({ "task_ids": ["0000000000000010", "0000000000000020"] });
        let Ok(Call::Ask { requests, then }) = apiary_swarming::plan(Method::BatchGetResult, &body, &context) else {
            panic!("BatchGetResult asks the core");
        };
        assert_eq!(requests, [Request::GetTask { task_id: 16 }, Request::GetTask { task_id: 32 }]);
        let mut call = CallExchange::new(then, &requests, 7, None, true);
        let error = || Reply::Error(ErrorReply { code: ErrorCode::NotFound, message: "no".into() });
        assert!(call.reply(8, error()).is_none(), "the first request's reply is still out");
        assert!(call.reply(99, error()).is_none(), "not a request of this call");
        let answer = String::from_utf8(call.reply(7, error()).expect("both are in")).unwrap();
        assert!(answer.contains("X-Prpc-Grpc-Code: "), "{answer}");
    }

    #[test]
    fn request_ids_are_handed_out_in_order_from_one() {
        let mut connection = HttpConnection::default();
        assert_eq!(connection.take_request_ids(2), 1);
        assert_eq!(connection.take_request_ids(1), 3);
    }
}

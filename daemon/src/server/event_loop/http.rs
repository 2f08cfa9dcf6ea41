//! The event loop's HTTP connections (`server::http` has the pure parts).
//!
//! A request is read whole (head within `MAX_HEAD_BYTES`, body by
//! `Content-Length`, a body over `SMALL_FRAME_BYTES` only once the shared
//! input budget granted it), then answered: at once when it needs nothing of
//! the core, or by handing the core its requests as the binary path does
//! (`Input::Request` with the principal its bearer token names). What the
//! core answers is held until the turn's sync like every reply (`Held`), and
//! only then collected into the response (`release_http`). One request is
//! answered at a time; the next waits in the buffer (or the socket) until the
//! response to the last is queued whole.

use std::io::{self, Read};
use std::sync::Arc;

use apiary_protocol::limits::MAX_OUTPUT_CHUNK_BYTES;
use apiary_protocol::{ErrorCode, Reply, Request};
use apiary_swarming::{ApiError, Call, CallContext, GrpcCode, Method};
use mio::Token;
use serde_json::Value;

use super::{EventLoop, connection_of, read_output, token_of};
use crate::auth::Principal;
use crate::core::{ConnId, Input, Output};
use crate::logging;
use crate::metrics::Refusal;
use crate::server::connection::MAX_READ_BYTES_PER_TURN;
use crate::server::durability::Held;
use crate::server::http::caller::{self, GrantsCaller};
use crate::server::http::exchange::{CallExchange, Exchange, OutputExchange, SERVER_VERSION};
use crate::server::http::request::{self, RequestHead};
use crate::server::http::response;
use crate::server::http::routes::{self, Miss, Route};
use crate::server::inbound::KEPT_INPUT_BYTES;
use crate::server::outbound::{self, Queued};
use crate::server::peer_limits::SMALL_FRAME_BYTES;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// The answer to `Expect: 100-continue` (curl sends it before a body over 1 KiB).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl EventLoop {
    /// Reads a connection's requests and answers them in order, until its
    /// socket is drained, its turn's budget is spent, or it must wait (for
    /// the response in flight, for its peer to take output, for memory).
    pub(super) fn read_http(&mut self, token: Token, now_ms: u64, out: &mut Output) {
        let mut read_bytes = 0;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            if !self.take_http_requests(token, now_ms, out) {
                break;
            }
            if read_bytes >= MAX_READ_BYTES_PER_TURN {
                self.unfinished_reads.push(token);
                break;
            }
            let connection = &mut self.connections[token.0];
            let http = connection.http.as_mut().expect("an HTTP connection");
            if http.peer_closed {
                // Nothing more comes: what was buffered is answered (or was cut short).
                http.close_after_response = true;
                break;
            }
            let room = SMALL_FRAME_BYTES.max(http.granted_bytes).saturating_sub(http.inbound.len());
            let asked = room.min(READ_CHUNK_BYTES);
            if asked == 0 {
                break; // Not reached: a request that outgrows the room is refused or granted more.
            }
            match connection.stream.read(&mut chunk[..asked]) {
                // The peer is done sending (or gone): its whole requests are still answered.
                Ok(0) => http.peer_closed = true,
                Ok(read) => {
                    http.inbound.extend_from_slice(&chunk[..read]);
                    read_bytes += read;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.close(token, now_ms, out, Some(&format!("cannot read from it: {error}")));
                    return;
                }
            }
        }
        self.to_flush.push(token);
        self.arm_deadline(token);
    }

    /// Answers the whole requests buffered, one at a time; false when the
    /// connection is not to be read further now.
    fn take_http_requests(&mut self, token: Token, now_ms: u64, out: &mut Output) -> bool {
        loop {
            let connection = &mut self.connections[token.0];
            let http = connection.http.as_mut().expect("an HTTP connection");
            if connection.closing || http.close_after_response || http.exchange.is_some() {
                return false;
            }
            if connection.outbound.owed_bytes() > self.limits.max_unsent_bytes {
                self.pause_for_output(token);
                return false;
            }
            let head = match request::parse_head(&http.inbound) {
                Ok(Some(head)) => head,
                Ok(None) => return true,
                Err(refusal) => {
                    logging::warn_peer(connection.peer, format!("refusing an HTTP request: {}", refusal.message));
                    if let Some(counted) = shell_refusal(refusal.status) {
                        self.metrics.refused(counted);
                    }
                    self.answer_and_close(token, response::text(refusal.status, &refusal.message, false));
                    return false;
                }
            };
            let total_bytes = head.total_bytes();
            if http.inbound.len() < total_bytes {
                if total_bytes > SMALL_FRAME_BYTES && http.granted_bytes == 0 {
                    if !self.input_budget.try_take(total_bytes) {
                        self.wait_for_memory(token, total_bytes);
                        return false;
                    }
                    self.connections[token.0].http.as_mut().expect("HTTP").granted_bytes = total_bytes;
                }
                let connection = &mut self.connections[token.0];
                let http = connection.http.as_mut().expect("HTTP");
                if head.expects_continue && !std::mem::replace(&mut http.told_continue, true) {
                    connection.outbound.push_now(CONTINUE.to_vec());
                    self.to_flush.push(token);
                }
                return true;
            }
            let body = http.inbound[head.head_bytes..total_bytes].to_vec();
            http.inbound.drain(..total_bytes);
            if http.inbound.is_empty() {
                http.inbound.shrink_to(KEPT_INPUT_BYTES);
            }
            http.told_continue = false;
            let granted = std::mem::take(&mut http.granted_bytes);
            self.input_budget.give_back(granted);
            let monotonic_ms = self.monotonic_ms();
            self.connections[token.0].progressed(monotonic_ms);
            self.on_http_request(token, &head, &body, now_ms, out);
            self.account_output(out);
            self.wake_waiting_for_memory();
        }
    }

    fn on_http_request(&mut self, token: Token, head: &RequestHead, body: &[u8], now_ms: u64, out: &mut Output) {
        let keep_alive = head.keep_alive;
        if !keep_alive {
            self.connections[token.0].http.as_mut().expect("HTTP").close_after_response = true;
        }
        let text = |status: u16, message: &str| (status, response::text(status, message, keep_alive));
        let (status, answer) = match routes::route(&head.method, &head.path) {
            Err(Miss::NotFound) => text(404, &format!("no endpoint at {}", head.path)),
            Err(Miss::MethodNotAllowed(allowed)) => (405, response::method_not_allowed(allowed, keep_alive)),
            Err(Miss::BadTaskId(message)) => text(400, &message),
            Ok(Route::Healthz) => text(200, "ok"),
            Ok(Route::Readyz) if self.shutting_down => text(503, "shutting down"),
            Ok(Route::Readyz) => text(200, "ready"),
            Ok(Route::WebUi { path }) => match crate::web_ui::asset(path) {
                Some(asset) => {
                    let mut headers = vec![("Cache-Control", asset.cache_control.to_string())];
                    headers
                        .extend(crate::web_ui::SECURITY_HEADERS.iter().map(|&(name, value)| (name, value.to_string())));
                    (200, response::whole(200, asset.content_type, &headers, asset.bytes, keep_alive))
                }
                None => text(404, &format!("no file of the web UI at {path}")),
            },
            Ok(Route::Metrics) => {
                let metrics = self.render_metrics();
                (
                    200,
                    response::whole(
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        &[],
                        metrics.as_bytes(),
                        keep_alive,
                    ),
                )
            }
            Ok(Route::Prpc { service, method }) => {
                match self.start_call(token, head, (service, method), body, now_ms, out) {
                    Ok(()) => return,
                    Err(ApiError { code, message }) => {
                        (code.http_status(), response::prpc_error(code, &message, keep_alive))
                    }
                }
            }
            Ok(Route::TaskOutput { task_id, follow }) => {
                match self.start_output(token, head, task_id, follow, now_ms, out) {
                    Ok(()) => return,
                    Err((status, message)) => text(status, &message),
                }
            }
        };
        if let Some(refusal) = shell_refusal(status) {
            self.metrics.refused(refusal);
        }
        self.answer_http(token, answer);
    }

    /// Hands a pRPC call's requests to the core, or answers it at once.
    fn start_call(
        &mut self,
        token: Token,
        head: &RequestHead,
        (service, method_name): (&str, &str),
        body: &[u8],
        now_ms: u64,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        let refusal = |code, message: String| ApiError { code, message };
        let principal = caller::authenticate(&self.access, head.authorization.as_deref())
            .map_err(|message| refusal(GrpcCode::Unauthenticated, message))?;
        if !is_json(head.content_type.as_deref()) {
            let given = head.content_type.as_deref().unwrap_or("none (binary pRPC)");
            let message = format!("Content-Type: {given} is not served; send application/json");
            return Err(refusal(GrpcCode::InvalidArgument, message));
        }
        // Malformed JSON is refused whatever the method: it is the request's fault either way.
        let body: Value = match body.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(body)
                .map_err(|error| refusal(GrpcCode::InvalidArgument, format!("request body: {error}")))?,
        };
        let Some(method) = Method::parse(service, method_name) else {
            let message = format!("method {service}/{method_name}: not a method this daemon serves");
            return Err(refusal(GrpcCode::Unimplemented, message));
        };
        let grants = principal.as_ref().map(|principal| Arc::clone(&principal.grants));
        let caller = GrantsCaller { grants: grants.as_deref() };
        let context = CallContext { caller: &caller, server_version: SERVER_VERSION };
        let (requests, then) = match apiary_swarming::plan(method, &body, &context)? {
            Call::Answer(answer) => {
                self.answer_http(token, response::prpc_answer(&answer, head.keep_alive));
                return Ok(());
            }
            Call::Ask { requests, then } => (requests, then),
        };
        if requests.iter().any(|request| matches!(request, Request::BotPoll(_) | Request::TaskUpdate(_))) {
            let message = format!("{method:?}: bot requests are not accepted over HTTP");
            return Err(refusal(GrpcCode::InvalidArgument, message));
        }
        let http = self.connections[token.0].http.as_mut().expect("HTTP");
        let first_request_id = http.take_request_ids(requests.len());
        let mut call = CallExchange::new(then, &requests, first_request_id, grants.clone(), head.keep_alive);
        if let Some(answer) = call.try_answer() {
            self.answer_http(token, answer);
            return Ok(());
        }
        self.begin_exchange(token, Exchange::Call(call));
        for (index, request) in requests.into_iter().enumerate() {
            self.hand_to_core(token, first_request_id + index as u64, request, principal.as_deref(), now_ms, out);
        }
        Ok(())
    }

    /// Asks the core for a task's output: one read, or a follow.
    fn start_output(
        &mut self,
        token: Token,
        head: &RequestHead,
        task_id: u64,
        follow: bool,
        now_ms: u64,
        out: &mut Output,
    ) -> Result<(), (u16, String)> {
        let principal = caller::authenticate(&self.access, head.authorization.as_deref()).map_err(|m| (401, m))?;
        let offset = number_parameter(&head.query, "offset")?.unwrap_or(0);
        let request = if follow {
            Request::FollowOutput { task_id, offset }
        } else {
            let length = number_parameter(&head.query, "length")?.unwrap_or(u64::MAX);
            let max_bytes = length.min(MAX_OUTPUT_CHUNK_BYTES as u64) as u32;
            Request::GetOutput { task_id, offset, max_bytes }
        };
        let http = self.connections[token.0].http.as_mut().expect("HTTP");
        let request_id = http.take_request_ids(1);
        let output = OutputExchange { request_id, head_sent: false, keep_alive: head.keep_alive };
        self.begin_exchange(token, Exchange::Output(output));
        self.hand_to_core(token, request_id, request, principal.as_deref(), now_ms, out);
        Ok(())
    }

    fn begin_exchange(&mut self, token: Token, exchange: Exchange) {
        let connection = &mut self.connections[token.0];
        connection.http.as_mut().expect("HTTP").exchange = Some(exchange);
        connection.requests_in_flight = 1;
    }

    fn hand_to_core(
        &mut self,
        token: Token,
        request_id: u64,
        request: Request,
        principal: Option<&Principal>,
        now_ms: u64,
        out: &mut Output,
    ) {
        let conn = self.connections[token.0].id;
        let name = principal.map(|principal| Arc::clone(&principal.name));
        let grants = principal.map(|principal| Arc::clone(&principal.grants));
        let input = Input::Request { conn, request_id, request, principal: name, grants };
        self.hand_over(token, input, now_ms, out);
    }

    /// Queues a response made by the shell (nothing it says waits for a sync).
    fn answer_http(&mut self, token: Token, response: Vec<u8>) {
        self.connections[token.0].outbound.push_now(response);
        self.to_flush.push(token);
    }

    fn answer_and_close(&mut self, token: Token, response: Vec<u8>) {
        self.connections[token.0].http.as_mut().expect("HTTP").close_after_response = true;
        self.answer_http(token, response);
    }

    /// A durable reply or read of an HTTP connection's request, given to the
    /// request's exchange; its response, or the next part of it, is queued.
    pub(super) fn release_http(&mut self, item: Held) {
        let conn = item.conn();
        let monotonic_ms = self.monotonic_ms();
        let Some(connection) = connection_of(&mut self.connections, conn) else { return };
        if !connection.outbound.has_unwritten() {
            // The peer's time to take this output starts now.
            connection.progressed(monotonic_ms);
        }
        let http = connection.http.as_mut().expect("released to an HTTP connection");
        let token = token_of(conn);
        match (http.exchange.as_mut(), item) {
            (Some(Exchange::Call(call)), Held::HttpReply { request_id, reply, .. }) => {
                if let Some(answer) = call.reply(request_id, *reply) {
                    self.end_exchange(token, conn, answer);
                }
            }
            (Some(Exchange::Call(call)), Held::Read(read)) => {
                let reply = read_output(&mut self.outputs, &read);
                if let Some(answer) = call.reply(read.request_id, reply) {
                    self.end_exchange(token, conn, answer);
                }
            }
            (Some(Exchange::Output(output)), Held::HttpReply { reply, .. }) if !output.head_sent => {
                let answer = output.refused(&reply);
                self.end_exchange(token, conn, answer);
            }
            (Some(Exchange::Output(output)), Held::Read(read)) if read.request_id == output.request_id => {
                if !std::mem::replace(&mut output.head_sent, true) {
                    let head = response::output_head(read.offset, read.output_len, read.task_ended, output.keep_alive);
                    connection.outbound.push_now(head);
                }
                let ends_request = read.ends_request;
                connection.outbound.owe(outbound::read_bytes_at_most(&read));
                connection.outbound.push(Queued::Read(read));
                self.to_flush.push(token);
                if ends_request {
                    self.end_exchange(token, conn, Vec::new());
                }
            }
            // What is left of a request whose response went out whole (a follow's
            // heartbeat after its end): nothing more is said.
            _ => {}
        }
    }

    /// Queues the last of a response: the connection takes its next request.
    fn end_exchange(&mut self, token: Token, conn: ConnId, last_bytes: Vec<u8>) {
        let Some(connection) = connection_of(&mut self.connections, conn) else { return };
        if !last_bytes.is_empty() {
            connection.outbound.push_now(last_bytes);
        }
        connection.http.as_mut().expect("HTTP").exchange = None;
        connection.requests_in_flight = 0;
        self.to_flush.push(token);
        // Requests that came meanwhile wait in the buffer or the socket.
        self.unfinished_reads.push(token);
    }
}

/// pRPC's JSON encodings: `application/json` (v1.1), or `application/prpc;
/// encoding=json` (v1.0); parameters such as `charset` do not matter.
/// How a refusal the HTTP listener answers itself, before the core sees the
/// request, is counted: under the error code the binary protocol would have
/// answered with; `None` for a success. (A connection refused at the limit is
/// counted where it is refused; the core's own refusals where they are sent.)
fn shell_refusal(status: u16) -> Option<Refusal> {
    let code = match status {
        100..=399 => return None,
        401 => ErrorCode::Unauthenticated,
        404 => ErrorCode::NotFound,
        413 | 431 => ErrorCode::FrameTooLarge,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::InvalidRequest,
    };
    Some(Refusal::Error(code))
}

fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else { return false };
    let mut parts = content_type.split(';').map(str::trim);
    match parts.next().map(str::to_ascii_lowercase).as_deref() {
        Some("application/json") => true,
        Some("application/prpc") => parts.any(|part| part.eq_ignore_ascii_case("encoding=json")),
        _ => false,
    }
}

/// A query parameter that is a number of bytes, if given.
fn number_parameter(query: &str, name: &str) -> Result<Option<u64>, (u16, String)> {
    let Some(value) = request::query_value(query, name) else { return Ok(None) };
    value.parse().map(Some).map_err(|_| (400, format!("{name}: {value:?} is not a number of bytes")))
}

/// The bytes of an output read on an HTTP connection: a chunk of its body,
/// with the body's end after the last. A read that failed cannot change a
/// status already sent: `failed` is set, and the connection is closed
/// without the end, so the peer sees the body cut short.
pub(super) fn output_chunk(reply: Reply, ends_request: bool, failed: &mut bool) -> Vec<u8> {
    match reply {
        Reply::Output { data, .. } => response::chunk(&data, ends_request),
        _ => {
            *failed = true;
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prpc_takes_both_json_content_types_and_nothing_else() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("application/prpc; encoding=json")));
        assert!(!is_json(Some("application/prpc; encoding=binary")));
        assert!(!is_json(Some("application/prpc")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }

    #[test]
    fn refusals_made_by_the_listener_are_counted_under_the_binary_protocols_codes() {
        let code = |status| match shell_refusal(status) {
            Some(Refusal::Error(code)) => Some(code),
            Some(other) => panic!("{status}: {other:?}"),
            None => None,
        };
        assert_eq!(code(200), None);
        assert_eq!(code(100), None);
        assert_eq!(code(401), Some(ErrorCode::Unauthenticated));
        assert_eq!(code(404), Some(ErrorCode::NotFound));
        assert_eq!(code(431), Some(ErrorCode::FrameTooLarge));
        assert_eq!(code(413), Some(ErrorCode::FrameTooLarge));
        for status in [400, 405, 411, 501] {
            assert_eq!(code(status), Some(ErrorCode::InvalidRequest), "{status}");
        }
        assert_eq!(code(GrpcCode::Unimplemented.http_status()), Some(ErrorCode::InvalidRequest));
    }

    #[test]
    fn number_parameters_name_themselves_when_they_are_not_numbers() {
        assert_eq!(number_parameter("offset=12", "offset"), Ok(Some(12)));
        assert_eq!(number_parameter("length=3", "offset"), Ok(None));
        let (status, message) = number_parameter("offset=-1", "offset").unwrap_err();
        assert_eq!(status, 400);
        assert!(message.starts_with("offset: "), "{message}");
    }
}

//! The loop's part in serving the content-addressed store (`server::cas`):
//! a store request is checked and handed to the store's thread, and its
//! connection is not read again until the answer came back, so each
//! connection holds at most one store request's bytes. An answer goes
//! straight to its connection (the store's writes are durable when it
//! answers); the answer for a connection that closed meanwhile is dropped.
//!
//! A task's creation that names input trees goes to the store's thread
//! first, with the connection paused the same way (`server::input_check`),
//! and comes back to be handed to the core, or refused as the core's
//! replies are (held until the turn's records are durable, then sent).
//!
//! The loop also starts the store's garbage collection when it is due
//! (`server::cas_gc`): the core's roots are taken in the turn, the rest of the
//! pass runs on the store's thread, and its report is logged and counted.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use apiary_protocol::{ErrorReply, Reply, Request};
use mio::Token;

use super::{EventLoop, connection_of, push_error, token_of};
use crate::core::{Input, Outgoing, Output};
use crate::logging;
use crate::server::cas::{Answer, INPUT_CHECK_BYTES, Work};
use crate::server::connection::Pause;
use crate::server::input_check;
use crate::server::outbound;
use crate::server::{cas, cas_gc};

impl EventLoop {
    /// Checks a store request and queues it, or answers its refusal.
    pub(super) fn submit_cas(&mut self, token: Token, request_id: u64, request: Request) {
        let connection = &mut self.connections[token.0];
        let principal = connection.principal.as_ref().map(|principal| Arc::clone(&principal.name));
        let grants = connection.principal.as_ref().map(|principal| Arc::clone(&principal.grants));
        let checked = match cas::refuse_permission(principal.as_deref(), grants.as_deref(), &request) {
            Some(refusal) => Err(refusal),
            None => cas::check_limits(&request)
                .map_err(|message| ErrorReply { code: apiary_protocol::ErrorCode::InvalidRequest, message }),
        };
        let queued = checked
            .and_then(|held_bytes| self.cas.submit(connection.id, request_id, Work::Request(request), held_bytes));
        match queued {
            Ok(()) => {
                connection.requests_in_flight += 1;
                connection.paused = Some(Pause::StoreRequest);
            }
            Err(ErrorReply { code, message }) => push_error(&mut self.metrics, connection, request_id, code, message),
        }
    }

    /// Starts a garbage collection pass of the store if one is due.
    pub(super) fn collect_cas_garbage_if_due(&mut self) {
        let now = Instant::now();
        if !self.cas_gc.is_due(now) {
            return;
        }
        let roots = match self.core.cas_roots() {
            Ok(roots) => roots,
            Err(reason) => {
                logging::warn(format!("content-addressed store: no garbage collection now: {reason}"));
                // Tried again a refresh interval later, not at every turn.
                self.cas_gc.started(now);
                self.cas_gc.finished();
                return;
            }
        };
        let unused_since = cas_gc::unused_since(SystemTime::now(), self.cas_gc.grace());
        if self.cas.collect_garbage(roots, unused_since) {
            self.cas_gc.started(now);
        }
    }

    /// Logs and counts what a finished garbage collection pass did.
    pub(super) fn take_cas_gc_report(&mut self) {
        let Some(report) = self.cas.next_gc_report() else { return };
        self.cas_gc.finished();
        self.metrics.cas_garbage_collected(report.counts.removed_blobs, report.counts.removed_bytes);
        if report.stopped.is_some() {
            logging::warn(report.describe());
        } else {
            logging::info(report.describe());
        }
    }

    /// Hands a request to the core, or first to the store's thread when it
    /// creates a task with input trees.
    pub(super) fn hand_over(&mut self, token: Token, input: Input, now_ms: u64, out: &mut Output) {
        let Input::Request { conn, request_id, request, .. } = &input else {
            return self.core.handle(now_ms, input, out);
        };
        if !input_check::has_input_roots(request) {
            return self.core.handle(now_ms, input, out);
        }
        let (conn, request_id) = (*conn, *request_id);
        match self.cas.submit(conn, request_id, Work::CheckInputs(Box::new(input)), INPUT_CHECK_BYTES) {
            Ok(()) => self.connections[token.0].paused = Some(Pause::StoreRequest),
            Err(refusal) => out.replies.push(Outgoing { conn, request_id, reply: Reply::Error(refusal) }),
        }
    }

    /// Sends the store's answers to their connections and reads those again;
    /// checked task creations go on to the core.
    pub(super) fn take_cas_completions(&mut self, now_ms: u64, out: &mut Output) {
        let monotonic_ms = self.monotonic_ms();
        while let Some(completion) = self.cas.next_completion() {
            let reply = match completion.answer {
                Answer::Reply(reply) => *reply,
                Answer::InputsChecked(checked) => {
                    self.resume_after_store(completion.conn);
                    match checked {
                        Ok(input) => self.core.handle(now_ms, *input, out),
                        Err(refusal) => out.replies.push(Outgoing {
                            conn: completion.conn,
                            request_id: completion.request_id,
                            reply: Reply::Error(refusal),
                        }),
                    }
                    self.account_output(out);
                    continue;
                }
            };
            let Some(connection) = connection_of(&mut self.connections, completion.conn) else { continue };
            if let Reply::Error(error) = &reply {
                self.metrics.refused(crate::metrics::Refusal::Error(error.code));
            }
            let frame = outbound::encode_reply_with(&mut self.encoder, completion.request_id, &reply);
            if !connection.outbound.has_unwritten() {
                // The peer's time to take this answer starts now.
                connection.progressed(monotonic_ms);
            }
            connection.outbound.push_now(frame);
            connection.requests_in_flight = connection.requests_in_flight.saturating_sub(1);
            self.resume_after_store(completion.conn);
            self.to_flush.push(token_of(completion.conn));
        }
    }

    /// The connection's store work is done: it is read again.
    fn resume_after_store(&mut self, conn: crate::core::ConnId) {
        let Some(connection) = connection_of(&mut self.connections, conn) else { return };
        if connection.paused == Some(Pause::StoreRequest) {
            connection.paused = None;
            self.unfinished_reads.push(token_of(conn));
        }
    }
}

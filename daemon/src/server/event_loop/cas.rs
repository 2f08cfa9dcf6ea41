//! The loop's part in serving the content-addressed store (`server::cas`):
//! a store request is checked and handed to the store's thread, and its
//! connection is not read again until the answer came back, so each
//! connection holds at most one store request's bytes. An answer goes
//! straight to its connection (the store's writes are durable when it
//! answers); the answer for a connection that closed meanwhile is dropped.
//!
//! The loop also starts the store's garbage collection when it is due
//! (`server::cas_gc`): the core's roots are taken in the turn, the rest of the
//! pass runs on the store's thread, and its report is logged and counted.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use apiary_protocol::{ErrorReply, Reply, Request};
use mio::Token;

use super::{EventLoop, connection_of, push_error, token_of};
use crate::logging;
use crate::server::connection::Pause;
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
        let queued = checked.and_then(|held_bytes| self.cas.submit(connection.id, request_id, request, held_bytes));
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

    /// Sends the store's answers to their connections and reads those again.
    pub(super) fn take_cas_completions(&mut self) {
        let now_ms = self.monotonic_ms();
        while let Some(completion) = self.cas.next_completion() {
            let Some(connection) = connection_of(&mut self.connections, completion.conn) else { continue };
            if let Reply::Error(error) = &completion.reply {
                self.metrics.refused(crate::metrics::Refusal::Error(error.code));
            }
            let frame = outbound::encode_reply_with(&mut self.encoder, completion.request_id, &completion.reply);
            if !connection.outbound.has_unwritten() {
                // The peer's time to take this answer starts now.
                connection.progressed(now_ms);
            }
            connection.outbound.push_now(frame);
            connection.requests_in_flight = connection.requests_in_flight.saturating_sub(1);
            if connection.paused == Some(Pause::StoreRequest) {
                connection.paused = None;
                self.unfinished_reads.push(token_of(completion.conn));
            }
            self.to_flush.push(token_of(completion.conn));
        }
    }
}

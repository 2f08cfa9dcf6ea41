//! One peer connection: its socket, what it said in its hello, its input and
//! output, and the timeouts that apply to it now.

use std::net::SocketAddr;
use std::sync::Arc;

use apiary_protocol::Role;
use apiary_protocol::limits::{MAX_FRAME_PAYLOAD_BYTES, MAX_HELLO_PAYLOAD_BYTES};
use apiary_protocol::tls::Transport;
use mio::net::TcpStream;

use super::bot_admission::EnforcedDimensions;
use super::http::exchange::HttpConnection;
use super::inbound::Inbound;
use super::outbound::Outbound;
use super::peer_limits::PeerLimits;
use crate::auth::Principal;
use crate::core::ConnId;

/// Bytes read from one connection in one turn before others get their turn. Small
/// enough that a pipelined client's first replies leave while it is still sending: at
/// 1 MiB a window of 4,096 new tasks fit in one turn, and the client and the daemon took
/// turns instead of overlapping (docs/hot-path.md).
pub const MAX_READ_BYTES_PER_TURN: usize = 128 << 10;

pub struct Connection {
    pub id: ConnId,
    pub peer: SocketAddr,
    /// The socket, with TLS when the daemon serves it.
    pub stream: Transport<TcpStream>,
    /// Set by the hello; `None` until then.
    pub role: Option<Role>,
    /// Who the hello's token named; `None` while access is open.
    pub principal: Option<Arc<Principal>>,
    /// A bot's last reported dimensions and what its group made of them.
    pub enforced_dimensions: Option<EnforcedDimensions>,
    /// Close once the output is written (after a fatal protocol error).
    pub closing: bool,
    pub inbound: Inbound,
    pub outbound: Outbound,
    /// Requests handed to the core whose last reply has not been produced yet
    /// (a held poll, a wait, a follow).
    pub requests_in_flight: u32,
    /// Why its requests are not read for now, if they are not.
    pub paused: Option<Pause>,
    /// The earliest time the connection is armed for in `Deadlines`.
    pub armed_ms: Option<u64>,
    /// The log said that its next frame waits for input memory.
    pub told_waiting_for_memory: bool,
    /// The log said that a bot request of it was refused (said once per connection).
    pub told_bot_refusal: bool,
    accepted_ms: u64,
    /// The HTTP side of an HTTP connection; `None` for the binary protocol.
    pub http: Option<Box<HttpConnection>>,
    /// The last time a frame arrived, the peer took output, or output started.
    last_progress_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Replies owed to it are over `--max-unsent-bytes`: read again once it drains.
    ForOutput,
    /// Its next frame waits for room in the input budget.
    ForMemory,
    /// Its request to the content-addressed store is being served: one at a time.
    StoreRequest,
}

/// Which timeout applies to a connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Hello,
    Idle,
    /// Output is owed and the peer takes none of it.
    Stalled,
}

impl Connection {
    /// An HTTP connection: it has no hello (each request says who makes it),
    /// and its requests are a client's.
    pub fn new_http(id: ConnId, peer: SocketAddr, stream: Transport<TcpStream>, now_ms: u64) -> Connection {
        let mut connection = Connection::new(id, peer, stream, now_ms);
        connection.role = Some(Role::Client);
        connection.http = Some(Box::default());
        connection
    }

    pub fn new(id: ConnId, peer: SocketAddr, stream: Transport<TcpStream>, now_ms: u64) -> Connection {
        Connection {
            id,
            peer,
            stream,
            role: None,
            principal: None,
            enforced_dimensions: None,
            closing: false,
            inbound: Inbound::default(),
            outbound: Outbound::default(),
            requests_in_flight: 0,
            paused: None,
            armed_ms: None,
            told_waiting_for_memory: false,
            told_bot_refusal: false,
            accepted_ms: now_ms,
            last_progress_ms: now_ms,
            http: None,
        }
    }

    /// The largest frame payload the connection may send now: small until the hello.
    pub fn max_payload(&self) -> usize {
        if self.role.is_some() { MAX_FRAME_PAYLOAD_BYTES } else { MAX_HELLO_PAYLOAD_BYTES }
    }

    pub fn progressed(&mut self, now_ms: u64) {
        self.last_progress_ms = self.last_progress_ms.max(now_ms);
    }

    /// When the connection is to be closed unless something happens first, and why.
    pub fn deadline(&self, limits: &PeerLimits) -> Option<(u64, Timeout)> {
        if self.role.is_none() {
            return Some((self.accepted_ms + limits.hello_timeout_ms, Timeout::Hello));
        }
        let after_idle = self.last_progress_ms + limits.idle_timeout_ms;
        if self.outbound.has_unwritten() {
            return Some((after_idle, Timeout::Stalled));
        }
        let nothing_in_flight = self.requests_in_flight == 0 && self.outbound.owed_bytes() == 0;
        nothing_in_flight.then_some((after_idle, Timeout::Idle))
    }

    /// Says why a timeout closes the connection, for the log.
    pub fn timeout_reason(&self, timeout: Timeout, limits: &PeerLimits) -> String {
        let secs = |ms: u64| ms as f64 / 1000.0;
        match timeout {
            Timeout::Hello => format!("no hello within the hello timeout of {} s", secs(limits.hello_timeout_ms)),
            Timeout::Idle => {
                format!("nothing in flight for the idle timeout of {} s", secs(limits.idle_timeout_ms))
            }
            Timeout::Stalled => format!(
                "it took none of the {} bytes of replies owed to it for the idle timeout of {} s",
                self.outbound.owed_bytes(),
                secs(limits.idle_timeout_ms)
            ),
        }
    }
}

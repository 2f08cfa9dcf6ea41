//! The limits that keep one peer from hurting the others (README, "Limits
//! against hostile peers"). The sizes of frames and messages are in
//! `apiary_protocol::limits`; these are the shell's: time a connection may
//! take, and memory it may hold. Each is an `apiaryd` flag with the default
//! named here, and the daemon logs each time one acts.

use apiary_protocol::frame::HEADER_BYTES;
use apiary_protocol::limits::MAX_FRAME_PAYLOAD_BYTES;

/// A connection must send its hello within this long.
pub const DEFAULT_HELLO_TIMEOUT_SECS: u64 = 5;
/// A connection with nothing in flight (no request, held poll, wait or
/// follow) and nothing to send is closed after this long; so is one that
/// accepts none of the replies owed to it for this long.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
/// Memory for partial frames larger than `SMALL_FRAME_BYTES`, across all
/// connections.
pub const DEFAULT_MAX_INPUT_BUFFER_BYTES: usize = 256 << 20;
/// Replies owed to one connection (built or being built, not yet written)
/// past which its further requests are not read until it drains.
pub const DEFAULT_MAX_UNSENT_BYTES: usize = 8 << 20;

/// A connection reads and buffers frames up to this size on its own (as much
/// as one read takes); a larger frame needs a share of the input budget.
pub const SMALL_FRAME_BYTES: usize = 64 << 10;
/// The whole largest frame: the budget must be able to take one.
pub const MAX_FRAME_BYTES: usize = HEADER_BYTES + MAX_FRAME_PAYLOAD_BYTES;
const _: () = assert!(SMALL_FRAME_BYTES < MAX_FRAME_BYTES);
const _: () = assert!(DEFAULT_MAX_INPUT_BUFFER_BYTES >= MAX_FRAME_BYTES);
const _: () = assert!(apiary_protocol::limits::MAX_HELLO_PAYLOAD_BYTES + HEADER_BYTES <= SMALL_FRAME_BYTES);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    pub hello_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// At least `MAX_FRAME_BYTES`.
    pub max_input_buffer_bytes: usize,
    pub max_unsent_bytes: usize,
}

impl Default for PeerLimits {
    fn default() -> PeerLimits {
        PeerLimits {
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_SECS * 1000,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_SECS * 1000,
            max_input_buffer_bytes: DEFAULT_MAX_INPUT_BUFFER_BYTES,
            max_unsent_bytes: DEFAULT_MAX_UNSENT_BYTES,
        }
    }
}

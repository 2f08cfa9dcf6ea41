//! The bounds of one HTTP request (README, "HTTP API"). Time limits and the
//! connection limit are those of every connection (`peer_limits`,
//! `--max-connections`).

use crate::server::peer_limits::{MAX_FRAME_BYTES, SMALL_FRAME_BYTES};

/// The request line and headers together, with the blank line after them.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Headers in one request.
pub const MAX_HEADERS: usize = 64;
/// A request body (`Content-Length`): a large `NewTask` in JSON fits with room.
pub const MAX_BODY_BYTES: usize = 1 << 20;

// A head is buffered by the connection on its own; a larger request takes a
// share of the input budget, which always has room for one whole frame.
const _: () = assert!(MAX_HEAD_BYTES <= SMALL_FRAME_BYTES);
const _: () = assert!(MAX_HEAD_BYTES + MAX_BODY_BYTES <= MAX_FRAME_BYTES);

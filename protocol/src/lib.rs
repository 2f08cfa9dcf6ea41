//! The Apiary wire protocol: frames, messages, limits, task ids and a small
//! blocking client.
//!
//! A connection starts with one `Hello` frame from the peer, answered by one
//! `Reply` frame. After that every `Request` frame carries a request id that its
//! `Reply` echoes; a connection may have many requests in flight and replies may
//! come in any order (a bot's poll is held open until work arrives).

pub mod cas;
pub mod client;
pub mod dimensions;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod placeholders;
mod recent_properties;
pub mod tls;
pub mod token;
pub mod wire_size;

pub use client::{Client, ClientError};
pub use dimensions::{MalformedDimensions, PackedDimensions};
pub use frame::{Frame, FrameError, FrameKind, FrameReader, FrameView};
pub use ids::{RequestId, RunId, TaskIdError};
pub use messages::*;

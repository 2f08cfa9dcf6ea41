//! apiaryd: the Apiary daemon. `core` holds all scheduling state without I/O;
//! `server` is the thin shell around it: the event loop, connections, the
//! write-ahead log and its flusher thread.

pub mod core;
pub mod server;

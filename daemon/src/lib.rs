//! apiaryd: the Apiary daemon. `core` holds all scheduling state without I/O;
//! `server` is the thin shell around it: the event loop, connections, the
//! write-ahead log and its flusher thread. `auth` says who a connection is
//! (principals and their token hashes); `config` reads the configuration file.

pub mod auth;
pub mod config;
pub mod core;
pub mod server;

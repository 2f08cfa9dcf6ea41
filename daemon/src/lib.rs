//! apiaryd: the Apiary daemon. `core` holds all scheduling state without I/O;
//! `server` is the thin shell around it: the event loop, connections, the
//! write-ahead log and its group commit. `auth` says who a connection is
//! (principals and their token hashes); `config` reads the configuration file;
//! `logging` writes the daemon's log lines; `metrics` counts what
//! happens and renders it for Prometheus; `web_ui` holds the web UI's files.

pub mod auth;
pub mod config;
pub mod core;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod web_ui;

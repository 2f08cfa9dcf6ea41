//! The daemon's HTTP/1.1 face (README, "HTTP API"): Swarming's v2 API as pRPC
//! JSON, a task's output as a chunked stream, and health endpoints. HTTP
//! connections live in the same event loop as binary ones
//! (`event_loop::http` does their I/O), so the core, group commit,
//! authentication, permissions and peer limits are shared. What is here is
//! pure: reading a request (`request`, within `limits`), naming its endpoint
//! (`routes`), its principal (`caller`), the state of the request being
//! answered (`exchange`), and the bytes of responses (`response`).

pub mod caller;
pub mod exchange;
pub mod limits;
pub mod request;
pub mod response;
pub mod routes;

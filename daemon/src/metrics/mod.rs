//! The daemon's metrics, in Prometheus' text exposition format (served at
//! `/metrics` by the HTTP listener).
//!
//! Counters and histograms are plain numbers the event loop bumps where things
//! happen (`registry`): a few increments per task, no allocation, no atomics
//! (one thread owns them). Gauges are read from the core and the shell when a
//! scrape renders them (`StateReading`), at a cost that grows with queues and
//! bots, never with tasks. `exposition` writes the text format; `histogram`
//! holds fixed buckets.

mod exposition;
mod histogram;
mod registry;

pub use exposition::{Exposition, MetricKind};
pub use histogram::Histogram;
pub use registry::{ConnectionKind, Metrics, Refusal, StateReading};

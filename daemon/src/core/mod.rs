//! The sans-IO core: scheduling, task and bot state, events. It never touches
//! sockets, files, clocks, threads or randomness (ARCHITECTURE.md, decision 1).

mod chunked_set;
mod engine;
pub mod events;
pub mod history;
mod id_index;
mod interned;
pub mod legacy_events;
mod lineage;
mod model;
pub mod queues;
pub mod snapshot;
mod tags;
mod task_store;
mod text_arena;
pub mod texts;
pub mod validate;

pub use engine::storage_trouble::DISK_FULL_MARKER;
pub use engine::{
    BotStandings, CasRoots, Closing, Core, CoreConfig, DEFAULT_CAS_INSTANCE, Input, Outgoing, Output, OutputRead,
    OutputWrite,
};
pub use events::Event;
pub use model::{Ending, RequestText};
pub use snapshot::CoreSnapshot;

/// The core's hash map: ahash, never iterated where order decides anything.
pub type Map<K, V> = hashbrown::HashMap<K, V, ahash::RandomState>;

/// A connection as the core knows it: an opaque handle the shell never reuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

//! Content addressing as the Remote Execution API (REAPI v2) defines it, so a
//! digest means the same here as in the tools Swarming users already have
//! (RBE-CAS, `cas`, `isolate`):
//!
//! - a blob is named by the SHA-256 of its bytes and its size (`digest`);
//! - a directory is a blob too: the canonical encoding of REAPI's `Directory`
//!   message, its entries sorted by name (`reapi`);
//! - a tree on disk becomes a root directory digest and the blobs under it
//!   (`tree`);
//! - `transfer` moves trees between a client and the daemon's store.

pub mod digest;
pub mod materialize;
#[cfg(any(test, feature = "test-support"))]
pub mod memory_store;
pub mod reapi;
pub mod reference;
pub mod transfer;
pub mod tree;

pub use digest::{Digest, DigestError, DigestWriter};
pub use reference::{CasReference, CasStats, CasTransferStats};

//! Content addressing as the Remote Execution API (REAPI v2) defines it, so a
//! digest means the same here as in the tools Swarming users already have
//! (RBE-CAS, `cas`, `isolate`):
//!
//! - a blob is named by the SHA-256 of its bytes and its size (`digest`);
//! - a directory is a blob too: the canonical encoding of REAPI's `Directory`
//!   message, its entries sorted by name (`reapi`);
//! - a tree on disk becomes a root directory digest and the blobs under it
//!   (`tree`).

pub mod digest;
pub mod materialize;
pub mod reapi;
pub mod tree;

pub use digest::{Digest, DigestError, DigestWriter};

//! Who a connection is (ARCHITECTURE.md, "Trust is settled at the hello").
//! `tokens`: principals by the hash of their bearer token, compared in
//! constant time; `open_access`: when a daemon may run without them. Bot
//! groups and permissions per pool come here next.

mod open_access;
mod tokens;

pub use open_access::check_open_access;

pub use tokens::{
    Access, MAX_PRINCIPAL_NAME_BYTES, Principal, Principals, TOKEN_HASH_PREFIX, check_principal_name,
    format_token_hash, hash_token, parse_token_hash,
};

//! Who a connection is (ARCHITECTURE.md, "Trust is settled at the hello").
//! `tokens`: principals by the hash of their bearer token, compared in
//! constant time; `open_access`: when a daemon may run without them;
//! `bot_groups`: which bot ids a principal's bots may be, with which
//! dimensions; `permissions`: what a principal may do, pool by pool.

mod bot_groups;
mod open_access;
mod permissions;
mod tokens;

pub use permissions::{EVERY_POOL, Grants, HIGH_PRIORITY_BELOW, Permission, denied};

pub use bot_groups::{BotGroup, ENFORCED_POOL_KEY, admit_bot};
pub use open_access::check_open_access;

pub use tokens::{
    Access, MAX_PRINCIPAL_NAME_BYTES, Principal, Principals, TOKEN_HASH_PREFIX, check_principal_name,
    format_token_hash, hash_token, parse_token_hash,
};

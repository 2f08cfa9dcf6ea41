//! Principals and their tokens. The configuration holds only the SHA-256 of
//! each token (`sha256:<64 lowercase hex digits>`); a hello's token is hashed
//! once and compared with every configured hash in constant time, so neither
//! the time taken nor which entry matched tells a peer anything about the
//! tokens. A principal may have several tokens (while one is rotated); a
//! token belongs to one principal.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{BotGroup, Grants};

/// How a token hash is written in the configuration.
pub const TOKEN_HASH_PREFIX: &str = "sha256:";
/// Bytes in a principal's name. It is recorded on what the principal does
/// (the `authenticated:NAME` tag of a task, a bot's events).
pub const MAX_PRINCIPAL_NAME_BYTES: usize = 128;
const _: () = assert!(
    MAX_PRINCIPAL_NAME_BYTES <= apiary_protocol::limits::MAX_TAG_VALUE_BYTES,
    "the authenticated tag of a task must fit in a tag"
);

/// Who may connect.
#[derive(Clone, Debug)]
pub enum Access {
    /// No principals are configured: every hello is accepted, and no one is named.
    Open,
    /// A hello must carry the token of one of these principals.
    Tokens(Principals),
}

/// A principal and one of its tokens' hashes, with what it may do.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub token_sha256: [u8; 32],
    /// The bot groups whose bots use this principal's token.
    pub bot_groups: Vec<Arc<BotGroup>>,
    /// What it may do, per pool: everything while no `[[permissions]]` are configured.
    pub grants: Arc<Grants>,
}

impl Principal {
    pub fn new(name: &str, token_sha256: [u8; 32]) -> Principal {
        Principal { name: name.into(), token_sha256, bot_groups: Vec::new(), grants: Arc::new(Grants::everything()) }
    }

    /// Whether `other` is the same principal with the same token (its grants may differ).
    pub fn same_token(&self, other: &Principal) -> bool {
        self.name == other.name && self.token_sha256 == other.token_sha256
    }
}

/// The configured principals, each with one token hash.
#[derive(Clone, Debug, Default)]
pub struct Principals {
    entries: Vec<Arc<Principal>>,
    /// Whether any `[[bot_groups]]` are configured: then every bot must be in one.
    pub bot_groups_configured: bool,
    /// Whether any `[[permissions]]` are configured: then a principal may do only what they grant.
    pub permissions_configured: bool,
}

impl Principals {
    pub fn new(entries: Vec<Principal>) -> Principals {
        Principals {
            entries: entries.into_iter().map(Arc::new).collect(),
            bot_groups_configured: false,
            permissions_configured: false,
        }
    }

    /// Gives each group to the principal it names (every entry of that name),
    /// and from then on requires every bot to be in a group.
    pub fn with_bot_groups(self, groups: Vec<(Arc<str>, BotGroup)>) -> Principals {
        if groups.is_empty() {
            return self;
        }
        let groups: Vec<(Arc<str>, Arc<BotGroup>)> =
            groups.into_iter().map(|(name, group)| (name, Arc::new(group))).collect();
        let entries = self
            .entries
            .into_iter()
            .map(|entry| {
                let mut principal =
                    Principal { grants: Arc::clone(&entry.grants), ..Principal::new(&entry.name, entry.token_sha256) };
                principal.bot_groups = groups
                    .iter()
                    .filter(|(name, _)| *name == principal.name)
                    .map(|(_, group)| Arc::clone(group))
                    .collect();
                Arc::new(principal)
            })
            .collect();
        Principals { entries, bot_groups_configured: true, ..self }
    }

    /// Gives each principal the grants configured for its name (none when
    /// `[[permissions]]` do not name it); without any, all keep everything.
    pub fn with_permissions(self, grants: Option<std::collections::BTreeMap<Arc<str>, Grants>>) -> Principals {
        let Some(grants) = grants else { return self };
        let entries = self
            .entries
            .into_iter()
            .map(|entry| {
                let granted = grants.get(&entry.name).cloned().unwrap_or_default();
                let mut principal = Principal::new(&entry.name, entry.token_sha256);
                principal.bot_groups = entry.bot_groups.clone();
                principal.grants = Arc::new(granted);
                Arc::new(principal)
            })
            .collect();
        Principals { entries, permissions_configured: true, ..self }
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.iter().map(|entry| &entry.name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many principals, bot groups and principals with permissions, for
    /// the log and `--check-config`.
    pub fn summary(&self) -> String {
        let groups: usize = self.entries.iter().map(|principal| principal.bot_groups.len()).sum();
        let plural = |count: usize| if count == 1 { "" } else { "s" };
        let principals = self.entries.len();
        let permissions = match self.permissions_configured {
            true => {
                let granted = self.entries.iter().filter(|principal| !principal.grants.is_empty()).count();
                format!("permissions for {granted} principal{}", plural(granted))
            }
            false => "no permissions (every principal may do everything)".to_string(),
        };
        format!("{principals} principal{}, {groups} bot group{}, {permissions}", plural(principals), plural(groups))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose token this is. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn authenticate(&self, token: &[u8]) -> Option<&Arc<Principal>> {
        let presented = hash_token(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token_sha256.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found
    }

    /// The same principal with the same token, as configured now (after a
    /// reload, with its grants of now); `None` when the token was revoked.
    pub fn current(&self, principal: &Principal) -> Option<&Arc<Principal>> {
        self.entries.iter().find(|entry| entry.same_token(principal))
    }

    /// Whether the same principal still has the same token (after a reload).
    pub fn still_holds(&self, principal: &Principal) -> bool {
        self.current(principal).is_some()
    }
}

pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// `sha256:<hex>`, as the configuration file takes it.
pub fn format_token_hash(hash: &[u8; 32]) -> String {
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{TOKEN_HASH_PREFIX}{hex}")
}

pub fn parse_token_hash(text: &str) -> Result<[u8; 32], String> {
    let expected = || {
        format!(
            "expected {TOKEN_HASH_PREFIX} and 64 lowercase hex digits (`apiaryd hash-token --token-file FILE` prints one)"
        )
    };
    let hex = text.strip_prefix(TOKEN_HASH_PREFIX).ok_or_else(expected)?;
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)) {
        return Err(expected());
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).map_err(|_| expected())?;
    }
    Ok(hash)
}

/// Names are 1 to `MAX_PRINCIPAL_NAME_BYTES` bytes of ASCII letters, digits and `.-_@:`.
pub fn check_principal_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_NAME_BYTES {
        return Err(format!("{name:?} must be 1 to {MAX_PRINCIPAL_NAME_BYTES} bytes"));
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b".-_@:".contains(&byte)) {
        return Err(format!("{name:?} may hold only ASCII letters, digits and . - _ @ :"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_reads_back_as_written() {
        let hash = hash_token(b"foo");
        let text = format_token_hash(&hash);
        assert_eq!(text, "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae");
        assert_eq!(parse_token_hash(&text), Ok(hash));
        assert!(parse_token_hash(&text.to_uppercase()).is_err());
        assert!(parse_token_hash(&text[..text.len() - 1]).is_err());
        assert!(parse_token_hash("md5:0123").is_err());
    }

    #[test]
    fn a_token_finds_its_principal_and_no_other() {
        let principals = Principals::new(vec![
            Principal::new("alice", hash_token(b"a-token")),
            Principal::new("alice", hash_token(b"a-new-token")),
            Principal::new("bob", hash_token(b"b-token")),
        ]);
        let name = |token: &[u8]| principals.authenticate(token).map(|principal| principal.name.to_string());
        assert_eq!(name(b"a-token").as_deref(), Some("alice"));
        assert_eq!(name(b"a-new-token").as_deref(), Some("alice"));
        assert_eq!(name(b"b-token").as_deref(), Some("bob"));
        assert_eq!(name(b"B-token"), None);
        assert_eq!(name(b""), None);
        assert!(principals.still_holds(&Principal::new("bob", hash_token(b"b-token"))));
        assert!(!principals.still_holds(&Principal::new("alice", hash_token(b"b-token"))));
    }
}

//! The configuration file (`apiaryd --config FILE`, README "Configuration").
//!
//! A TOML file. Its top-level keys are the daemon's settings, named as their
//! flags with `_` for `-` (`long_poll_secs = 30` is `--long-poll-secs 30`);
//! its tables are what has no flag: `[[principals]]` (a name and the hash of
//! its token) and `[[bot_groups]]` (bot ids, the principal their bots use,
//! enforced dimensions) and `[[permissions]]` (a principal, pools, and the
//! permissions it holds there).
//!
//! This module only reads the file: it turns the settings into flag text that
//! the daemon's own command-line parser checks (so a value in the file obeys
//! exactly the rules of its flag), and the principals into an `auth::Access`.
//! Every refusal names the file, the line and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use apiary_protocol::StringPair;
use serde::Deserialize;
use toml::Spanned;

use crate::auth::{self, Access, BotGroup, ENFORCED_POOL_KEY, EVERY_POOL, Grants, Permission, Principal, Principals};
use crate::core::validate;

/// The tables of the file, handled here rather than as settings.
const TABLES: [&str; 3] = ["principals", "bot_groups", "permissions"];

/// The setting keys that may not be in the file: they say which file to read.
const NOT_SETTINGS: [&str; 2] = ["config", "check_config"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Invalid { path: String, line: usize, reason: String },
}

/// A setting the daemon's command line knows, as the file may give it.
#[derive(Clone, Debug)]
pub struct SettingSpec {
    /// The key in the file: the flag's name with `_` for `-`.
    pub key: String,
    pub flag: String,
    /// A flag without a value (`--accept-log-loss`): `true` or `false` in the file.
    pub is_switch: bool,
}

/// What the daemon's command line says of a flag and its value: `Err` with
/// the reason when the value is not one the flag takes.
pub type CheckFlag<'a> = dyn Fn(&[String]) -> Result<(), String> + 'a;

/// A configuration file, read and checked.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// The settings as flags, in the order of the file.
    pub flags: Vec<String>,
    pub access: Access,
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.flags.iter().filter(|flag| flag.starts_with("--")).count();
        let access = match &self.access {
            Access::Open => "0 principals".to_string(),
            Access::Tokens(principals) => principals.summary(),
        };
        write!(f, "{}: {settings} settings, {access}", self.path.display())
    }
}

/// Reads and checks a configuration file.
pub fn load(path: &Path, specs: &[SettingSpec], check: &CheckFlag<'_>) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse(path, &text, specs, check)
}

#[derive(Deserialize)]
struct Sections {
    #[serde(default)]
    principals: Vec<Spanned<RawPrincipal>>,
    #[serde(default)]
    bot_groups: Vec<Spanned<RawBotGroup>>,
    #[serde(default)]
    permissions: Vec<Spanned<RawPermissions>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    principal: Spanned<String>,
    pools: Vec<Spanned<String>>,
    grants: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBotGroup {
    principal: Spanned<String>,
    #[serde(default)]
    bot_ids: Vec<Spanned<String>>,
    #[serde(default)]
    bot_id_prefixes: Vec<Spanned<String>>,
    dimensions: Spanned<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: Spanned<String>,
    token_hash: Spanned<String>,
}

/// Checks the text of a configuration file; `path` only names it in errors.
pub fn parse(path: &Path, text: &str, specs: &[SettingSpec], check: &CheckFlag<'_>) -> Result<ConfigFile, ConfigError> {
    let invalid = |span: Option<Range<usize>>, reason: String| ConfigError::Invalid {
        path: path.display().to_string(),
        line: line_of(text, span.map_or(0, |span| span.start)),
        reason,
    };
    let toml_error = |error: toml::de::Error| invalid(error.span(), error.message().trim_end().to_string());
    let document: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(text).map_err(toml_error)?;
    let sections: Sections = toml::from_str(text).map_err(toml_error)?;
    let mut entries: Vec<_> = document.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut flags = Vec::new();
    for (key, value) in &entries {
        let name = key.get_ref().as_str();
        if TABLES.contains(&name) {
            continue;
        }
        let spec = specs.iter().find(|spec| spec.key == name && !NOT_SETTINGS.contains(&name));
        let Some(spec) = spec else {
            return Err(invalid(Some(key.span()), format!("{name}: not a setting of apiaryd")));
        };
        let setting = setting_flags(spec, value.get_ref()).map_err(|reason| invalid(Some(value.span()), reason))?;
        check(&setting).map_err(|reason| invalid(Some(value.span()), format!("{name}: {reason}")))?;
        flags.extend(setting);
    }
    let mut principals = principals(&sections.principals, &invalid)?;
    if let Some(first) = sections.bot_groups.first()
        && principals.is_empty()
    {
        let reason = "bot_groups: a bot group names the principal its bots use; configure [[principals]]";
        return Err(invalid(Some(first.span()), reason.to_string()));
    }
    let groups = bot_groups(&sections.bot_groups, &principals, &invalid)?;
    principals = principals.with_bot_groups(groups);
    let grants = permissions(&sections.permissions, &principals, &invalid)?;
    principals = principals.with_permissions(grants);
    let access = if principals.is_empty() { Access::Open } else { Access::Tokens(principals) };
    Ok(ConfigFile { path: path.to_path_buf(), flags, access })
}

/// The flag text of one setting.
fn setting_flags(spec: &SettingSpec, value: &toml::Value) -> Result<Vec<String>, String> {
    let key = &spec.key;
    match (value, spec.is_switch) {
        (toml::Value::Boolean(true), true) => Ok(vec![spec.flag.clone()]),
        (toml::Value::Boolean(false), true) => Ok(Vec::new()),
        (_, true) => Err(format!("{key}: expected true or false")),
        (toml::Value::Integer(number), false) => Ok(vec![spec.flag.clone(), number.to_string()]),
        (toml::Value::String(text), false) => Ok(vec![spec.flag.clone(), text.clone()]),
        (_, false) => Err(format!("{key}: expected a number or a string, not a {}", value.type_str())),
    }
}

fn principals(
    raw: &[Spanned<RawPrincipal>],
    invalid: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<Principals, ConfigError> {
    let mut principals: Vec<(Principal, Range<usize>)> = Vec::new();
    for entry in raw {
        let RawPrincipal { name, token_hash } = entry.get_ref();
        auth::check_principal_name(name.get_ref())
            .map_err(|reason| invalid(Some(name.span()), format!("principals.name: {reason}")))?;
        let hash = auth::parse_token_hash(token_hash.get_ref())
            .map_err(|reason| invalid(Some(token_hash.span()), format!("principals.token_hash: {reason}")))?;
        if let Some((other, _)) = principals.iter().find(|(other, _)| other.token_sha256 == hash) {
            let reason = format!(
                "principals.token_hash: the same as that of principal {:?}; every token maps to one principal",
                other.name
            );
            return Err(invalid(Some(token_hash.span()), reason));
        }
        principals.push((Principal::new(name.get_ref(), hash), entry.span()));
    }
    Ok(Principals::new(principals.into_iter().map(|(principal, _)| principal).collect()))
}

fn bot_groups(
    raw: &[Spanned<RawBotGroup>],
    principals: &Principals,
    invalid: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<Vec<(Arc<str>, BotGroup)>, ConfigError> {
    let mut groups: Vec<(Arc<str>, BotGroup)> = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let RawBotGroup { principal, bot_ids, bot_id_prefixes, dimensions } = entry.get_ref();
        let at = |span: Range<usize>, reason: String| invalid(Some(span), format!("bot_groups[{index}].{reason}"));
        if !principals.names().any(|name| **name == **principal.get_ref()) {
            let reason = format!("principal: {:?} is not the name of any [[principals]] entry", principal.get_ref());
            return Err(at(principal.span(), reason));
        }
        if bot_ids.is_empty() && bot_id_prefixes.is_empty() {
            return Err(at(entry.span(), "bot_ids: a group covers at least one bot id or prefix".to_string()));
        }
        for (field, ids) in [("bot_ids", bot_ids), ("bot_id_prefixes", bot_id_prefixes)] {
            for id in ids {
                validate::validate_bot_id(id.get_ref())
                    .map_err(|refusal| at(id.span(), format!("{field}: {}", refusal.message)))?;
                let taken = groups.iter().any(|(_, other)| {
                    other.bot_ids.contains(id.get_ref()) || other.bot_id_prefixes.contains(id.get_ref())
                });
                if taken {
                    let reason =
                        format!("{field}: {:?} is in an earlier group too; a bot id has one group", id.get_ref());
                    return Err(at(id.span(), reason));
                }
            }
        }
        let pairs: Vec<StringPair> =
            dimensions.get_ref().iter().map(|(key, value)| StringPair::new(key, value)).collect();
        let dimensions_at = |reason: String| at(dimensions.span(), format!("dimensions: {reason}"));
        validate::validate_bot_dimensions(&pairs).map_err(|refusal| dimensions_at(refusal.to_string()))?;
        if !dimensions.get_ref().contains_key(ENFORCED_POOL_KEY) {
            return Err(dimensions_at(format!("a group enforces its bots' {ENFORCED_POOL_KEY}; give one")));
        }
        if dimensions.get_ref().contains_key("id") {
            return Err(dimensions_at("id is each bot's own id; a group cannot enforce it".to_string()));
        }
        let group = BotGroup {
            index,
            bot_ids: bot_ids.iter().map(|id| id.get_ref().clone()).collect(),
            bot_id_prefixes: bot_id_prefixes.iter().map(|id| id.get_ref().clone()).collect(),
            dimensions: pairs,
        };
        groups.push((principal.get_ref().as_str().into(), group));
    }
    Ok(groups)
}

/// Each principal's grants; `None` when the file has no `[[permissions]]`.
fn permissions(
    raw: &[Spanned<RawPermissions>],
    principals: &Principals,
    invalid: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<Option<BTreeMap<Arc<str>, Grants>>, ConfigError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut grants: BTreeMap<Arc<str>, Grants> = BTreeMap::new();
    for (index, entry) in raw.iter().enumerate() {
        let RawPermissions { principal, pools, grants: names } = entry.get_ref();
        let at = |span: Range<usize>, reason: String| invalid(Some(span), format!("permissions[{index}].{reason}"));
        let Some(name) = principals.names().find(|name| ***name == **principal.get_ref()) else {
            let reason = format!("principal: {:?} is not the name of any [[principals]] entry", principal.get_ref());
            return Err(at(principal.span(), reason));
        };
        if pools.is_empty() {
            return Err(at(entry.span(), format!("pools: name at least one pool, or {EVERY_POOL:?} for every pool")));
        }
        for pool in pools {
            if pool.get_ref() != EVERY_POOL {
                let pair = [StringPair::new(ENFORCED_POOL_KEY, pool.get_ref())];
                validate::validate_bot_dimensions(&pair)
                    .map_err(|refusal| at(pool.span(), format!("pools: {}", refusal.message)))?;
            }
        }
        let granted = grants.entry(Arc::clone(name)).or_default();
        for permission_name in names {
            let Some(permission) = Permission::parse(permission_name.get_ref()) else {
                let known: Vec<&str> = Permission::ALL.iter().map(|permission| permission.name()).collect();
                let reason =
                    format!("grants: {:?} is not a permission; known: {}", permission_name.get_ref(), known.join(", "));
                return Err(at(permission_name.span(), reason));
            };
            for pool in pools {
                granted.grant(permission, pool.get_ref());
            }
        }
    }
    Ok(Some(grants))
}

/// The line (from 1) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset].iter().filter(|&&byte| byte == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<SettingSpec> {
        let spec = |key: &str, is_switch| SettingSpec {
            key: key.into(),
            flag: format!("--{}", key.replace('_', "-")),
            is_switch,
        };
        vec![
            spec("long_poll_secs", false),
            spec("task_retention", false),
            spec("accept_log_loss", true),
            spec("config", false),
        ]
    }

    fn check(flags: &[String]) -> Result<(), String> {
        match flags {
            [flag, value] if flag == "--long-poll-secs" && value.parse::<u64>().is_ok_and(|secs| secs > 60) => {
                Err(format!("{value} is not in 1..=60"))
            }
            _ => Ok(()),
        }
    }

    fn parsed(text: &str) -> Result<ConfigFile, String> {
        parse(Path::new("apiary.toml"), text, &specs(), &check).map_err(|error| error.to_string())
    }

    const HASH: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn settings_become_flags_in_file_order() {
        let file = parsed("task_retention = \"12h\"\nlong_poll_secs = 10\naccept_log_loss = true\n").unwrap();
        assert_eq!(file.flags, ["--task-retention", "12h", "--long-poll-secs", "10", "--accept-log-loss"]);
        assert!(matches!(file.access, Access::Open));
        let file = parsed("accept_log_loss = false\n").unwrap();
        assert!(file.flags.is_empty());
    }

    #[test]
    fn principals_map_token_hashes_to_names() {
        let text = format!("[[principals]]\nname = \"alice\"\ntoken_hash = \"{HASH}\"\n");
        let file = parsed(&text).unwrap();
        let Access::Tokens(principals) = &file.access else { panic!("tokens are required") };
        assert_eq!(principals.authenticate(b"foo").map(|principal| &*principal.name), Some("alice"));
        assert!(principals.authenticate(b"bar").is_none());
    }

    #[test]
    fn bot_groups_go_to_the_principal_they_name() {
        let text = format!(
            "[[principals]]\nname = \"ci-bots\"\ntoken_hash = \"{HASH}\"\n\n[[bot_groups]]\nprincipal = \"ci-bots\"\n\
             bot_id_prefixes = [\"ci-\"]\ndimensions = {{ pool = \"ci\", os = \"Linux\" }}\n"
        );
        let file = parsed(&text).unwrap();
        let Access::Tokens(principals) = &file.access else { panic!("tokens are required") };
        assert!(principals.bot_groups_configured);
        let principal = principals.authenticate(b"foo").unwrap();
        assert_eq!(principal.bot_groups.len(), 1);
        assert!(principal.bot_groups[0].covers("ci-7") && principal.bot_groups[0].pool() == "ci");
    }

    #[test]
    fn bad_bot_groups_are_refused_by_field() {
        let principal = format!("[[principals]]\nname = \"ci-bots\"\ntoken_hash = \"{HASH}\"\n");
        let refused = |group: &str| parsed(&format!("{principal}[[bot_groups]]\n{group}")).unwrap_err();
        let ids = "bot_ids = [\"a\"]\n";
        assert_eq!(
            refused(&format!("principal = \"bob\"\n{ids}dimensions = {{ pool = \"ci\" }}\n")),
            "apiary.toml:5: bot_groups[0].principal: \"bob\" is not the name of any [[principals]] entry"
        );
        assert!(
            refused("principal = \"ci-bots\"\ndimensions = { pool = \"ci\" }\n").contains("at least one bot id"),
            "no ids"
        );
        let no_pool = refused(&format!("principal = \"ci-bots\"\n{ids}dimensions = {{ os = \"x\" }}\n"));
        assert!(
            no_pool.starts_with("apiary.toml:7: bot_groups[0].dimensions: a group enforces its bots' pool"),
            "{no_pool}"
        );
        let id = refused(&format!("principal = \"ci-bots\"\n{ids}dimensions = {{ pool = \"ci\", id = \"a\" }}\n"));
        assert!(id.contains("cannot enforce it"), "{id}");
        let group = format!("principal = \"ci-bots\"\n{ids}dimensions = {{ pool = \"ci\" }}\n");
        let twice = refused(&format!("{group}[[bot_groups]]\n{group}"));
        assert!(twice.contains("bot_groups[1].bot_ids: \"a\" is in an earlier group too"), "{twice}");
        let alone = parsed(&format!("[[bot_groups]]\n{group}")).unwrap_err();
        assert!(alone.contains("configure [[principals]]"), "{alone}");
    }

    #[test]
    fn permissions_are_granted_per_pool_and_refused_by_field() {
        let principal = format!("[[principals]]\nname = \"alice\"\ntoken_hash = \"{HASH}\"\n[[permissions]]\n");
        let with = |entry: &str| parsed(&format!("{principal}{entry}"));
        let file =
            with("principal = \"alice\"\npools = [\"ci\"]\ngrants = [\"create_task\", \"read_tasks\"]\n").unwrap();
        let Access::Tokens(principals) = &file.access else { panic!("tokens are required") };
        let grants = &principals.authenticate(b"foo").unwrap().grants;
        assert!(grants.allows(Permission::CreateTask, "ci") && grants.allows(Permission::ReadTasks, "ci"));
        assert!(!grants.allows(Permission::CreateTask, "prod") && !grants.allows(Permission::CancelTask, "ci"));
        let refused = with("principal = \"alice\"\npools = [\"ci\"]\ngrants = [\"create\"]\n").unwrap_err();
        assert!(
            refused.starts_with("apiary.toml:7: permissions[0].grants: \"create\" is not a permission"),
            "{refused}"
        );
        let refused = with("principal = \"bob\"\npools = [\"*\"]\ngrants = []\n").unwrap_err();
        assert!(refused.contains("permissions[0].principal: \"bob\" is not the name"), "{refused}");
        let refused = with("principal = \"alice\"\npools = []\ngrants = []\n").unwrap_err();
        assert!(refused.contains("permissions[0].pools: name at least one pool"), "{refused}");
        // Without [[permissions]], a principal may do everything, as before they existed.
        let file = parsed(&format!("[[principals]]\nname = \"alice\"\ntoken_hash = \"{HASH}\"\n")).unwrap();
        let Access::Tokens(principals) = &file.access else { panic!("tokens are required") };
        assert!(principals.authenticate(b"foo").unwrap().grants.allows(Permission::ManageBots, "any"));
    }

    #[test]
    fn refusals_name_the_file_the_line_and_the_reason() {
        let refused = |text: &str| parsed(text).unwrap_err();
        assert_eq!(refused("\n\nlong_poll_secs = 90\n"), "apiary.toml:3: long_poll_secs: 90 is not in 1..=60");
        assert_eq!(
            refused("long_poll_secs = 5\nlisten_port = 3\n"),
            "apiary.toml:2: listen_port: not a setting of apiaryd"
        );
        assert_eq!(refused("config = \"x\"\n"), "apiary.toml:1: config: not a setting of apiaryd");
        assert_eq!(refused("accept_log_loss = 1\n"), "apiary.toml:1: accept_log_loss: expected true or false");
        assert!(refused("long_poll_secs = [1]\n").starts_with("apiary.toml:1: long_poll_secs: expected a number"));
        assert!(
            refused("\nlong_poll_secs = \n").starts_with("apiary.toml:2: "),
            "{}",
            refused("\nlong_poll_secs = \n")
        );
        let bad_hash = "[[principals]]\nname = \"alice\"\ntoken_hash = \"sha256:00\"\n";
        assert!(refused(bad_hash).starts_with("apiary.toml:3: principals.token_hash: "), "{}", refused(bad_hash));
        let bad_name = format!("[[principals]]\nname = \"a b\"\ntoken_hash = \"{HASH}\"\n");
        assert!(refused(&bad_name).starts_with("apiary.toml:2: principals.name: "), "{}", refused(&bad_name));
        let unknown = format!("[[principals]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\ntoken = \"x\"\n");
        assert!(refused(&unknown).starts_with("apiary.toml:4: "), "{}", refused(&unknown));
        let twice = format!(
            "[[principals]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\n[[principals]]\nname = \"b\"\ntoken_hash = \"{HASH}\"\n"
        );
        assert!(
            refused(&twice).starts_with("apiary.toml:6: principals.token_hash: the same as"),
            "{}",
            refused(&twice)
        );
    }
}

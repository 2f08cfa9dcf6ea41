//! Bot groups, as Swarming's bots.cfg: a group names the bot ids it covers
//! (exact ids and prefixes), the principal whose token those bots use, and
//! dimensions the daemon enforces (at least `pool`). Once any group is
//! configured, a bot may poll or report only under an id a group of its
//! principal covers, and for each enforced key the group's value replaces
//! whatever the bot reports. Every check is a lookup in the principal's own
//! groups, settled at its hello: nothing is read per request.

use apiary_protocol::{PackedDimensions, StringPair};

use super::Principal;

/// The dimension every bot group must enforce.
pub const ENFORCED_POOL_KEY: &str = "pool";

#[derive(Debug, PartialEq, Eq)]
pub struct BotGroup {
    /// Its place among the file's `[[bot_groups]]`, from 0, for messages.
    pub index: usize,
    pub bot_ids: Vec<String>,
    pub bot_id_prefixes: Vec<String>,
    /// One value per key, sorted by key; `pool` is always there.
    pub dimensions: Vec<StringPair>,
}

impl BotGroup {
    pub fn covers(&self, bot_id: &str) -> bool {
        self.bot_ids.iter().any(|id| id == bot_id)
            || self.bot_id_prefixes.iter().any(|prefix| bot_id.starts_with(prefix.as_str()))
    }

    pub fn pool(&self) -> &str {
        self.dimensions.iter().find(|pair| pair.key == ENFORCED_POOL_KEY).map_or("", |pair| pair.value.as_str())
    }

    /// The reported dimensions with each enforced key's values replaced by
    /// the group's value; `None` when they already are so (or do not parse:
    /// the core refuses those by name).
    pub fn enforce(&self, reported: &PackedDimensions) -> Option<PackedDimensions> {
        let pairs = reported.pairs().ok()?;
        let enforced = |key: &str| self.dimensions.iter().any(|pair| pair.key == key);
        let mut kept: Vec<StringPair> = pairs.iter().filter(|pair| !enforced(&pair.key)).cloned().collect();
        kept.extend(self.dimensions.iter().cloned());
        kept.sort_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        let mut sorted = pairs;
        sorted.sort_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        (kept != sorted).then(|| PackedDimensions::new(&kept))
    }

    /// `key=value` of each enforced dimension, for the log.
    pub fn describe_dimensions(&self) -> String {
        let pairs: Vec<String> = self.dimensions.iter().map(|pair| format!("{}={}", pair.key, pair.value)).collect();
        pairs.join(" ")
    }
}

/// The group under which `principal` may be bot `bot_id`: `Ok(None)` when
/// bots are not restricted (open access, or no bot groups configured).
pub fn admit_bot<'a>(
    principal: Option<&'a Principal>,
    groups_configured: bool,
    bot_id: &str,
) -> Result<Option<&'a BotGroup>, String> {
    let Some(principal) = principal.filter(|_| groups_configured) else { return Ok(None) };
    if let Some(group) = principal.bot_groups.iter().find(|group| group.covers(bot_id)) {
        return Ok(Some(group));
    }
    let pools: Vec<&str> = principal.bot_groups.iter().map(|group| group.pool()).collect();
    let covered = match pools.as_slice() {
        [] => "no bot group names it".to_string(),
        pools => format!("its bot groups (pool {}) do not cover this id", pools.join(", pool ")),
    };
    Err(format!("bot_id: principal {} may not be bot {bot_id:?}: {covered}", principal.name))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn group() -> BotGroup {
        BotGroup {
            index: 0,
            bot_ids: vec!["mac-1".into()],
            bot_id_prefixes: vec!["linux-".into()],
            dimensions: vec![StringPair::new("os", "Linux"), StringPair::new("pool", "ci")],
        }
    }

    #[test]
    fn a_group_covers_its_ids_and_prefixes_only() {
        let group = group();
        assert!(group.covers("mac-1") && group.covers("linux-7") && group.covers("linux-"));
        assert!(!group.covers("mac-10") && !group.covers("Linux-7") && !group.covers("win-1"));
        assert_eq!(group.pool(), "ci");
    }

    #[test]
    fn enforced_keys_replace_what_the_bot_reports() {
        let group = group();
        let reported = PackedDimensions::new(&[
            StringPair::new("pool", "prod"),
            StringPair::new("pool", "x"),
            StringPair::new("gpu", "a"),
        ]);
        let enforced = group.enforce(&reported).expect("pool was overridden");
        let mut pairs = enforced.pairs().unwrap();
        pairs.sort_by(|a, b| a.key.cmp(&b.key));
        let text: Vec<String> = pairs.iter().map(|pair| format!("{}={}", pair.key, pair.value)).collect();
        assert_eq!(text, ["gpu=a", "os=Linux", "pool=ci"]);
        let already = PackedDimensions::new(&[StringPair::new("pool", "ci"), StringPair::new("os", "Linux")]);
        assert_eq!(group.enforce(&already), None);
    }

    #[test]
    fn a_bot_must_be_covered_once_groups_are_configured() {
        let principal = Principal { bot_groups: vec![Arc::new(group())], ..Principal::new("ci-bots", [1; 32]) };
        assert_eq!(admit_bot(Some(&principal), true, "linux-3").unwrap().map(|group| group.index), Some(0));
        let refused = admit_bot(Some(&principal), true, "win-3").unwrap_err();
        assert_eq!(
            refused,
            "bot_id: principal ci-bots may not be bot \"win-3\": its bot groups (pool ci) do not cover this id"
        );
        let user = Principal::new("alice", [2; 32]);
        assert!(admit_bot(Some(&user), true, "linux-3").unwrap_err().contains("no bot group names it"));
        assert_eq!(admit_bot(Some(&user), false, "linux-3"), Ok(None));
        assert_eq!(admit_bot(None, true, "linux-3"), Ok(None));
    }
}

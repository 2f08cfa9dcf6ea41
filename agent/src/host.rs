//! The dimensions a bot finds out about its own host, as Swarming's bot reports
//! them (`os_utilities.get_dimensions` in luci-py): `os`, `cpu` and `cores`.
//!
//! - `os`: the distribution's name from `/etc/os-release` (`ID`, first letter upper
//!   case, e.g. `Ubuntu`), `Linux`, and the name with its version (`Ubuntu-22.04`),
//!   sorted; just `Linux` when the file says nothing.
//! - `cpu`: the architecture (`x86`, `arm64`, `arm`, `mips`, ...) and it with the
//!   bitness of the bot's own build (`x86-64`), as Swarming reports userland bitness.
//! - `cores`: the CPUs the bot may run tasks on.
//!
//! A key the bot is also given with `--dimension` keeps only the given values:
//! as in Swarming, where `bot_config.py` and the server's `bots.cfg` replace what
//! the bot found for a key, never add to it.

use std::fs;

use apiary_protocol::{StringPair, limits};

const OS_RELEASE_PATH: &str = "/etc/os-release";

/// The host's own dimensions, found now.
pub(crate) fn dimensions() -> Vec<StringPair> {
    let os_release = fs::read_to_string(OS_RELEASE_PATH).ok();
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    let mut pairs = Vec::new();
    pairs.extend(os_values(os_release.as_deref()).into_iter().map(|value| StringPair::new("os", &value)));
    pairs.extend(
        cpu_values(std::env::consts::ARCH, usize::BITS).into_iter().map(|value| StringPair::new("cpu", &value)),
    );
    pairs.push(StringPair::new("cores", &cores.to_string()));
    // An odd `/etc/os-release` must not keep the bot from starting: a value the
    // daemon would refuse is left out.
    pairs.retain(|pair| pair.value.len() <= limits::MAX_DIMENSION_VALUE_BYTES);
    pairs
}

/// `configured` with the found pairs of every key it does not name.
pub(crate) fn merge(configured: Vec<StringPair>, found: Vec<StringPair>) -> Vec<StringPair> {
    let mut merged: Vec<StringPair> =
        found.into_iter().filter(|pair| !configured.iter().any(|given| given.key == pair.key)).collect();
    merged.extend(configured);
    merged
}

/// The `os` values, from the text of `/etc/os-release` if there is one.
fn os_values(os_release: Option<&str>) -> Vec<String> {
    let field = |name: &str| -> Option<String> {
        let line = os_release?.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('='))?;
        let value = line.trim().trim_matches(|c| c == '"' || c == '\'').trim();
        (!value.is_empty()).then(|| value.to_string())
    };
    let mut values = vec!["Linux".to_string()];
    if let Some(id) = field("ID") {
        let name = capitalized(&id);
        if let Some(version) = field("VERSION_ID") {
            values.push(format!("{name}-{version}"));
        }
        values.push(name);
    }
    values.sort();
    values.dedup();
    values
}

fn capitalized(word: &str) -> String {
    let mut characters = word.chars();
    match characters.next() {
        Some(first) => first.to_uppercase().chain(characters).collect(),
        None => String::new(),
    }
}

/// The `cpu` values for a Rust target architecture and pointer width.
fn cpu_values(arch: &str, bits: u32) -> Vec<String> {
    let kind = match arch {
        "x86_64" | "x86" => "x86",
        "aarch64" | "arm64ec" => "arm64",
        "mips64" | "mips64r6" => "mips",
        other => other,
    };
    vec![kind.to_string(), format!("{kind}-{bits}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_names_the_distribution_and_its_version() {
        let ubuntu = "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(os_values(Some(ubuntu)), ["Linux", "Ubuntu", "Ubuntu-22.04"]);
        assert_eq!(os_values(Some("ID=arch\n")), ["Arch", "Linux"]);
        assert_eq!(os_values(Some("ID=debian\nVERSION_ID='12'\n")), ["Debian", "Debian-12", "Linux"]);
        assert_eq!(os_values(None), ["Linux"]);
        assert_eq!(os_values(Some("")), ["Linux"]);
    }

    #[test]
    fn cpu_is_the_architecture_and_its_bitness() {
        assert_eq!(cpu_values("x86_64", 64), ["x86", "x86-64"]);
        assert_eq!(cpu_values("x86", 32), ["x86", "x86-32"]);
        assert_eq!(cpu_values("aarch64", 64), ["arm64", "arm64-64"]);
        assert_eq!(cpu_values("riscv64", 64), ["riscv64", "riscv64-64"]);
    }

    #[test]
    fn found_dimensions_cover_os_cpu_and_cores() {
        let found = dimensions();
        for key in ["os", "cpu", "cores"] {
            assert!(found.iter().any(|pair| pair.key == key), "{key} in {found:?}");
        }
        assert!(found.iter().any(|pair| pair.key == "os" && pair.value == "Linux"));
    }

    #[test]
    fn configured_keys_replace_found_values() {
        let found =
            vec![StringPair::new("os", "Linux"), StringPair::new("os", "Ubuntu"), StringPair::new("cores", "8")];
        let configured = vec![StringPair::new("os", "Custom"), StringPair::new("pool", "ci")];
        let merged = merge(configured, found);
        assert_eq!(
            merged,
            [StringPair::new("cores", "8"), StringPair::new("os", "Custom"), StringPair::new("pool", "ci")]
        );
    }
}

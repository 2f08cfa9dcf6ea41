//! How tasks name trees in the store, and what moving them cost, in the shape
//! of Swarming's `CASReference` and `CASOperationStats`.
//!
//! In JSON a digest is `{"hash": "<64 hex>", "size_bytes": "<n>"}`: the size a
//! string, as pRPC writes 64-bit integers; a number is read too.

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::digest::Digest;

/// A tree in a content-addressed store: the store (`cas_instance`, empty for
/// the daemon's own) and the root directory's digest.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(compare(PartialEq))]
#[serde(deny_unknown_fields)]
pub struct CasReference {
    #[serde(default)]
    pub cas_instance: String,
    pub digest: Digest,
}

/// One direction of a task's transfers on the bot (Swarming's
/// `CASOperationStats`): for inputs, *hot* files came from the bot's cache and
/// *cold* ones were downloaded; for outputs, hot ones the store already had
/// and cold ones were uploaded.
#[derive(
    Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[serde(default)]
pub struct CasTransferStats {
    pub duration_ms: u64,
    pub items_hot: u64,
    pub bytes_hot: u64,
    pub items_cold: u64,
    pub bytes_cold: u64,
}

/// The transfers of one run: its inputs before the command, its outputs after.
#[derive(
    Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[serde(default)]
pub struct CasStats {
    pub download: CasTransferStats,
    pub upload: CasTransferStats,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestJson {
    hash: String,
    size_bytes: SizeJson,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeJson {
    Text(String),
    Number(u64),
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DigestJson { hash: self.hex(), size_bytes: SizeJson::Text(self.size_bytes.to_string()) }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let json = DigestJson::deserialize(deserializer)?;
        let size_bytes = match json.size_bytes {
            SizeJson::Number(size) => size,
            SizeJson::Text(text) => {
                text.parse().map_err(|_| D::Error::custom(format!("size_bytes: {text:?} is not a size in bytes")))?
            }
        };
        Digest::from_parts(&json.hash, size_bytes)
            .map_err(|_| D::Error::custom(format!("hash: {:?} is not 64 lowercase hex digits (a SHA-256)", json.hash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_reads_swarming_json_with_the_size_as_text_or_number() {
        let digest = Digest::of(b"tree");
        for size in [format!("\"{}\"", digest.size_bytes), digest.size_bytes.to_string()] {
            let json = format!(
                r#"{{"cas_instance": "projects/p/instances/default_instance",
                    "digest": {{"hash": "{}", "size_bytes": {size}}}}}"#,
                digest.hex()
            );
            let reference: CasReference = serde_json::from_str(&json).unwrap();
            assert_eq!(reference.digest, digest);
        }
        let written = serde_json::to_value(CasReference { cas_instance: String::new(), digest }).unwrap();
        assert_eq!(written["digest"]["size_bytes"], digest.size_bytes.to_string());
    }

    #[test]
    fn a_malformed_digest_is_refused_by_field() {
        let error = serde_json::from_str::<Digest>(r#"{"hash": "ABC", "size_bytes": "1"}"#).unwrap_err();
        assert!(error.to_string().contains("hash"), "{error}");
        let error = serde_json::from_str::<Digest>(r#"{"hash": "ab", "size_bytes": "-1"}"#).unwrap_err();
        assert!(error.to_string().contains("size_bytes"), "{error}");
    }
}

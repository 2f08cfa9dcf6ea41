//! A bot's dimensions as they travel in every poll: one buffer of
//! length-prefixed strings instead of a string apiece. Decoding a poll is one
//! allocation for them, and the daemon sees they did not change with one
//! comparison of two buffers, not a cache miss per string.

use rkyv::{Archive, Deserialize, Serialize};

use crate::StringPair;

/// Key, value, key, value, ...: each a little-endian `u32` byte length, then UTF-8.
#[derive(Archive, Serialize, Deserialize, Clone, Default, PartialEq, Eq, Hash)]
pub struct PackedDimensions(Vec<u8>);

/// Bytes that are not a sequence of (key, value) strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed packed dimensions: {0}")]
pub struct MalformedDimensions(&'static str);

impl PackedDimensions {
    pub fn new(pairs: &[StringPair]) -> PackedDimensions {
        let mut packed = Vec::with_capacity(pairs.iter().map(|pair| 8 + pair.key.len() + pair.value.len()).sum());
        for part in pairs.iter().flat_map(|pair| [&pair.key, &pair.value]) {
            let len = u32::try_from(part.len()).expect("a dimension is far shorter than 4 GiB");
            packed.extend_from_slice(&len.to_le_bytes());
            packed.extend_from_slice(part.as_bytes());
        }
        PackedDimensions(packed)
    }

    /// The pairs, in the order they were packed; bytes from the network may be malformed.
    pub fn pairs(&self) -> Result<Vec<StringPair>, MalformedDimensions> {
        let mut parts = Vec::new();
        let mut rest = &self.0[..];
        while !rest.is_empty() {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or(MalformedDimensions("a cut length"))?;
            let len = u32::from_le_bytes(*len) as usize;
            let part = tail.get(..len).ok_or(MalformedDimensions("a length past the end"))?;
            parts.push(String::from_utf8(part.to_vec()).map_err(|_| MalformedDimensions("not UTF-8"))?);
            rest = &tail[len..];
        }
        if parts.len() % 2 != 0 {
            return Err(MalformedDimensions("a key without a value"));
        }
        Ok(parts.chunks_exact(2).map(|pair| StringPair::new(&pair[0], &pair[1])).collect())
    }
}

impl FromIterator<StringPair> for PackedDimensions {
    fn from_iter<I: IntoIterator<Item = StringPair>>(pairs: I) -> PackedDimensions {
        PackedDimensions::new(&pairs.into_iter().collect::<Vec<_>>())
    }
}

impl std::fmt::Debug for PackedDimensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pairs() {
            Ok(pairs) => f.debug_list().entries(pairs.iter().map(|pair| (&pair.key, &pair.value))).finish(),
            Err(error) => write!(f, "{error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_as_they_were_packed_and_compare_by_bytes() {
        let pairs = vec![StringPair::new("pool", "ci"), StringPair::new("os", "Linux"), StringPair::new("é", "")];
        let packed = PackedDimensions::new(&pairs);
        assert_eq!(packed.pairs(), Ok(pairs.clone()));
        assert_eq!(PackedDimensions::default().pairs(), Ok(Vec::new()));
        let moved = vec![StringPair::new("poo", "lci"), pairs[1].clone(), pairs[2].clone()];
        assert_ne!(PackedDimensions::new(&moved), packed, "the same bytes split elsewhere");
        assert_ne!(PackedDimensions::new(&pairs[..2]), packed);
    }

    #[test]
    fn malformed_bytes_are_an_error() {
        let valid = PackedDimensions::new(&[StringPair::new("pool", "ci")]).0;
        let odd = PackedDimensions::new(&[StringPair::new("pool", "ci")]).0[..8].to_vec();
        let mut not_utf8 = valid.clone();
        not_utf8[4] = 0xff;
        for (bytes, why) in [
            (valid[..3].to_vec(), "a cut length"),
            (valid[..valid.len() - 1].to_vec(), "a length past the end"),
            (odd, "a key without a value"),
            (not_utf8, "not UTF-8"),
        ] {
            assert_eq!(PackedDimensions(bytes).pairs(), Err(MalformedDimensions(why)));
        }
    }
}

//! A blob's name: the SHA-256 of its bytes and its size, written `hash/size`
//! (lowercase hex, as REAPI's `Digest.hash` and the `cas` tool print it).

use std::fmt;
use std::io::{self, Read, Write};

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use sha2::{Digest as _, Sha256};

#[derive(Archive, RkyvSerialize, RkyvDeserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub hash: [u8; 32],
    pub size_bytes: u64,
}

/// For comparing archived task properties with decoded ones (`recent_properties.rs`).
/// One direction only: a derived `compare` would also make `Digest == _` ambiguous.
impl PartialEq<Digest> for ArchivedDigest {
    fn eq(&self, other: &Digest) -> bool {
        self.hash == other.hash && self.size_bytes == other.size_bytes
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("{0:?} is not a digest: expected HASH/SIZE, 64 lowercase hex digits, a slash and a size in bytes")]
    Malformed(String),
}

/// Bytes hashed per read when a digest is taken of a stream.
const READ_CHUNK_BYTES: usize = 1 << 20;

impl Digest {
    /// The digest of the empty blob (an empty file, an empty directory's contents).
    pub fn of_empty() -> Digest {
        Digest::of(&[])
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest { hash: Sha256::digest(bytes).into(), size_bytes: bytes.len() as u64 }
    }

    /// The digest of everything `reader` yields, read a mebibyte at a time.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Digest> {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; READ_CHUNK_BYTES];
        let mut size_bytes = 0u64;
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    hasher.update(&buffer[..read]);
                    size_bytes += read as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(Digest { hash: hasher.finalize().into(), size_bytes })
    }

    /// The hash as REAPI's `Digest.hash` carries it: 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        let mut text = String::with_capacity(64);
        for byte in self.hash {
            text.push(char::from_digit(u32::from(byte >> 4), 16).expect("a nibble"));
            text.push(char::from_digit(u32::from(byte & 0xf), 16).expect("a nibble"));
        }
        text
    }

    /// Reads REAPI's two fields (`hash` in lowercase hex, `size_bytes`).
    pub fn from_parts(hex: &str, size_bytes: u64) -> Result<Digest, DigestError> {
        let malformed = || DigestError::Malformed(format!("{hex}/{size_bytes}"));
        if hex.len() != 64 {
            return Err(malformed());
        }
        let mut hash = [0u8; 32];
        for (index, pair) in hex.as_bytes().chunks(2).enumerate() {
            let nibble = |digit: u8| match digit {
                b'0'..=b'9' => Some(digit - b'0'),
                b'a'..=b'f' => Some(digit - b'a' + 10),
                _ => None,
            };
            hash[index] = (nibble(pair[0]).ok_or_else(malformed)? << 4) | nibble(pair[1]).ok_or_else(malformed)?;
        }
        Ok(Digest { hash, size_bytes })
    }
}

/// Writes through to `inner`, taking the digest of what passes: a blob is
/// checked as it is written, never read back.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    size_bytes: u64,
}

impl<W: Write> DigestWriter<W> {
    pub fn new(inner: W) -> DigestWriter<W> {
        DigestWriter { inner, hasher: Sha256::new(), size_bytes: 0 }
    }

    /// What was written, and the digest of those bytes.
    pub fn finish(self) -> (W, Digest) {
        (self.inner, Digest { hash: self.hasher.finalize().into(), size_bytes: self.size_bytes })
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.size_bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size_bytes)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Digest, DigestError> {
        let malformed = || DigestError::Malformed(text.to_string());
        let (hex, size) = text.split_once('/').ok_or_else(malformed)?;
        let size_bytes = size.parse::<u64>().map_err(|_| malformed())?;
        if size.starts_with('+') {
            return Err(malformed());
        }
        Digest::from_parts(hex, size_bytes).map_err(|_| malformed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_blob_has_the_well_known_sha256() {
        assert_eq!(
            Digest::of_empty().to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/0"
        );
        assert_eq!(Digest::of_reader(&b""[..]).unwrap(), Digest::of_empty());
    }

    #[test]
    fn a_digest_reads_back_what_it_writes() {
        let digest = Digest::of(b"hello\n");
        assert_eq!(digest.to_string().parse::<Digest>(), Ok(digest));
        assert_eq!(Digest::of_reader(&b"hello\n"[..]).unwrap(), digest);
    }

    #[test]
    fn a_writer_takes_the_digest_of_what_passes_through_it() {
        let mut writer = DigestWriter::new(Vec::new());
        writer.write_all(b"hel").unwrap();
        writer.write_all(b"lo\n").unwrap();
        let (written, digest) = writer.finish();
        assert_eq!((written.as_slice(), digest), (&b"hello\n"[..], Digest::of(b"hello\n")));
    }

    #[test]
    fn malformed_digests_are_refused() {
        let hex = Digest::of(b"x").hex();
        for text in [
            String::new(),
            hex.clone(),
            format!("{hex}/"),
            format!("{hex}/-1"),
            format!("{hex}/+1"),
            format!("{}/1", hex.to_uppercase()),
            format!("{}/1", &hex[..63]),
            format!("{hex}0/1"),
        ] {
            assert!(text.parse::<Digest>().is_err(), "{text:?} was accepted");
        }
    }
}

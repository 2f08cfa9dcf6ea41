//! The `HEAD` file: the newest segment index known to be durably in place.
//!
//! Invariant: every segment from the log's first up to HEAD's index exists. HEAD is only
//! written after the rename of the segment it names is durable (directory synced), so after
//! a crash later segments may exist too (HEAD was not updated yet), but never fewer. HEAD is
//! replaced atomically: written as `HEAD.tmp`, synced, renamed, and the directory synced.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::error::WalError;
use super::segment::sync_dir;

const HEAD_FILE_NAME: &str = "HEAD";
const HEAD_TEMPORARY_NAME: &str = "HEAD.tmp";
const HEAD_MAGIC: [u8; 8] = *b"APIARYHD";
const HEAD_BYTES: usize = 24;

/// Layout (all integers little-endian), 24 bytes:
///
/// ```text
/// offset  size  field
///      0     8  magic      "APIARYHD"
///      8     8  index      u64, the newest segment durably in place
///     16     4  crc        CRC-32 of bytes 0..16
///     20     4  reserved   zero
/// ```
fn encode(index: u64) -> [u8; HEAD_BYTES] {
    let mut bytes = [0u8; HEAD_BYTES];
    bytes[0..8].copy_from_slice(&HEAD_MAGIC);
    bytes[8..16].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode(&bytes), Ok(index));
    bytes
}

fn decode(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != HEAD_BYTES {
        return Err(format!("HEAD is {} bytes where {HEAD_BYTES} were expected", bytes.len()));
    }
    if bytes[0..8] != HEAD_MAGIC {
        return Err("HEAD has a bad magic".to_string());
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[0..16]) != crc || bytes[20..24] != [0; 4] {
        return Err("HEAD CRC mismatch".to_string());
    }
    Ok(u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

/// The index HEAD names, or `None` if there is no HEAD.
pub(crate) fn read_head(dir: &Path) -> Result<Option<u64>, WalError> {
    let path = dir.join(HEAD_FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes).map(Some).map_err(|reason| WalError::BadHead { reason }),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WalError::Io { context: format!("read {}", path.display()), source }),
    }
}

/// Durably replaces HEAD with one naming segment `index`.
pub(crate) fn write_head(dir: &Path, index: u64) -> Result<(), WalError> {
    let temporary = dir.join(HEAD_TEMPORARY_NAME);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(&encode(index))?;
        file.sync_all()
    };
    write().map_err(WalError::io(|| format!("write {}", temporary.display())))?;
    fs::rename(&temporary, dir.join(HEAD_FILE_NAME)).map_err(WalError::io(|| "rename HEAD.tmp to HEAD".to_string()))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_head(dir.path()).unwrap(), None);
        write_head(dir.path(), 7).unwrap();
        assert_eq!(read_head(dir.path()).unwrap(), Some(7));
        let bytes = encode(7);
        for at in 0..HEAD_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 1;
            assert!(decode(&damaged).is_err(), "flip at {at} went unnoticed");
        }
        fs::write(dir.path().join(HEAD_FILE_NAME), &bytes[..10]).unwrap();
        assert!(matches!(read_head(dir.path()), Err(WalError::BadHead { .. })));
    }
}

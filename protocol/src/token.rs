//! Bearer tokens as `apiary`, `apiary-bot` and `apiaryd hash-token` read them:
//! from a file (`--token-file FILE` or `APIARY_TOKEN_FILE`), never from the
//! command line, where other users of the host can read it. The token is the
//! file's text without the white space around it (a trailing newline, say).

use std::path::Path;

use crate::limits::MAX_TOKEN_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the token file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The environment variable that names a token file when `--token-file` is not given.
pub const TOKEN_FILE_ENV: &str = "APIARY_TOKEN_FILE";

pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let invalid = |reason: String| TokenFileError::Invalid { path: path.display().to_string(), reason };
    let metadata =
        std::fs::metadata(path).map_err(|source| TokenFileError::Read { path: path.display().to_string(), source })?;
    // Checked before reading, so a wrong path (a large file) is not read whole.
    if metadata.len() > (MAX_TOKEN_BYTES + 1024) as u64 {
        return Err(invalid(format!("{} bytes is over the limit of {MAX_TOKEN_BYTES}", metadata.len())));
    }
    let bytes =
        std::fs::read(path).map_err(|source| TokenFileError::Read { path: path.display().to_string(), source })?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("the token is not UTF-8 text".to_string()))?;
    check_token(text.trim()).map_err(invalid)
}

/// A token: 1 to `MAX_TOKEN_BYTES` bytes of printable ASCII without spaces.
pub fn check_token(token: &str) -> Result<String, String> {
    if token.is_empty() {
        return Err("the token is empty".to_string());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token's {} bytes are over the limit of {MAX_TOKEN_BYTES}", token.len()));
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("the token may hold only printable ASCII characters, without spaces".to_string());
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_the_text_without_the_white_space_around_it() {
        assert_eq!(check_token("s3cret-token").unwrap(), "s3cret-token");
        assert!(check_token("").is_err());
        assert!(check_token("two words").is_err());
        assert!(check_token(&"x".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err().contains("limit of 4096"));
        let dir = std::env::temp_dir().join(format!("apiary-token-test-{}", std::process::id()));
        std::fs::write(&dir, "abc123\n").unwrap();
        assert_eq!(read_token_file(&dir).unwrap(), "abc123");
        std::fs::write(&dir, "\n\n").unwrap();
        assert!(read_token_file(&dir).unwrap_err().to_string().contains("the token is empty"));
        std::fs::remove_file(&dir).unwrap();
    }
}

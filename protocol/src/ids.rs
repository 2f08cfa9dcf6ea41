//! Task ids, following Swarming: 16 lower-case hex digits, time-ordered.
//!
//! ```text
//! bits 63..20  milliseconds since the Unix epoch when the task was created
//! bits 19..4   sequence within that millisecond (the daemon keeps ids unique)
//! bits  3..0   0 for the request (the task as a whole), the try number for a run
//! ```
//! A request id ends in `0`; its first run (attempt) ends in `1`, a retry in `2`.

use std::fmt;

/// The id of a task request (its summary): always ends in hex digit `0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// The id of one attempt of a task: the request id with the try number (1..=15) in
/// its last hex digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskIdError {
    #[error("task id {0:?} is not 16 hexadecimal digits")]
    Malformed(String),
}

impl RequestId {
    /// The smallest id of the given millisecond; the daemon adds sequence steps.
    pub fn first_of_millisecond(unix_ms: u64) -> RequestId {
        RequestId(unix_ms << 20)
    }
    pub fn from_u64(raw: u64) -> Option<RequestId> {
        (raw & 0xf == 0).then_some(RequestId(raw))
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
    /// The id that follows this one within the same millisecond or later.
    pub fn next(self) -> RequestId {
        RequestId(self.0 + 0x10)
    }
    pub fn created_unix_ms(self) -> u64 {
        self.0 >> 20
    }
    pub fn run(self, try_number: u8) -> RunId {
        assert!((1..=15).contains(&try_number), "try number {try_number} out of range");
        RunId(self.0 | u64::from(try_number))
    }
}

impl RunId {
    pub fn from_u64(raw: u64) -> Option<RunId> {
        (raw & 0xf != 0).then_some(RunId(raw))
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
    pub fn request(self) -> RequestId {
        RequestId(self.0 & !0xf)
    }
    pub fn try_number(self) -> u8 {
        (self.0 & 0xf) as u8
    }
}

/// Parses either form of id: the request id, or a run id (its task is the request).
/// Returns the raw value; callers look at the last digit to tell which it is.
pub fn parse_task_id(text: &str) -> Result<u64, TaskIdError> {
    let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(TaskIdError::Malformed(text.to_string()));
    }
    u64::from_str_radix(&text.to_ascii_lowercase(), 16).map_err(|_| TaskIdError::Malformed(text.to_string()))
}

pub fn format_task_id(raw: u64) -> String {
    format!("{raw:016x}")
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a bot id is refused: Swarming's bot ids are host names, so Apiary allows
/// what they are made of, letters, digits, `-`, `_` and `.`, 1 to
/// `MAX_BOT_ID_BYTES` of them. The daemon and `apiary-bot` both check it here.
pub fn bot_id_error(bot_id: &str) -> Option<String> {
    if bot_id.is_empty() {
        return Some("must not be empty".to_string());
    }
    if bot_id.len() > crate::limits::MAX_BOT_ID_BYTES {
        return Some(format!("{} bytes is over the limit of {}", bot_id.len(), crate::limits::MAX_BOT_ID_BYTES));
    }
    let valid = bot_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
    (!valid).then(|| format!("{bot_id:?} is not a bot id: use letters, digits, '-', '_' and '.' (^[0-9a-zA-Z_.-]+$)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_run_ids_follow_swarming() {
        let request = RequestId::first_of_millisecond(1_700_000_000_000);
        assert!(request.to_string().ends_with('0'));
        assert_eq!(request.to_string().len(), 16);
        let run = request.run(1);
        assert!(run.to_string().ends_with('1'));
        assert_eq!(run.request(), request);
        assert_eq!(request.run(2).try_number(), 2);
        assert_eq!(request.created_unix_ms(), 1_700_000_000_000);
        assert!(request.next() > request);
    }

    #[test]
    fn parse_accepts_both_forms_and_rejects_junk() {
        let request = RequestId::first_of_millisecond(1_700_000_000_000);
        assert_eq!(parse_task_id(&request.to_string()), Ok(request.as_u64()));
        assert_eq!(parse_task_id(&request.run(1).to_string()), Ok(request.run(1).as_u64()));
        assert!(parse_task_id("xyz").is_err());
        assert!(parse_task_id("00000000000000000").is_err());
        assert!(parse_task_id("+000000000000000").is_err());
    }

    #[test]
    fn bot_ids_are_host_names() {
        for good in ["bot-1", "ci-linux-1.example.com", "build_42", "A"] {
            assert_eq!(bot_id_error(good), None, "{good}");
        }
        for bad in ["", "bot 1", "bot/1", "bot:1", "bot@host", "bot\n", "é"] {
            assert!(bot_id_error(bad).is_some(), "{bad:?}");
        }
        assert!(bot_id_error(&"b".repeat(crate::limits::MAX_BOT_ID_BYTES + 1)).unwrap().contains("over the limit of"));
    }
}

//! Everything that can make a command fail, and the exit code of each: the one
//! place where errors meet `exit_codes`.

use std::io;
use std::time::Duration;

use apiary_protocol::cas::materialize::MaterializeError;
use apiary_protocol::cas::transfer::TransferError;
use apiary_protocol::ids::format_task_id;
use apiary_protocol::{ClientError, TaskState};

use crate::exit_codes;
use apiary_swarming::new_task::Refusal;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Connecting, or the hello, failed.
    #[error("{0}")]
    Connect(ClientError),
    /// `--token-file` (or `APIARY_TOKEN_FILE`) could not be read, or holds no token.
    #[error("{0}")]
    TokenFile(apiary_protocol::token::TokenFileError),
    /// `--ca-file` could not be read, or TLS cannot be set up.
    #[error("{0}")]
    TlsSetup(apiary_protocol::tls::TlsSetupError),
    /// A request failed: the connection broke, or the daemon refused it.
    #[error("cannot {action}: {source}")]
    Call { action: String, source: ClientError },
    /// The daemon answered with a reply that does not fit the request.
    #[error("cannot {action}: the daemon answered with {reply}")]
    UnexpectedReply { action: String, reply: &'static str },
    /// The daemon sent output that does not continue where the last chunk ended.
    #[error("cannot {action}: the daemon sent {len} bytes at offset {got} of {output_len}, expected offset {expected}")]
    BadOutputChunk { action: String, expected: u64, got: u64, len: usize, output_len: u64 },
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
    /// The task ended in a state other than COMPLETED.
    #[error("task {} ended {}{}", format_task_id(*.task_id), .state.name(), reason_suffix(.failure_reason))]
    TaskEnded { task_id: u64, state: TaskState, failure_reason: String },
    /// `--request FILE` could not be read.
    #[error("cannot read the request from {name}: {source}")]
    RequestFileUnreadable { name: String, source: io::Error },
    #[error("{name}: the request is larger than {max_bytes} bytes")]
    RequestFileTooLarge { name: String, max_bytes: usize },
    /// Fields of a request file refused (`apiary_swarming::new_task`): all of them, one per line.
    #[error("{name}: {}", refusal_lines(.refusals))]
    RequestRefused { name: String, refusals: Vec<Refusal> },
    /// `SWARMING_TASK_ID` (or `APIARY_TASK_ID`) is set, to something that is not a task id.
    #[error(
        "${variable} is {value:?}, not a task id; a task triggered inside a task becomes its child: \
         unset ${variable} to trigger an unrelated task"
    )]
    ParentTaskEnv { variable: String, value: String },
    /// `--json-output FILE` could not be written.
    #[error("cannot write --json-output {name}: {source}")]
    JsonOutput { name: String, source: io::Error },
    /// `--secret-bytes-file FILE` could not be read.
    #[error("cannot read --secret-bytes-file {name}: {source}")]
    SecretBytesUnreadable { name: String, source: io::Error },
    #[error(
        "--secret-bytes-file {name}: the file is larger than {max_bytes} bytes, the limit on a task's secret bytes"
    )]
    SecretBytesTooLarge { name: String, max_bytes: usize },
    /// The request file is not JSON.
    #[error("{name}: {source}")]
    RequestFileInvalid { name: String, source: serde_json::Error },
    /// `--optional-dimension` waits as long as the whole `--expiration`, or longer:
    /// no time would be left for the slice without it.
    #[error(
        "--optional-dimension: {longest_secs} s leaves no time of --expiration {expiration_secs} s for the \
         slice without optional dimensions; give a longer --expiration or a shorter wait"
    )]
    OptionalDimensionTooLong { longest_secs: u32, expiration_secs: u32 },
    /// `reproduce` cannot set up or start the task's command here.
    #[error("cannot reproduce the task: {0}")]
    Reproduce(String),
    /// A file or directory of `collect --output-dir`/`--json-output` or of `reproduce`
    /// could not be written.
    #[error("cannot write {path}: {source}")]
    WriteFile { path: String, source: io::Error },
    /// The connection failed while waiting, and the daemon did not answer again
    /// before `--timeout` elapsed.
    #[error(
        "cannot {action}: lost the connection to the daemon and could not reconnect within {} \
         ({attempts} attempts; last: {source})",
        humantime::format_duration(*.timeout)
    )]
    ReconnectTimeout { action: String, timeout: Duration, attempts: u32, source: ClientError },
    /// `collect --timeout` elapsed before the task ended.
    #[error(
        "task {} did not end within {}: it is still {} (see `apiary tasks output {}`)",
        format_task_id(*.task_id),
        humantime::format_duration(*.timeout),
        .state.name(),
        format_task_id(*.task_id)
    )]
    CollectTimeout { task_id: u64, timeout: Duration, state: TaskState },
    /// `cas archive` cannot read a path it was given, or a file changed while it was archived.
    #[error("cannot archive: {0}")]
    ArchiveRead(String),
    /// A transfer to or from the content-addressed store failed.
    #[error("cannot {action}: {source}")]
    Transfer { action: String, source: Box<TransferError> },
}

impl CliError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::Connect(_) | CliError::ReconnectTimeout { .. } => exit_codes::CONNECTION_FAILED,
            CliError::RequestFileUnreadable { .. }
            | CliError::RequestFileTooLarge { .. }
            | CliError::RequestRefused { .. }
            | CliError::ParentTaskEnv { .. }
            | CliError::SecretBytesUnreadable { .. }
            | CliError::SecretBytesTooLarge { .. }
            | CliError::RequestFileInvalid { .. }
            | CliError::OptionalDimensionTooLong { .. }
            | CliError::TokenFile(_)
            | CliError::TlsSetup(_) => exit_codes::USAGE,
            CliError::Call { source, .. } => match source {
                ClientError::Refused { code, .. } => exit_codes::for_refusal(*code),
                ClientError::Connect { .. }
                | ClientError::Tls { .. }
                | ClientError::DaemonSpeaksTls(_)
                | ClientError::PeerSpeaksHttp(_)
                | ClientError::Io(_)
                | ClientError::Frame(_)
                | ClientError::Unexpected(_) => exit_codes::CONNECTION_FAILED,
            },
            CliError::UnexpectedReply { .. } | CliError::BadOutputChunk { .. } => exit_codes::CONNECTION_FAILED,
            CliError::Stdout(_) => exit_codes::STDOUT_FAILED,
            CliError::WriteFile { .. } | CliError::JsonOutput { .. } => exit_codes::WRITE_FAILED,
            CliError::Reproduce(_) => exit_codes::CLIENT_ERROR,
            CliError::TaskEnded { state, .. } => exit_codes::for_task(*state, None),
            CliError::CollectTimeout { .. } => exit_codes::COLLECT_TIMEOUT,
            CliError::ArchiveRead(_) => exit_codes::USAGE,
            CliError::Transfer { source, .. } => match source.as_ref() {
                TransferError::Daemon(ClientError::Refused { code, .. }) => exit_codes::for_refusal(*code),
                TransferError::Daemon(_) | TransferError::Unexpected { .. } | TransferError::Mismatch { .. } => {
                    exit_codes::CONNECTION_FAILED
                }
                TransferError::Changed { .. } => exit_codes::USAGE,
                TransferError::Io { .. } | TransferError::Materialize(MaterializeError::Io { .. }) => {
                    exit_codes::WRITE_FAILED
                }
                TransferError::Materialize(_) => exit_codes::REFUSED,
            },
        }
    }
}

/// One refusal on the same line; several as a count, then one per line.
fn refusal_lines(refusals: &[Refusal]) -> String {
    match refusals {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|refusal| format!("\n  {refusal}")).collect();
            format!("{} fields refused:{}", many.len(), lines.concat())
        }
    }
}

fn reason_suffix(failure_reason: &str) -> String {
    if failure_reason.is_empty() { String::new() } else { format!(": {failure_reason}") }
}

#[cfg(test)]
mod tests {
    use apiary_protocol::ErrorCode;

    use super::*;

    #[test]
    fn refusals_and_connection_failures_have_their_codes() {
        let refused = CliError::Call {
            action: "get task 0000000000000010".to_string(),
            source: ClientError::Refused { code: ErrorCode::NotFound, message: "no such task".to_string() },
        };
        assert_eq!(refused.exit_code(), exit_codes::REFUSED);
        assert_eq!(
            refused.to_string(),
            "cannot get task 0000000000000010: the daemon refused the request (NotFound): no such task"
        );
        let broken = CliError::Call {
            action: "list bots".to_string(),
            source: ClientError::Io(io::Error::from(io::ErrorKind::ConnectionReset)),
        };
        assert_eq!(broken.exit_code(), exit_codes::CONNECTION_FAILED);
        let unreachable = CliError::Connect(ClientError::Connect {
            addr: "127.0.0.1:1".to_string(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(unreachable.exit_code(), exit_codes::CONNECTION_FAILED);
        assert!(unreachable.to_string().starts_with("cannot connect to 127.0.0.1:1: "));
    }

    #[test]
    fn task_end_messages_name_the_state_and_reason() {
        let expired = CliError::TaskEnded {
            task_id: 0x10,
            state: TaskState::Expired,
            failure_reason: "no bot took the task in 3600s".to_string(),
        };
        assert_eq!(expired.to_string(), "task 0000000000000010 ended EXPIRED: no bot took the task in 3600s");
        assert_eq!(expired.exit_code(), exit_codes::EXPIRED);
        let killed = CliError::TaskEnded { task_id: 0x10, state: TaskState::Killed, failure_reason: String::new() };
        assert_eq!(killed.to_string(), "task 0000000000000010 ended KILLED");
        let timeout =
            CliError::CollectTimeout { task_id: 0x10, timeout: Duration::from_secs(90), state: TaskState::Running };
        assert_eq!(
            timeout.to_string(),
            "task 0000000000000010 did not end within 1m 30s: it is still RUNNING \
             (see `apiary tasks output 0000000000000010`)"
        );
        assert_eq!(timeout.exit_code(), exit_codes::COLLECT_TIMEOUT);
    }
}

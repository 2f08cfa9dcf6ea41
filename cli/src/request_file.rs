//! `--request FILE` and `spawn-tasks --json-input FILE`: task requests as JSON in
//! the shape of Swarming's `NewTaskRequest`, read as proto3 JSON (`apiary_swarming::new_task`).
//!
//! A request file holds one request; a spawn-tasks file holds Swarming's
//! `{"requests": [...]}`. Every refused field of every request is reported in one
//! answer, by path. Secret bytes never travel in JSON: `secret_bytes` is refused
//! with a pointer to `--secret-bytes-file`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use apiary_protocol::limits::MAX_FRAME_PAYLOAD_BYTES;
use serde_json::Value;

use crate::error::CliError;
use apiary_swarming::new_task::{self, Origin, Refusal, SwarmingRequest};

/// A request file larger than a frame could not be sent anyway.
const MAX_REQUEST_FILE_BYTES: usize = MAX_FRAME_PAYLOAD_BYTES;
/// Requests in one spawn-tasks file.
pub(crate) const MAX_SPAWN_REQUESTS: usize = 1000;

/// Reads and decodes the request in `path`; `-` is stdin.
pub(crate) fn read(path: &Path) -> Result<SwarmingRequest, CliError> {
    let (name, bytes) = read_file(path)?;
    parse(&name, &bytes)
}

/// Reads and decodes the requests of a spawn-tasks file: `{"requests": [...]}`.
pub(crate) fn read_spawn(path: &Path) -> Result<Vec<SwarmingRequest>, CliError> {
    let (name, bytes) = read_file(path)?;
    parse_spawn(&name, &bytes)
}

/// Decodes a request; `name` says where it came from, for messages.
pub(crate) fn parse(name: &str, bytes: &[u8]) -> Result<SwarmingRequest, CliError> {
    let value = parse_json(name, bytes)?;
    new_task::decode(&value, "", Origin::RequestFile).map_err(|refusals| refused(name, refusals))
}

/// Decodes Swarming's `SpawnTasksInput`: every request, or every refusal of them all.
pub(crate) fn parse_spawn(name: &str, bytes: &[u8]) -> Result<Vec<SwarmingRequest>, CliError> {
    let value = parse_json(name, bytes)?;
    let requests = match &value {
        Value::Object(fields) => {
            let mut refusals: Vec<Refusal> = fields
                .keys()
                .filter(|key| *key != "requests")
                .map(|key| Refusal {
                    at: key.clone(),
                    message: "is not a field here; a spawn-tasks file is {\"requests\": [...]}".to_string(),
                })
                .collect();
            match fields.get("requests") {
                Some(Value::Array(requests)) if !requests.is_empty() && requests.len() <= MAX_SPAWN_REQUESTS => {
                    if !refusals.is_empty() {
                        return Err(refused(name, refusals));
                    }
                    requests
                }
                _ => {
                    let message = format!("a list of 1 to {MAX_SPAWN_REQUESTS} requests is required");
                    refusals.push(Refusal { at: "requests".to_string(), message });
                    return Err(refused(name, refusals));
                }
            }
        }
        _ => {
            let message = "a spawn-tasks file is one object, {\"requests\": [...]}".to_string();
            return Err(refused(name, vec![Refusal { at: "the file".to_string(), message }]));
        }
    };
    let mut decoded = Vec::with_capacity(requests.len());
    let mut refusals = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        match new_task::decode(request, &format!("requests[{index}]"), Origin::RequestFile) {
            Ok(request) => decoded.push(request),
            Err(more) => refusals.extend(more),
        }
    }
    if refusals.is_empty() { Ok(decoded) } else { Err(refused(name, refusals)) }
}

fn parse_json(name: &str, bytes: &[u8]) -> Result<Value, CliError> {
    serde_json::from_slice(bytes).map_err(|source| CliError::RequestFileInvalid { name: name.to_string(), source })
}

fn refused(name: &str, refusals: Vec<Refusal>) -> CliError {
    CliError::RequestRefused { name: name.to_string(), refusals }
}

fn read_file(path: &Path) -> Result<(String, Vec<u8>), CliError> {
    let name = display_name(path);
    let bytes = read_bytes(path).map_err(|source| CliError::RequestFileUnreadable { name: name.clone(), source })?;
    if bytes.len() > MAX_REQUEST_FILE_BYTES {
        return Err(CliError::RequestFileTooLarge { name, max_bytes: MAX_REQUEST_FILE_BYTES });
    }
    Ok((name, bytes))
}

fn display_name(path: &Path) -> String {
    if path == Path::new("-") { "stdin".to_string() } else { path.display().to_string() }
}

/// At most one byte more than the limit, so an oversized file is noticed without reading it all.
fn read_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let limit = MAX_REQUEST_FILE_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        io::stdin().lock().take(limit).read_to_end(&mut bytes)?;
    } else {
        File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use apiary_protocol::cas::{CasReference, Digest};
    use apiary_protocol::{NamedCache, NewTaskRequest, StringListPair, StringPair, TaskProperties, TaskSlice};

    use super::*;
    use crate::exit_codes;

    const SWARMING_REQUEST: &str = r#"{"name": "n", "priority": 100, "tags": ["k:v"], "user": "u",
        "task_slices": [{"properties": {"command": ["echo"], "dimensions": [{"key": "pool", "value": "ci"}],
        "env": [{"key": "K", "value": "V"}], "env_prefixes": [{"key": "PATH", "value": ["bin"]}],
        "relative_cwd": "sub", "execution_timeout_secs": 3600, "io_timeout_secs": 0, "grace_period_secs": 30,
        "idempotent": false, "caches": [{"name": "git", "path": "cache/git"}],
        "cas_input_root": {"cas_instance": "projects/p/instances/default_instance", "digest":
          {"hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "size_bytes": "0"}}},
        "expiration_secs": 3600, "wait_for_capacity": false}]}"#;

    #[test]
    fn a_swarming_request_decodes_field_by_field() {
        let request = parse("task.json", SWARMING_REQUEST.as_bytes()).unwrap().request;
        let properties = TaskProperties {
            command: vec!["echo".to_string()],
            dimensions: vec![StringPair::new("pool", "ci")],
            env: vec![StringPair::new("K", "V")],
            env_prefixes: vec![StringListPair { key: "PATH".to_string(), value: vec!["bin".to_string()] }],
            relative_cwd: "sub".to_string(),
            execution_timeout_secs: 3600,
            io_timeout_secs: 0,
            grace_period_secs: 30,
            idempotent: false,
            caches: vec![NamedCache { name: "git".to_string(), path: "cache/git".to_string() }],
            cas_input_root: Some(Box::new(CasReference {
                cas_instance: "projects/p/instances/default_instance".to_string(),
                digest: Digest::of_empty(),
            })),
        };
        let expected = NewTaskRequest {
            name: "n".to_string(),
            priority: 100,
            tags: vec!["k:v".to_string()],
            user: "u".to_string(),
            task_slices: vec![TaskSlice {
                properties: Arc::new(properties),
                expiration_secs: 3600,
                wait_for_capacity: false,
            }],
            ..NewTaskRequest::default()
        };
        assert_eq!(request, expected);
    }

    #[test]
    fn missing_fields_take_the_protocol_defaults() {
        let request = parse("r", br#"{"task_slices": [{"properties": {"command": ["true"]}}]}"#).unwrap().request;
        assert_eq!(request.priority, NewTaskRequest::default().priority);
        assert_eq!(request.task_slices[0].expiration_secs, TaskSlice::default().expiration_secs);
    }

    #[test]
    fn a_field_apiary_does_not_implement_is_refused_by_name_and_place() {
        let with_cipd = SWARMING_REQUEST.replace(
            r#""relative_cwd": "sub","#,
            r#""relative_cwd": "sub", "cipd_input": {"packages": [{"package_name": "a"}]},"#,
        );
        let error = parse("task.json", with_cipd.as_bytes()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert_eq!(
            error.to_string(),
            "task.json: task_slices[0].properties.cipd_input: asks for CIPD packages, which Apiary does not \
             implement (only an empty or default value is accepted)"
        );
    }

    #[test]
    fn unknown_fields_are_found_at_every_level() {
        let cases: [(&str, &str); 4] = [
            (r#"{"pubsub_topicc": "t"}"#, "pubsub_topicc"),
            (r#"{"task_slices": [{}, {"expiration_secs": 1, "x": 1}]}"#, "task_slices[1].x"),
            (
                r#"{"task_slices": [{"properties": {"dimensions": [{"key": "a", "value": "b", "c": 1}]}}]}"#,
                "task_slices[0].properties.dimensions[0].c",
            ),
            (
                r#"{"task_slices": [{"properties": {"env_prefixes": [{"k": 1}]}}]}"#,
                "task_slices[0].properties.env_prefixes[0].k",
            ),
        ];
        for (json, at) in cases {
            let message = parse("r", json.as_bytes()).unwrap_err().to_string();
            assert!(message.starts_with(&format!("r: {at}: is not a field here")), "{message}");
        }
    }

    #[test]
    fn secret_bytes_in_a_request_file_point_to_the_flag() {
        let error = parse("task.json", br#"{"secret_bytes": "c2VjcmV0"}"#).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert_eq!(
            error.to_string(),
            "task.json: secret_bytes: cannot be given in a request file (secrets never travel in JSON); \
             use --secret-bytes-file FILE"
        );
        let nested = br#"{"task_slices": [{"properties": {"secret_bytes": "c2VjcmV0"}}]}"#;
        let message = parse("r", nested).unwrap_err().to_string();
        assert!(message.starts_with("r: task_slices[0].properties.secret_bytes: cannot be given"), "{message}");
    }

    #[test]
    fn several_refusals_come_in_one_answer_one_per_line() {
        let error = parse("r", br#"{"priority": "high", "realm": "a:b", "x": 1}"#).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        let message = error.to_string();
        assert!(message.starts_with("r: 3 fields refused:\n  "), "{message}");
        assert_eq!(message.lines().count(), 4, "{message}");
    }

    #[test]
    fn json_that_does_not_parse_is_reported_where_it_breaks() {
        let error = parse("r", b"{").unwrap_err();
        assert_eq!(error.to_string(), "r: EOF while parsing an object at line 1 column 1");
        assert_eq!(error.exit_code(), exit_codes::USAGE);
    }

    #[test]
    fn a_spawn_tasks_file_holds_requests_each_checked_at_its_place() {
        let file = br#"{"requests": [{"name": "a", "task_slices": [{"properties": {"command": ["x"]}}]},
                                      {"name": "b", "properties": {"command": ["y"]}}]}"#;
        let requests = parse_spawn("s", file).unwrap();
        assert_eq!(requests.iter().map(|r| r.request.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let bad = br#"{"requests": [{"name": "a"}, {"outputs": ["o"], "priority": "x"}]}"#;
        let message = parse_spawn("s", bad).unwrap_err().to_string();
        assert!(message.contains("requests[1].outputs: is not a field here"), "{message}");
        assert!(message.contains("requests[1].priority: expected an integer"), "{message}");
        for (file, expected) in [
            (&br#"{"requests": []}"#[..], "s: requests: a list of 1 to 1000 requests is required"),
            (
                br#"{"requests": [{}], "extra": 1}"#,
                "s: extra: is not a field here; a spawn-tasks file is {\"requests\": [...]}",
            ),
            (br#"[]"#, "s: the file: a spawn-tasks file is one object, {\"requests\": [...]}"),
        ] {
            assert_eq!(parse_spawn("s", file).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn a_missing_file_is_a_usage_error_naming_it() {
        let error = read(Path::new("/nonexistent/task.json")).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert!(error.to_string().starts_with("cannot read the request from /nonexistent/task.json: "), "{error}");
    }
}

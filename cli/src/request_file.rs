//! `--request FILE`: a whole task request as JSON in the shape of Swarming's
//! `NewTaskRequest`, decoded into the protocol's type.
//!
//! The protocol's types refuse unknown fields. Swarming has fields Apiary does not
//! implement (`cipd_input`, `outputs`, `pubsub_topic`, ...); a file that uses one is
//! refused with the field's name and where it is, never run without it. Swarming's
//! `secret_bytes` is refused too, with a pointer to `--secret-bytes-file`: secrets
//! never travel in JSON, so the file cannot carry them. serde
//! says which field but not where, so on a refusal the file is walked against the
//! fields a request can have, taken from the protocol's own serializer.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use apiary_protocol::limits::MAX_FRAME_PAYLOAD_BYTES;
use apiary_protocol::{NamedCache, NewTaskRequest, StringListPair, StringPair, TaskProperties, TaskSlice};
use serde_json::Value;

use crate::error::CliError;

/// A request file larger than a frame could not be sent anyway.
const MAX_REQUEST_FILE_BYTES: usize = MAX_FRAME_PAYLOAD_BYTES;

/// Reads and decodes the request in `path`; `-` is stdin.
pub(crate) fn read(path: &Path) -> Result<NewTaskRequest, CliError> {
    let name = display_name(path);
    let bytes = read_bytes(path).map_err(|source| CliError::RequestFileUnreadable { name: name.clone(), source })?;
    if bytes.len() > MAX_REQUEST_FILE_BYTES {
        return Err(CliError::RequestFileTooLarge { name, max_bytes: MAX_REQUEST_FILE_BYTES });
    }
    parse(&name, &bytes)
}

/// Decodes a request; `name` says where it came from, for messages.
pub(crate) fn parse(name: &str, bytes: &[u8]) -> Result<NewTaskRequest, CliError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let unknown = serde_json::from_slice::<Value>(bytes).ok().and_then(|value| find_unknown_field(&value));
        match unknown {
            Some((within, field)) if within.is_empty() && field == "secret_bytes" => {
                CliError::RequestSecretBytes { name: name.to_string() }
            }
            Some((within, field)) => CliError::RequestFieldUnsupported { name: name.to_string(), within, field },
            None => CliError::RequestFileInvalid { name: name.to_string(), source: error },
        }
    })
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

/// The first field in `value` that a request cannot have, as (where, field name):
/// where is a path like `task_slices[0].properties`, or empty for the top level.
fn find_unknown_field(value: &Value) -> Option<(String, String)> {
    find_unknown_in(value, &known_fields(), "")
}

fn find_unknown_in(value: &Value, known: &Value, at: &str) -> Option<(String, String)> {
    match (value, known) {
        (Value::Object(fields), Value::Object(known_fields)) => {
            fields.iter().find_map(|(key, field)| match known_fields.get(key) {
                None => Some((at.to_string(), key.clone())),
                Some(known_field) => find_unknown_in(field, known_field, &join(at, key)),
            })
        }
        // Every element has the shape of the template's one element.
        (Value::Array(items), Value::Array(known_items)) => known_items.first().and_then(|known_item| {
            items
                .iter()
                .enumerate()
                .find_map(|(index, item)| find_unknown_in(item, known_item, &format!("{at}[{index}]")))
        }),
        _ => None,
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() { key.to_string() } else { format!("{at}.{key}") }
}

/// Every field a request may have, as the protocol writes it: a request with one
/// element in each list of objects, so their fields show too.
fn known_fields() -> Value {
    let properties = TaskProperties {
        dimensions: vec![StringPair::new("", "")],
        env: vec![StringPair::new("", "")],
        env_prefixes: vec![StringListPair { key: String::new(), value: Vec::new() }],
        caches: vec![NamedCache { name: String::new(), path: String::new() }],
        ..TaskProperties::default()
    };
    let template = NewTaskRequest {
        task_slices: vec![TaskSlice { properties: Arc::new(properties), ..TaskSlice::default() }],
        ..NewTaskRequest::default()
    };
    serde_json::to_value(template).expect("a NewTaskRequest is plain data and always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_codes;

    const SWARMING_REQUEST: &str = r#"{"name": "n", "priority": 100, "tags": ["k:v"], "user": "u",
        "task_slices": [{"properties": {"command": ["echo"], "dimensions": [{"key": "pool", "value": "ci"}],
        "env": [{"key": "K", "value": "V"}], "env_prefixes": [{"key": "PATH", "value": ["bin"]}],
        "relative_cwd": "sub", "execution_timeout_secs": 3600, "io_timeout_secs": 0, "grace_period_secs": 30,
        "idempotent": false, "caches": [{"name": "git", "path": "cache/git"}]},
        "expiration_secs": 3600, "wait_for_capacity": false}]}"#;

    #[test]
    fn a_swarming_request_decodes_field_by_field() {
        let request = parse("task.json", SWARMING_REQUEST.as_bytes()).unwrap();
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
        let request = parse("r", br#"{"task_slices": [{"properties": {"command": ["true"]}}]}"#).unwrap();
        assert_eq!(request.priority, NewTaskRequest::default().priority);
        assert_eq!(request.task_slices[0].expiration_secs, TaskSlice::default().expiration_secs);
    }

    #[test]
    fn a_field_apiary_does_not_implement_is_refused_by_name_and_place() {
        let with_cipd = SWARMING_REQUEST
            .replace(r#""relative_cwd": "sub","#, r#""relative_cwd": "sub", "cipd_input": {"packages": []},"#);
        let error = parse("task.json", with_cipd.as_bytes()).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert_eq!(
            error.to_string(),
            "task.json: unknown field `cipd_input` in task_slices[0].properties is not supported \
             (Apiary refuses fields it does not implement rather than ignoring them)"
        );
    }

    #[test]
    fn unknown_fields_are_found_at_every_level() {
        let cases: [(&str, &str, &str); 4] = [
            (r#"{"pubsub_topic": "t"}"#, "in the request ", "pubsub_topic"),
            (r#"{"task_slices": [{}, {"expiration_secs": 1, "x": 1}]}"#, "task_slices[1]", "x"),
            (
                r#"{"task_slices": [{"properties": {"dimensions": [{"key": "a", "value": "b", "c": 1}]}}]}"#,
                "task_slices[0].properties.dimensions[0]",
                "c",
            ),
            (
                r#"{"task_slices": [{"properties": {"env_prefixes": [{"k": 1}]}}]}"#,
                "in task_slices[0].properties.env_prefixes[0] ",
                "k",
            ),
        ];
        for (json, within, field) in cases {
            let message = parse("r", json.as_bytes()).unwrap_err().to_string();
            assert!(message.contains(&format!("unknown field `{field}`")), "{message}");
            assert!(message.contains(within), "{message}");
        }
    }

    #[test]
    fn secret_bytes_in_a_request_file_point_to_the_flag() {
        let error = parse("task.json", br#"{"secret_bytes": "c2VjcmV0"}"#).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert_eq!(
            error.to_string(),
            "task.json: `secret_bytes` cannot be given in a request file (secrets never travel in JSON); \
             use --secret-bytes-file FILE"
        );
        let nested = br#"{"task_slices": [{"properties": {"caches": [{"name": "a", "path": "b", "size": 1}]}}]}"#;
        let message = parse("r", nested).unwrap_err().to_string();
        assert!(message.contains("unknown field `size` in task_slices[0].properties.caches[0]"), "{message}");
    }

    #[test]
    fn other_mistakes_are_reported_as_serde_sees_them() {
        for (json, expected) in [
            (r#"{"priority": "high"}"#, "r: invalid type: string \"high\", expected u8 at line 1 column 19"),
            (r#"{"priority": 300}"#, "r: invalid value: integer `300`, expected u8 at line 1 column 16"),
            ("{", "r: EOF while parsing an object at line 1 column 1"),
        ] {
            let error = parse("r", json.as_bytes()).unwrap_err();
            assert_eq!(error.to_string(), expected);
            assert_eq!(error.exit_code(), exit_codes::USAGE);
        }
    }

    #[test]
    fn a_missing_file_is_a_usage_error_naming_it() {
        let error = read(Path::new("/nonexistent/task.json")).unwrap_err();
        assert_eq!(error.exit_code(), exit_codes::USAGE);
        assert!(error.to_string().starts_with("cannot read the request from /nonexistent/task.json: "), "{error}");
    }
}

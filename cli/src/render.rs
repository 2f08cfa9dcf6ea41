//! How tasks and bots look on stdout: JSON for programs, text for people. Pure
//! functions of what the daemon sent; nothing here does I/O.
//!
//! Times are RFC 3339 in UTC with milliseconds; ids are 16 hex digits.

use std::time::{Duration, UNIX_EPOCH};

use apiary_protocol::ids::format_task_id;
use apiary_protocol::{BotInfo, StringPair, TaskResult, TaskState};
use serde_json::{Map, Value, json};

/// Times from year 10000 on cannot be written in RFC 3339.
const FIRST_UNFORMATTABLE_UNIX_MS: u64 = 253_402_300_800_000;

pub(crate) fn task_json(result: &TaskResult) -> Value {
    json!({
        "task_id": format_task_id(result.task_id),
        "run_id": result.run_id.map(format_task_id),
        "name": result.request.name,
        "user": result.request.user,
        "state": result.state.name(),
        "exit_code": result.exit_code,
        "bot_id": result.bot_id,
        "try_number": result.try_number,
        "priority": result.request.priority,
        "dimensions": dimensions_json(current_dimensions(result)),
        "tags": result.request.tags,
        "created_ts": timestamp(result.created_unix_ms),
        "started_ts": result.started_unix_ms.map(timestamp),
        "completed_ts": result.completed_unix_ms.map(timestamp),
        "abandoned_ts": result.abandoned_unix_ms.map(timestamp),
        "duration": result.duration_ms.map(seconds),
        "current_task_slice": result.current_task_slice,
        "internal_failure": result.internal_failure,
        "failure": is_failure(result),
        "failure_reason": result.failure_reason,
        "output_len": result.output_len,
        "request": serde_json::to_value(&result.request).expect("a NewTaskRequest is plain data and always serializes"),
    })
}

/// A JSON value as printed: indented, one trailing newline.
pub(crate) fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// `key: value` lines, values aligned; `-` for what is not known yet.
pub(crate) fn task_text(result: &TaskResult) -> String {
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
    let command = current_slice_command(result);
    let lines = [
        ("task_id", format_task_id(result.task_id)),
        ("run_id", optional(result.run_id.map(format_task_id))),
        ("name", result.request.name.clone()),
        ("user", result.request.user.clone()),
        ("state", result.state.name().to_string()),
        ("exit_code", optional(result.exit_code.map(|code| code.to_string()))),
        ("failure", is_failure(result).to_string()),
        ("failure_reason", result.failure_reason.clone()),
        ("internal_failure", result.internal_failure.to_string()),
        ("bot_id", optional(result.bot_id.clone())),
        ("try_number", result.try_number.to_string()),
        ("priority", result.request.priority.to_string()),
        ("current_task_slice", result.current_task_slice.to_string()),
        ("command", command),
        ("dimensions", pairs_text(current_dimensions(result))),
        ("tags", result.request.tags.join(" ")),
        ("created", timestamp(result.created_unix_ms)),
        ("started", optional(result.started_unix_ms.map(timestamp))),
        ("completed", optional(result.completed_unix_ms.map(timestamp))),
        ("abandoned", optional(result.abandoned_unix_ms.map(timestamp))),
        ("duration", optional(result.duration_ms.map(|ms| format!("{:.3}s", seconds(ms))))),
        ("output_len", result.output_len.to_string()),
    ];
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in lines {
        let line = format!("{:<width$} {value}", format!("{key}:"));
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub(crate) fn bots_json(bots: &[BotInfo]) -> Value {
    bots.iter()
        .map(|bot| {
            json!({
                "bot_id": bot.bot_id,
                "dimensions": dimensions_json(&bot.dimensions),
                "status": bot_status(bot),
                "current_task": bot.current_run_id.map(format_task_id),
                "first_seen_ts": timestamp(bot.first_seen_unix_ms),
                "last_seen_ts": timestamp(bot.last_seen_unix_ms),
                "connected": bot.connected,
                "software": bot.software,
            })
        })
        .collect()
}

/// A table, one bot per line under a header, columns aligned.
pub(crate) fn bots_table(bots: &[BotInfo]) -> String {
    let header = ["BOT_ID", "STATUS", "TASK", "LAST_SEEN", "DIMENSIONS"].map(str::to_string);
    let rows: Vec<[String; 5]> = bots
        .iter()
        .map(|bot| {
            [
                bot.bot_id.clone(),
                bot_status(bot).to_string(),
                bot.current_run_id.map_or_else(|| "-".to_string(), format_task_id),
                timestamp(bot.last_seen_unix_ms),
                pairs_text(&bot.dimensions),
            ]
        })
        .collect();
    let all_rows = || std::iter::once(&header).chain(&rows);
    let mut widths = [0usize; 5];
    for row in all_rows() {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in all_rows() {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        table.push_str(line.join("  ").trim_end());
        table.push('\n');
    }
    table
}

/// "busy" with a task, "idle" and polling, or "disconnected".
fn bot_status(bot: &BotInfo) -> &'static str {
    match (bot.connected, bot.current_run_id) {
        (false, _) => "disconnected",
        (true, Some(_)) => "busy",
        (true, None) => "idle",
    }
}

/// COMPLETED with a non-zero exit code, or TIMED_OUT: the task's own failure, as
/// Swarming's `failure` field means it.
fn is_failure(result: &TaskResult) -> bool {
    match result.state {
        TaskState::Completed => result.exit_code.is_some_and(|code| code != 0),
        TaskState::TimedOut => true,
        TaskState::Pending
        | TaskState::Running
        | TaskState::BotDied
        | TaskState::Expired
        | TaskState::Killed
        | TaskState::Canceled
        | TaskState::NoResource
        | TaskState::ClientError => false,
    }
}

/// The dimensions of the slice the task is on. A slice index the request does not
/// have (the daemon should never send one) shows as no dimensions.
fn current_dimensions(result: &TaskResult) -> &[StringPair] {
    let slice = result.request.task_slices.get(result.current_task_slice as usize);
    slice.map_or(&[], |slice| slice.properties.dimensions.as_slice())
}

fn current_slice_command(result: &TaskResult) -> String {
    let slice = result.request.task_slices.get(result.current_task_slice as usize);
    slice.map_or_else(String::new, |slice| slice.properties.command.join(" "))
}

/// Key -> list of values, each list in the order given.
fn dimensions_json(pairs: &[StringPair]) -> Value {
    let mut object = Map::new();
    for pair in pairs {
        let values = object.entry(pair.key.clone()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = values {
            values.push(Value::String(pair.value.clone()));
        }
    }
    Value::Object(object)
}

fn pairs_text(pairs: &[StringPair]) -> String {
    pairs.iter().map(|pair| format!("{}={}", pair.key, pair.value)).collect::<Vec<_>>().join(" ")
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn timestamp(unix_ms: u64) -> String {
    if unix_ms >= FIRST_UNFORMATTABLE_UNIX_MS {
        return format!("{unix_ms} ms after the Unix epoch");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

#[cfg(test)]
mod tests {
    use apiary_protocol::{NewTaskRequest, TaskProperties, TaskSlice};

    use super::*;
    use crate::connect::fake::task_result;

    fn completed_task() -> TaskResult {
        let properties = TaskProperties {
            command: vec!["make".to_string(), "test".to_string()],
            dimensions: vec![
                StringPair::new("pool", "b"),
                StringPair::new("os", "linux"),
                StringPair::new("pool", "a"),
            ],
            ..TaskProperties::default()
        };
        let request = NewTaskRequest {
            name: "build".to_string(),
            user: "ana".to_string(),
            tags: vec!["ci:yes".to_string()],
            task_slices: vec![TaskSlice { properties, ..TaskSlice::default() }],
            ..NewTaskRequest::default()
        };
        TaskResult {
            run_id: Some(0x018b_cfe5_6880_0011),
            bot_id: Some("bot-1".to_string()),
            try_number: 1,
            started_unix_ms: Some(1_700_000_001_000),
            completed_unix_ms: Some(1_700_000_003_500),
            duration_ms: Some(2_345),
            output_len: 12,
            request,
            ..task_result(0x018b_cfe5_6880_0010, TaskState::Completed, Some(1))
        }
    }

    #[test]
    fn task_json_has_every_field_in_swarming_shape() {
        let value = task_json(&completed_task());
        assert_eq!(value["task_id"], "018bcfe568800010");
        assert_eq!(value["run_id"], "018bcfe568800011");
        assert_eq!(value["name"], "build");
        assert_eq!(value["user"], "ana");
        assert_eq!(value["state"], "COMPLETED");
        assert_eq!(value["exit_code"], 1);
        assert_eq!(value["bot_id"], "bot-1");
        assert_eq!(value["try_number"], 1);
        assert_eq!(value["priority"], 200);
        assert_eq!(value["dimensions"], json!({"pool": ["b", "a"], "os": ["linux"]}));
        assert_eq!(value["tags"], json!(["ci:yes"]));
        assert_eq!(value["created_ts"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["started_ts"], "2023-11-14T22:13:21.000Z");
        assert_eq!(value["completed_ts"], "2023-11-14T22:13:23.500Z");
        assert_eq!(value["abandoned_ts"], Value::Null);
        assert_eq!(value["duration"], 2.345);
        assert_eq!(value["current_task_slice"], 0);
        assert_eq!(value["internal_failure"], false);
        assert_eq!(value["failure"], true);
        assert_eq!(value["failure_reason"], "");
        assert_eq!(value["output_len"], 12);
        assert_eq!(value["request"]["task_slices"][0]["properties"]["command"], json!(["make", "test"]));
        assert_eq!(value["request"]["bot_ping_tolerance_secs"], 1200);
    }

    #[test]
    fn unknown_values_are_null_in_json() {
        let value = task_json(&task_result(0x10, TaskState::Pending, None));
        for key in ["run_id", "exit_code", "bot_id", "started_ts", "completed_ts", "abandoned_ts", "duration"] {
            assert_eq!(value[key], Value::Null, "{key}");
        }
        assert_eq!(value["dimensions"], json!({}));
        assert_eq!(value["failure"], false);
    }

    #[test]
    fn failure_means_a_non_zero_exit_or_a_timeout() {
        let failure = |state, exit_code| is_failure(&task_result(0x10, state, exit_code));
        assert!(!failure(TaskState::Completed, Some(0)));
        assert!(failure(TaskState::Completed, Some(2)));
        assert!(failure(TaskState::TimedOut, Some(-1)));
        assert!(!failure(TaskState::BotDied, None));
        assert!(!failure(TaskState::Expired, None));
    }

    #[test]
    fn task_text_aligns_its_values() {
        let text = task_text(&completed_task());
        let value_column = "current_task_slice: ".len();
        for line in text.lines().filter(|line| line.len() > value_column) {
            let (key, value) = line.split_at(value_column);
            assert!(key.trim_end().ends_with(':') && !value.starts_with(' '), "{line:?}");
        }
        assert!(text.contains("task_id:            018bcfe568800010\n"), "{text}");
        assert!(text.contains("dimensions:         pool=b os=linux pool=a\n"), "{text}");
        assert!(text.contains("duration:           2.345s\n"), "{text}");
        assert!(text.contains("abandoned:          -\n"), "{text}");
        assert!(text.contains("failure_reason:\n"), "{text}");
    }

    #[test]
    fn bots_render_with_status_and_dimension_lists() {
        let bot = |bot_id: &str, connected, current_run_id| BotInfo {
            bot_id: bot_id.to_string(),
            dimensions: vec![StringPair::new("os", "linux"), StringPair::new("os", "ubuntu")],
            current_run_id,
            first_seen_unix_ms: 1_700_000_000_000,
            last_seen_unix_ms: 1_700_000_000_250,
            connected,
            software: "apiary-agent/0.1.0".to_string(),
        };
        let bots = [bot("busy-one", true, Some(0x21)), bot("b", true, None), bot("gone", false, None)];
        let value = bots_json(&bots);
        assert_eq!(value[0]["status"], "busy");
        assert_eq!(value[0]["current_task"], "0000000000000021");
        assert_eq!(value[0]["dimensions"], json!({"os": ["linux", "ubuntu"]}));
        assert_eq!(value[0]["last_seen_ts"], "2023-11-14T22:13:20.250Z");
        assert_eq!(value[1]["status"], "idle");
        assert_eq!(value[1]["current_task"], Value::Null);
        assert_eq!(value[2]["status"], "disconnected");
        assert_eq!(value[2]["connected"], false);
        assert_eq!(value[2]["software"], "apiary-agent/0.1.0");

        let table = bots_table(&bots);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("BOT_ID    STATUS        TASK "), "{table}");
        assert!(lines[1].starts_with("busy-one  busy          0000000000000021  2023-11-14T22:13:20.250Z  os=linux"));
        assert!(lines[3].starts_with("gone      disconnected  -   "), "{table}");
    }

    #[test]
    fn an_empty_bot_list_is_a_header_or_an_empty_array() {
        assert_eq!(bots_table(&[]).lines().count(), 1);
        assert_eq!(bots_json(&[]), json!([]));
    }

    #[test]
    fn times_beyond_rfc_3339_do_not_panic() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(FIRST_UNFORMATTABLE_UNIX_MS - 1), "9999-12-31T23:59:59.999Z");
        assert!(timestamp(u64::MAX).ends_with("ms after the Unix epoch"));
    }
}

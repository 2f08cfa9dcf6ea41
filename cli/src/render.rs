//! How tasks and bots look on stdout: JSON for programs, text for people. Pure
//! functions of what the daemon sent; nothing here does I/O.
//!
//! Times are RFC 3339 in UTC with milliseconds; ids are 16 hex digits.

use std::time::{Duration, UNIX_EPOCH};

use apiary_protocol::cas::CasTransferStats;
use apiary_protocol::ids::format_task_id;
use apiary_protocol::{
    BotCounts, BotEvent, BotEventQuery, BotInfo, CacheInfo, CancelOutcome, NewTaskRequest, PendingInfo, StateQuery,
    StringPair, TaskQuery, TaskResult, TaskState, TimeoutKind,
};
use serde_json::{Map, Value, json};

/// Times from year 10000 on cannot be written in RFC 3339.
const FIRST_UNFORMATTABLE_UNIX_MS: u64 = 253_402_300_800_000;

pub(crate) fn task_json(result: &TaskResult) -> Value {
    json!({
        "task_id": format_task_id(result.task_id),
        "run_id": result.run_id.map(format_task_id),
        "name": result.request.name,
        "user": result.request.user,
        "authenticated": authenticated(result),
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
        "setup_duration": result.setup_ms.map(seconds),
        "teardown_duration": result.teardown_ms.map(seconds),
        "timeout": result.timeout.map(TimeoutKind::name),
        "current_task_slice": result.current_task_slice,
        "internal_failure": result.internal_failure,
        "failure": is_failure(result),
        "failure_reason": result.failure_reason,
        "output_len": result.output_len,
        "output_truncated": result.output_truncated,
        "has_secret_bytes": result.has_secret_bytes,
        "deduped_from": result.deduped_from.map(format_task_id),
        "cas_output_root": result.cas_output_root,
        "cas_stats": result.cas_stats,
        "pending": result.pending.map(|pending| json!({
            "matching_bots": pending.matching_bots,
            "busy_bots": pending.busy_bots,
            "queue_position": pending.queue_position,
        })),
        "request": request_json(&result.request),
    })
}

/// One task of `collect`'s summary, keyed by its id there: its result and its
/// output (as text, invalid UTF-8 replaced), as Swarming's collect writes each
/// task of `-task-summary-json`.
pub(crate) fn collected_json(result: &TaskResult, output: &[u8]) -> Value {
    json!({"results": task_json(result), "output": String::from_utf8_lossy(output)})
}

/// A request as Swarming writes a `NewTaskRequest`; `--request` reads it back.
/// Never with its secret bytes: serde skips them.
pub(crate) fn request_json(request: &NewTaskRequest) -> Value {
    serde_json::to_value(request).expect("a NewTaskRequest is plain data and always serializes")
}

/// A request as `trigger --dry-run` prints it: indented, fields in the request's
/// own order (a JSON value would sort them), one trailing newline.
pub(crate) fn request_text(request: &NewTaskRequest) -> String {
    let mut text = serde_json::to_string_pretty(request).expect("a NewTaskRequest is plain data and always serializes");
    text.push('\n');
    text
}

/// `{"tasks": [...], "next_cursor": ...}`: each task as `task_json` writes it.
pub(crate) fn tasks_page_json(tasks: &[TaskResult], next_cursor: Option<u64>) -> Value {
    json!({
        "tasks": tasks.iter().map(task_json).collect::<Vec<Value>>(),
        "next_cursor": next_cursor.map(format_cursor),
    })
}

/// A cursor as people see it: 16 hex digits, like a task id.
pub(crate) fn format_cursor(cursor: u64) -> String {
    format!("{cursor:016x}")
}

/// A JSON value as printed: indented, one trailing newline.
pub(crate) fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// The principal that created the task, as the daemon tagged it
/// (`authenticated:NAME`); none when the daemon's access was open.
fn authenticated(result: &TaskResult) -> Option<&str> {
    result.request.tags.iter().find_map(|tag| tag.strip_prefix("authenticated:"))
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
        ("authenticated", optional(authenticated(result).map(str::to_string))),
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
        ("duration", optional(result.duration_ms.map(seconds_text))),
        ("setup_duration", optional(result.setup_ms.map(seconds_text))),
        ("teardown_duration", optional(result.teardown_ms.map(seconds_text))),
        ("timeout", optional(result.timeout.map(|timeout| timeout.name().to_string()))),
        ("output_len", result.output_len.to_string()),
        ("output_truncated", result.output_truncated.to_string()),
        ("has_secret_bytes", result.has_secret_bytes.to_string()),
        ("deduped_from", optional(result.deduped_from.map(format_task_id))),
        ("cas_output_root", optional(result.cas_output_root.as_ref().map(|root| root.digest.to_string()))),
        ("cas_inputs", optional(result.cas_stats.map(|stats| transfer_text(&stats.download, "from the bot's cache")))),
        ("cas_outputs", optional(result.cas_stats.map(|stats| transfer_text(&stats.upload, "already stored")))),
        ("pending", optional(result.pending.map(pending_text))),
    ];
    aligned_lines(&lines)
}

/// "2 files (10 bytes) moved, 5 (300 bytes) from the bot's cache, in 0.040s".
fn transfer_text(stats: &CasTransferStats, hot: &str) -> String {
    format!(
        "{} files ({} bytes) moved, {} ({} bytes) {hot}, in {}",
        stats.items_cold,
        stats.bytes_cold,
        stats.items_hot,
        stats.bytes_hot,
        seconds_text(stats.duration_ms)
    )
}

/// "3 matching bots (2 busy), 0 ahead in queue".
fn pending_text(pending: PendingInfo) -> String {
    let plural = if pending.matching_bots == 1 { "" } else { "s" };
    format!(
        "{} matching bot{plural} ({} busy), {} ahead in queue",
        pending.matching_bots, pending.busy_bots, pending.queue_position
    )
}

/// The line `trigger` and `run` write on stderr when an idempotent task reused a result.
pub(crate) fn deduped_note(task_id: u64, deduped_from: Option<u64>) -> Option<String> {
    let run_id = deduped_from?;
    Some(format!("task {} reuses the result of run {} (idempotent)", format_task_id(task_id), format_task_id(run_id)))
}

/// A table, newest task first, columns aligned.
pub(crate) fn tasks_table(tasks: &[TaskResult]) -> String {
    let or_dash = |text: &str| if text.is_empty() { "-".to_string() } else { text.to_string() };
    let rows = tasks.iter().map(|task| {
        [
            format_task_id(task.task_id),
            task.state.name().to_string(),
            or_dash(&task.request.name),
            or_dash(task.bot_id.as_deref().unwrap_or("")),
            timestamp(task.created_unix_ms),
        ]
    });
    table(["TASK_ID", "STATE", "NAME", "BOT", "CREATED"], rows)
}

/// The command that lists the next page: the same filters and limit, and the cursor.
pub(crate) fn next_page_command(query: &TaskQuery, next_cursor: u64) -> String {
    let mut words = vec!["apiary tasks list --cursor".to_string(), format_cursor(next_cursor)];
    if query.state != StateQuery::All {
        words.extend(["--state".to_string(), query.state.name().to_string()]);
    }
    for tag in &query.tags {
        words.extend(["--tag".to_string(), shell_word(tag)]);
    }
    if let Some(start) = query.created_since_unix_ms {
        words.extend(["--start".to_string(), timestamp(start)]);
    }
    if let Some(end) = query.created_until_unix_ms {
        words.extend(["--end".to_string(), timestamp(end)]);
    }
    if query.limit != 0 {
        words.extend(["--limit".to_string(), query.limit.to_string()]);
    }
    words.join(" ")
}

/// `tasks count`: the number alone, or `N+` when counting stopped at the cap.
pub(crate) fn task_count_text(count: u64, capped: bool) -> String {
    if capped { format!("{count}+\n") } else { format!("{count}\n") }
}

pub(crate) fn task_count_json(count: u64, capped: bool) -> Value {
    json!({"count": count, "capped": capped})
}

/// What `cancel --tag` did in all.
pub(crate) fn canceled_tasks_text(canceled: u64, kill_requested: u64, left_running: bool) -> String {
    let mut text = format!("canceled {canceled} pending task{}", plural(canceled));
    if kill_requested > 0 || !left_running {
        text.push_str(&format!("; kill requested for {kill_requested} running task{}", plural(kill_requested)));
    }
    text.push('\n');
    text
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// `bots count`, as Swarming's BotsCount names its fields.
pub(crate) fn bot_counts_json(counts: &BotCounts) -> Value {
    json!({
        "count": counts.count,
        "busy": counts.busy,
        "dead": counts.dead,
        "quarantined": counts.quarantined,
        "connected": counts.connected,
        "terminating": counts.terminating,
        "shut_down": counts.shut_down,
    })
}

pub(crate) fn bot_counts_text(counts: &BotCounts) -> String {
    aligned_lines(&[
        ("count", counts.count.to_string()),
        ("busy", counts.busy.to_string()),
        ("dead", counts.dead.to_string()),
        ("quarantined", counts.quarantined.to_string()),
        ("connected", counts.connected.to_string()),
        ("terminating", counts.terminating.to_string()),
        ("shut_down", counts.shut_down.to_string()),
    ])
}

/// The command that lists the next page of a bot's tasks.
pub(crate) fn next_bot_tasks_command(bot_id: &str, limit: Option<u32>, next_cursor: u64) -> String {
    let mut words = vec!["apiary bots tasks --cursor".to_string(), format_cursor(next_cursor)];
    if let Some(limit) = limit {
        words.extend(["--limit".to_string(), limit.to_string()]);
    }
    words.push(shell_word(bot_id));
    words.join(" ")
}

/// `text` as one shell word: as it is when that is safe, else single-quoted.
fn shell_word(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.,:/=@+%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The one line `cancel` prints, by what the cancel did.
pub(crate) fn cancel_text(outcome: CancelOutcome, task: &TaskResult) -> String {
    let task_id = format_task_id(task.task_id);
    match outcome {
        CancelOutcome::Canceled => format!("canceled {task_id}\n"),
        CancelOutcome::KillRequested => format!("kill requested: {task_id} ends KILLED once its bot stops it\n"),
        CancelOutcome::LeftRunning => {
            format!("{task_id} is RUNNING and was left alone; use --kill-running to stop it\n")
        }
        CancelOutcome::AlreadyEnded => format!("{task_id} already ended {}; nothing changed\n", task.state.name()),
    }
}

pub(crate) fn bots_json(bots: &[BotInfo]) -> Value {
    bots.iter().map(bot_json).collect()
}

pub(crate) fn bot_json(bot: &BotInfo) -> Value {
    json!({
        "bot_id": bot.bot_id,
        "dimensions": dimensions_json(&bot.dimensions),
        "status": bot_status(bot),
        "current_task": bot.current_run_id.map(format_task_id),
        "first_seen_ts": timestamp(bot.first_seen_unix_ms),
        "last_seen_ts": timestamp(bot.last_seen_unix_ms),
        "connected": bot.connected,
        "software": bot.software,
        "dead": bot.dead,
        "quarantine_reason": bot.quarantine_reason,
        "terminate_requested": bot.terminate_requested,
        "shut_down": bot.shut_down,
        "caches": bot.caches.iter().map(|cache| json!({
            "name": cache.name,
            "size_bytes": cache.size_bytes,
        })).collect::<Vec<Value>>(),
    })
}

/// `key: value` lines, values aligned, as `task_text` writes a task.
pub(crate) fn bot_text(bot: &BotInfo) -> String {
    let lines = [
        ("bot_id", bot.bot_id.clone()),
        ("status", bot_status(bot).to_string()),
        ("quarantine_reason", bot.quarantine_reason.as_deref().map_or_else(|| "-".to_string(), one_line)),
        ("current_task", bot.current_run_id.map_or_else(|| "-".to_string(), format_task_id)),
        ("dimensions", pairs_text(&bot.dimensions)),
        ("first_seen", timestamp(bot.first_seen_unix_ms)),
        ("last_seen", timestamp(bot.last_seen_unix_ms)),
        ("connected", bot.connected.to_string()),
        ("dead", bot.dead.to_string()),
        ("terminate_requested", bot.terminate_requested.to_string()),
        ("shut_down", bot.shut_down.to_string()),
        ("caches", caches_text(&bot.caches)),
        ("software", bot.software.clone()),
    ];
    aligned_lines(&lines)
}

/// A table, one bot per line under a header, columns aligned.
pub(crate) fn bots_table(bots: &[BotInfo]) -> String {
    let rows = bots.iter().map(|bot| {
        [
            bot.bot_id.clone(),
            bot_status(bot).to_string(),
            bot.current_run_id.map_or_else(|| "-".to_string(), format_task_id),
            timestamp(bot.last_seen_unix_ms),
            pairs_text(&bot.dimensions),
        ]
    });
    table(["BOT_ID", "STATUS", "TASK", "LAST_SEEN", "DIMENSIONS"], rows)
}

/// `{"events": [...], "next_cursor": ...}`, events in the order given (newest first).
pub(crate) fn bot_events_json(events: &[BotEvent], next_cursor: Option<u64>) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|event| {
            json!({
                "number": event.number,
                "ts": timestamp(event.at_unix_ms),
                "event": event.kind.name(),
                "dimensions": dimensions_json(&event.dimensions),
                "task_id": event.run_id.map(format_task_id),
                "message": event.message,
            })
        })
        .collect();
    json!({"events": events, "next_cursor": next_cursor.map(format_cursor)})
}

/// A table, one event per line in the order given; the message last, on one line.
pub(crate) fn bot_events_table(events: &[BotEvent]) -> String {
    let rows = events.iter().map(|event| {
        let message = if event.message.is_empty() { "-".to_string() } else { one_line(&event.message) };
        [
            timestamp(event.at_unix_ms),
            event.kind.name().to_string(),
            event.run_id.map_or_else(|| "-".to_string(), format_task_id),
            message,
        ]
    });
    table(["TS", "EVENT", "TASK", "MESSAGE"], rows)
}

/// The command that lists the next page of a bot's events: the same filters and
/// limit, and the cursor.
pub(crate) fn next_bot_events_command(query: &BotEventQuery, next_cursor: u64) -> String {
    let mut words = vec!["apiary bots events --cursor".to_string(), format_cursor(next_cursor)];
    if query.limit != 0 {
        words.extend(["--limit".to_string(), query.limit.to_string()]);
    }
    if let Some(since) = query.since_unix_ms {
        words.extend(["--since".to_string(), timestamp(since)]);
    }
    if let Some(until) = query.until_unix_ms {
        words.extend(["--until".to_string(), timestamp(until)]);
    }
    words.push(shell_word(&query.bot_id));
    words.join(" ")
}

/// The line `bots quarantine`, `unquarantine` or `terminate` prints.
pub(crate) fn bot_action_text(action: BotAction<'_>, bot: &BotInfo) -> String {
    match action {
        BotAction::Quarantined { reason } => format!("quarantined {}: {}\n", bot.bot_id, one_line(reason)),
        BotAction::Unquarantined => format!("unquarantined {}\n", bot.bot_id),
        BotAction::TerminateRequested => format!("terminate requested: {}\n", terminate_outlook(bot)),
    }
}

/// When a bot asked to terminate will exit, as far as the daemon knows.
fn terminate_outlook(bot: &BotInfo) -> String {
    let away = if bot.shut_down {
        "has shut down"
    } else if bot.dead {
        "is missing"
    } else if !bot.connected {
        "is not connected"
    } else if bot.current_run_id.is_some() {
        return format!("{} exits after its current task", bot.bot_id);
    } else {
        return format!("{} exits at its next poll", bot.bot_id);
    };
    format!("{} {away}; the request is kept, and it exits when it next connects, before taking any task", bot.bot_id)
}

/// What a bot management command asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BotAction<'a> {
    Quarantined { reason: &'a str },
    Unquarantined,
    TerminateRequested,
}

/// Text on one line: each control character (a newline of a health check's
/// output, say) becomes a space.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// A header and rows, columns aligned two spaces apart, no trailing spaces.
fn table<const COLUMNS: usize>(header: [&str; COLUMNS], rows: impl Iterator<Item = [String; COLUMNS]>) -> String {
    let header = header.map(str::to_string);
    let rows: Vec<[String; COLUMNS]> = std::iter::once(header).chain(rows).collect();
    let mut widths = [0usize; COLUMNS];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        table.push_str(line.join("  ").trim_end());
        table.push('\n');
    }
    table
}

/// `key: value` lines with the values in one column.
fn aligned_lines(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in lines {
        let line = format!("{:<width$} {value}", format!("{key}:"));
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// "git (1.5 GiB), pip (12 KiB)"; "-" for none.
fn caches_text(caches: &[CacheInfo]) -> String {
    if caches.is_empty() {
        return "-".to_string();
    }
    let caches: Vec<String> =
        caches.iter().map(|cache| format!("{} ({})", cache.name, size_text(cache.size_bytes))).collect();
    caches.join(", ")
}

/// Bytes for people: exact below 1 KiB, else in the largest binary unit that
/// keeps at least 1, with one decimal when under 10.
fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut size = bytes as f64 / 1024.0;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if size < 10.0 { format!("{size:.1} {}", UNITS[unit]) } else { format!("{size:.0} {}", UNITS[unit]) }
}

/// The first that applies: "dead" (not heard from for the daemon's bot death
/// timeout), "shut_down" (exited when told to terminate), "quarantined", "busy"
/// with a task, "idle" and polling, or "disconnected".
fn bot_status(bot: &BotInfo) -> &'static str {
    if bot.dead {
        "dead"
    } else if bot.shut_down {
        "shut_down"
    } else if bot.quarantine_reason.is_some() {
        "quarantined"
    } else if bot.current_run_id.is_some() {
        "busy"
    } else if bot.connected {
        "idle"
    } else {
        "disconnected"
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

/// "2.345s".
fn seconds_text(ms: u64) -> String {
    format!("{:.3}s", seconds(ms))
}

fn timestamp(unix_ms: u64) -> String {
    if unix_ms >= FIRST_UNFORMATTABLE_UNIX_MS {
        return format!("{unix_ms} ms after the Unix epoch");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
            task_slices: vec![TaskSlice { properties: Arc::new(properties), ..TaskSlice::default() }],
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
    fn timeouts_phases_secrets_and_truncation_show_in_json_and_text() {
        let mut secret_request = completed_task().request;
        secret_request.secret_bytes = Some(apiary_protocol::SecretBytes(b"hunter2".to_vec()));
        let timed_out = TaskResult {
            timeout: Some(TimeoutKind::Io),
            setup_ms: Some(1_250),
            teardown_ms: Some(40),
            has_secret_bytes: true,
            output_truncated: true,
            exit_code: Some(-1),
            request: secret_request,
            ..task_result(0x10, TaskState::TimedOut, Some(-1))
        };
        let value = task_json(&timed_out);
        assert_eq!(value["timeout"], "io");
        assert_eq!(value["setup_duration"], 1.25);
        assert_eq!(value["teardown_duration"], 0.04);
        assert_eq!(value["has_secret_bytes"], true);
        assert_eq!(value["output_truncated"], true);
        assert_eq!(value["failure"], true);
        let printed = json_text(&value);
        assert!(value["request"].get("secret_bytes").is_none(), "{printed}");
        assert!(!printed.contains("\"secret_bytes\"") && !printed.contains("hunter2"), "{printed}");
        assert!(!request_text(&timed_out.request).contains("hunter2"));
        let text = task_text(&timed_out);
        for line in [
            "failure:            true\n",
            "setup_duration:     1.250s\n",
            "teardown_duration:  0.040s\n",
            "timeout:            io\n",
            "output_truncated:   true\n",
            "has_secret_bytes:   true\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        let hard = TaskResult { timeout: Some(TimeoutKind::Hard), ..timed_out };
        assert_eq!(task_json(&hard)["timeout"], "hard");

        let pending = task_result(0x10, TaskState::Pending, None);
        let value = task_json(&pending);
        for key in ["timeout", "setup_duration", "teardown_duration"] {
            assert_eq!(value[key], Value::Null, "{key}");
        }
        assert_eq!((&value["has_secret_bytes"], &value["output_truncated"]), (&json!(false), &json!(false)));
        let text = task_text(&pending);
        assert!(text.contains("timeout:            -\n") && text.contains("setup_duration:     -\n"), "{text}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (10 * 1024, "10 KiB"),
            (5 << 20, "5.0 MiB"),
            (1 << 40, "1.0 TiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(size_text(bytes), text, "{bytes}");
        }
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
            dead: false,
            quarantine_reason: None,
            terminate_requested: false,
            shut_down: false,
            caches: Vec::new(),
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
        for key in ["dead", "terminate_requested", "shut_down"] {
            assert_eq!(value[0][key], false, "{key}");
        }
        assert_eq!(value[0]["quarantine_reason"], Value::Null);

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
    fn deduplication_and_pending_show_in_json_and_text() {
        let mut task = task_result(0x20, TaskState::Pending, None);
        task.pending = Some(PendingInfo { matching_bots: 3, busy_bots: 2, queue_position: 0 });
        let value = task_json(&task);
        assert_eq!(value["pending"], json!({"matching_bots": 3, "busy_bots": 2, "queue_position": 0}));
        assert_eq!(value["deduped_from"], Value::Null);
        let text = task_text(&task);
        assert!(text.contains("pending:            3 matching bots (2 busy), 0 ahead in queue\n"), "{text}");
        assert!(text.contains("deduped_from:       -\n"), "{text}");
        task.pending = Some(PendingInfo { matching_bots: 1, busy_bots: 0, queue_position: 7 });
        assert!(task_text(&task).contains("pending:            1 matching bot (0 busy), 7 ahead in queue\n"));

        let mut task = completed_task();
        task.deduped_from = Some(0x018b_cfe5_0000_0011);
        let value = task_json(&task);
        assert_eq!(value["deduped_from"], "018bcfe500000011");
        assert_eq!(value["pending"], Value::Null);
        let text = task_text(&task);
        assert!(text.contains("deduped_from:       018bcfe500000011\n"), "{text}");
        assert!(text.contains("pending:            -\n"), "{text}");
        assert_eq!(
            deduped_note(task.task_id, task.deduped_from).unwrap(),
            "task 018bcfe568800010 reuses the result of run 018bcfe500000011 (idempotent)"
        );
        assert_eq!(deduped_note(completed_task().task_id, None), None);
    }

    #[test]
    fn task_json_keeps_every_swarming_field() {
        let value = task_json(&completed_task());
        for key in [
            "task_id",
            "run_id",
            "state",
            "exit_code",
            "failure",
            "internal_failure",
            "failure_reason",
            "duration",
            "created_ts",
            "started_ts",
            "completed_ts",
            "abandoned_ts",
            "current_task_slice",
            "deduped_from",
            "pending",
            "request",
            "timeout",
            "setup_duration",
            "teardown_duration",
            "has_secret_bytes",
            "output_truncated",
            "cas_output_root",
            "cas_stats",
        ] {
            assert!(value.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn task_tables_show_dashes_for_what_is_unknown() {
        let mut running = task_result(0x018b_cfe5_6880_0020, TaskState::Running, None);
        running.bot_id = Some("bot-1".to_string());
        running.request.name = "build".to_string();
        let table = tasks_table(&[running, task_result(0x018b_cfe5_6880_0010, TaskState::Pending, None)]);
        assert_eq!(
            table,
            "TASK_ID           STATE    NAME   BOT    CREATED\n\
             018bcfe568800020  RUNNING  build  bot-1  2023-11-14T22:13:20.000Z\n\
             018bcfe568800010  PENDING  -      -      2023-11-14T22:13:20.000Z\n"
        );
    }

    #[test]
    fn the_next_page_command_repeats_the_filters_quoted_for_a_shell() {
        let query = TaskQuery::default();
        assert_eq!(next_page_command(&query, 0x1f), "apiary tasks list --cursor 000000000000001f");
        let query = TaskQuery {
            state: StateQuery::One(TaskState::TimedOut),
            tags: vec!["k:v".to_string(), "it's:$x".to_string()],
            limit: 5,
            cursor: Some(1),
            created_since_unix_ms: Some(1_700_000_000_000),
            created_until_unix_ms: None,
        };
        assert_eq!(
            next_page_command(&query, 2),
            "apiary tasks list --cursor 0000000000000002 --state TIMED_OUT --tag k:v --tag 'it'\\''s:$x' \
             --start 2023-11-14T22:13:20.000Z --limit 5"
        );
        let query = TaskQuery { state: StateQuery::CompletedFailure, ..TaskQuery::default() };
        assert_eq!(
            next_page_command(&query, 2),
            "apiary tasks list --cursor 0000000000000002 --state COMPLETED_FAILURE"
        );
    }

    #[test]
    fn a_bot_shows_as_aligned_lines() {
        let bot = BotInfo {
            bot_id: "bot-1".to_string(),
            dimensions: vec![StringPair::new("os", "linux"), StringPair::new("pool", "ci")],
            current_run_id: Some(0x21),
            first_seen_unix_ms: 1_700_000_000_000,
            last_seen_unix_ms: 1_700_000_000_250,
            connected: true,
            software: "apiary-agent/0.1.0".to_string(),
            dead: false,
            quarantine_reason: None,
            terminate_requested: true,
            shut_down: false,
            caches: vec![
                CacheInfo { name: "git".to_string(), size_bytes: 1_610_612_736 },
                CacheInfo { name: "pip".to_string(), size_bytes: 12_800 },
                CacheInfo { name: "empty".to_string(), size_bytes: 0 },
            ],
        };
        assert_eq!(
            bot_text(&bot),
            "bot_id:              bot-1\n\
             status:              busy\n\
             quarantine_reason:   -\n\
             current_task:        0000000000000021\n\
             dimensions:          os=linux pool=ci\n\
             first_seen:          2023-11-14T22:13:20.000Z\n\
             last_seen:           2023-11-14T22:13:20.250Z\n\
             connected:           true\n\
             dead:                false\n\
             terminate_requested: true\n\
             shut_down:           false\n\
             caches:              git (1.5 GiB), pip (12 KiB), empty (0 B)\n\
             software:            apiary-agent/0.1.0\n"
        );
        assert_eq!(
            bot_json(&bot)["caches"],
            json!([
                {"name": "git", "size_bytes": 1_610_612_736u64},
                {"name": "pip", "size_bytes": 12_800},
                {"name": "empty", "size_bytes": 0},
            ])
        );
        let quarantined = BotInfo { quarantine_reason: Some("disk\nfull".to_string()), caches: Vec::new(), ..bot };
        assert!(bot_text(&quarantined).contains("\ncaches:              -\n"));
        assert_eq!(bot_json(&quarantined)["caches"], json!([]));
        assert!(bot_text(&quarantined).contains("\nstatus:              quarantined\n"));
        assert!(bot_text(&quarantined).contains("\nquarantine_reason:   disk full\n"));
    }

    #[test]
    fn bot_status_follows_its_precedence() {
        let idle = BotInfo { dimensions: Vec::new(), ..crate::connect::fake::idle_bot("b") };
        let busy = BotInfo { current_run_id: Some(0x21), ..idle.clone() };
        let quarantined = BotInfo { quarantine_reason: Some("r".to_string()), ..busy.clone() };
        let shut_down = BotInfo { shut_down: true, connected: false, ..quarantined.clone() };
        let dead = BotInfo { dead: true, ..shut_down.clone() };
        let cases = [
            (dead, "dead"),
            (shut_down, "shut_down"),
            (quarantined, "quarantined"),
            (busy.clone(), "busy"),
            (BotInfo { connected: false, ..busy }, "busy"),
            (idle.clone(), "idle"),
            (BotInfo { connected: false, ..idle.clone() }, "disconnected"),
            (BotInfo { terminate_requested: true, ..idle }, "idle"),
        ];
        for (bot, status) in cases {
            assert_eq!(bot_status(&bot), status, "{bot:?}");
            assert_eq!(bot_json(&bot)["status"], status);
        }
    }

    #[test]
    fn bot_actions_are_one_line_each() {
        let bot = BotInfo { dimensions: Vec::new(), ..crate::connect::fake::idle_bot("bot-1") };
        let quarantined = bot_action_text(BotAction::Quarantined { reason: "disk\nfull" }, &bot);
        assert_eq!(quarantined, "quarantined bot-1: disk full\n");
        assert_eq!(bot_action_text(BotAction::Unquarantined, &bot), "unquarantined bot-1\n");
        let terminate = |bot: BotInfo| bot_action_text(BotAction::TerminateRequested, &bot);
        assert_eq!(terminate(bot.clone()), "terminate requested: bot-1 exits at its next poll\n");
        let busy = BotInfo { current_run_id: Some(0x11), ..bot.clone() };
        assert_eq!(terminate(busy), "terminate requested: bot-1 exits after its current task\n");
        let kept = "; the request is kept, and it exits when it next connects, before taking any task\n";
        let away = [
            (BotInfo { shut_down: true, connected: false, ..bot.clone() }, "has shut down"),
            (BotInfo { dead: true, connected: false, ..bot.clone() }, "is missing"),
            (BotInfo { connected: false, ..bot.clone() }, "is not connected"),
        ];
        for (bot, state) in away {
            assert_eq!(terminate(bot), format!("terminate requested: bot-1 {state}{kept}"));
        }
    }

    #[test]
    fn event_messages_stay_on_their_line_and_times_round_trip() {
        let event = BotEvent {
            number: 1,
            at_unix_ms: 1_700_000_000_000,
            kind: apiary_protocol::BotEventKind::TaskError,
            dimensions: Vec::new(),
            run_id: Some(0x21),
            message: "line one\r\nline\ttwo".to_string(),
        };
        let table = bot_events_table(&[event]);
        assert_eq!(
            table.lines().nth(1),
            Some("2023-11-14T22:13:20.000Z  task_error  0000000000000021  line one  line two")
        );
        // `more:` writes times this way; --since must read them back.
        let written = timestamp(1_700_000_000_250);
        let read = humantime::parse_rfc3339_weak(&written).unwrap();
        assert_eq!(read, UNIX_EPOCH + Duration::from_millis(1_700_000_000_250));
    }

    #[test]
    fn times_beyond_rfc_3339_do_not_panic() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(FIRST_UNFORMATTABLE_UNIX_MS - 1), "9999-12-31T23:59:59.999Z");
        assert!(timestamp(u64::MAX).ends_with("ms after the Unix epoch"));
    }
}

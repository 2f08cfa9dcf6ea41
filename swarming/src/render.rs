//! Apiary's answers written as Swarming's response messages in the proto3
//! JSON mapping, as Go's protojson prints them: lowerCamelCase names, 64-bit
//! integers as strings, enums by name, timestamps in RFC 3339, bytes in
//! base64, and every field at its default value (0, "", false, an empty
//! list, an unset message) left out.

use std::collections::BTreeMap;

use apiary_protocol::cas::{CasReference, CasTransferStats};
use apiary_protocol::ids::format_task_id;
use apiary_protocol::{
    BotEvent, BotEventKind, BotInfo, NewTaskRequest, StringPair, TaskProperties, TaskResult, TaskState,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::time::format_unix_ms;

/// What Swarming shows in place of a task's secret bytes.
const REDACTED: &[u8] = b"<REDACTED>";
/// The tags the daemon adds to every task, which carry who created it and its parent.
const AUTHENTICATED_TAG: &str = "authenticated:";
const PARENT_TASK_TAG: &str = "parent_task_id:";

/// A message under construction: each setter leaves out a default value.
#[derive(Default)]
pub(crate) struct Json(Map<String, Value>);

impl Json {
    pub(crate) fn new() -> Json {
        Json::default()
    }

    pub(crate) fn text(mut self, name: &str, value: &str) -> Json {
        if !value.is_empty() {
            self.0.insert(name.to_string(), Value::String(value.to_string()));
        }
        self
    }

    /// An `int32` field: a JSON number.
    pub(crate) fn int32(mut self, name: &str, value: i64) -> Json {
        if value != 0 {
            self.0.insert(name.to_string(), json!(value));
        }
        self
    }

    /// An `int64` field: a string of digits, as protojson writes it.
    pub(crate) fn int64(mut self, name: &str, value: i64) -> Json {
        if value != 0 {
            self.0.insert(name.to_string(), Value::String(value.to_string()));
        }
        self
    }

    /// A `float` field of seconds, from milliseconds.
    pub(crate) fn seconds(mut self, name: &str, ms: u64) -> Json {
        if ms != 0 {
            self.0.insert(name.to_string(), json!(ms as f64 / 1000.0));
        }
        self
    }

    pub(crate) fn flag(mut self, name: &str, value: bool) -> Json {
        if value {
            self.0.insert(name.to_string(), Value::Bool(true));
        }
        self
    }

    pub(crate) fn time(mut self, name: &str, unix_ms: Option<u64>) -> Json {
        if let Some(unix_ms) = unix_ms {
            self.0.insert(name.to_string(), Value::String(format_unix_ms(unix_ms)));
        }
        self
    }

    pub(crate) fn task_id(self, name: &str, raw: Option<u64>) -> Json {
        match raw {
            Some(raw) => self.text(name, &format_task_id(raw)),
            None => self,
        }
    }

    pub(crate) fn bytes(mut self, name: &str, value: &[u8]) -> Json {
        if !value.is_empty() {
            self.0.insert(name.to_string(), Value::String(STANDARD.encode(value)));
        }
        self
    }

    /// A set message field: written even when all its fields are defaults.
    pub(crate) fn message(mut self, name: &str, value: Value) -> Json {
        self.0.insert(name.to_string(), value);
        self
    }

    pub(crate) fn list(mut self, name: &str, items: Vec<Value>) -> Json {
        if !items.is_empty() {
            self.0.insert(name.to_string(), Value::Array(items));
        }
        self
    }

    pub(crate) fn texts(self, name: &str, items: &[String]) -> Json {
        self.list(name, items.iter().map(|item| Value::String(item.clone())).collect())
    }

    pub(crate) fn build(self) -> Value {
        Value::Object(self.0)
    }
}

/// Swarming's `TaskResultResponse`. `performance_stats` only when asked for
/// and the task ran.
pub(crate) fn task_result(result: &TaskResult, performance_stats: bool) -> Value {
    let request = &result.request;
    let mut json = Json::new()
        .text("taskId", &format_task_id(result.task_id))
        .text("botId", result.bot_id.as_deref().unwrap_or(""))
        .time("completedTs", result.completed_unix_ms)
        .time("createdTs", Some(result.created_unix_ms))
        .task_id("dedupedFrom", result.deduped_from)
        .seconds("duration", result.duration_ms.unwrap_or(0))
        .int64("exitCode", result.exit_code.unwrap_or(0))
        .flag("failure", is_failure(result))
        .flag("internalFailure", result.internal_failure)
        .time("modifiedTs", Some(modified_unix_ms(result)))
        .time("startedTs", result.started_unix_ms)
        .text("state", result.state.name())
        .time("abandonedTs", result.abandoned_unix_ms)
        .text("name", &request.name)
        .texts("tags", &request.tags)
        .text("user", &request.user)
        // A deduped task's run is the one whose result it took, as in Swarming.
        .task_id("runId", result.run_id.or(result.deduped_from))
        .int32("currentTaskSlice", i64::from(result.current_task_slice));
    if let Some(root) = &result.cas_output_root {
        json = json.message("casOutputRoot", cas_reference(root));
    }
    if performance_stats && result.started_unix_ms.is_some() {
        json = json.message("performanceStats", performance(result));
    }
    json.build()
}

/// COMPLETED or TIMED_OUT with an exit code other than 0, as Swarming sets it.
fn is_failure(result: &TaskResult) -> bool {
    matches!(result.state, TaskState::Completed | TaskState::TimedOut) && result.exit_code != Some(0)
}

/// The last time the result changed.
fn modified_unix_ms(result: &TaskResult) -> u64 {
    [result.started_unix_ms, result.completed_unix_ms, result.abandoned_unix_ms]
        .into_iter()
        .flatten()
        .fold(result.created_unix_ms, u64::max)
}

/// `PerformanceStats`: the bot's overhead around the command, and its clean-up.
fn performance(result: &TaskResult) -> Value {
    let setup_ms = result.setup_ms.unwrap_or(0);
    let teardown_ms = result.teardown_ms.unwrap_or(0);
    let mut json = Json::new().seconds("botOverhead", setup_ms + teardown_ms);
    if result.teardown_ms.is_some() {
        json = json.message("cleanup", Json::new().seconds("duration", teardown_ms).build());
    }
    if let Some(stats) = &result.cas_stats {
        json = json
            .message("isolatedDownload", cas_operation(&stats.download))
            .message("isolatedUpload", cas_operation(&stats.upload));
    }
    json.build()
}

/// `CASOperationStats`: hot items came from the bot's cache (inputs) or were
/// already in the store (outputs); cold ones were moved.
fn cas_operation(stats: &CasTransferStats) -> Value {
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    Json::new()
        .seconds("duration", stats.duration_ms)
        .int64("numItemsCold", count(stats.items_cold))
        .int64("totalBytesItemsCold", count(stats.bytes_cold))
        .int64("numItemsHot", count(stats.items_hot))
        .int64("totalBytesItemsHot", count(stats.bytes_hot))
        .build()
}

/// `CASReference`: the store and a tree's root digest.
fn cas_reference(root: &CasReference) -> Value {
    let digest = Json::new()
        .text("hash", &root.digest.hex())
        .int64("sizeBytes", i64::try_from(root.digest.size_bytes).unwrap_or(i64::MAX))
        .build();
    Json::new().text("casInstance", &root.cas_instance).message("digest", digest).build()
}

/// Swarming's `TaskRequestResponse` of a stored task.
pub(crate) fn stored_request(result: &TaskResult) -> Value {
    let request = &result.request;
    task_request(request, Some(result.task_id), Some(result.created_unix_ms), result.has_secret_bytes)
        .text("authenticated", tag_value(&request.tags, AUTHENTICATED_TAG))
        .text("parentTaskId", tag_value(&request.tags, PARENT_TASK_TAG))
        .build()
}

/// `TaskRequestResponse` without what only a stored task knows (who created
/// it, its parent): a builder, so a caller that knows them adds them. A
/// request only evaluated has no id and no creation time.
pub(crate) fn task_request(
    request: &NewTaskRequest,
    task_id: Option<u64>,
    created_unix_ms: Option<u64>,
    has_secret: bool,
) -> Json {
    let expiration_secs: u64 = request.task_slices.iter().map(|slice| u64::from(slice.expiration_secs)).sum();
    let slices: Vec<Value> = request
        .task_slices
        .iter()
        .map(|slice| {
            Json::new()
                .message("properties", properties(&slice.properties, has_secret))
                .int32("expirationSecs", i64::from(slice.expiration_secs))
                .flag("waitForCapacity", slice.wait_for_capacity)
                .build()
        })
        .collect();
    let mut json = Json::new()
        .task_id("taskId", task_id)
        .int32("expirationSecs", expiration_secs as i64)
        .text("name", &request.name)
        .int32("priority", i64::from(request.priority))
        .texts("tags", &request.tags)
        .time("createdTs", created_unix_ms)
        .text("user", &request.user)
        .list("taskSlices", slices)
        .int32("botPingToleranceSecs", i64::from(request.bot_ping_tolerance_secs));
    // Swarming still copies the first slice's properties to the top, for older clients.
    if let Some(first) = request.task_slices.first() {
        json = json.message("properties", properties(&first.properties, has_secret));
    }
    json
}

fn properties(properties: &TaskProperties, has_secret: bool) -> Value {
    let caches =
        properties.caches.iter().map(|cache| Json::new().text("name", &cache.name).text("path", &cache.path).build());
    let env_prefixes = properties
        .env_prefixes
        .iter()
        .map(|pair| Json::new().text("key", &pair.key).texts("value", &pair.value).build());
    let mut json = Json::new()
        .list("caches", caches.collect())
        .texts("command", &properties.command)
        .text("relativeCwd", &properties.relative_cwd)
        .list("dimensions", string_pairs(&properties.dimensions))
        .list("env", string_pairs(&properties.env))
        .list("envPrefixes", env_prefixes.collect())
        .int32("executionTimeoutSecs", i64::from(properties.execution_timeout_secs))
        .int32("gracePeriodSecs", i64::from(properties.grace_period_secs))
        .flag("idempotent", properties.idempotent)
        .int32("ioTimeoutSecs", i64::from(properties.io_timeout_secs))
        .bytes("secretBytes", if has_secret { REDACTED } else { &[] });
    if let Some(root) = &properties.cas_input_root {
        json = json.message("casInputRoot", cas_reference(root));
    }
    json.build()
}

fn string_pairs(pairs: &[StringPair]) -> Vec<Value> {
    pairs.iter().map(|pair| Json::new().text("key", &pair.key).text("value", &pair.value).build()).collect()
}

/// Dimensions as Swarming lists them: one `StringListPair` per key, keys and
/// values sorted, each value once.
pub(crate) fn dimension_lists(pairs: &[StringPair]) -> Vec<Value> {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pair in pairs {
        by_key.entry(&pair.key).or_default().push(&pair.value);
    }
    by_key
        .into_iter()
        .map(|(key, mut values)| {
            values.sort_unstable();
            values.dedup();
            json!({"key": key, "value": values})
        })
        .collect()
}

fn tag_value<'t>(tags: &'t [String], prefix: &str) -> &'t str {
    tags.iter().find_map(|tag| tag.strip_prefix(prefix)).unwrap_or("")
}

/// Swarming's `BotInfo`. Its `state` (free-form JSON in Swarming) holds
/// Apiary's view of the bot's standing and caches.
pub(crate) fn bot(bot: &BotInfo) -> Value {
    Json::new()
        .text("botId", &bot.bot_id)
        .task_id("taskId", bot.current_run_id)
        .time("firstSeenTs", Some(bot.first_seen_unix_ms))
        .flag("isDead", bot.dead)
        .time("lastSeenTs", Some(bot.last_seen_unix_ms))
        .flag("quarantined", bot.quarantine_reason.is_some())
        .list("dimensions", dimension_lists(&bot.dimensions))
        .text("version", &bot.software)
        .text("state", &bot_state(bot))
        .build()
}

fn bot_state(bot: &BotInfo) -> String {
    let caches: Map<String, Value> =
        bot.caches.iter().map(|cache| (cache.name.clone(), json!(cache.size_bytes))).collect();
    let mut state = Map::new();
    state.insert("connected".to_string(), json!(bot.connected));
    if let Some(reason) = &bot.quarantine_reason {
        state.insert("quarantined".to_string(), json!(reason));
    }
    if bot.terminate_requested {
        state.insert("terminate_requested".to_string(), json!(true));
    }
    if bot.shut_down {
        state.insert("shut_down".to_string(), json!(true));
    }
    if !caches.is_empty() {
        state.insert("named_caches_bytes".to_string(), Value::Object(caches));
    }
    Value::Object(state).to_string()
}

/// Swarming's `BotEventResponse`.
pub(crate) fn bot_event(event: &BotEvent) -> Value {
    Json::new()
        .time("ts", Some(event.at_unix_ms))
        .text("eventType", event.kind.name())
        .text("message", &event.message)
        .list("dimensions", dimension_lists(&event.dimensions))
        .flag("quarantined", event.kind == BotEventKind::Quarantined)
        .task_id("taskId", event.run_id)
        .build()
}

/// A page's cursor: opaque to callers, the core's position in hexadecimal.
pub(crate) fn cursor(position: Option<u64>) -> String {
    position.map(|position| format!("{position:x}")).unwrap_or_default()
}

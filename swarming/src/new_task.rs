//! Swarming's `NewTaskRequest` read as the proto3 JSON mapping reads it, into the
//! protocol's request and the task's lineage (`request_uuid`, `parent_task_id`).
//! One decoder for both ways a request arrives (`Origin`): a request file given
//! to the CLI, and the body of a `swarming.v2.Tasks/NewTask` call.
//!
//! What the mapping allows is accepted: a field under its proto name or its
//! lowerCamelCase JSON name, integers as numbers or as strings, enums by name (or
//! number), `null` for "not given". A field at its default value (`0`, `""`,
//! `false`, `[]`, `{}`, an enum's zero value) requests nothing and is accepted
//! even where Apiary lacks what the field is for; so are the values that mean
//! "nothing" (`containment_type: NONE`, `service_account: "none"`). A field that
//! asks for something Apiary lacks, an unknown field, a wrong type, an unknown
//! enum value or a value out of range is refused by path and reason, all of them
//! in one answer. Rust type names never reach a message.
//!
//! Two fields depend on the origin. `secret_bytes` (base64, as proto3 writes
//! bytes) is taken from an API call, where it travels as it does to Swarming,
//! and refused in a request file, which would keep a secret on disk. And
//! `evaluate_only` asks an API call to only check the request; a request file
//! has `apiary trigger --dry-run` for that.
//!
//! Swarming's older single-slice form (top-level `properties` and
//! `expiration_secs`) is read as a request of one slice.

use std::sync::Arc;

use apiary_protocol::cas::{CasReference, Digest};
use apiary_protocol::ids::parse_task_id;
use apiary_protocol::limits::*;
use apiary_protocol::{
    NamedCache, NewTaskRequest, SecretBytes, StringListPair, StringPair, TaskLineage, TaskProperties, TaskSlice,
};
use base64::Engine;
use serde_json::Value;

/// A request, where its task comes from, and whether it is only to be checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmingRequest {
    pub request: NewTaskRequest,
    pub lineage: TaskLineage,
    /// `evaluate_only`: check the request and show it as it would be stored,
    /// create nothing (only from an API call).
    pub evaluate_only: bool,
}

/// Where a request comes from: it decides what `secret_bytes` and
/// `evaluate_only` may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file given to the CLI.
    RequestFile,
    /// The body of a `NewTask` call of the v2 API.
    ApiCall,
}

/// One refused field: its path (`task_slices[0].properties.cipd_input`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Decodes one request found at `at` (empty for a whole file or call,
/// `requests[3]` in a spawn-tasks file): the request, or every refused field.
pub fn decode(value: &Value, at: &str, origin: Origin) -> Result<SwarmingRequest, Vec<Refusal>> {
    let mut decoder = Decoder { origin, refusals: Vec::new(), secret: None };
    let mut decoded = decoder.request(value, at);
    decoded.request.secret_bytes = decoder.secret.take().map(|(_, bytes)| SecretBytes(bytes));
    if decoder.refusals.is_empty() { Ok(decoded) } else { Err(decoder.refusals) }
}

const REQUEST_FIELDS: &[&str] = &[
    "name",
    "priority",
    "tags",
    "user",
    "task_slices",
    "bot_ping_tolerance_secs",
    "request_uuid",
    "parent_task_id",
    "properties",
    "expiration_secs",
    "service_account",
    "pubsub_topic",
    "pubsub_auth_token",
    "pubsub_userdata",
    "evaluate_only",
    "pool_task_template",
    "resultdb",
    "realm",
    "secret_bytes",
];
/// Fields of Swarming's `TaskRequestResponse` that a request copied from a task's
/// description carries, but that only the server sets.
const OUTPUT_ONLY_FIELDS: &[&str] = &["task_id", "created_ts", "authenticated", "rbe_instance"];
const SLICE_FIELDS: &[&str] = &["properties", "expiration_secs", "wait_for_capacity"];
const PROPERTIES_FIELDS: &[&str] = &[
    "command",
    "dimensions",
    "env",
    "env_prefixes",
    "relative_cwd",
    "execution_timeout_secs",
    "io_timeout_secs",
    "grace_period_secs",
    "idempotent",
    "caches",
    "cas_input_root",
    "cipd_input",
    "outputs",
    "secret_bytes",
    "containment",
];
const CAS_REFERENCE_FIELDS: &[&str] = &["cas_instance", "digest"];
const DIGEST_FIELDS: &[&str] = &["hash", "size_bytes"];
/// Swarming's `Containment`, with the fields of its older API too.
const CONTAINMENT_FIELDS: &[&str] =
    &["containment_type", "lower_priority", "limit_processes", "limit_total_committed_memory"];
const CONTAINMENT_TYPES: &[&str] = &["NOT_SPECIFIED", "NONE", "AUTO", "JOB_OBJECT"];
const POOL_TASK_TEMPLATES: &[&str] = &["AUTO", "CANARY_PREFER", "CANARY_NEVER", "SKIP"];

/// An integer field's allowed values; `zero_is_default` when 0 (proto3's
/// default) means "not given" and takes Apiary's default.
struct Range {
    min: i64,
    max: i64,
    zero_is_default: bool,
}

impl Range {
    const fn seconds(min: u32, max: u32, zero_is_default: bool) -> Range {
        Range { min: min as i64, max: max as i64, zero_is_default }
    }
}

const PRIORITY: Range = Range { min: MIN_PRIORITY as i64, max: MAX_PRIORITY as i64, zero_is_default: true };
const EXPIRATION: Range = Range::seconds(1, MAX_EXPIRATION_SECS, true);
const BLOB_SIZE: Range = Range { min: 0, max: i64::MAX, zero_is_default: false };
const EXECUTION_TIMEOUT: Range = Range::seconds(1, MAX_EXECUTION_TIMEOUT_SECS, true);
const IO_TIMEOUT: Range = Range::seconds(0, MAX_EXECUTION_TIMEOUT_SECS, false);
const GRACE_PERIOD: Range = Range::seconds(1, MAX_GRACE_PERIOD_SECS, true);
const BOT_PING_TOLERANCE: Range = Range::seconds(MIN_BOT_PING_TOLERANCE_SECS, MAX_BOT_PING_TOLERANCE_SECS, true);

struct Decoder {
    origin: Origin,
    refusals: Vec<Refusal>,
    /// The first `secret_bytes` given, and where: a task has one secret.
    secret: Option<(String, Vec<u8>)>,
}

/// An object's fields under their proto names, whichever spelling the file used.
struct Fields<'v> {
    at: String,
    found: Vec<(&'static str, &'v Value)>,
}

impl<'v> Fields<'v> {
    fn get(&self, name: &str) -> Option<&'v Value> {
        self.found.iter().find(|(found, _)| *found == name).map(|(_, value)| *value)
    }

    fn at(&self, name: &str) -> String {
        join(&self.at, name)
    }
}

impl Decoder {
    fn refuse(&mut self, at: &str, message: impl Into<String>) {
        self.refusals.push(Refusal { at: display_at(at), message: message.into() });
    }

    fn request(&mut self, value: &Value, at: &str) -> SwarmingRequest {
        let mut decoded = SwarmingRequest::default();
        let Some(fields) = self.fields(value, at, REQUEST_FIELDS, OUTPUT_ONLY_FIELDS) else {
            return decoded;
        };
        let request = &mut decoded.request;
        if let Some(name) = self.string_field(&fields, "name") {
            request.name = name;
        }
        if let Some(priority) = self.integer_field(&fields, "priority", &PRIORITY) {
            request.priority = priority as u8;
        }
        if let Some(tags) = fields.get("tags") {
            request.tags = self.strings(tags, &fields.at("tags"));
        }
        if let Some(user) = self.string_field(&fields, "user") {
            request.user = user;
        }
        if let Some(tolerance) = self.integer_field(&fields, "bot_ping_tolerance_secs", &BOT_PING_TOLERANCE) {
            request.bot_ping_tolerance_secs = tolerance as u32;
        }
        request.task_slices = self.slices(&fields);
        self.lineage(&fields, &mut decoded.lineage);
        decoded.evaluate_only = self.request_extras(&fields);
        decoded
    }

    /// `task_slices`, or the single-slice form.
    fn slices(&mut self, fields: &Fields) -> Vec<TaskSlice> {
        let single_slice = fields.get("properties").is_some() || fields.get("expiration_secs").is_some();
        match fields.get("task_slices") {
            Some(_) if single_slice => {
                let message = "give either task_slices, or properties with expiration_secs (the single-slice \
                               form), not both";
                self.refuse(&fields.at("properties"), message);
                Vec::new()
            }
            Some(slices) => {
                let at = fields.at("task_slices");
                let Some(items) = self.list(slices, &at) else { return Vec::new() };
                items.iter().enumerate().map(|(index, slice)| self.slice(slice, &format!("{at}[{index}]"))).collect()
            }
            None if single_slice => {
                let mut slice = TaskSlice::default();
                if let Some(properties) = fields.get("properties") {
                    slice.properties = Arc::new(self.properties(properties, &fields.at("properties")));
                }
                if let Some(expiration) = self.integer_field(fields, "expiration_secs", &EXPIRATION) {
                    slice.expiration_secs = expiration as u32;
                }
                vec![slice]
            }
            None => Vec::new(),
        }
    }

    fn slice(&mut self, value: &Value, at: &str) -> TaskSlice {
        let mut slice = TaskSlice::default();
        let Some(fields) = self.fields(value, at, SLICE_FIELDS, &[]) else { return slice };
        if let Some(properties) = fields.get("properties") {
            slice.properties = Arc::new(self.properties(properties, &fields.at("properties")));
        }
        if let Some(expiration) = self.integer_field(&fields, "expiration_secs", &EXPIRATION) {
            slice.expiration_secs = expiration as u32;
        }
        if let Some(wait) = self.bool_field(&fields, "wait_for_capacity") {
            slice.wait_for_capacity = wait;
        }
        slice
    }

    fn properties(&mut self, value: &Value, at: &str) -> TaskProperties {
        let mut properties = TaskProperties::default();
        let Some(fields) = self.fields(value, at, PROPERTIES_FIELDS, &[]) else { return properties };
        if let Some(command) = fields.get("command") {
            properties.command = self.strings(command, &fields.at("command"));
        }
        if let Some(dimensions) = fields.get("dimensions") {
            properties.dimensions = self.string_pairs(dimensions, &fields.at("dimensions"));
        }
        if let Some(env) = fields.get("env") {
            properties.env = self.string_pairs(env, &fields.at("env"));
        }
        if let Some(prefixes) = fields.get("env_prefixes") {
            properties.env_prefixes = self.string_list_pairs(prefixes, &fields.at("env_prefixes"));
        }
        if let Some(cwd) = self.string_field(&fields, "relative_cwd") {
            properties.relative_cwd = cwd;
        }
        if let Some(timeout) = self.integer_field(&fields, "execution_timeout_secs", &EXECUTION_TIMEOUT) {
            properties.execution_timeout_secs = timeout as u32;
        }
        if let Some(timeout) = self.integer_field(&fields, "io_timeout_secs", &IO_TIMEOUT) {
            properties.io_timeout_secs = timeout as u32;
        }
        if let Some(grace) = self.integer_field(&fields, "grace_period_secs", &GRACE_PERIOD) {
            properties.grace_period_secs = grace as u32;
        }
        if let Some(idempotent) = self.bool_field(&fields, "idempotent") {
            properties.idempotent = idempotent;
        }
        if let Some(caches) = fields.get("caches") {
            properties.caches = self.caches(caches, &fields.at("caches"));
        }
        if let Some(root) = fields.get("cas_input_root").filter(|root| !is_default(root)) {
            properties.cas_input_root = self.cas_reference(root, &fields.at("cas_input_root"));
        }
        self.properties_extras(&fields);
        properties
    }

    fn lineage(&mut self, fields: &Fields, lineage: &mut TaskLineage) {
        if let Some(uuid) = self.string_field(fields, "request_uuid") {
            if uuid.len() > MAX_REQUEST_UUID_BYTES {
                let message = format!("{} bytes is over the limit of {MAX_REQUEST_UUID_BYTES}", uuid.len());
                self.refuse(&fields.at("request_uuid"), message);
            }
            lineage.request_uuid = uuid;
        }
        if let Some(parent) = self.string_field(fields, "parent_task_id")
            && !parent.is_empty()
        {
            match parse_task_id(&parent) {
                Ok(id) => lineage.parent_task_id = Some(id),
                Err(_) => self.refuse(
                    &fields.at("parent_task_id"),
                    format!("{parent:?} is not a task id (16 hexadecimal digits)"),
                ),
            }
        }
    }

    /// The request's fields that Apiary has no use for: accepted when they ask
    /// for nothing. Returns `evaluate_only`.
    fn request_extras(&mut self, fields: &Fields) -> bool {
        if let Some(account) = self.string_field(fields, "service_account")
            && !matches!(account.as_str(), "" | "none")
        {
            let message = format!(
                "{account:?} asks to run the task as a service account, which Apiary does not \
                                   implement (accepted: \"\" or \"none\")"
            );
            self.refuse(&fields.at("service_account"), message);
        }
        for name in ["pubsub_topic", "pubsub_auth_token", "pubsub_userdata"] {
            self.unsupported(fields, name, "Pub/Sub notifications");
        }
        self.unsupported(fields, "realm", "realms");
        let evaluate_only = self.bool_field(fields, "evaluate_only") == Some(true);
        if evaluate_only && self.origin == Origin::RequestFile {
            let message = "true asks only to check the request: use `apiary trigger --dry-run` (accepted: false)";
            self.refuse(&fields.at("evaluate_only"), message);
        }
        if let Some(template) = fields.get("pool_task_template") {
            let at = fields.at("pool_task_template");
            if let Some(index) = self.enumeration(template, &at, POOL_TASK_TEMPLATES)
                && matches!(POOL_TASK_TEMPLATES[index], "CANARY_PREFER" | "CANARY_NEVER")
            {
                let message = format!(
                    "{} asks for a pool's task template, which Apiary does not implement (accepted: AUTO, SKIP)",
                    POOL_TASK_TEMPLATES[index]
                );
                self.refuse(&at, message);
            }
        }
        if let Some(resultdb) = fields.get("resultdb") {
            let at = fields.at("resultdb");
            if let Some(resultdb_fields) = self.fields(resultdb, &at, &["enable"], &[])
                && self.bool_field(&resultdb_fields, "enable") == Some(true)
            {
                let message = "true asks for ResultDB, which Apiary does not implement (accepted: false)";
                self.refuse(&resultdb_fields.at("enable"), message);
            }
        }
        self.secret_bytes(fields);
        evaluate_only
    }

    /// Swarming's `CASReference`: `{cas_instance, digest: {hash, size_bytes}}`.
    fn cas_reference(&mut self, value: &Value, at: &str) -> Option<Box<CasReference>> {
        let fields = self.fields(value, at, CAS_REFERENCE_FIELDS, &[])?;
        let cas_instance = self.string_field(&fields, "cas_instance").unwrap_or_default();
        let Some(digest) = fields.get("digest") else {
            self.refuse(&fields.at("digest"), "the root directory's digest is required");
            return None;
        };
        let digest_at = fields.at("digest");
        let digest_fields = self.fields(digest, &digest_at, DIGEST_FIELDS, &[])?;
        let hash = self.string_field(&digest_fields, "hash").unwrap_or_default();
        let size = self.integer_field(&digest_fields, "size_bytes", &BLOB_SIZE).unwrap_or(0);
        match Digest::from_parts(&hash, size as u64) {
            Ok(digest) => Some(Box::new(CasReference { cas_instance, digest })),
            Err(_) => {
                let message = format!("{hash:?} is not a SHA-256 in 64 lowercase hexadecimal digits");
                self.refuse(&digest_fields.at("hash"), message);
                None
            }
        }
    }

    fn properties_extras(&mut self, fields: &Fields) {
        self.unsupported(fields, "cipd_input", "CIPD packages");
        self.unsupported(fields, "outputs", "output files (write them to ${ISOLATED_OUTDIR} instead)");
        self.secret_bytes(fields);
        if let Some(containment) = fields.get("containment") {
            self.containment(containment, &fields.at("containment"));
        }
    }

    /// `containment` asks for nothing when its type is NOT_SPECIFIED or NONE and its
    /// older limits are unset.
    fn containment(&mut self, value: &Value, at: &str) {
        let Some(fields) = self.fields(value, at, CONTAINMENT_FIELDS, &[]) else { return };
        if let Some(containment_type) = fields.get("containment_type") {
            let type_at = fields.at("containment_type");
            if let Some(index) = self.enumeration(containment_type, &type_at, CONTAINMENT_TYPES)
                && index > 1
            {
                let message = format!(
                    "{} asks for process containment, which Apiary does not implement (accepted: NOT_SPECIFIED, NONE)",
                    CONTAINMENT_TYPES[index]
                );
                self.refuse(&type_at, message);
            }
        }
        for name in ["lower_priority", "limit_processes", "limit_total_committed_memory"] {
            self.unsupported(&fields, name, "process containment");
        }
    }

    fn secret_bytes(&mut self, fields: &Fields) {
        let Some(value) = fields.get("secret_bytes").filter(|value| !is_default(value)) else { return };
        let at = fields.at("secret_bytes");
        if self.origin == Origin::RequestFile {
            let message =
                "cannot be given in a request file (secrets never travel in JSON); use --secret-bytes-file FILE";
            self.refuse(&at, message);
            return;
        }
        let Some(bytes) = self.bytes(value, &at) else { return };
        if bytes.len() > MAX_SECRET_BYTES {
            self.refuse(&at, format!("{} bytes is over the limit of {MAX_SECRET_BYTES}", bytes.len()));
            return;
        }
        match &self.secret {
            None => self.secret = Some((display_at(&at), bytes)),
            Some((first_at, first)) if *first != bytes => {
                let message = format!("differs from {first_at}: a task has one secret, the same for every slice");
                self.refuse(&at, message);
            }
            Some(_) => {}
        }
    }

    /// A field for something Apiary does not implement: fine at its default value,
    /// refused otherwise.
    fn unsupported(&mut self, fields: &Fields, name: &str, what: &str) {
        if let Some(value) = fields.get(name)
            && !is_default(value)
        {
            let message = format!(
                "asks for {what}, which Apiary does not implement (only an empty or default value is accepted)"
            );
            self.refuse(&fields.at(name), message);
        }
    }

    /// The fields of the object `value`, checked against `known` (proto names);
    /// `None` when `value` is not an object. `null` is an object without fields.
    fn fields<'v>(
        &mut self,
        value: &'v Value,
        at: &str,
        known: &[&'static str],
        output_only: &[&str],
    ) -> Option<Fields<'v>> {
        let object = match value {
            Value::Object(object) => object,
            Value::Null => return Some(Fields { at: at.to_string(), found: Vec::new() }),
            other => {
                self.refuse(at, format!("expected an object, got {}", describe(other)));
                return None;
            }
        };
        let mut fields = Fields { at: at.to_string(), found: Vec::new() };
        for (key, field_value) in object {
            let Some(&name) = known.iter().find(|name| **name == key || lower_camel(name) == *key) else {
                self.refuse_unknown(&join(at, key), key, known, output_only);
                continue;
            };
            if fields.found.iter().any(|(found, _)| *found == name) {
                self.refuse(&join(at, name), format!("is given twice (`{name}` and `{}`)", lower_camel(name)));
            } else if !field_value.is_null() {
                // A field set to null is a field not given.
                fields.found.push((name, field_value));
            }
        }
        Some(fields)
    }

    fn refuse_unknown(&mut self, at: &str, key: &str, known: &[&str], output_only: &[&str]) {
        let message = if output_only.contains(&key) || output_only.iter().any(|name| lower_camel(name) == key) {
            "is output-only: the daemon sets it in a task's description; remove it from the request".to_string()
        } else {
            format!(
                "is not a field here (Apiary refuses what it does not know rather than ignoring it); the fields here are {}",
                known.join(", ")
            )
        };
        self.refuse(at, message);
    }

    fn string_field(&mut self, fields: &Fields, name: &str) -> Option<String> {
        let value = fields.get(name)?;
        self.string(value, &fields.at(name))
    }

    fn integer_field(&mut self, fields: &Fields, name: &str, range: &Range) -> Option<i64> {
        let value = fields.get(name)?;
        let at = fields.at(name);
        let number = self.integer(value, &at)?;
        if number == 0 && range.zero_is_default {
            return None;
        }
        if !(range.min..=range.max).contains(&number) {
            let zero = if range.zero_is_default { "; 0 means the default" } else { "" };
            self.refuse(&at, format!("{number} is outside {}..={}{zero}", range.min, range.max));
            return None;
        }
        Some(number)
    }

    fn bool_field(&mut self, fields: &Fields, name: &str) -> Option<bool> {
        match fields.get(name)? {
            Value::Bool(value) => Some(*value),
            other => {
                self.refuse(&fields.at(name), format!("expected true or false, got {}", describe(other)));
                None
            }
        }
    }

    fn string(&mut self, value: &Value, at: &str) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            other => {
                self.refuse(at, format!("expected a string, got {}", describe(other)));
                None
            }
        }
    }

    /// Bytes as proto3 writes them: standard base64, with or without padding
    /// (the URL-safe alphabet is read too).
    fn bytes(&mut self, value: &Value, at: &str) -> Option<Vec<u8>> {
        let text = self.string(value, at)?;
        let decoded = decode_base64(&text);
        if decoded.is_none() {
            self.refuse(at, "expected bytes in base64, got a string that is not base64");
        }
        decoded
    }

    /// A 64-bit integer as proto3 JSON writes one (`input::int64_of`).
    fn integer(&mut self, value: &Value, at: &str) -> Option<i64> {
        match crate::input::int64_of(value) {
            Ok(number) => Some(number),
            Err(reason) => {
                self.refuse(at, reason);
                None
            }
        }
    }

    /// An enum value's index in `names`, by name or by number.
    fn enumeration(&mut self, value: &Value, at: &str, names: &[&str]) -> Option<usize> {
        let index = match value {
            Value::String(name) => names.iter().position(|known| known == name),
            Value::Number(number) => number.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n < names.len()),
            _ => None,
        };
        if index.is_none() {
            self.refuse(at, format!("{} is not one of {}", describe(value), names.join(", ")));
        }
        index
    }

    fn list<'v>(&mut self, value: &'v Value, at: &str) -> Option<&'v Vec<Value>> {
        match value {
            Value::Array(items) => Some(items),
            other => {
                self.refuse(at, format!("expected a list, got {}", describe(other)));
                None
            }
        }
    }

    fn strings(&mut self, value: &Value, at: &str) -> Vec<String> {
        let Some(items) = self.list(value, at) else { return Vec::new() };
        items.iter().enumerate().filter_map(|(index, item)| self.string(item, &format!("{at}[{index}]"))).collect()
    }

    /// A list of objects with exactly the fields `names`, each made into a `T` by `build`.
    fn objects<T>(
        &mut self,
        value: &Value,
        at: &str,
        names: &[&'static str],
        mut build: impl FnMut(&mut Self, &Fields) -> T,
    ) -> Vec<T> {
        let Some(items) = self.list(value, at) else { return Vec::new() };
        let mut built = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let Some(fields) = self.fields(item, &format!("{at}[{index}]"), names, &[]) else { continue };
            built.push(build(self, &fields));
        }
        built
    }

    fn string_pairs(&mut self, value: &Value, at: &str) -> Vec<StringPair> {
        self.objects(value, at, &["key", "value"], |reader, fields| StringPair {
            key: reader.string_field(fields, "key").unwrap_or_default(),
            value: reader.string_field(fields, "value").unwrap_or_default(),
        })
    }

    fn string_list_pairs(&mut self, value: &Value, at: &str) -> Vec<StringListPair> {
        self.objects(value, at, &["key", "value"], |reader, fields| StringListPair {
            key: reader.string_field(fields, "key").unwrap_or_default(),
            value: fields.get("value").map(|values| reader.strings(values, &fields.at("value"))).unwrap_or_default(),
        })
    }

    fn caches(&mut self, value: &Value, at: &str) -> Vec<NamedCache> {
        self.objects(value, at, &["name", "path"], |reader, fields| NamedCache {
            name: reader.string_field(fields, "name").unwrap_or_default(),
            path: reader.string_field(fields, "path").unwrap_or_default(),
        })
    }
}

/// Whether a value is proto3's default for its field: it then requests nothing.
fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(flag) => !flag,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::String(text) => text.is_empty() || text == "0",
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.values().all(is_default),
    }
}

/// Base64 as the proto3 JSON mapping reads it: either alphabet, padding optional.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let unpadded = text.trim_end_matches('=');
    STANDARD_NO_PAD.decode(unpadded).or_else(|_| URL_SAFE_NO_PAD.decode(unpadded)).ok()
}

/// `task_slices` -> `taskSlices`: the JSON name proto3 gives a field.
pub(crate) fn lower_camel(name: &str) -> String {
    let mut camel = String::with_capacity(name.len());
    let mut upper_next = false;
    for character in name.chars() {
        if character == '_' {
            upper_next = true;
        } else if upper_next {
            camel.push(character.to_ascii_uppercase());
            upper_next = false;
        } else {
            camel.push(character);
        }
    }
    camel
}

/// A JSON value as a message shows it: short, and with its kind.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) if text.chars().count() <= 40 => format!("the string {text:?}"),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() { name.to_string() } else { format!("{at}.{name}") }
}

/// The top of a request has no path of its own.
fn display_at(at: &str) -> String {
    if at.is_empty() { "the request".to_string() } else { at.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_text(text: &str) -> Result<SwarmingRequest, Vec<Refusal>> {
        decode(&serde_json::from_str(text).unwrap(), "", Origin::RequestFile)
    }

    fn decode_call(text: &str) -> Result<SwarmingRequest, Vec<Refusal>> {
        decode(&serde_json::from_str(text).unwrap(), "", Origin::ApiCall)
    }

    fn refusals(text: &str) -> Vec<String> {
        decode_text(text).expect_err("should be refused").iter().map(Refusal::to_string).collect()
    }

    #[test]
    fn both_spellings_and_integers_as_strings_are_read() {
        let snake = decode_text(
            r#"{"name": "n", "priority": "30", "bot_ping_tolerance_secs": 600, "task_slices": [
                {"expiration_secs": "21600", "wait_for_capacity": true, "properties": {
                    "command": ["a"], "execution_timeout_secs": "100", "io_timeout_secs": 5,
                    "grace_period_secs": "20", "relative_cwd": "w", "env_prefixes": [{"key": "PATH", "value": ["b"]}]}}]}"#,
        )
        .unwrap();
        let camel = decode_text(
            r#"{"name": "n", "priority": 30, "botPingToleranceSecs": "600", "taskSlices": [
                {"expirationSecs": 21600, "waitForCapacity": true, "properties": {
                    "command": ["a"], "executionTimeoutSecs": 100, "ioTimeoutSecs": "5",
                    "gracePeriodSecs": 20, "relativeCwd": "w", "envPrefixes": [{"key": "PATH", "value": ["b"]}]}}]}"#,
        )
        .unwrap();
        assert_eq!(snake, camel);
        let request = &snake.request;
        assert_eq!((request.priority, request.bot_ping_tolerance_secs), (30, 600));
        let slice = &request.task_slices[0];
        assert_eq!((slice.expiration_secs, slice.wait_for_capacity), (21600, true));
        let properties = &slice.properties;
        assert_eq!(
            (properties.execution_timeout_secs, properties.io_timeout_secs, properties.grace_period_secs),
            (100, 5, 20)
        );
        assert_eq!(properties.relative_cwd, "w");
    }

    #[test]
    fn an_input_root_is_read_as_swarming_writes_it() {
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let decoded = decode_text(&format!(
            r#"{{"task_slices": [{{"properties": {{"command": ["a"], "casInputRoot": {{
                "casInstance": "projects/p/instances/default_instance",
                "digest": {{"hash": "{hash}", "sizeBytes": "0"}}}}}}}}]}}"#
        ))
        .unwrap();
        let root = decoded.request.task_slices[0].properties.cas_input_root.clone().unwrap();
        assert_eq!(
            (root.cas_instance.as_str(), root.digest),
            ("projects/p/instances/default_instance", Digest::of_empty())
        );
        let refused = refusals(
            r#"{"task_slices": [{"properties": {"command": ["a"],
                "cas_input_root": {"digest": {"hash": "ABC", "size_bytes": "-1"}}}}]}"#,
        );
        let places: Vec<&str> = refused.iter().map(|line| line.split_once(':').unwrap().0).collect();
        let digest = "task_slices[0].properties.cas_input_root.digest";
        assert_eq!(places, [format!("{digest}.size_bytes"), format!("{digest}.hash")]);
    }

    #[test]
    fn default_values_request_nothing_and_take_apiarys_defaults() {
        let decoded = decode_text(
            r#"{"priority": 0, "realm": "", "service_account": "none", "pubsub_topic": "", "evaluate_only": false,
                "pool_task_template": "AUTO", "resultdb": {"enable": false}, "request_uuid": "",
                "parent_task_id": "", "task_slices": [{"expiration_secs": 0, "properties": {
                    "command": ["a"], "outputs": [], "containment": {}, "cipd_input": {"packages": []},
                    "cas_input_root": null, "execution_timeout_secs": "0", "grace_period_secs": 0, "secret_bytes": ""}},
                {"properties": {"command": ["b"], "containment": {"containment_type": "NONE", "lower_priority": false}}}]}"#,
        )
        .unwrap();
        let defaults = NewTaskRequest::default();
        assert_eq!(decoded.request.priority, defaults.priority);
        assert_eq!(decoded.lineage, TaskLineage::default());
        let slice = &decoded.request.task_slices[0];
        assert_eq!(slice.expiration_secs, TaskSlice::default().expiration_secs);
        assert_eq!(slice.properties.execution_timeout_secs, TaskProperties::default().execution_timeout_secs);
        assert_eq!(slice.properties.grace_period_secs, TaskProperties::default().grace_period_secs);
    }

    #[test]
    fn every_field_asking_for_what_apiary_lacks_is_refused_in_one_answer() {
        let refused = refusals(
            r#"{"service_account": "bot@example.com", "realm": "chromium:ci", "resultdb": {"enable": true},
                "pool_task_template": "CANARY_PREFER", "task_slices": [{"properties": {"command": ["a"],
                "cipd_input": {"packages": [{"package_name": "p", "version": "v", "path": "."}]},
                "outputs": ["out.txt"], "containment": {"containment_type": "AUTO"}}}]}"#,
        );
        let mut places: Vec<&str> = refused.iter().map(|line| line.split_once(':').unwrap().0).collect();
        places.sort_unstable();
        assert_eq!(
            places,
            [
                "pool_task_template",
                "realm",
                "resultdb.enable",
                "service_account",
                "task_slices[0].properties.cipd_input",
                "task_slices[0].properties.containment.containment_type",
                "task_slices[0].properties.outputs",
            ]
        );
        assert_eq!(refused.len(), 7, "{refused:#?}");
        assert!(refused.iter().all(|line| line.contains("Apiary does not implement")), "{refused:#?}");
    }

    #[test]
    fn the_single_slice_form_is_one_slice() {
        let decoded = decode_text(
            r#"{"name": "old", "expiration_secs": "600", "properties": {"command": ["a"], "idempotent": true}}"#,
        )
        .unwrap();
        let [slice] = decoded.request.task_slices.as_slice() else { panic!("not one slice") };
        assert_eq!(slice.expiration_secs, 600);
        assert!(slice.properties.idempotent);
        assert_eq!(slice.properties.command, ["a"]);
        let both = refusals(r#"{"properties": {"command": ["a"]}, "task_slices": []}"#);
        assert_eq!(both.len(), 1);
        assert!(both[0].starts_with("properties: give either task_slices, or properties"), "{both:?}");
    }

    #[test]
    fn output_only_fields_are_refused_as_output_only() {
        let refused = refusals(
            r#"{"task_id": "5", "createdTs": "2024-01-01T00:00:00Z", "authenticated": "user:a", "task_slices": []}"#,
        );
        assert_eq!(refused.len(), 3);
        // Fields are reported in the order of their names.
        for (line, field) in refused.iter().zip(["authenticated", "createdTs", "task_id"]) {
            assert_eq!(
                line,
                &format!(
                    "{field}: is output-only: the daemon sets it in a task's description; remove it from the request"
                )
            );
        }
    }

    #[test]
    fn types_enums_and_ranges_are_refused_by_field_and_allowed_values() {
        let refused = refusals(
            r#"{"priority": 300, "bot_ping_tolerance_secs": 1, "tags": "a:b", "task_slices": [{
                "wait_for_capacity": "yes", "expiration_secs": "soon", "properties": {"command": ["a"],
                "containment": {"containment_type": "SANDBOX"}, "io_timeout_secs": -1}}], "bogus": 1}"#,
        );
        let expected = [
            "priority: 300 is outside 1..=255; 0 means the default",
            "tags: expected a list, got the string \"a:b\"",
            "bot_ping_tolerance_secs: 1 is outside 3..=1200; 0 means the default",
            "task_slices[0].properties.io_timeout_secs: -1 is outside 0..=601140",
            "task_slices[0].properties.containment.containment_type: the string \"SANDBOX\" is not one of \
             NOT_SPECIFIED, NONE, AUTO, JOB_OBJECT",
            "task_slices[0].expiration_secs: expected an integer (a number, or a string of digits), got the \
             string \"soon\"",
            "task_slices[0].wait_for_capacity: expected true or false, got the string \"yes\"",
        ];
        for line in expected {
            assert!(refused.iter().any(|refusal| refusal == line), "{line:?} not in {refused:#?}");
        }
        assert!(refused.iter().any(|line| line.starts_with("bogus: is not a field here")), "{refused:#?}");
        assert_eq!(refused.len(), expected.len() + 1, "{refused:#?}");
        assert!(refused.iter().all(|line| !line.contains("u8") && !line.contains("u32")), "{refused:#?}");
    }

    #[test]
    fn a_field_given_in_both_spellings_is_refused() {
        let refused = refusals(r#"{"task_slices": [], "taskSlices": []}"#);
        assert_eq!(refused, ["task_slices: is given twice (`task_slices` and `taskSlices`)"]);
    }

    #[test]
    fn request_uuid_and_parent_task_id_make_the_lineage() {
        let decoded =
            decode_text(r#"{"requestUuid": "8d2f-11", "parentTaskId": "018bcfe568800011", "task_slices": []}"#)
                .unwrap();
        assert_eq!(
            decoded.lineage,
            TaskLineage { request_uuid: "8d2f-11".to_string(), parent_task_id: Some(0x018b_cfe5_6880_0011) }
        );
        let refused = refusals(r#"{"parent_task_id": "nope"}"#);
        assert_eq!(refused, ["parent_task_id: \"nope\" is not a task id (16 hexadecimal digits)"]);
    }

    #[test]
    fn lower_camel_case_is_protos_json_name() {
        assert_eq!(lower_camel("task_slices"), "taskSlices");
        assert_eq!(lower_camel("bot_ping_tolerance_secs"), "botPingToleranceSecs");
        assert_eq!(lower_camel("name"), "name");
    }

    #[test]
    fn an_api_call_may_carry_secret_bytes_and_evaluate_only() {
        let decoded = decode_call(
            r#"{"evaluateOnly": true, "taskSlices": [{"properties": {"command": ["a"], "secretBytes": "c2VjcmV0"}},
                {"properties": {"command": ["b"], "secret_bytes": "c2VjcmV0"}}]}"#,
        )
        .unwrap();
        assert!(decoded.evaluate_only);
        assert_eq!(decoded.request.secret_bytes, Some(SecretBytes(b"secret".to_vec())));
        let file = refusals(r#"{"evaluate_only": true, "task_slices": []}"#);
        assert_eq!(file.len(), 1);
        assert!(file[0].starts_with("evaluate_only: true asks only to check the request"), "{file:?}");
    }

    #[test]
    fn secret_bytes_of_an_api_call_are_checked() {
        let refused: Vec<String> = decode_call(
            r#"{"task_slices": [{"properties": {"secret_bytes": "c2VjcmV0"}}, {"properties": {"secret_bytes": "b3RoZXI="}},
                {"properties": {"secret_bytes": "%%%"}}]}"#,
        )
        .unwrap_err()
        .iter()
        .map(Refusal::to_string)
        .collect();
        assert_eq!(
            refused,
            [
                "task_slices[1].properties.secret_bytes: differs from task_slices[0].properties.secret_bytes: a task \
                 has one secret, the same for every slice",
                "task_slices[2].properties.secret_bytes: expected bytes in base64, got a string that is not base64",
            ]
        );
        let big = format!(r#"{{"properties": {{"secret_bytes": "{}"}}}}"#, "A".repeat(MAX_SECRET_BYTES / 3 * 4 + 8));
        let refused = decode_call(&big).unwrap_err();
        assert!(refused[0].message.ends_with(&format!("is over the limit of {MAX_SECRET_BYTES}")), "{refused:?}");
    }
}

//! Validation of new task requests. Every refusal names the field and the
//! limit it broke; nothing is silently changed or ignored.

use std::fmt;

use apiary_protocol::limits::*;
use apiary_protocol::{NamedCache, NewTaskRequest, PackedDimensions, StringPair, TaskProperties, TaskSlice, wire_size};

use super::queues::ID_KEY;
use super::tags;

/// The dimension every task names once and every bot has.
const POOL_KEY: &str = "pool";

/// A refused request: `field` is a path into the request, like
/// `task_slices[0].properties.dimensions[1].key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

/// Where a field sits in the request. It is spelled out only when a refusal
/// names it: a valid request costs no formatting.
#[derive(Clone, Copy)]
enum Field<'a> {
    Top(&'static str),
    Member(&'a Field<'a>, &'static str),
    Element(&'a Field<'a>, usize),
}

impl Field<'_> {
    fn member(&self, name: &'static str) -> Field<'_> {
        Field::Member(self, name)
    }

    fn at(&self, index: usize) -> Field<'_> {
        Field::Element(self, index)
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Top(name) => f.write_str(name),
            Field::Member(parent, name) => write!(f, "{parent}.{name}"),
            Field::Element(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

fn refuse(field: &Field, message: impl Into<String>) -> Result<(), ValidationError> {
    Err(ValidationError { field: field.to_string(), message: message.into() })
}

/// The key of the tag the daemon gives a task created by a principal:
/// `authenticated:NAME`. A client may not set it.
pub const AUTHENTICATED_TAG_KEY: &str = "authenticated";

/// The key of the tag that names a child task's parent (set from its lineage).
pub const PARENT_TASK_TAG_KEY: &str = "parent_task_id";

/// A request as the daemon takes it from `principal`: refused when it sets the
/// daemon's own tags, else validated and given the tags Swarming adds that a
/// task stores (`core::tags`: its dimension tags are derived, not stored).
pub fn admit(request: NewTaskRequest, principal: Option<&str>) -> Result<NewTaskRequest, ValidationError> {
    admit_child(request, principal, None)
}

/// `admit` for a task that is the child of `parent_task_id` (a request id).
pub fn admit_child(
    mut request: NewTaskRequest,
    principal: Option<&str>,
    parent_task_id: Option<u64>,
) -> Result<NewTaskRequest, ValidationError> {
    let tags = Field::Top("tags");
    for (index, tag) in request.tags.iter().enumerate() {
        let key = tag.split_once(':').map_or("", |(key, _)| key);
        if key == AUTHENTICATED_TAG_KEY || key == PARENT_TASK_TAG_KEY {
            let message = format!("{tag:?}: the daemon sets {key}: itself");
            refuse(&tags.at(index), message)?;
        }
    }
    validate_request(&request)?;
    add_automatic_tags(&mut request, principal, parent_task_id);
    // The tags added, the derived ones included, may still make the whole too large.
    check_size(wire_size::request_bytes(&request) + derived_tag_bytes(&request))?;
    Ok(request)
}

/// The tags Swarming gives every task that the task stores, so that tag
/// queries find it as they would there: `priority:`, `user:` (when there is
/// one), `authenticated:` (when the daemon knows who asked), `parent_task_id:`.
/// A tag the request already has is not repeated. The tag of each dimension
/// of each slice, `key:value`, is derived when asked for (`core::tags`).
fn add_automatic_tags(request: &mut NewTaskRequest, principal: Option<&str>, parent_task_id: Option<u64>) {
    // One allocation per tag added and at most one for the list: this runs for every task.
    request.tags.reserve(4);
    tags::add_tag(&mut request.tags, "priority", &request.priority.to_string());
    if !request.user.is_empty() {
        tags::add_tag(&mut request.tags, "user", &request.user);
    }
    if let Some(principal) = principal {
        tags::add_tag(&mut request.tags, AUTHENTICATED_TAG_KEY, principal);
    }
    if let Some(parent) = parent_task_id {
        tags::add_tag(&mut request.tags, PARENT_TASK_TAG_KEY, &apiary_protocol::ids::format_task_id(parent));
    }
}

/// At most this many combinations may come out of `|` alternatives in one slice.
pub const MAX_DIMENSION_COMBINATIONS: usize = 8;

pub fn validate_request(request: &NewTaskRequest) -> Result<(), ValidationError> {
    check_len(&Field::Top("name"), &request.name, MAX_NAME_BYTES)?;
    check_len(&Field::Top("user"), &request.user, MAX_USER_BYTES)?;
    check_range(&Field::Top("priority"), request.priority.into(), &PRIORITY_RANGE)?;
    let tags = Field::Top("tags");
    check_count(&tags, request.tags.len(), MAX_TAGS)?;
    for (index, tag) in request.tags.iter().enumerate() {
        validate_tag(&tags.at(index), tag)?;
    }
    if let Some(secret) = &request.secret_bytes
        && secret.0.len() > MAX_SECRET_BYTES
    {
        let message = format!("{} bytes is over the limit of {MAX_SECRET_BYTES}", secret.0.len());
        return refuse(&Field::Top("secret_bytes"), message);
    }
    // A tolerance shorter than a few of the bot's reports would end healthy tasks BOT_DIED.
    check_range(&Field::Top("bot_ping_tolerance_secs"), request.bot_ping_tolerance_secs, &BOT_PING_TOLERANCE_RANGE)?;
    let slices = Field::Top("task_slices");
    if request.task_slices.is_empty() {
        return refuse(&slices, "a request needs at least one slice");
    }
    check_count(&slices, request.task_slices.len(), MAX_TASK_SLICES)?;
    for (index, slice) in request.task_slices.iter().enumerate() {
        validate_slice(&slices.at(index), slice)?;
        if let Some(earlier) = request.task_slices[..index].iter().position(|other| other == slice) {
            return refuse(&slices.at(index), format!("is identical to task_slices[{earlier}]"));
        }
    }
    check_encoded_size(request)
}

/// Each field may be within its limit and the whole still too large for the
/// task's result, which carries the request, to fit in a reply.
fn check_encoded_size(request: &NewTaskRequest) -> Result<(), ValidationError> {
    check_size(wire_size::request_bytes(request))
}

/// What the tags a task derives (`tags::derived`) add to its request as its result shows it.
fn derived_tag_bytes(request: &NewTaskRequest) -> usize {
    tags::derived(&request.tags, &request.task_slices)
        .map(|pair| wire_size::added_tag_bytes(pair.key.len() + 1 + pair.value.len()))
        .sum()
}

fn check_size(encoded_bytes: usize) -> Result<(), ValidationError> {
    if encoded_bytes > MAX_TASK_REQUEST_BYTES {
        let message = format!("{encoded_bytes} bytes encoded is over the limit of {MAX_TASK_REQUEST_BYTES}");
        return refuse(&Field::Top("request"), message);
    }
    Ok(())
}

/// `key:value`, the key as long as a dimension key may be and the value as a
/// dimension value (Swarming's limits).
fn validate_tag(field: &Field, tag: &str) -> Result<(), ValidationError> {
    let Some((key, value)) = tag.split_once(':').filter(|(key, _)| !key.is_empty()) else {
        return refuse(field, format!("{tag:?} is not of the form key:value"));
    };
    if key.len() > MAX_TAG_KEY_BYTES {
        return refuse(
            field,
            format!("the key of {tag:?} has {} bytes, over the limit of {MAX_TAG_KEY_BYTES}", key.len()),
        );
    }
    if value.len() > MAX_TAG_VALUE_BYTES {
        let message =
            format!("the value of {tag:?} has {} bytes, over the limit of {MAX_TAG_VALUE_BYTES}", value.len());
        return refuse(field, message);
    }
    Ok(())
}

fn validate_slice(field: &Field, slice: &TaskSlice) -> Result<(), ValidationError> {
    check_range(&field.member("expiration_secs"), slice.expiration_secs, &EXPIRATION_RANGE)?;
    validate_properties(&field.member("properties"), &slice.properties)
}

fn validate_properties(field: &Field, properties: &TaskProperties) -> Result<(), ValidationError> {
    let command = field.member("command");
    if properties.command.is_empty() {
        return refuse(&command, "a command is required");
    }
    check_count(&command, properties.command.len(), MAX_COMMAND_ARGS)?;
    for (index, arg) in properties.command.iter().enumerate() {
        check_len(&command.at(index), arg, MAX_ARG_BYTES)?;
        validate_placeholders(&command.at(index), arg)?;
    }
    validate_task_dimensions(&field.member("dimensions"), &properties.dimensions)?;
    let env = field.member("env");
    check_count(&env, properties.env.len(), MAX_ENV_VARS)?;
    for (index, pair) in properties.env.iter().enumerate() {
        validate_env_key(&env.at(index).member("key"), &pair.key)?;
        check_len(&env.at(index).member("value"), &pair.value, MAX_ENV_VALUE_BYTES)?;
        validate_placeholders(&env.at(index).member("value"), &pair.value)?;
    }
    let prefixes = field.member("env_prefixes");
    check_count(&prefixes, properties.env_prefixes.len(), MAX_ENV_VARS)?;
    for (index, prefix) in properties.env_prefixes.iter().enumerate() {
        validate_env_key(&prefixes.at(index).member("key"), &prefix.key)?;
        for (value_index, path) in prefix.value.iter().enumerate() {
            validate_relative_path(&prefixes.at(index).member("value").at(value_index), path, MAX_ENV_VALUE_BYTES)?;
        }
    }
    if !properties.relative_cwd.is_empty() {
        validate_relative_path(&field.member("relative_cwd"), &properties.relative_cwd, MAX_RELATIVE_CWD_BYTES)?;
    }
    let execution_timeout = field.member("execution_timeout_secs");
    check_range(&execution_timeout, properties.execution_timeout_secs, &EXECUTION_TIMEOUT_RANGE)?;
    if properties.io_timeout_secs != 0 {
        let io_timeout = field.member("io_timeout_secs");
        check_range(&io_timeout, properties.io_timeout_secs, &IO_TIMEOUT_RANGE)?;
    }
    check_range(&field.member("grace_period_secs"), properties.grace_period_secs, &GRACE_PERIOD_RANGE)?;
    validate_caches(&field.member("caches"), &properties.caches)?;
    if let Some(root) = &properties.cas_input_root {
        validate_cas_instance(&field.member("cas_input_root").member("cas_instance"), &root.cas_instance)?;
    }
    Ok(())
}

/// The name of a store: at most `MAX_CAS_INSTANCE_BYTES`, printable ASCII
/// without spaces (REAPI instance names are paths like `projects/p/instances/i`).
fn validate_cas_instance(field: &Field, name: &str) -> Result<(), ValidationError> {
    check_len(field, name, MAX_CAS_INSTANCE_BYTES)?;
    if !name.bytes().all(|byte| byte.is_ascii_graphic()) {
        return refuse(field, format!("{name:?}: a store's name is printable ASCII without spaces"));
    }
    Ok(())
}

/// `--cas-instance`, by the rule for the names requests give.
pub fn validate_store_name(name: &str) -> Result<(), String> {
    validate_cas_instance(&Field::Top("--cas-instance"), name).map_err(|error| error.to_string())
}

/// Every input root must be in this daemon's store, named `instance` (or not named).
pub fn check_input_stores(request: &NewTaskRequest, instance: &str) -> Result<(), ValidationError> {
    for (index, slice) in request.task_slices.iter().enumerate() {
        let Some(root) = &slice.properties.cas_input_root else { continue };
        if !root.cas_instance.is_empty() && root.cas_instance != instance {
            let slices = Field::Top("task_slices");
            let slice = slices.at(index);
            let properties = slice.member("properties");
            let field = properties.member("cas_input_root");
            let message = format!(
                "cas_instance {:?} is not this daemon's store, {instance:?} (--cas-instance); give that name or none",
                root.cas_instance
            );
            refuse(&field.member("cas_instance"), message)?;
        }
    }
    Ok(())
}

/// Swarming's rules for named caches: names of `[a-z0-9_]`, each name and
/// each path at most once, paths inside the work directory. Apiary also refuses
/// a path inside another cache's path (`a` and `a/b`), which Swarming finds out
/// only on the bot, when the task has already been given to it.
fn validate_caches(field: &Field, caches: &[NamedCache]) -> Result<(), ValidationError> {
    check_count(field, caches.len(), MAX_NAMED_CACHES)?;
    for (index, cache) in caches.iter().enumerate() {
        let entry = field.at(index);
        let name = entry.member("name");
        check_len(&name, &cache.name, MAX_CACHE_NAME_BYTES)?;
        let valid_name = !cache.name.is_empty()
            && cache.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            return refuse(&name, format!("{:?} does not match ^[a-z0-9_]+$", cache.name));
        }
        let path = entry.member("path");
        validate_relative_path(&path, &cache.path, MAX_CACHE_PATH_BYTES)?;
        let parts = path_parts(&cache.path);
        if parts.is_empty() {
            return refuse(&path, format!("{:?} must name a directory inside the work directory", cache.path));
        }
        if let Some(earlier) =
            caches[..index].iter().position(|other| other.name == cache.name || other.path == cache.path)
        {
            return refuse(&entry, format!("repeats the name or path of {}", field.at(earlier)));
        }
        if let Some(earlier) = caches[..index].iter().position(|other| nested(&path_parts(&other.path), &parts)) {
            let other = &caches[earlier].path;
            return refuse(
                &path,
                format!(
                    "{:?} and {other:?} ({}) nest: no cache path may contain another",
                    cache.path,
                    field.at(earlier)
                ),
            );
        }
    }
    Ok(())
}

/// A relative path's directory names, without empty and `.` parts.
fn path_parts(path: &str) -> Vec<&str> {
    path.split('/').filter(|part| !part.is_empty() && *part != ".").collect()
}

/// Whether one path is the other or contains it.
fn nested(first: &[&str], second: &[&str]) -> bool {
    first.starts_with(second) || second.starts_with(first)
}

/// Swarming's rules: keys `^[a-zA-Z\-_.][0-9a-zA-Z\-_.]*$` up to 64 bytes, values up
/// to 256 bytes without surrounding spaces, at most 32 keys and 16 values of one key;
/// a key given twice asks for both values (AND), so the same pair twice is a mistake;
/// exactly one `pool`, without alternatives, and at most one `id`; at most 8
/// combinations from `|` alternatives.
fn validate_task_dimensions(field: &Field, dimensions: &[StringPair]) -> Result<(), ValidationError> {
    let mut combinations = 1usize;
    let mut keys = 0;
    for (index, pair) in dimensions.iter().enumerate() {
        let entry = field.at(index);
        let (key, value) = (entry.member("key"), entry.member("value"));
        validate_dimension_key(&key, &pair.key)?;
        let earlier_of_key = dimensions[..index].iter().filter(|earlier| earlier.key == pair.key).count();
        if earlier_of_key == 0 {
            keys += 1;
            if keys > MAX_TASK_DIMENSIONS {
                return refuse(field, format!("more than {MAX_TASK_DIMENSIONS} distinct keys, the limit"));
            }
        } else if pair.key == "pool" || pair.key == ID_KEY {
            return refuse(&key, format!("{:?} may be given only once", pair.key));
        } else if earlier_of_key + 1 > MAX_TASK_DIMENSION_VALUES {
            return refuse(&key, format!("{:?} has more than {MAX_TASK_DIMENSION_VALUES} values", pair.key));
        }
        if dimensions[..index].contains(pair) {
            return refuse(&entry, format!("repeats {}:{}", pair.key, pair.value));
        }
        let mut alternatives = 0;
        for alternative in pair.value.split('|') {
            validate_dimension_value(&value, alternative)?;
            alternatives += 1;
        }
        if pair.key == "pool" && alternatives > 1 {
            return refuse(&value, "pool cannot have alternatives");
        }
        combinations = combinations.saturating_mul(alternatives);
    }
    if !dimensions.iter().any(|pair| pair.key == "pool") {
        return refuse(field, "a task must name exactly one pool (dimension pool=NAME)");
    }
    if combinations > MAX_DIMENSION_COMBINATIONS {
        return refuse(
            field,
            format!("alternatives make {combinations} combinations, over the limit of {MAX_DIMENSION_COMBINATIONS}"),
        );
    }
    Ok(())
}

/// A bot's dimensions follow the same key and value rules as a task's.
pub fn validate_bot_dimensions(dimensions: &[StringPair]) -> Result<(), ValidationError> {
    let field = Field::Top("dimensions");
    check_count(&field, dimensions.len(), MAX_BOT_DIMENSIONS)?;
    for (index, pair) in dimensions.iter().enumerate() {
        validate_dimension_key(&field.at(index).member("key"), &pair.key)?;
        validate_dimension_value(&field.at(index).member("value"), &pair.value)?;
    }
    Ok(())
}

/// The dimensions a bot reports in a poll, unpacked and checked.
pub fn validate_reported_dimensions(
    bot_id: &str,
    dimensions: &PackedDimensions,
) -> Result<Vec<StringPair>, ValidationError> {
    let pairs = dimensions
        .pairs()
        .map_err(|malformed| ValidationError { field: "dimensions".to_string(), message: malformed.to_string() })?;
    validate_bot_dimensions(&pairs)?;
    validate_id_dimension(bot_id, &pairs)?;
    if !pairs.iter().any(|pair| pair.key == POOL_KEY) {
        let message = "a bot must have a pool dimension (apiary-bot --dimension pool=NAME, or its bot group's)";
        refuse(&Field::Top("dimensions"), message)?;
    }
    Ok(pairs)
}

/// A bot's `id` dimension, if it reports one, is its bot id: tasks name bots by it.
fn validate_id_dimension(bot_id: &str, dimensions: &[StringPair]) -> Result<(), ValidationError> {
    for (index, pair) in dimensions.iter().enumerate() {
        if pair.key == ID_KEY && pair.value != bot_id {
            let field = Field::Top("dimensions");
            return refuse(&field.at(index).member("value"), format!("the id dimension must be the bot_id {bot_id:?}"));
        }
    }
    Ok(())
}

/// Swarming's bot id syntax (`apiary_protocol::ids::bot_id_error`).
pub fn validate_bot_id(bot_id: &str) -> Result<(), ValidationError> {
    match apiary_protocol::ids::bot_id_error(bot_id) {
        Some(message) => refuse(&Field::Top("bot_id"), message),
        None => Ok(()),
    }
}

fn validate_dimension_key(field: &Field, key: &str) -> Result<(), ValidationError> {
    check_len(field, key, MAX_DIMENSION_KEY_BYTES)?;
    let mut bytes = key.bytes();
    let valid_first = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b"-_.".contains(&b));
    let valid_rest = bytes.all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid_first || !valid_rest {
        return refuse(field, format!("{key:?} does not match ^[a-zA-Z\\-_.][0-9a-zA-Z\\-_.]*$"));
    }
    Ok(())
}

fn validate_dimension_value(field: &Field, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return refuse(field, "must not be empty");
    }
    check_len(field, value, MAX_DIMENSION_VALUE_BYTES)?;
    if value.trim() != value {
        return refuse(field, format!("{value:?} has surrounding spaces"));
    }
    Ok(())
}

/// The `${NAME}` placeholders the bot replaces in a command's arguments and in
/// environment values, as Swarming's bot does (`${APIARY_OUTDIR}` is Apiary's
/// name for `${ISOLATED_OUTDIR}`).
pub const KNOWN_PLACEHOLDERS: [&str; 4] =
    ["${APIARY_OUTDIR}", "${ISOLATED_OUTDIR}", "${EXECUTABLE_SUFFIX}", "${SWARMING_BOT_FILE}"];

/// Any other `${...}` is refused rather than passed through: the bot would hand it
/// to the command as it is, and a shell would read it as one of its own variables.
fn validate_placeholders(field: &Field, text: &str) -> Result<(), ValidationError> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start..];
        let placeholder = after.find('}').map_or(after, |end| &after[..=end]);
        if !KNOWN_PLACEHOLDERS.contains(&placeholder) {
            let name = placeholder.trim_start_matches("${").trim_end_matches('}');
            let message = format!(
                "{placeholder:?} is not a placeholder Apiary knows ({}); for a variable of the shell write ${name} \
                 without braces",
                KNOWN_PLACEHOLDERS.join(", ")
            );
            return refuse(field, message);
        }
        rest = &after[placeholder.len()..];
    }
    Ok(())
}

fn validate_env_key(field: &Field, key: &str) -> Result<(), ValidationError> {
    check_len(field, key, MAX_ENV_KEY_BYTES)?;
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return refuse(field, format!("{key:?} is not a valid environment variable name"));
    }
    Ok(())
}

fn validate_relative_path(field: &Field, path: &str, max_bytes: usize) -> Result<(), ValidationError> {
    check_len(field, path, max_bytes)?;
    if path.is_empty() || path.starts_with('/') || path.contains('\0') || path.split('/').any(|part| part == "..") {
        return refuse(field, format!("{path:?} must be a relative path inside the work directory, without .."));
    }
    Ok(())
}

fn check_len(field: &Field, value: &str, limit: usize) -> Result<(), ValidationError> {
    if value.len() > limit {
        return refuse(field, format!("{} bytes is over the limit of {limit}", value.len()));
    }
    Ok(())
}

fn check_count(field: &Field, count: usize, limit: usize) -> Result<(), ValidationError> {
    if count > limit {
        return refuse(field, format!("{count} entries is over the limit of {limit}"));
    }
    Ok(())
}

/// The refusal in the words the CLI uses too (`Range::check`).
fn check_range(field: &Field, value: u32, range: &Range) -> Result<(), ValidationError> {
    range.check(value.into()).or_else(|message| refuse(field, message))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn request(dimensions: &[(&str, &str)]) -> NewTaskRequest {
        let mut slice = TaskSlice::default();
        Arc::make_mut(&mut slice.properties).command = vec!["true".into()];
        Arc::make_mut(&mut slice.properties).dimensions =
            dimensions.iter().map(|(key, value)| StringPair::new(key, value)).collect();
        NewTaskRequest { task_slices: vec![slice], ..NewTaskRequest::default() }
    }

    fn refused_field(request: &NewTaskRequest) -> String {
        validate_request(request).expect_err("should be refused").field
    }

    #[test]
    fn a_plain_request_is_valid() {
        assert_eq!(validate_request(&request(&[("pool", "ci"), ("os", "Linux|Mac")])), Ok(()));
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(refused_field(&request(&[("os", "Linux")])), "task_slices[0].properties.dimensions");
        assert_eq!(refused_field(&request(&[("pool", "a|b")])), "task_slices[0].properties.dimensions[0].value");
        assert_eq!(
            refused_field(&request(&[("pool", "ci"), ("9x", "y")])),
            "task_slices[0].properties.dimensions[1].key"
        );
        assert_eq!(refused_field(&request(&[("pool", " ci")])), "task_slices[0].properties.dimensions[0].value");
        let long_key = "k".repeat(MAX_DIMENSION_KEY_BYTES + 1);
        assert_eq!(
            refused_field(&request(&[("pool", "ci"), (&long_key, "v")])),
            "task_slices[0].properties.dimensions[1].key"
        );
        let many = request(&[("pool", "ci"), ("a", "1|2|3"), ("b", "1|2|3")]);
        assert_eq!(refused_field(&many), "task_slices[0].properties.dimensions");

        let mut bad = request(&[("pool", "ci")]);
        bad.priority = 0;
        assert_eq!(refused_field(&bad), "priority");
        let mut bad = request(&[("pool", "ci")]);
        Arc::make_mut(&mut bad.task_slices[0].properties).command.clear();
        assert_eq!(refused_field(&bad), "task_slices[0].properties.command");
        let mut bad = request(&[("pool", "ci")]);
        bad.task_slices[0].expiration_secs = 0;
        assert_eq!(refused_field(&bad), "task_slices[0].expiration_secs");
        let mut bad = request(&[("pool", "ci")]);
        Arc::make_mut(&mut bad.task_slices[0].properties).execution_timeout_secs = MAX_EXECUTION_TIMEOUT_SECS + 1;
        assert_eq!(refused_field(&bad), "task_slices[0].properties.execution_timeout_secs");
        let mut bad = request(&[("pool", "ci")]);
        Arc::make_mut(&mut bad.task_slices[0].properties).relative_cwd = "a/../..".into();
        assert_eq!(refused_field(&bad), "task_slices[0].properties.relative_cwd");
        let mut bad = request(&[("pool", "ci")]);
        bad.task_slices.push(bad.task_slices[0].clone());
        assert_eq!(refused_field(&bad), "task_slices[1]");
        let mut bad = request(&[("pool", "ci")]);
        Arc::make_mut(&mut bad.task_slices[0].properties).caches =
            vec![NamedCache { name: "Git".into(), path: "git".into() }];
        assert_eq!(refused_field(&bad), "task_slices[0].properties.caches[0].name");
        let mut bad = request(&[("pool", "ci")]);
        let cache = NamedCache { name: "git".into(), path: "git".into() };
        Arc::make_mut(&mut bad.task_slices[0].properties).caches = vec![cache.clone(), cache];
        assert_eq!(refused_field(&bad), "task_slices[0].properties.caches[1]");
        let mut bad = request(&[("pool", "ci")]);
        bad.secret_bytes = Some(apiary_protocol::SecretBytes(vec![0; MAX_SECRET_BYTES + 1]));
        assert_eq!(refused_field(&bad), "secret_bytes");
        let mut bad = request(&[("pool", "ci")]);
        bad.tags.push("novalue".into());
        assert_eq!(refused_field(&bad), "tags[0]");
        let mut bad = request(&[("pool", "ci")]);
        bad.task_slices = vec![bad.task_slices[0].clone(); MAX_TASK_SLICES + 1];
        assert_eq!(refused_field(&bad), "task_slices");
    }

    #[test]
    fn a_bot_needs_a_pool_and_an_id_of_swarming_syntax() {
        let packed = |pairs: &[(&str, &str)]| {
            PackedDimensions::new(&pairs.iter().map(|(key, value)| StringPair::new(key, value)).collect::<Vec<_>>())
        };
        assert!(validate_reported_dimensions("bot-1", &packed(&[("pool", "ci"), ("os", "Linux")])).is_ok());
        let error = validate_reported_dimensions("bot-1", &packed(&[("os", "Linux")])).unwrap_err();
        assert_eq!(error.field, "dimensions");
        assert!(error.message.contains("pool"), "{error}");
        assert_eq!(validate_bot_id("ci-linux-1.example.com"), Ok(()));
        let error = validate_bot_id("bot 1").unwrap_err();
        assert_eq!(error.field, "bot_id");
        assert!(error.message.contains("^[0-9a-zA-Z_.-]+$"), "{error}");
    }

    #[test]
    fn nested_cache_paths_are_refused_at_submission() {
        let caches = |paths: &[&str]| {
            let mut request = request(&[("pool", "ci")]);
            Arc::make_mut(&mut request.task_slices[0].properties).caches = paths
                .iter()
                .enumerate()
                .map(|(index, path)| NamedCache { name: format!("c{index}"), path: path.to_string() })
                .collect();
            request
        };
        assert_eq!(validate_request(&caches(&["a", "ab", "b/a"])), Ok(()));
        for paths in [&["a", "a/b"][..], &["x/y/z", "./x/y"], &["c", "d", "c/"]] {
            let error = validate_request(&caches(paths)).unwrap_err();
            let last = paths.len() - 1;
            assert_eq!(error.field, format!("task_slices[0].properties.caches[{last}].path"), "{paths:?}");
            assert!(error.message.contains("no cache path may contain another"), "{error}");
        }
        let error = validate_request(&caches(&["./"])).unwrap_err();
        assert_eq!(error.field, "task_slices[0].properties.caches[0].path");
    }

    #[test]
    fn messages_name_the_limit() {
        let mut bad = request(&[("pool", "ci")]);
        bad.name = "n".repeat(MAX_NAME_BYTES + 1);
        let error = validate_request(&bad).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("name: {} bytes is over the limit of {MAX_NAME_BYTES}", MAX_NAME_BYTES + 1)
        );
    }

    #[test]
    fn a_request_whose_fields_fit_but_whose_whole_does_not_is_refused() {
        let mut large = request(&[("pool", "ci")]);
        Arc::make_mut(&mut large.task_slices[0].properties).command = vec!["a".repeat(MAX_ARG_BYTES); MAX_COMMAND_ARGS];
        assert_eq!(validate_request(&large), Ok(()), "one slice of the longest command fits");
        for index in 1..MAX_TASK_SLICES {
            let mut slice = large.task_slices[0].clone();
            slice.expiration_secs = 1 + index as u32;
            large.task_slices.push(slice);
        }
        let error = validate_request(&large).unwrap_err();
        assert_eq!(error.field, "request");
        assert!(error.message.ends_with(&format!("bytes encoded is over the limit of {MAX_TASK_REQUEST_BYTES}")));
    }

    #[test]
    fn a_key_given_twice_asks_for_both_values_but_pool_and_id_only_once() {
        assert_eq!(validate_request(&request(&[("pool", "ci"), ("gpu", "nvidia"), ("gpu", "4090")])), Ok(()));
        let twice = |pairs: &[(&str, &str)]| validate_request(&request(pairs)).unwrap_err().to_string();
        assert_eq!(
            twice(&[("pool", "ci"), ("pool", "b")]),
            "task_slices[0].properties.dimensions[1].key: \"pool\" may be given only once"
        );
        assert_eq!(
            twice(&[("pool", "ci"), ("id", "a"), ("id", "b")]),
            "task_slices[0].properties.dimensions[2].key: \"id\" may be given only once"
        );
        assert_eq!(
            twice(&[("pool", "ci"), ("os", "a"), ("os", "a")]),
            "task_slices[0].properties.dimensions[2]: repeats os:a"
        );
        let values: Vec<String> = (0..=MAX_TASK_DIMENSION_VALUES).map(|n| n.to_string()).collect();
        let mut many: Vec<(&str, &str)> = vec![("pool", "ci")];
        many.extend(values.iter().map(|value| ("os", value.as_str())));
        assert_eq!(twice(&many), "task_slices[0].properties.dimensions[17].key: \"os\" has more than 16 values");
        let keys: Vec<String> = (0..MAX_TASK_DIMENSIONS).map(|n| format!("k{n}")).collect();
        let mut wide: Vec<(&str, &str)> = vec![("pool", "ci")];
        wide.extend(keys.iter().map(|key| (key.as_str(), "v")));
        assert_eq!(twice(&wide), "task_slices[0].properties.dimensions: more than 32 distinct keys, the limit");
    }

    #[test]
    fn an_unknown_placeholder_is_refused_and_the_known_ones_pass() {
        let mut known = request(&[("pool", "ci")]);
        Arc::make_mut(&mut known.task_slices[0].properties).command = vec![
            "run${EXECUTABLE_SUFFIX}".into(),
            "--out=${ISOLATED_OUTDIR}/a:${APIARY_OUTDIR}".into(),
            "${SWARMING_BOT_FILE}".into(),
            "$HOME".into(),
        ];
        assert_eq!(validate_request(&known), Ok(()));
        let mut unknown = known.clone();
        Arc::make_mut(&mut unknown.task_slices[0].properties).command.push("echo ${HOME}".into());
        assert_eq!(
            validate_request(&unknown).unwrap_err().to_string(),
            "task_slices[0].properties.command[4]: \"${HOME}\" is not a placeholder Apiary knows (${APIARY_OUTDIR}, \
             ${ISOLATED_OUTDIR}, ${EXECUTABLE_SUFFIX}, ${SWARMING_BOT_FILE}); for a variable of the shell write $HOME \
             without braces"
        );
        let mut in_env = known.clone();
        Arc::make_mut(&mut in_env.task_slices[0].properties).env = vec![StringPair::new("OUT", "${OUTDIR")];
        assert_eq!(refused_field(&in_env), "task_slices[0].properties.env[0].value");
    }

    #[test]
    fn limits_are_swarmings_and_name_their_range() {
        let mut short = request(&[("pool", "ci")]);
        short.bot_ping_tolerance_secs = MIN_BOT_PING_TOLERANCE_SECS - 1;
        assert_eq!(
            validate_request(&short).unwrap_err().to_string(),
            "bot_ping_tolerance_secs: 2 seconds is outside 3..=1200"
        );
        short.bot_ping_tolerance_secs = MIN_BOT_PING_TOLERANCE_SECS;
        assert_eq!(validate_request(&short), Ok(()));
        let mut long_tag = request(&[("pool", "ci")]);
        long_tag.tags = vec![format!("k:{}", "v".repeat(MAX_TAG_VALUE_BYTES + 1))];
        assert!(validate_request(&long_tag).unwrap_err().message.ends_with("has 257 bytes, over the limit of 256"));
        let mut long_env = request(&[("pool", "ci")]);
        Arc::make_mut(&mut long_env.task_slices[0].properties).env = vec![StringPair::new(&"K".repeat(65), "v")];
        assert_eq!(refused_field(&long_env), "task_slices[0].properties.env[0].key");
        let mut long_cwd = request(&[("pool", "ci")]);
        Arc::make_mut(&mut long_cwd.task_slices[0].properties).relative_cwd = "d".repeat(MAX_RELATIVE_CWD_BYTES + 1);
        assert_eq!(refused_field(&long_cwd), "task_slices[0].properties.relative_cwd");
        let mut long_timeout = request(&[("pool", "ci")]);
        Arc::make_mut(&mut long_timeout.task_slices[0].properties).io_timeout_secs = 601_141;
        assert_eq!(
            validate_request(&long_timeout).unwrap_err().to_string(),
            "task_slices[0].properties.io_timeout_secs: 601141 seconds is outside 1..=601140"
        );
    }
}

//! Log records of kind 1: events as they were written before tasks had
//! inputs. Their layout differs from today's `Event` in one place, the task
//! properties inside a `TaskCreated`, which had no `cas_input_root`; these
//! frozen copies read them, and `into_event` makes today's event of them.
//! Nothing writes kind 1 any more.

use std::sync::Arc;

use apiary_protocol::{NamedCache, NewTaskRequest, SecretBytes, StringListPair, StringPair, TaskProperties, TaskSlice};
use rkyv::{Archive, Deserialize, Serialize, rancor};

use super::events::{
    BotChange, BotConnected, Event, EventDecodeError, TaskAssigned, TaskCreated, TaskFinished, TaskLinked,
};

/// The record kind of these events.
pub const LEGACY_EVENT_RECORD_KIND: u16 = 1;

#[derive(Archive, Serialize, Deserialize)]
enum EventV1 {
    TaskCreated(TaskCreatedV1),
    SliceAdvanced { task_id: u64, slice_index: u32, at_ms: u64 },
    TaskAssigned(TaskAssigned),
    KillRequested { run_id: u64, at_ms: u64 },
    TaskFinished(TaskFinished),
    TaskRetried { run_id: u64, reason: String, output_len: u64, at_ms: u64 },
    BotConnected(BotConnected),
    BotChanged { bot_id: String, change: BotChange, at_ms: u64 },
    RetentionApplied { cutoff_ms: u64 },
    BotChangedBy { bot_id: String, change: BotChange, at_ms: u64, by: String },
    TaskLinked(TaskLinked),
}

#[derive(Archive, Serialize, Deserialize)]
struct TaskCreatedV1 {
    task_id: u64,
    created_ms: u64,
    slice_index: u32,
    request: NewTaskRequestV1,
}

#[derive(Archive, Serialize, Deserialize)]
struct NewTaskRequestV1 {
    name: String,
    priority: u8,
    tags: Vec<String>,
    user: String,
    task_slices: Vec<TaskSliceV1>,
    bot_ping_tolerance_secs: u32,
    secret_bytes: Option<SecretBytes>,
}

#[derive(Archive, Serialize, Deserialize)]
struct TaskSliceV1 {
    properties: Arc<TaskPropertiesV1>,
    expiration_secs: u32,
    wait_for_capacity: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone)]
struct TaskPropertiesV1 {
    command: Vec<String>,
    dimensions: Vec<StringPair>,
    env: Vec<StringPair>,
    env_prefixes: Vec<StringListPair>,
    relative_cwd: String,
    execution_timeout_secs: u32,
    io_timeout_secs: u32,
    grace_period_secs: u32,
    idempotent: bool,
    caches: Vec<NamedCache>,
}

/// Decodes (and validates) a kind-1 record as today's event. The bytes must be 16-byte aligned.
pub fn decode(bytes: &[u8]) -> Result<Event, EventDecodeError> {
    let event = rkyv::from_bytes::<EventV1, rancor::Error>(bytes).map_err(|e| EventDecodeError(e.to_string()))?;
    Ok(into_event(event))
}

fn into_event(event: EventV1) -> Event {
    match event {
        EventV1::TaskCreated(created) => Event::TaskCreated(TaskCreated {
            task_id: created.task_id,
            created_ms: created.created_ms,
            slice_index: created.slice_index,
            request: into_request(created.request),
        }),
        EventV1::SliceAdvanced { task_id, slice_index, at_ms } => Event::SliceAdvanced { task_id, slice_index, at_ms },
        EventV1::TaskAssigned(assigned) => Event::TaskAssigned(assigned),
        EventV1::KillRequested { run_id, at_ms } => Event::KillRequested { run_id, at_ms },
        EventV1::TaskFinished(finished) => Event::TaskFinished(finished),
        EventV1::TaskRetried { run_id, reason, output_len, at_ms } => {
            Event::TaskRetried { run_id, reason, output_len, at_ms }
        }
        EventV1::BotConnected(connected) => Event::BotConnected(connected),
        EventV1::BotChanged { bot_id, change, at_ms } => Event::BotChanged { bot_id, change, at_ms },
        EventV1::RetentionApplied { cutoff_ms } => Event::RetentionApplied { cutoff_ms },
        EventV1::BotChangedBy { bot_id, change, at_ms, by } => Event::BotChangedBy { bot_id, change, at_ms, by },
        EventV1::TaskLinked(linked) => Event::TaskLinked(linked),
    }
}

fn into_request(request: NewTaskRequestV1) -> NewTaskRequest {
    let task_slices = request.task_slices.into_iter().map(|slice| {
        let properties = Arc::unwrap_or_clone(slice.properties);
        TaskSlice {
            properties: Arc::new(TaskProperties {
                command: properties.command,
                dimensions: properties.dimensions,
                env: properties.env,
                env_prefixes: properties.env_prefixes,
                relative_cwd: properties.relative_cwd,
                execution_timeout_secs: properties.execution_timeout_secs,
                io_timeout_secs: properties.io_timeout_secs,
                grace_period_secs: properties.grace_period_secs,
                idempotent: properties.idempotent,
                caches: properties.caches,
                cas_input_root: None,
            }),
            expiration_secs: slice.expiration_secs,
            wait_for_capacity: slice.wait_for_capacity,
        }
    });
    NewTaskRequest {
        name: request.name,
        priority: request.priority,
        tags: request.tags,
        user: request.user,
        task_slices: task_slices.collect(),
        bot_ping_tolerance_secs: request.bot_ping_tolerance_secs,
        secret_bytes: request.secret_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written by a daemon before tasks had inputs reads back as
    /// today's event, with no input root.
    #[test]
    fn a_task_created_before_inputs_reads_back() {
        let properties = TaskPropertiesV1 {
            command: vec!["echo".into(), "hi".into()],
            dimensions: vec![StringPair::new("pool", "ci")],
            env: vec![StringPair::new("A", "1")],
            env_prefixes: vec![StringListPair { key: "PATH".into(), value: vec!["bin".into()] }],
            relative_cwd: "src".into(),
            execution_timeout_secs: 60,
            io_timeout_secs: 5,
            grace_period_secs: 3,
            idempotent: true,
            caches: vec![NamedCache { name: "git".into(), path: "git".into() }],
        };
        let slice = TaskSliceV1 { properties: Arc::new(properties), expiration_secs: 30, wait_for_capacity: true };
        let request = NewTaskRequestV1 {
            name: "n".into(),
            priority: 7,
            tags: vec!["a:b".into()],
            user: "u".into(),
            task_slices: vec![slice],
            bot_ping_tolerance_secs: 600,
            secret_bytes: Some(SecretBytes(vec![1, 2])),
        };
        let created = EventV1::TaskCreated(TaskCreatedV1 { task_id: 0x10, created_ms: 5, slice_index: 0, request });
        let bytes = rkyv::to_bytes::<rancor::Error>(&created).unwrap();
        let Event::TaskCreated(read) = decode(&bytes).unwrap() else { panic!("not a TaskCreated") };
        let properties = &read.request.task_slices[0].properties;
        assert_eq!((read.task_id, read.request.priority, read.request.tags.clone()), (0x10, 7, vec!["a:b".into()]));
        assert_eq!((properties.command.len(), properties.relative_cwd.as_str()), (2, "src"));
        assert_eq!(properties.caches[0].name, "git");
        assert_eq!(properties.cas_input_root, None);
        assert_eq!(read.request.secret_bytes, Some(SecretBytes(vec![1, 2])));
    }

    #[test]
    fn other_kind_one_records_keep_their_meaning() {
        let bytes = rkyv::to_bytes::<rancor::Error>(&EventV1::RetentionApplied { cutoff_ms: 77 }).unwrap();
        assert_eq!(decode(&bytes).unwrap(), Event::RetentionApplied { cutoff_ms: 77 });
    }
}

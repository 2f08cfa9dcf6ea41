//! Upper bounds on the encoded size of the messages a reply carries many of, or
//! that carry a whole task request: what the daemon must know *before* it builds
//! a reply, so that no reply ever exceeds the frame limit (`limits`).
//!
//! rkyv lays a value out as its archived struct plus out-of-line blocks (string
//! bytes, vector elements, the target of an `Arc`), each aligned. A bound here
//! counts the archived struct, and every out-of-line block with `BLOCK_PAD` bytes
//! of padding. It is cheap (a walk over lengths, no encoding) and never below the
//! real size: the tests compare it with rkyv's output. A new field that holds a
//! string or a vector must be counted here too.

use std::mem::size_of;

use crate::limits::{MAX_BOT_ID_BYTES, MAX_CAS_INSTANCE_BYTES, MAX_REASON_BYTES};
use crate::messages::{
    ArchivedBotEvent, ArchivedBotInfo, ArchivedCacheInfo, ArchivedNamedCache, ArchivedNewTaskRequest, ArchivedReply,
    ArchivedStringListPair, ArchivedStringPair, ArchivedTaskProperties, ArchivedTaskResult, ArchivedTaskSlice,
    BotEvent, BotInfo, NewTaskRequest, StringPair, TaskProperties, TaskResult,
};

/// Padding counted for each out-of-line block: at most the largest alignment.
const BLOCK_PAD: usize = 16;

/// A reply around a page, at most: the reply's own struct (as large as its
/// largest variant), the page's vector block and the alignment of the root.
pub const REPLY_BYTES: usize = size_of::<ArchivedReply>() + 2 * BLOCK_PAD;

/// What a task's result adds to its request, at most: the result's own struct,
/// its bot id, its failure reason and its store's name (all bounded by the daemon).
pub const TASK_RESULT_EXTRA_BYTES: usize = size_of::<ArchivedTaskResult>() - size_of::<ArchivedNewTaskRequest>()
    + 3 * BLOCK_PAD
    + MAX_BOT_ID_BYTES
    + MAX_REASON_BYTES
    + MAX_CAS_INSTANCE_BYTES;

/// The encoded size of a task request, at most.
pub fn request_bytes(request: &NewTaskRequest) -> usize {
    size_of::<ArchivedNewTaskRequest>() + BLOCK_PAD + request_blocks(request)
}

/// What one more tag of `tag_bytes` bytes adds to a request's size, at most.
pub fn added_tag_bytes(tag_bytes: usize) -> usize {
    size_of::<rkyv::string::ArchivedString>() + tag_bytes + BLOCK_PAD
}

/// The size a task's result takes in a reply or a page, at most.
pub fn task_result_bytes(result: &TaskResult) -> usize {
    size_of::<ArchivedTaskResult>()
        + BLOCK_PAD
        + result.bot_id.as_deref().map_or(0, string)
        + string(&result.failure_reason)
        + result.cas_output_root.as_ref().map_or(0, |root| string(&root.cas_instance))
        + request_blocks(&result.request)
}

/// The size a bot event takes in a page, at most.
pub fn bot_event_bytes(event: &BotEvent) -> usize {
    size_of::<ArchivedBotEvent>() + BLOCK_PAD + pairs(&event.dimensions) + string(&event.message)
}

/// The size a bot's description takes in a reply or a list, at most.
pub fn bot_info_bytes(bot: &BotInfo) -> usize {
    size_of::<ArchivedBotInfo>()
        + BLOCK_PAD
        + string(&bot.bot_id)
        + pairs(&bot.dimensions)
        + string(&bot.software)
        + bot.quarantine_reason.as_deref().map_or(0, string)
        + array::<ArchivedCacheInfo>(bot.caches.len())
        + bot.caches.iter().map(|cache| string(&cache.name)).sum::<usize>()
}

fn request_blocks(request: &NewTaskRequest) -> usize {
    string(&request.name)
        + strings(&request.tags)
        + string(&request.user)
        + array::<ArchivedTaskSlice>(request.task_slices.len())
        + request.task_slices.iter().map(|slice| properties_block(&slice.properties)).sum::<usize>()
        + request.secret_bytes.as_ref().map_or(0, |secret| secret.0.len() + BLOCK_PAD)
}

fn properties_block(properties: &TaskProperties) -> usize {
    size_of::<ArchivedTaskProperties>()
        + BLOCK_PAD
        + strings(&properties.command)
        + pairs(&properties.dimensions)
        + pairs(&properties.env)
        + array::<ArchivedStringListPair>(properties.env_prefixes.len())
        + properties.env_prefixes.iter().map(|pair| string(&pair.key) + strings(&pair.value)).sum::<usize>()
        + string(&properties.relative_cwd)
        + array::<ArchivedNamedCache>(properties.caches.len())
        + properties.caches.iter().map(|cache| string(&cache.name) + string(&cache.path)).sum::<usize>()
        + properties.cas_input_root.as_ref().map_or(0, |root| {
            size_of::<crate::cas::reference::ArchivedCasReference>() + BLOCK_PAD + string(&root.cas_instance)
        })
}

fn string(text: &str) -> usize {
    text.len() + BLOCK_PAD
}

fn strings(texts: &[String]) -> usize {
    array::<rkyv::string::ArchivedString>(texts.len()) + texts.iter().map(|text| string(text)).sum::<usize>()
}

fn pairs(pairs: &[StringPair]) -> usize {
    array::<ArchivedStringPair>(pairs.len())
        + pairs.iter().map(|pair| string(&pair.key) + string(&pair.value)).sum::<usize>()
}

fn array<T>(count: usize) -> usize {
    count * size_of::<T>() + BLOCK_PAD
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rkyv::rancor;

    use super::*;
    use crate::cas::{CasReference, CasStats, Digest};
    use crate::messages::{
        BotEventKind, CacheInfo, NamedCache, Reply, SecretBytes, StringListPair, TaskSlice, TaskState,
    };

    fn encoded<T>(value: &T) -> usize
    where
        T: for<'a> rkyv::Serialize<
                rkyv::api::high::HighSerializer<
                    rkyv::util::AlignedVec,
                    rkyv::ser::allocator::ArenaHandle<'a>,
                    rancor::Error,
                >,
            >,
    {
        rkyv::to_bytes::<rancor::Error>(value).expect("encodes").len()
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z]{1,8}", "[a-z]{9,300}"]
    }

    fn texts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(text(), 0..6)
    }

    fn string_pairs() -> impl Strategy<Value = Vec<StringPair>> {
        proptest::collection::vec((text(), text()).prop_map(|(key, value)| StringPair { key, value }), 0..6)
    }

    fn properties() -> impl Strategy<Value = TaskProperties> {
        let caches = proptest::collection::vec((text(), text()), 0..4);
        let input_root = proptest::option::of(text());
        (texts(), string_pairs(), string_pairs(), texts(), text(), caches, input_root).prop_map(
            |(command, dimensions, env, prefixes, relative_cwd, caches, input_root)| TaskProperties {
                command,
                dimensions,
                env,
                env_prefixes: vec![StringListPair { key: "PATH".into(), value: prefixes }],
                relative_cwd,
                caches: caches.into_iter().map(|(name, path)| NamedCache { name, path }).collect(),
                cas_input_root: input_root
                    .map(|cas_instance| Box::new(CasReference { cas_instance, digest: Digest::of(b"tree") })),
                ..TaskProperties::default()
            },
        )
    }

    fn request() -> impl Strategy<Value = NewTaskRequest> {
        let slices = proptest::collection::vec(properties(), 1..4);
        let secret = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100));
        (text(), texts(), text(), slices, secret).prop_map(|(name, tags, user, slices, secret)| NewTaskRequest {
            name,
            tags,
            user,
            task_slices: slices
                .into_iter()
                .map(|properties| TaskSlice { properties: Arc::new(properties), ..TaskSlice::default() })
                .collect(),
            secret_bytes: secret.map(SecretBytes),
            ..NewTaskRequest::default()
        })
    }

    fn result_with(request: NewTaskRequest, bot_id: Option<String>, failure_reason: String) -> TaskResult {
        TaskResult {
            task_id: 0x10,
            run_id: Some(0x11),
            state: TaskState::Completed,
            exit_code: Some(0),
            bot_id,
            try_number: 1,
            current_task_slice: 0,
            created_unix_ms: 1,
            started_unix_ms: Some(2),
            completed_unix_ms: Some(3),
            abandoned_unix_ms: None,
            duration_ms: Some(1),
            internal_failure: false,
            failure_reason,
            output_len: 0,
            deduped_from: None,
            timeout: None,
            setup_ms: None,
            teardown_ms: None,
            has_secret_bytes: false,
            output_truncated: false,
            pending: None,
            cas_output_root: Some(CasReference {
                cas_instance: "i".repeat(MAX_CAS_INSTANCE_BYTES),
                digest: Digest::of(b"o"),
            }),
            cas_stats: Some(CasStats::default()),
            request,
        }
    }

    fn task_result() -> impl Strategy<Value = TaskResult> {
        (request(), proptest::option::of(text()), text())
            .prop_map(|(request, bot_id, failure_reason)| result_with(request, bot_id, failure_reason))
    }

    proptest! {
        #[test]
        fn a_request_never_encodes_larger_than_its_bound(request in request()) {
            prop_assert!(encoded(&request) <= request_bytes(&request));
        }

        #[test]
        fn a_page_of_results_never_encodes_larger_than_its_bounds(results in proptest::collection::vec(task_result(), 0..5)) {
            let bound: usize = results.iter().map(task_result_bytes).sum();
            let page = Reply::Tasks { tasks: results, next_cursor: Some(7) };
            prop_assert!(encoded(&page) <= bound + REPLY_BYTES, "{} > {bound} + {REPLY_BYTES}", encoded(&page));
        }

        #[test]
        fn pages_of_events_and_bots_never_encode_larger_than_their_bounds(
            dimensions in string_pairs(),
            message in text(),
            caches in texts(),
            count in 0usize..5,
        ) {
            let event = BotEvent {
                number: 3,
                at_unix_ms: 4,
                kind: BotEventKind::Connected,
                dimensions: dimensions.clone(),
                run_id: Some(0x11),
                message: message.clone(),
            };
            let events = vec![event; count];
            let bound: usize = events.iter().map(bot_event_bytes).sum();
            let page = Reply::BotEvents { events, next_cursor: None };
            prop_assert!(encoded(&page) <= bound + REPLY_BYTES);
            let bot = BotInfo {
                bot_id: message.clone(),
                dimensions,
                current_run_id: None,
                first_seen_unix_ms: 1,
                last_seen_unix_ms: 2,
                connected: true,
                software: message.clone(),
                dead: false,
                quarantine_reason: Some(message),
                terminate_requested: false,
                shut_down: false,
                caches: caches.into_iter().map(|name| CacheInfo { name, size_bytes: 9 }).collect(),
            };
            let bots = vec![bot; count];
            let bound: usize = bots.iter().map(bot_info_bytes).sum();
            prop_assert!(encoded(&Reply::Bots(bots)) <= bound + REPLY_BYTES);
        }
    }

    #[test]
    fn a_result_adds_at_most_the_extra_to_its_request() {
        let request = NewTaskRequest::default();
        let result_bound = request_bytes(&request) + TASK_RESULT_EXTRA_BYTES;
        let result = result_with(request, Some("b".repeat(MAX_BOT_ID_BYTES)), "r".repeat(MAX_REASON_BYTES));
        assert!(encoded(&result) <= task_result_bytes(&result));
        assert!(task_result_bytes(&result) <= result_bound);
    }
}

//! Every bound of the protocol, in one place. The daemon refuses anything over
//! these with an error that names the field and the limit.

/// The largest frame payload either side accepts.
pub const MAX_FRAME_PAYLOAD_BYTES: usize = 4 << 20;
/// The largest output chunk a bot sends in one update, and a client reads in one reply.
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 1 << 20;
/// Headroom in a frame for everything around an output chunk or a page.
const FRAME_OVERHEAD_BYTES: usize = 64 << 10;
const _: () = assert!(MAX_OUTPUT_CHUNK_BYTES + FRAME_OVERHEAD_BYTES <= MAX_FRAME_PAYLOAD_BYTES);
/// The largest frame payload before the hello: a hello is small (a token, when
/// there are tokens, included), and a peer that has not said who it is gets no more.
pub const MAX_HELLO_PAYLOAD_BYTES: usize = 16 << 10;
/// Bytes in a bearer token (a hello's `token`, a `--token-file`).
pub const MAX_TOKEN_BYTES: usize = 4096;
const _: () = assert!(MAX_TOKEN_BYTES + 4096 <= MAX_HELLO_PAYLOAD_BYTES, "a hello with a token fits");
/// Bytes of the entries of one page (tasks, bot events, bots), as bounded by
/// `wire_size`: a page stops early by bytes as well as by count, and hands back
/// a cursor, so it always fits in a frame.
pub const MAX_PAGE_BYTES: usize = MAX_FRAME_PAYLOAD_BYTES - FRAME_OVERHEAD_BYTES;
const _: () = assert!(MAX_PAGE_BYTES + crate::wire_size::REPLY_BYTES <= MAX_FRAME_PAYLOAD_BYTES);
/// The encoded size of one task request (as bounded by `wire_size`), so that
/// the task's result, which carries the request, always fits in a reply.
pub const MAX_TASK_REQUEST_BYTES: usize = 1 << 20;
const _: () = assert!(MAX_TASK_REQUEST_BYTES + crate::wire_size::TASK_RESULT_EXTRA_BYTES <= MAX_PAGE_BYTES);

/// Slices in one task request (Swarming's limit).
pub const MAX_TASK_SLICES: usize = 8;
/// Arguments in a command, and bytes in one argument.
pub const MAX_COMMAND_ARGS: usize = 128;
pub const MAX_ARG_BYTES: usize = 4096;
/// Distinct dimension keys a task may ask for, and values of one key (Swarming's
/// limits); dimensions a bot may report.
pub const MAX_TASK_DIMENSIONS: usize = 32;
pub const MAX_TASK_DIMENSION_VALUES: usize = 16;
pub const MAX_BOT_DIMENSIONS: usize = 128;
/// Dimension key and value lengths (Swarming's limits).
pub const MAX_DIMENSION_KEY_BYTES: usize = 64;
pub const MAX_DIMENSION_VALUE_BYTES: usize = 256;
/// Environment variables in one slice, and bytes in a key or value (Swarming's limits;
/// an `env_prefixes` path is a value).
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_KEY_BYTES: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 1024;
/// Bytes in `relative_cwd` and in a named cache's path (Swarming's limits).
pub const MAX_RELATIVE_CWD_BYTES: usize = 256;
/// Bytes in the name of a content-addressed store (`cas_input_root.cas_instance`).
pub const MAX_CAS_INSTANCE_BYTES: usize = 256;
pub const MAX_CACHE_PATH_BYTES: usize = 256;
/// Tags on one task, and bytes in one tag's key and value (Swarming's limits: a tag
/// is `key:value`, the key as long as a dimension key, the value as a dimension value).
pub const MAX_TAGS: usize = 256;
pub const MAX_TAG_KEY_BYTES: usize = MAX_DIMENSION_KEY_BYTES;
pub const MAX_TAG_VALUE_BYTES: usize = MAX_DIMENSION_VALUE_BYTES;
/// Bytes in a task name, a user name and a bot id.
pub const MAX_NAME_BYTES: usize = 1024;
pub const MAX_USER_BYTES: usize = 256;
pub const MAX_BOT_ID_BYTES: usize = 256;
/// Task priorities: 0 is reserved for the daemon, lower runs first.
pub const MIN_PRIORITY: u8 = 1;
pub const MAX_PRIORITY: u8 = 255;
pub const DEFAULT_PRIORITY: u8 = 200;
/// Swarming's maximums for time limits; the minimum of each is one second.
pub const MAX_EXPIRATION_SECS: u32 = 7 * 24 * 60 * 60;
pub const MAX_GRACE_PERIOD_SECS: u32 = 60 * 60;
/// The hard and I/O timeouts: Swarming keeps a timeout, its grace period and a
/// minute of overhead under seven days.
pub const MAX_EXECUTION_TIMEOUT_SECS: u32 = 7 * 24 * 60 * 60 - MAX_GRACE_PERIOD_SECS - 60;
/// How often a bot running a task reports to the daemon, output or not (the agent's
/// liveness interval).
pub const BOT_REPORT_INTERVAL_SECS: u32 = 1;
/// `bot_ping_tolerance_secs`: at least three missed reports before a running task's
/// bot counts as dead (Swarming's 60 is not needed with reports every second); at most
/// Swarming's maximum.
pub const MIN_BOT_PING_TOLERANCE_SECS: u32 = 3 * BOT_REPORT_INTERVAL_SECS;
pub const MAX_BOT_PING_TOLERANCE_SECS: u32 = 1200;
pub const DEFAULT_EXPIRATION_SECS: u32 = 60 * 60;
pub const DEFAULT_EXECUTION_TIMEOUT_SECS: u32 = 60 * 60;
pub const DEFAULT_GRACE_PERIOD_SECS: u32 = 30;
pub const DEFAULT_BOT_PING_TOLERANCE_SECS: u32 = 1200;

/// The range a number in a task request must lie in. The daemon's validation and
/// the CLI's flags both check it with `check`, so both refuse a value in the same words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub min: u32,
    pub max: u32,
    /// Said after the value: "" or " seconds".
    pub unit: &'static str,
}

impl Range {
    pub const fn contains(&self, value: u64) -> bool {
        self.min as u64 <= value && value <= self.max as u64
    }

    /// The refusal of `value`, as in "300 is outside 1..=255".
    pub fn check(&self, value: u64) -> Result<(), String> {
        if self.contains(value) {
            return Ok(());
        }
        Err(format!("{value}{} is outside {}..={}", self.unit, self.min, self.max))
    }
}

/// `priority`: lower runs first; 0 is kept for the daemon's own work.
pub const PRIORITY_RANGE: Range = Range { min: MIN_PRIORITY as u32, max: MAX_PRIORITY as u32, unit: "" };
/// A slice's `expiration_secs`.
pub const EXPIRATION_RANGE: Range = Range { min: 1, max: MAX_EXPIRATION_SECS, unit: " seconds" };
/// `execution_timeout_secs`, and `io_timeout_secs` when it is not 0 (no limit).
pub const EXECUTION_TIMEOUT_RANGE: Range = Range { min: 1, max: MAX_EXECUTION_TIMEOUT_SECS, unit: " seconds" };
pub const IO_TIMEOUT_RANGE: Range = EXECUTION_TIMEOUT_RANGE;
pub const GRACE_PERIOD_RANGE: Range = Range { min: 0, max: MAX_GRACE_PERIOD_SECS, unit: " seconds" };
/// `bot_ping_tolerance_secs`: at least three of the bot's reports, so a healthy bot is not declared dead.
pub const BOT_PING_TOLERANCE_RANGE: Range =
    Range { min: MIN_BOT_PING_TOLERANCE_SECS, max: MAX_BOT_PING_TOLERANCE_SECS, unit: " seconds" };
const _: () = assert!(PRIORITY_RANGE.contains(DEFAULT_PRIORITY as u64));
const _: () = assert!(EXPIRATION_RANGE.contains(DEFAULT_EXPIRATION_SECS as u64));
const _: () = assert!(EXECUTION_TIMEOUT_RANGE.contains(DEFAULT_EXECUTION_TIMEOUT_SECS as u64));
const _: () = assert!(GRACE_PERIOD_RANGE.contains(DEFAULT_GRACE_PERIOD_SECS as u64));
const _: () = assert!(BOT_PING_TOLERANCE_RANGE.contains(DEFAULT_BOT_PING_TOLERANCE_SECS as u64));
/// How long a `request_uuid` names the task it first created (Swarming's 7 days).
pub const REQUEST_UUID_WINDOW_SECS: u32 = 7 * 24 * 60 * 60;
/// Bytes in a `request_uuid`.
pub const MAX_REQUEST_UUID_BYTES: usize = 128;
/// Secret bytes of one task.
pub const MAX_SECRET_BYTES: usize = 20 << 10;
/// Named caches of one slice, and bytes in a cache name.
pub const MAX_NAMED_CACHES: usize = 32;
pub const MAX_CACHE_NAME_BYTES: usize = 128;
/// The daemon's default cap on one task's output.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 100 << 20;
/// Bytes in a quarantine reason, and in the failure reason a bot gives (longer ones are cut).
pub const MAX_REASON_BYTES: usize = 4096;
/// Bytes in the software a bot reports, and named caches it may report holding.
pub const MAX_SOFTWARE_BYTES: usize = 256;
pub const MAX_BOT_CACHES: usize = 1024;
/// Tasks in one page of a task listing, and the default.
pub const MAX_TASK_PAGE: u32 = 1000;
pub const DEFAULT_TASK_PAGE: u32 = 100;
/// Tasks one count walks at most: a count past it says "at least", so that one
/// query never holds the event loop for long.
pub const MAX_TASK_COUNT: u64 = 100_000;
/// How long the daemon holds a poll or a wait open before answering "nothing yet".
pub const MAX_LONG_POLL_MS: u64 = 60_000;

/// Blobs or digests in one request to the content-addressed store (and in one
/// answer to `CasFindMissing`).
pub const MAX_CAS_DIGESTS: usize = 8192;
/// Bytes of blob data in one `CasBatchUpload`, and the total size of the
/// blobs of one `CasBatchRead`. REAPI servers commonly allow 4 MiB per batch
/// message; here the frame (`MAX_FRAME_PAYLOAD_BYTES`) is 4 MiB with its
/// framing, so the data gets 3 MiB and the rest is headroom for the blobs'
/// digests and lengths.
pub const MAX_CAS_BATCH_BYTES: usize = 3 << 20;
/// Bytes in one chunk of an upload (`CasUploadChunk`) or a read (`CasRead`).
pub const MAX_CAS_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(MAX_CAS_CHUNK_BYTES <= MAX_CAS_BATCH_BYTES);
const _: () = assert!(MAX_CAS_CHUNK_BYTES + FRAME_OVERHEAD_BYTES <= MAX_FRAME_PAYLOAD_BYTES);
const _: () = assert!(
    MAX_CAS_BATCH_BYTES
        + MAX_CAS_DIGESTS * (std::mem::size_of::<crate::messages::ArchivedCasBlob>() + 16)
        + FRAME_OVERHEAD_BYTES
        <= MAX_FRAME_PAYLOAD_BYTES,
    "a full batch with the most blobs fits in a frame"
);

//! Where the daemon is, connecting to it (again), and typed calls: each call names
//! what it was for, so an error reads "cannot wait for task ...: ...", and checks
//! that the reply is of the kind the request asks for.

use std::time::Duration;

use apiary_protocol::limits::MAX_LONG_POLL_MS;
use apiary_protocol::tls::Security;
use apiary_protocol::{
    BotCounts, BotEvent, BotInfo, CancelOutcome, CanceledTasks, Client, ClientError, ErrorCode, NewTaskAck,
    NewTaskRequest, Reply, Request, Role, TaskResult,
};

use crate::error::CliError;

/// The daemon's address when neither `--server` nor the environment names one.
pub(crate) const DEFAULT_SERVER: &str = "127.0.0.1:7420";
pub(crate) const SERVER_ENV: &str = "APIARY_SERVER";

/// The longest a reply may take: the daemon's long-poll cap plus slack for a busy
/// daemon. A daemon that hangs fails the command instead of hanging it.
const REPLY_TIMEOUT: Duration = Duration::from_millis(MAX_LONG_POLL_MS + 30_000);

/// Hands each reply of a stream to the caller; `Ok(false)` ends the stream.
pub(crate) type EachReply<'a> = &'a mut dyn FnMut(Reply) -> Result<bool, ClientError>;

/// What the commands need of a connection; the tests substitute a scripted daemon.
pub(crate) trait Daemon {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError>;
    /// Sends a request answered by a stream of replies (`FollowOutput`) and hands
    /// each to `each` until it returns `Ok(false)`. A reply may take up to
    /// `reply_timeout` (capped by `REPLY_TIMEOUT`; `None`: that cap). A stream
    /// ended early leaves the daemon sending on this connection: reconnect before
    /// the next request.
    fn call_stream(
        &mut self,
        request: &Request,
        reply_timeout: Option<Duration>,
        each: EachReply<'_>,
    ) -> Result<(), ClientError>;
    /// Waits `delay`, then drops the connection and opens a new one. Only for
    /// callers whose requests can be repeated safely (see `collect`).
    fn reconnect(&mut self, delay: Duration) -> Result<(), ClientError>;
}

/// A connection to the daemon that remembers where the daemon is, so it can be reopened.
pub(crate) struct Connection {
    addr: String,
    /// Sent in every hello; empty when there is none.
    token: String,
    security: Security,
    client: Client,
}

impl Daemon for Connection {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.client.call(request)
    }

    fn call_stream(
        &mut self,
        request: &Request,
        reply_timeout: Option<Duration>,
        each: EachReply<'_>,
    ) -> Result<(), ClientError> {
        // A zero read timeout means "none" to the OS: wait at least a millisecond.
        let read_timeout =
            reply_timeout.map_or(REPLY_TIMEOUT, |timeout| timeout.clamp(Duration::from_millis(1), REPLY_TIMEOUT));
        self.client.set_read_timeout(Some(read_timeout))?;
        let result = self.client.call_stream(request, each);
        self.client.set_read_timeout(Some(REPLY_TIMEOUT))?;
        result
    }

    fn reconnect(&mut self, delay: Duration) -> Result<(), ClientError> {
        std::thread::sleep(delay);
        self.client = open(&self.addr, &self.token, &self.security)?;
        Ok(())
    }
}

/// The store's transfers over whatever a command talks to the daemon through.
pub(crate) struct CallThrough<'d, D: Daemon>(pub(crate) &'d mut D);

impl<D: Daemon> apiary_protocol::cas::transfer::Call for CallThrough<'_, D> {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.0.call(request)
    }
}

/// The store's transfers (`apiary cas`) use the connection as any command does.
impl apiary_protocol::cas::transfer::Call for Connection {
    fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.client.call(request)
    }
}

pub(crate) fn connect(addr: &str, token: &str, security: &Security) -> Result<Connection, CliError> {
    let client = open(addr, token, security).map_err(CliError::Connect)?;
    Ok(Connection { addr: addr.to_string(), token: token.to_string(), security: security.clone(), client })
}

fn open(addr: &str, token: &str, security: &Security) -> Result<Client, ClientError> {
    let software = concat!("apiary/", env!("CARGO_PKG_VERSION"));
    let client = Client::connect_secure(addr, Role::Client, software, token, security)?;
    client.set_read_timeout(Some(REPLY_TIMEOUT))?;
    Ok(client)
}

/// True when a call failed for want of a working daemon rather than because of the
/// request: the connection broke or could not be opened, or the daemon is
/// restarting or full. Reconnecting and asking again may help.
pub(crate) fn is_reconnectable(error: &ClientError) -> bool {
    error.is_connection_failure() || matches!(error, ClientError::Refused { code: ErrorCode::Unavailable, .. })
}

/// One chunk of a task's output, as `Reply::Output` carries it.
pub(crate) struct OutputChunk {
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
    pub(crate) output_len: u64,
}

/// Sends a `NewTask`, answered by `Reply::Created`.
pub(crate) fn call_created(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<NewTaskAck, CliError> {
    match call(daemon, request, action)? {
        Reply::Created(ack) => Ok(ack),
        other => Err(unexpected(action, &other)),
    }
}

/// Sends a request answered by `Reply::Task`: GetTask, WaitTask.
pub(crate) fn call_task(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<TaskResult, CliError> {
    match call(daemon, request, action)? {
        Reply::Task(result) => Ok(*result),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_output(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<OutputChunk, CliError> {
    match call(daemon, request, action)? {
        Reply::Output { offset, data, output_len, task_ended: _ } => Ok(OutputChunk { offset, data, output_len }),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_bots(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<Vec<BotInfo>, CliError> {
    match call(daemon, request, action)? {
        Reply::Bots(bots) => Ok(bots),
        other => Err(unexpected(action, &other)),
    }
}

/// Sends a request answered by `Reply::Bot`: GetBot, QuarantineBot, UnquarantineBot, TerminateBot.
pub(crate) fn call_bot(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<BotInfo, CliError> {
    match call(daemon, request, action)? {
        Reply::Bot(bot) => Ok(*bot),
        other => Err(unexpected(action, &other)),
    }
}

/// A page of a bot's events and the cursor of the next page, if more may follow.
pub(crate) fn call_bot_events(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<(Vec<BotEvent>, Option<u64>), CliError> {
    match call(daemon, request, action)? {
        Reply::BotEvents { events, next_cursor } => Ok((events, next_cursor)),
        other => Err(unexpected(action, &other)),
    }
}

/// A page of tasks and the cursor of the next page, if more may follow.
pub(crate) fn call_tasks(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<(Vec<TaskResult>, Option<u64>), CliError> {
    match call(daemon, request, action)? {
        Reply::Tasks { tasks, next_cursor } => Ok((tasks, next_cursor)),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_cancel(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<(CancelOutcome, TaskResult), CliError> {
    match call(daemon, request, action)? {
        Reply::Canceled { outcome, task } => Ok((outcome, *task)),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_validate(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<NewTaskRequest, CliError> {
    match call(daemon, request, action)? {
        Reply::ValidRequest(request) => Ok(*request),
        other => Err(unexpected(action, &other)),
    }
}

/// A count of tasks, and whether counting stopped at the daemon's cap.
pub(crate) fn call_task_count(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<(u64, bool), CliError> {
    match call(daemon, request, action)? {
        Reply::TaskCount { count, capped } => Ok((count, capped)),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_cancel_tasks(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<CanceledTasks, CliError> {
    match call(daemon, request, action)? {
        Reply::CanceledTasks(canceled) => Ok(canceled),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_bot_counts(
    daemon: &mut impl Daemon,
    request: &Request,
    action: &str,
) -> Result<BotCounts, CliError> {
    match call(daemon, request, action)? {
        Reply::BotCounts(counts) => Ok(counts),
        other => Err(unexpected(action, &other)),
    }
}

pub(crate) fn call_delete_bot(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<(), CliError> {
    match call(daemon, request, action)? {
        Reply::BotDeleted => Ok(()),
        other => Err(unexpected(action, &other)),
    }
}

fn call(daemon: &mut impl Daemon, request: &Request, action: &str) -> Result<Reply, CliError> {
    daemon.call(request).map_err(|source| CliError::Call { action: action.to_string(), source })
}

/// The error for a reply of the wrong kind, named for people.
pub(crate) fn unexpected(action: &str, reply: &Reply) -> CliError {
    let reply = match reply {
        Reply::Welcome { .. } => "a welcome",
        Reply::Error(_) => "an error",
        Reply::Created(_) => "a task acknowledgement",
        Reply::Task(_) => "a task result",
        Reply::Output { .. } => "output",
        Reply::Bots(_) => "a list of bots",
        Reply::Bot(_) => "a bot",
        Reply::Tasks { .. } => "a list of tasks",
        Reply::Canceled { .. } => "a cancel outcome",
        Reply::ValidRequest(_) => "a checked request",
        Reply::BotEvents { .. } => "a list of bot events",
        Reply::TaskCount { .. } => "a count of tasks",
        Reply::CanceledTasks(_) => "a count of canceled tasks",
        Reply::BotCounts(_) => "a count of bots",
        Reply::BotDeleted => "a deleted bot",
        Reply::Terminate => "a request to terminate",
        Reply::Assignment(_) => "a bot assignment",
        Reply::NoWork => "no work",
        Reply::UpdateAck { .. } => "an update acknowledgement",
        Reply::CasMissing { .. } => "a list of missing blobs",
        Reply::CasStored => "a stored batch",
        Reply::CasUploadOffset { .. } => "an upload offset",
        Reply::CasBlobs { .. } => "a batch of blobs",
        Reply::CasData { .. } => "blob data",
    };
    CliError::UnexpectedReply { action: action.to_string(), reply }
}

/// A scripted daemon for the commands' tests: answers requests in order and
/// records them.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::VecDeque;

    use apiary_protocol::{NewTaskAck, NewTaskRequest, TaskState};

    use super::*;

    /// Replies are given out in order (a stream takes replies until its caller
    /// stops or an error comes); so are reconnect results, and a reconnect nobody
    /// scripted succeeds. The delays asked for are recorded, and only slept when
    /// `sleeps` (for tests of deadlines).
    #[derive(Default)]
    pub(crate) struct FakeDaemon {
        pub(crate) replies: VecDeque<Result<Reply, ClientError>>,
        pub(crate) reconnect_results: VecDeque<Result<(), ClientError>>,
        pub(crate) sleeps: bool,
        pub(crate) requests: Vec<Request>,
        pub(crate) reconnect_delays: Vec<Duration>,
    }

    impl FakeDaemon {
        pub(crate) fn answering(replies: Vec<Reply>) -> FakeDaemon {
            FakeDaemon { replies: replies.into_iter().map(Ok).collect(), ..FakeDaemon::default() }
        }
    }

    impl Daemon for FakeDaemon {
        fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
            self.requests.push(request.clone());
            self.replies.pop_front().expect("the test scripted a reply for every request")
        }

        fn call_stream(
            &mut self,
            request: &Request,
            _reply_timeout: Option<Duration>,
            each: EachReply<'_>,
        ) -> Result<(), ClientError> {
            self.requests.push(request.clone());
            loop {
                let reply = self.replies.pop_front().expect("the test scripted every reply of the stream")?;
                if !each(reply)? {
                    return Ok(());
                }
            }
        }

        fn reconnect(&mut self, delay: Duration) -> Result<(), ClientError> {
            self.reconnect_delays.push(delay);
            if self.sleeps {
                std::thread::sleep(delay);
            }
            self.reconnect_results.pop_front().unwrap_or(Ok(()))
        }
    }

    /// A connected, idle bot with `pool=ci` and nothing else of note.
    pub(crate) fn idle_bot(bot_id: &str) -> apiary_protocol::BotInfo {
        apiary_protocol::BotInfo {
            bot_id: bot_id.to_string(),
            dimensions: vec![apiary_protocol::StringPair::new("pool", "ci")],
            current_run_id: None,
            first_seen_unix_ms: 0,
            last_seen_unix_ms: 0,
            connected: true,
            software: String::new(),
            dead: false,
            quarantine_reason: None,
            terminate_requested: false,
            shut_down: false,
            caches: Vec::new(),
        }
    }

    /// A stdout whose reader went away: every write fails with a broken pipe.
    pub(crate) struct ClosedPipe;

    impl std::io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The error of a connection that broke, as a daemon restart causes.
    pub(crate) fn connection_reset() -> ClientError {
        ClientError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    pub(crate) fn created(task_id: u64, state: TaskState, deduped_from: Option<u64>) -> NewTaskAck {
        NewTaskAck { task_id, state, deduped_from }
    }

    pub(crate) fn task_result(task_id: u64, state: TaskState, exit_code: Option<i64>) -> TaskResult {
        TaskResult {
            task_id,
            run_id: None,
            state,
            exit_code,
            bot_id: None,
            try_number: 0,
            current_task_slice: 0,
            created_unix_ms: 1_700_000_000_000,
            started_unix_ms: None,
            completed_unix_ms: None,
            abandoned_unix_ms: None,
            duration_ms: None,
            internal_failure: false,
            failure_reason: String::new(),
            output_len: 0,
            deduped_from: None,
            timeout: None,
            setup_ms: None,
            teardown_ms: None,
            has_secret_bytes: false,
            output_truncated: false,
            pending: None,
            cas_output_root: None,
            cas_stats: None,
            request: NewTaskRequest::default(),
        }
    }

    pub(crate) fn output(offset: u64, data: &[u8], output_len: u64) -> Reply {
        Reply::Output { offset, data: data.to_vec(), output_len, task_ended: true }
    }

    /// One frame of a followed output stream: `data` at `offset`, output_len just past it.
    pub(crate) fn followed(offset: u64, data: &[u8], task_ended: bool) -> Reply {
        let output_len = offset + data.len() as u64;
        Reply::Output { offset, data: data.to_vec(), output_len, task_ended }
    }
}

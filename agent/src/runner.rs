//! Runs one task's command and supervises it until it has ended.
//!
//! `RunningTask::start` spawns the command in its own process group, with stdout and
//! stderr merged into one pipe, and three threads:
//! - the reader copies the pipe into the shared `OutputBuffer`;
//! - the waiter blocks until the command exits, without reaping it;
//! - the supervisor enforces the hard and I/O timeouts and stop requests with the
//!   termination dance (SIGTERM to the group, `grace_period_secs`, SIGKILL to the
//!   group), and once the command has exited kills the whole group, reaps the
//!   command, drains the pipe for at most `DRAIN_TIMEOUT` and records the outcome.
//!
//! The session drives a task only through `stop`, `wait`, the output methods and
//! `finish`, so a stuck connection to the daemon never delays a timeout.
//!
//! Invariants: the process group is signalled only while its leader is unreaped
//! (so the group id cannot have been reused); the first reason to stop wins; once
//! the outcome is recorded the buffer gets no more bytes; dropping a `RunningTask`
//! stops its command and waits for the supervisor, so no task outlives its handle
//! (except a process that left the group on purpose, e.g. with `setsid`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, PipeReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use apiary_protocol::ids::format_task_id;
use apiary_protocol::placeholders::{self, Placeholder};
use apiary_protocol::{RunEnd, RunOutcome, TaskProperties};

use crate::output::{Acknowledged, OutputBuffer};
use crate::signals::{self, GroupSignal};
use crate::workdir::{self, RelativePathError};

/// How long the pipe is still read after the command exited and its group was
/// killed: a process that left the group may hold the pipe open forever.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes read from the pipe at once.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Everything needed to start one task's command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskSpec<'a> {
    pub(crate) run_id: u64,
    pub(crate) properties: &'a TaskProperties,
    /// The task's fresh work directory; `relative_cwd` and `env_prefixes` are inside it.
    pub(crate) work_dir: &'a Path,
    /// `APIARY_OUTDIR`: a fresh empty directory for the task's outputs.
    pub(crate) out_dir: &'a Path,
    /// `APIARY_SECRET_BYTES_PATH`, when the task has secret bytes.
    pub(crate) secret_path: Option<&'a Path>,
    /// `${SWARMING_BOT_FILE}`: the bot's description of itself.
    pub(crate) bot_file: &'a Path,
    pub(crate) bot_id: &'a str,
    pub(crate) server: &'a str,
    /// The most output held for the daemon before the rest is dropped.
    pub(crate) output_capacity_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("the command is empty")]
    EmptyCommand,
    #[error("environment variable name {0:?} is empty or contains '=' or NUL")]
    BadEnvKey(String),
    #[error(transparent)]
    Path(#[from] RelativePathError),
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("failed to create the working directory {path}: {source}")]
    CreateCwd { path: PathBuf, source: io::Error },
    #[error("failed to create the output pipe: {0}")]
    Pipe(io::Error),
    #[error("failed to start a thread: {0}")]
    Thread(io::Error),
}

impl StartError {
    /// How the attempt ends: the task's own fault, or the bot's.
    pub(crate) fn run_end(&self) -> RunEnd {
        let reason = self.to_string();
        match self {
            StartError::EmptyCommand | StartError::BadEnvKey(_) | StartError::Path(_) => RunEnd::ClientError(reason),
            StartError::Spawn { source, .. } if is_task_fault(source) => RunEnd::ClientError(reason),
            // A fresh work directory only refuses a name the task chose badly.
            StartError::CreateCwd { source, .. } if source.kind() == io::ErrorKind::InvalidFilename => {
                RunEnd::ClientError(reason)
            }
            StartError::Spawn { .. } | StartError::CreateCwd { .. } | StartError::Pipe(_) | StartError::Thread(_) => {
                RunEnd::InternalError(reason)
            }
        }
    }
}

/// Spawn errors that the task's request caused (rerunning it would fail again),
/// as opposed to the host running out of something.
fn is_task_fault(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(error.kind(), NotFound | PermissionDenied | InvalidInput | NotADirectory | IsADirectory | InvalidFilename)
        || matches!(error.raw_os_error(), Some(libc::ENOEXEC | libc::E2BIG | libc::ELOOP | libc::ETXTBSY))
}

/// A task that ended: how, and the output the daemon has not acknowledged yet.
#[derive(Debug)]
pub(crate) struct FinishedTask {
    pub(crate) outcome: RunOutcome,
    pub(crate) output: OutputBuffer,
}

impl FinishedTask {
    /// A task whose command never ran.
    pub(crate) fn not_started(end: RunEnd) -> FinishedTask {
        let mut output = OutputBuffer::new(2);
        output.close();
        let outcome = RunOutcome { exit_code: None, duration_ms: 0, end, ..RunOutcome::default() };
        FinishedTask { outcome, output }
    }
}

/// What the threads of one task share.
struct Shared {
    state: Mutex<State>,
    /// Notified when the command exits, the pipe closes, a stop is requested, the
    /// outcome is recorded, or the held output reaches `State::wake_at_held_bytes`.
    changed: Condvar,
}

struct State {
    output: OutputBuffer,
    last_output_at: Instant,
    /// The reader is notifying waiters once this much output is held.
    wake_at_held_bytes: usize,
    reader_done: bool,
    /// The supervisor stopped waiting for the reader; it must not append any more.
    reader_abandoned: bool,
    /// The command exited (it may not be reaped yet).
    command_exited: bool,
    stop_request: Option<RunEnd>,
    outcome: Option<RunOutcome>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("a task thread panicked while holding the task state")
    }
}

pub(crate) struct RunningTask {
    shared: Arc<Shared>,
    pid: u32,
    started_at: Instant,
    supervisor: Option<JoinHandle<()>>,
}

impl RunningTask {
    pub(crate) fn start(spec: &TaskSpec<'_>) -> Result<RunningTask, StartError> {
        let properties = spec.properties;
        let (program, arguments) = properties.command.split_first().ok_or(StartError::EmptyCommand)?;
        let cwd = workdir::join_inside(spec.work_dir, "relative_cwd", &properties.relative_cwd)?;
        let environment = task_environment(spec)?;
        fs::create_dir_all(&cwd).map_err(|source| StartError::CreateCwd { path: cwd.clone(), source })?;
        let (pipe_reader, pipe_writer) = io::pipe().map_err(StartError::Pipe)?;
        let stderr_writer = pipe_writer.try_clone().map_err(StartError::Pipe)?;

        let mut command = Command::new(substitute_placeholders(program, spec));
        command.args(arguments.iter().map(|argument| substitute_placeholders(argument, spec)));
        command.current_dir(&cwd).stdin(Stdio::null()).stdout(pipe_writer).stderr(stderr_writer);
        command.process_group(0);
        for (key, value) in &environment {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        // The command's time counts from before the spawn: by the time `spawn` returns, the
        // program has already been running since its exec.
        let started_at = Instant::now();
        let spawned = command.spawn();
        // The command holds the parent's copies of the write end: drop them now, or the
        // pipe would never reach end-of-file.
        drop(command);
        let child = spawned.map_err(|source| StartError::Spawn { program: program.clone(), source })?;
        let pid = child.id();

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                output: OutputBuffer::new(spec.output_capacity_bytes),
                last_output_at: started_at,
                wake_at_held_bytes: usize::MAX,
                reader_done: false,
                reader_abandoned: false,
                command_exited: false,
                stop_request: None,
                outcome: None,
            }),
            changed: Condvar::new(),
        });
        let supervisor = Supervisor {
            shared: Arc::clone(&shared),
            child,
            pid,
            started_at,
            hard_deadline: deadline_after(started_at, properties.execution_timeout_secs),
            io_timeout: (properties.io_timeout_secs > 0).then(|| secs(properties.io_timeout_secs)),
            grace_period: secs(properties.grace_period_secs),
        };
        let reader_shared = Arc::clone(&shared);
        let reader = thread::Builder::new()
            .name(format!("output-{}", format_task_id(spec.run_id)))
            .spawn(move || read_output(&reader_shared, pipe_reader));
        if let Err(error) = reader {
            supervisor.abort();
            return Err(StartError::Thread(error));
        }
        // If this spawn fails the closure, and so the `Child`, is gone: the group is
        // killed, and the unreaped command stays a zombie until the bot exits.
        let supervisor = thread::Builder::new()
            .name(format!("supervise-{}", format_task_id(spec.run_id)))
            .spawn(move || supervisor.run())
            .map_err(|error| {
                let _ = signals::signal_process_group(pid, GroupSignal::Kill);
                StartError::Thread(error)
            })?;
        Ok(RunningTask { shared, pid, started_at, supervisor: Some(supervisor) })
    }

    /// The command's pid, which is also its process group id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// When the command's time began: just before its spawn.
    pub(crate) fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Asks the supervisor to stop the command. The first reason wins; once the
    /// command is being stopped or has ended, later requests change nothing.
    pub(crate) fn stop(&self, end: RunEnd) {
        let mut state = self.shared.lock();
        if state.outcome.is_none() && state.stop_request.is_none() {
            state.stop_request = Some(end);
            self.shared.changed.notify_all();
        }
    }

    /// Waits until the task has ended, at least `held_bytes` of output are held, or
    /// `timeout` has passed, whichever comes first.
    pub(crate) fn wait(&self, timeout: Duration, held_bytes: usize) {
        let mut state = self.shared.lock();
        state.wake_at_held_bytes = held_bytes;
        let (mut state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |state| state.outcome.is_none() && state.output.held_len() < held_bytes)
            .expect("a task thread panicked while holding the task state");
        state.wake_at_held_bytes = usize::MAX;
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.shared.lock().outcome.is_some()
    }

    pub(crate) fn held_output_len(&self) -> usize {
        self.shared.lock().output.held_len()
    }

    /// The next update's output: its offset and up to `max_bytes` bytes.
    pub(crate) fn peek_output(&self, max_bytes: usize) -> (u64, Vec<u8>) {
        self.shared.lock().output.peek(max_bytes)
    }

    pub(crate) fn acknowledge_output(&self, output_len: u64) -> Acknowledged {
        self.shared.lock().output.acknowledge(output_len)
    }

    /// Waits for the task to end and hands over its outcome and unacknowledged output.
    pub(crate) fn finish(mut self) -> FinishedTask {
        self.join_supervisor();
        let mut state = self.shared.lock();
        let outcome = state.outcome.take().expect("the supervisor records the outcome before it returns");
        let output = std::mem::replace(&mut state.output, OutputBuffer::new(2));
        FinishedTask { outcome, output }
    }

    fn join_supervisor(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.join().expect("the task supervisor panicked");
        }
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        if self.supervisor.is_some() {
            self.stop(RunEnd::InternalError("the bot abandoned the task".to_string()));
            self.join_supervisor();
        }
    }
}

fn secs(seconds: u32) -> Duration {
    Duration::from_secs(u64::from(seconds))
}

/// Zero means no limit (the daemon refuses zero; the bot does not invent one).
fn deadline_after(start: Instant, seconds: u32) -> Option<Instant> {
    (seconds > 0).then(|| start + secs(seconds))
}

/// The changes to the bot's environment for this task, in the order applied:
/// `Some(value)` sets a variable, `None` removes it.
pub(crate) fn task_environment(spec: &TaskSpec<'_>) -> Result<BTreeMap<String, Option<OsString>>, StartError> {
    let properties = spec.properties;
    let mut environment: BTreeMap<String, Option<OsString>> = BTreeMap::new();
    for pair in &properties.env {
        check_env_key(&pair.key)?;
        let value = (!pair.value.is_empty()).then(|| substitute_placeholders(&pair.value, spec));
        environment.insert(pair.key.clone(), value);
    }
    for prefix in &properties.env_prefixes {
        check_env_key(&prefix.key)?;
        let current = match environment.get(&prefix.key) {
            Some(value) => value.clone(),
            None => std::env::var_os(&prefix.key),
        };
        let mut parts = Vec::new();
        for relative in &prefix.value {
            parts.push(workdir::join_inside(spec.work_dir, "env_prefixes", relative)?.into_os_string());
        }
        parts.extend(current.filter(|value| !value.is_empty()));
        environment.insert(prefix.key.clone(), Some(join_with_colons(&parts)));
    }
    let task_id = format_task_id(spec.run_id);
    for (name, value) in [
        ("APIARY_TASK_ID", OsString::from(&task_id)),
        ("APIARY_BOT_ID", spec.bot_id.into()),
        ("APIARY_SERVER", spec.server.into()),
        ("APIARY_OUTDIR", spec.out_dir.into()),
        // Swarming's names, for scripts written for it.
        ("SWARMING_TASK_ID", task_id.into()),
        ("SWARMING_BOT_ID", spec.bot_id.into()),
        ("SWARMING_SERVER", spec.server.into()),
        ("SWARMING_HEADLESS", "1".into()),
    ] {
        environment.insert(name.to_string(), Some(value));
    }
    // Removed when there is no secret, so a bot run inside a task does not pass its own on.
    environment.insert("APIARY_SECRET_BYTES_PATH".to_string(), spec.secret_path.map(OsString::from));
    // systemd speaks to the bot alone: a task must not report readiness or feed
    // the watchdog in its name (unless the task's request sets them itself).
    for variable in apiary_systemd::SERVICE_MANAGER_VARIABLES {
        environment.entry(variable.to_string()).or_insert(None);
    }
    Ok(environment)
}

/// `text` (a command's element or an `env` value) with its placeholders replaced,
/// as Swarming's `run_isolated` does.
fn substitute_placeholders(text: &str, spec: &TaskSpec<'_>) -> OsString {
    placeholders::substitute(text, |placeholder| match placeholder {
        Placeholder::OutDir => spec.out_dir.into(),
        Placeholder::ExecutableSuffix => placeholders::EXECUTABLE_SUFFIX.into(),
        Placeholder::BotFile => spec.bot_file.into(),
    })
}

fn check_env_key(key: &str) -> Result<(), StartError> {
    if key.is_empty() || key.contains(['=', '\0']) {
        return Err(StartError::BadEnvKey(key.to_string()));
    }
    Ok(())
}

fn join_with_colons(parts: &[OsString]) -> OsString {
    let mut joined = OsString::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            joined.push(":");
        }
        joined.push(part);
    }
    joined
}

/// The reader thread: copies the pipe into the buffer until end-of-file, or until
/// the supervisor stops waiting for it.
fn read_output(shared: &Shared, mut pipe: PipeReader) {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let read = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut state = shared.lock();
        if state.reader_abandoned {
            return;
        }
        state.output.append(&chunk[..read]);
        state.last_output_at = Instant::now();
        if state.output.held_len() >= state.wake_at_held_bytes {
            shared.changed.notify_all();
        }
    }
    shared.lock().reader_done = true;
    shared.changed.notify_all();
}

/// Owns the command's `Child` and decides when and how it is stopped.
struct Supervisor {
    shared: Arc<Shared>,
    child: Child,
    pid: u32,
    started_at: Instant,
    hard_deadline: Option<Instant>,
    io_timeout: Option<Duration>,
    grace_period: Duration,
}

/// Where the termination dance is.
#[derive(Debug)]
enum Stopping {
    No,
    /// SIGTERM sent; SIGKILL follows at `kill_at`.
    Terminated {
        end: RunEnd,
        kill_at: Instant,
    },
    /// SIGKILL sent; the command's exit is near.
    Killed {
        end: RunEnd,
    },
}

impl Supervisor {
    fn run(mut self) {
        let waiter = {
            let shared = Arc::clone(&self.shared);
            let pid = self.pid;
            thread::Builder::new().name(format!("wait-{pid}")).spawn(move || {
                // An error here (there is none for a child of ours) is handled like an
                // exit: the supervisor's reaping reports it.
                let _ = signals::wait_for_exit_without_reaping(pid);
                shared.lock().command_exited = true;
                shared.changed.notify_all();
            })
        };
        let stopping = match waiter {
            Ok(_) => self.supervise_until_exit(),
            Err(error) => {
                self.signal_group(GroupSignal::Kill);
                Stopping::Killed { end: RunEnd::InternalError(format!("failed to start a thread: {error}")) }
            }
        };
        // The command has exited but is not reaped, so its group id is still ours:
        // kill whatever is left of the group, then reap.
        self.signal_group(GroupSignal::Kill);
        let status = self.child.wait();
        let duration_ms = u64::try_from(self.started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut state = self.drain_output();
        let end = match stopping {
            Stopping::No => RunEnd::Exited,
            Stopping::Terminated { end, .. } | Stopping::Killed { end } => end,
        };
        state.outcome = Some(outcome(status, duration_ms, end));
        self.shared.changed.notify_all();
    }

    /// Enforces timeouts and stop requests until the command exits.
    fn supervise_until_exit(&mut self) -> Stopping {
        let mut stopping = Stopping::No;
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        while !state.command_exited {
            let now = Instant::now();
            let io_deadline = self.io_timeout.map(|timeout| state.last_output_at + timeout);
            stopping = match stopping {
                Stopping::No => match self.reason_to_stop(&mut state, now, io_deadline) {
                    Some(end) => {
                        self.signal_group(GroupSignal::Terminate);
                        Stopping::Terminated { end, kill_at: now + self.grace_period }
                    }
                    None => Stopping::No,
                },
                Stopping::Terminated { end, kill_at } if now >= kill_at => {
                    self.signal_group(GroupSignal::Kill);
                    Stopping::Killed { end }
                }
                other => other,
            };
            let wake_at = match &stopping {
                Stopping::No => [self.hard_deadline, io_deadline].into_iter().flatten().min(),
                Stopping::Terminated { kill_at, .. } => Some(*kill_at),
                Stopping::Killed { .. } => None,
            };
            state = match wake_at {
                Some(wake_at) => {
                    let timeout = wake_at.saturating_duration_since(now);
                    shared.changed.wait_timeout(state, timeout).expect("task state lock poisoned").0
                }
                None => shared.changed.wait(state).expect("task state lock poisoned"),
            };
        }
        stopping
    }

    fn reason_to_stop(&self, state: &mut State, now: Instant, io_deadline: Option<Instant>) -> Option<RunEnd> {
        if let Some(end) = state.stop_request.take() {
            return Some(end);
        }
        if self.hard_deadline.is_some_and(|deadline| now >= deadline) {
            return Some(RunEnd::HardTimeout);
        }
        if io_deadline.is_some_and(|deadline| now >= deadline) {
            return Some(RunEnd::IoTimeout);
        }
        None
    }

    /// Waits a short time for the pipe's end-of-file, then closes the buffer.
    fn drain_output(&self) -> MutexGuard<'_, State> {
        let state = self.shared.lock();
        let (mut state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, DRAIN_TIMEOUT, |state| !state.reader_done)
            .expect("task state lock poisoned");
        state.reader_abandoned = true;
        state.output.close();
        state
    }

    fn signal_group(&mut self, signal: GroupSignal) {
        if signals::signal_process_group(self.pid, signal).is_err() {
            // Only EPERM is possible for our own child's group; the direct child at
            // least can still be killed.
            let _ = self.child.kill();
        }
    }

    /// Kills and reaps a command whose supervision could not start.
    fn abort(mut self) {
        self.signal_group(GroupSignal::Kill);
        let _ = self.child.wait();
    }
}

fn outcome(status: io::Result<ExitStatus>, duration_ms: u64, end: RunEnd) -> RunOutcome {
    match status {
        Ok(status) => RunOutcome {
            exit_code: Some(status.code().map_or(-1, i64::from)),
            duration_ms,
            // The session measures these around the command.
            end,
            ..RunOutcome::default()
        },
        Err(error) => RunOutcome {
            exit_code: None,
            duration_ms,
            end: RunEnd::InternalError(format!("failed to wait for the command: {error}")),
            ..RunOutcome::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use apiary_protocol::{StringListPair, StringPair};

    use super::*;

    const RUN_ID: u64 = 0x1231;

    fn properties(command: &[&str]) -> TaskProperties {
        TaskProperties {
            command: command.iter().map(|part| part.to_string()).collect(),
            execution_timeout_secs: 60,
            grace_period_secs: 30,
            ..TaskProperties::default()
        }
    }

    fn spec<'a>(properties: &'a TaskProperties, work_dir: &'a Path) -> TaskSpec<'a> {
        TaskSpec {
            run_id: RUN_ID,
            properties,
            work_dir,
            out_dir: Path::new("/nonexistent/apiary-out"),
            secret_path: None,
            bot_file: Path::new("/nonexistent/bot_file.json"),
            bot_id: "bot1",
            server: "daemon:1",
            output_capacity_bytes: 4 << 20,
        }
    }

    fn start(properties: &TaskProperties, work_dir: &Path) -> RunningTask {
        RunningTask::start(&spec(properties, work_dir)).expect("the command starts")
    }

    /// Runs a command to its end; returns its outcome and its whole output.
    fn run(properties: &TaskProperties) -> (RunOutcome, String) {
        let work_dir = tempfile::tempdir().unwrap();
        finish(start(properties, work_dir.path()))
    }

    fn finish(task: RunningTask) -> (RunOutcome, String) {
        let finished = task.finish();
        let (offset, bytes) = finished.output.peek(usize::MAX);
        assert_eq!(offset, 0);
        (finished.outcome, String::from_utf8(bytes).unwrap())
    }

    /// Waits (at most 10 s, which only a broken test reaches) until the output contains `needle`.
    fn wait_for_output(task: &RunningTask, needle: &str) {
        let give_up_at = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, bytes) = task.peek_output(usize::MAX);
            if String::from_utf8_lossy(&bytes).contains(needle) {
                return;
            }
            assert!(Instant::now() < give_up_at, "no {needle:?} in the output: {:?}", String::from_utf8_lossy(&bytes));
            task.wait(Duration::from_millis(50), bytes.len() + 1);
        }
    }

    fn read_pid(path: &Path) -> u32 {
        fs::read_to_string(path).unwrap().trim().parse().unwrap()
    }

    /// Alive and not a zombie (a killed orphan may wait a while for its reaper).
    fn is_alive(pid: u32) -> bool {
        if !signals::process_exists(pid) {
            return false;
        }
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    /// Gives a killed process up to 2 s to be gone.
    fn is_gone_soon(pid: u32) -> bool {
        let give_up_at = Instant::now() + Duration::from_secs(2);
        while is_alive(pid) {
            if Instant::now() >= give_up_at {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }

    #[test]
    fn stdout_and_stderr_are_merged_in_order() {
        let (outcome, output) = run(&properties(&["sh", "-c", "echo out; echo err >&2; echo out2"]));
        assert_eq!(output, "out\nerr\nout2\n");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(outcome.end, RunEnd::Exited);
    }

    #[test]
    fn exit_codes_are_reported() {
        assert_eq!(run(&properties(&["true"])).0.exit_code, Some(0));
        let (outcome, _) = run(&properties(&["sh", "-c", "exit 3"]));
        assert_eq!((outcome.exit_code, outcome.end), (Some(3), RunEnd::Exited));
    }

    #[test]
    fn large_output_is_complete() {
        let (outcome, output) = run(&properties(&["head", "-c", "1000000", "/dev/zero"]));
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(output.len(), 1_000_000);
    }

    #[test]
    fn a_missing_executable_is_a_client_error() {
        let work_dir = tempfile::tempdir().unwrap();
        let properties = properties(&["/nonexistent/apiary-test-command"]);
        let error = RunningTask::start(&spec(&properties, work_dir.path())).err().expect("start fails");
        assert!(matches!(error.run_end(), RunEnd::ClientError(reason) if reason.contains("apiary-test-command")));
        let error = RunningTask::start(&spec(&TaskProperties::default(), work_dir.path())).err().expect("start fails");
        assert!(matches!(error.run_end(), RunEnd::ClientError(_)));
    }

    #[test]
    fn environment_is_set_removed_and_prefixed() {
        let removed = std::env::vars().map(|(key, _)| key).find(|key| key != "PATH").expect("the test has an env");
        let mut properties = properties(&["env"]);
        properties.env = vec![StringPair::new("APIARY_TEST_SET", "set value"), StringPair::new(&removed, "")];
        properties.env_prefixes = vec![
            StringListPair { key: "PATH".to_string(), value: vec!["bin".to_string(), "tools/bin".to_string()] },
            StringListPair { key: "APIARY_TEST_PATHS".to_string(), value: vec!["a".to_string()] },
        ];
        let work_dir = tempfile::tempdir().unwrap();
        let (outcome, output) = finish(start(&properties, work_dir.path()));
        assert_eq!(outcome.exit_code, Some(0), "{output}");
        let lines: Vec<&str> = output.lines().collect();
        let dir = work_dir.path().display();
        assert!(lines.contains(&"APIARY_TEST_SET=set value"));
        assert!(!lines.iter().any(|line| line.starts_with(&format!("{removed}="))));
        let bot_path = std::env::var("PATH").unwrap();
        assert!(lines.contains(&format!("PATH={dir}/bin:{dir}/tools/bin:{bot_path}").as_str()));
        assert!(lines.contains(&format!("APIARY_TEST_PATHS={dir}/a").as_str()));
        assert!(lines.contains(&"APIARY_TASK_ID=0000000000001231"));
        assert!(lines.contains(&"APIARY_BOT_ID=bot1"));
        assert!(lines.contains(&"APIARY_SERVER=daemon:1"));
        assert!(lines.contains(&"APIARY_OUTDIR=/nonexistent/apiary-out"));
        assert!(lines.contains(&"SWARMING_TASK_ID=0000000000001231"));
        assert!(lines.contains(&"SWARMING_BOT_ID=bot1"));
        assert!(lines.contains(&"SWARMING_SERVER=daemon:1"));
        assert!(lines.contains(&"SWARMING_HEADLESS=1"));
        assert!(!lines.iter().any(|line| line.starts_with("APIARY_SECRET_BYTES_PATH=")));
    }

    #[test]
    fn placeholders_are_replaced_in_arguments_and_env_values() {
        let work_dir = tempfile::tempdir().unwrap();
        let out_dir = work_dir.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        let mut properties = properties(&[
            "sh",
            "-c",
            "echo \"$1\"; echo \"$APIARY_OUTDIR\"; echo \"$RESULTS\"",
            "sh",
            "${APIARY_OUTDIR}/a:${ISOLATED_OUTDIR}|tool${EXECUTABLE_SUFFIX}|${SWARMING_BOT_FILE}|${HOME}",
        ]);
        properties.env = vec![StringPair::new("RESULTS", "${ISOLATED_OUTDIR}/results.json")];
        let spec = TaskSpec { out_dir: &out_dir, ..spec(&properties, work_dir.path()) };
        let (outcome, output) = finish(RunningTask::start(&spec).unwrap());
        assert_eq!(outcome.exit_code, Some(0), "{output}");
        let out = out_dir.display();
        let bot_file = spec.bot_file.display();
        assert_eq!(output, format!("{out}/a:{out}|tool|{bot_file}|${{HOME}}\n{out}\n{out}/results.json\n"));
    }

    #[test]
    fn a_flood_of_output_is_bounded() {
        // Nobody acknowledges: the buffer keeps its capacity's worth and counts the rest.
        let work_dir = tempfile::tempdir().unwrap();
        let properties = properties(&["head", "-c", "20000000", "/dev/zero"]);
        let spec = TaskSpec { output_capacity_bytes: 64 << 10, ..spec(&properties, work_dir.path()) };
        let finished = RunningTask::start(&spec).unwrap().finish();
        assert_eq!((finished.outcome.exit_code, finished.outcome.end), (Some(0), RunEnd::Exited));
        let (_, held) = finished.output.peek(usize::MAX);
        let marker = crate::output::lost_output_marker(20_000_000 - (64 << 10));
        assert_eq!(held.len(), (64 << 10) + marker.len());
        assert!(held.ends_with(marker.as_bytes()));
    }

    #[test]
    fn paths_outside_the_work_dir_are_refused() {
        let work_dir = tempfile::tempdir().unwrap();
        let mut properties = properties(&["true"]);
        properties.relative_cwd = "../elsewhere".to_string();
        let error = RunningTask::start(&spec(&properties, work_dir.path())).err().expect("refused");
        assert!(matches!(error.run_end(), RunEnd::ClientError(_)));
        properties.relative_cwd = "/tmp".to_string();
        assert!(RunningTask::start(&spec(&properties, work_dir.path())).is_err());
        properties.relative_cwd = String::new();
        properties.env_prefixes = vec![StringListPair { key: "PATH".to_string(), value: vec!["a/../..".to_string()] }];
        let error = RunningTask::start(&spec(&properties, work_dir.path())).err().expect("refused");
        assert!(matches!(error.run_end(), RunEnd::ClientError(_)));
    }

    #[test]
    fn relative_cwd_is_created_and_used() {
        let work_dir = tempfile::tempdir().unwrap();
        let mut properties = properties(&["pwd", "-P"]);
        properties.relative_cwd = "sub/dir".to_string();
        let (outcome, output) = finish(start(&properties, work_dir.path()));
        assert_eq!(outcome.exit_code, Some(0));
        let expected = work_dir.path().join("sub/dir").canonicalize().unwrap();
        assert_eq!(output.trim_end(), expected.to_str().unwrap());
    }

    #[test]
    fn hard_timeout_kills_the_command() {
        let mut properties = properties(&["sleep", "30"]);
        properties.execution_timeout_secs = 1;
        let (outcome, _) = run(&properties);
        assert_eq!((outcome.exit_code, outcome.end), (Some(-1), RunEnd::HardTimeout));
    }

    #[test]
    fn io_timeout_kills_a_silent_command() {
        let mut properties = properties(&["sh", "-c", "echo hi; exec sleep 30"]);
        properties.io_timeout_secs = 1;
        let (outcome, output) = run(&properties);
        assert_eq!(output, "hi\n");
        assert_eq!((outcome.exit_code, outcome.end), (Some(-1), RunEnd::IoTimeout));
    }

    #[test]
    fn a_command_that_handles_sigterm_exits_in_the_grace_period() {
        let script = "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.1; done";
        let work_dir = tempfile::tempdir().unwrap();
        let task = start(&properties(&["sh", "-c", script]), work_dir.path());
        wait_for_output(&task, "ready");
        task.stop(RunEnd::Killed);
        task.stop(RunEnd::HardTimeout);
        let (outcome, output) = finish(task);
        // The shell may also say its `sleep` was terminated.
        assert!(output.starts_with("ready\n") && output.ends_with("got-term\n"), "{output}");
        assert_eq!((outcome.exit_code, outcome.end), (Some(0), RunEnd::Killed));
    }

    #[test]
    fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let mut properties = properties(&["sh", "-c", "trap '' TERM; echo ready; sleep 30"]);
        properties.grace_period_secs = 1;
        let work_dir = tempfile::tempdir().unwrap();
        let task = start(&properties, work_dir.path());
        wait_for_output(&task, "ready");
        let stopped_at = Instant::now();
        task.stop(RunEnd::Killed);
        let (outcome, _) = finish(task);
        assert_eq!((outcome.exit_code, outcome.end), (Some(-1), RunEnd::Killed));
        assert!(stopped_at.elapsed() >= Duration::from_secs(1), "SIGKILL before the grace period ended");
    }

    #[test]
    fn grandchildren_do_not_survive_a_stop() {
        let script = "sleep 100 & echo $! > grandchild.pid; echo ready; sleep 100";
        let work_dir = tempfile::tempdir().unwrap();
        let task = start(&properties(&["sh", "-c", script]), work_dir.path());
        wait_for_output(&task, "ready");
        let grandchild = read_pid(&work_dir.path().join("grandchild.pid"));
        assert!(is_alive(grandchild));
        task.stop(RunEnd::Killed);
        let (outcome, _) = finish(task);
        assert_eq!(outcome.end, RunEnd::Killed);
        assert!(is_gone_soon(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn a_grandchild_ignoring_sigterm_dies_when_the_command_exits() {
        // The grandchild holds the pipe and ignores SIGTERM; the command dies at
        // once. Neither the grace period nor the grandchild's sleep is waited for.
        // Either line may come first: the pid is read once both are out.
        let script = "sh -c \"trap '' TERM; echo inner-ready; exec sleep 100\" & echo $! > grandchild.pid; echo pid-written; wait";
        let work_dir = tempfile::tempdir().unwrap();
        let task = start(&properties(&["sh", "-c", script]), work_dir.path());
        wait_for_output(&task, "inner-ready");
        wait_for_output(&task, "pid-written");
        let grandchild = read_pid(&work_dir.path().join("grandchild.pid"));
        task.stop(RunEnd::Killed);
        let (outcome, _) = finish(task);
        assert_eq!((outcome.exit_code, outcome.end), (Some(-1), RunEnd::Killed));
        assert!(is_gone_soon(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn a_background_grandchild_is_killed_when_the_command_exits() {
        let work_dir = tempfile::tempdir().unwrap();
        let task =
            start(&properties(&["sh", "-c", "sleep 100 & echo $! > grandchild.pid; echo done"]), work_dir.path());
        let (outcome, output) = finish(task);
        assert_eq!((outcome.exit_code, outcome.end, output.as_str()), (Some(0), RunEnd::Exited, "done\n"));
        let grandchild = read_pid(&work_dir.path().join("grandchild.pid"));
        assert!(is_gone_soon(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn a_process_that_left_the_group_does_not_hang_the_bot() {
        let script = "setsid sleep 5 & echo $! > escaped.pid; echo done";
        let work_dir = tempfile::tempdir().unwrap();
        let task = start(&properties(&["sh", "-c", script]), work_dir.path());
        let (outcome, output) = finish(task);
        assert_eq!((outcome.exit_code, output.as_str()), (Some(0), "done\n"));
        let escaped = read_pid(&work_dir.path().join("escaped.pid"));
        let _ = Command::new("kill").arg("-KILL").arg(escaped.to_string()).status();
    }

    #[test]
    fn a_task_does_not_inherit_the_service_managers_variables() {
        let work_dir = tempfile::tempdir().unwrap();
        let mut properties = properties(&["true"]);
        properties.env = vec![StringPair::new("WATCHDOG_USEC", "5")];
        let environment = task_environment(&spec(&properties, work_dir.path())).unwrap();
        assert_eq!(environment["NOTIFY_SOCKET"], None, "removed from what the bot passes on");
        assert_eq!(environment["WATCHDOG_PID"], None);
        assert_eq!(environment["WATCHDOG_USEC"], Some(OsString::from("5")), "a task's own value stays");
    }

    #[test]
    fn dropping_a_task_stops_its_command() {
        let work_dir = tempfile::tempdir().unwrap();
        let task = start(&properties(&["sleep", "30"]), work_dir.path());
        let pid = task.pid();
        drop(task);
        assert!(!is_alive(pid));
    }
}

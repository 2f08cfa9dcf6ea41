//! A harness for end-to-end tests: starts the real `apiaryd`, `apiary-bot` and
//! `apiary` binaries on free ports and temporary directories; `pki` makes the
//! certificate authorities of the TLS tests; `browser` drives a headless
//! Chromium for the web UI's tests.
//!
//! The binaries come from the same target directory as the test; `cargo test
//! --workspace` builds them, since each binary crate has integration tests.

pub mod browser;
pub mod http;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: a loaded 2-core machine can be slow; nothing here measures time.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A temporary directory for one test, removed when dropped.
pub fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test knows its path");
    let profile_dir = test_exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The message of a daemon's log line: what follows `apiaryd: ` (after the
/// time and the level; a line about a connection goes on with `peer=ADDR `).
pub fn message(line: &str) -> Option<&str> {
    line.split_once("apiaryd: ").map(|(_, message)| message)
}

/// Collects a child's stderr lines so tests can wait for and search them.
#[derive(Clone, Default)]
pub struct LogLines(Arc<Mutex<Vec<String>>>);

impl LogLines {
    /// Collects the lines of `stderr`, echoing each with the prefix.
    pub fn follow(&self, stderr: impl std::io::Read + Send + 'static, echo_prefix: &'static str) {
        let lines = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{echo_prefix}] {line}");
                lines.0.lock().unwrap().push(line);
            }
        });
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `find`, returning what it found.
    pub fn wait_for<T>(&self, what: &str, mut find: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = self.0.lock().unwrap().iter().find_map(|line| find(line)) {
                return found;
            }
            assert!(Instant::now() < deadline, "gave up waiting for {what}; log: {:#?}", self.all());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: LogLines,
    /// The flags it was started with beyond the address and data directory.
    extra_args: Vec<String>,
}

impl Daemon {
    /// Starts `apiaryd` on a free port with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> Daemon {
        Daemon::start_with(data_dir, "127.0.0.1:0", &[])
    }

    pub fn start_with(data_dir: &Path, listen: &str, extra_args: &[&str]) -> Daemon {
        let mut daemon = Daemon::start_command(daemon_command(data_dir, listen, extra_args), data_dir);
        daemon.extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
        daemon
    }

    /// Starts `apiaryd` from a command the test made (`binary("apiaryd")` with its
    /// own flags, environment and directory), following its stderr, which must be
    /// piped; `data_dir` is where the test expects its data.
    pub fn start_command(mut command: Command, data_dir: &Path) -> Daemon {
        let mut child = command.spawn().expect("start apiaryd");
        let log = LogLines::default();
        log.follow(child.stderr.take().expect("stderr is piped"), "apiaryd");
        let addr = log.wait_for("apiaryd to listen", |line| {
            let rest = message(line)?.strip_prefix("listening on ")?;
            Some(rest.split_whitespace().next()?.to_string())
        });
        Daemon { child: Some(child), addr, data_dir: data_dir.to_path_buf(), log, extra_args: Vec::new() }
    }

    /// Runs `apiaryd` on `data_dir` where it must refuse to start: returns its
    /// exit status and everything it wrote to stderr.
    pub fn start_refused(data_dir: &Path, extra_args: &[&str]) -> (std::process::ExitStatus, String) {
        Daemon::start_refused_on(data_dir, "127.0.0.1:0", extra_args)
    }

    /// As `start_refused`, listening on `listen`.
    pub fn start_refused_on(data_dir: &Path, listen: &str, extra_args: &[&str]) -> (std::process::ExitStatus, String) {
        let mut child = daemon_command(data_dir, listen, extra_args).spawn().expect("start apiaryd");
        let log = LogLines::default();
        log.follow(child.stderr.take().unwrap(), "apiaryd");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for apiaryd") {
                // Let the reader thread take the last lines.
                thread::sleep(Duration::from_millis(100));
                return (status, log.all().join("\n"));
            }
            if Instant::now() > deadline || log.all().iter().any(|line| line.contains("listening on")) {
                let _ = child.kill();
                panic!("apiaryd started where it should have refused: {:#?}", log.all());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill apiaryd");
        child.wait().expect("reap apiaryd");
    }

    /// SIGTERM and wait: returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        send_signal(child.id(), libc::SIGTERM);
        child.wait().expect("reap apiaryd")
    }

    /// Starts a new daemon on the same data directory and address, so bots
    /// find it where they left it.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        let extra_args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        *self = Daemon::start_with(&self.data_dir, &self.addr.clone(), &extra_args);
    }

    pub fn cli(&self) -> Cli {
        Cli { addr: self.addr.clone(), token_file: None, ca_file: None }
    }

    /// The command line with `--token-file token_file`.
    pub fn cli_with_token(&self, token_file: &Path) -> Cli {
        Cli { addr: self.addr.clone(), token_file: Some(token_file.to_path_buf()), ca_file: None }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn daemon_command(data_dir: &Path, listen: &str, extra_args: &[&str]) -> Command {
    let mut command = Command::new(binary("apiaryd"));
    command
        .args(["--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|bytes| contains(&bytes, needle)) {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Whether the process runs: a zombie (dead, not yet reaped by whoever
/// inherited it) does not count.
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state letter follows the command name, which is in parentheses.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
}

/// Live processes whose command line names `dir`, but for those naming `except` (the
/// script under test, which names its scratch directory too): what a benchmark script
/// must not leave running.
pub fn processes_naming(dir: &Path, except: &str) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let command_line = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let command_line = String::from_utf8_lossy(&command_line).replace('\0', " ");
        if command_line.contains(&needle) && process_alive(pid) && !command_line.contains(except) {
            processes.push(format!("{pid}: {command_line}"));
        }
    }
    processes
}

pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill only sends a signal to the given process id.
    let result = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal})");
}

pub struct Bot {
    child: Option<Child>,
    pub log: LogLines,
}

impl Bot {
    /// Starts `apiary-bot` against `addr` with dimensions like `pool=ci`.
    pub fn start(addr: &str, bot_id: &str, dimensions: &[&str], work_dir: &Path) -> Bot {
        Bot::start_with(addr, bot_id, dimensions, work_dir, &[])
    }

    pub fn start_with(addr: &str, bot_id: &str, dimensions: &[&str], work_dir: &Path, extra: &[&str]) -> Bot {
        let mut command = Command::new(binary("apiary-bot"));
        command.args(["--server", addr, "--id", bot_id, "--work-dir"]).arg(work_dir);
        for dimension in dimensions {
            command.args(["--dimension", dimension]);
        }
        let mut child = command
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start apiary-bot");
        let log = LogLines::default();
        log.follow(child.stderr.take().unwrap(), "apiary-bot");
        let bot = Bot { child: Some(child), log };
        // Tasks triggered from here on can count on the bot as capacity. The
        // bot's own token (if any) serves to ask.
        let flag = |name: &str| extra.iter().position(|arg| *arg == name).map(|at| PathBuf::from(extra[at + 1]));
        let cli = Cli { addr: addr.to_string(), token_file: flag("--token-file"), ca_file: flag("--ca-file") };
        let deadline = Instant::now() + PATIENCE;
        while !cli.run(&["bots", "show", bot_id]).status.success() {
            assert!(Instant::now() < deadline, "bot {bot_id} never reached the daemon; log: {:#?}", bot.log.all());
            thread::sleep(Duration::from_millis(20));
        }
        bot
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the bot to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("query apiary-bot") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "apiary-bot did not exit");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `apiary` command line against one daemon.
pub struct Cli {
    pub addr: String,
    /// Given as `--token-file` to every command.
    pub token_file: Option<PathBuf>,
    /// Given as `--ca-file` to every command: speak TLS.
    pub ca_file: Option<PathBuf>,
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(binary("apiary"));
        command.args(["--server", &self.addr]);
        if let Some(token_file) = &self.token_file {
            command.arg("--token-file").arg(token_file);
        }
        if let Some(ca_file) = &self.ca_file {
            command.arg("--ca-file").arg(ca_file);
        }
        // A test run inside a task must not make its tasks that task's children.
        command.env_remove("SWARMING_TASK_ID").env_remove("APIARY_TASK_ID");
        command.args(args).stdin(Stdio::null()).output().expect("run apiary")
    }

    /// Runs and insists on exit code 0; returns stdout as text.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "apiary {args:?} failed: {}", describe(&output));
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    pub fn trigger(&self, args: &[&str]) -> String {
        let mut full = vec!["trigger"];
        full.extend_from_slice(args);
        let id = self.ok(&full).trim().to_string();
        assert_eq!(id.len(), 16, "a task id: {id:?}");
        id
    }

    pub fn show(&self, task_id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["tasks", "show", "--json", task_id])).expect("tasks show --json is JSON")
    }

    /// Polls `tasks show` until the task's state is `state` (no timing asserted).
    pub fn wait_for_state(&self, task_id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let shown = self.show(task_id);
            if shown["state"] == state {
                return shown;
            }
            assert!(Instant::now() < deadline, "task {task_id} never reached {state}: {shown}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `token_hash = "..."` line `apiaryd hash-token` prints for a token file.
pub fn token_hash_line(token_file: &Path) -> String {
    let output =
        Command::new(binary("apiaryd")).arg("hash-token").arg("--token-file").arg(token_file).output().unwrap();
    assert!(output.status.success(), "hash-token: {}", describe(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

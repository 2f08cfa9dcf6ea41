//! End-to-end: `apiaryd` and `apiary-bot` under systemd, as far as a test can
//! play systemd: what they send to the notification socket it names (READY=1,
//! STATUS=, WATCHDOG=1, STOPPING=1), and the state directory it gives them.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiary_tests::{Daemon, LogLines, PATIENCE, binary, describe, message, send_signal, temp};

/// The socket a service manager listens on, and every message it received.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("bind the notification socket");
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Notifications { socket, path: path.to_path_buf(), received: Vec::new() }
    }

    /// The first message, received so far or from now on, that `matches`.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut checked = 0;
        loop {
            if let Some(found) = self.received[checked..].iter().find(|message| matches(message)) {
                return found.clone();
            }
            checked = self.received.len();
            assert!(Instant::now() < deadline, "gave up waiting for {what}; received: {:#?}", self.received);
            let mut buffer = [0u8; 4096];
            if let Ok(len) = self.socket.recv(&mut buffer) {
                self.received.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
            }
        }
    }
}

/// A process the test started, killed if the test ends before it exits.
struct Running(Option<Child>);

impl Running {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        send_signal(child.id(), libc::SIGTERM);
        child.wait().expect("reap the process")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn apiaryd_under_systemd(dir: &Path, notifications: &Notifications, state_directory: &str) -> Command {
    let mut command = Command::new(binary("apiaryd"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("NOTIFY_SOCKET", &notifications.path)
        .env("STATE_DIRECTORY", state_directory)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn the_daemon_says_it_recovers_is_ready_feeds_the_watchdog_and_stops() {
    let dir = temp();
    let mut notifications = Notifications::bind(&dir.path().join("notify"));
    let state = dir.path().join("state");
    let state_directories = format!("{}:{}", state.display(), dir.path().join("other").display());
    let mut command = apiaryd_under_systemd(dir.path(), &notifications, &state_directories);
    command.env("WATCHDOG_USEC", "1000000");
    let mut daemon = Daemon::start_command(command, &state);

    let ready = notifications.wait_for("READY=1", |message| message.starts_with("READY=1"));
    assert_eq!(ready, "READY=1\nSTATUS=serving: 0 pending tasks, 0 bots, 0 connections");
    let first = &notifications.received[0];
    assert!(first.starts_with("STATUS=recovering: "), "the status says so while it recovers: {first:?}");
    // Ready means the listener accepts and the core answers.
    let counted = daemon.cli().ok(&["bots", "count", "--json"]);
    assert!(counted.contains("\"count\": 0"), "{counted}");

    notifications.wait_for("WATCHDOG=1", |message| message == "WATCHDOG=1");
    let listening = daemon
        .log
        .wait_for("the listening line", |line| message(line)?.strip_prefix("listening on ").map(str::to_string));
    assert!(listening.ends_with(&format!("with data in {}", state.display())), "{listening}");
    assert!(state.join("LOCK").exists() && state.join("wal").is_dir(), "the first state directory holds the data");
    assert!(!dir.path().join("other").exists() && !dir.path().join("apiary-data").exists());

    assert!(daemon.terminate().success());
    let stopping = notifications.wait_for("STOPPING=1", |message| message.starts_with("STOPPING=1"));
    assert_eq!(stopping, "STOPPING=1\nSTATUS=shutting down: making everything durable");
}

#[test]
fn a_data_dir_given_wins_over_the_state_directory_and_no_watchdog_is_fed_unasked() {
    let dir = temp();
    let mut notifications = Notifications::bind(&dir.path().join("notify"));
    let data = dir.path().join("data");
    let mut command =
        apiaryd_under_systemd(dir.path(), &notifications, &dir.path().join("state").display().to_string());
    command.arg("--data-dir").arg(&data);
    let mut daemon = Daemon::start_command(command, &data);
    notifications.wait_for("READY=1", |message| message.starts_with("READY=1"));
    assert!(data.join("LOCK").exists() && !dir.path().join("state").exists());
    assert!(daemon.terminate().success());
    notifications.wait_for("STOPPING=1", |message| message.starts_with("STOPPING=1"));
    assert!(
        !notifications.received.iter().any(|message| message == "WATCHDOG=1"),
        "without WATCHDOG_USEC: {:#?}",
        notifications.received
    );
}

#[test]
fn the_bot_is_ready_once_it_polls_works_in_its_state_directory_and_says_it_stops() {
    let dir = temp();
    let daemon = Daemon::start(&dir.path().join("data"));
    let mut notifications = Notifications::bind(&dir.path().join("notify"));
    let state = dir.path().join("bot-state");
    let mut command = Command::new(binary("apiary-bot"));
    command
        .args(["--server", &daemon.addr, "--id", "bot-1", "--dimension", "pool=ci"])
        .env("NOTIFY_SOCKET", &notifications.path)
        .env("STATE_DIRECTORY", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start apiary-bot");
    let log = LogLines::default();
    log.follow(child.stderr.take().unwrap(), "apiary-bot");
    let mut bot = Running(Some(child));

    let ready = notifications.wait_for("READY=1", |message| message.starts_with("READY=1"));
    assert_eq!(ready, format!("READY=1\nSTATUS=polling {} as bot-1", daemon.addr));
    let cli = daemon.cli();
    let task = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", "echo \"[$NOTIFY_SOCKET]\"; pwd"]);
    let collected = cli.run(&["collect", &task]);
    assert!(collected.status.success(), "{}", describe(&collected));
    let stdout = String::from_utf8_lossy(&collected.stdout).into_owned();
    let (socket, cwd) = stdout.split_once('\n').expect("two lines");
    assert_eq!(socket, "[]", "a task does not get the bot's notification socket");
    let state = state.canonicalize().expect("the bot made its state directory");
    assert!(Path::new(cwd.trim()).starts_with(&state), "the task ran in {cwd:?}, not under {}", state.display());

    assert!(bot.terminate().success(), "log: {:#?}", log.all());
    notifications.wait_for("STOPPING=1", |message| message.starts_with("STOPPING=1"));
}

/// The units in `deploy/systemd/`, with `ExecStart=` pointed at the binaries under
/// test, as `systemd-analyze verify` reads them (where systemd's tools are installed).
#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit files are not checked");
        return;
    };
    assert!(version.status.success(), "{}", describe(&version));
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = temp();
    let mut checked = Vec::new();
    for (unit, program) in [("apiaryd.service", "apiaryd"), ("apiary-bot.service", "apiary-bot")] {
        let text = std::fs::read_to_string(units.join(unit)).expect("the unit file");
        let installed = format!("/usr/local/bin/{program} ");
        assert!(text.contains(&installed), "{unit} starts {installed}");
        let under_test = text.replace(&installed, &format!("{} ", binary(program).display()));
        let path = dir.path().join(unit);
        std::fs::write(&path, under_test).unwrap();
        checked.push(path);
    }
    let verified = Command::new("systemd-analyze").arg("verify").args(&checked).output().unwrap();
    assert!(verified.status.success(), "{}", describe(&verified));
    assert!(verified.stderr.is_empty(), "no warnings: {}", describe(&verified));
}

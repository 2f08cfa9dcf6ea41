//! End-to-end: the lifecycle of the daemon's state (docs/state.md). Snapshots
//! bound the log and survive kill -9; the log is checked as a whole at start;
//! a damaged snapshot is never used silently; secret bytes leave the disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use apiary_tests::{Bot, Cli, Daemon, PATIENCE, files_containing, message, temp};

/// Snapshots every second, in small segments, so a test sees several of both.
const FAST_SNAPSHOTS: &[&str] = &["--snapshot-interval-secs", "1", "--wal-segment-bytes", "8192"];
/// No snapshot during the test, and a segment for every few tasks.
const NO_SNAPSHOTS: &[&str] = &["--snapshot-interval-secs", "86400", "--wal-segment-bytes", "4096"];

fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir).map(|entries| entries.flatten().map(|entry| entry.path()).collect()).unwrap_or_default();
    files.retain(|path| path.to_string_lossy().ends_with(suffix));
    files.sort();
    files
}

/// A daemon's log line for a snapshot it took.
fn is_snapshot_line(line: &str) -> bool {
    message(line).is_some_and(|message| message.starts_with("snapshot ")) && line.contains(" after record ")
}

fn snapshot_lines(daemon: &Daemon) -> usize {
    daemon.log.all().iter().filter(|line| is_snapshot_line(line)).count()
}

/// Waits until the daemon has written `count` more snapshots than `before`.
fn wait_for_snapshots(daemon: &Daemon, before: usize, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while snapshot_lines(daemon) < before + count {
        assert!(Instant::now() < deadline, "no snapshot came; log: {:#?}", daemon.log.all());
        thread::sleep(Duration::from_millis(50));
    }
}

/// Tasks that wait for a bot that never comes: each one a `TaskCreated` record.
fn pending_tasks(cli: &Cli, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| cli.trigger(&["--wait-for-capacity", "-d", "pool=none", "--name", &format!("t{n}"), "--", "true"]))
        .collect()
}

fn quick_tasks(cli: &Cli, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|_| cli.trigger(&["-d", "pool=ci", "--", "true"])).collect();
    for id in &ids {
        cli.wait_for_state(id, "COMPLETED");
    }
    ids
}

#[test]
fn snapshots_bound_the_log_and_every_task_survives_kill_9_across_them() {
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", FAST_SNAPSHOTS);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let mut all_tasks = Vec::new();
    for round in 0..3 {
        // Counted first: on a slow machine the snapshot may come while the tasks run.
        let before = snapshot_lines(&daemon);
        all_tasks.extend(quick_tasks(&daemon.cli(), 25));
        wait_for_snapshots(&daemon, before, 1);
        let snapshots = files_in(&data.join("snapshots"), ".snap");
        assert!((1..=2).contains(&snapshots.len()), "round {round}: two generations at most: {snapshots:?}");
        let texts = files_in(&data.join("snapshots"), ".text");
        assert!((1..=2).contains(&texts.len()), "round {round}: the text files of two generations at most: {texts:?}");
        daemon.restart();
        let recovered =
            daemon.log.wait_for("recovery", |line| message(line)?.strip_prefix("recovered ").map(str::to_string));
        assert!(!recovered.contains("snapshot after record 0,"), "round {round}: started from a snapshot: {recovered}");
        let cli = daemon.cli();
        for task_id in &all_tasks {
            assert_eq!(cli.show(task_id)["state"], "COMPLETED", "round {round}: task {task_id} after kill -9");
        }
    }
    let segments = files_in(&data.join("wal"), ".wal");
    let newest: u64 = segments.last().unwrap().file_stem().unwrap().to_string_lossy().parse().unwrap();
    assert!(newest >= 6, "the tasks filled many segments: {segments:?}");
    assert!(segments.len() <= 3, "segments the snapshots cover are deleted: {segments:?}");
}

#[test]
fn a_missing_segment_is_refused_at_start_unless_the_loss_is_accepted() {
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", NO_SNAPSHOTS);
    let tasks = pending_tasks(&daemon.cli(), 60);
    assert!(daemon.terminate().success());
    let segments = files_in(&data.join("wal"), ".wal");
    assert!(segments.len() >= 4, "the tasks fill several segments: {segments:?}");
    let missing = &segments[segments.len() / 2];
    let moved = dir.path().join("moved.wal");
    fs::rename(missing, &moved).unwrap();
    let missing_name = missing.file_name().unwrap().to_string_lossy().to_string();

    let (status, log) = Daemon::start_refused(&data, NO_SNAPSHOTS);
    assert!(!status.success());
    assert!(log.contains(&missing_name), "the refusal names the segment: {log}");
    assert!(log.contains("records ") && log.contains("missing"), "the refusal names the missing records: {log}");
    assert!(files_in(&data.join("wal"), ".wal").len() == segments.len() - 1, "a refusal changes nothing");

    let mut args = NO_SNAPSHOTS.to_vec();
    args.push("--accept-log-loss");
    let daemon = Daemon::start_with(&data, "127.0.0.1:0", &args);
    let accepted = daemon.log.wait_for("the accepted loss", |line| {
        message(line)?.strip_prefix("accepted the loss of part of the log (--accept-log-loss): ").map(str::to_string)
    });
    assert!(accepted.contains("records "), "the log line says which records were dropped: {accepted}");
    let cli = daemon.cli();
    assert_eq!(cli.show(&tasks[0])["state"], "PENDING", "what lies before the gap is kept");
    let last = cli.run(&["tasks", "show", tasks.last().unwrap()]);
    assert_eq!(last.status.code(), Some(88), "what lies after the gap is dropped");
    assert!(!files_in(&data.join("wal/dropped"), ".wal").is_empty(), "dropped segments are set aside, not deleted");
    let newer = pending_tasks(&cli, 1);
    assert_eq!(cli.show(&newer[0])["state"], "PENDING", "the daemon takes new work");
}

#[test]
fn a_damaged_snapshot_is_passed_over_only_while_the_log_covers_an_older_one() {
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", FAST_SNAPSHOTS);
    let cli = daemon.cli();
    let first = pending_tasks(&cli, 3);
    wait_for_snapshots(&daemon, 0, 1);
    let second = pending_tasks(&cli, 3);
    wait_for_snapshots(&daemon, 1, 1);
    assert!(daemon.terminate().success());
    let snapshots = files_in(&data.join("snapshots"), ".snap");
    assert_eq!(snapshots.len(), 2, "two generations: {snapshots:?}");
    damage(snapshots.last().unwrap());

    // The older snapshot and the log after it hold every task.
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", FAST_SNAPSHOTS);
    daemon.log.wait_for("the damaged snapshot set aside", |line| {
        line.contains("set the damaged snapshot aside").then_some(())
    });
    for task_id in first.iter().chain(&second) {
        assert_eq!(daemon.cli().show(task_id)["state"], "PENDING");
    }
    assert_eq!(files_in(&data.join("snapshots"), ".damaged").len(), 1, "kept for an operator");
    pending_tasks(&daemon.cli(), 1);
    wait_for_snapshots(&daemon, 0, 1);
    pending_tasks(&daemon.cli(), 1);
    wait_for_snapshots(&daemon, 1, 1);
    assert!(daemon.terminate().success());

    // Both snapshots damaged, and the log no longer reaches back to the start.
    for snapshot in files_in(&data.join("snapshots"), ".snap") {
        damage(&snapshot);
    }
    let (status, log) = Daemon::start_refused(&data, FAST_SNAPSHOTS);
    assert!(!status.success());
    assert!(
        log.contains(".snap is damaged") && log.contains("does not reach back"),
        "the refusal names the snapshot: {log}"
    );
}

fn damage(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

#[test]
fn secret_bytes_leave_every_file_of_the_daemon() {
    let dir = temp();
    let data = dir.path().join("data");
    let daemon = Daemon::start_with(&data, "127.0.0.1:0", FAST_SNAPSHOTS);
    let cli = daemon.cli();
    let secret = format!("apiary-lifecycle-secret-{}", std::process::id());
    let secret_file = dir.path().join("secret");
    fs::write(&secret_file, &secret).unwrap();
    let task_id = cli.trigger(&[
        "--wait-for-capacity",
        "-d",
        "pool=ci",
        "--secret-bytes-file",
        secret_file.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert!(!files_containing(&data, secret.as_bytes()).is_empty(), "the log holds the secret while the task waits");
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    cli.wait_for_state(&task_id, "COMPLETED");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let holding = files_containing(&data, secret.as_bytes());
        if holding.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "files still hold the secret: {holding:?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cli.show(&task_id)["has_secret_bytes"], true, "the task still says it had one");
}

/// Resident anonymous memory of a process, in KiB, from /proc.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("RssAnon:")).expect("RssAnon in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { dir_bytes(&path) } else { entry.metadata().map_or(0, |metadata| metadata.len()) }
        })
        .sum()
}

/// The number of tasks in the newest snapshot line: what the daemon holds.
fn tasks_in_last_snapshot(daemon: &Daemon) -> Option<u64> {
    let lines = daemon.log.all();
    let line = lines.iter().rev().find(|line| is_snapshot_line(line))?;
    let count = line.split(" of ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("'of N tasks'");
    Some(count.parse().unwrap())
}

/// Waits until a snapshot holds fewer than `limit` tasks.
fn wait_for_held_below(daemon: &Daemon, limit: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tasks_in_last_snapshot(daemon) {
            Some(held) if held < limit => return held,
            held => assert!(Instant::now() < deadline, "retention let nothing go: {held:?} held"),
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn retention_keeps_memory_log_and_held_tasks_flat_while_tasks_flow() {
    const RETENTION: &[&str] =
        &["--task-retention", "2s", "--snapshot-interval-secs", "1", "--wal-segment-bytes", "262144"];
    const PER_ROUND: u64 = 1500;
    // Four segments of 256 KiB: a round alone writes about twelve.
    const LOG_BOUND_BYTES: u64 = 4 * 262_144;
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", RETENTION);
    let first = daemon.cli().trigger(&["-d", "pool=nobody", "--", "true"]);
    assert_eq!(daemon.cli().show(&first)["state"], "NO_RESOURCE");
    let mut figures = Vec::new();
    for round in 0..4 {
        let load = std::process::Command::new(apiary_tests::binary("apiary-load"))
            .args(["--server", &daemon.addr, "--bots", "4", "--submitters", "2", "--tasks", &PER_ROUND.to_string()])
            .output()
            .expect("run apiary-load");
        assert!(load.status.success(), "round {round}: {}", apiary_tests::describe(&load));
        // Retention lets the round's tasks go, and a snapshot says so; then the
        // generations let the log they were in go (unlinked off the event loop,
        // so a moment later).
        let held = wait_for_held_below(&daemon, 1);
        let deadline = Instant::now() + PATIENCE;
        while dir_bytes(&data.join("wal")) > LOG_BOUND_BYTES {
            assert!(
                Instant::now() < deadline,
                "round {round}: the log stays at {} bytes",
                dir_bytes(&data.join("wal"))
            );
            thread::sleep(Duration::from_millis(50));
        }
        let log_bytes = dir_bytes(&data.join("wal"));
        let memory_kib = rss_anon_kib(daemon.pid());
        eprintln!("round {round}: {held} tasks held, {log_bytes} bytes of log, {memory_kib} KiB anonymous memory");
        figures.push((log_bytes, memory_kib));
        if round % 2 == 1 {
            daemon.restart();
        }
    }
    let (_, first_memory) = figures[1];
    let (_, last_memory) = figures[3];
    assert!(last_memory <= first_memory * 2, "memory stays flat: {figures:?}");
    let old = daemon.cli().run(&["tasks", "show", &first]);
    assert_eq!(old.status.code(), Some(88), "{}", apiary_tests::describe(&old));
    let said = String::from_utf8_lossy(&old.stderr);
    assert!(said.contains("older than the task retention of 2s"), "distinct from an unknown id: {said}");
    let never = daemon.cli().run(&["tasks", "show", "7fffffffffffff00"]);
    assert!(String::from_utf8_lossy(&never.stderr).contains("no task"), "{}", apiary_tests::describe(&never));
}

/// A small tmpfs the test mounts and unmounts: a disk that fills up for real.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// `None` where mounting is not allowed (not root).
    fn mount(path: PathBuf, megabytes: u32) -> Option<SmallDisk> {
        fs::create_dir_all(&path).unwrap();
        let size = format!("size={megabytes}m");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(SmallDisk { path })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        for _ in 0..64 {
            // Whatever is left, byte by byte in small pieces.
            if file.write_all(&block[..512]).is_err() {
                break;
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Triggers pending tasks until one is refused; returns the refusal.
fn trigger_until_refused(cli: &Cli) -> String {
    for _ in 0..2000 {
        let output = cli.run(&["trigger", "--wait-for-capacity", "-d", "pool=none", "--name", "filler", "--", "true"]);
        if !output.status.success() {
            assert_eq!(output.status.code(), Some(89), "{}", apiary_tests::describe(&output));
            return String::from_utf8_lossy(&output.stderr).to_string();
        }
    }
    panic!("a full disk never refused a new task");
}

#[test]
fn a_full_disk_refuses_new_tasks_lets_running_ones_finish_and_recovers_by_itself() {
    let dir = temp();
    // Declared before the daemon, so the daemon stops before the unmount.
    let Some(disk) = SmallDisk::mount(dir.path().join("disk"), 8) else {
        eprintln!("skipped: mounting a tmpfs needs root; CI runs as root");
        return;
    };
    let data = disk.path.join("data");
    let args = ["--snapshot-interval-secs", "86400", "--wal-segment-bytes", "65536"];
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", &args);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let go = dir.path().join("go");
    let script = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.05; done; head -c 400000 /dev/zero | tr '\\0' x; echo",
        go.display()
    );
    let running = cli.trigger(&["-d", "pool=ci", "--", "sh", "-c", &script]);
    cli.wait_for_state(&running, "RUNNING");
    let deadline = Instant::now() + PATIENCE;
    while cli.show(&running)["output_len"] == 0 {
        assert!(Instant::now() < deadline, "the task's first output never came");
        thread::sleep(Duration::from_millis(50));
    }
    let filler = disk.fill();

    let refusal = trigger_until_refused(&cli);
    assert!(
        refusal.contains("no space in") && refusal.contains("data"),
        "the refusal names the cause and the directory: {refusal}"
    );
    daemon.log.wait_for("the full disk logged", |line| line.contains("is full or failing").then_some(()));
    assert_eq!(cli.show(&running)["state"], "RUNNING", "reads go on");

    fs::write(&go, "").unwrap();
    let ended = cli.wait_for_state(&running, "COMPLETED");
    assert_eq!(ended["output_truncated"], true, "output that did not fit was dropped: {ended}");
    let output = cli.ok(&["tasks", "output", &running]);
    assert!(output.starts_with("before\n"), "the output before the disk filled is kept: {output:?}");

    // A restart on the full disk starts and serves reads.
    daemon.restart();
    assert_eq!(daemon.cli().show(&running)["state"], "COMPLETED");

    fs::remove_file(&filler).unwrap();
    daemon.log.wait_for("recovery from the full disk", |line| line.contains("takes writes again").then_some(()));
    let accepted = daemon.cli().trigger(&["--wait-for-capacity", "-d", "pool=none", "--", "true"]);
    assert_eq!(daemon.cli().show(&accepted)["state"], "PENDING", "new tasks are taken again");
    let full_disk_lines = daemon.log.all().iter().filter(|line| line.contains("is full or failing")).count();
    assert!(full_disk_lines <= 2, "the condition is logged once, not per request ({full_disk_lines} lines)");
}

/// A small splitmix64, so the kill moments differ from round to round but the
/// test replays the same way every time.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn kill_9_at_any_moment_of_snapshots_deletions_and_retention_loses_nothing_acknowledged() {
    const ARGS: &[&str] = &["--snapshot-interval-secs", "1", "--wal-segment-bytes", "16384", "--task-retention", "3s"];
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", ARGS);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let mut acknowledged: Vec<String> = Vec::new();
    let mut random = 7;
    for round in 0..8 {
        let until = Instant::now() + Duration::from_millis(200 + next_random(&mut random) % 1500);
        while Instant::now() < until {
            let output = daemon.cli().run(&["trigger", "-d", "pool=ci", "--", "true"]);
            if output.status.success() {
                acknowledged.push(String::from_utf8_lossy(&output.stdout).trim().to_string());
            }
        }
        daemon.restart();
        let cli = daemon.cli();
        for task_id in &acknowledged {
            let shown = cli.run(&["tasks", "show", task_id]);
            let said = String::from_utf8_lossy(&shown.stderr);
            let known = shown.status.success() || said.contains("older than the task retention");
            assert!(known, "round {round}: acknowledged task {task_id} lost: {said}");
        }
    }
    assert!(acknowledged.len() > 20, "tasks flowed: {}", acknowledged.len());
    let snapshots = daemon.log.all().iter().filter(|line| line.contains(" after record ")).count();
    eprintln!("{} tasks acknowledged, {snapshots} snapshots in the last run", acknowledged.len());
}

#[test]
fn ended_tasks_move_to_history_runs_and_are_still_shown_listed_read_and_reused() {
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", FAST_SNAPSHOTS);
    let _bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let cli = daemon.cli();
    let trigger = |n: usize, extra: &[&str]| {
        let tag = if n.is_multiple_of(2) { "parity:even" } else { "parity:odd" };
        let echo = format!("echo output-of-{n}");
        let mut args = vec!["-d", "pool=ci", "--tag", tag, "--name", "history", "--"];
        args.extend_from_slice(extra);
        args.extend(["sh", "-c", echo.as_str()]);
        cli.trigger(&args)
    };
    let first: Vec<String> = (0..12).map(|n| trigger(n, &[])).collect();
    for id in &first {
        cli.wait_for_state(id, "COMPLETED");
    }
    let idempotent = cli.trigger(&["-d", "pool=ci", "--idempotent", "--", "sh", "-c", "echo reused"]);
    cli.wait_for_state(&idempotent, "COMPLETED");
    let archived = |daemon: &Daemon| {
        daemon.log.all().iter().any(|line| is_snapshot_line(line) && !line.contains(" 0 ended tasks"))
    };
    let deadline = Instant::now() + PATIENCE;
    while !archived(&daemon) {
        assert!(Instant::now() < deadline, "no ended task went to history; log: {:#?}", daemon.log.all());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!files_in(&data.join("history"), ".run").is_empty(), "a history run was written");
    // Tasks that end now stay in the heap until the next snapshot: a listing merges both.
    let later: Vec<String> = (12..16).map(|n| trigger(n, &[])).collect();
    for id in &later {
        cli.wait_for_state(id, "COMPLETED");
    }
    for round in 0..2 {
        let cli = daemon.cli();
        for (n, id) in first.iter().chain(&later).enumerate() {
            assert_eq!(cli.show(id)["state"], "COMPLETED", "round {round}: task {n}");
            let output = cli.ok(&["tasks", "output", id]);
            assert_eq!(output.trim(), format!("output-of-{n}"), "round {round}: the output of task {n}");
        }
        let listed = cli.ok(&["tasks", "list", "--tag", "parity:even", "--json", "--limit", "3"]);
        let page: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let mut ids: Vec<String> = Vec::new();
        let mut page = page;
        loop {
            ids.extend(
                page["tasks"].as_array().unwrap().iter().map(|task| task["task_id"].as_str().unwrap().to_string()),
            );
            let Some(cursor) = page["next_cursor"].as_str().map(str::to_string) else { break };
            let listed =
                cli.ok(&["tasks", "list", "--tag", "parity:even", "--json", "--limit", "3", "--cursor", &cursor]);
            page = serde_json::from_str(&listed).unwrap();
        }
        let mut even: Vec<String> = first.iter().chain(&later).step_by(2).cloned().collect();
        even.reverse();
        assert_eq!(ids, even, "round {round}: the even tasks, newest first, across pages, heap and history");
        let reuse = cli.trigger(&["-d", "pool=ci", "--idempotent", "--", "sh", "-c", "echo reused"]);
        let reused = cli.wait_for_state(&reuse, "COMPLETED");
        assert!(reused["deduped_from"].is_string() || reused["deduped_from"].is_u64(), "round {round}: {reused}");
        assert_eq!(cli.ok(&["tasks", "output", &reuse]).trim(), "reused");
        daemon.kill9();
        daemon.restart();
    }
}

#[test]
fn a_damaged_history_record_is_reported_and_a_missing_run_refuses_the_start() {
    let dir = temp();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_with(&data, "127.0.0.1:0", FAST_SNAPSHOTS);
    let mut bot = Bot::start(&daemon.addr, "bot-1", &["pool=ci"], &dir.path().join("bot"));
    let tasks = quick_tasks(&daemon.cli(), 5);
    // A run counts once the snapshot that lists it is written: a run file
    // alone (a job cut short by the stop below) is removed at the next start.
    daemon.log.wait_for("a snapshot with a history run", |line| {
        let (before, _) = line.split_once(" ended tasks to history")?;
        let archived: u64 = before.rsplit(' ').next()?.parse().ok()?;
        (archived > 0).then_some(())
    });
    bot.kill9();
    assert!(daemon.terminate().success());
    let runs = files_in(&data.join("history"), ".run");
    let run = &runs[0];
    let run_name = run.file_name().unwrap().to_string_lossy().to_string();

    // A flipped byte in the first record: that task is reported damaged, by file; the others read.
    let good = fs::read(run).unwrap();
    let mut bytes = good.clone();
    bytes[100] ^= 0x20;
    fs::write(run, &bytes).unwrap();
    daemon.restart();
    let cli = daemon.cli();
    let shown: Vec<std::process::Output> = tasks.iter().map(|id| cli.run(&["tasks", "show", id])).collect();
    let damaged: Vec<&std::process::Output> = shown.iter().filter(|output| !output.status.success()).collect();
    assert_eq!(damaged.len(), 1, "one record is damaged: {shown:#?}");
    let said = String::from_utf8_lossy(&damaged[0].stderr);
    assert!(said.contains(&run_name) && said.contains("damaged"), "the error names the run: {said}");
    let listed = cli.run(&["tasks", "list"]);
    assert!(!listed.status.success(), "a listing does not skip a damaged record silently");
    assert!(String::from_utf8_lossy(&listed.stderr).contains(&run_name));
    assert!(daemon.terminate().success());

    // A missing run refuses the start, naming it, unless the loss is accepted.
    fs::remove_file(run).unwrap();
    let (status, log) = Daemon::start_refused(&data, FAST_SNAPSHOTS);
    assert!(!status.success());
    assert!(log.contains(&run_name) && log.contains("--accept-log-loss"), "the refusal names the run: {log}");
    let mut args = FAST_SNAPSHOTS.to_vec();
    args.push("--accept-log-loss");
    let daemon = Daemon::start_with(&data, "127.0.0.1:0", &args);
    let accepted = daemon.log.wait_for("the accepted loss", |line| {
        message(line)?.strip_prefix("accepted the loss of a history run (--accept-log-loss): ").map(str::to_string)
    });
    assert!(accepted.contains(&run_name), "the log line names the run: {accepted}");
    let cli = daemon.cli();
    assert_eq!(cli.run(&["tasks", "show", &tasks[0]]).status.code(), Some(88), "its tasks are gone");
    let newer = pending_tasks(&cli, 1);
    assert_eq!(cli.show(&newer[0])["state"], "PENDING", "the daemon takes new work");
}

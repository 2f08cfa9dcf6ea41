//! `apiary-load anchor`: the same two workloads against the queue servers people would
//! pick instead of Apiary, so that Apiary's figures can be read next to theirs, taken on
//! the same machine in the same session (`benches/anchors.sh` alternates them).
//!
//! - Submitters (one thread and one connection each) put one task at a time and wait
//!   for the server's answer: with the server's log synced on every write, the answer
//!   means the task is durable, as an Apiary acknowledgement does.
//! - Workers (one thread and one connection each) take a task, blocking while there is
//!   none, and finish it: two requests, as a bot's poll and final report are.
//!
//! | | put | take | finish |
//! |---|---|---|---|
//! | Redis | `LPUSH pending T` | `BLMOVE pending taken RIGHT LEFT` | `LREM taken 1 T` |
//! | beanstalkd | `put` | `reserve-with-timeout` | `delete` |
//!
//! Redis' reliable-queue pattern keeps a taken task in `taken` until it is finished, as
//! beanstalkd keeps a reserved job and Apiary a running task. A task's payload starts
//! with when it was due (ns since the run's start), so a worker measures submit → taken.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use apiary_benches::floor::Floor;
use apiary_benches::stats::{Summary, rate_per_sec};

use crate::Shared;
use crate::submit::{Pace, SLOW_ROUND_TRIP_US, note_slowest};

/// The server kinds `apiary-load anchor` speaks to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Redis,
    Beanstalkd,
}

/// The flags of `apiary-load anchor`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct AnchorArgs {
    /// Which server `--server` is.
    #[arg(long, value_enum)]
    pub(crate) kind: Kind,
    /// The server's address.
    #[arg(long)]
    pub(crate) server: String,
    /// Submitters, each one connection putting one task at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) submitters: usize,
    /// Workers, each one connection taking and finishing tasks.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) workers: usize,
    /// Stop submitting after this many tasks in all.
    #[arg(long)]
    pub(crate) tasks: Option<u64>,
    /// Stop submitting after this many seconds (default 10 when --tasks is not given).
    #[arg(long)]
    pub(crate) duration: Option<f64>,
    /// Put this many tasks a second in all, spread over the submitters as `apiary-load
    /// --rate` does (default: as fast as answers come).
    #[arg(long, value_parser = crate::parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Bytes in each task's payload (about an Apiary NewTask's size by default).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(32..=65_536))]
    pub(crate) payload_bytes: u64,
    /// After submitting stops, how long to wait for the workers to finish what was put.
    #[arg(long, default_value_t = 60)]
    pub(crate) drain_secs: u64,
    /// Measure the floor (as `apiary-load floor` does) first, and print the figures as
    /// multiples of it.
    #[arg(long)]
    pub(crate) floor: bool,
    /// Where `--floor` puts its fdatasync file (default: the system temp dir).
    #[arg(long, requires = "floor")]
    pub(crate) floor_dir: Option<PathBuf>,
}

/// The list (Redis) or tube (beanstalkd) the run uses.
const QUEUE: &str = "apiary-load";
/// Redis: where a taken task waits until it is finished.
const TAKEN: &str = "apiary-load:taken";
/// How long a worker blocks on an empty queue before it looks at the stop flag.
const TAKE_WAIT_SECS: u64 = 1;
/// beanstalkd: seconds a worker may hold a reserved job before it goes back.
const TIME_TO_RUN_SECS: u64 = 60;

/// A task a worker holds: its payload and, for beanstalkd, its job id.
struct Taken {
    payload: Vec<u8>,
    job_id: u64,
}

/// One connection to the server, speaking its protocol.
struct Connection {
    kind: Kind,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

impl Connection {
    fn open(args: &AnchorArgs) -> io::Result<Connection> {
        let stream = TcpStream::connect(&args.server)?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let mut connection =
            Connection { kind: args.kind, reader: BufReader::new(stream), writer, line: String::new() };
        if connection.kind == Kind::Beanstalkd {
            connection.command(format!("use {QUEUE}\r\n").as_bytes(), "USING")?;
            connection.command(format!("watch {QUEUE}\r\n").as_bytes(), "WATCHING")?;
            connection.command(b"ignore default\r\n", "WATCHING")?;
        }
        Ok(connection)
    }

    fn put(&mut self, payload: &[u8]) -> io::Result<()> {
        match self.kind {
            Kind::Redis => {
                let request = redis_command(&[b"LPUSH", QUEUE.as_bytes(), payload]);
                self.command(&request, ":")
            }
            Kind::Beanstalkd => {
                let mut request = format!("put 0 0 {TIME_TO_RUN_SECS} {}\r\n", payload.len()).into_bytes();
                request.extend_from_slice(payload);
                request.extend_from_slice(b"\r\n");
                self.command(&request, "INSERTED")
            }
        }
    }

    /// The next task, or `None` when none came within `TAKE_WAIT_SECS`.
    fn take(&mut self) -> io::Result<Option<Taken>> {
        match self.kind {
            Kind::Redis => {
                let wait = TAKE_WAIT_SECS.to_string();
                let request =
                    redis_command(&[b"BLMOVE", QUEUE.as_bytes(), TAKEN.as_bytes(), b"RIGHT", b"LEFT", wait.as_bytes()]);
                self.send(&request)?;
                let header = self.read_line()?;
                // A timeout is a null: `*-1` (RESP2's null array) or `$-1`.
                if header == "*-1" || header == "$-1" {
                    return Ok(None);
                }
                let length = header.strip_prefix('$').and_then(|length| length.parse().ok());
                let length = length.ok_or_else(|| unexpected("BLMOVE", &header))?;
                Ok(Some(Taken { payload: self.read_body(length)?, job_id: 0 }))
            }
            Kind::Beanstalkd => {
                self.send(format!("reserve-with-timeout {TAKE_WAIT_SECS}\r\n").as_bytes())?;
                let header = self.read_line()?;
                if header == "TIMED_OUT" || header == "DEADLINE_SOON" {
                    return Ok(None);
                }
                let mut words = header.strip_prefix("RESERVED ").unwrap_or_default().split(' ');
                let mut number = || words.next().and_then(|word| word.parse().ok());
                let (Some(job_id), Some(length)) = (number(), number()) else {
                    return Err(unexpected("reserve", &header));
                };
                Ok(Some(Taken { payload: self.read_body(length as usize)?, job_id }))
            }
        }
    }

    fn finish(&mut self, taken: &Taken) -> io::Result<()> {
        match self.kind {
            Kind::Redis => self.command(&redis_command(&[b"LREM", TAKEN.as_bytes(), b"1", &taken.payload]), ":1"),
            Kind::Beanstalkd => self.command(format!("delete {}\r\n", taken.job_id).as_bytes(), "DELETED"),
        }
    }

    /// Sends `request` and checks that the answer's line starts with `expected`.
    fn command(&mut self, request: &[u8], expected: &str) -> io::Result<()> {
        self.send(request)?;
        let answer = self.read_line()?;
        if answer.starts_with(expected) { Ok(()) } else { Err(unexpected(expected, &answer)) }
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.writer.write_all(request)
    }

    /// One answer line, without its `\r\n`.
    fn read_line(&mut self) -> io::Result<String> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(self.line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// `length` bytes and the `\r\n` after them.
    fn read_body(&mut self, length: usize) -> io::Result<Vec<u8>> {
        let mut body = vec![0; length + 2];
        self.reader.read_exact(&mut body)?;
        body.truncate(length);
        Ok(body)
    }
}

/// A Redis command in RESP: an array of bulk strings.
fn redis_command(words: &[&[u8]]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        request.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        request.extend_from_slice(word);
        request.extend_from_slice(b"\r\n");
    }
    request
}

fn unexpected(expected: &str, answer: &str) -> io::Error {
    io::Error::other(format!("expected an answer starting with {expected:?}, got {answer:?}"))
}

/// `<due ns> <submitter>-<sequence> ` padded with `x` to `bytes`.
fn payload(due_ns: u64, submitter: usize, sequence: u64, bytes: usize) -> Vec<u8> {
    let mut payload = format!("{due_ns} {submitter}-{sequence} ").into_bytes();
    payload.resize(bytes.max(payload.len()), b'x');
    payload
}

/// When the task of `payload` was due, ns since the run's start.
fn due_ns_of(payload: &[u8]) -> Option<u64> {
    let end = payload.iter().position(|&byte| byte == b' ')?;
    std::str::from_utf8(&payload[..end]).ok()?.parse().ok()
}

/// What one submitter saw: each put's round trip (µs) and the slowest ones.
#[derive(Default)]
struct SubmitterLog {
    round_trips_us: Vec<u64>,
    slowest: Vec<(u64, u64)>,
    slow: u64,
}

/// Puts until the task count or the duration (counted from `started_ns`) is reached.
fn run_submitter(args: &AnchorArgs, index: usize, shared: &Shared, started_ns: u64) -> SubmitterLog {
    apiary_benches::tighten_timer_slack();
    let mut log = SubmitterLog::default();
    if let Err(error) = submit(args, index, shared, started_ns, &mut log) {
        shared.fail(format!("submitter {index}: {error}"));
    }
    log
}

fn submit(args: &AnchorArgs, index: usize, shared: &Shared, started_ns: u64, log: &mut SubmitterLog) -> io::Result<()> {
    let mut connection = Connection::open(args)?;
    let deadline_ns =
        started_ns.saturating_add((crate::duration_secs(args.duration, args.tasks) * 1e9).min(u64::MAX as f64) as u64);
    let mut pace = args.rate.map(|rate| Pace::new(rate, args.submitters, index, started_ns));
    for sequence in 0.. {
        if shared.stop_submitting.load(Ordering::Relaxed) || shared.now_ns() >= deadline_ns {
            break;
        }
        if let Some(pace) = &pace {
            let wait_ns = pace.next_due_ns().saturating_sub(shared.now_ns());
            thread::sleep(Duration::from_nanos(wait_ns));
        }
        if crate::submit::claim(shared, args.tasks, 1) == 0 {
            break;
        }
        // Paced, a task counts from when it was due: a late put is part of its wait.
        let due_ns = pace.as_mut().map_or_else(|| shared.now_ns(), |pace| pace.take(1));
        connection.put(&payload(due_ns, index, sequence, args.payload_bytes as usize))?;
        let round_trip_us = shared.now_ns().saturating_sub(due_ns) / 1000;
        shared.submitted.fetch_add(1, Ordering::SeqCst);
        log.round_trips_us.push(round_trip_us);
        note_slowest(&mut log.slowest, round_trip_us, due_ns);
        log.slow += u64::from(round_trip_us > SLOW_ROUND_TRIP_US);
    }
    Ok(())
}

/// Takes and finishes tasks until told to stop; returns submit → taken of each, µs.
fn run_worker(args: &AnchorArgs, index: usize, shared: &Shared) -> Vec<u64> {
    let mut latencies_us = Vec::new();
    if let Err(error) = work(args, shared, &mut latencies_us) {
        shared.fail(format!("worker {index}: {error}"));
    }
    latencies_us
}

fn work(args: &AnchorArgs, shared: &Shared, latencies_us: &mut Vec<u64>) -> io::Result<()> {
    let mut connection = Connection::open(args)?;
    shared.welcomed.fetch_add(1, Ordering::SeqCst);
    while !shared.stop_bots.load(Ordering::Relaxed) {
        let Some(taken) = connection.take()? else { continue };
        let taken_ns = shared.now_ns();
        let due_ns = due_ns_of(&taken.payload).ok_or_else(|| io::Error::other("a payload without its due time"))?;
        latencies_us.push(taken_ns.saturating_sub(due_ns) / 1000);
        connection.finish(&taken)?;
        shared.completed.fetch_add(1, Ordering::SeqCst);
        shared.last_completion_ns.fetch_max(shared.now_ns(), Ordering::SeqCst);
    }
    Ok(())
}

/// Runs the workload; the figures go to stdout with the labels `apiary-load` uses.
pub(crate) fn run(args: &AnchorArgs, floor: Option<Floor>) -> Result<(), String> {
    println!(
        "apiary-load anchor: {:?} at {}, {} submitters (one put at a time), {} workers, payload {} bytes, {}",
        args.kind,
        args.server,
        args.submitters,
        args.workers,
        args.payload_bytes,
        args.rate.map_or_else(|| "as fast as answers come".into(), |rate| format!("{rate} tasks/s")),
    );
    let shared = Arc::new(Shared::new());
    let workers: Vec<_> = (0..args.workers)
        .map(|index| {
            let (args, shared) = (args.clone(), Arc::clone(&shared));
            thread::spawn(move || run_worker(&args, index, &shared))
        })
        .collect();
    while shared.welcomed.load(Ordering::SeqCst) < args.workers && !shared.failed() {
        thread::sleep(Duration::from_millis(5));
    }
    let started_ns = shared.now_ns();
    let submitters: Vec<_> = (0..args.submitters)
        .map(|index| {
            let (args, shared) = (args.clone(), Arc::clone(&shared));
            thread::spawn(move || run_submitter(&args, index, &shared, started_ns))
        })
        .collect();
    let logs: Vec<SubmitterLog> =
        submitters.into_iter().map(|handle| handle.join().expect("a submitter panicked")).collect();
    let submit_ended_ns = shared.now_ns();
    let drain_deadline_ns = submit_ended_ns + args.drain_secs * 1_000_000_000;
    while !shared.failed()
        && shared.completed.load(Ordering::SeqCst) < shared.submitted.load(Ordering::SeqCst)
        && shared.now_ns() < drain_deadline_ns
    {
        thread::sleep(Duration::from_millis(2));
    }
    shared.stop_bots.store(true, Ordering::SeqCst);
    let mut latencies_us: Vec<u64> =
        workers.into_iter().flat_map(|handle| handle.join().expect("a worker panicked")).collect();
    if let Some(failure) = shared.failure.lock().unwrap().take() {
        return Err(failure);
    }
    let secs = |end_ns: u64| end_ns.saturating_sub(started_ns) as f64 / 1e9;
    let submitted = shared.submitted.load(Ordering::SeqCst);
    let completed = shared.completed.load(Ordering::SeqCst);
    let submit_secs = secs(submit_ended_ns);
    println!("submitted: {submitted} in {submit_secs:.2} s, {:.0}/s", rate_per_sec(submitted, submit_secs));
    let mut slowest = Vec::new();
    for &(round_trip_us, due_ns) in logs.iter().flat_map(|log| &log.slowest) {
        note_slowest(&mut slowest, round_trip_us, due_ns);
    }
    let slow: u64 = logs.iter().map(|log| log.slow).sum();
    let mut round_trips_us: Vec<u64> = logs.into_iter().flat_map(|log| log.round_trips_us).collect();
    let round_trip = Summary::of(&mut round_trips_us);
    println!("put round trip µs: {}", describe(round_trip));
    let slowest: Vec<String> =
        slowest.iter().map(|&(round_trip_us, due_ns)| format!("{round_trip_us} at {:.1} s", secs(due_ns))).collect();
    println!("slowest put round trips µs: {}", slowest.join(", "));
    println!("put round trips over {} ms: {slow}", SLOW_ROUND_TRIP_US / 1000);
    let complete_secs = secs(shared.last_completion_ns.load(Ordering::SeqCst));
    println!("completed: {completed} in {complete_secs:.2} s, {:.0}/s", rate_per_sec(completed, complete_secs));
    let latency = Summary::of(&mut latencies_us);
    println!("submit->taken latency µs: {}", describe(latency));
    if let Some(floor) = &floor {
        let durable_us = floor.durable_round_trip_p50_us();
        let against = format!("round trip + fdatasync p50 = {durable_us:.1} µs");
        for (what, summary) in [("put round trip", round_trip), ("submit->taken", latency)] {
            if let Some(summary) = summary {
                println!("vs floor: {what} p50 {:.2}x ({against})", summary.p50 as f64 / durable_us);
            }
        }
    }
    if completed < submitted {
        return Err(format!(
            "{} of {submitted} tasks put were not finished within {} s",
            submitted - completed,
            args.drain_secs
        ));
    }
    Ok(())
}

fn describe(summary: Option<Summary>) -> String {
    summary.map_or_else(|| "no samples".into(), |summary| summary.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_has_the_size_asked_for_and_starts_with_when_it_was_due() {
        let made = payload(123_456_789, 3, 17, 200);
        assert_eq!(made.len(), 200);
        assert_eq!(due_ns_of(&made), Some(123_456_789));
        assert!(made.starts_with(b"123456789 3-17 x"));
        assert_eq!(due_ns_of(b"garbage"), None);
    }

    #[test]
    fn redis_commands_are_arrays_of_bulk_strings() {
        assert_eq!(redis_command(&[b"LPUSH", b"q", b"ab"]), b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$2\r\nab\r\n");
    }
}

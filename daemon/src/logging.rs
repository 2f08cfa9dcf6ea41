//! The daemon's log: one line per event on stderr, with its time, its level
//! and, for a line about a connection, the peer's address:
//!
//! ```text
//! 2026-11-30T11:32:59.123Z INFO  apiaryd: listening on 127.0.0.1:7420 with data in ./apiary-data
//! 2026-11-30T11:33:04.901Z WARN  apiaryd: peer=127.0.0.1:40312 closing connection: no hello within ...
//! 2026-11-30T11:33:05.002Z DEBUG apiaryd: task 0189f2a4c1d2e300 created: "build" priority 100
//! ```
//!
//! The time is UTC (RFC 3339, milliseconds); the level is padded to five
//! characters; `apiaryd: ` comes right before the message (or before its
//! `peer=ADDR `), so a grep for `apiaryd: listening on` finds the line.
//!
//! Levels are error, warn, info (notable events: the default) and debug (also
//! a line per task event). A line below the level in force costs one atomic
//! load: nothing is formatted for it.
//!
//! Logging never blocks the thread that logs on a slow stderr. Once `start`ed,
//! lines go to a queue of at most `MAX_QUEUED_BYTES`, which a thread of its own
//! writes out. A line that does not fit is dropped and counted, and the next
//! line queued is preceded by one that says how many were dropped there; so
//! are the lines of a write that failed. `stop` writes out what is queued and
//! waits for it. Before `start` and after `stop` (and in the snapshot job's
//! child process, which never starts the thread) a line is written at once.
//!
//! Invariants: the queue holds whole lines only, at most `MAX_QUEUED_BYTES` of
//! them; lines are written in the order they were queued; every line logged
//! while the thread runs is either written or counted in a note.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::panic;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

/// Text the queue holds at most: about 5,000 lines of 200 bytes, tens of
/// milliseconds of a stderr that keeps up, before lines are dropped.
const MAX_QUEUED_BYTES: usize = 1 << 20;

/// The most of a message one line keeps; the rest is cut, and the line says so.
const MAX_MESSAGE_BYTES: usize = 16 << 10;

/// The prefix, the peer and the marker of a cut message fit in this.
const MAX_LINE_OVERHEAD_BYTES: usize = 128;

const _: () = assert!(MAX_QUEUED_BYTES >= 16 * (MAX_MESSAGE_BYTES + MAX_LINE_OVERHEAD_BYTES));

/// How much a line matters; a level in force lets through itself and those above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Error, Level::Warn, Level::Info, Level::Debug];

    /// The name `--log-level` takes.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// As a line shows it: upper case, five characters.
    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
        }
    }

    fn from_u8(value: u8) -> Level {
        Level::ALL[usize::from(value).min(Level::ALL.len() - 1)]
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(text: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|level| level.name() == text)
            .ok_or_else(|| "expected one of error, warn, info, debug".to_string())
    }
}

/// The daemon's log, on stderr.
static LOGGER: Logger<Stderr> = Logger::new(MAX_QUEUED_BYTES, Stderr);

/// Whether a line at `level` is written: check it before building an
/// expensive message.
pub fn enabled(level: Level) -> bool {
    LOGGER.enabled(level)
}

pub fn max_level() -> Level {
    LOGGER.max_level()
}

/// Sets the level in force, without starting the thread (the snapshot job does this).
pub fn set_max_level(level: Level) {
    LOGGER.set_max_level(level);
}

/// Logs a line at `level`, about `peer` when there is one.
pub fn write(level: Level, peer: Option<SocketAddr>, message: impl fmt::Display) {
    LOGGER.log(level, peer, &message);
}

pub fn error(message: impl fmt::Display) {
    write(Level::Error, None, message);
}

pub fn warn(message: impl fmt::Display) {
    write(Level::Warn, None, message);
}

pub fn info(message: impl fmt::Display) {
    write(Level::Info, None, message);
}

/// A line about a connection.
pub fn warn_peer(peer: SocketAddr, message: impl fmt::Display) {
    write(Level::Warn, Some(peer), message);
}

/// A line about a connection.
pub fn info_peer(peer: SocketAddr, message: impl fmt::Display) {
    write(Level::Info, Some(peer), message);
}

/// The shorthand most call sites use: a notable event, at info.
pub use self::info as log;

/// Sets the level in force and starts the thread that writes the queued lines.
/// A panic first writes what is queued, so that the lines before it are not lost.
pub fn start(level: Level) {
    LOGGER.start(level);
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        LOGGER.write_queued_now();
        previous(info);
    }));
}

/// Writes out every queued line and stops the thread; later lines are
/// written at once.
pub fn stop() {
    LOGGER.stop();
}

/// Stderr, a batch at a time: `write_all` takes its lock once. (A panic's
/// message waits for the batch being written: the panic hook takes `output`.)
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        io::stderr().write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::stderr().write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// What the producers and the writer thread share.
struct Queue {
    /// Whole lines, in order.
    text: String,
    lines: u64,
    /// Lines lost since the last one queued: the queue was full or a write failed.
    dropped: u64,
    /// Whether the writer thread takes lines (otherwise a line is written at once).
    running: bool,
    /// The writer thread writes out what is queued and ends.
    stopping: bool,
}

impl Queue {
    const fn new() -> Queue {
        Queue { text: String::new(), lines: 0, dropped: 0, running: false, stopping: false }
    }
}

/// A log: its level, its queue, the writer thread and where it writes.
struct Logger<W> {
    max_level: AtomicU8,
    capacity_bytes: usize,
    queue: Mutex<Queue>,
    /// Wakes the writer thread when the queue stops being empty, or at `stop`.
    queued: Condvar,
    output: Mutex<W>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<W: Write + Send + 'static> Logger<W> {
    const fn new(capacity_bytes: usize, output: W) -> Logger<W> {
        Logger {
            max_level: AtomicU8::new(Level::Info as u8),
            capacity_bytes,
            queue: Mutex::new(Queue::new()),
            queued: Condvar::new(),
            output: Mutex::new(output),
            writer: Mutex::new(None),
        }
    }

    fn enabled(&self, level: Level) -> bool {
        level as u8 <= self.max_level.load(Ordering::Relaxed)
    }

    fn max_level(&self) -> Level {
        Level::from_u8(self.max_level.load(Ordering::Relaxed))
    }

    fn set_max_level(&self, level: Level) {
        self.max_level.store(level as u8, Ordering::Relaxed);
    }

    fn log(&self, level: Level, peer: Option<SocketAddr>, message: &dyn fmt::Display) {
        if !self.enabled(level) {
            return;
        }
        let mut line = String::new();
        format_line(&mut line, now_unix_ms(), level, peer, message);
        self.submit(&line);
    }

    /// Queues a whole line, or writes it at once when no writer thread runs.
    fn submit(&self, line: &str) {
        debug_assert!(line.ends_with('\n') && line.len() <= MAX_MESSAGE_BYTES + MAX_LINE_OVERHEAD_BYTES);
        let mut queue = lock(&self.queue);
        if !queue.running {
            drop(queue);
            self.write_now(line.as_bytes());
            return;
        }
        let mut note = String::new();
        if queue.dropped > 0 {
            format_line(&mut note, now_unix_ms(), Level::Warn, None, &DroppedNote(queue.dropped));
        }
        if queue.text.len() + note.len() + line.len() > self.capacity_bytes {
            queue.dropped += 1;
            return;
        }
        let was_empty = queue.text.is_empty();
        if !note.is_empty() {
            queue.text.push_str(&note);
            queue.lines += 1;
            queue.dropped = 0;
        }
        queue.text.push_str(line);
        queue.lines += 1;
        debug_assert!(queue.text.len() <= self.capacity_bytes);
        drop(queue);
        // The thread waits only on an empty queue: a fuller one needs no wake-up.
        if was_empty {
            self.queued.notify_one();
        }
    }

    fn write_now(&self, bytes: &[u8]) {
        let mut output = lock(&self.output);
        // Nowhere to say that stderr failed.
        let _ = output.write_all(bytes).and_then(|()| output.flush());
    }

    fn start(&'static self, level: Level) {
        self.set_max_level(level);
        let mut writer = lock(&self.writer);
        if writer.is_some() {
            return;
        }
        match thread::Builder::new().name("apiary-log".into()).spawn(move || self.write_queued()) {
            Ok(handle) => {
                *writer = Some(handle);
                lock(&self.queue).running = true;
            }
            Err(error) => {
                drop(writer);
                self.log(
                    Level::Warn,
                    None,
                    &format_args!("cannot start the log thread, writing lines at once: {error}"),
                );
            }
        }
    }

    fn stop(&self) {
        let Some(handle) = lock(&self.writer).take() else { return };
        lock(&self.queue).stopping = true;
        self.queued.notify_one();
        // The thread ends only once the queue is written out.
        let _ = handle.join();
        let mut queue = lock(&self.queue);
        queue.running = false;
        queue.stopping = false;
    }

    /// The writer thread: takes the queued text a batch at a time and writes it.
    fn write_queued(&self) {
        let mut batch = String::new();
        loop {
            let lines = {
                let mut queue = lock(&self.queue);
                while queue.text.is_empty() && !queue.stopping {
                    queue = self.queued.wait(queue).unwrap_or_else(PoisonError::into_inner);
                }
                if queue.text.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::swap(&mut queue.text, &mut batch);
                std::mem::take(&mut queue.lines)
            };
            let written = {
                let mut output = lock(&self.output);
                output.write_all(batch.as_bytes()).and_then(|()| output.flush())
            };
            if written.is_err() {
                lock(&self.queue).dropped += lines;
            }
            batch.clear();
        }
    }

    /// At a panic: what is queued is written at once, before the panic's message.
    fn write_queued_now(&self) {
        let text = {
            let mut queue = lock(&self.queue);
            queue.lines = 0;
            std::mem::take(&mut queue.text)
        };
        if !text.is_empty() {
            self.write_now(text.as_bytes());
        }
    }
}

/// A lock that a panic elsewhere does not make unusable: the log is the last
/// thing to give up.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct DroppedNote(u64);

impl fmt::Display for DroppedNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = if self.0 == 1 { "line" } else { "lines" };
        write!(f, "{} log {lines} dropped here: stderr did not take them fast enough, or failed", self.0)
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Appends one line: `TIME LEVEL apiaryd: [peer=ADDR ]MESSAGE\n`.
fn format_line(line: &mut String, unix_ms: u64, level: Level, peer: Option<SocketAddr>, message: &dyn fmt::Display) {
    let start = line.len();
    write_timestamp(line, unix_ms);
    line.push(' ');
    line.push_str(level.label());
    line.push_str(" apiaryd: ");
    if let Some(peer) = peer {
        let _ = write!(line, "peer={peer} ");
    }
    let mut one_line = OneLine { line, room_bytes: MAX_MESSAGE_BYTES, cut: false };
    let _ = write!(one_line, "{message}");
    if one_line.cut {
        let _ = write!(line, " [cut at {MAX_MESSAGE_BYTES} bytes]");
    }
    line.push('\n');
    debug_assert!(line.len() - start <= MAX_MESSAGE_BYTES + MAX_LINE_OVERHEAD_BYTES);
}

/// Writes a message into a line: control characters escaped (`\n`, `\u{1b}`),
/// so that one event stays one line, and at most `room_bytes` of it.
struct OneLine<'a> {
    line: &'a mut String,
    room_bytes: usize,
    cut: bool,
}

impl fmt::Write for OneLine<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.cut {
            return Ok(());
        }
        // Most text has no control characters: 0xC2 starts the two-byte ones (and others).
        let plain = text.bytes().all(|byte| (0x20..0x7f).contains(&byte) || (byte >= 0x80 && byte != 0xc2));
        if plain && text.len() <= self.room_bytes {
            self.line.push_str(text);
            self.room_bytes -= text.len();
            return Ok(());
        }
        for character in text.chars() {
            let before = self.line.len();
            if character.is_control() && character != '\t' {
                let _ = write!(self.line, "{}", character.escape_default());
            } else {
                self.line.push(character);
            }
            let added = self.line.len() - before;
            if added > self.room_bytes {
                self.line.truncate(before);
                self.cut = true;
                return Ok(());
            }
            self.room_bytes -= added;
        }
        Ok(())
    }
}

/// `2026-11-30T11:32:59.123Z`: UTC, milliseconds.
fn write_timestamp(line: &mut String, unix_ms: u64) {
    const MS_PER_DAY: u64 = 86_400_000;
    let (year, month, day) = civil_from_days((unix_ms / MS_PER_DAY) as i64);
    let ms_of_day = unix_ms % MS_PER_DAY;
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, ms) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    let _ = write!(line, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z");
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (day 0):
/// Howard Hinnant's `civil_from_days`. Eras of 400 years (146,097 days)
/// repeat; within one, years start on March 1st so that February, with its
/// leap day, comes last.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // Days from 0000-03-01.
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32; // [1, 31]
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc::{self, Receiver, Sender};

    use super::*;

    fn timestamp(unix_ms: u64) -> String {
        let mut line = String::new();
        write_timestamp(&mut line, unix_ms);
        line
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_milliseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_399_999), "2000-02-28T23:59:59.999Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(978_307_199_000), "2000-12-31T23:59:59.000Z");
        assert_eq!(timestamp(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(timestamp(1_796_038_379_123), "2026-11-30T11:32:59.123Z");
    }

    #[test]
    fn civil_from_days_agrees_with_counting_days_one_by_one() {
        let days_in_month = |year: i64, month: u32| match month {
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut year, mut month, mut day) = (1970, 1, 1);
        // Past 2400: every leap-year rule, twice over.
        for days in 0..160_000 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            day += 1;
            if day > days_in_month(year, month) {
                (month, day) = (month + 1, 1);
                if month > 12 {
                    (year, month) = (year + 1, 1);
                }
            }
        }
    }

    fn line(level: Level, peer: Option<SocketAddr>, message: &str) -> String {
        let mut line = String::new();
        format_line(&mut line, 1_796_038_379_123, level, peer, &message);
        line
    }

    #[test]
    fn a_line_has_time_level_name_peer_and_message() {
        assert_eq!(
            line(Level::Info, None, "listening on 127.0.0.1:7420"),
            "2026-11-30T11:32:59.123Z INFO  apiaryd: listening on 127.0.0.1:7420\n"
        );
        let peer: SocketAddr = "127.0.0.1:40312".parse().unwrap();
        assert_eq!(
            line(Level::Warn, Some(peer), "closing connection: no hello"),
            "2026-11-30T11:32:59.123Z WARN  apiaryd: peer=127.0.0.1:40312 closing connection: no hello\n"
        );
        assert!(line(Level::Error, None, "x").contains(" ERROR apiaryd: x"));
        assert!(line(Level::Debug, None, "x").contains(" DEBUG apiaryd: x"));
    }

    #[test]
    fn a_message_stays_one_line_and_is_cut_at_its_limit() {
        assert!(
            line(Level::Info, None, "two\nlines\r\u{1b}[31m\ttab")
                .ends_with("apiaryd: two\\nlines\\r\\u{1b}[31m\ttab\n")
        );
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = line(Level::Info, None, &long);
        assert!(cut.ends_with(&format!("é [cut at {MAX_MESSAGE_BYTES} bytes]\n")), "{}", &cut[cut.len() - 40..]);
        assert!(cut.len() <= MAX_MESSAGE_BYTES + MAX_LINE_OVERHEAD_BYTES);
        assert_eq!(cut.lines().count(), 1);
    }

    #[test]
    fn levels_parse_by_name_and_let_through_those_above() {
        for level in Level::ALL {
            assert_eq!(level.name().parse::<Level>(), Ok(level));
        }
        assert_eq!("loud".parse::<Level>(), Err("expected one of error, warn, info, debug".to_string()));
        assert!("INFO".parse::<Level>().is_err());
        let logger = Logger::new(1024, Vec::new());
        assert_eq!(logger.max_level(), Level::Info);
        assert!(logger.enabled(Level::Error) && logger.enabled(Level::Info) && !logger.enabled(Level::Debug));
        logger.set_max_level(Level::Warn);
        assert!(logger.enabled(Level::Warn) && !logger.enabled(Level::Info));
        logger.set_max_level(Level::Debug);
        assert!(logger.enabled(Level::Debug));
    }

    #[test]
    fn a_filtered_line_is_not_formatted() {
        struct Panics;
        impl fmt::Display for Panics {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                panic!("formatted a line below the level in force");
            }
        }
        let logger = Logger::new(1024, Vec::new());
        logger.log(Level::Debug, None, &Panics);
        assert!(lock(&logger.output).is_empty());
        logger.log(Level::Info, None, &"written at once: no thread runs");
        assert!(
            String::from_utf8_lossy(&lock(&logger.output))
                .ends_with(" INFO  apiaryd: written at once: no thread runs\n")
        );
    }

    /// What a test writer saw, and how it behaves.
    struct TestWriter {
        written: Arc<Mutex<Vec<u8>>>,
        /// Each write says it started here, then waits for a go (or, when
        /// the go says false, fails).
        started: Sender<()>,
        go: Receiver<bool>,
    }

    impl Write for TestWriter {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.started.send(()).unwrap();
            if !self.go.recv().unwrap() {
                return Err(io::Error::other("stderr is gone"));
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Harness {
        logger: &'static Logger<TestWriter>,
        written: Arc<Mutex<Vec<u8>>>,
        started: Receiver<()>,
        go: Sender<bool>,
    }

    impl Harness {
        fn start(capacity_bytes: usize) -> Harness {
            let written = Arc::new(Mutex::new(Vec::new()));
            let (started_sender, started) = mpsc::channel();
            let (go, go_receiver) = mpsc::channel();
            let writer = TestWriter { written: Arc::clone(&written), started: started_sender, go: go_receiver };
            let logger: &'static Logger<TestWriter> = Box::leak(Box::new(Logger::new(capacity_bytes, writer)));
            logger.start(Level::Info);
            Harness { logger, written, started, go }
        }

        fn info(&self, message: &str) {
            self.logger.log(Level::Info, None, &message);
        }

        /// Lets the writer's next write through (or fail), once it started.
        fn next_write(&self, succeeds: bool) {
            self.started.recv().unwrap();
            self.go.send(succeeds).unwrap();
        }

        fn messages(&self) -> Vec<String> {
            let written = String::from_utf8(self.written.lock().unwrap().clone()).unwrap();
            written.lines().map(|line| line.split_once(" apiaryd: ").unwrap().1.to_string()).collect()
        }
    }

    #[test]
    fn lines_past_the_queue_of_a_blocked_writer_are_dropped_and_counted() {
        let harness = Harness::start(4 * 80);
        harness.info("first");
        // The thread took "first" and waits in its write: the queue is empty.
        harness.started.recv().unwrap();
        for n in 0..10 {
            harness.info(&format!("queued {n}"));
        }
        let queued = lock(&harness.logger.queue).lines;
        assert!((3..10).contains(&queued), "{queued} lines fit");
        assert_eq!(lock(&harness.logger.queue).dropped, 10 - queued);
        harness.go.send(true).unwrap();
        // The queued lines go in one batch; the next line first says how many were dropped.
        harness.next_write(true);
        harness.info("after");
        harness.next_write(true);
        harness.logger.stop();
        let mut expected = vec!["first".to_string()];
        expected.extend((0..queued).map(|n| format!("queued {n}")));
        expected
            .push(format!("{} log lines dropped here: stderr did not take them fast enough, or failed", 10 - queued));
        expected.push("after".to_string());
        assert_eq!(harness.messages(), expected);
        // Once stopped, lines are written at once.
        let logger = harness.logger;
        let written = thread::spawn(move || logger.log(Level::Info, None, &"stopped"));
        harness.next_write(true);
        written.join().unwrap();
        assert_eq!(harness.messages().last().unwrap(), "stopped");
    }

    #[test]
    fn the_lines_of_a_failed_write_are_counted_as_dropped() {
        let harness = Harness::start(MAX_QUEUED_BYTES);
        harness.info("lost");
        harness.next_write(false);
        // The failure is counted once the write returned: wait for it.
        while lock(&harness.logger.queue).dropped == 0 {
            thread::yield_now();
        }
        harness.info("kept");
        harness.next_write(true);
        harness.logger.stop();
        assert_eq!(
            harness.messages(),
            ["1 log line dropped here: stderr did not take them fast enough, or failed", "kept"]
        );
    }

    #[test]
    fn stop_writes_out_everything_queued() {
        let harness = Harness::start(MAX_QUEUED_BYTES);
        // Every write may go through: at most one a line.
        for _ in 0..500 {
            harness.go.send(true).unwrap();
        }
        for n in 0..500 {
            harness.info(&format!("line {n}"));
        }
        harness.logger.stop();
        let expected: Vec<String> = (0..500).map(|n| format!("line {n}")).collect();
        assert_eq!(harness.messages(), expected);
    }
}

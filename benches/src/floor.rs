//! The machine's physical floor: what one loopback round trip and one durable 4 KiB
//! write cost here, measured in the same run as the load they are compared with
//! (the machine's speed moves between sessions; ratios to the floor move less).
//!
//! - Loopback: two threads ping-pong a 64-byte message over one TCP connection on
//!   127.0.0.1 with `TCP_NODELAY`, blocking reads and writes; one sample per round trip.
//! - fdatasync: a 4 KiB block of an unnamed temporary file, preallocated by writing it
//!   and syncing once, is overwritten and `fdatasync`ed; one sample per overwrite+sync.
//!   Optionally the same for appending 4 KiB blocks, which also changes the file's size.
//!
//! Every probe is bounded in samples (`MAX_SAMPLES`) and in time (`PROBE_TIME_LIMIT`):
//! it stops early, reporting how many samples it took, when the time is up.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::stats::percentile;

/// Bytes of one loopback message (each way).
pub const MESSAGE_BYTES: usize = 64;
/// Bytes of one durable write.
pub const BLOCK_BYTES: usize = 4096;
pub const DEFAULT_ROUND_TRIPS: usize = 2000;
pub const DEFAULT_SYNCS: usize = 500;
/// The most samples any one probe takes.
pub const MAX_SAMPLES: usize = 100_000;
/// A probe stops sampling after this long, whatever its count.
pub const PROBE_TIME_LIMIT: Duration = Duration::from_secs(3);
/// Untimed round trips and syncs first, so connection set-up and first faults are not samples.
const WARM_UP_SAMPLES: usize = 10;
/// `statfs` says this for tmpfs, whose fdatasync reaches no disk.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What to measure.
#[derive(Clone, Debug)]
pub struct FloorConfig {
    /// Where the temporary file goes: its file system is the one measured.
    pub dir: PathBuf,
    pub round_trips: usize,
    pub syncs: usize,
    /// Also measure appending + fdatasync.
    pub append: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("loopback probe failed: {0}")]
    Loopback(io::Error),
    #[error("the loopback echo thread failed: {0}")]
    Echo(io::Error),
    #[error("cannot create a temporary file in {dir}: {source}")]
    TempFile { dir: PathBuf, source: io::Error },
    #[error("fdatasync probe in {dir} failed: {source}")]
    Sync { dir: PathBuf, source: io::Error },
}

/// One probe's samples in nanoseconds, sorted.
#[derive(Clone, Debug)]
pub struct Samples(Vec<u64>);

impl Samples {
    fn new(mut nanos: Vec<u64>) -> Samples {
        assert!(!nanos.is_empty(), "a probe takes at least one sample");
        nanos.sort_unstable();
        Samples(nanos)
    }

    pub fn p50_ns(&self) -> u64 {
        percentile(&self.0, 0.5)
    }

    pub fn p99_ns(&self) -> u64 {
        percentile(&self.0, 0.99)
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }
}

/// `µs: p50 54.1 p99 110.3 (n=2000)`: microseconds with one decimal, so a fast tmpfs
/// sync does not print as 0.
impl fmt::Display for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = |nanos: u64| nanos as f64 / 1000.0;
        write!(f, "µs: p50 {:.1} p99 {:.1} (n={})", micros(self.p50_ns()), micros(self.p99_ns()), self.count())
    }
}

/// The floor measured in one run.
#[derive(Clone, Debug)]
pub struct Floor {
    pub dir: PathBuf,
    pub dir_is_tmpfs: bool,
    pub round_trip: Samples,
    pub overwrite_sync: Samples,
    pub append_sync: Option<Samples>,
}

impl Floor {
    /// One round trip plus one overwrite+fdatasync, p50, in µs: the least a durable
    /// request-and-reply can cost here.
    pub fn durable_round_trip_p50_us(&self) -> f64 {
        (self.round_trip.p50_ns() + self.overwrite_sync.p50_ns()) as f64 / 1000.0
    }

    /// The lines `apiary-load` prints, each starting `floor: `.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("floor: loopback round trip {}", self.round_trip)];
        lines.push(format!("floor: fdatasync 4 KiB overwrite {}", self.overwrite_sync));
        if let Some(append_sync) = &self.append_sync {
            lines.push(format!("floor: fdatasync 4 KiB append {append_sync}"));
        }
        let tmpfs_note = if self.dir_is_tmpfs { " (tmpfs: its syncs reach no disk)" } else { "" };
        lines.push(format!("floor: fdatasync file in {}{tmpfs_note}", self.dir.display()));
        lines
    }
}

/// Runs every probe the config asks for, one after another.
pub fn measure(config: &FloorConfig) -> Result<Floor, FloorError> {
    let round_trip = measure_round_trips(config.round_trips)?;
    let overwrite_sync = measure_syncs(&config.dir, config.syncs, SyncKind::Overwrite)?;
    let append_sync =
        if config.append { Some(measure_syncs(&config.dir, config.syncs, SyncKind::Append)?) } else { None };
    Ok(Floor { dir: config.dir.clone(), dir_is_tmpfs: is_tmpfs(&config.dir), round_trip, overwrite_sync, append_sync })
}

/// Times `count` blocking round trips of a 64-byte message to an echo thread.
pub fn measure_round_trips(count: usize) -> Result<Samples, FloorError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(FloorError::Loopback)?;
    let addr = listener.local_addr().map_err(FloorError::Loopback)?;
    let echo = thread::Builder::new()
        .name("floor-echo".into())
        .spawn(move || echo_until_closed(&listener))
        .map_err(FloorError::Loopback)?;
    // Should the connect fail, the echo thread stays in `accept` until the process ends.
    let stream = TcpStream::connect(addr).map_err(FloorError::Loopback)?;
    let samples = ping(stream, count);
    // `ping` dropped its stream: the echo thread sees the end and returns.
    let echoed = echo.join().expect("the echo thread does not panic");
    let samples = samples.map_err(FloorError::Loopback)?;
    echoed.map_err(FloorError::Echo)?;
    Ok(samples)
}

fn ping(mut stream: TcpStream, count: usize) -> io::Result<Samples> {
    stream.set_nodelay(true)?;
    let mut message = [0u8; MESSAGE_BYTES];
    let mut round_trip = |message: &mut [u8; MESSAGE_BYTES]| -> io::Result<u64> {
        let started = Instant::now();
        stream.write_all(message)?;
        stream.read_exact(message)?;
        Ok(started.elapsed().as_nanos() as u64)
    };
    for _ in 0..WARM_UP_SAMPLES {
        round_trip(&mut message)?;
    }
    sample(count, || round_trip(&mut message))
}

/// Accepts one connection and echoes 64-byte messages until the peer closes it.
fn echo_until_closed(listener: &TcpListener) -> io::Result<()> {
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut message = [0u8; MESSAGE_BYTES];
    loop {
        match stream.read_exact(&mut message) {
            Ok(()) => stream.write_all(&message)?,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Rewrite the same preallocated block each time.
    Overwrite,
    /// Write a new block at the end each time.
    Append,
}

/// Times `count` writes of a 4 KiB block, each followed by `fdatasync`, in an
/// unnamed temporary file in `dir` (gone when the probe ends, even if it fails).
pub fn measure_syncs(dir: &Path, count: usize, kind: SyncKind) -> Result<Samples, FloorError> {
    let file = tempfile::tempfile_in(dir).map_err(|source| FloorError::TempFile { dir: dir.to_path_buf(), source })?;
    sync_samples(&file, count, kind).map_err(|source| FloorError::Sync { dir: dir.to_path_buf(), source })
}

fn sync_samples(file: &File, count: usize, kind: SyncKind) -> io::Result<Samples> {
    let block = [0xa5u8; BLOCK_BYTES];
    // Preallocate: the block exists on disk before the first timed overwrite.
    file.write_all_at(&block, 0)?;
    file.sync_all()?;
    let mut next_offset = BLOCK_BYTES as u64;
    let mut write_and_sync = || -> io::Result<u64> {
        let offset = match kind {
            SyncKind::Overwrite => 0,
            SyncKind::Append => next_offset,
        };
        let started = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        next_offset += BLOCK_BYTES as u64;
        Ok(started.elapsed().as_nanos() as u64)
    };
    for _ in 0..WARM_UP_SAMPLES {
        write_and_sync()?;
    }
    sample(count, write_and_sync)
}

/// Takes up to `count` samples (at least one, at most `MAX_SAMPLES`), stopping early
/// once `PROBE_TIME_LIMIT` has passed.
fn sample(count: usize, mut take: impl FnMut() -> io::Result<u64>) -> io::Result<Samples> {
    let count = count.clamp(1, MAX_SAMPLES);
    let started = Instant::now();
    let mut nanos = Vec::with_capacity(count);
    while nanos.len() < count && (nanos.is_empty() || started.elapsed() < PROBE_TIME_LIMIT) {
        nanos.push(take()?);
    }
    Ok(Samples::new(nanos))
}

/// Whether `dir` is on tmpfs (where fdatasync is nearly free and says nothing of a disk).
fn is_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs reads the NUL-terminated path we own and writes only into the
    // zeroed struct we own and pass by pointer; we read it only when it succeeded.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let result = unsafe { libc::statfs(path.as_ptr(), &mut stats) };
    result == 0 && stats.f_type as i64 == TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_takes_the_samples_asked_for_and_prints_greppable_lines() {
        let dir = tempfile::tempdir().unwrap();
        let config = FloorConfig { dir: dir.path().to_path_buf(), round_trips: 20, syncs: 5, append: true };
        let floor = measure(&config).unwrap();
        assert_eq!(floor.round_trip.count(), 20);
        assert_eq!(floor.overwrite_sync.count(), 5);
        assert_eq!(floor.append_sync.as_ref().unwrap().count(), 5);
        let lines = floor.lines();
        assert!(lines[0].starts_with("floor: loopback round trip µs: p50 "), "{lines:?}");
        assert!(lines[0].ends_with("(n=20)"), "{lines:?}");
        assert!(lines[1].starts_with("floor: fdatasync 4 KiB overwrite µs: p50 "), "{lines:?}");
        assert!(lines[2].starts_with("floor: fdatasync 4 KiB append µs: p50 "), "{lines:?}");
        assert!(floor.round_trip.p50_ns() > 0 && floor.round_trip.p99_ns() >= floor.round_trip.p50_ns());
    }

    #[test]
    fn appending_grows_the_file_by_one_block_per_sync() {
        let file = tempfile::tempfile().unwrap();
        sync_samples(&file, 3, SyncKind::Append).unwrap();
        let blocks = 1 + WARM_UP_SAMPLES as u64 + 3;
        assert_eq!(file.metadata().unwrap().len(), blocks * BLOCK_BYTES as u64);
    }

    #[test]
    fn overwriting_keeps_the_file_at_one_block() {
        let file = tempfile::tempfile().unwrap();
        sync_samples(&file, 3, SyncKind::Overwrite).unwrap();
        assert_eq!(file.metadata().unwrap().len(), BLOCK_BYTES as u64);
    }

    #[test]
    fn a_missing_directory_is_a_typed_error() {
        let missing = Path::new("/nonexistent/apiary-floor");
        assert!(matches!(measure_syncs(missing, 1, SyncKind::Overwrite), Err(FloorError::TempFile { .. })));
    }

    #[test]
    fn zero_samples_asked_is_one_taken() {
        let samples = sample(0, || Ok(5)).unwrap();
        assert_eq!(samples.count(), 1);
    }
}

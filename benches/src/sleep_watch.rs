//! How late this machine wakes a thread that only sleeps. While a load runs, one
//! thread sleeps 1 ms at a time and notes every wake-up that came over
//! [`LATE_WAKE_US`] after it was due, by the second of the run. A second in which
//! the submitters saw slow round trips and this thread woke late too points at
//! the machine (the hypervisor taking the vCPUs away, or the scheduler), not at
//! the daemon: this thread waits for nothing but the clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A wake-up later than this is counted, the same bar as a slow round trip.
pub const LATE_WAKE_US: u64 = 5_000;
const NAP: Duration = Duration::from_millis(1);

/// What the watching thread saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lateness {
    pub naps: u64,
    /// The latest wake-up, in µs past its due time.
    pub worst_us: u64,
    /// Wake-ups over `LATE_WAKE_US` late, by the second (since `origin`) they came in.
    pub late_by_second: BTreeMap<u64, u64>,
}

impl Lateness {
    /// Notes one nap that was due at `due_ns` and ended at `woke_ns` (both since the origin).
    fn note(&mut self, due_ns: u64, woke_ns: u64) {
        self.naps += 1;
        let late_us = woke_ns.saturating_sub(due_ns) / 1000;
        self.worst_us = self.worst_us.max(late_us);
        if late_us > LATE_WAKE_US {
            *self.late_by_second.entry(woke_ns / 1_000_000_000).or_default() += 1;
        }
    }

    /// `machine: 1 ms naps woke late by up to 7.6 ms; over 5 ms: 3: 2 in second 4, 1 in second 9 (n=19850)`
    pub fn line(&self) -> String {
        let total: u64 = self.late_by_second.values().sum();
        let seconds: Vec<String> =
            self.late_by_second.iter().map(|(second, count)| format!("{count} in second {second}")).collect();
        format!(
            "machine: 1 ms naps woke late by up to {:.1} ms; over {} ms: {total}{}{} (n={})",
            self.worst_us as f64 / 1000.0,
            LATE_WAKE_US / 1000,
            if seconds.is_empty() { "" } else { ": " },
            seconds.join(", "),
            self.naps
        )
    }
}

/// The watching thread; `stop` ends it and returns what it saw.
pub struct SleepWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Lateness>,
}

impl SleepWatch {
    /// Starts watching; seconds are counted from `origin` (the run's clock).
    pub fn start(origin: Instant) -> SleepWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("sleep-watch".into())
            .spawn(move || watch(origin, &stopped))
            .expect("spawn the sleep-watch thread");
        SleepWatch { stop, thread }
    }

    pub fn stop(self) -> Lateness {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sleep-watch thread does not panic")
    }
}

fn watch(origin: Instant, stop: &AtomicBool) -> Lateness {
    let mut lateness = Lateness::default();
    let since_origin = || origin.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let due_ns = since_origin() + NAP.as_nanos() as u64;
        thread::sleep(NAP);
        lateness.note(due_ns, since_origin());
    }
    lateness
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_wake_ups_are_counted_by_the_second_they_came_in() {
        let mut lateness = Lateness::default();
        lateness.note(1_000_000, 1_050_000); // 50 µs late: on time
        lateness.note(2_000_000_000, 2_006_000_000); // 6 ms late, in second 2
        lateness.note(2_500_000_000, 2_500_000_000 + LATE_WAKE_US * 1000); // exactly the bar: not late
        lateness.note(9_000_000_000, 9_020_000_000); // 20 ms late, in second 9
        assert_eq!(lateness.naps, 4);
        assert_eq!(lateness.worst_us, 20_000);
        assert_eq!(lateness.late_by_second, BTreeMap::from([(2, 1), (9, 1)]));
        assert_eq!(
            lateness.line(),
            "machine: 1 ms naps woke late by up to 20.0 ms; over 5 ms: 2: 1 in second 2, 1 in second 9 (n=4)"
        );
    }

    #[test]
    fn the_thread_naps_until_stopped() {
        let watch = SleepWatch::start(Instant::now());
        thread::sleep(Duration::from_millis(30));
        let lateness = watch.stop();
        assert!(lateness.naps >= 1, "{lateness:?}");
        assert!(Lateness::default().line().ends_with("over 5 ms: 0 (n=0)"));
    }
}

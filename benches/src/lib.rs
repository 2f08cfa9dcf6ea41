//! Apiary's benchmarks and load client, kept in their own crate so the daemon's
//! crates carry no benchmark code (redb keeps its comparison benches apart the same way).
//!
//! - `benches/core.rs`: criterion benches of the sans-IO core alone (submit, dispatch,
//!   handoff at 1k..1M pending tasks). `APIARY_BENCH_QUICK=1`, or running them as tests
//!   (`cargo test --benches`), keeps only the smallest size so CI runs them in seconds.
//! - `src/bin/apiary-load/`: `apiary-load`, many simulated bots and submitters against
//!   a running `apiaryd` over loopback; prints throughput and submit-to-dispatch latency.
//!
//! This library holds what both share, and the parts of `apiary-load` that stand alone:
//!
//! - a small seeded PRNG, so runs repeat exactly;
//! - [`stats`]: percentiles as the load report prints them;
//! - [`floor`]: the machine's floor (a loopback round trip, a 4 KiB fdatasync);
//! - [`pipeline`]: a client connection with up to N requests in flight;
//! - [`sleep_watch`]: how late the machine wakes a sleeping thread during a run;
//! - [`fixture`]: a data directory holding a large state, in the daemon's own formats.

pub mod fixture;
pub mod floor;
pub mod pipeline;
pub mod sleep_watch;
pub mod stats;

/// Makes the calling thread's sleeps end when asked instead of up to 50 µs later.
/// Linux lets a thread's timers fire late by its timer slack (50 µs by default) so that
/// wake-ups can be merged; a paced submitter counts each task from when it was due, so
/// the slack would show in every round trip as if the server had taken it.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK reads its integer argument and changes only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// SplitMix64: tiny, seeded, good enough to pick priorities and classes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; `bound` must not be 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn below_stays_in_range_and_repeats_with_the_seed() {
        let mut first = Rng::new(7);
        let mut second = Rng::new(7);
        for bound in 1..1000 {
            let value = first.below(bound);
            assert!(value < bound);
            assert_eq!(value, second.below(bound));
        }
    }
}

//! Percentiles of latency samples, as `apiary-load` prints them.

use std::fmt;

/// The figures of a sorted set of samples, in whatever unit they were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: usize,
}

impl Summary {
    /// `None` when there are no samples. `sorted` must be in ascending order.
    pub fn of_sorted(sorted: &[u64]) -> Option<Summary> {
        debug_assert!(sorted.is_sorted(), "samples must be sorted");
        let max = *sorted.last()?;
        Some(Summary {
            p50: percentile(sorted, 0.5),
            p99: percentile(sorted, 0.99),
            p999: percentile(sorted, 0.999),
            max,
            count: sorted.len(),
        })
    }

    /// Sorts `samples` in place and summarises them.
    pub fn of(samples: &mut [u64]) -> Option<Summary> {
        samples.sort_unstable();
        Summary::of_sorted(samples)
    }
}

/// `p50 A, p99 B, p999 C, max D (n=N)`: the load report's format.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p50 {}, p99 {}, p999 {}, max {} (n={})", self.p50, self.p99, self.p999, self.max, self.count)
    }
}

/// The nearest-rank percentile: the smallest sample with at least `fraction` of all
/// samples at or below it. `sorted` must not be empty.
pub fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    assert!(!sorted.is_empty(), "a percentile of no samples");
    assert!((0.0..=1.0).contains(&fraction), "fraction {fraction} is not in 0..=1");
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `count / secs`, or 0 when no time passed.
pub fn rate_per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_thousand() {
        let samples: Vec<u64> = (1..=1000).collect();
        let summary = Summary::of_sorted(&samples).unwrap();
        assert_eq!(summary, Summary { p50: 500, p99: 990, p999: 999, max: 1000, count: 1000 });
        assert_eq!(summary.to_string(), "p50 500, p99 990, p999 999, max 1000 (n=1000)");
    }

    #[test]
    fn one_sample_is_every_percentile_and_none_is_no_summary() {
        assert_eq!(Summary::of(&mut [7]).unwrap(), Summary { p50: 7, p99: 7, p999: 7, max: 7, count: 1 });
        assert_eq!(Summary::of(&mut []), None);
    }

    #[test]
    fn summary_sorts_what_it_is_given() {
        let mut samples = vec![5, 1, 4, 2, 3];
        assert_eq!(Summary::of(&mut samples).unwrap().p50, 3);
        assert_eq!(samples, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn rate_of_no_time_is_zero() {
        assert_eq!(rate_per_sec(10, 0.0), 0.0);
        assert_eq!(rate_per_sec(10, 2.0), 5.0);
    }
}

//! A histogram with fixed buckets, counted in whole microseconds: an
//! observation is a search among a dozen bounds and two additions.

/// Counts of observations at most each bound, and above the last.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds in microseconds, increasing.
    bounds_us: &'static [u64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Box<[u64]>,
    sum_us: u64,
}

impl Histogram {
    pub fn new(bounds_us: &'static [u64]) -> Histogram {
        assert!(bounds_us.windows(2).all(|pair| pair[0] < pair[1]), "bucket bounds increase");
        Histogram { bounds_us, counts: vec![0; bounds_us.len() + 1].into_boxed_slice(), sum_us: 0 }
    }

    pub fn observe_micros(&mut self, micros: u64) {
        // The first bucket whose bound is at least the value: Prometheus' `le`.
        let bucket = self.bounds_us.partition_point(|&bound| bound < micros);
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(micros);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// Each bound in seconds (`None` for `+Inf`) with the observations at most it.
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let bounds = self.bounds_us.iter().map(|&bound| Some(bound as f64 / 1e6)).chain([None]);
        bounds.zip(self.counts.iter().scan(0, |total, count| {
            *total += count;
            Some(*total)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_on_a_bound_counts_in_that_bound_and_beyond_the_last_in_inf() {
        static BOUNDS_US: [u64; 2] = [10, 20];
        let mut histogram = Histogram::new(&BOUNDS_US);
        for micros in [0, 10, 11, 20, 21, u64::MAX] {
            histogram.observe_micros(micros);
        }
        let buckets: Vec<_> = histogram.cumulative_buckets().collect();
        assert_eq!(buckets, [(Some(0.00001), 2), (Some(0.00002), 4), (None, 6)]);
        assert_eq!(histogram.count(), 6);
        assert_eq!(histogram.sum_seconds(), u64::MAX as f64 / 1e6, "the sum saturates");
    }
}

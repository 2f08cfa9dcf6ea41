//! The figures of one load run, and how they compare with the floor.
//!
//! Every line starts with a fixed label (`submitted:`, `enqueue:`, `vs floor:` ...),
//! so scripts can grep for it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use apiary_benches::floor::Floor;
use apiary_benches::stats::{Summary, rate_per_sec};

use crate::bots::Arrival;
use crate::submit::{SLOW_ROUND_TRIP_US, SubmitterLog, note_slowest};
use crate::{LoadArgs, Shared};

pub(crate) struct Report {
    pub(crate) submitted: u64,
    dispatched: u64,
    pub(crate) completed: u64,
    bots: usize,
    submitters: usize,
    pipeline_depth: u64,
    submit_secs: f64,
    dispatch_secs: f64,
    complete_secs: f64,
    /// From the first NewTask sent to the last acknowledgement, over all submitters.
    enqueue_secs: f64,
    /// Submit-to-dispatch, µs.
    latency_us: Option<Summary>,
    /// NewTask sent to its acknowledgement (the creation is durable), µs.
    round_trip_us: Option<Summary>,
    /// The slowest of them, µs, and when they were sent, seconds into the run.
    slowest_round_trips: Vec<(u64, f64)>,
    /// How many took over `SLOW_ROUND_TRIP_US`, by the second of the run they were sent in.
    slow_by_second: std::collections::BTreeMap<u64, u64>,
    /// Assignments of tasks this run did not submit (left over in the data directory).
    foreign: usize,
}

impl Report {
    pub(crate) fn new(
        args: &LoadArgs,
        shared: &Shared,
        logs: Vec<SubmitterLog>,
        arrivals: &[Arrival],
        started_ns: u64,
        submit_ended_ns: u64,
    ) -> Report {
        let secs_since_start = |end_ns: u64| end_ns.saturating_sub(started_ns) as f64 / 1e9;
        let first_sent_ns = logs.iter().filter_map(|log| log.first_sent_ns).min().unwrap_or(0);
        let last_acknowledged_ns = logs.iter().map(|log| log.last_acknowledged_ns).max().unwrap_or(0);
        let (mut latencies_us, foreign) = latencies_us(&logs, arrivals);
        let mut slowest = Vec::new();
        for &(round_trip_us, sent_ns) in logs.iter().flat_map(|log| &log.slowest) {
            note_slowest(&mut slowest, round_trip_us, sent_ns);
        }
        let slowest_round_trips =
            slowest.into_iter().map(|(round_trip_us, sent_ns)| (round_trip_us, secs_since_start(sent_ns))).collect();
        let mut slow_by_second = std::collections::BTreeMap::new();
        for (&second, &count) in logs.iter().flat_map(|log| &log.slow_by_second) {
            *slow_by_second.entry(second).or_default() += count;
        }
        let mut round_trips_us: Vec<u64> = logs.into_iter().flat_map(|log| log.round_trips_us).collect();
        Report {
            submitted: shared.submitted.load(Ordering::SeqCst),
            dispatched: shared.dispatched.load(Ordering::SeqCst),
            completed: shared.completed.load(Ordering::SeqCst),
            bots: args.bots,
            submitters: args.submitters,
            pipeline_depth: args.pipeline,
            submit_secs: secs_since_start(submit_ended_ns),
            dispatch_secs: secs_since_start(shared.last_dispatch_ns.load(Ordering::SeqCst)),
            complete_secs: secs_since_start(shared.last_completion_ns.load(Ordering::SeqCst)),
            enqueue_secs: last_acknowledged_ns.saturating_sub(first_sent_ns) as f64 / 1e9,
            latency_us: Summary::of(&mut latencies_us),
            round_trip_us: Summary::of(&mut round_trips_us),
            slowest_round_trips,
            slow_by_second,
            foreign,
        }
    }

    pub(crate) fn print(&self) {
        let (submitted, dispatched, completed) = (self.submitted, self.dispatched, self.completed);
        println!(
            "submitted: {submitted} in {:.2} s, {:.0}/s",
            self.submit_secs,
            rate_per_sec(submitted, self.submit_secs)
        );
        println!(
            "enqueue: {submitted} acknowledged in {:.2} s, {:.0}/s (first send to last acknowledgement; \
             submitters {}, pipeline depth {})",
            self.enqueue_secs,
            self.acknowledged_per_sec(),
            self.submitters,
            self.pipeline_depth
        );
        println!("NewTask round trip µs: {}", describe(self.round_trip_us));
        let slowest: Vec<String> = self
            .slowest_round_trips
            .iter()
            .map(|(round_trip_us, at_secs)| format!("{round_trip_us} at {at_secs:.1} s"))
            .collect();
        println!("slowest NewTask round trips µs: {}", slowest.join(", "));
        let slow: Vec<String> =
            self.slow_by_second.iter().map(|(second, count)| format!("{count} in second {second}")).collect();
        let total: u64 = self.slow_by_second.values().sum();
        println!(
            "NewTask round trips over {} ms: {total}{}{}",
            SLOW_ROUND_TRIP_US / 1000,
            if slow.is_empty() { "" } else { ": " },
            slow.join(", ")
        );
        if self.bots == 0 {
            println!("no bots: the tasks stay pending");
            return;
        }
        let dispatch_rate = rate_per_sec(dispatched, self.dispatch_secs);
        println!("dispatched: {dispatched} in {:.2} s, {dispatch_rate:.0}/s", self.dispatch_secs);
        let complete_rate = rate_per_sec(completed, self.complete_secs);
        println!("completed: {completed} in {:.2} s, {complete_rate:.0}/s", self.complete_secs);
        println!("submit->dispatch latency µs: {}", describe(self.latency_us));
        if self.foreign > 0 {
            println!("assignments of tasks not submitted by this run: {}", self.foreign);
        }
    }

    /// The figures that have a floor, as multiples of it.
    pub(crate) fn print_against(&self, floor: &Floor) {
        let durable_us = floor.durable_round_trip_p50_us();
        let against = format!("round trip + fdatasync p50 = {durable_us:.1} µs");
        if let Some(round_trip) = self.round_trip_us {
            println!("vs floor: NewTask round trip p50 {:.2}x ({against})", round_trip.p50 as f64 / durable_us);
        }
        if let Some(latency) = self.latency_us {
            println!("vs floor: submit->dispatch p50 {:.2}x ({against})", latency.p50 as f64 / durable_us);
        }
        let sync_secs = floor.overwrite_sync.p50_ns() as f64 / 1e9;
        println!(
            "vs floor: acknowledgements per fdatasync p50 {:.1} ({:.0}/s x {:.1} µs)",
            self.acknowledged_per_sec() * sync_secs,
            self.acknowledged_per_sec(),
            sync_secs * 1e6
        );
    }

    fn acknowledged_per_sec(&self) -> f64 {
        rate_per_sec(self.submitted, self.enqueue_secs)
    }
}

/// Submit-to-dispatch of every arrival of a task this run submitted, µs; and how
/// many arrivals were of other tasks.
fn latencies_us(logs: &[SubmitterLog], arrivals: &[Arrival]) -> (Vec<u64>, usize) {
    let sent_at: HashMap<u64, u64> =
        logs.iter().flat_map(|log| &log.sent).map(|sent| (sent.task_id, sent.sent_ns)).collect();
    let mut latencies_us = Vec::with_capacity(arrivals.len());
    let mut foreign = 0;
    for arrival in arrivals {
        match sent_at.get(&arrival.task_id) {
            Some(&sent_ns) => latencies_us.push(arrival.arrived_ns.saturating_sub(sent_ns) / 1000),
            None => foreign += 1,
        }
    }
    (latencies_us, foreign)
}

fn describe(summary: Option<Summary>) -> String {
    summary.map_or_else(|| "no samples".into(), |summary| summary.to_string())
}

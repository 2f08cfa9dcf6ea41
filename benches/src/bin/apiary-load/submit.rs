//! Submitters: one thread and one connection each, keeping up to `--pipeline` NewTask
//! requests in flight (1: one at a time, each waiting for its reply). Each notes when
//! it sent a request and when its acknowledgement came, which is when the daemon had
//! made the task durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apiary_benches::Rng;
use apiary_benches::pipeline::{Answered, Pipeline, PipelineError};
use apiary_protocol::limits::MAX_EXPIRATION_SECS;
use apiary_protocol::{NewTaskRequest, Reply, Request, StringPair, TaskSlice};

use crate::{LoadArgs, SOFTWARE, Shared};

/// A task acknowledged: its id and when its NewTask was sent (ns), to match its
/// assignment with. Kept only when bots run.
pub(crate) struct Sent {
    pub(crate) task_id: u64,
    pub(crate) sent_ns: u64,
}

/// What one submitter saw; times are nanoseconds since the run's start.
#[derive(Default)]
pub(crate) struct SubmitterLog {
    pub(crate) acknowledged: u64,
    pub(crate) first_sent_ns: Option<u64>,
    pub(crate) last_acknowledged_ns: u64,
    /// NewTask sent to its acknowledgement, µs, one per task.
    pub(crate) round_trips_us: Vec<u64>,
    /// The slowest round trips (µs) and when they were sent, at most `SLOWEST_KEPT`.
    pub(crate) slowest: Vec<(u64, u64)>,
    /// Round trips over `SLOW_ROUND_TRIP_US`, counted by the second of the run they were sent in.
    pub(crate) slow_by_second: std::collections::BTreeMap<u64, u64>,
    /// Empty when no bots run (`--bots 0`): nothing is dispatched to match.
    pub(crate) sent: Vec<Sent>,
}

/// Submits until the task count or the duration (counted from `started_ns`) is
/// reached, then waits for the requests still in flight.
pub(crate) fn run_submitter(args: &LoadArgs, index: usize, shared: &Shared, started_ns: u64) -> SubmitterLog {
    apiary_benches::tighten_timer_slack();
    let mut log = SubmitterLog::default();
    if let Err(error) = submit(args, index, shared, started_ns, &mut log) {
        shared.fail(format!("submitter {index}: {error}"));
    }
    log
}

fn submit(
    args: &LoadArgs,
    index: usize,
    shared: &Shared,
    started_ns: u64,
    log: &mut SubmitterLog,
) -> Result<(), PipelineError> {
    let mut pipeline =
        Pipeline::connect(&args.server, &args.security, SOFTWARE, &args.submitter_token, args.pipeline as usize)?;
    let mut tasks = TaskMaker::new(args, index);
    let deadline_ns = started_ns.saturating_add((args.duration_secs() * 1e9).min(u64::MAX as f64) as u64);
    let mut answered = Vec::with_capacity(pipeline.depth());
    let mut pace = args.rate.map(|rate| Pace::new(rate, args.submitters, index, started_ns));
    let mut submitting = true;
    loop {
        if submitting {
            let now_ns = shared.now_ns();
            let stopped = shared.stop_submitting.load(Ordering::Relaxed) || now_ns >= deadline_ns;
            let wanted = match &pace {
                Some(pace) => pipeline.free_slots().min(pace.due_by(now_ns)),
                None => pipeline.free_slots(),
            };
            let count = if stopped || wanted == 0 { 0 } else { claim(shared, args.tasks, wanted) };
            if count > 0 {
                // Paced, a task counts from when it was due: a late send is part of its wait.
                let sent_ns = pace.as_mut().map_or(now_ns, |pace| pace.take(count));
                log.first_sent_ns.get_or_insert(sent_ns);
                pipeline.send(count, sent_ns, || tasks.next())?;
            }
            submitting = !stopped && (count > 0 || wanted == 0);
            if wanted == 0 && !stopped && pipeline.in_flight() == 0 {
                let next_ns = pace.as_ref().expect("only a pace holds tasks back").next_due_ns();
                std::thread::sleep(std::time::Duration::from_nanos(next_ns.saturating_sub(shared.now_ns())));
                continue;
            }
        }
        if pipeline.in_flight() == 0 {
            return Ok(());
        }
        answered.clear();
        pipeline.receive(&mut answered)?;
        let acknowledged_ns = shared.now_ns();
        for answer in answered.drain(..) {
            log.note(answer, acknowledged_ns, args.bots > 0)?;
            shared.submitted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `--rate`: when each of one submitter's tasks is due. The run's tasks are due
/// evenly, one every `1 / rate` seconds, dealt to the submitters in turn.
pub(crate) struct Pace {
    interval_ns: f64,
    submitters: u64,
    index: u64,
    started_ns: u64,
    /// Tasks of this submitter sent so far.
    sent: u64,
}

impl Pace {
    pub(crate) fn new(rate: f64, submitters: usize, index: usize, started_ns: u64) -> Pace {
        Pace { interval_ns: 1e9 / rate, submitters: submitters as u64, index: index as u64, started_ns, sent: 0 }
    }

    fn due_ns(&self, task: u64) -> u64 {
        self.started_ns + ((task * self.submitters + self.index) as f64 * self.interval_ns) as u64
    }

    pub(crate) fn next_due_ns(&self) -> u64 {
        self.due_ns(self.sent)
    }

    /// How many tasks not sent yet are due by `now_ns`.
    fn due_by(&self, now_ns: u64) -> usize {
        let mut due = 0;
        while self.due_ns(self.sent + due) <= now_ns {
            due += 1;
        }
        due as usize
    }

    /// Notes `count` tasks sent; returns when the first of them was due.
    pub(crate) fn take(&mut self, count: usize) -> u64 {
        let first_due_ns = self.next_due_ns();
        self.sent += count as u64;
        first_due_ns
    }
}

/// Takes up to `wanted` of the run's `--tasks` (all of them when there is no limit).
pub(crate) fn claim(shared: &Shared, limit: Option<u64>, wanted: usize) -> usize {
    let Some(limit) = limit else { return wanted };
    let before = shared.claimed.fetch_add(wanted as u64, Ordering::SeqCst);
    limit.saturating_sub(before).min(wanted as u64) as usize
}

impl SubmitterLog {
    fn note(&mut self, answer: Answered, acknowledged_ns: u64, keep_sent: bool) -> Result<(), PipelineError> {
        let Reply::Created(task) = answer.reply else {
            return Err(PipelineError::UnexpectedReply { what: "NewTask", reply: format!("{:?}", answer.reply) });
        };
        self.acknowledged += 1;
        self.last_acknowledged_ns = self.last_acknowledged_ns.max(acknowledged_ns);
        let round_trip_us = acknowledged_ns.saturating_sub(answer.sent_ns) / 1000;
        self.round_trips_us.push(round_trip_us);
        note_slowest(&mut self.slowest, round_trip_us, answer.sent_ns);
        if round_trip_us > SLOW_ROUND_TRIP_US {
            *self.slow_by_second.entry(answer.sent_ns / 1_000_000_000).or_default() += 1;
        }
        if keep_sent {
            self.sent.push(Sent { task_id: task.task_id, sent_ns: answer.sent_ns });
        }
        Ok(())
    }
}

/// A round trip slower than this is a stall, counted by when it happened.
pub(crate) const SLOW_ROUND_TRIP_US: u64 = 5_000;

/// How many of the slowest round trips are kept, to say when they happened.
pub(crate) const SLOWEST_KEPT: usize = 5;

/// Keeps `slowest` the `SLOWEST_KEPT` largest round trips, largest first.
pub(crate) fn note_slowest(slowest: &mut Vec<(u64, u64)>, round_trip_us: u64, sent_ns: u64) {
    if slowest.len() == SLOWEST_KEPT && slowest.last().is_some_and(|&(least, _)| least >= round_trip_us) {
        return;
    }
    let at = slowest.partition_point(|&(kept, _)| kept >= round_trip_us);
    slowest.insert(at, (round_trip_us, sent_ns));
    slowest.truncate(SLOWEST_KEPT);
}

/// Makes one submitter's NewTask requests: a random class and priority each.
struct TaskMaker<'a> {
    args: &'a LoadArgs,
    rng: Rng,
    submitter: usize,
    sequence: u64,
}

impl<'a> TaskMaker<'a> {
    fn new(args: &'a LoadArgs, submitter: usize) -> TaskMaker<'a> {
        let rng = Rng::new(args.seed.wrapping_mul(1_000_003).wrapping_add(submitter as u64));
        TaskMaker { args, rng, submitter, sequence: 0 }
    }

    fn next(&mut self) -> Request {
        let request = task_request(self.args, &mut self.rng, self.submitter, self.sequence);
        self.sequence += 1;
        request
    }
}

/// With bots, tasks ask for a class some bot has. Without (`--bots 0`) no live bot has
/// the pool, so tasks wait for capacity (else they would end NO_RESOURCE at once) and
/// expire as late as allowed: they are there to stay pending.
pub(crate) fn task_request(args: &LoadArgs, rng: &mut Rng, submitter: usize, sequence: u64) -> Request {
    let mut slice = TaskSlice::default();
    Arc::make_mut(&mut slice.properties).command = vec!["true".into()];
    Arc::make_mut(&mut slice.properties).dimensions = vec![
        StringPair::new("pool", &args.pool),
        StringPair::new("class", &rng.below(args.task_classes()).to_string()),
    ];
    if args.bots == 0 {
        slice.wait_for_capacity = true;
        slice.expiration_secs = MAX_EXPIRATION_SECS;
    }
    let priority = 1 + rng.below(u64::from(args.priorities)) as u8;
    let name = task_name(submitter, sequence, args.name_bytes.map(|bytes| bytes as usize));
    Request::NewTask(NewTaskRequest { name, priority, task_slices: vec![slice], ..NewTaskRequest::default() })
}

/// The filler that pads a name to `--name-bytes`.
const NAME_PADDING: char = 'x';

/// `load-<submitter>-<sequence>`, padded or cut to exactly `bytes` when given.
pub(crate) fn task_name(submitter: usize, sequence: u64, bytes: Option<usize>) -> String {
    let mut name = format!("load-{submitter}-{sequence}");
    if let Some(bytes) = bytes {
        // ASCII only, so cutting anywhere leaves valid UTF-8.
        name.truncate(bytes);
        let padding = bytes - name.len();
        name.extend(std::iter::repeat_n(NAME_PADDING, padding));
        debug_assert_eq!(name.len(), bytes);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_padded_or_cut_to_the_bytes_asked_for() {
        assert_eq!(task_name(2, 17, None), "load-2-17");
        assert_eq!(task_name(2, 17, Some(12)), "load-2-17xxx");
        assert_eq!(task_name(2, 17, Some(4)), "load");
        assert_eq!(task_name(0, 0, Some(200)).len(), 200);
    }
}

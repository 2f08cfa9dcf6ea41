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
    /// Empty when no bots run (`--bots 0`): nothing is dispatched to match.
    pub(crate) sent: Vec<Sent>,
}

/// Submits until the task count or the duration (counted from `started_ns`) is
/// reached, then waits for the requests still in flight.
pub(crate) fn run_submitter(args: &LoadArgs, index: usize, shared: &Shared, started_ns: u64) -> SubmitterLog {
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
    let mut submitting = true;
    loop {
        if submitting {
            let stopped = shared.stop_submitting.load(Ordering::Relaxed) || shared.now_ns() >= deadline_ns;
            let count = if stopped { 0 } else { claim(shared, args.tasks, pipeline.free_slots()) };
            if count > 0 {
                let sent_ns = shared.now_ns();
                log.first_sent_ns.get_or_insert(sent_ns);
                pipeline.send(count, sent_ns, || tasks.next())?;
            }
            submitting = count > 0;
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

/// Takes up to `wanted` of the run's `--tasks` (all of them when there is no limit).
fn claim(shared: &Shared, limit: Option<u64>, wanted: usize) -> usize {
    let Some(limit) = limit else { return wanted };
    let before = shared.claimed.fetch_add(wanted as u64, Ordering::SeqCst);
    limit.saturating_sub(before).min(wanted as u64) as usize
}

impl SubmitterLog {
    fn note(&mut self, answer: Answered, acknowledged_ns: u64, keep_sent: bool) -> Result<(), PipelineError> {
        let Reply::Task(task) = answer.reply else {
            return Err(PipelineError::UnexpectedReply { what: "NewTask", reply: format!("{:?}", answer.reply) });
        };
        self.acknowledged += 1;
        self.last_acknowledged_ns = self.last_acknowledged_ns.max(acknowledged_ns);
        self.round_trips_us.push(acknowledged_ns.saturating_sub(answer.sent_ns) / 1000);
        if keep_sent {
            self.sent.push(Sent { task_id: task.task_id, sent_ns: answer.sent_ns });
        }
        Ok(())
    }
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

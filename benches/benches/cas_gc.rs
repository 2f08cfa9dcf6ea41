//! Criterion benches of the content-addressed store's garbage collection
//! (docs/state.md, section 2.1), the two parts that could make someone wait:
//!
//! - `cas_roots`: the core's pass over its held tasks, which the event loop's
//!   turn pays for, at 1k, 10k, 100k and 1M pending tasks, each with an input
//!   root of its own (the worst case: no two tasks share their slices);
//! - `gc_step`: one step of a pass on the store's thread, which store
//!   requests queued behind it wait for, over a store of 100k blobs half of
//!   which one root directory names; nothing is old enough to go, so every
//!   pass does the same work. Timed per step over whole passes: the history
//!   phase (no runs here), the tree walk, then the 257 parts of the sweep.
//!
//! The blobs are written straight into the store's layout (no sync per blob),
//! in a temporary directory on the file system of the working directory.
//! `APIARY_BENCH_QUICK=1`, or a run as a test, keeps only the smallest sizes.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apiary_daemon::core::{CasRoots, ConnId, Core, CoreConfig, Input, Output};
use apiary_daemon::server::cas_gc::GcPass;
use apiary_protocol::cas::reapi::{Directory, FileNode};
use apiary_protocol::cas::{CasReference, Digest};
use apiary_protocol::{NewTaskRequest, Reply, Request, StringPair, TaskSlice};
use apiary_storage::cas::LocalStore;
use criterion::{BenchmarkId, Criterion, Throughput};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TASK_COUNTS: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];
const BLOB_COUNTS: [usize; 2] = [1_000, 100_000];

fn quick() -> bool {
    let asked = std::env::var("APIARY_BENCH_QUICK").is_ok_and(|value| value == "1");
    let args: Vec<String> = std::env::args().collect();
    let as_test = !args.iter().any(|arg| arg == "--bench") || args.iter().any(|arg| arg == "--test");
    asked || as_test
}

/// A pending task (no bot serves its pool; it waits for one) reading its own tree.
fn task_with_root(index: usize) -> Request {
    let mut slice = TaskSlice { wait_for_capacity: true, ..TaskSlice::default() };
    let properties = Arc::make_mut(&mut slice.properties);
    properties.command = vec!["true".into()];
    properties.dimensions = vec![StringPair::new("pool", "nobody")];
    let digest = Digest::of(format!("tree {index}").as_bytes());
    properties.cas_input_root = Some(Box::new(CasReference { cas_instance: String::new(), digest }));
    Request::NewTask(NewTaskRequest { name: format!("t{index}"), task_slices: vec![slice], ..Default::default() })
}

fn core_with_tasks(count: usize) -> Core {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Output::default();
    for index in 0..count {
        let input = Input::Request {
            conn: ConnId(1),
            request_id: index as u64 + 1,
            request: task_with_root(index),
            principal: None,
            grants: None,
        };
        core.handle(1_700_000_000_000 + index as u64 / 1000, input, &mut out);
        assert!(matches!(out.replies.pop().map(|reply| reply.reply), Some(Reply::Created(_))));
        out.events.clear();
    }
    core
}

/// Writes a blob file as the store lays it out.
fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let name = format!("{}-{}", digest.hex(), digest.size_bytes);
    let shard = dir.join("blobs").join(&name[..2]);
    fs::create_dir_all(&shard).unwrap();
    fs::write(shard.join(name), bytes).unwrap();
    digest
}

/// A store of `count` blobs, half of them named by one root directory; the root.
fn store_with_blobs(dir: &Path, count: usize) -> (LocalStore, Digest) {
    let mut named = Vec::new();
    for index in 0..count {
        let digest = write_blob(dir, format!("blob {index}").as_bytes());
        if index % 2 == 0 {
            named.push(FileNode { name: format!("f{index:08}"), digest: Some(digest.into()), is_executable: false });
        }
    }
    let root = write_blob(dir, &Directory { files: named, ..Directory::default() }.encode_canonical().0);
    (LocalStore::open(dir, u64::MAX).unwrap(), root)
}

fn bench_cas_roots(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("cas_roots");
    let counts = if quick() { &TASK_COUNTS[..1] } else { &TASK_COUNTS[..] };
    for &count in counts {
        let core = core_with_tasks(count);
        assert_eq!(core.cas_roots().unwrap().held.len(), count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |bencher, _| {
            bencher.iter(|| core.cas_roots().unwrap().held.len());
        });
    }
    group.finish();
}

fn bench_gc_step(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("gc_step");
    let counts = if quick() { &BLOB_COUNTS[..1] } else { &BLOB_COUNTS[..] };
    for &count in counts {
        let dir = tempfile::tempdir_in(".").unwrap();
        let (mut store, root) = store_with_blobs(dir.path(), count);
        let new_pass =
            || GcPass::new(CasRoots { held: vec![root], runs: Vec::new(), retained_from: 0 }, SystemTime::UNIX_EPOCH);
        let mut pass = new_pass();
        let (mut steps, mut longest, started) = (0u64, Duration::ZERO, Instant::now());
        // The longest step, and which of its pass it was (1: history, 2: the walk, then the sweep).
        let (mut step_of_pass, mut longest_at) = (0u64, 0u64);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |bencher, _| {
            bencher.iter_custom(|iterations| {
                let mut measured = Duration::ZERO;
                for _ in 0..iterations {
                    let step_started = Instant::now();
                    let report = pass.step(&mut store);
                    let took = step_started.elapsed();
                    (measured, steps, step_of_pass) = (measured + took, steps + 1, step_of_pass + 1);
                    if took > longest {
                        (longest, longest_at) = (took, step_of_pass);
                    }
                    if let Some(report) = report {
                        step_of_pass = 0;
                        assert_eq!(report.counts.removed_blobs, 0, "nothing is old enough");
                        pass = new_pass();
                    }
                }
                measured
            });
        });
        eprintln!(
            "gc_step/{count}: longest step {longest:?} (step {longest_at} of its pass) of {steps} steps in {:?} \
             (with criterion's own time)",
            started.elapsed()
        );
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_cas_roots(&mut criterion);
    bench_gc_step(&mut criterion);
    criterion.final_summary();
}

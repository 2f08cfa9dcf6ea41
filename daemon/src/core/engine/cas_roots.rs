//! What retained tasks name in the content-addressed store: the roots its
//! garbage collection keeps, with every blob under them (docs/state.md,
//! section 2.1).
//!
//! A held task names the input root of each of its slices and, once it has
//! ended, its output root; a task in a history run names the same in its
//! record. The core lists the held tasks' roots in one simple pass (the
//! loop's turn pays for it: 36 ms for a million pending tasks each with a
//! root of its own, `benches/benches/cas_gc.rs`; less when tasks share their
//! slices) and hands over the history runs, to be read off the loop, with the
//! retention cutoff, so that only retained records count.

use std::sync::Arc;

use apiary_protocol::TaskSlice;
use apiary_protocol::cas::Digest;
use apiary_storage::HistoryRun;

use super::*;

/// The roots of the retained tasks, as far as the core holds them.
pub struct CasRoots {
    /// Named by held tasks (in no order; a digest may come more than once).
    pub held: Vec<Digest>,
    /// The history runs of the state; their records from `retained_from` on name more.
    pub runs: Vec<Arc<HistoryRun>>,
    /// Records of tasks below this id were let go by retention.
    pub retained_from: u64,
}

impl Core {
    /// The roots of the retained tasks. Refused (and nothing may be
    /// collected) while a history run of the state is not open.
    pub fn cas_roots(&self) -> Result<CasRoots, String> {
        // Listed, not deduplicated: hashing here would double the turn's cost;
        // the store's thread puts them in a set.
        let mut held: Vec<Digest> = Vec::new();
        // Tasks share their slice lists (`core::interned`), consecutive ones most of all.
        let mut last_list: *const TaskSlice = std::ptr::null();
        for task in self.tasks.values() {
            let list = task.slices.as_ptr();
            if list != last_list {
                let inputs = task.slices.iter().filter_map(|slice| slice.properties.cas_input_root.as_ref());
                held.extend(inputs.map(|root| root.digest));
            }
            last_list = list;
            if let Some(output_root) = task.outcome.as_ref().and_then(|outcome| outcome.cas_output_root) {
                held.push(output_root);
            }
        }
        held.extend(self.outputs_to_finish.values().filter_map(|outputs| outputs.output_root));
        let runs = self.history.readers().map_err(|number| format!("history run {number} is not open"))?;
        let retained_from = RequestId::first_of_millisecond(self.retained_from_ms).as_u64();
        Ok(CasRoots { held, runs, retained_from })
    }
}

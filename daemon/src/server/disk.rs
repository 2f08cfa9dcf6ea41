//! The disk in the shell (docs/state.md, sections 2 and 7): whether the log and
//! the output store can grow, told to the core and logged once per change; and
//! output let go by retention, removed a few pack files per turn.

use std::path::PathBuf;

use apiary_storage::{OutputError, OutputStore, Wal};

use super::{ServerError, log, os};
use crate::core::{Core, Output, OutputWrite};
use crate::logging;

/// After an output write found no space, output is taken again once the file
/// system has this much room: a few of the largest chunks a bot sends.
const OUTPUT_ROOM_BYTES: u64 = 4 * apiary_protocol::limits::MAX_OUTPUT_CHUNK_BYTES as u64;
/// Output pack files removed per event-loop turn at most: an unlink of a large
/// file can take milliseconds.
const PACKS_REMOVED_PER_TURN: usize = 2;

pub struct Disk {
    data_dir: PathBuf,
    /// Why output could not be written, until there is room again.
    output_trouble: Option<String>,
    /// The reason the core was last told.
    told: Option<String>,
    /// Retention let tasks go and their output may still be on disk.
    output_to_remove: bool,
}

impl Disk {
    pub fn new(data_dir: PathBuf) -> Disk {
        Disk { data_dir, output_trouble: None, told: None, output_to_remove: true }
    }

    /// Tells the core whether the disk can take more, and logs when that
    /// changes (not when only the reason does).
    pub fn check(&mut self, wal: &Wal, core: &mut Core, out: &mut Output) {
        if self.output_trouble.is_some()
            && os::available_bytes(&self.data_dir).is_ok_and(|room| room >= OUTPUT_ROOM_BYTES)
        {
            self.output_trouble = None;
        }
        let log_trouble = wal.space_problem().map(|reason| format!("the log cannot grow: {reason}"));
        let output_trouble =
            self.output_trouble.as_ref().map(|reason| format!("task output cannot be written: {reason}"));
        let trouble = log_trouble.or(output_trouble);
        if trouble == self.told {
            return;
        }
        match &trouble {
            _ if trouble.is_some() == self.told.is_some() => {}
            Some(reason) => logging::error(format!(
                "the disk of {} is full or failing ({reason}): refusing new tasks, starting no new run and \
                 dropping new output until it recovers; reads and running tasks go on",
                self.data_dir.display()
            )),
            None => log(format!("the disk of {} takes writes again: back to normal", self.data_dir.display())),
        }
        let for_clients = trouble.as_ref().map(|reason| format!("no space in {}: {reason}", self.data_dir.display()));
        core.set_storage_trouble(for_clients, out);
        self.told = trouble;
    }

    /// Writes output bytes. A lack of space ends the run's output where the
    /// store stopped (the core marks it) and puts the daemon in degraded mode;
    /// any other failure is fatal.
    pub fn write_output(
        &mut self,
        outputs: &mut OutputStore,
        core: &mut Core,
        write: OutputWrite,
    ) -> Result<(), ServerError> {
        let run_id = write.run_id.as_u64();
        match outputs.write_at(run_id, write.offset, &write.data) {
            Ok(_) => Ok(()),
            Err(OutputError::NoSpace { context, source }) => {
                let stored_len = outputs.len(run_id)?;
                core.output_not_stored(write.run_id, stored_len);
                self.output_trouble = Some(format!("failed to {context}: {source}"));
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Retention let tasks go: their output goes too, over the next turns.
    pub fn retention_applied(&mut self) {
        self.output_to_remove = true;
    }

    /// Removes a few pack files of output past retention, if any are due.
    pub fn remove_expired_output(&mut self, core: &Core, outputs: &mut OutputStore) {
        if !self.output_to_remove {
            return;
        }
        let cutoff = core.output_retention_cutoff();
        match outputs.remove_packs_before(cutoff, PACKS_REMOVED_PER_TURN) {
            Ok(removed) if removed.packs < PACKS_REMOVED_PER_TURN => self.output_to_remove = false,
            Ok(_) => {}
            Err(error) => {
                logging::warn(format!("cannot remove output past retention: {error}"));
                self.output_to_remove = false;
            }
        }
    }
}

//! Sync jobs: the slow file work of the output store, run by the daemon at the end of an event-loop turn (any thread may run them).
//!
//! A job `fdatasync`s every pack written since the previous job, then syncs the directory
//! when packs were created, then writes the index of each pack sealed since (its pack is
//! synced first, so a durable index only ever points at durable chunks) and syncs the
//! directory again. A failed data or directory sync poisons the store: nothing written
//! since can be trusted to reach the disk. A failed index write does not: the pack's
//! chunks are durable and the store keeps its entries in memory and hands the index to the
//! next job (a job dropped without running does the same).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::error::OutputError;
use super::format::IndexEntry;
use super::index_file::{header_for, write_index};
use crate::sync_dir;

/// [`SealWork`] states, shared between the job and the store.
pub(crate) const SEAL_IN_JOB: u8 = 0;
pub(crate) const SEAL_DONE: u8 = 1;
pub(crate) const SEAL_FAILED: u8 = 2;

/// Writing the index of one sealed pack.
#[derive(Debug)]
pub(crate) struct SealWork {
    pub number: u64,
    pub pack: Arc<File>,
    pub pack_bytes: u64,
    pub entries: Arc<Vec<IndexEntry>>,
    pub state: Arc<AtomicU8>,
}

impl Drop for SealWork {
    /// A job dropped before it wrote this index hands it back to the store.
    fn drop(&mut self) {
        let _ = self.state.compare_exchange(SEAL_IN_JOB, SEAL_FAILED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Syncs the packs written and the directory entries made since the previous job, and
/// writes the indexes of packs sealed since; runs on another thread.
#[derive(Debug)]
#[must_use = "the output it covers is not durable until the job runs"]
pub struct OutputSyncJob {
    pub(crate) dir: PathBuf,
    pub(crate) packs: Vec<(u64, Arc<File>)>,
    pub(crate) sync_dir: bool,
    pub(crate) seals: Vec<SealWork>,
    pub(crate) poisoned: Arc<AtomicBool>,
}

impl OutputSyncJob {
    /// Makes the output written before the job was taken durable. An error other than an
    /// index write's leaves the store poisoned.
    pub fn run(self) -> Result<(), OutputError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(OutputError::Poisoned);
        }
        let data_packs = self.packs.iter().map(|(number, file)| (*number, file));
        let sealed_packs = self.seals.iter().map(|seal| (seal.number, &seal.pack));
        for (number, file) in data_packs.chain(sealed_packs) {
            file.sync_data().map_err(|source| self.poison(format!("sync pack {number}"), source))?;
        }
        if self.sync_dir {
            sync_dir(&self.dir).map_err(|source| self.poison(self.dir_context(), source))?;
        }
        self.write_indexes()
    }

    /// Writes each index; those that fail are retried by a later job.
    fn write_indexes(&self) -> Result<(), OutputError> {
        let written: Vec<&SealWork> = self.seals.iter().filter(|seal| write_seal(&self.dir, seal).is_ok()).collect();
        if written.is_empty() {
            return Ok(());
        }
        sync_dir(&self.dir).map_err(|source| self.poison(self.dir_context(), source))?;
        for seal in written {
            seal.state.store(SEAL_DONE, Ordering::Release);
        }
        Ok(())
    }

    fn poison(&self, context: String, source: std::io::Error) -> OutputError {
        self.poisoned.store(true, Ordering::Release);
        OutputError::Io { context, source }
    }

    fn dir_context(&self) -> String {
        format!("sync output directory {}", self.dir.display())
    }
}

fn write_seal(dir: &Path, seal: &SealWork) -> Result<(), OutputError> {
    let header = header_for(seal.number, seal.pack_bytes, &seal.entries);
    write_index(dir, &header, &seal.entries)
}

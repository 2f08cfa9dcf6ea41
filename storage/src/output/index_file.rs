//! Index files: written once when a pack is sealed (as `.idx.tmp`, synced, renamed; the
//! caller syncs the directory), then only read, by binary search with `pread`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::OutputError;
use super::format::{INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES, IndexEntry, IndexHeader, index_path, temporary_index_path};

/// Entries read at once when walking forward from the first entry of a run.
const LOOKUP_BATCH_ENTRIES: u64 = 64;

/// The header of an index for pack `pack_number` of `pack_bytes` bytes holding `entries`,
/// which must be sorted by (run id, run offset) without two sharing both.
pub(crate) fn header_for(pack_number: u64, pack_bytes: u64, entries: &[IndexEntry]) -> IndexHeader {
    debug_assert!(
        entries.windows(2).all(|pair| (pair[0].run_id, pair[0].run_offset) < (pair[1].run_id, pair[1].run_offset))
    );
    IndexHeader {
        pack_number,
        pack_bytes,
        entry_count: entries.len() as u64,
        min_run_id: entries.first().map_or(u64::MAX, |entry| entry.run_id),
        max_run_id: entries.last().map_or(0, |entry| entry.run_id),
    }
}

/// Sorts chunks found in a pack into index order, keeping the first copy (lowest pack
/// offset) of chunks that share a run id and run offset.
pub(crate) fn index_order(mut entries: Vec<IndexEntry>) -> Vec<IndexEntry> {
    entries.sort_unstable_by_key(|entry| (entry.run_id, entry.run_offset, entry.pack_offset));
    entries.dedup_by_key(|entry| (entry.run_id, entry.run_offset));
    entries
}

/// Writes the index of pack `header.pack_number` durably under its temporary name and
/// renames it into place. The directory is not synced here.
pub(crate) fn write_index(dir: &Path, header: &IndexHeader, entries: &[IndexEntry]) -> Result<(), OutputError> {
    let number = header.pack_number;
    let temporary = temporary_index_path(dir, number);
    let mut bytes = Vec::with_capacity(header.file_bytes() as usize);
    bytes.extend_from_slice(&header.encode());
    for entry in entries {
        bytes.extend_from_slice(&entry.encode());
    }
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .and_then(|file| file.write_all_at(&bytes, 0).and_then(|()| file.sync_all()));
    if let Err(source) = written {
        // A leftover temporary file is removed at the next open anyway.
        let _ = fs::remove_file(&temporary);
        return Err(OutputError::growing(|| format!("write index of pack {number}"))(source));
    }
    fs::rename(&temporary, index_path(dir, number))
        .map_err(OutputError::growing(|| format!("rename index of pack {number} into place")))
}

/// Reads and checks an index's header against its file's length.
pub(crate) fn read_header(file: &File) -> Result<IndexHeader, String> {
    let mut bytes = [0u8; INDEX_HEADER_BYTES];
    file.read_exact_at(&mut bytes, 0).map_err(|error| format!("cannot read its header: {error}"))?;
    let header = IndexHeader::decode(&bytes)?;
    let file_bytes = file.metadata().map_err(|error| format!("cannot stat it: {error}"))?.len();
    if file_bytes != header.file_bytes() {
        return Err(format!("it is {file_bytes} bytes, its header says {}", header.file_bytes()));
    }
    Ok(header)
}

/// The entries of run `run_id` in an index of `entry_count` entries, in index order.
pub(crate) fn entries_of_run(
    file: &File,
    path: &Path,
    entry_count: u64,
    run_id: u64,
) -> Result<Vec<IndexEntry>, OutputError> {
    let read_entries = |first: u64, count: u64| -> Result<Vec<IndexEntry>, OutputError> {
        let mut bytes = vec![0u8; count as usize * INDEX_ENTRY_BYTES];
        let at = INDEX_HEADER_BYTES as u64 + first * INDEX_ENTRY_BYTES as u64;
        file.read_exact_at(&mut bytes, at).map_err(OutputError::io(|| format!("read index {}", path.display())))?;
        bytes
            .chunks_exact(INDEX_ENTRY_BYTES)
            .zip(first..)
            .map(|(entry, index)| {
                let offset = INDEX_HEADER_BYTES as u64 + index * INDEX_ENTRY_BYTES as u64;
                IndexEntry::decode(entry).map_err(|reason| OutputError::Corrupted {
                    file: path.to_path_buf(),
                    offset,
                    reason,
                })
            })
            .collect()
    };
    let (mut low, mut high) = (0, entry_count);
    while low < high {
        let middle = low + (high - low) / 2;
        if read_entries(middle, 1)?[0].run_id < run_id {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let mut found = Vec::new();
    while low < entry_count {
        let batch = read_entries(low, LOOKUP_BATCH_ENTRIES.min(entry_count - low))?;
        low += batch.len() as u64;
        let before = found.len();
        found.extend(batch.iter().take_while(|entry| entry.run_id == run_id));
        if found.len() - before < batch.len() {
            break;
        }
    }
    Ok(found)
}

/// The entries of run `run_id` among `entries`, which are in index order.
pub(crate) fn entries_of_run_in(entries: &[IndexEntry], run_id: u64) -> &[IndexEntry] {
    let first = entries.partition_point(|entry| entry.run_id < run_id);
    let count = entries[first..].partition_point(|entry| entry.run_id == run_id);
    &entries[first..first + count]
}

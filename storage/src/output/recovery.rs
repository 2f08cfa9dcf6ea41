//! Opening the store: which packs are sealed, which one is current, and what is in it.
//!
//! - A pack whose `.idx` is whole (header CRC, length, pack number and pack length agree)
//!   is sealed and trusted without reading it.
//! - A pack with a damaged `.idx` was fully synced before its index was written, so it is
//!   scanned whole: a bad chunk anywhere is [`OutputError::Corrupted`], naming the pack;
//!   otherwise its index is written again.
//! - A pack with no `.idx` that is not the newest was being sealed: it is scanned, its torn
//!   tail (bytes after the last whole chunk, never synced) is cut, and its index written.
//! - The newest pack without an index is the current pack: scanned the same way and its
//!   torn tail cut. A new current pack is made when there is none.
//! - Temporary files and indexes without a pack (a removal stopped half way) are removed.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::Path;

use super::error::OutputError;
use super::format::{CHUNK_HEADER_BYTES, ChunkHeader, EntryName, IndexEntry, classify, index_path, pack_path};
use super::index_file::{header_for, index_order, read_header, write_index};
use super::packs::{CurrentPack, SealedPack};
use crate::sync_dir;

/// Bytes read at once when scanning a pack.
const SCAN_BUFFER_BYTES: usize = 1 << 20;
/// Number of the first pack of an empty store.
const FIRST_PACK_NUMBER: u64 = 1;

#[derive(Debug)]
pub(crate) struct Recovered {
    /// By number, oldest first.
    pub sealed: Vec<SealedPack>,
    pub current: CurrentPack,
}

/// Everything a scan found in a pack.
#[derive(Debug)]
struct Scan {
    /// Chunks in file order.
    entries: Vec<IndexEntry>,
    /// Just past the last whole chunk.
    valid_end: u64,
    /// Where the first bad chunk starts and why, if one does.
    damage: Option<(u64, String)>,
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, OutputError> {
    let (packs, indexes) = list(dir)?;
    for &number in indexes.difference(&packs) {
        remove(&index_path(dir, number))?;
    }
    let mut sealed = Vec::with_capacity(packs.len());
    let mut current = None;
    let newest = packs.last().copied();
    for &number in &packs {
        let pack = open_pack(dir, number)?;
        let index = indexes.contains(&number).then(|| open_index(dir, number, &pack)).flatten();
        match index {
            Some(Ok(trusted)) => sealed.push(trusted),
            Some(Err(reason)) => sealed.push(reindex_damaged(dir, number, &pack, reason)?),
            None if Some(number) == newest => current = Some(current_from_scan(number, pack)?),
            None => sealed.push(reindex_unsealed(dir, number, &pack)?),
        }
    }
    let current = match current {
        Some(current) => current,
        None => create_pack(dir, newest.map_or(FIRST_PACK_NUMBER, |newest| newest + 1))?,
    };
    sync_dir(dir).map_err(OutputError::io(|| format!("sync output directory {}", dir.display())))?;
    Ok(Recovered { sealed, current })
}

/// The pack and index numbers in `dir`; temporary files are removed.
fn list(dir: &Path) -> Result<(BTreeSet<u64>, BTreeSet<u64>), OutputError> {
    let mut packs = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    let entries = fs::read_dir(dir).map_err(OutputError::io(|| format!("list output directory {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(OutputError::io(|| format!("list output directory {}", dir.display())))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        match classify(&name) {
            EntryName::Pack(number) => {
                packs.insert(number);
            }
            EntryName::Index(number) => {
                indexes.insert(number);
            }
            EntryName::Temporary => remove(&entry.path())?,
            EntryName::Other => {}
        }
    }
    Ok((packs, indexes))
}

fn remove(path: &Path) -> Result<(), OutputError> {
    fs::remove_file(path).map_err(OutputError::io(|| format!("remove leftover {}", path.display())))
}

fn open_pack(dir: &Path, number: u64) -> Result<File, OutputError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(pack_path(dir, number))
        .map_err(OutputError::io(|| format!("open pack {number}")))
}

/// The sealed pack an index describes, or why the index cannot be trusted.
fn open_index(dir: &Path, number: u64, pack: &File) -> Option<Result<SealedPack, String>> {
    let index = File::open(index_path(dir, number)).ok()?;
    Some(read_header(&index).and_then(|header| {
        let pack_bytes = pack.metadata().map_err(|error| format!("cannot stat its pack: {error}"))?.len();
        if header.pack_number != number {
            return Err(format!("it is the index of pack {}", header.pack_number));
        }
        if header.pack_bytes != pack_bytes {
            return Err(format!("it is for a pack of {} bytes, the pack has {pack_bytes}", header.pack_bytes));
        }
        Ok(SealedPack::indexed(number, pack_bytes, header.entry_count, header.min_run_id, header.max_run_id))
    }))
}

/// A pack whose index is damaged: the pack must be whole, and is indexed again.
fn reindex_damaged(dir: &Path, number: u64, pack: &File, index_damage: String) -> Result<SealedPack, OutputError> {
    let scan = scan(pack, number)?;
    if let Some((offset, reason)) = scan.damage {
        return Err(OutputError::Corrupted {
            file: pack_path(dir, number),
            offset,
            reason: format!("{reason} (and its index is damaged: {index_damage})"),
        });
    }
    write_new_index(dir, number, scan)
}

/// A pack that was being sealed: its torn tail is cut and it is indexed.
fn reindex_unsealed(dir: &Path, number: u64, pack: &File) -> Result<SealedPack, OutputError> {
    let scan = scan(pack, number)?;
    cut_torn_tail(pack, number, &scan)?;
    write_new_index(dir, number, scan)
}

fn write_new_index(dir: &Path, number: u64, scan: Scan) -> Result<SealedPack, OutputError> {
    let entries = index_order(scan.entries);
    let header = header_for(number, scan.valid_end, &entries);
    write_index(dir, &header, &entries)?;
    Ok(SealedPack::indexed(number, scan.valid_end, header.entry_count, header.min_run_id, header.max_run_id))
}

fn current_from_scan(number: u64, pack: File) -> Result<CurrentPack, OutputError> {
    let scan = scan(&pack, number)?;
    cut_torn_tail(&pack, number, &scan)?;
    let mut current = CurrentPack::new(number, pack);
    for entry in scan.entries {
        current.add(entry.run_id, entry.run_offset, entry.pack_offset, entry.data_len);
    }
    assert_eq!(current.end, scan.valid_end);
    Ok(current)
}

/// Cuts what follows the last whole chunk (never acknowledged: a sync job would have
/// made it whole), so later chunks start on a clean end.
fn cut_torn_tail(pack: &File, number: u64, scan: &Scan) -> Result<(), OutputError> {
    if scan.damage.is_none() {
        return Ok(());
    }
    pack.set_len(scan.valid_end)
        .and_then(|()| pack.sync_all())
        .map_err(OutputError::io(|| format!("cut the torn tail of pack {number} at {}", scan.valid_end)))
}

fn create_pack(dir: &Path, number: u64) -> Result<CurrentPack, OutputError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(pack_path(dir, number))
        .map_err(OutputError::growing(|| format!("create pack {number}")))?;
    Ok(CurrentPack::new(number, file))
}

/// Reads a pack chunk by chunk, checking each, up to its end or its first bad chunk.
fn scan(pack: &File, number: u64) -> Result<Scan, OutputError> {
    let pack_bytes = pack.metadata().map_err(OutputError::io(|| format!("stat pack {number}")))?.len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, pack);
    let mut found = Scan { entries: Vec::new(), valid_end: 0, damage: None };
    let mut data = Vec::new();
    while found.valid_end < pack_bytes {
        match next_chunk(&mut reader, pack_bytes - found.valid_end, &mut data) {
            Ok(Ok(header)) => {
                let pack_offset = found.valid_end;
                found.entries.push(IndexEntry {
                    run_id: header.run_id,
                    run_offset: header.run_offset,
                    pack_offset,
                    data_len: header.data_len,
                });
                found.valid_end += CHUNK_HEADER_BYTES as u64 + u64::from(header.data_len);
            }
            Ok(Err(reason)) => {
                found.damage = Some((found.valid_end, reason));
                break;
            }
            Err(source) => return Err(OutputError::Io { context: format!("scan pack {number}"), source }),
        }
    }
    Ok(found)
}

/// The next chunk of a pack with `remaining` bytes left, or why it is not a whole one.
fn next_chunk(
    reader: &mut impl Read,
    remaining: u64,
    data: &mut Vec<u8>,
) -> std::io::Result<Result<ChunkHeader, String>> {
    if remaining < CHUNK_HEADER_BYTES as u64 {
        return Ok(Err(format!("{remaining} bytes are left, too few for a chunk header")));
    }
    let mut header_bytes = [0u8; CHUNK_HEADER_BYTES];
    reader.read_exact(&mut header_bytes)?;
    let header = match ChunkHeader::decode(&header_bytes) {
        Ok(header) => header,
        Err(reason) => return Ok(Err(reason)),
    };
    if remaining - (CHUNK_HEADER_BYTES as u64) < u64::from(header.data_len) {
        return Ok(Err(format!("the chunk's {} bytes of data run past the end of the pack", header.data_len)));
    }
    data.resize(header.data_len as usize, 0);
    reader.read_exact(data)?;
    Ok(header.check_data(&header_bytes, data).map(|()| header))
}

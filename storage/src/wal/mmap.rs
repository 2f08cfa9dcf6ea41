//! The memory mapping of one segment file: the only `unsafe` code in the crate.
//!
//! A [`SegmentMap`] is owned by the log's writer; a [`SyncHandle`] to the same mapping may
//! be sent to a flusher thread. Their soundness contract:
//!
//! - **One owner of the bytes.** Only `SegmentMap` creates references into the mapping or
//!   writes to it. Writes take `&mut self`, slices borrow `&self`, so the borrow checker
//!   guarantees no slice is alive while its bytes change. The writer therefore never hands
//!   out a reference into bytes still being written.
//! - **The syncer never touches bytes.** `SyncHandle` only asks the kernel to write pages
//!   back (`msync`); it creates no reference and reads nothing through Rust, so it may run
//!   while the owner writes to the same pages.
//! - **Nobody else changes the file.** The log directory is locked (`flock`) for as long as
//!   the `Wal` lives, so no other Apiary process writes or truncates a segment; the writer
//!   never shrinks a file. A file changed behind the lock's back (by hand) is outside the
//!   contract: it can make a slice's contents change or the process take SIGBUS.
//! - **In bounds.** Every offset is checked against the mapping's length before a pointer
//!   is formed, with assertions that panic rather than touch memory outside the mapping.
//!
//! A [`ReadOnlyMap`] is a reader's mapping of a segment the writer may also map and still
//! append to (`read_records`, on another thread, without the lock). Its contract: it only
//! forms a slice over a prefix of the file the caller vouches for as stable, bytes the
//! writer never writes again (records up to a durable sequence number, and the zeros after
//! the last record of a sealed segment). The writer never shrinks a file, and deletion only
//! removes segments whose records the reader's caller no longer asks for; a mapping of a
//! file unlinked meanwhile stays valid.
//!
//! Snapshot files (`snapshot.rs`) are read through a `ReadOnlyMap` too: a snapshot never
//! changes after it is renamed into place, so all of it is a stable prefix.
//!
//! Payload slices handed to `rkyv` are 16-byte aligned because the mapping starts on a page
//! boundary and record payloads sit at 16-byte-aligned file offsets; their CRC is checked
//! during recovery before anything reads them.

use std::fs::File;
use std::io;
use std::sync::Arc;

use memmap2::MmapRaw;

/// The writer's mapping of a whole segment file.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    raw: Arc<MmapRaw>,
}

/// A handle that can only sync a mapping's pages; `Send + Sync + 'static`.
#[derive(Debug, Clone)]
pub(crate) struct SyncHandle {
    raw: Arc<MmapRaw>,
}

impl SegmentMap {
    /// Maps all of `file`, which must be open for reading and writing and not be empty.
    pub(crate) fn map(file: &File) -> io::Result<SegmentMap> {
        let raw = MmapRaw::map_raw(file)?;
        assert!(raw.len() > 0, "an empty file cannot be mapped");
        Ok(SegmentMap { raw: Arc::new(raw) })
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    /// The whole mapped file.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the pointer and length describe the live mapping, which stays mapped while
        // `self.raw` (borrowed for the slice's lifetime) lives. No write can happen while the
        // slice lives: writes need `&mut self`, `SyncHandle` never writes, and the directory
        // lock keeps other processes out. u8 has no invalid bit patterns and alignment 1.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr(), self.raw.len()) }
    }

    /// Copies `data` into the mapping at `offset`.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset.checked_add(data.len()).expect("write range overflows");
        assert!(end <= self.raw.len(), "write of {}..{end} past a mapping of {} bytes", offset, self.raw.len());
        // SAFETY: `offset..end` lies inside the mapping (asserted above). `&mut self` means no
        // slice from `bytes()` is alive, and `data` cannot overlap the mapping because it
        // would then be such a slice. A concurrent `msync` only reads pages in the kernel.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.raw.as_mut_ptr().add(offset), data.len()) }
    }

    /// Sets `len` bytes at `offset` to zero.
    pub(crate) fn zero(&mut self, offset: usize, len: usize) {
        let end = offset.checked_add(len).expect("zero range overflows");
        assert!(end <= self.raw.len(), "zeroing {offset}..{end} past a mapping of {} bytes", self.raw.len());
        // SAFETY: in bounds (asserted above); `&mut self` means no slice into the mapping is alive.
        unsafe { std::ptr::write_bytes(self.raw.as_mut_ptr().add(offset), 0, len) }
    }

    /// Writes back `len` bytes at `offset` and waits for the disk.
    pub(crate) fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.raw.flush_range(offset, len)
    }

    pub(crate) fn sync_handle(&self) -> SyncHandle {
        SyncHandle { raw: Arc::clone(&self.raw) }
    }
}

impl SyncHandle {
    /// Writes back `len` bytes at `offset` (`msync(MS_SYNC)`, which on Linux is an fdatasync
    /// of that range) and waits for the disk.
    pub(crate) fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.raw.flush_range(offset, len)
    }
}

/// A read-only mapping of a whole segment file, read from another thread than the writer's.
#[derive(Debug)]
pub(crate) struct ReadOnlyMap {
    raw: MmapRaw,
}

impl ReadOnlyMap {
    /// Maps all of `file`, open for reading, not empty.
    pub(crate) fn map(file: &File) -> io::Result<ReadOnlyMap> {
        let raw = memmap2::MmapOptions::new().map_raw_read_only(file)?;
        assert!(raw.len() > 0, "an empty file cannot be mapped");
        Ok(ReadOnlyMap { raw })
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    /// The first `len` bytes of the file. The caller vouches that no one writes them while
    /// the slice lives (see the module's contract): they hold durable records, or zeros
    /// after the last record of a sealed segment.
    pub(crate) fn stable_prefix(&self, len: usize) -> &[u8] {
        assert!(len <= self.raw.len(), "prefix of {len} bytes of a mapping of {}", self.raw.len());
        // SAFETY: `0..len` lies inside the mapping (asserted above), which stays mapped while
        // `self.raw` (borrowed for the slice's lifetime) lives, even if the file is unlinked.
        // The caller only asks for bytes no one writes any more: records up to a durable
        // sequence number are never written again, the writer never shrinks a file, and the
        // directory lock keeps other processes from changing it.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn sync_handle_can_go_to_another_thread() {
        assert_send_sync_static::<SyncHandle>();
    }

    #[test]
    fn writes_are_visible_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(4096).unwrap();
        let mut map = SegmentMap::map(&file).unwrap();
        map.write(100, b"hello");
        assert_eq!(&map.bytes()[100..105], b"hello");
        map.sync_handle().sync_range(0, 4096).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[100..105], b"hello");
        map.zero(100, 5);
        assert!(map.bytes().iter().all(|&byte| byte == 0));
    }
}

//! The memory mapping of one segment file: the only `unsafe` code in the crate.
//!
//! A [`SegmentMap`] is owned by the log's writer; a [`SyncHandle`] to the same mapping may
//! be sent to another thread. Their soundness contract:
//!
//! - **One owner of the bytes.** Only `SegmentMap` creates references into the mapping or
//!   writes to it (through the mapping, or through the file with `pwrite`, which changes the
//!   same page-cache pages). Writes take `&mut self`, slices borrow `&self`, so the borrow
//!   checker guarantees no slice is alive while its bytes change. The writer therefore never hands
//!   out a reference into bytes still being written.
//! - **The syncer never touches bytes.** `SyncHandle` only asks the kernel to write pages
//!   back (`msync`) or to drop its page-table entries for pages (`madvise`); it creates no
//!   reference and reads nothing through Rust, so it may run while the owner writes to the
//!   same mapping.
//! - **Releasing pages never changes bytes.** `SyncHandle::release` drops the process's
//!   page-table entries for whole pages (`madvise(MADV_DONTNEED)`), so they leave its
//!   resident set. On a `MAP_SHARED` file mapping that changes neither the file nor the page
//!   cache: a dirty page stays dirty in the page cache, the address range stays mapped, and
//!   the next access faults in a page with the same bytes (the kernel does the same by
//!   itself when it reclaims mapped file pages under memory pressure). So a slice from
//!   `bytes()` over released pages stays valid: what it reads back is identical. A write
//!   never races with the release of its page: a `SyncHandle` releases only pages the owner
//!   no longer writes (the sync job: pages wholly before the end of a synced range, which
//!   is at or before the write head, while writes go at or after the write head), and
//!   `SegmentMap::release_unwritten`, which releases pages the owner will write later (the
//!   zeros after the write head, read by recovery), takes `&mut self`, so the owner writes
//!   nothing meanwhile.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use memmap2::MmapRaw;

/// The size of a memory page: mappings start on one, and pages are released whole.
pub(crate) fn page_bytes() -> usize {
    static PAGE_BYTES: OnceLock<usize> = OnceLock::new();
    *PAGE_BYTES.get_or_init(|| {
        // SAFETY: `sysconf` takes no pointer and only reads a system constant.
        let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(bytes).ok().filter(|bytes| bytes.is_power_of_two()).expect("the page size is a power of two")
    })
}

/// One segment's mapping, shared by its owner and its sync handles.
#[derive(Debug)]
struct Mapping {
    raw: MmapRaw,
    /// Pages before this offset were released (see `SyncHandle::release`); page-aligned.
    released_upto: AtomicUsize,
}

/// The writer's mapping of a whole segment file, and the file itself: appends go
/// through the file (`pwrite`), so they dirty only the file-system blocks they touch.
/// A store through the mapping dirties its whole page-cache folio instead (64 KiB and
/// more with large folios), which the next sync then writes out in full.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    mapping: Arc<Mapping>,
    file: File,
}

/// A handle that can only sync a mapping's pages and release them from the resident set;
/// `Send + Sync + 'static`.
#[derive(Debug, Clone)]
pub(crate) struct SyncHandle {
    mapping: Arc<Mapping>,
}

impl SegmentMap {
    /// Maps all of `file`, which must be open for reading and writing and not be empty.
    pub(crate) fn map(file: &File) -> io::Result<SegmentMap> {
        let raw = MmapRaw::map_raw(file)?;
        assert!(raw.len() > 0, "an empty file cannot be mapped");
        assert!((raw.as_ptr() as usize).is_multiple_of(page_bytes()), "a mapping starts on a page boundary");
        let mapping = Arc::new(Mapping { raw, released_upto: AtomicUsize::new(0) });
        Ok(SegmentMap { mapping, file: file.try_clone()? })
    }

    pub(crate) fn len(&self) -> usize {
        self.mapping.raw.len()
    }

    /// The whole mapped file.
    pub(crate) fn bytes(&self) -> &[u8] {
        let raw = &self.mapping.raw;
        // SAFETY: the pointer and length describe the live mapping, which stays mapped while
        // `self.mapping` (borrowed for the slice's lifetime) lives. No write can happen while
        // the slice lives: writes need `&mut self`, `SyncHandle` never writes, and the
        // directory lock keeps other processes out. A page released meanwhile reads back the
        // same bytes (see the module's contract). u8 has no invalid bit patterns and
        // alignment 1.
        unsafe { std::slice::from_raw_parts(raw.as_ptr(), raw.len()) }
    }

    /// Writes `data` into the file at `offset` (`pwrite`); the mapping shows it at once, as
    /// both are the page cache. `&mut self`, as for `write`: no slice is alive meanwhile.
    pub(crate) fn write_through_file(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(data.len()).expect("write range overflows");
        assert!(end <= self.len(), "write of {offset}..{end} past a mapping of {} bytes", self.len());
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset as u64)
    }

    /// Sets `len` bytes at `offset` to zero.
    pub(crate) fn zero(&mut self, offset: usize, len: usize) {
        let raw = &self.mapping.raw;
        let end = offset.checked_add(len).expect("zero range overflows");
        assert!(end <= raw.len(), "zeroing {offset}..{end} past a mapping of {} bytes", raw.len());
        // SAFETY: in bounds (asserted above); `&mut self` means no slice into the mapping is alive.
        unsafe { std::ptr::write_bytes(raw.as_mut_ptr().add(offset), 0, len) }
    }

    /// Writes back `len` bytes at `offset` and waits for the disk.
    pub(crate) fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.mapping.raw.flush_range(offset, len)
    }

    pub(crate) fn sync_handle(&self) -> SyncHandle {
        SyncHandle { mapping: Arc::clone(&self.mapping) }
    }

    /// Drops the process's page-table entries for the pages `offset..offset + len`, which
    /// the owner has not written yet but will (the zeros after the write head), as
    /// `SyncHandle::release` does, without moving `released_upto()`: a later read faults
    /// its page back in, and the sync job that covers it releases it again. `offset` and
    /// `len` are multiples of the page size, and `offset` is at or after `released_upto()`.
    pub(crate) fn release_unwritten(&mut self, offset: usize, len: usize) -> io::Result<()> {
        let released_upto = self.mapping.released_upto.load(Ordering::Acquire);
        assert!(
            offset >= released_upto,
            "unwritten pages at {offset} lie before the pages released up to {released_upto}"
        );
        // `&mut self`: no slice is alive and the owner writes nothing while the pages go.
        self.mapping.drop_pages(offset, len)
    }

    /// This process's resident bytes of the mapping: the `Rss` of its entry in
    /// `/proc/self/smaps`, which counts pages mapped into the process, not the file's pages
    /// in the page cache (what `mincore` would report). Linux only; for tests.
    #[cfg(test)]
    pub(crate) fn resident_bytes(&self) -> usize {
        let start = self.mapping.raw.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let is_our_header = |line: &str| {
            let range = line.split_whitespace().next().unwrap_or("");
            range.split_once('-').and_then(|(first, _)| usize::from_str_radix(first, 16).ok()) == Some(start)
        };
        let rss_kib = smaps
            .lines()
            .skip_while(|line| !is_our_header(line))
            .find_map(|line| line.strip_prefix("Rss:"))
            .expect("the mapping is listed in /proc/self/smaps with its Rss");
        let kib: usize = rss_kib.trim().trim_end_matches("kB").trim().parse().expect("Rss is a number of kB");
        kib * 1024
    }
}

impl SyncHandle {
    /// Writes back `len` bytes at `offset` (`msync(MS_SYNC)`, which on Linux is an fdatasync
    /// of that range) and waits for the disk.
    pub(crate) fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.mapping.raw.flush_range(offset, len)
    }

    /// Pages before this offset were released already.
    pub(crate) fn released_upto(&self) -> usize {
        self.mapping.released_upto.load(Ordering::Acquire)
    }

    /// Drops the process's page-table entries for the pages `offset..offset + len`
    /// (`madvise(MADV_DONTNEED)`), so they leave its resident set; the file and the page
    /// cache keep their bytes, and a later read faults them back in. `offset` and `len` are
    /// multiples of the page size. The caller releases only pages the owner no longer writes
    /// (see the module's contract). On success, `released_upto()` is at least the range's end.
    pub(crate) fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        self.mapping.drop_pages(offset, len)?;
        let end = offset + len;
        self.mapping.released_upto.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }
}

impl Mapping {
    /// `madvise(MADV_DONTNEED)` of the whole pages `offset..offset + len`. Both callers make
    /// sure no write to these pages runs meanwhile (see `SyncHandle::release` and
    /// `SegmentMap::release_unwritten`).
    fn drop_pages(&self, offset: usize, len: usize) -> io::Result<()> {
        let raw = &self.raw;
        let end = offset.checked_add(len).expect("release range overflows");
        assert!(end <= raw.len(), "release of {offset}..{end} past a mapping of {} bytes", raw.len());
        assert!(
            offset.is_multiple_of(page_bytes()) && len.is_multiple_of(page_bytes()),
            "release of {offset}..{end} is not page-aligned"
        );
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `offset..end` lies inside the live mapping (asserted above), which `self`
        // keeps mapped, and starts on a page boundary because the mapping does. MADV_DONTNEED
        // on this MAP_SHARED file mapping changes no byte of the file or the page cache and
        // leaves the range mapped: it forms no reference, and a slice the owner holds over
        // these bytes reads the same contents back. No page in the range is being written:
        // the owner writes only at or after its write head; a sync handle releases only pages
        // wholly before the end of a synced range, which the write head had reached when the
        // sync job was taken, so the page holding the write head is never released that way;
        // and the owner releases pages after its write head only through `&mut self`, while
        // it writes nothing.
        let result = unsafe { libc::madvise(raw.as_mut_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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

    /// Drops the process's page-table entries for the whole mapping
    /// (`madvise(MADV_DONTNEED)`), so the pages read so far leave its resident
    /// set; the page cache keeps them, and a later read faults them back in.
    pub(crate) fn release_all(&self) -> io::Result<()> {
        // SAFETY: the range is the whole live mapping, which `self.raw` keeps mapped, from
        // its page-aligned start. MADV_DONTNEED on this read-only MAP_SHARED file mapping
        // changes no byte of the file or the page cache and leaves the range mapped: a slice
        // over these bytes (`stable_prefix`) reads the same contents back.
        let result = unsafe { libc::madvise(self.raw.as_mut_ptr().cast(), self.raw.len(), libc::MADV_DONTNEED) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    /// Creates `path` as a file of `len` zero bytes, open for reading and writing.
    fn create_file(path: &Path, len: usize) -> File {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
        file.set_len(len as u64).unwrap();
        file
    }

    #[test]
    fn sync_handle_can_go_to_another_thread() {
        assert_send_sync_static::<SyncHandle>();
    }

    #[test]
    fn writes_are_visible_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let mut map = SegmentMap::map(&create_file(&path, 4096)).unwrap();
        map.write_through_file(100, b"hello").unwrap();
        assert_eq!(&map.bytes()[100..105], b"hello");
        map.sync_handle().sync_range(0, 4096).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[100..105], b"hello");
        map.zero(100, 5);
        assert!(map.bytes().iter().all(|&byte| byte == 0));
    }

    /// Pages released before they are synced: the dirty bytes stay in the page cache, read
    /// back the same through the mapping, and still reach the file.
    #[test]
    fn released_pages_leave_the_resident_set_and_keep_their_bytes() {
        let page = page_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let mut map = SegmentMap::map(&create_file(&path, 64 * page)).unwrap();
        let pattern: Vec<u8> = (0..32 * page).map(|at| (at * 7 % 251) as u8).collect();
        map.write_through_file(0, &pattern).unwrap();
        // Read through the mapping, the pages become resident.
        assert_eq!(&map.bytes()[..32 * page], &pattern[..]);
        let resident_before = map.resident_bytes();
        assert!(resident_before >= 32 * page, "pages read are resident");
        let handle = map.sync_handle();
        handle.release(0, 16 * page).unwrap();
        assert_eq!(handle.released_upto(), 16 * page);
        let resident_after = map.resident_bytes();
        assert!(resident_after <= resident_before - 16 * page, "{resident_before} -> {resident_after} bytes");
        assert_eq!(&map.bytes()[..32 * page], &pattern[..]);
        handle.sync_range(0, 32 * page).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..32 * page], &pattern[..]);
    }

    /// Pages after the write head go without moving the mark, and a write shows through
    /// the mapping.
    #[test]
    fn unwritten_pages_are_released_without_moving_the_mark() {
        let page = page_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let mut map = SegmentMap::map(&create_file(&path, 64 * page)).unwrap();
        assert!(map.bytes().iter().all(|&byte| byte == 0));
        let resident_before = map.resident_bytes();
        map.release_unwritten(8 * page, 56 * page).unwrap();
        assert_eq!(map.sync_handle().released_upto(), 0);
        let resident_after = map.resident_bytes();
        assert!(resident_after <= resident_before.min(8 * page), "{resident_before} -> {resident_after} bytes");
        map.write_through_file(20 * page + 5, b"later").unwrap();
        assert_eq!(&map.bytes()[20 * page..20 * page + 10], b"\0\0\0\0\0later");
        map.sync_range(0, 64 * page).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[20 * page + 5..20 * page + 10], b"later");
    }

    #[test]
    #[should_panic(expected = "not page-aligned")]
    fn a_release_must_cover_whole_pages() {
        let dir = tempfile::tempdir().unwrap();
        let map = SegmentMap::map(&create_file(&dir.path().join("m"), 4 * page_bytes())).unwrap();
        let _ = map.sync_handle().release(0, page_bytes() + 16);
    }
}

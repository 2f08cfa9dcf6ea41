//! The large files beside the log (history runs, snapshots, uploaded blobs, the log's own
//! old segments and the zeros of its next one) are written and removed a MiB at a time, so
//! that the log's syncs never queue behind a large write or a large discard.
//!
//! Written through the page cache and synced once at the end, such a file reaches the
//! disk all at once (a history run can be a hundred MB), and every sync of the log issued
//! meanwhile waits behind it: a 95 ms sync, and as long a wait for every reply, during a
//! snapshot that moved 409,224 ended tasks to history (docs/hot-path.md). So each
//! `STEP_BYTES` written are written back at once, by the thread that wrote them
//! (`sync_file_range`: write, and wait), and the disk never has more than that of these
//! files queued ahead of the log. The final `sync_all` still makes the file durable;
//! write-behind only spreads its writing out. RocksDB's `bytes_per_sync` and PostgreSQL's
//! `checkpoint_flush_after` do the same.
//!
//! Removal has the same shape on a file system that discards freed blocks (`-o discard`,
//! common on virtual and flash disks): unlinking a 64 MiB segment discards all its blocks
//! at once (at the next journal commit, where there is a journal), and the log's syncs
//! waited 9-12 ms behind that discard after every snapshot that let segments go. `remove_gradually` frees the file's blocks a step
//! at a time, each step synced, then unlinks it. It serves the log's segments, the
//! snapshots and the history runs past retention; text files, which the daemon may still
//! map when the snapshot job removes them, are unlinked whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Bytes written, or freed, between two waits for the disk.
pub(crate) const STEP_BYTES: u64 = 1 << 20;

/// A file written from start to end, written back every `STEP_BYTES`.
pub(crate) struct WriteBehind {
    file: File,
    /// Bytes written so far.
    written: u64,
    /// Bytes written back so far.
    written_back: u64,
}

impl WriteBehind {
    pub(crate) fn new(file: File) -> WriteBehind {
        WriteBehind { file, written: 0, written_back: 0 }
    }

    pub(crate) fn into_inner(self) -> File {
        self.file
    }

    fn write_back(&mut self) -> io::Result<()> {
        write_back(&self.file, self.written_back, self.written - self.written_back)?;
        self.written_back = self.written;
        Ok(())
    }
}

impl Write for WriteBehind {
    /// Writes at most up to the next write-back, so a large buffer is written back in steps.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = STEP_BYTES - (self.written - self.written_back);
        let written = self.file.write(&bytes[..bytes.len().min(room as usize)])?;
        self.written += written as u64;
        if self.written - self.written_back >= STEP_BYTES {
            self.write_back()?;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes `len` bytes of `file` at `offset` back to the disk and waits until they are
/// written (`sync_file_range`). Not a sync: the disk's cache is not flushed, nor the
/// file's metadata written.
pub(crate) fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range reads only its integer arguments; the descriptor is open for
    // as long as `file` is borrowed.
    #[allow(unsafe_code)]
    let result =
        unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes `path`, first freeing its blocks `STEP_BYTES` at a time from its end, each step
/// synced. Holes, not truncation: a process that still maps the file reads zeros there,
/// never a fault (`SIGBUS`). Where holes cannot be made (a file system without
/// `FALLOC_FL_PUNCH_HOLE`) or the file cannot be opened for writing, it is unlinked whole.
/// The caller syncs the directory.
pub(crate) fn remove_gradually(path: &Path) -> io::Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(error),
        Err(_) => return fs::remove_file(path),
    };
    let mut end = file.metadata()?.len();
    while end > STEP_BYTES {
        let start = (end - 1) / STEP_BYTES * STEP_BYTES;
        match punch_hole(&file, start, end - start) {
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => break,
            result => result?,
        }
        file.sync_all()?;
        end = start;
    }
    drop(file);
    fs::remove_file(path)
}

/// Frees the blocks of `file` from `offset` for `len` bytes; its size stays.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Allocates the first `len` bytes of `file` without writing them (they read as zeros) and
/// makes it that long. `EOPNOTSUPP` where the file system cannot.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    fallocate(file, 0, 0, len)
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate reads only its integer arguments; the descriptor is open for as
    // long as `file` is borrowed.
    #[allow(unsafe_code)]
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's dirty pages, as the kernel counts them for this file alone, are not
    /// observable; what can be checked is that every byte arrives, in order, whatever
    /// the sizes of the writes, and that a write never crosses a write-back.
    #[test]
    fn every_byte_arrives_in_order_and_writes_stop_at_each_write_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let mut writer = WriteBehind::new(File::create(&path).unwrap());
        let content: Vec<u8> = (0..3 * STEP_BYTES + 12_345).map(|index| (index % 251) as u8).collect();
        let first = writer.write(&content).unwrap();
        assert_eq!(first as u64, STEP_BYTES, "one write stops at the first write-back");
        assert_eq!(writer.written_back, STEP_BYTES);
        writer.write_all(&content[first..first + 10]).unwrap();
        for chunk in content[first + 10..].chunks(4099) {
            writer.write_all(chunk).unwrap();
        }
        assert_eq!(writer.written_back, 3 * STEP_BYTES);
        writer.into_inner().sync_all().unwrap();
        assert_eq!(fs::read(&path).unwrap(), content);
    }

    #[test]
    fn removing_gradually_removes_files_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, STEP_BYTES, STEP_BYTES + 1, 3 * STEP_BYTES + 4096] {
            let path = dir.path().join(format!("file-{len}"));
            fs::write(&path, vec![7u8; len as usize]).unwrap();
            remove_gradually(&path).unwrap();
            assert!(!path.exists(), "a file of {len} bytes is gone");
        }
        // A reader that still has the file open finds its size and, past the first step, holes.
        let path = dir.path().join("read");
        let len = 3 * STEP_BYTES + 4096;
        fs::write(&path, vec![7u8; len as usize]).unwrap();
        let mut reader = File::open(&path).unwrap();
        remove_gradually(&path).unwrap();
        let mut content = Vec::new();
        io::Read::read_to_end(&mut reader, &mut content).unwrap();
        assert_eq!(content.len() as u64, len);
        assert!(content[STEP_BYTES as usize..].iter().all(|&byte| byte == 0), "freed past the first step");
        let missing = remove_gradually(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}

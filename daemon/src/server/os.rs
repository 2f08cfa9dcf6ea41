//! The few operating-system calls std does not offer.

/// Raises the open-file limit to the hard limit, so the daemon can hold as
/// many connections as the system allows. Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// The listen backlog the daemon asks for; the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: libc::c_int = 65_535;

/// Raises a listening socket's backlog (listen again on a listening socket
/// only changes it). With the default of 1,024, a fleet of bots reconnecting at
/// once overflows it, and each dropped connection waits out a SYN retransmit
/// of 1, 2, 4, ... seconds.
pub fn raise_listen_backlog(listener: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    // SAFETY: listen takes a file descriptor we own and an integer.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Turns transparent huge pages off for the daemon. The allocator asks for
/// them, and a fault on a huge page can wait for the kernel to compact memory:
/// under load that put pauses of several milliseconds into the event loop
/// (p999 submit-to-dispatch 6-8 ms with them, 2-3 ms without).
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How much the snapshot thread yields to the event loop (a nice value).
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority, so that on a machine with
/// few cores a background job yields to the event loop.
pub fn lower_this_thread_priority() -> std::io::Result<()> {
    // SAFETY: gettid has no arguments and cannot fail.
    let thread_id = unsafe { libc::gettid() };
    // SAFETY: setpriority only reads its integer arguments; on Linux a thread id
    // names that one thread for PRIO_PROCESS.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id as libc::id_t, BACKGROUND_NICE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Has the kernel kill this process when its parent dies, so a child doing
/// the daemon's work never outlives the daemon. `parent` is the pid the parent
/// had when it started this process: if it is already gone, this exits.
pub fn die_with_parent(parent: u32) {
    // SAFETY: prctl with PR_SET_PDEATHSIG reads only its integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no arguments and cannot fail.
    if unsafe { libc::getppid() } as u32 != parent {
        std::process::exit(1);
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub fn available_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: statvfs is plain old data; all zeros is a valid value for it.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs reads the NUL-terminated path and writes into the struct we own.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

//! Every `unsafe` call of the agent, in one place: the shutdown signal handlers,
//! signalling a task's process group, and waiting for a child's exit without
//! reaping it.
//!
//! Invariants kept here:
//! - the signal handler only stores into an atomic (async-signal-safe);
//! - a process group is signalled only while its leader is known not to be reaped
//!   (the runner waits with `WNOWAIT` first), so its id cannot have been reused.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the SIGTERM/SIGINT handler; read by the main thread.
static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(_signal: libc::c_int) {
    SHUTDOWN_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs handlers for SIGTERM and SIGINT that only set a flag.
pub(crate) fn install_shutdown_handlers() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `action` is fully initialised (zeroed, then every field we rely on
        // set) before the call; the handler is an `extern "C" fn(c_int)` that only does
        // an atomic store, which is async-signal-safe. SA_RESTART keeps blocking
        // syscalls of other threads from failing with EINTR.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_shutdown_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) fn shutdown_requested() -> bool {
    SHUTDOWN_REQUESTED.load(Ordering::SeqCst)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupSignal {
    Terminate,
    Kill,
}

/// Sends a signal to every process of a process group. A group that no longer
/// exists is not an error.
pub(crate) fn signal_process_group(process_group_id: u32, signal: GroupSignal) -> io::Result<()> {
    let process_group_id = libc::pid_t::try_from(process_group_id)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "process group id out of range"))?;
    assert!(process_group_id > 1, "refusing to signal process group {process_group_id}");
    let signal = match signal {
        GroupSignal::Terminate => libc::SIGTERM,
        GroupSignal::Kill => libc::SIGKILL,
    };
    // SAFETY: killpg takes plain integers and touches no memory of ours. The id is
    // greater than 1 (checked above), so this never means "our own group" (0) or init.
    let result = unsafe { libc::killpg(process_group_id, signal) };
    if result != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(error);
        }
    }
    Ok(())
}

/// Blocks until the child `pid` has exited, but leaves it a zombie so that its
/// pid (and so its process group id) stays reserved until it is reaped.
pub(crate) fn wait_for_exit_without_reaping(pid: u32) -> io::Result<()> {
    let pid = libc::id_t::from(pid);
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t owned by this frame for the
        // duration of the call; waitid writes only into it.
        let result = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// True when a process with this pid exists (zombies included).
#[cfg(test)]
pub(crate) fn process_exists(pid: u32) -> bool {
    let pid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

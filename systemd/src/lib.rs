//! What Apiary's programs tell systemd, and what they take from it, for a
//! service of `Type=notify` (sd_notify(3), systemd.exec(5)).
//!
//! - [`Notifier`] sends `READY=1`, `STATUS=...`, `STOPPING=1` and `WATCHDOG=1`
//!   as one datagram each to the socket `$NOTIFY_SOCKET` names: a path, or an
//!   abstract name written with a leading `@`. Its socket is non-blocking: a
//!   message the service manager's queue has no room for is dropped and the
//!   send says so, so a stalled manager never stalls an event loop.
//! - [`watchdog_ping_interval`] reads `$WATCHDOG_USEC` (and `$WATCHDOG_PID`,
//!   which must be absent or this process): `WATCHDOG=1` is due at half of it.
//! - [`state_directory`] reads `$STATE_DIRECTORY` (`StateDirectory=`): its
//!   first entry when several are given.
//!
//! A few lines of `std` do this; no crate is needed. Linux only, as systemd is.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
pub const STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// The variables by which the service manager speaks to its service alone: a
/// process the service starts (a task, a health check) must not inherit them,
/// or it could report readiness or feed the watchdog in the service's name.
pub const SERVICE_MANAGER_VARIABLES: [&str; 3] = [NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID];

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("{NOTIFY_SOCKET}={0:?} is neither an absolute path nor an abstract socket name starting with '@'")]
    NotifySocketName(String),
    #[error("cannot use {NOTIFY_SOCKET}={socket:?}: {source}")]
    NotifySocket { socket: String, source: io::Error },
    #[error("{WATCHDOG_USEC}={0:?} is not a number of microseconds")]
    WatchdogUsec(String),
    #[error("{WATCHDOG_PID}={0:?} is not a process id")]
    WatchdogPid(String),
}

/// The service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names; `None` when it is unset or empty
    /// (the program was not started by a service manager that listens).
    pub fn from_env() -> Result<Option<Notifier>, SystemdError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(name) if !name.is_empty() => Notifier::connect(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for a socket named as `$NOTIFY_SOCKET` names it.
    pub fn connect(name: &OsStr) -> Result<Notifier, SystemdError> {
        let text = name.to_string_lossy().into_owned();
        let failed = |source| SystemdError::NotifySocket { socket: text.clone(), source };
        let bytes = name.as_bytes();
        let address = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(failed)?,
            Some(b'/') => SocketAddr::from_pathname(Path::new(name)).map_err(failed)?,
            _ => return Err(SystemdError::NotifySocketName(text)),
        };
        let socket = UnixDatagram::unbound().map_err(failed)?;
        socket.set_nonblocking(true).map_err(failed)?;
        Ok(Notifier { socket, address })
    }

    /// Sends `KEY=VALUE` lines as one datagram.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(message.as_bytes(), &self.address)?;
        if sent < message.len() {
            return Err(io::Error::other(format!("sent {sent} of {} bytes", message.len())));
        }
        Ok(())
    }

    /// Start-up is done: the service manager starts what waits for this one.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// The line `systemctl status` shows.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// The program began to stop of its own accord or on a signal.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// Feeds the watchdog: the program is still making progress.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }
}

/// A status is one line of the datagram: a line break would start another key.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// How often to send `WATCHDOG=1`: half the watchdog timeout the service
/// manager set (`WatchdogSec=`), or `None` without one, or when it is meant
/// for another process (`$WATCHDOG_PID`).
pub fn watchdog_ping_interval() -> Result<Option<Duration>, SystemdError> {
    let usec = std::env::var_os(WATCHDOG_USEC);
    let pid = std::env::var_os(WATCHDOG_PID);
    ping_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn ping_interval(usec: Option<&OsStr>, pid: Option<&OsStr>, own_pid: u32) -> Result<Option<Duration>, SystemdError> {
    let Some(usec) = usec.filter(|usec| !usec.is_empty()) else { return Ok(None) };
    let text = usec.to_string_lossy();
    let usec: u64 = text.parse().map_err(|_| SystemdError::WatchdogUsec(text.into_owned()))?;
    if let Some(pid) = pid.filter(|pid| !pid.is_empty()) {
        let text = pid.to_string_lossy();
        let pid: u32 = text.parse().map_err(|_| SystemdError::WatchdogPid(text.into_owned()))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    // Zero turns the watchdog off (sd_watchdog_enabled(3)).
    Ok((usec > 0).then(|| Duration::from_micros(usec) / 2))
}

/// The directory `StateDirectory=` made for the service (its first, when it
/// names several), or `None` outside such a service.
pub fn state_directory() -> Option<PathBuf> {
    first_state_directory(std::env::var_os(STATE_DIRECTORY))
}

fn first_state_directory(value: Option<OsString>) -> Option<PathBuf> {
    let value = value?;
    let first = value.as_bytes().split(|byte| *byte == b':').next().filter(|first| !first.is_empty())?;
    Some(PathBuf::from(OsStr::from_bytes(first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let len = socket.recv(&mut buffer).expect("a datagram");
        String::from_utf8(buffer[..len].to_vec()).expect("text")
    }

    #[test]
    fn messages_reach_a_socket_named_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        notifier.ready("serving:\n3 pending").unwrap();
        assert_eq!(received(&listener), "READY=1\nSTATUS=serving: 3 pending", "a status stays on its line");
        notifier.watchdog().unwrap();
        assert_eq!(received(&listener), "WATCHDOG=1");
        notifier.stopping("shutting down").unwrap();
        assert_eq!(received(&listener), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn messages_reach_an_abstract_socket_named_with_an_at_sign() {
        let name = format!("apiary-systemd-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let notifier = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.status("recovering").unwrap();
        assert_eq!(received(&listener), "STATUS=recovering");
    }

    #[test]
    fn a_relative_socket_name_is_refused_by_name() {
        let error = Notifier::connect(OsStr::new("run/notify")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "NOTIFY_SOCKET=\"run/notify\" is neither an absolute path nor an abstract socket name starting with '@'"
        );
    }

    #[test]
    fn a_send_to_a_socket_nobody_listens_on_fails_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::connect(dir.path().join("nobody").as_os_str()).unwrap();
        assert!(notifier.watchdog().is_err());
    }

    fn interval(usec: Option<&str>, pid: Option<&str>) -> Result<Option<Duration>, SystemdError> {
        ping_interval(usec.map(OsStr::new), pid.map(OsStr::new), 42)
    }

    #[test]
    fn the_watchdog_is_fed_at_half_its_timeout_when_it_is_meant_for_this_process() {
        assert_eq!(interval(None, None).unwrap(), None);
        assert_eq!(interval(Some("3000000"), None).unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(interval(Some("3000000"), Some("42")).unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(interval(Some("3000000"), Some("7")).unwrap(), None, "another process's watchdog");
        assert_eq!(interval(Some("0"), None).unwrap(), None, "zero turns it off");
        assert_eq!(
            interval(Some("soon"), None).unwrap_err().to_string(),
            "WATCHDOG_USEC=\"soon\" is not a number of microseconds"
        );
        assert_eq!(interval(Some("10"), Some("x")).unwrap_err().to_string(), "WATCHDOG_PID=\"x\" is not a process id");
    }

    #[test]
    fn the_state_directory_is_the_first_one_named() {
        let first = |value: &str| first_state_directory(Some(OsString::from(value)));
        assert_eq!(first("/var/lib/apiary"), Some(PathBuf::from("/var/lib/apiary")));
        assert_eq!(first("/var/lib/apiary:/var/lib/other"), Some(PathBuf::from("/var/lib/apiary")));
        assert_eq!(first(""), None);
        assert_eq!(first_state_directory(None), None);
    }
}

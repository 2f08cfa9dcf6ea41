//! What the daemon tells systemd when it runs as a `Type=notify` service
//! (`apiary_systemd`): `STATUS=` while it recovers, `READY=1` once it serves,
//! a status line every few seconds while it serves, `WATCHDOG=1` at half the
//! watchdog timeout, and `STOPPING=1` when it shuts down. Without
//! `$NOTIFY_SOCKET` it does nothing.
//!
//! The watchdog is fed by the event loop itself, between turns (its poll
//! timeout wakes it in time): a loop that hangs stops feeding it, and systemd
//! restarts the daemon.

use std::time::{Duration, Instant};

use apiary_systemd::{Notifier, watchdog_ping_interval};

use super::log;
use crate::logging;

/// How often the status line is renewed while the daemon serves.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

pub struct ServiceManager {
    notifier: Option<Notifier>,
    /// Half the watchdog timeout, when systemd watches the daemon.
    watchdog_every: Option<Duration>,
    /// When the next `WATCHDOG=1` and status line are due; none before `ready`.
    next_watchdog: Option<Instant>,
    next_status: Option<Instant>,
    last_status: String,
    /// The last send failed (said once, until one succeeds again).
    failing: bool,
}

impl ServiceManager {
    /// From the variables systemd sets; a malformed one is logged and ignored.
    pub fn from_env() -> ServiceManager {
        let notifier = Notifier::from_env().unwrap_or_else(|error| {
            logging::warn(format!("not telling systemd how the daemon is doing: {error}"));
            None
        });
        let watchdog_every = match (&notifier, watchdog_ping_interval()) {
            (Some(_), Ok(every)) => every,
            (Some(_), Err(error)) => {
                logging::warn(format!("not feeding the systemd watchdog: {error}"));
                None
            }
            (None, _) => None,
        };
        ServiceManager { notifier, watchdog_every, ..ServiceManager::disabled() }
    }

    /// One that tells nothing (the daemon outside systemd, and tests).
    pub fn disabled() -> ServiceManager {
        ServiceManager {
            notifier: None,
            watchdog_every: None,
            next_watchdog: None,
            next_status: None,
            last_status: String::new(),
            failing: false,
        }
    }

    pub fn status(&mut self, status: &str) {
        if let Some(notifier) = &self.notifier {
            let sent = notifier.status(status);
            self.sent("STATUS", sent);
        }
    }

    /// Start-up is done: the listeners accept and the core is recovered.
    pub fn ready(&mut self, status: String, now: Instant) {
        let Some(notifier) = &self.notifier else { return };
        let sent = notifier.ready(&status);
        self.sent("READY=1", sent);
        if let Some(every) = self.watchdog_every {
            log(format!("feeding the systemd watchdog every {} ms", every.as_millis()));
            self.next_watchdog = Some(now + every);
        }
        self.last_status = status;
        self.next_status = Some(now + STATUS_INTERVAL);
    }

    /// When `tick` next has something to send.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_watchdog.into_iter().chain(self.next_status).min()
    }

    /// Feeds the watchdog and renews the status line when they are due; the
    /// status is made only then, and sent only when it changed.
    pub fn tick(&mut self, now: Instant, status: impl FnOnce() -> String) {
        if let (Some(due), Some(every)) = (self.next_watchdog, self.watchdog_every)
            && now >= due
        {
            self.next_watchdog = Some(now + every);
            if let Some(notifier) = &self.notifier {
                let sent = notifier.watchdog();
                self.sent("WATCHDOG=1", sent);
            }
        }
        if self.next_status.is_some_and(|due| now >= due) {
            self.next_status = Some(now + STATUS_INTERVAL);
            let status = status();
            if status != self.last_status {
                self.status(&status);
                self.last_status = status;
            }
        }
    }

    /// The daemon began to shut down: nothing more is due after this.
    pub fn stopping(&mut self, status: &str) {
        let Some(notifier) = &self.notifier else { return };
        let sent = notifier.stopping(status);
        self.sent("STOPPING=1", sent);
        self.next_watchdog = None;
        self.next_status = None;
    }

    fn sent(&mut self, what: &str, result: std::io::Result<()>) {
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                log(format!("systemd's notification socket takes messages again ({what})"));
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                self.failing = true;
                logging::warn(format!("cannot send {what} to systemd's notification socket: {error}"));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    fn listening() -> (tempfile::TempDir, UnixDatagram, ServiceManager) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        let manager = ServiceManager { notifier: Some(notifier), ..ServiceManager::disabled() };
        (dir, socket, manager)
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut messages = Vec::new();
        let mut buffer = [0u8; 512];
        while let Ok(len) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
        }
        messages
    }

    #[test]
    fn the_watchdog_is_fed_when_due_and_the_status_sent_when_it_changed() {
        let (_dir, socket, mut manager) = listening();
        manager.watchdog_every = Some(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(manager.next_due(), None, "nothing is due before the daemon is ready");
        manager.ready("serving: 0 pending".into(), start);
        assert_eq!(received(&socket), ["READY=1\nSTATUS=serving: 0 pending"]);
        assert_eq!(manager.next_due(), Some(start + Duration::from_secs(5)));
        manager.tick(start + Duration::from_secs(4), || unreachable!("no status is due"));
        assert!(received(&socket).is_empty(), "nothing due yet");
        manager.tick(start + Duration::from_secs(5), || unreachable!("no status is due"));
        assert_eq!(received(&socket), ["WATCHDOG=1"]);
        manager.tick(start + STATUS_INTERVAL, || "serving: 0 pending".into());
        assert_eq!(received(&socket), ["WATCHDOG=1"], "an unchanged status is not sent again");
        manager.tick(start + STATUS_INTERVAL * 2, || "serving: 2 pending".into());
        assert_eq!(received(&socket), ["WATCHDOG=1", "STATUS=serving: 2 pending"]);
        manager.stopping("shutting down");
        assert_eq!(received(&socket), ["STOPPING=1\nSTATUS=shutting down"]);
        assert_eq!(manager.next_due(), None, "nothing is due once stopping");
    }

    #[test]
    fn without_a_notification_socket_nothing_is_ever_due() {
        let mut manager = ServiceManager::disabled();
        manager.ready("serving".into(), Instant::now());
        assert_eq!(manager.next_due(), None);
    }
}

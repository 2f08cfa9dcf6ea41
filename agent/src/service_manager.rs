//! What the bot tells systemd when it runs as a `Type=notify` service
//! (`apiary_systemd`): `READY=1` once it first reached the daemon and polls,
//! a `STATUS=` line whenever it connects or loses the connection, and
//! `STOPPING=1` when it shuts down. Without `$NOTIFY_SOCKET` it does nothing.
//!
//! The bot does not feed a watchdog: it spends minutes in long polls and
//! hours in tasks, and the daemon already watches it (a bot not heard from
//! for the bot death timeout is dead, and its task ends BOT_DIED).

use apiary_systemd::Notifier;

pub(crate) struct ServiceManager {
    notifier: Option<Notifier>,
    /// Where and as whom the bot polls, for the status lines.
    polling: String,
    ready: bool,
    /// Whether the bot was connected when last observed.
    connected: bool,
}

impl ServiceManager {
    pub(crate) fn from_env(server: &str, bot_id: &str) -> ServiceManager {
        let notifier = Notifier::from_env().unwrap_or_else(|error| {
            log_event!("not telling systemd how the bot is doing: {error}");
            None
        });
        ServiceManager { notifier, polling: format!("{server} as {bot_id}"), ready: false, connected: false }
    }

    /// Tells systemd about a change of the connection to the daemon; the
    /// first connection makes the bot ready.
    pub(crate) fn observe(&mut self, connected: bool) {
        let Some(notifier) = &self.notifier else { return };
        if connected == self.connected {
            return;
        }
        self.connected = connected;
        let sent = match (connected, self.ready) {
            (true, false) => {
                self.ready = true;
                notifier.ready(&format!("polling {}", self.polling))
            }
            (true, true) => notifier.status(&format!("polling {}", self.polling)),
            (false, _) => notifier.status(&format!("reconnecting to {}", self.polling)),
        };
        if let Err(error) = sent {
            log_event!("cannot tell systemd how the bot is doing: {error}");
        }
    }

    pub(crate) fn stopping(&mut self) {
        let Some(notifier) = &self.notifier else { return };
        if let Err(error) = notifier.stopping("shutting down") {
            log_event!("cannot tell systemd the bot stops: {error}");
        }
    }
}

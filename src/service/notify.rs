//! sd_notify(3) through the `sd-notify` crate: READY, STATUS, WATCHDOG, RELOADING, STOPPING.
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Sends notifications to the service manager, when there is one.
pub struct Notifier {
    enabled: bool,
    failed: bool,
}

impl Notifier {
    /// A notifier for this process: enabled when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            failed: false,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Sends `states` in one datagram; the first failure is logged, later ones are not.
    pub fn send(&mut self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        match sd_notify::notify(false, states) {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                warn!("sd_notify: cannot notify the service manager: {e}");
            }
            Err(_) => {}
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if it asked this process.
///
/// Like libsystemd's `sd_watchdog_enabled`, and unlike `sd_notify::watchdog_enabled`, an
/// absent `WATCHDOG_PID` means "this process": only a `WATCHDOG_PID` naming another process
/// turns it off.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

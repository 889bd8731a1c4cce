//! Running as a service: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING), the
//! signals (SIGINT/SIGTERM quit, SIGHUP reload, SIGUSR1 figures) and the control socket.
//! Everything here runs on normal-priority threads and talks to the engine through the
//! same request channel as the keys and the footswitch, and through its atomics.

pub mod control;
pub mod notify;
mod reload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{error, info, warn};

pub use control::{ControlRequest, ControlSocket, CtlError};
pub use reload::{Rebind, ReloadSource};

use crate::engine::{Request, SharedStatus, StatusSink, StatusSnapshot};
use crate::library::Config;
use crate::rt::{self, Role};
use crate::stats::{Metric, StatsCollector};
use notify::Notifier;

/// How often the service thread wakes (bounds the delay of STOPPING=1 and of shutdown).
const TICK: Duration = Duration::from_millis(20);
/// How often STATUS= is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often the sink re-reads the clock's p99.
const P99_EVERY: Duration = Duration::from_millis(500);

/// The flags the signal handlers set. Register them before anything slow, so a SIGTERM
/// during loading ends the process cleanly instead of killing it.
#[derive(Clone, Default)]
pub struct Signals {
    /// SIGINT, SIGTERM (and SIGHUP in a terminal, where it means the terminal went away).
    pub quit: Arc<AtomicBool>,
    /// SIGUSR1: log the figures.
    pub usr1: Arc<AtomicBool>,
    /// SIGHUP as a service: reload the config and library.
    pub hup: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers. `hup_reloads`: SIGHUP reloads (service) rather than quits
    /// (terminal hang-up).
    pub fn register(hup_reloads: bool) -> Signals {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let signals = Signals::default();
        let hup = if hup_reloads {
            &signals.hup
        } else {
            &signals.quit
        };
        for (signal, flag) in [
            (SIGINT, &signals.quit),
            (SIGTERM, &signals.quit),
            (SIGUSR1, &signals.usr1),
            (SIGHUP, hup),
        ] {
            if let Err(e) = signal_hook::flag::register(signal, flag.clone()) {
                warn!("cannot handle signal {signal}: {e}");
            }
        }
        signals
    }
}

/// Where the control socket goes: `--control-socket`, else the config's
/// `service.control_socket`, else `$RUNTIME_DIRECTORY/control.sock` (systemd's
/// `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR/backline/control.sock`; `None` when none is
/// known.
pub fn socket_path(cli: Option<&Path>, config: &Config) -> Option<PathBuf> {
    cli.map(Path::to_path_buf)
        .or_else(|| config.service.control_socket.clone())
        .or_else(default_socket_path)
}

/// The socket path from the environment alone (what `backline ctl` looks for first).
pub fn default_socket_path() -> Option<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    // RuntimeDirectory= with several folders gives a colon-separated list: the first is ours.
    let runtime = std::env::var("RUNTIME_DIRECTORY")
        .ok()
        .and_then(|v| v.split(':').next().map(PathBuf::from))
        .filter(|p| p.is_absolute());
    runtime
        .map(|dir| dir.join("control.sock"))
        .or_else(|| from_env("XDG_RUNTIME_DIR").map(|dir| dir.join("backline/control.sock")))
}

/// Where `backline ctl` connects without `--socket`: the environment's path when it exists,
/// else the system service's `/run/backline/control.sock` when that exists, else the
/// environment's path (for the error message).
pub fn ctl_socket_path() -> PathBuf {
    let system = PathBuf::from("/run/backline/control.sock");
    match default_socket_path() {
        Some(path) if path.exists() => path,
        _ if system.exists() => system,
        Some(path) => path,
        None => system,
    }
}

/// What the player last published, for STATUS= and the socket.
#[derive(Debug, Clone, Default)]
struct Published {
    snapshot: StatusSnapshot,
    clock_p99_us: Option<f64>,
    updated: Option<Instant>,
}

/// State shared by the service threads and the player's sink.
pub(crate) struct Shared {
    published: Mutex<Published>,
    requests: Mutex<Sender<Request>>,
    status: Arc<SharedStatus>,
    audio_role: Role,
    setlist: Mutex<String>,
}

impl Shared {
    fn send(&self, request: Request) -> Result<(), String> {
        let requests = self
            .requests
            .lock()
            .map_err(|_| "the service is broken (a thread panicked)".to_string())?;
        requests
            .send(request)
            .map_err(|_| "the player is shutting down".to_string())
    }

    fn published(&self) -> Published {
        self.published.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The RT state in a few words: "RT ok: …", "RT degraded: …", "RT off" or pending.
    fn rt_text(&self) -> (bool, String) {
        let reports: Vec<_> = [self.audio_role, Role::Clock]
            .iter()
            .filter_map(|&role| rt::report(role))
            .collect();
        let degraded: Vec<String> = reports
            .iter()
            .filter(|r| r.is_degraded())
            .map(|r| r.to_string())
            .collect();
        let text = if reports.is_empty() {
            "RT pending".to_string()
        } else if !degraded.is_empty() {
            format!("RT degraded: {}", degraded.join("; "))
        } else {
            let all: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
            format!("RT {}", all.join(", "))
        };
        (!degraded.is_empty(), text)
    }

    /// One line for STATUS= and `status`: state, song, position, xruns, clock p99, RT.
    fn status_text(&self) -> String {
        let p = self.published();
        let s = &p.snapshot;
        let xruns = self.status.xruns.load(Ordering::Relaxed);
        let (_, rt_text) = self.rt_text();
        let clock_p99 = p
            .clock_p99_us
            .map(|us| format!(" | clock p99 {us:.0} µs"))
            .unwrap_or_default();
        let head = if p.updated.is_none() {
            "starting".to_string()
        } else if self.status.device_lost.load(Ordering::Relaxed) {
            format!(
                "audio device lost, retrying | {}/{} {} {}",
                s.index,
                s.total,
                s.song,
                clock(s.position_seconds)
            )
        } else if s.set_ended {
            format!("end of set ({} songs)", s.total)
        } else {
            let state = if s.playing { "playing" } else { "stopped" };
            let length = s.length_seconds.map(clock).unwrap_or_else(|| "?:??".into());
            format!(
                "{state} {}/{} {} {}/{length}",
                s.index,
                s.total,
                s.song,
                clock(s.position_seconds)
            )
        };
        format!("{head} | xruns {xruns}{clock_p99} | {rt_text}")
    }

    fn status_json(&self) -> serde_json::Value {
        let p = self.published();
        let s = &p.snapshot;
        let (degraded, rt_text) = self.rt_text();
        let threads: Vec<String> = [self.audio_role, Role::Clock]
            .iter()
            .filter_map(|&role| rt::report(role).map(|r| r.to_string()))
            .collect();
        let state = if p.updated.is_none() {
            "starting"
        } else if s.set_ended {
            "set ended"
        } else if s.playing {
            "playing"
        } else {
            "stopped"
        };
        let setlist = self.setlist.lock().map(|s| s.clone()).unwrap_or_default();
        serde_json::json!({
            "state": state,
            "setlist": setlist,
            "song": s.song,
            "index": s.index,
            "total": s.total,
            "position_seconds": s.position_seconds,
            "length_seconds": s.length_seconds,
            "bpm": s.bpm,
            "playing": s.playing,
            "set_ended": s.set_ended,
            "device": s.device,
            "xruns": self.status.xruns.load(Ordering::Relaxed),
            "underrun_frames": self.status.underrun_frames.load(Ordering::Relaxed),
            "callbacks": self.status.callbacks.load(Ordering::Relaxed),
            "clock_p99_us": p.clock_p99_us,
            "rt": { "degraded": degraded, "summary": rt_text, "threads": threads },
        })
    }
}

/// Formats seconds as m:ss.
fn clock(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    format!("{}:{:02}", total / 60, total % 60)
}

/// What the service needs from `play`.
pub struct ServiceParts {
    /// The signal flags.
    pub signals: Signals,
    /// The audio callback's counters (the watchdog's heartbeat).
    pub status: Arc<SharedStatus>,
    /// The beat clock thread's heartbeat, when a clock runs.
    pub clock_heartbeat: Option<Arc<AtomicU64>>,
    /// Where control requests go (the player's request channel).
    pub requests: Sender<Request>,
    /// The bound control socket, if any.
    pub control: Option<ControlSocket>,
    /// What SIGHUP reloads.
    pub reload: ReloadSource,
    /// The role of the audio thread (`Audio`, or `Render` for a WAV render).
    pub audio_role: Role,
    /// Name of the setlist playing.
    pub setlist: String,
}

/// The running service threads. Dropping it stops them and removes the socket.
pub struct Service {
    shared: Arc<Shared>,
    notifier: Arc<Mutex<Notifier>>,
    stopping: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    /// Starts the notify/watchdog/signal thread and the control socket's thread.
    pub fn start(parts: ServiceParts) -> Service {
        let shared = Arc::new(Shared {
            published: Mutex::new(Published::default()),
            requests: Mutex::new(parts.requests.clone()),
            status: parts.status.clone(),
            audio_role: parts.audio_role,
            setlist: Mutex::new(parts.setlist),
        });
        let notifier = Arc::new(Mutex::new(Notifier::from_env()));
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if let Some(control) = parts.control {
            let path = control.path().to_path_buf();
            match control.serve(shared.clone(), stop.clone()) {
                Ok(handle) => {
                    info!("control socket: {}", path.display());
                    threads.push(handle);
                }
                Err(e) => error!("cannot start the control socket thread: {e}"),
            }
        }
        let watcher = Watcher {
            shared: shared.clone(),
            notifier: notifier.clone(),
            signals: parts.signals,
            clock_heartbeat: parts.clock_heartbeat,
            reload: Arc::new(Mutex::new(parts.reload)),
            reloading: Arc::new(AtomicBool::new(false)),
            stopping: stopping.clone(),
        };
        let spawned = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("backline-service".into())
                .spawn(move || watcher.run(&stop))
        };
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => error!("cannot start the service thread (no sd_notify, no reload): {e}"),
        }
        Service {
            shared,
            notifier,
            stopping,
            stop,
            threads,
        }
    }

    /// Wraps the player's status sink so every snapshot also reaches STATUS= and the socket.
    pub fn sink<'a, S: StatusSink>(
        &self,
        inner: S,
        stats: &'a StatsCollector,
    ) -> ServiceSink<'a, S> {
        ServiceSink {
            inner,
            shared: self.shared.clone(),
            stats,
            clock_p99_us: None,
            last_p99: None,
        }
    }

    /// Tells systemd the service is stopping (once; also sent as soon as SIGTERM arrives).
    pub fn stopping(&self) {
        send_stopping(&self.stopping, &self.notifier);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stopping();
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn send_stopping(stopping: &AtomicBool, notifier: &Mutex<Notifier>) {
    if !stopping.swap(true, Ordering::AcqRel) {
        if let Ok(mut notifier) = notifier.lock() {
            notifier.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
    }
}

/// The player's status sink, publishing each snapshot for the service.
pub struct ServiceSink<'a, S> {
    inner: S,
    shared: Arc<Shared>,
    stats: &'a StatsCollector,
    clock_p99_us: Option<f64>,
    last_p99: Option<Instant>,
}

impl<S: StatusSink> StatusSink for ServiceSink<'_, S> {
    fn update(&mut self, status: &StatusSnapshot) {
        self.inner.update(status);
        if self.last_p99.is_none_or_elapsed(P99_EVERY) {
            self.last_p99 = Some(Instant::now());
            self.clock_p99_us = self
                .stats
                .summary(Metric::ClockLateness)
                .filter(|s| s.count > 0)
                .map(|s| s.p99 as f64 / 1000.0);
        }
        if let Ok(mut published) = self.shared.published.lock() {
            published.snapshot.clone_from(status);
            published.clock_p99_us = self.clock_p99_us;
            published.updated = Some(Instant::now());
        }
    }
}

trait ElapsedExt {
    fn is_none_or_elapsed(&self, period: Duration) -> bool;
}

impl ElapsedExt for Option<Instant> {
    fn is_none_or_elapsed(&self, period: Duration) -> bool {
        self.map_or(true, |t| t.elapsed() >= period)
    }
}

/// The service thread: READY, STATUS, the watchdog, SIGHUP, STOPPING on SIGTERM.
struct Watcher {
    shared: Arc<Shared>,
    notifier: Arc<Mutex<Notifier>>,
    signals: Signals,
    clock_heartbeat: Option<Arc<AtomicU64>>,
    reload: Arc<Mutex<ReloadSource>>,
    reloading: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
}

impl Watcher {
    fn notify(&self, states: &[NotifyState]) {
        if let Ok(mut notifier) = self.notifier.lock() {
            notifier.send(states);
        }
    }

    fn run(self, stop: &AtomicBool) {
        let watchdog = notify::watchdog_interval();
        let enabled = self.notifier.lock().is_ok_and(|n| n.enabled());
        if let (Some(interval), true) = (watchdog, enabled) {
            info!(
                "systemd watchdog: {:.1} s; pinging every {:.1} s while the audio and clock threads run",
                interval.as_secs_f64(),
                interval.as_secs_f64() / 2.0
            );
        }
        let mut ready = false;
        let mut last_status: Option<Instant> = None;
        let mut last_ping: Option<Instant> = None;
        let mut last_callbacks = self.shared.status.callbacks.load(Ordering::Relaxed);
        let mut last_beat = self.heartbeat();
        let mut unhealthy = false;
        while !stop.load(Ordering::Relaxed) {
            if self.signals.quit.load(Ordering::Relaxed) {
                send_stopping(&self.stopping, &self.notifier);
            }
            let stopping = self.stopping.load(Ordering::Acquire);
            if self.signals.hup.swap(false, Ordering::AcqRel) && !stopping {
                self.start_reload();
            }
            let callbacks = self.shared.status.callbacks.load(Ordering::Relaxed);
            if !ready && callbacks > 0 && !stopping {
                ready = true;
                // Logged first, so that whoever sees READY=1 also finds the line in the log.
                info!("ready: the first audio period has played");
                let text = self.shared.status_text();
                self.notify(&[NotifyState::Ready, NotifyState::Status(&text)]);
                last_status = Some(Instant::now());
                // The watchdog judges progress from here on.
                last_callbacks = callbacks;
                last_beat = self.heartbeat();
                if watchdog.is_some() {
                    self.notify(&[NotifyState::Watchdog]);
                    last_ping = Some(Instant::now());
                }
            }
            if ready && !stopping && last_status.is_none_or_elapsed(STATUS_EVERY) {
                let text = self.shared.status_text();
                self.notify(&[NotifyState::Status(&text)]);
                last_status = Some(Instant::now());
            }
            if let Some(interval) = watchdog.filter(|_| !stopping) {
                if last_ping.is_none_or_elapsed(interval / 2) {
                    let beat = self.heartbeat();
                    let verdict = if ready {
                        self.health(callbacks, last_callbacks, beat, last_beat, interval)
                    } else {
                        // Starting up (loading, opening the device): bounded by
                        // TimeoutStartSec, not by the watchdog.
                        Ok(())
                    };
                    match verdict {
                        Ok(()) => {
                            self.notify(&[NotifyState::Watchdog]);
                            if unhealthy {
                                info!("watchdog: healthy again, pinging systemd");
                            }
                            unhealthy = false;
                        }
                        Err(why) => {
                            if !unhealthy {
                                error!("watchdog: {why}: not pinging systemd, which restarts the service after WatchdogSec");
                            }
                            unhealthy = true;
                        }
                    }
                    last_callbacks = callbacks;
                    last_beat = beat;
                    last_ping = Some(Instant::now());
                }
            }
            std::thread::sleep(TICK);
        }
    }

    fn heartbeat(&self) -> u64 {
        self.clock_heartbeat
            .as_ref()
            .map_or(0, |h| h.load(Ordering::Relaxed))
    }

    /// Whether all is well since the last ping: the audio callback ran, the clock thread
    /// looped, the player's control loop published, the device is there.
    fn health(
        &self,
        callbacks: u64,
        last_callbacks: u64,
        beat: u64,
        last_beat: u64,
        interval: Duration,
    ) -> Result<(), String> {
        // A lost device is being reopened by the reconnect thread: no callbacks meanwhile is
        // expected, and systemd restarting the service would not bring the device back
        // sooner. Everything else must still be alive.
        let reconnecting = self.shared.status.device_lost.load(Ordering::Relaxed);
        if callbacks == last_callbacks && !reconnecting {
            return Err(format!(
                "the audio callback is stalled (no period since {:.1} s)",
                interval.as_secs_f64() / 2.0
            ));
        }
        if self.clock_heartbeat.is_some() && beat == last_beat {
            return Err("the beat clock thread is stalled".into());
        }
        let published = self.shared.published.lock().ok().and_then(|p| p.updated);
        if published.is_some_and(|t| t.elapsed() > interval) {
            return Err("the player's control loop is stalled".into());
        }
        Ok(())
    }

    fn start_reload(&self) {
        if self.reloading.swap(true, Ordering::AcqRel) {
            warn!("SIGHUP: a reload is already running; this one is ignored");
            return;
        }
        let source = self.reload.clone();
        let reloading = self.reloading.clone();
        let shared = self.shared.clone();
        let notifier = self.notifier.clone();
        let spawned = std::thread::Builder::new()
            .name("backline-reload".into())
            .spawn(move || {
                let notify = |states: &[NotifyState]| {
                    if let Ok(mut n) = notifier.lock() {
                        n.send(states);
                    }
                };
                match NotifyState::monotonic_usec_now() {
                    Ok(now) => notify(&[NotifyState::Reloading, now]),
                    Err(_) => notify(&[NotifyState::Reloading]),
                }
                if let Ok(mut source) = source.lock() {
                    if let Some((request, setlist)) = source.reload() {
                        match shared.send(request) {
                            Ok(()) => {
                                if let Ok(mut name) = shared.setlist.lock() {
                                    *name = setlist;
                                }
                            }
                            Err(e) => warn!("reload: {e}"),
                        }
                    }
                }
                let text = shared.status_text();
                notify(&[NotifyState::Ready, NotifyState::Status(&text)]);
                reloading.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            error!("SIGHUP: cannot start the reload: {e}");
            self.reloading.store(false, Ordering::Release);
        }
    }
}

//! Surviving a lost audio device: a normal-priority thread watches the running stream; when
//! its device goes away (JACK server shut down or killed, an ALSA device unplugged) it reports
//! the loss once, takes the engine out of its [`EngineSlot`], readies it for a new stream,
//! and tries to open the same device again with a backoff of 250 ms doubling to 5 s (every
//! 250 ms while the device visibly exists again), then logs the recovery once with the
//! length of the outage.
//!
//! What the song does across the outage is [`OnReconnect`]: `resume` (the default) goes on
//! where the song would have been had the device never gone, `restart` starts it again (the
//! player does that when it sees [`SharedStatus::reconnects`] move).
//!
//! Nothing here runs on a real-time thread; the new audio thread promotes itself through
//! the callback's first-call hook (`rt::promote_current_thread`). The reconnect path opens
//! no files and starts no processes: only the backend's own device access (JACK's Unix
//! sockets and shared memory, ALSA device nodes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::handover::{Engine, EngineSlot};
use super::transport::SharedStatus;
use crate::library::OnReconnect;

/// First wait before trying to open a lost device again.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest wait between attempts while the device is not there.
pub const LONGEST_RETRY: Duration = Duration::from_secs(5);
/// How often the running stream, and a lost device's presence, are looked at.
const POLL: Duration = Duration::from_millis(20);
/// How long a cycle in progress may keep the engine before the handover gives up.
const TAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long closing a dead stream may take before it is left behind.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running output stream, as the reconnect thread sees it.
pub trait LiveStream: Send {
    /// Whether its device went away.
    fn is_lost(&self) -> bool;

    /// Keeps what hangs off a running stream in place (JACK MIDI connections to other
    /// programs' ports); the reconnect thread calls it every few milliseconds, the stream
    /// paces itself.
    fn maintain(&mut self) {}
}

/// Opens the device again and starts a stream on the engine: put the engine in the slot
/// (taking the token [`EngineSlot::put`] returns) before the stream starts; on failure, hand
/// the engine back with the reason.
pub type Opener = Box<
    dyn FnMut(Box<Engine>, &Arc<EngineSlot>) -> Result<Box<dyn LiveStream>, (String, Box<Engine>)>
        + Send,
>;

/// A cheap look at whether a lost device may be back (a socket or device node exists), to
/// retry at once rather than after the backoff.
pub type Presence = Box<dyn FnMut() -> bool + Send>;

/// What the reconnect thread needs besides the first stream.
pub struct ReconnectSettings {
    /// The device, for the log lines.
    pub device: String,
    /// Where the song goes on.
    pub on_reconnect: OnReconnect,
    /// Opens a new stream.
    pub opener: Opener,
    /// Whether the device seems to be back, if the backend can tell.
    pub presence: Option<Presence>,
}

/// The reconnect thread and the stream it keeps alive.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<Box<dyn LiveStream>>>>,
}

impl Supervisor {
    /// Watches `first` (already running on the engine in `slot`) from a new thread.
    pub fn start(
        first: Box<dyn LiveStream>,
        slot: Arc<EngineSlot>,
        status: Arc<SharedStatus>,
        settings: ReconnectSettings,
    ) -> Result<Supervisor, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("backline-device".into())
                .spawn(move || watch(first, &slot, &status, settings, &stop))
                .map_err(|e| format!("cannot start the device thread: {e}"))?
        };
        Ok(Supervisor {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops watching and closes the stream (after letting its last buffers play).
    pub fn finish(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if let Ok(Some(stream)) = thread.join() {
                if stream.is_lost() {
                    release(stream);
                } else {
                    // Let the last buffers reach the speakers before closing the device.
                    std::thread::sleep(Duration::from_millis(100));
                    drop(stream);
                }
            }
        }
    }
}

/// Closes a stream on a helper thread and waits up to [`RELEASE_TIMEOUT`] for it. A dead
/// cpal ALSA stream whose device keeps failing writes can never be joined (cpal retries the
/// write for ever without looking at its stop request); it is then left behind, its thread
/// paused between errors at normal priority (`output::build`), rather than blocking the
/// reconnect for good. Returns whether the stream was closed.
fn release(stream: Box<dyn LiveStream>) -> bool {
    let (done, closed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("backline-close".into())
        .spawn(move || {
            drop(stream);
            let _ = done.send(());
        });
    // If no thread can be started, the closure (and the stream) was dropped right here.
    if spawned.is_err() || closed.recv_timeout(RELEASE_TIMEOUT).is_ok() {
        return true;
    }
    warn!(
        "the lost audio stream did not close within {} s (its driver keeps failing); left behind",
        RELEASE_TIMEOUT.as_secs()
    );
    false
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sleeps up to `duration` in short steps; true if told to stop meanwhile.
fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if stop.load(Ordering::Acquire) {
            return true;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    stop.load(Ordering::Acquire)
}

fn watch(
    first: Box<dyn LiveStream>,
    slot: &Arc<EngineSlot>,
    status: &SharedStatus,
    mut settings: ReconnectSettings,
    stop: &AtomicBool,
) -> Option<Box<dyn LiveStream>> {
    let mut stream = first;
    loop {
        while !stream.is_lost() {
            if sleep_unless_stopped(POLL, stop) {
                return Some(stream);
            }
            stream.maintain();
        }
        let lost_at = Instant::now();
        status.device_lost.store(true, Ordering::Release);
        crate::stats::device_event(&format!("audio {}", settings.device), true, "stream lost");
        error!(
            "audio device lost: {}; retrying (after {:.2} s, backing off to {} s)",
            settings.device,
            FIRST_RETRY.as_secs_f64(),
            LONGEST_RETRY.as_secs()
        );
        // The dead stream's callback may never run again; between cycles the engine is in
        // its slot.
        let Some(mut engine) = slot.take(TAKE_TIMEOUT) else {
            error!("the audio callback did not hand its state back: cannot reconnect; restart backline");
            return Some(stream);
        };
        // Release what the dead stream still holds (its client or stream handle).
        release(stream);
        engine
            .callback
            .prepare_for_new_stream(settings.on_reconnect == OnReconnect::Resume);
        let mut backoff = FIRST_RETRY;
        let mut attempts = 0u32;
        let mut last_error = String::new();
        let new_stream = loop {
            // Wait for the backoff, or less once the device is visibly back.
            let waited = Instant::now();
            let mut present = false;
            while waited.elapsed() < backoff {
                if sleep_unless_stopped(POLL, stop) {
                    slot.put(engine);
                    return None;
                }
                if waited.elapsed() >= FIRST_RETRY {
                    if let Some(presence) = settings.presence.as_mut() {
                        if presence() {
                            present = true;
                            break;
                        }
                    }
                }
            }
            attempts += 1;
            match (settings.opener)(engine, slot) {
                Ok(stream) => break stream,
                Err((e, back)) => {
                    engine = back;
                    if e != last_error {
                        warn!("audio device still unavailable: {e}");
                        last_error = e;
                    }
                    backoff = if present {
                        FIRST_RETRY
                    } else {
                        (backoff * 2).min(LONGEST_RETRY)
                    };
                }
            }
        };
        stream = new_stream;
        // Back when the new stream's first callback has run.
        let callbacks = status.callbacks.load(Ordering::Relaxed);
        let started = Instant::now();
        while status.callbacks.load(Ordering::Relaxed) == callbacks
            && started.elapsed() < Duration::from_secs(2)
            && !stream.is_lost()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let outage = lost_at.elapsed();
        status.device_lost.store(false, Ordering::Release);
        status.reconnects.fetch_add(1, Ordering::AcqRel);
        crate::stats::device_event(
            &format!("audio {}", settings.device),
            false,
            &format!(
                "after {:.2} s ({attempts} attempt{})",
                outage.as_secs_f64(),
                if attempts == 1 { "" } else { "s" }
            ),
        );
        info!(
            "audio device back: {} after {:.2} s ({attempts} attempt{}); {}",
            settings.device,
            outage.as_secs_f64(),
            if attempts == 1 { "" } else { "s" },
            match settings.on_reconnect {
                OnReconnect::Resume => "the song goes on where it would have been",
                OnReconnect::Restart => "the song starts again",
            }
        );
    }
}

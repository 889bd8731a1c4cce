//! The native JACK output: a client (named `backline` unless the device is `jack:NAME`) with
//! one audio port per output channel, `out_1`..`out_N` like `track_mappings` counts them,
//! connected to `system:playback_*` when those exist. Its process callback renders planar
//! blocks straight into the port buffers, feeds the audio clock with JACK's own cycle time,
//! and runs the extra per-cycle work other modules register (JACK MIDI outputs).
//!
//! A server that goes away never takes the process down: the callback stops, the status says
//! `device_lost`, and the reconnect thread (`engine::reconnect`) reports it once and opens a
//! new client when a server with the same name is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::callback::monotonic_ns;
use super::handover::EngineSlot;
use super::output::OpenedOutput;
use super::transport::SharedStatus;

/// The client name when the device is plain `jack`.
pub const DEFAULT_CLIENT_NAME: &str = "backline";

/// The JACK client name a device name asks for: `jack` → `backline`, `jack:NAME` → `NAME`;
/// `None` when the device is not JACK.
pub fn client_name(device: &str) -> Option<&str> {
    match device {
        "jack" => Some(DEFAULT_CLIENT_NAME),
        _ => device.strip_prefix("jack:").filter(|name| !name.is_empty()),
    }
}

/// Work done once per JACK cycle after the audio is rendered, on the process thread. Must
/// follow the real-time rules (no allocation, no lock, no logging).
pub trait CycleHook: Send {
    /// `first_frame` is the device frame of the cycle's first frame (the counter the song
    /// anchor uses); `song_tag` tags measurements with the song playing.
    fn cycle(&mut self, scope: &jack::ProcessScope, first_frame: u64, song_tag: u32);

    /// Registers the hook's ports again on `client`, which replaces a client whose server
    /// went away (normal thread). Returns the `(our port, destination)` pairs to connect.
    fn reattach(&mut self, _client: &jack::Client) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A client connected to the server with its audio ports registered, not yet running.
/// Other modules register their ports on [`JackOpen::client`] before [`start`].
pub struct JackOpen {
    client: jack::Client,
    ports: Vec<jack::Port<jack::AudioOut>>,
    requested_name: String,
    /// What was opened.
    pub opened: OpenedOutput,
}

impl JackOpen {
    /// The client, to register more ports on.
    pub fn client(&self) -> &jack::Client {
        &self.client
    }

    /// The name the client asked for (the server may have added a suffix, see
    /// [`jack::Client::name`]).
    pub fn requested_name(&self) -> &str {
        &self.requested_name
    }
}

/// Connects to a running JACK server (never starts one) as `name` and registers `channels`
/// audio outputs. `sample_rate` is the configured rate: the server's rate wins, with a warning.
pub fn open(name: &str, channels: u16, sample_rate: u32) -> Result<JackOpen, String> {
    let (client, _status) = jack::Client::new(name, jack::ClientOptions::NO_START_SERVER)
        .map_err(|e| match e {
            jack::Error::LibraryError(detail) => {
                format!("JACK is not installed (libjack cannot be loaded: {detail})")
            }
            _ => format!(
                "cannot connect to a JACK server ({e}): is jackd running (and JACK_DEFAULT_SERVER set if it has a name)?"
            ),
        })?;
    let channels = channels.max(1);
    let mut ports = Vec::with_capacity(usize::from(channels));
    for index in 1..=channels {
        let port = client
            .register_port(&format!("out_{index}"), jack::AudioOut)
            .map_err(|e| format!("cannot register JACK port out_{index}: {e}"))?;
        ports.push(port);
    }
    let rate = u32::try_from(client.sample_rate()).unwrap_or(sample_rate);
    if rate != sample_rate {
        tracing::warn!(
            "the JACK server runs at {rate} Hz, not the configured {sample_rate} Hz: songs are resampled to {rate} Hz"
        );
    }
    let opened = OpenedOutput {
        description: format!("jack:{}", client.name()),
        channels,
        sample_rate: rate,
        buffer_size: Some(client.buffer_size()),
        sample_format: "f32".into(),
    };
    Ok(JackOpen {
        client,
        ports,
        requested_name: name.to_string(),
        opened,
    })
}

/// Shared between the notification thread and the owner.
struct Notify {
    status: Arc<SharedStatus>,
    lost: Arc<AtomicBool>,
}

impl jack::NotificationHandler for Notify {
    fn shutdown(&mut self, _status: jack::ClientStatus, _reason: &str) {
        // Called like a signal handler: flags only. The reconnect thread reports and recovers.
        self.lost.store(true, Ordering::Release);
        self.status.device_lost.store(true, Ordering::Release);
    }
}

struct Process {
    slot: Arc<EngineSlot>,
    token: u64,
    ports: Vec<jack::Port<jack::AudioOut>>,
    status: Arc<SharedStatus>,
}

impl jack::ProcessHandler for Process {
    fn process(&mut self, _: &jack::Client, scope: &jack::ProcessScope) -> jack::Control {
        // Under the allocation guard: a no-op with the normal allocator, an abort in tests
        // that install `AllocDisabler` (tests/jack_rt_alloc.rs).
        assert_no_alloc::assert_no_alloc(|| self.cycle(scope));
        jack::Control::Continue
    }
}

impl Process {
    fn cycle(&mut self, scope: &jack::ProcessScope) {
        let Process {
            slot,
            token,
            ports,
            status,
        } = self;
        let ran = slot.with(*token, |engine| {
            let frames = scope.n_frames() as usize;
            let cycle_ns = cycle_start_ns(scope);
            let first_frame = engine.callback.device_frame();
            engine
                .callback
                .render_planar(frames, cycle_ns, |channel, offset, samples| {
                    if let Some(port) = ports.get_mut(channel) {
                        let buffer = port.as_mut_slice(scope);
                        if let Some(out) = buffer.get_mut(offset..offset + samples.len()) {
                            out.copy_from_slice(samples);
                        }
                    }
                });
            if let Some(hook) = engine.hook.as_mut() {
                let song_tag = status.song_tag.load(Ordering::Relaxed);
                hook.cycle(scope, first_frame, song_tag);
            }
        });
        if ran.is_none() {
            // The engine is being handed over: silence, not last cycle's buffer.
            for port in ports.iter_mut() {
                port.as_mut_slice(scope).fill(0.0);
            }
        }
    }
}

/// CLOCK_MONOTONIC time of the cycle's first frame, from JACK's own cycle timing (its DLL
/// estimate of when the period began), converted through "now" on both clocks so it does not
/// matter which clock libjack counts microseconds on. Falls back to now.
fn cycle_start_ns(scope: &jack::ProcessScope) -> u64 {
    let now = monotonic_ns();
    match scope.cycle_times() {
        Ok(times) => {
            let jack_now = jack::get_time();
            let since_start_us = jack_now.saturating_sub(times.current_usecs);
            now.saturating_sub(since_start_us.saturating_mul(1000))
        }
        Err(_) => now,
    }
}

type Active = jack::AsyncClient<Notify, Process>;

/// The running JACK client (audio stops when this is dropped).
pub struct JackOutput {
    client: Option<Active>,
    lost: Arc<AtomicBool>,
    /// JACK MIDI connections to other programs' ports, kept up while the show runs.
    destinations: Vec<Destination>,
    /// When the destinations were last looked at.
    checked_at: Instant,
    /// What was opened.
    pub opened: OpenedOutput,
}

/// A JACK MIDI output's connection to another client's port (a synth, a drum machine's
/// JACK bridge). That program can quit and come back, or start after backline: the
/// connection is made again whenever its port exists and is not connected — looked at every
/// [`FIRST_RETRY`](super::reconnect::FIRST_RETRY), a connect that fails backing off to
/// [`LONGEST_RETRY`](super::reconnect::LONGEST_RETRY) — and each loss and return is logged
/// once. The other outputs and the audio never wait for it.
struct Destination {
    own: String,
    to: String,
    connected: bool,
    /// Was connected once and lost it (the device log notes the return).
    was_lost: bool,
    next_try: Instant,
    backoff: Duration,
    /// The last connect error, so a repeated one is not logged again.
    last_error: Option<String>,
}

impl Destination {
    fn new(own: &str, to: &str) -> Destination {
        Destination {
            own: own.to_string(),
            to: to.to_string(),
            connected: false,
            was_lost: false,
            next_try: Instant::now(),
            backoff: super::reconnect::FIRST_RETRY,
            last_error: None,
        }
    }

    /// Notes a connection made (by us or by someone else): logged, and in the device log
    /// when it ends a loss.
    fn now_connected(&mut self) {
        tracing::info!("JACK MIDI: {} connected to {}", self.own, self.to);
        if self.was_lost {
            crate::stats::device_event(&self.device(), false, "connected again");
            self.was_lost = false;
        }
        self.connected = true;
        self.backoff = super::reconnect::FIRST_RETRY;
        self.last_error = None;
    }

    /// How the device log names this connection.
    fn device(&self) -> String {
        format!("JACK MIDI {} → {}", self.own, self.to)
    }

    /// Connects if the destination is there and not connected; logs changes once.
    fn keep(&mut self, client: &jack::Client, now: Instant) {
        let connected = client
            .port_by_name(&self.own)
            .and_then(|port| port.is_connected_to(&self.to).ok())
            .unwrap_or(false);
        if connected {
            if !self.connected {
                self.now_connected();
            }
            return;
        }
        if self.connected {
            tracing::warn!(
                "JACK MIDI: {} is no longer connected to {} (its program quit?); connecting again when it is there",
                self.own,
                self.to
            );
            crate::stats::device_event(&self.device(), true, "its program quit?");
            self.connected = false;
            self.was_lost = true;
            self.next_try = now;
        }
        // Only knock once the port exists (a lookup in the client's copy of the graph).
        if now < self.next_try || client.port_by_name(&self.to).is_none() {
            return;
        }
        match client.connect_ports_by_name(&self.own, &self.to) {
            Ok(()) => self.now_connected(),
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        "JACK MIDI: cannot connect {} to {} ({e}); retrying",
                        self.own,
                        self.to
                    );
                }
                self.last_error = Some(e);
                self.next_try = now + self.backoff;
                self.backoff = (self.backoff * 2).min(super::reconnect::LONGEST_RETRY);
            }
        }
    }
}

impl JackOutput {
    /// The running client (to connect ports), or `None` once the server is gone.
    pub fn client(&self) -> Option<&jack::Client> {
        if self.lost.load(Ordering::Acquire) {
            return None;
        }
        self.client.as_ref().map(jack::AsyncClient::as_client)
    }

    /// Whether the server went away.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for JackOutput {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.lost.load(Ordering::Acquire) {
                // jack 0.11's Client::drop asserts that closing succeeds, which it cannot once
                // the server is gone. Close the client through libjack directly (that frees
                // its threads, sockets and shared memory; the result is ignored) and leak the
                // Rust wrapper, whose handlers hold nothing but port handles (the engine lives
                // in its slot).
                let raw = client.as_client().raw();
                std::mem::forget(client);
                // SAFETY: `raw` is the client's valid handle; the wrapper that would close it
                // again was forgotten, so it is closed exactly once.
                unsafe { jack::jack_sys::jack_client_close(raw) };
            } else {
                drop(client);
            }
        }
    }
}

/// Activates the client on the engine in `slot` (its `hook` runs after the audio every
/// cycle), with `token` the slot's owner token for this stream, then connects `out_i` to
/// `system:playback_i` for every such port the server has and `extra_connections` (JACK MIDI
/// destinations). A connection that fails is a warning.
pub fn start(
    open: JackOpen,
    slot: Arc<EngineSlot>,
    token: u64,
    status: Arc<SharedStatus>,
    extra_connections: &[(String, String)],
) -> Result<JackOutput, String> {
    let JackOpen {
        client,
        ports,
        opened,
        ..
    } = open;
    let own_ports: Vec<String> = ports.iter().filter_map(|p| p.name().ok()).collect();
    let lost = Arc::new(AtomicBool::new(false));
    let notify = Notify {
        status: status.clone(),
        lost: lost.clone(),
    };
    let process = Process {
        slot,
        token,
        ports,
        status,
    };
    let active = client
        .activate_async(notify, process)
        .map_err(|e| format!("cannot activate the JACK client: {e}"))?;
    let playback = active.as_client().ports(
        Some("^system:playback_"),
        Some(jack::jack_sys::FLOAT_MONO_AUDIO),
        jack::PortFlags::IS_INPUT | jack::PortFlags::IS_PHYSICAL,
    );
    for (own, system) in own_ports.iter().zip(sorted_by_number(playback)) {
        if let Err(e) = active.as_client().connect_ports_by_name(own, &system) {
            tracing::warn!("cannot connect {own} to {system}: {e}");
        }
    }
    let mut destinations = Vec::new();
    for (own, to) in extra_connections {
        let mut destination = Destination::new(own, to);
        if active.as_client().port_by_name(to).is_none() {
            tracing::warn!(
                "JACK MIDI: {to} does not exist yet; {own} connects to it as soon as it appears"
            );
        }
        destination.keep(active.as_client(), Instant::now());
        destinations.push(destination);
    }
    Ok(JackOutput {
        client: Some(active),
        lost,
        destinations,
        checked_at: Instant::now(),
        opened,
    })
}

/// Whether the JACK server the client would connect to has its socket in place (a cheap
/// check that a lost server may be back; jackd2 on Linux keeps it in /dev/shm).
pub fn server_socket_present() -> bool {
    let server = std::env::var("JACK_DEFAULT_SERVER").unwrap_or_else(|_| "default".into());
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::path::Path::new(&format!("/dev/shm/jack_{server}_{uid}_0")).exists()
}

/// `system:playback_10` after `system:playback_9`.
fn sorted_by_number(mut ports: Vec<String>) -> Vec<String> {
    let number = |name: &str| -> u64 {
        let digits: String = name
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits.parse().unwrap_or(u64::MAX)
    };
    ports.sort_by_key(|p| number(p));
    ports
}

/// One line for `backline devices`: the server's rate, period and playback ports, or why
/// there is none.
pub fn describe_server() -> String {
    match jack::Client::new("backline-devices", jack::ClientOptions::NO_START_SERVER) {
        Ok((client, _)) => {
            let playback = client.ports(Some("^system:playback_"), None, jack::PortFlags::IS_INPUT);
            let midi = client.ports(
                None,
                Some(jack::jack_sys::RAW_MIDI_TYPE),
                jack::PortFlags::IS_INPUT,
            );
            format!(
                "jack: server {} Hz, {} frames/period, {} playback ports; MIDI inputs: {} (use `--output jack` or `jack:NAME`)",
                client.sample_rate(),
                client.buffer_size(),
                playback.len(),
                if midi.is_empty() {
                    "none".to_string()
                } else {
                    midi.join(", ")
                }
            )
        }
        Err(_) => "jack: (no JACK server running)".to_string(),
    }
}

impl super::reconnect::LiveStream for JackOutput {
    fn is_lost(&self) -> bool {
        JackOutput::is_lost(self)
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        if self.destinations.is_empty()
            || now.duration_since(self.checked_at) < super::reconnect::FIRST_RETRY
        {
            return;
        }
        self.checked_at = now;
        if self.lost.load(Ordering::Acquire) {
            return;
        }
        if let Some(client) = self.client.as_ref().map(jack::AsyncClient::as_client) {
            for destination in &mut self.destinations {
                destination.keep(client, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_pick_the_client_name() {
        assert_eq!(client_name("jack"), Some("backline"));
        assert_eq!(client_name("jack:stage"), Some("stage"));
        assert_eq!(client_name("jack:"), None);
        assert_eq!(client_name("default"), None);
    }

    #[test]
    fn playback_ports_sort_numerically() {
        let ports = vec![
            "system:playback_10".to_string(),
            "system:playback_2".to_string(),
            "system:playback_1".to_string(),
        ];
        assert_eq!(
            sorted_by_number(ports),
            vec![
                "system:playback_1",
                "system:playback_2",
                "system:playback_10"
            ]
        );
    }
}

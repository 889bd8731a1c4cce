//! backline.yaml: the player config (library root, playlist, audio device and routing,
//! real-time settings). Unknown keys are errors with file:line:col.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::diagnostic::{locate, Diagnostic};
use super::song::MidiEvent;

/// The player configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The backline.yaml this came from (`None` in zero-config mode).
    pub source: Option<PathBuf>,
    /// The song library root.
    pub songs: PathBuf,
    /// The default playlist file, if any.
    pub playlist: Option<PathBuf>,
    /// Folders outside the library that track files may point into.
    pub extra_roots: Vec<PathBuf>,
    /// Audio output settings.
    pub audio: AudioConfig,
    /// Real-time scheduling settings.
    pub realtime: RealtimeConfig,
    /// MIDI outputs (beat clock, MIDI file) and footswitch control.
    pub midi: MidiConfig,
    /// Running as a service: the control socket.
    pub service: ServiceConfig,
    /// Self-sandboxing after start-up.
    pub sandbox: SandboxConfig,
}

/// The `service:` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceConfig {
    /// Where the control socket (`backline ctl`) is created; relative paths are relative to
    /// backline.yaml. `None`: `$RUNTIME_DIRECTORY/control.sock` under systemd, else
    /// `$XDG_RUNTIME_DIR/backline/control.sock`. `--control-socket` overrides it.
    pub control_socket: Option<PathBuf>,
}

/// How hard backline sandboxes itself after start-up (`sandbox:` or `sandbox.mode:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Every layer must take effect, or start-up fails.
    Strict,
    /// Apply what the kernel offers and report the rest (default).
    #[default]
    BestEffort,
    /// No sandbox.
    Off,
}

/// What a syscall outside the seccomp allow-list gets (`sandbox.seccomp_action:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompActionConfig {
    /// `errno`: the call fails with EPERM (default).
    #[default]
    Errno,
    /// `kill`: the process is killed.
    Kill,
}

/// The `sandbox:` section: `sandbox: strict`, or a map with `mode`, `seccomp_action` and
/// `state_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxConfig {
    /// strict, best_effort (default) or off.
    pub mode: SandboxMode,
    /// errno (default) or kill.
    pub seccomp_action: SeccompActionConfig,
    /// An extra read-write state directory (besides WAV render and report folders).
    pub state_dir: Option<PathBuf>,
}

/// The `midi:` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MidiConfig {
    /// Where the beat clock and MIDI files go.
    pub outputs: Vec<MidiOutputConfig>,
    /// Footswitch mapping, if any.
    pub control: Option<MidiControlConfig>,
    /// Keep the beat clock running at the last tempo between songs (for drum machines that
    /// should not stop), instead of Stop at the end of each song.
    pub persist_tempo: bool,
}

/// One MIDI output and what it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct MidiOutputConfig {
    /// Name used in logs and reports.
    pub name: String,
    /// Where the bytes go.
    pub target: MidiTarget,
    /// Send the beat clock (Start, Timing Clock, Stop, SPP/Continue).
    pub clock: bool,
    /// Send the songs' MIDI files (and `midi_event` on song select).
    pub midi_file: bool,
    /// Milliseconds to delay (positive) or advance (negative) this output, to line up with
    /// audio latency.
    pub offset_ms: f64,
}

/// The kinds of MIDI destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MidiTarget {
    /// A MIDI port by name (ALSA sequencer / CoreMIDI, through midir).
    Port(String),
    /// An ALSA rawmidi device such as `hw:1,0,0`.
    Rawmidi(String),
    /// A raw byte path: serial UART, /dev/snd/midiC*D*, a FIFO or a pty.
    Path(PathBuf),
    /// A JACK MIDI port (`client:port` name to connect to, or a port name to create).
    Jack(String),
}

/// Footswitch events mapped to transport commands.
#[derive(Debug, Clone, PartialEq)]
pub struct MidiControlConfig {
    /// The MIDI input port to listen on.
    pub port: String,
    /// Event that starts playback.
    pub play: Option<MidiEvent>,
    /// Event that stops playback.
    pub stop: Option<MidiEvent>,
    /// Event that jumps to the next song.
    pub next: Option<MidiEvent>,
    /// Event that goes to the previous song.
    pub previous: Option<MidiEvent>,
}

/// Where and how audio goes out.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioConfig {
    /// cpal device name, `jack`, `default`, or `wav:/path/out.wav`.
    pub device: String,
    /// Device sample rate in Hz; files at other rates are resampled.
    pub sample_rate: u32,
    /// Frames per period requested from the device.
    pub buffer_size: u32,
    /// Track name → 1-based output channels (a track may feed several outputs).
    pub track_mappings: BTreeMap<String, Vec<u16>>,
    /// Track name → gain in dB (default 0).
    pub track_gains: BTreeMap<String, f32>,
    /// Where the song goes on when a lost audio device comes back.
    pub on_reconnect: OnReconnect,
}

/// What the song does when a lost audio device comes back (`audio.on_reconnect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReconnect {
    /// Continue where the song would have been had the device never gone (the song position
    /// advances by the length of the outage; the beat clock keeps running through it).
    #[default]
    Resume,
    /// Start the song that was playing again from its beginning.
    Restart,
}

impl OnReconnect {
    /// The config value: `resume` or `restart`.
    pub fn name(self) -> &'static str {
        match self {
            OnReconnect::Resume => "resume",
            OnReconnect::Restart => "restart",
        }
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            device: "default".into(),
            sample_rate: 48_000,
            buffer_size: 256,
            track_mappings: BTreeMap::new(),
            track_gains: BTreeMap::new(),
            on_reconnect: OnReconnect::Resume,
        }
    }
}

/// SCHED_FIFO settings for the audio and clock threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealtimeConfig {
    /// `false` turns real-time scheduling off on purpose.
    pub enabled: bool,
    /// SCHED_FIFO priority of the audio thread.
    pub audio_priority: u8,
    /// SCHED_FIFO priority of the beat clock thread.
    pub clock_priority: u8,
    /// Busy-wait window before a clock deadline, in microseconds. The default, 400, is above
    /// FORMATS.md's 150 on purpose: a sleeping thread's wake-up is late by up to its machine's
    /// p99.9 wake-up latency (cyclictest's p99.9 here: 190–470 µs), and every wake-up later
    /// than the window is late on the wire. 30 s at 300 BPM under load (`clock_jitter`):
    /// self-reported p99.9 195–270 µs with 150, 47–111 µs with 400. Cost: 400 µs of one core
    /// per tick, 1.9 % at 120 BPM. With `cpus` pinning both RT threads to one CPU, the clock
    /// (the higher priority) delays the audio callback by up to this long before each
    /// deadline: keep it well under the audio period there.
    pub spin_us: u32,
    /// Widest the spin window may grow, in microseconds: the clock widens it to its latest
    /// wake-up + 100 µs when wake-ups come later than the window, and narrows it back with a
    /// half-life of a minute (`timing::SpinWindow`). Equal to `spin_us` turns that off; by
    /// default it is off for `spin_us: 0` (sleep only) and for RT threads pinned to one CPU
    /// (`cpus: [n]`), where the spin would delay the audio callback by as long.
    pub spin_max_us: u32,
    /// CPUs the RT threads are pinned to (empty = any).
    pub cpus: Vec<usize>,
    /// Run the beat clock's standby writer, a second SCHED_FIFO thread that makes a due
    /// write when the clock thread's core is stalled at the deadline (`midi::standby`). Not
    /// in FORMATS.md: on this VM it took the loaded p99.9 from the host's per-vCPU stalls
    /// (0.8–1 ms) to tens of µs. Cost: a second spin of `spin_us` per write, and a wake-up
    /// per ms. Off with a single CPU (`cpus: [n]`, or a one-CPU machine): no core to stand by on.
    pub clock_standby: bool,
}

/// `spin_max_us` when the config does not say: `spin_us` 0 (sleep only) and RT threads pinned
/// to one CPU (where the clock's spin delays the audio callback by as long) keep the window
/// fixed; otherwise it may widen to `default_max` (or `spin_us`, if that is wider).
fn default_spin_max_us(spin_us: u32, cpus: &[usize], default_max: u32) -> u32 {
    if spin_us == 0 || cpus.len() == 1 {
        spin_us
    } else {
        default_max.max(spin_us)
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            enabled: true,
            audio_priority: 70,
            clock_priority: 80,
            spin_us: 400,
            spin_max_us: 2000,
            cpus: Vec::new(),
            clock_standby: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    songs: Option<String>,
    #[serde(default)]
    playlist: Option<String>,
    #[serde(default)]
    extra_roots: Vec<String>,
    #[serde(default)]
    audio: Option<RawAudio>,
    #[serde(default)]
    midi: Option<RawMidi>,
    #[serde(default)]
    realtime: Option<RawRealtime>,
    #[serde(default)]
    service: Option<RawService>,
    #[serde(default)]
    sandbox: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    control_socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMidi {
    #[serde(default)]
    outputs: Vec<RawMidiOutput>,
    #[serde(default)]
    control: Option<RawControl>,
    #[serde(default)]
    persist_tempo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMidiOutput {
    name: String,
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    rawmidi: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    jack: Option<String>,
    #[serde(default = "yes")]
    clock: bool,
    #[serde(default = "yes")]
    midi_file: bool,
    #[serde(default)]
    offset_ms: f64,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    port: String,
    #[serde(default)]
    play: Option<MidiEvent>,
    #[serde(default)]
    stop: Option<MidiEvent>,
    #[serde(default)]
    next: Option<MidiEvent>,
    #[serde(default)]
    previous: Option<MidiEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudio {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    buffer_size: Option<u32>,
    #[serde(default)]
    track_mappings: BTreeMap<String, Vec<u16>>,
    #[serde(default)]
    track_gains: BTreeMap<String, f32>,
    #[serde(default)]
    on_reconnect: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    audio_priority: Option<u8>,
    #[serde(default)]
    clock_priority: Option<u8>,
    #[serde(default)]
    spin_us: Option<u32>,
    #[serde(default)]
    spin_max_us: Option<u32>,
    #[serde(default)]
    cpus: Vec<usize>,
    #[serde(default)]
    clock_standby: Option<bool>,
}

/// Highest output channel a mapping may name.
pub const MAX_OUTPUT_CHANNELS: u16 = 256;

impl Config {
    /// Zero-config: `songs_dir` is the library, every default applies and each track goes to
    /// outputs 1 and 2.
    pub fn zero(songs_dir: &Path) -> Config {
        Config {
            source: None,
            songs: songs_dir.to_path_buf(),
            playlist: None,
            extra_roots: Vec::new(),
            audio: AudioConfig::default(),
            realtime: RealtimeConfig::default(),
            midi: MidiConfig::default(),
            service: ServiceConfig::default(),
            sandbox: SandboxConfig::default(),
        }
    }

    /// Parses backline.yaml text read from `path`; relative paths are resolved against its
    /// folder.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
        let raw: RawConfig =
            serde_yaml::from_str(text).map_err(|e| vec![Diagnostic::from_yaml(path, text, &e)])?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let at = |key: &str, value: Option<&str>, message: String| {
            Diagnostic::at(path, locate(text, key, value, 0), message)
        };
        let mut errors = Vec::new();
        let audio_raw = raw.audio.unwrap_or(RawAudio {
            device: None,
            sample_rate: None,
            buffer_size: None,
            track_mappings: BTreeMap::new(),
            track_gains: BTreeMap::new(),
            on_reconnect: None,
        });
        let defaults = AudioConfig::default();
        let on_reconnect = match audio_raw.on_reconnect.as_deref() {
            None | Some("resume") => OnReconnect::Resume,
            Some("restart") => OnReconnect::Restart,
            Some(other) => {
                errors.push(at(
                    "on_reconnect",
                    Some(other),
                    format!("on_reconnect `{other}` is not known: expected `resume` (the default: the song goes on where it would have been) or `restart` (the song starts again)"),
                ));
                OnReconnect::Resume
            }
        };
        if let Some(device) = audio_raw.device.as_deref().filter(|d| d.contains('\0')) {
            errors.push(at(
                "device",
                None,
                format!(
                    "audio device `{}` contains a NUL character: expected a device name such as `default`, `hw:1` or `jack`",
                    device.escape_default()
                ),
            ));
        }
        let audio = AudioConfig {
            device: audio_raw.device.unwrap_or(defaults.device),
            sample_rate: audio_raw.sample_rate.unwrap_or(defaults.sample_rate),
            buffer_size: audio_raw.buffer_size.unwrap_or(defaults.buffer_size),
            track_mappings: audio_raw.track_mappings,
            track_gains: audio_raw.track_gains,
            on_reconnect,
        };
        if !(8_000..=384_000).contains(&audio.sample_rate) {
            errors.push(at(
                "sample_rate",
                None,
                format!(
                    "sample_rate {} is out of range: expected 8000 to 384000 Hz",
                    audio.sample_rate
                ),
            ));
        }
        if !(16..=8192).contains(&audio.buffer_size) {
            errors.push(at(
                "buffer_size",
                None,
                format!(
                    "buffer_size {} is out of range: expected 16 to 8192 frames",
                    audio.buffer_size
                ),
            ));
        }
        for (track, outputs) in &audio.track_mappings {
            if outputs.is_empty() {
                errors.push(at(
                    track,
                    None,
                    format!("track `{track}` maps to no output: expected a list such as [1, 2]"),
                ));
            }
            for &channel in outputs {
                if channel == 0 || channel > MAX_OUTPUT_CHANNELS {
                    errors.push(at(
                        track,
                        None,
                        format!(
                            "track `{track}` maps to output {channel}: expected 1-based output channels from 1 to {MAX_OUTPUT_CHANNELS}"
                        ),
                    ));
                }
            }
        }
        for (track, gain) in &audio.track_gains {
            if !gain.is_finite() || *gain > 24.0 || *gain < -120.0 {
                errors.push(at(
                    track,
                    None,
                    format!("track `{track}` gain {gain} dB: expected -120 to +24 dB"),
                ));
            }
        }
        let rt_defaults = RealtimeConfig::default();
        let spin_max_given = raw
            .realtime
            .as_ref()
            .is_some_and(|r| r.spin_max_us.is_some());
        let realtime = match raw.realtime {
            None => rt_defaults,
            Some(r) => RealtimeConfig {
                enabled: r.enabled.unwrap_or(true),
                audio_priority: r.audio_priority.unwrap_or(rt_defaults.audio_priority),
                clock_priority: r.clock_priority.unwrap_or(rt_defaults.clock_priority),
                spin_us: r.spin_us.unwrap_or(rt_defaults.spin_us),
                spin_max_us: r.spin_max_us.unwrap_or_else(|| {
                    default_spin_max_us(
                        r.spin_us.unwrap_or(rt_defaults.spin_us),
                        &r.cpus,
                        rt_defaults.spin_max_us,
                    )
                }),
                cpus: r.cpus,
                clock_standby: r.clock_standby.unwrap_or(rt_defaults.clock_standby),
            },
        };
        for (key, priority) in [
            ("audio_priority", realtime.audio_priority),
            ("clock_priority", realtime.clock_priority),
        ] {
            if !(1..=99).contains(&priority) {
                errors.push(at(
                    key,
                    None,
                    format!("{key} {priority} is out of range: expected a SCHED_FIFO priority from 1 to 99"),
                ));
            }
        }
        // A derived spin_max_us (not written by the user) has only spin_us's own check below.
        if spin_max_given && realtime.spin_max_us > 5_000 {
            errors.push(at(
                "spin_max_us",
                None,
                format!(
                    "spin_max_us {} is too long: expected 0 to 5000 microseconds",
                    realtime.spin_max_us
                ),
            ));
        } else if spin_max_given && realtime.spin_max_us < realtime.spin_us {
            errors.push(at(
                "spin_max_us",
                None,
                format!(
                    "spin_max_us {} is below spin_us {}: expected at least spin_us (equal keeps the window fixed)",
                    realtime.spin_max_us, realtime.spin_us
                ),
            ));
        }
        if realtime.spin_us > 5_000 {
            errors.push(at(
                "spin_us",
                None,
                format!(
                    "spin_us {} is too long: expected 0 to 5000 microseconds",
                    realtime.spin_us
                ),
            ));
        }
        let midi = match raw.midi {
            None => MidiConfig::default(),
            Some(raw_midi) => convert_midi(raw_midi, &base, &at, &mut errors),
        };
        let service = ServiceConfig {
            control_socket: raw
                .service
                .and_then(|s| s.control_socket)
                .map(|p| base.join(p)),
        };
        if service
            .control_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().len() > 100)
        {
            errors.push(at(
                "control_socket",
                None,
                "control_socket path is too long for a Unix socket: expected at most 100 bytes"
                    .to_string(),
            ));
        }
        let sandbox = match &raw.sandbox {
            None => SandboxConfig::default(),
            Some(value) => convert_sandbox(value, &base, &at, &mut errors),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            source: Some(path.to_path_buf()),
            songs: base.join(raw.songs.as_deref().unwrap_or("songs")),
            playlist: raw.playlist.map(|p| base.join(p)),
            extra_roots: raw.extra_roots.iter().map(|r| base.join(r)).collect(),
            audio,
            realtime,
            midi,
            service,
            sandbox,
        })
    }

    /// Output channels a track is routed to: its mapping, or outputs 1 and 2 when it has
    /// none (so zero-config libraries are heard on a stereo device).
    pub fn outputs_for(&self, track: &str) -> Vec<u16> {
        self.audio
            .track_mappings
            .get(track)
            .cloned()
            .unwrap_or_else(|| {
                if self.audio.track_mappings.is_empty() {
                    vec![1, 2]
                } else {
                    Vec::new()
                }
            })
    }

    /// Number of output channels the mappings need (at least 2).
    pub fn output_channels(&self) -> u16 {
        self.audio
            .track_mappings
            .values()
            .flatten()
            .copied()
            .max()
            .unwrap_or(2)
            .max(2)
    }
}

fn convert_midi(
    raw: RawMidi,
    base: &Path,
    at: &dyn Fn(&str, Option<&str>, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) -> MidiConfig {
    let mut outputs = Vec::with_capacity(raw.outputs.len());
    for output in raw.outputs {
        let targets = [
            output.port.clone().map(MidiTarget::Port),
            output.rawmidi.clone().map(MidiTarget::Rawmidi),
            output
                .path
                .as_deref()
                .map(|p| MidiTarget::Path(base.join(p))),
            output.jack.clone().map(MidiTarget::Jack),
        ];
        // Device and port names go to C libraries (ALSA, JACK) as C strings.
        let names = [
            Some(&output.name),
            output.port.as_ref(),
            output.rawmidi.as_ref(),
            output.jack.as_ref(),
        ];
        if names.into_iter().flatten().any(|n| n.contains('\0')) {
            errors.push(at(
                "name",
                None,
                format!(
                    "MIDI output `{}`: a name contains a NUL character: expected plain text",
                    output.name.escape_default()
                ),
            ));
            continue;
        }
        let mut chosen: Vec<MidiTarget> = targets.into_iter().flatten().collect();
        if chosen.len() != 1 {
            errors.push(at(
                "name",
                Some(&output.name),
                format!(
                    "MIDI output `{}` names {} destinations: expected exactly one of port, rawmidi, path, jack",
                    output.name,
                    chosen.len()
                ),
            ));
            continue;
        }
        if !output.offset_ms.is_finite() || output.offset_ms.abs() > 1000.0 {
            errors.push(at(
                "offset_ms",
                None,
                format!(
                    "MIDI output `{}` offset_ms {}: expected -1000 to 1000 milliseconds",
                    output.name, output.offset_ms
                ),
            ));
        }
        outputs.push(MidiOutputConfig {
            name: output.name,
            target: chosen.remove(0),
            clock: output.clock,
            midi_file: output.midi_file,
            offset_ms: output.offset_ms,
        });
    }
    // One clock thread serves every output: outputs carrying the same stream must agree on
    // their offset (a per-output schedule is future work), and an offset earlier than the
    // song start is known cannot be honoured at the first notes.
    for (what, carries) in [
        (
            "clock",
            (|o: &MidiOutputConfig| o.clock) as fn(&MidiOutputConfig) -> bool,
        ),
        ("midi_file", |o: &MidiOutputConfig| o.midi_file),
    ] {
        let offsets: Vec<f64> = outputs
            .iter()
            .filter(|o| carries(o))
            .map(|o| o.offset_ms)
            .collect();
        if offsets.windows(2).any(|w| w[0] != w[1]) {
            errors.push(at(
                "offset_ms",
                None,
                format!(
                    "MIDI outputs with `{what}: true` have different offset_ms ({}): expected one offset for all of them",
                    offsets.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let control = raw.control.map(|c| {
        for (key, event) in [
            ("play", &c.play),
            ("stop", &c.stop),
            ("next", &c.next),
            ("previous", &c.previous),
        ] {
            if let Some(Err(message)) = event.as_ref().map(MidiEvent::validate) {
                errors.push(at(key, None, format!("midi.control.{key}: {message}")));
            }
        }
        MidiControlConfig {
            port: c.port,
            play: c.play,
            stop: c.stop,
            next: c.next,
            previous: c.previous,
        }
    });
    MidiConfig {
        outputs,
        control,
        persist_tempo: raw.persist_tempo,
    }
}

fn sandbox_mode(text: &str) -> Option<SandboxMode> {
    match text {
        "strict" => Some(SandboxMode::Strict),
        "best_effort" => Some(SandboxMode::BestEffort),
        "off" => Some(SandboxMode::Off),
        _ => None,
    }
}

/// `sandbox: strict` or `sandbox: { mode: strict, seccomp_action: kill, state_dir: PATH }`.
fn convert_sandbox(
    value: &serde_yaml::Value,
    base: &Path,
    at: &dyn Fn(&str, Option<&str>, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) -> SandboxConfig {
    use serde_yaml::Value;
    const MODES: &str = "expected strict, best_effort or off";
    let mut config = SandboxConfig::default();
    match value {
        Value::String(text) => match sandbox_mode(text) {
            Some(mode) => config.mode = mode,
            None => errors.push(at(
                "sandbox",
                Some(text),
                format!("sandbox `{text}`: {MODES}, or a map with mode, seccomp_action, state_dir"),
            )),
        },
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key.as_str().unwrap_or("?");
                let text = value.as_str();
                match (key, text) {
                    ("mode", Some(text)) => match sandbox_mode(text) {
                        Some(mode) => config.mode = mode,
                        None => errors.push(at(
                            "mode",
                            Some(text),
                            format!("sandbox mode `{text}`: {MODES}"),
                        )),
                    },
                    ("seccomp_action", Some("errno")) => {
                        config.seccomp_action = SeccompActionConfig::Errno
                    }
                    ("seccomp_action", Some("kill")) => {
                        config.seccomp_action = SeccompActionConfig::Kill
                    }
                    ("seccomp_action", _) => errors.push(at(
                        "seccomp_action",
                        text,
                        "seccomp_action: expected errno (blocked calls fail with EPERM) or kill"
                            .into(),
                    )),
                    ("state_dir", Some(dir)) => config.state_dir = Some(base.join(dir)),
                    ("mode" | "state_dir", None) => errors.push(at(
                        key,
                        None,
                        format!("sandbox {key}: expected a string"),
                    )),
                    (other, _) => errors.push(at(
                        other,
                        None,
                        format!(
                            "unknown key `{other}` in sandbox: expected mode, seccomp_action or state_dir"
                        ),
                    )),
                }
            }
        }
        _ => errors.push(at(
            "sandbox",
            None,
            format!("sandbox: {MODES}, or a map with mode, seccomp_action, state_dir"),
        )),
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example_shape() {
        let text = "songs: songs\nplaylist: playlists/main.yaml\naudio:\n  device: default\n  sample_rate: 48000\n  buffer_size: 128\n  track_mappings:\n    click: [1]\n    backing-l: [3]\nmidi:\n  outputs:\n    - { name: dm, path: fifo, offset_ms: -5 }\n  control:\n    port: FCB1010\n    next: { type: note_on, channel: 16, note: 62 }\nrealtime:\n  audio_priority: 70\n  clock_priority: 80\n  spin_us: 150\n  cpus: [1]\n";
        let config = Config::parse(Path::new("/show/backline.yaml"), text).expect("valid");
        assert_eq!(config.songs, PathBuf::from("/show/songs"));
        assert_eq!(config.output_channels(), 3);
        assert_eq!(config.outputs_for("click"), vec![1]);
        assert!(config.outputs_for("unmapped").is_empty());
        assert_eq!(config.realtime.cpus, vec![1]);
        let output = &config.midi.outputs[0];
        assert_eq!(output.target, MidiTarget::Path(PathBuf::from("/show/fifo")));
        assert!(output.clock && output.midi_file);
        assert_eq!(output.offset_ms, -5.0);
        assert!(config.midi.control.as_ref().and_then(|c| c.next).is_some());
    }

    #[test]
    fn the_clock_standby_is_on_unless_turned_off() {
        let parse = |text: &str| Config::parse(Path::new("b.yaml"), text);
        assert!(parse("songs: s\n").expect("default").realtime.clock_standby);
        let off = parse("realtime:\n  clock_standby: false\n").expect("off");
        assert!(!off.realtime.clock_standby);
        let errors = parse("realtime:\n  clock_standby: maybe\n").expect_err("not a bool");
        assert!(
            errors.iter().any(|e| e.to_string().contains("b.yaml:2:")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_spin_window_may_widen_up_to_spin_max_us() {
        let parse = |text: &str| Config::parse(Path::new("b.yaml"), text);
        let default = parse("songs: s\n").expect("default");
        assert_eq!(
            (default.realtime.spin_us, default.realtime.spin_max_us),
            (400, 2000)
        );
        let wide = parse("realtime:\n  spin_us: 3000\n").expect("wide floor");
        assert_eq!(
            wide.realtime.spin_max_us, 3000,
            "the ceiling follows a higher floor"
        );
        let sleep_only = parse("realtime:\n  spin_us: 0\n").expect("sleep only");
        assert_eq!(
            sleep_only.realtime.spin_max_us, 0,
            "spin_us 0 still sleeps only"
        );
        let pinned = parse("realtime:\n  cpus: [1]\n").expect("one CPU");
        assert_eq!(
            pinned.realtime.spin_max_us, 400,
            "one CPU shared with the audio: fixed"
        );
        let errors = parse("realtime:\n  spin_us: 9000\n").expect_err("too long");
        assert_eq!(errors.len(), 1, "only the key the user wrote: {errors:?}");
        assert!(errors[0].to_string().contains("spin_us 9000"), "{errors:?}");
        let fixed = parse("realtime:\n  spin_us: 150\n  spin_max_us: 150\n").expect("fixed");
        assert_eq!(fixed.realtime.spin_max_us, 150);
        let errors = parse("realtime:\n  spin_us: 500\n  spin_max_us: 300\n").expect_err("below");
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.starts_with("b.yaml:3:")
                && t.contains("spin_max_us 300 is below spin_us 500")),
            "{text:?}"
        );
        let errors = parse("realtime:\n  spin_max_us: 9000\n").expect_err("too long");
        assert!(
            errors[0].to_string().contains("expected 0 to 5000"),
            "{errors:?}"
        );
    }

    #[test]
    fn midi_errors_carry_places() {
        let text = "midi:\n  outputs:\n    - name: a\n      port: x\n      path: y\n  control:\n    port: p\n    play: { type: note_on, channel: 0, note: 1 }\n";
        let errors = Config::parse(Path::new("b.yaml"), text).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("b.yaml:3:") && t.contains("exactly one of")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("b.yaml:8:") && t.contains("channel 0")),
            "{text:?}"
        );
        let unknown = Config::parse(
            Path::new("b.yaml"),
            "midi:\n  outputs:\n    - name: a\n      colck: true\n      path: x\n",
        )
        .expect_err("typo");
        assert_eq!(unknown[0].line, Some(4), "{}", unknown[0]);
    }

    #[test]
    fn sandbox_short_and_long_forms() {
        let short = Config::parse(Path::new("/show/b.yaml"), "sandbox: strict\n").expect("short");
        assert_eq!(short.sandbox.mode, SandboxMode::Strict);
        let long = Config::parse(
            Path::new("/show/b.yaml"),
            "sandbox:\n  mode: off\n  seccomp_action: kill\n  state_dir: state\n",
        )
        .expect("long");
        assert_eq!(long.sandbox.mode, SandboxMode::Off);
        assert_eq!(long.sandbox.seccomp_action, SeccompActionConfig::Kill);
        assert_eq!(long.sandbox.state_dir, Some(PathBuf::from("/show/state")));
        let default = Config::parse(Path::new("/show/b.yaml"), "songs: s\n").expect("default");
        assert_eq!(default.sandbox, SandboxConfig::default());
        let errors = Config::parse(
            Path::new("b.yaml"),
            "songs: s\nsandbox:\n  mode: lax\n  seccom_action: kill\n",
        )
        .expect_err("bad");
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("b.yaml:3:") && t.contains("lax")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("b.yaml:4:") && t.contains("unknown key `seccom_action`")),
            "{text:?}"
        );
    }

    #[test]
    fn errors_carry_places() {
        let text = "audio:\n  track_mappings:\n    click: [0]\nrealtime:\n  audio_priority: 120\n";
        let errors = Config::parse(Path::new("b.yaml"), text).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("b.yaml:3:") && t.contains("output 0")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("b.yaml:5:") && t.contains("1 to 99")),
            "{text:?}"
        );
        let unknown =
            Config::parse(Path::new("b.yaml"), "audio:\n  devcie: x\n").expect_err("unknown");
        assert_eq!(unknown[0].line, Some(2));
    }

    #[test]
    fn on_reconnect_values() {
        let config = Config::parse(Path::new("b.yaml"), "audio:\n  device: jack\n").expect("valid");
        for text in [
            "audio:\n  device: \"jack:a\\0b\"\n",
            "midi:\n  outputs:\n    - { name: x, jack: \"a:b\\0\" }\n",
        ] {
            let errors = Config::parse(Path::new("b.yaml"), text).expect_err("NUL refused");
            assert!(
                errors
                    .iter()
                    .any(|e| e.to_string().contains("NUL character")),
                "{errors:?}"
            );
        }
        assert_eq!(config.audio.on_reconnect, OnReconnect::Resume);
        let config =
            Config::parse(Path::new("b.yaml"), "audio:\n  on_reconnect: restart\n").expect("valid");
        assert_eq!(config.audio.on_reconnect, OnReconnect::Restart);
        let errors = Config::parse(
            Path::new("b.yaml"),
            "audio:\n  device: jack\n  on_reconnect: rewind\n",
        )
        .expect_err("unknown value");
        let text = errors[0].to_string();
        assert!(text.starts_with("b.yaml:3:17"), "{text}");
        assert!(
            text.contains("`rewind`") && text.contains("`restart`"),
            "{text}"
        );
    }

    #[test]
    fn control_socket_is_relative_to_the_config() {
        let config = Config::parse(
            Path::new("/show/backline.yaml"),
            "service:\n  control_socket: run/ctl.sock\n",
        )
        .expect("valid");
        assert_eq!(
            config.service.control_socket,
            Some(PathBuf::from("/show/run/ctl.sock"))
        );
        let unknown =
            Config::parse(Path::new("b.yaml"), "service:\n  socket: x\n").expect_err("unknown key");
        assert_eq!(unknown[0].line, Some(2), "{}", unknown[0]);
    }

    #[test]
    fn outputs_of_one_stream_share_their_offset() {
        let text = "midi:\n  outputs:\n    - { name: a, path: x, offset_ms: 5 }\n    - { name: b, path: y, offset_ms: 0 }\n";
        let errors = Config::parse(Path::new("b.yaml"), text).expect_err("different offsets");
        assert!(
            errors[0].message.contains("different offset_ms (5, 0)"),
            "{}",
            errors[0]
        );
    }
}

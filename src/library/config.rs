//! backline.yaml: the player config (library root, playlist, audio device and routing,
//! real-time settings). Unknown keys are errors with file:line:col.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use super::diagnostic::{locate, Diagnostic};

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
    /// Whether the config has a `midi:` section (MIDI outputs are not part of this build yet).
    pub has_midi_section: bool,
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
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            device: "default".into(),
            sample_rate: 48_000,
            buffer_size: 256,
            track_mappings: BTreeMap::new(),
            track_gains: BTreeMap::new(),
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
    /// Busy-wait window before a clock deadline, in microseconds.
    pub spin_us: u32,
    /// CPUs the RT threads are pinned to (empty = any).
    pub cpus: Vec<usize>,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            enabled: true,
            audio_priority: 70,
            clock_priority: 80,
            spin_us: 150,
            cpus: Vec::new(),
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
    midi: Option<Value>,
    #[serde(default)]
    realtime: Option<RawRealtime>,
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
    cpus: Vec<usize>,
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
            has_midi_section: false,
        }
    }

    /// Parses backline.yaml text read from `path`; relative paths are resolved against its
    /// folder.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
        let raw: RawConfig =
            serde_yaml::from_str(text).map_err(|e| vec![Diagnostic::from_yaml(path, &e)])?;
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
        });
        let defaults = AudioConfig::default();
        let audio = AudioConfig {
            device: audio_raw.device.unwrap_or(defaults.device),
            sample_rate: audio_raw.sample_rate.unwrap_or(defaults.sample_rate),
            buffer_size: audio_raw.buffer_size.unwrap_or(defaults.buffer_size),
            track_mappings: audio_raw.track_mappings,
            track_gains: audio_raw.track_gains,
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
        let realtime = match raw.realtime {
            None => rt_defaults,
            Some(r) => RealtimeConfig {
                enabled: r.enabled.unwrap_or(true),
                audio_priority: r.audio_priority.unwrap_or(rt_defaults.audio_priority),
                clock_priority: r.clock_priority.unwrap_or(rt_defaults.clock_priority),
                spin_us: r.spin_us.unwrap_or(rt_defaults.spin_us),
                cpus: r.cpus,
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
            has_midi_section: raw.midi.is_some(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example_shape() {
        let text = "songs: songs\nplaylist: playlists/main.yaml\naudio:\n  device: default\n  sample_rate: 48000\n  buffer_size: 128\n  track_mappings:\n    click: [1]\n    backing-l: [3]\nmidi:\n  outputs: []\nrealtime:\n  audio_priority: 70\n  clock_priority: 80\n  spin_us: 150\n  cpus: [1]\n";
        let config = Config::parse(Path::new("/show/backline.yaml"), text).expect("valid");
        assert_eq!(config.songs, PathBuf::from("/show/songs"));
        assert_eq!(config.output_channels(), 3);
        assert_eq!(config.outputs_for("click"), vec![1]);
        assert!(config.outputs_for("unmapped").is_empty());
        assert_eq!(config.realtime.cpus, vec![1]);
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
}

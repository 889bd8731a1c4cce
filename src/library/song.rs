//! song.yaml: the mtrack-compatible song description, parsed and validated into a [`Song`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use super::diagnostic::{locate, Diagnostic};
use super::paths::RootPolicy;

/// Keys mtrack understands in song.yaml that backline reads but does not act on. They load
/// with one warning each (per key, per run) instead of an error, so an existing mtrack
/// library works unchanged.
pub const MTRACK_ONLY_SONG_KEYS: &[&str] = &[
    "lighting",
    "light_shows",
    "metronome",
    "pilot",
    "notification_audio",
    "samples",
    "sample_triggers",
];

/// One song: its tracks, MIDI, tempo map source and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Song {
    /// Unique name, used by playlists.
    pub name: String,
    /// The song.yaml this came from.
    pub source: PathBuf,
    /// The directory track paths are relative to.
    pub dir: PathBuf,
    /// Audio stems, in file order.
    pub tracks: Vec<Track>,
    /// Sent when the song is selected.
    pub midi_event: Option<MidiEvent>,
    /// A Standard MIDI File played along with the audio.
    pub midi_playback: Option<MidiPlayback>,
    /// Start again from the top when the end is reached, until "next".
    pub loop_playback: bool,
    /// The beat clock's tempo map, when the song gives one.
    pub tempo: Option<TempoSpec>,
    /// Named parts of the song (measures, 1-based, end exclusive).
    pub sections: Vec<Section>,
}

/// One audio stem of a song.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// The name `track_mappings` routes.
    pub name: String,
    /// Absolute, normalised path of the audio file.
    pub file: PathBuf,
    /// 1-based channel picked from a multichannel file; `None` = every channel.
    pub file_channel: Option<u16>,
}

/// A MIDI file to play with the song.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MidiPlayback {
    /// Absolute path of the Standard MIDI File.
    pub file: PathBuf,
    /// MIDI channels (1-16) whose events are not sent.
    pub exclude_midi_channels: Vec<u8>,
}

/// A MIDI channel message written in YAML, as mtrack writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MidiEvent {
    /// Note on.
    NoteOn {
        /// Channel 1-16.
        channel: u8,
        /// Key 0-127.
        #[serde(alias = "note")]
        key: u8,
        /// Velocity 0-127; matches any velocity when used as a control trigger.
        #[serde(default)]
        velocity: Option<u8>,
    },
    /// Note off.
    NoteOff {
        /// Channel 1-16.
        channel: u8,
        /// Key 0-127.
        #[serde(alias = "note")]
        key: u8,
        /// Velocity 0-127.
        #[serde(default)]
        velocity: Option<u8>,
    },
    /// Polyphonic aftertouch.
    Aftertouch {
        /// Channel 1-16.
        channel: u8,
        /// Key 0-127.
        #[serde(alias = "note")]
        key: u8,
        /// Pressure 0-127.
        velocity: u8,
    },
    /// Control change.
    ControlChange {
        /// Channel 1-16.
        channel: u8,
        /// Controller number 0-127.
        controller: u8,
        /// Value 0-127.
        value: u8,
    },
    /// Program change.
    ProgramChange {
        /// Channel 1-16.
        channel: u8,
        /// Program 0-127.
        program: u8,
    },
    /// Channel pressure.
    ChannelAftertouch {
        /// Channel 1-16.
        channel: u8,
        /// Pressure 0-127.
        velocity: u8,
    },
    /// Pitch bend, 0-16383 (8192 = centre).
    PitchBend {
        /// Channel 1-16.
        channel: u8,
        /// Bend 0-16383.
        bend: u16,
    },
}

impl MidiEvent {
    /// Checks ranges; returns what is wrong and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        let (channel, data7, bend) = match *self {
            MidiEvent::NoteOn {
                channel,
                key,
                velocity,
            }
            | MidiEvent::NoteOff {
                channel,
                key,
                velocity,
            } => (
                channel,
                vec![("key", key), ("velocity", velocity.unwrap_or(0))],
                None,
            ),
            MidiEvent::Aftertouch {
                channel,
                key,
                velocity,
            } => (channel, vec![("key", key), ("velocity", velocity)], None),
            MidiEvent::ControlChange {
                channel,
                controller,
                value,
            } => (
                channel,
                vec![("controller", controller), ("value", value)],
                None,
            ),
            MidiEvent::ProgramChange { channel, program } => {
                (channel, vec![("program", program)], None)
            }
            MidiEvent::ChannelAftertouch { channel, velocity } => {
                (channel, vec![("velocity", velocity)], None)
            }
            MidiEvent::PitchBend { channel, bend } => (channel, vec![], Some(bend)),
        };
        if !(1..=16).contains(&channel) {
            return Err(format!(
                "MIDI channel {channel} is out of range: expected 1 to 16"
            ));
        }
        for (name, value) in data7 {
            if value > 127 {
                return Err(format!("{name} {value} is out of range: expected 0 to 127"));
            }
        }
        if let Some(bend) = bend {
            if bend > 16383 {
                return Err(format!(
                    "bend {bend} is out of range: expected 0 to 16383 (8192 = centre)"
                ));
            }
        }
        Ok(())
    }

    /// The bytes on the wire (status byte first). Call [`MidiEvent::validate`] first.
    pub fn to_bytes(&self) -> ([u8; 3], usize) {
        let status = |kind: u8, channel: u8| kind | (channel.saturating_sub(1) & 0x0f);
        match *self {
            MidiEvent::NoteOn {
                channel,
                key,
                velocity,
            } => ([status(0x90, channel), key, velocity.unwrap_or(100)], 3),
            MidiEvent::NoteOff {
                channel,
                key,
                velocity,
            } => ([status(0x80, channel), key, velocity.unwrap_or(0)], 3),
            MidiEvent::Aftertouch {
                channel,
                key,
                velocity,
            } => ([status(0xA0, channel), key, velocity], 3),
            MidiEvent::ControlChange {
                channel,
                controller,
                value,
            } => ([status(0xB0, channel), controller, value], 3),
            MidiEvent::ProgramChange { channel, program } => {
                ([status(0xC0, channel), program, 0], 2)
            }
            MidiEvent::ChannelAftertouch { channel, velocity } => {
                ([status(0xD0, channel), velocity, 0], 2)
            }
            MidiEvent::PitchBend { channel, bend } => (
                [
                    status(0xE0, channel),
                    (bend & 0x7f) as u8,
                    ((bend >> 7) & 0x7f) as u8,
                ],
                3,
            ),
        }
    }
}

/// The song's own tempo map, the first choice for the beat clock.
#[derive(Debug, Clone, PartialEq)]
pub struct TempoSpec {
    /// Quarter notes per minute at measure 1.
    pub bpm: f64,
    /// Beats per measure and the beat's note value at measure 1.
    pub time_signature: TimeSignature,
    /// Seconds of lead-in before measure 1 beat 1.
    pub start_seconds: f64,
    /// Tempo and meter changes, in measure order.
    pub changes: Vec<TempoChange>,
}

/// A meter such as 4/4 or 6/8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSignature {
    /// Beats per measure.
    pub beats: u8,
    /// The note value of one beat (4 = quarter, 8 = eighth).
    pub note_value: u8,
}

impl TimeSignature {
    /// Quarter notes in one measure of this meter.
    pub fn quarters_per_measure(&self) -> f64 {
        f64::from(self.beats) * 4.0 / f64::from(self.note_value)
    }
}

/// A change of tempo (instant or ramped) and optionally of meter, at a measure.
#[derive(Debug, Clone, PartialEq)]
pub struct TempoChange {
    /// 1-based measure where the change starts.
    pub measure: u32,
    /// Target quarter notes per minute.
    pub bpm: f64,
    /// New meter from this measure on.
    pub time_signature: Option<TimeSignature>,
    /// Length of a linear ramp in measures; `None` = instant.
    pub ramp_measures: Option<f64>,
}

/// A named span of measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name shown to the musician.
    pub name: String,
    /// First measure, 1-based.
    pub start_measure: u32,
    /// Measure after the last one (exclusive).
    pub end_measure: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSong {
    kind: Option<String>,
    name: String,
    #[serde(default)]
    midi_event: Option<MidiEvent>,
    #[serde(default)]
    midi_file: Option<String>,
    #[serde(default)]
    midi_playback: Option<RawMidiPlayback>,
    tracks: Vec<RawTrack>,
    #[serde(default)]
    loop_playback: bool,
    #[serde(default)]
    tempo: Option<RawTempo>,
    #[serde(default)]
    sections: Vec<RawSection>,
    // mtrack keys accepted with a warning (see MTRACK_ONLY_SONG_KEYS).
    #[serde(default)]
    lighting: Option<Value>,
    #[serde(default)]
    light_shows: Option<Value>,
    #[serde(default)]
    metronome: Option<Value>,
    #[serde(default)]
    pilot: Option<Value>,
    #[serde(default)]
    notification_audio: Option<Value>,
    #[serde(default)]
    samples: Option<Value>,
    #[serde(default)]
    sample_triggers: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMidiPlayback {
    file: String,
    #[serde(default)]
    exclude_midi_channels: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrack {
    name: String,
    file: String,
    #[serde(default)]
    file_channel: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTempo {
    bpm: f64,
    #[serde(default)]
    time_signature: Option<String>,
    #[serde(default)]
    start: Option<f64>,
    #[serde(default)]
    changes: Vec<RawTempoChange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTempoChange {
    measure: u32,
    #[serde(default)]
    bpm: Option<f64>,
    #[serde(default)]
    time_signature: Option<String>,
    #[serde(default)]
    transition: Option<RawTransition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    measures: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    name: String,
    start_measure: u32,
    end_measure: u32,
}

/// What parsing one song.yaml gave: the song, or the problems that make it unplayable, and
/// the warnings (mtrack-only keys) either way.
#[derive(Debug, Default)]
pub struct SongParse {
    /// The song, when it is playable.
    pub song: Option<Song>,
    /// Errors: the song is not loaded.
    pub errors: Vec<Diagnostic>,
    /// mtrack-only keys found (key name), for one warning per key per run.
    pub mtrack_keys: BTreeSet<&'static str>,
}

/// Parses the text of a song.yaml at `path`, resolving track files against its directory and
/// refusing paths outside the allowed roots.
pub fn parse_song(path: &Path, text: &str, roots: &RootPolicy) -> SongParse {
    let mut out = SongParse::default();
    let raw: RawSong = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            out.errors.push(Diagnostic::from_yaml(path, text, &e));
            return out;
        }
    };
    let present = [
        ("lighting", raw.lighting.is_some()),
        ("light_shows", raw.light_shows.is_some()),
        ("metronome", raw.metronome.is_some()),
        ("pilot", raw.pilot.is_some()),
        ("notification_audio", raw.notification_audio.is_some()),
        ("samples", raw.samples.is_some()),
        ("sample_triggers", raw.sample_triggers.is_some()),
    ];
    for key in MTRACK_ONLY_SONG_KEYS {
        if present.iter().any(|(k, p)| k == key && *p) {
            out.mtrack_keys.insert(key);
        }
    }
    let err = |key: &str, value: Option<&str>, nth: usize, message: String| {
        Diagnostic::at(path, locate(text, key, value, nth), message)
    };

    if let Some(kind) = &raw.kind {
        if kind != "song" {
            out.errors.push(err(
                "kind",
                None,
                0,
                format!("kind is `{kind}`: a song file must say `kind: song`"),
            ));
        }
    }
    let name = raw.name.trim().to_string();
    if name.is_empty() {
        out.errors.push(err(
            "name",
            None,
            0,
            "the song name is empty: expected a unique name".into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if raw.tracks.is_empty() {
        out.errors.push(err(
            "tracks",
            None,
            0,
            "the song has no tracks: expected at least one".into(),
        ));
    }
    let mut tracks = Vec::with_capacity(raw.tracks.len());
    let mut seen_names = BTreeSet::new();
    for (index, track) in raw.tracks.iter().enumerate() {
        if !seen_names.insert(track.name.as_str()) {
            out.errors.push(err(
                "name",
                Some(&track.name),
                0,
                format!(
                    "track name `{}` is used twice in this song: expected unique track names",
                    track.name
                ),
            ));
        }
        if track.file_channel == Some(0) {
            out.errors.push(err(
                "file_channel",
                Some("0"),
                0,
                format!(
                    "track `{}`: file_channel 0 is invalid: channels are numbered from 1",
                    track.name
                ),
            ));
        }
        let nth_file = raw.tracks[..index]
            .iter()
            .filter(|t| t.file == track.file)
            .count();
        match roots.resolve(&dir, &track.file) {
            Ok(file) => tracks.push(Track {
                name: track.name.clone(),
                file,
                file_channel: track.file_channel,
            }),
            Err(message) => out
                .errors
                .push(err("file", Some(&track.file), nth_file, message)),
        }
    }

    let midi_file = raw
        .midi_playback
        .as_ref()
        .map(|m| m.file.clone())
        .or(raw.midi_file.clone());
    let mut midi_playback = None;
    if let Some(file) = midi_file {
        let excluded = raw
            .midi_playback
            .as_ref()
            .map(|m| m.exclude_midi_channels.clone())
            .unwrap_or_default();
        for channel in &excluded {
            if !(1..=16).contains(channel) {
                out.errors.push(err(
                    "exclude_midi_channels",
                    None,
                    0,
                    format!("MIDI channel {channel} is out of range: expected 1 to 16"),
                ));
            }
        }
        match roots.resolve(&dir, &file) {
            Ok(file) => {
                midi_playback = Some(MidiPlayback {
                    file,
                    exclude_midi_channels: excluded,
                })
            }
            Err(message) => out.errors.push(err("file", Some(&file), 0, message)),
        }
    }

    if let Some(event) = &raw.midi_event {
        if let Err(message) = event.validate() {
            out.errors.push(err("midi_event", None, 0, message));
        }
    }

    let tempo = match raw.tempo.as_ref().map(|t| convert_tempo(t)) {
        None => None,
        Some(Ok(tempo)) => Some(tempo),
        Some(Err((key, message))) => {
            out.errors.push(err(key, None, 0, message));
            None
        }
    };

    let mut sections = Vec::with_capacity(raw.sections.len());
    for section in &raw.sections {
        if section.start_measure == 0 || section.end_measure <= section.start_measure {
            out.errors.push(err(
                "name",
                Some(&section.name),
                0,
                format!(
                    "section `{}` spans measures {}..{}: expected 1-based measures with end after start",
                    section.name, section.start_measure, section.end_measure
                ),
            ));
        }
        sections.push(Section {
            name: section.name.clone(),
            start_measure: section.start_measure,
            end_measure: section.end_measure,
        });
    }

    if out.errors.is_empty() {
        out.song = Some(Song {
            name,
            source: path.to_path_buf(),
            dir,
            tracks,
            midi_event: raw.midi_event,
            midi_playback,
            loop_playback: raw.loop_playback,
            tempo,
            sections,
        });
    }
    out
}

fn parse_time_signature(text: &str) -> Option<TimeSignature> {
    let (beats, value) = text.trim().split_once('/')?;
    let beats: u8 = beats.trim().parse().ok()?;
    let note_value: u8 = value.trim().parse().ok()?;
    let valid_value = matches!(note_value, 1 | 2 | 4 | 8 | 16 | 32);
    (beats > 0 && valid_value).then_some(TimeSignature { beats, note_value })
}

fn check_bpm(bpm: f64) -> Result<f64, String> {
    if bpm.is_finite() && (1.0..=1000.0).contains(&bpm) {
        Ok(bpm)
    } else {
        Err(format!(
            "bpm {bpm} is out of range: expected 1 to 1000 quarter notes per minute"
        ))
    }
}

fn convert_tempo(raw: &RawTempo) -> Result<TempoSpec, (&'static str, String)> {
    let bad_signature = |text: &str| {
        format!(
            "time_signature `{text}` is not a meter: expected beats/note-value such as 4/4 or 6/8"
        )
    };
    let bpm = check_bpm(raw.bpm).map_err(|m| ("bpm", m))?;
    let time_signature = match &raw.time_signature {
        None => TimeSignature {
            beats: 4,
            note_value: 4,
        },
        Some(text) => {
            parse_time_signature(text).ok_or_else(|| ("time_signature", bad_signature(text)))?
        }
    };
    let start_seconds = raw.start.unwrap_or(0.0);
    if !start_seconds.is_finite() || !(0.0..=3600.0).contains(&start_seconds) {
        return Err((
            "start",
            format!("start {start_seconds} is out of range: expected 0 to 3600 seconds of lead-in"),
        ));
    }
    let mut changes = Vec::with_capacity(raw.changes.len());
    let mut last_measure = 1;
    for change in &raw.changes {
        if change.measure <= last_measure {
            return Err((
                "measure",
                format!(
                    "tempo change at measure {}: expected measures after 1, in increasing order",
                    change.measure
                ),
            ));
        }
        last_measure = change.measure;
        let bpm = match change.bpm {
            Some(bpm) => check_bpm(bpm).map_err(|m| ("bpm", m))?,
            None => changes.last().map_or(bpm, |c: &TempoChange| c.bpm),
        };
        let time_signature = match &change.time_signature {
            None => None,
            Some(text) => Some(
                parse_time_signature(text)
                    .ok_or_else(|| ("time_signature", bad_signature(text)))?,
            ),
        };
        let ramp_measures = match &change.transition {
            None => None,
            Some(t) if t.measures.is_finite() && t.measures > 0.0 && t.measures <= 1000.0 => {
                Some(t.measures)
            }
            Some(t) => {
                return Err((
                    "transition",
                    format!(
                        "transition of {} measures: expected a positive number of measures",
                        t.measures
                    ),
                ))
            }
        };
        changes.push(TempoChange {
            measure: change.measure,
            bpm,
            time_signature,
            ramp_measures,
        });
    }
    Ok(TempoSpec {
        bpm,
        time_signature,
        start_seconds,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SongParse {
        let roots = RootPolicy::new(Path::new("/no-such-backline-lib"), &[]);
        parse_song(Path::new("/no-such-backline-lib/s/song.yaml"), text, &roots)
    }

    #[test]
    fn full_song_parses() {
        let p = parse(
            "kind: song\nname: A\nmidi_event: { type: program_change, channel: 16, program: 2 }\n\
             midi_playback:\n  file: song.mid\n  exclude_midi_channels: [15]\n\
             tracks:\n  - name: click\n    file: click.wav\n  - name: l\n    file: b.flac\n    file_channel: 1\n\
             tempo:\n  bpm: 118\n  time_signature: 4/4\n  start: 0.35\n  changes:\n    - measure: 33\n      bpm: 126\n      transition: { measures: 2 }\n    - measure: 65\n      bpm: 96\n      time_signature: 6/8\n\
             sections:\n  - { name: verse, start_measure: 1, end_measure: 17 }\nlighting: []\n",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let song = p.song.expect("song");
        assert_eq!(
            song.tracks[1].file,
            PathBuf::from("/no-such-backline-lib/s/b.flac")
        );
        assert_eq!(song.tracks[1].file_channel, Some(1));
        assert_eq!(
            song.midi_event.map(|e| e.to_bytes()),
            Some(([0xCF, 2, 0], 2))
        );
        let tempo = song.tempo.expect("tempo");
        assert_eq!(tempo.changes[0].ramp_measures, Some(2.0));
        assert_eq!(
            tempo.changes[1].time_signature,
            Some(TimeSignature {
                beats: 6,
                note_value: 8
            })
        );
        assert!(p.mtrack_keys.contains("lighting"));
    }

    #[test]
    fn unknown_key_is_error_with_place() {
        let p = parse("kind: song\nname: A\ntracks:\n  - name: a\n    file: a.wav\n    gain: 3\n");
        assert!(p.song.is_none());
        let e = &p.errors[0];
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("unknown field `gain`"), "{e}");
    }

    #[test]
    fn escaping_path_is_refused_with_place() {
        let p = parse("kind: song\nname: A\ntracks:\n  - name: a\n    file: ../../etc/shadow\n");
        let e = &p.errors[0];
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("outside the library"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let p = parse(
            "kind: song\nname: A\nmidi_event: { type: note_on, channel: 17, key: 1 }\ntracks:\n  - name: a\n    file: a.wav\n    file_channel: 0\ntempo: { bpm: 0 }\n",
        );
        let text: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains(":7:") && t.contains("file_channel 0")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("expected 1 to 16")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("bpm 0")), "{text:?}");
    }

    #[test]
    fn duplicate_keys_and_garbage_do_not_panic() {
        for text in [
            "name: a\nname: b\ntracks: []\n",
            "\u{0}\u{1}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "a: &a [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
            "",
            "kind: song\nname: x\ntracks:\n  - name: a\n    file: a.wav\ntempo: { bpm: 120, time_signature: 4/0 }\n",
        ] {
            let p = parse(text);
            assert!(p.song.is_none());
            assert!(!p.errors.is_empty());
        }
    }
}

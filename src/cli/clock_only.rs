//! `rehearse --clock-only`: checks a machine's beat clock before a tour, without a show. It
//! builds a one-song show in a temporary folder — a silent track of the requested length at the
//! requested tempo, rendered in real time to /dev/null — and sends the clock to `--midi-out`,
//! so the clock runs exactly as in a show (locked to a real-time audio callback).

use std::path::{Path, PathBuf};

/// A temporary show, removed on drop.
pub struct ClockOnlyShow {
    /// The folder holding backline.yaml.
    pub root: PathBuf,
}

impl Drop for ClockOnlyShow {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Longest clock-only run: the silent track is a mono 16-bit WAV, which must stay under 4 GiB.
const MAX_SECONDS: f64 = 12.0 * 3600.0;

/// Parses "60s", "10m", "1h" or plain seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.chars().last() {
        Some('s') => (&text[..text.len() - 1], 1.0),
        Some('m') => (&text[..text.len() - 1], 60.0),
        Some('h') => (&text[..text.len() - 1], 3600.0),
        _ => (text, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 && value * scale <= MAX_SECONDS => {
            Ok(value * scale)
        }
        _ => Err(format!(
            "`{text}` is not a duration: expected e.g. 60s, 10m or 1h (at most 12h)"
        )),
    }
}

/// Writes the temporary show.
pub fn build(
    bpm: f64,
    seconds: f64,
    midi_out: &Path,
    sample_rate: u32,
) -> Result<ClockOnlyShow, String> {
    if !(bpm.is_finite() && (1.0..=1000.0).contains(&bpm)) {
        return Err(format!("--bpm {bpm}: expected 1 to 1000"));
    }
    let root = std::env::temp_dir().join(format!("backline-clock-only-{}", std::process::id()));
    let show = ClockOnlyShow { root };
    let song = show.root.join("songs/clock");
    std::fs::create_dir_all(&song).map_err(|e| format!("cannot create {}: {e}", song.display()))?;
    let wav = song.join("silence.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec)
        .map_err(|e| format!("cannot write {}: {e}", wav.display()))?;
    let frames = (seconds * f64::from(sample_rate)).round() as u64;
    for _ in 0..frames {
        writer
            .write_sample(0i16)
            .map_err(|e| format!("cannot write {}: {e}", wav.display()))?;
    }
    writer
        .finalize()
        .map_err(|e| format!("cannot write {}: {e}", wav.display()))?;
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(
        song.join("song.yaml"),
        format!("kind: song\nname: Clock check at {bpm} BPM\ntracks:\n  - name: silence\n    file: silence.wav\ntempo: {{ bpm: {bpm} }}\n"),
    )?;
    let midi_out = std::path::absolute(midi_out).unwrap_or_else(|_| midi_out.to_path_buf());
    let midi_text = midi_out.display().to_string();
    if midi_text.contains(['"', '\\', '\n']) {
        return Err(format!(
            "--midi-out {midi_text}: expected a path without quotes, backslashes or newlines"
        ));
    }
    write(
        show.root.join("backline.yaml"),
        format!(
            "songs: songs\naudio:\n  device: \"wav:/dev/null\"\n  sample_rate: {sample_rate}\n  track_mappings:\n    silence: [1]\nmidi:\n  outputs:\n    - name: clock\n      path: \"{}\"\n      clock: true\n      midi_file: false\n",
            midi_text
        ),
    )?;
    Ok(show)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(60.0));
        assert_eq!(parse_duration("10m"), Ok(600.0));
        assert_eq!(parse_duration("1.5h"), Ok(5400.0));
        assert_eq!(parse_duration("90"), Ok(90.0));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("13h").is_err());
    }
}

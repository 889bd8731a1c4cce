//! Test shows written on the fly: tone and noise WAV files, song.yaml, playlists, config.

use std::f32::consts::TAU;
use std::path::{Path, PathBuf};

/// A temporary show folder, removed on drop.
pub struct TestShow {
    /// The folder (holds backline.yaml and songs/).
    pub root: PathBuf,
}

impl TestShow {
    /// A fresh empty show in memory (`/dev/shm`) where it can be, else under the system
    /// temp dir. The shows' MIDI FIFOs live here: a FIFO on a disk filesystem journals its
    /// modification time on every write, which backline warns about and which adds
    /// milliseconds to the odd write (`cargo bench --bench fifo_write`).
    pub fn new(tag: &str) -> TestShow {
        let in_memory = Path::new("/dev/shm").join(Self::unique_name(tag));
        if std::fs::create_dir_all(in_memory.join("songs")).is_ok() {
            return TestShow { root: in_memory };
        }
        Self::on_disk(tag)
    }

    /// A fresh empty show under the system temp dir, for the sandbox tests: the sandbox
    /// grants read-write on all of `/dev/shm` (JACK's shared memory), so a library there
    /// would not show that the library is read-only.
    pub fn on_disk(tag: &str) -> TestShow {
        let root = std::env::temp_dir().join(Self::unique_name(tag));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("songs")).expect("create show dir");
        TestShow { root }
    }

    fn unique_name(tag: &str) -> String {
        format!(
            "backline-{tag}-{}-{}",
            std::process::id(),
            super::unique_client_name("s")
        )
    }

    /// Path of a file inside the show.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Writes a text file (creating folders).
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Writes a 16-bit WAV where channel `c` is a sine of `tones[c] = (freq, amplitude)`.
    pub fn tone_wav(
        &self,
        relative: &str,
        rate: u32,
        seconds: f32,
        tones: &[(f32, f32)],
    ) -> PathBuf {
        let frames = (seconds * rate as f32).round() as usize;
        let channels: Vec<Vec<i16>> = tones
            .iter()
            .map(|&(freq, amplitude)| {
                (0..frames)
                    .map(|n| {
                        let v = amplitude * (TAU * freq * n as f32 / rate as f32).sin();
                        (v * 32767.0).round() as i16
                    })
                    .collect()
            })
            .collect();
        self.wav_i16(relative, rate, &channels)
    }

    /// Writes a 16-bit WAV from per-channel samples.
    pub fn wav_i16(&self, relative: &str, rate: u32, channels: &[Vec<i16>]) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let spec = hound::WavSpec {
            channels: channels.len() as u16,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).expect("create wav");
        let frames = channels.first().map_or(0, Vec::len);
        for n in 0..frames {
            for channel in channels {
                writer.write_sample(channel[n]).expect("write sample");
            }
        }
        writer.finalize().expect("finalize wav");
        path
    }

    /// A song folder `songs/<dir>` with a song.yaml naming `tracks` = (name, file, file_channel).
    pub fn song(&self, dir: &str, name: &str, tracks: &[(&str, &str, Option<u16>)]) {
        let mut yaml = format!("kind: song\nname: {name}\ntracks:\n");
        for (track, file, channel) in tracks {
            yaml.push_str(&format!("  - name: {track}\n    file: {file}\n"));
            if let Some(channel) = channel {
                yaml.push_str(&format!("    file_channel: {channel}\n"));
            }
        }
        self.write(&format!("songs/{dir}/song.yaml"), &yaml);
    }

    /// A single-tone mono song: `songs/<dir>/tone.wav` routed as track `tone`.
    pub fn tone_song(&self, dir: &str, name: &str, freq: f32, seconds: f32) {
        self.tone_wav(
            &format!("songs/{dir}/tone.wav"),
            48_000,
            seconds,
            &[(freq, 0.5)],
        );
        self.song(dir, name, &[("tone", "tone.wav", None)]);
    }
}

impl Drop for TestShow {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Reads a 32-bit float WAV into per-channel vectors.
pub fn read_f32_wav(path: &Path) -> (u32, Vec<Vec<f32>>) {
    let mut reader = hound::WavReader::open(path).expect("open rendered wav");
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let mut out = vec![Vec::new(); channels];
    for (i, sample) in reader.samples::<f32>().enumerate() {
        out[i % channels].push(sample.expect("sample"));
    }
    (spec.sample_rate, out)
}

/// Per 50 ms block, the candidate frequency that dominates (or 0.0 for silence).
pub fn frequency_track(samples: &[f32], rate: u32, candidates: &[f32]) -> Vec<f32> {
    let block = rate as usize / 20;
    samples
        .chunks(block)
        .filter(|c| c.len() == block)
        .map(|c| {
            if super::rms(c) < 0.01 {
                0.0
            } else {
                super::dominant_frequency(c, rate, candidates)
            }
        })
        .collect()
}

/// Collapses consecutive repeats: [a, a, b, b, a] → [a, b, a].
pub fn segments(track: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::new();
    for &f in track {
        if out.last() != Some(&f) {
            out.push(f);
        }
    }
    out
}

/// Longest run of exact digital silence (|x| < 1e-6) inside `samples`.
pub fn longest_silence(samples: &[f32]) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for &s in samples {
        if s.abs() < 1e-6 {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

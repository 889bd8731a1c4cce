//! Every format backline promises to decode (WAV, FLAC, MP3, OGG/Vorbis, AAC/M4A, AIFF)
//! decodes to the right tone, level and length.

use std::path::Path;

use backline::media::{decode_all, FileDecoder};

fn tone_level(path: &Path) -> (u32, usize, u64, f32) {
    let mut decoder = FileDecoder::open(path).unwrap_or_else(|e| panic!("{e}"));
    let info = decoder.info().clone();
    let mut first: Vec<f32> = Vec::new();
    while let Some(samples) = decoder.next_packet().unwrap_or_else(|e| panic!("{e}")) {
        first.extend(samples.iter().step_by(info.channels));
    }
    // Amplitude of 440 Hz over the middle of the file (codec delay and fades at the edges).
    let middle = &first[first.len() / 4..first.len() * 3 / 4];
    let rate = info.sample_rate as f32;
    let (mut re, mut im) = (0.0f32, 0.0f32);
    for (n, s) in middle.iter().enumerate() {
        let phase = std::f32::consts::TAU * 440.0 * n as f32 / rate;
        re += s * phase.cos();
        im += s * phase.sin();
    }
    let amplitude = 2.0 * (re * re + im * im).sqrt() / middle.len() as f32;
    (
        info.sample_rate,
        info.channels,
        first.len() as u64,
        amplitude,
    )
}

#[test]
fn all_promised_formats_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    for (file, channels, seconds) in [
        ("tone.wav", 1, 0.3),
        ("tone.flac", 2, 1.0),
        ("tone.mp3", 2, 1.0),
        ("tone.ogg", 2, 1.0),
        ("tone.m4a", 2, 1.0),
        ("tone.aiff", 2, 1.0),
    ] {
        let path = dir.join(file);
        let (rate, got_channels, frames, amplitude) = tone_level(&path);
        assert_eq!(rate, 44_100, "{file}");
        assert_eq!(got_channels, channels, "{file}");
        let expected = (seconds * 44_100.0) as u64;
        // Lossy codecs add up to a few thousand frames of priming/padding.
        assert!(
            frames.abs_diff(expected) <= 3_000,
            "{file}: {frames} frames, expected ~{expected}"
        );
        assert!(
            (amplitude - 0.5).abs() < 0.03,
            "{file}: 440 Hz at {amplitude}, expected 0.5"
        );
        assert!(decode_all(&path).is_ok(), "{file}");
    }
}

#[test]
fn undecodable_files_are_explained_not_panicked() {
    let dir = std::env::temp_dir().join(format!("backline-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, b"").expect("write");
    let junk = dir.join("junk.flac");
    std::fs::write(&junk, b"fLaC but then nothing sensible at all").expect("write");
    let text = dir.join("notes.mp3");
    std::fs::write(&text, "these are lyrics, not audio\n".repeat(100)).expect("write");
    for (path, expected) in [
        (&empty, "the file is empty"),
        (&junk, "junk.flac"),
        (&text, "notes.mp3"),
    ] {
        let error = decode_all(path).expect_err("must fail");
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seeking_lands_on_the_exact_frame() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    for file in ["tone.wav", "tone.flac", "tone.aiff"] {
        let path = dir.join(file);
        let mut whole = FileDecoder::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let channels = whole.info().channels;
        let mut all: Vec<f32> = Vec::new();
        while let Some(samples) = whole.next_packet().unwrap_or_else(|e| panic!("{e}")) {
            all.extend_from_slice(samples);
        }
        for target in [1usize, 4_097, 10_000] {
            let mut seeked = FileDecoder::open(&path).unwrap_or_else(|e| panic!("{e}"));
            seeked
                .seek_to_frame(target as u64)
                .unwrap_or_else(|e| panic!("{e}"));
            let first = seeked
                .next_packet()
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|s| s[..channels * 8].to_vec())
                .expect("audio after the seek");
            assert_eq!(
                first,
                all[target * channels..(target + 8) * channels].to_vec(),
                "{file}: seek to frame {target}"
            );
        }
    }
}

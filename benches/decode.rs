//! Decoding speed: seconds of audio decoded per second of CPU time, per format, on the
//! stereo 48 kHz files of songs-example. Target: at least 50× real time for FLAC and MP3.
//! Run with `cargo bench --bench decode`.

use std::path::Path;
use std::time::{Duration, Instant};

use backline::media::FileDecoder;

fn decode_once(path: &Path) -> (u64, u32) {
    let mut decoder = FileDecoder::open(path).expect("example file opens");
    let channels = decoder.info().channels as u64;
    let rate = decoder.info().sample_rate;
    let mut frames = 0;
    while let Some(samples) = decoder.next_packet().expect("example file decodes") {
        frames += samples.len() as u64 / channels;
    }
    (frames, rate)
}

fn main() {
    // `cargo bench` passes --bench; a filter argument may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("songs-example/songs");
    let files = [
        ("FLAC", root.join("01-sound-check/backing.flac")),
        ("MP3", root.join("03-with-midi/pad.mp3")),
        ("OGG/Vorbis", root.join("02-tempo-change/bass.ogg")),
        ("WAV", root.join("01-sound-check/click.wav")),
    ];
    println!(
        "{:<12} {:>9} {:>6} {:>12} {:>14}",
        "format", "channels", "kHz", "audio (s)", "× real time"
    );
    for (name, path) in files {
        if filter
            .as_deref()
            .is_some_and(|f| !name.to_lowercase().contains(&f.to_lowercase()))
        {
            continue;
        }
        let channels = FileDecoder::open(&path)
            .map(|d| d.info().channels)
            .unwrap_or(0);
        decode_once(&path); // warm the page cache
        let mut audio_seconds = 0.0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            let (frames, rate) = decode_once(&path);
            audio_seconds += frames as f64 / f64::from(rate);
        }
        let wall = start.elapsed().as_secs_f64();
        let rate_khz = FileDecoder::open(&path)
            .map(|d| d.info().sample_rate / 1000)
            .unwrap_or(0);
        println!(
            "{:<12} {:>9} {:>6} {:>12.1} {:>13.0}×",
            name,
            channels,
            rate_khz,
            audio_seconds,
            audio_seconds / wall
        );
    }
}

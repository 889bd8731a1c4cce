//! The hostile-input corpus (tests/hostile, made by tests/hostile/generate.py) plus inputs
//! too large to commit, made here: every broken input gives a clear error naming its file
//! and the problem, `check` and `play` stay within stated time and memory bounds, nothing
//! panics, and the valid songs of the same set still play.
//!
//! Bounds asserted (generous for a loaded 2-core CI machine; typical figures are in the
//! README): `check` of the whole corpus under 60 s and 300 MB peak RSS; the set played as a
//! WAV render under 120 s and 300 MB.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixtures::TestShow;

const CHECK_TIME: Duration = Duration::from_secs(60);
const PLAY_TIME: Duration = Duration::from_secs(120);
const MAX_RSS_KB: i64 = 300 * 1024;

/// What a finished (or killed) run left behind.
struct Run {
    exit_code: Option<i32>,
    output: String,
    elapsed: Duration,
    max_rss_kb: i64,
}

/// Runs backline with `args`, killing it after `limit`; measures its own peak RSS with
/// wait4 (not shared with the other tests running in parallel).
fn run_bounded(args: &[&str], limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_backline"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backline");
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    })
    .collect();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: pid is our own child; status and usage are valid for writes.
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if waited == pid {
            break;
        }
        if started.elapsed() > limit && !killed {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let output = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("");
    // Reaped by wait4 above; `wait` only collects the status std keeps.
    let _ = child.try_wait();
    let exit_code = (!killed && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status));
    Run {
        exit_code,
        output,
        elapsed,
        max_rss_kb: usage.ru_maxrss,
    }
}

/// A copy of the committed corpus in a temporary show, symlinks kept.
fn corpus_copy(tag: &str) -> TestShow {
    let show = TestShow::new(tag);
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hostile/library/.");
    let copied = Command::new("cp")
        .args(["-a", corpus])
        .arg(&show.root)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copying the corpus failed");
    show
}

/// (case, text) pairs from expected.tsv.
fn expectations() -> Vec<(String, String)> {
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/hostile/expected.tsv"
    ))
    .expect("expected.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .map(|(case, expected)| (case.to_string(), expected.to_string()))
        .collect()
}

/// A song folder with a one-track song.yaml.
fn add_song(show: &TestShow, case: &str, file: &str, extra_yaml: &str) -> PathBuf {
    show.write(
        &format!("songs/{case}/song.yaml"),
        &format!(
            "kind: song\nname: {case}\ntracks:\n  - name: main\n    file: {file}\n{extra_yaml}"
        ),
    );
    show.path(&format!("songs/{case}"))
}

/// A 16-bit stereo 48 kHz WAV header whose data chunk claims `data_bytes`.
fn wav_header(data_bytes: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_bytes.wrapping_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&(48_000u32 * 4).to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_bytes.to_le_bytes());
    h
}

/// The inputs too large to commit.
fn add_large_inputs(show: &TestShow) {
    // A 10 GB sparse WAV: a header claiming the largest data chunk RIFF can hold, then holes.
    let dir = add_song(show, "large-sparse-10g", "audio.wav", "");
    let mut file = fs::File::create(dir.join("audio.wav")).expect("create sparse wav");
    file.write_all(&wav_header(u32::MAX - 64))
        .expect("write header");
    file.set_len(10 * 1024 * 1024 * 1024)
        .expect("make the file 10 GB");
    file.seek(SeekFrom::End(0)).expect("seek");

    // A 50 MB song.yaml (a comment line repeated): refused by size before it is read.
    let dir = add_song(show, "large-yaml-50m", "audio.wav", "");
    fs::copy(
        show.path("songs/aaa-good-first/audio.wav"),
        dir.join("audio.wav"),
    )
    .expect("copy");
    let mut yaml = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("song.yaml"))
        .expect("open song.yaml");
    let line = format!("# {}\n", "x".repeat(1022));
    for _ in 0..50 * 1024 {
        yaml.write_all(line.as_bytes()).expect("grow song.yaml");
    }

    // A MIDI file with a million note events (well-formed: it must load and play).
    let dir = add_song(
        show,
        "large-midi-1m-events",
        "audio.wav",
        "midi_playback:\n  file: song.mid\n",
    );
    fs::copy(
        show.path("songs/aaa-good-first/audio.wav"),
        dir.join("audio.wav"),
    )
    .expect("copy");
    let mut body = Vec::with_capacity(4_000_100);
    for i in 0..500_000u32 {
        // Note on / note off pairs; all within the first 0.4 s (1 tick apart every 64).
        let delta = u8::from(i % 64 == 0);
        body.extend_from_slice(&[delta, 0x90, 60 + (i % 12) as u8, 100]);
        body.extend_from_slice(&[0, 0x80, 60 + (i % 12) as u8, 0]);
    }
    body.extend_from_slice(&[0x00, 0xFF, 0x2F, 0x00]);
    let mut smf = Vec::new();
    smf.extend_from_slice(b"MThd");
    smf.extend_from_slice(&6u32.to_be_bytes());
    smf.extend_from_slice(&0u16.to_be_bytes());
    smf.extend_from_slice(&1u16.to_be_bytes());
    smf.extend_from_slice(&19_200u16.to_be_bytes());
    smf.extend_from_slice(b"MTrk");
    smf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    smf.extend_from_slice(&body);
    fs::write(dir.join("song.mid"), smf).expect("write song.mid");
}

/// Expectations for the generated large inputs.
fn large_expectations() -> Vec<(String, String)> {
    [
        (
            "large-sparse-10g",
            "audio.wav: the header claims 1073741807 frames (6 h 12 min at 48000 Hz)",
        ),
        ("large-yaml-50m", "song.yaml: the file is 52"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

/// Sends MIDI to a regular file in the show, so MIDI files are loaded (and refused).
fn add_midi_output(show: &TestShow) {
    let config = show.path("backline.yaml");
    let mut text = fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "midi:\n  outputs:\n    - name: capture\n      path: {}\n      clock: true\n      midi_file: true\n",
        show.path("midi.out").display()
    ));
    fs::write(&config, text).expect("write config");
    fs::write(show.path("midi.out"), b"").expect("create midi.out");
}

fn assert_clean(run: &Run, what: &str) {
    for bad in ["panicked", "internal error", "RUST_BACKTRACE"] {
        assert!(
            !run.output.contains(bad),
            "{what}: `{bad}` in the output:\n{}",
            run.output
        );
    }
    assert!(
        run.max_rss_kb < MAX_RSS_KB,
        "{what}: peak RSS {} KB",
        run.max_rss_kb
    );
}

/// One error line per case, naming the case's file and the problem.
fn assert_errors(run: &Run, expected: &[(String, String)]) {
    for (case, text) in expected {
        let named = run
            .output
            .lines()
            .any(|line| line.contains(&format!("songs/{case}/")) && line.contains(text.as_str()));
        assert!(
            named,
            "no error line naming songs/{case}/ with `{text}`:\n{}",
            run.output
        );
    }
}

#[test]
fn check_names_every_broken_input_within_bounds() {
    let show = corpus_copy("hostile-check");
    add_large_inputs(&show);
    add_midi_output(&show);
    let run = run_bounded(&["check", &show.root.to_string_lossy()], CHECK_TIME);
    eprintln!(
        "check: {:.1} s, peak RSS {} KB",
        run.elapsed.as_secs_f64(),
        run.max_rss_kb
    );
    assert_eq!(run.exit_code, Some(1), "check must fail:\n{}", run.output);
    assert_clean(&run, "check");
    assert_errors(&run, &expectations());
    assert_errors(&run, &large_expectations());
    for good in [
        "aaa-good-first",
        "zzz-good-last",
        "good-26-channels",
        "good-mp3-named-wav",
        "large-midi-1m-events",
    ] {
        assert!(
            !run.output
                .lines()
                .any(|l| l.contains("error") && l.contains(&format!("songs/{good}/"))),
            "{good} is valid but check reports an error:\n{}",
            run.output
        );
    }
}

#[test]
fn the_set_plays_past_every_broken_song() {
    let show = corpus_copy("hostile-play");
    add_large_inputs(&show);
    add_midi_output(&show);
    let out = show.path("out.wav");
    let output = format!("wav:{}", out.display());
    let run = run_bounded(
        &[
            "play",
            &show.root.to_string_lossy(),
            "--output",
            &output,
            "--speed",
            "4",
        ],
        PLAY_TIME,
    );
    eprintln!(
        "play: {:.1} s, peak RSS {} KB",
        run.elapsed.as_secs_f64(),
        run.max_rss_kb
    );
    assert_eq!(run.exit_code, Some(0), "play must finish:\n{}", run.output);
    assert_clean(&run, "play");
    let skipped: Vec<(String, String)> = expectations()
        .into_iter()
        .chain(large_expectations())
        .filter(|(case, _)| !case.starts_with("yaml-symlink") && !case.starts_with("yaml-playlist"))
        .collect();
    assert_errors(&run, &skipped);
    for good in [
        "aaa-good-first",
        "good-26-channels",
        "good-mp3-named-wav",
        "large-midi-1m-events",
        "zzz-good-last",
    ] {
        assert!(
            run.output
                .lines()
                .any(|l| l.contains("song finished: ") && l.contains(good)),
            "{good} did not play:\n{}",
            run.output
        );
    }
    assert!(run.output.contains("set finished"), "{}", run.output);
    // The render holds at least the good songs: 0.5 + 0.1 + 1.0 + 0.5 + 0.5 s.
    let frames = wav_frames(&out);
    assert!(frames >= 48_000 * 26 / 10, "only {frames} frames rendered");
}

/// Frames in a float WAV written by the renderer (from its data chunk size).
fn wav_frames(path: &Path) -> u64 {
    let reader = hound::WavReader::open(path).expect("a valid WAV");
    u64::from(reader.duration())
}

#[test]
fn a_hostile_config_is_refused_with_its_place() {
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "alias bomb",
            b"songs: songs\naudio: &a0 [[1,2,3,4,5,6,7,8,9]]\nx1: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0]\n",
            "backline.yaml:2:8: audio: invalid type",
        ),
        (
            "deep nesting",
            &[b"songs: songs\naudio: ".as_slice(), &[b'['; 5000], &[b']'; 5000], b"\n"].concat(),
            "backline.yaml:2:",
        ),
        (
            "duplicate key",
            b"songs: songs\naudio:\n  sample_rate: 48000\naudio:\n  sample_rate: 44100\n",
            "backline.yaml:4:1: duplicate field `audio`",
        ),
        (
            "invalid UTF-8",
            b"songs: songs\n# caf\xe9\n",
            "backline.yaml:2:6: invalid UTF-8",
        ),
    ];
    for (what, text, expected) in cases {
        let show = TestShow::new("hostile-config");
        show.tone_song("songs/a", "A", 440.0, 0.2);
        fs::write(show.path("backline.yaml"), text).expect("write config");
        let run = run_bounded(&["check", &show.root.to_string_lossy()], CHECK_TIME);
        assert_clean(&run, what);
        assert_eq!(run.exit_code, Some(1), "{what}:\n{}", run.output);
        assert!(
            run.output.contains(expected),
            "{what}: expected `{expected}` in:\n{}",
            run.output
        );
    }
}

//! The beat clock and MIDI-file playback on the wire: backline writes to a FIFO that the
//! test reads, timestamping every byte on arrival with CLOCK_MONOTONIC. Audio is rendered in
//! real time to a WAV file, so the clock is locked to a real (timer-driven) audio callback.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use common::fixtures::TestShow;
use common::now_ns;

/// Creates a FIFO and a reader thread that returns every byte with its arrival time.
fn fifo_reader(path: &Path) -> JoinHandle<Vec<(u64, u8)>> {
    let c_path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: c_path is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // Just below the clock's priority when the test may (root): then a stamp is late only
        // when the whole machine stalls, not whenever the test's other threads run.
        let param = libc::sched_param { sched_priority: 79 };
        // SAFETY: a valid sched_param for the calling thread (pid 0); failure leaves it normal.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        // Blocks until backline opens the write end; ends at EOF when backline exits.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(0)
            .open(&path)
            .expect("open fifo");
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 256];
        loop {
            match file.read(&mut buffer) {
                Ok(0) | Err(_) => return bytes,
                Ok(n) => {
                    let t = now_ns();
                    bytes.extend(buffer[..n].iter().map(|&b| (t, b)));
                }
            }
        }
    })
}

/// The tick interval in ns that best fits `ticks` (least squares of arrival time against tick
/// number). One late arrival moves it by its lateness ÷ the number of ticks, where the span
/// from the first to the last tick moves by all of it when either end is late.
fn fitted_interval_ns(ticks: &[u64]) -> f64 {
    let n = ticks.len() as f64;
    let Some(&first) = ticks.first() else {
        return f64::NAN;
    };
    let x_mean = (n - 1.0) / 2.0;
    let y_mean = ticks.iter().map(|&t| (t - first) as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, &t) in ticks.iter().enumerate() {
        let dx = i as f64 - x_mean;
        sxy += dx * ((t - first) as f64 - y_mean);
        sxx += dx * dx;
    }
    sxy / sxx
}

/// When tick 0 of `ticks` was due, in CLOCK_MONOTONIC ns: the median over the first 24 ticks
/// (one beat) of each arrival less its ticks × `interval_ns`. A late first arrival does not
/// move it.
fn fitted_first_tick_ns(ticks: &[u64], interval_ns: f64) -> f64 {
    let mut due: Vec<f64> = ticks
        .iter()
        .take(24)
        .enumerate()
        .map(|(i, &t)| t as f64 - i as f64 * interval_ns)
        .collect();
    due.sort_by(f64::total_cmp);
    due.get(due.len() / 2).copied().unwrap_or(f64::NAN)
}

fn play(show: &TestShow) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_backline"))
        .arg("play")
        .arg(&show.root)
        .arg("--output")
        .arg(format!("wav:{}", show.path("out.wav").display()))
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config(show: &TestShow) {
    show.write(
        "backline.yaml",
        &format!(
            "songs: songs\naudio:\n  track_mappings:\n    tone: [1]\nmidi:\n  outputs:\n    - name: wire\n      path: {}\n",
            show.path("midi.fifo").display()
        ),
    );
}

/// A 120 BPM song of `seconds` played in a terminal (pty), its MIDI going to a FIFO read by
/// the test; `extra_midi` adds lines under `midi:` in backline.yaml.
fn play_in_terminal(
    tag: &str,
    seconds: f32,
    extra_midi: &str,
) -> (TestShow, JoinHandle<Vec<(u64, u8)>>, common::PtyChild) {
    let show = TestShow::new(tag);
    show.tone_song("a", "Long", 440.0, seconds);
    show.write(
        "songs/a/song.yaml",
        "kind: song\nname: Long\ntracks:\n  - name: tone\n    file: tone.wav\ntempo: { bpm: 120 }\n",
    );
    show.write(
        "backline.yaml",
        &format!(
            "songs: songs\naudio:\n  track_mappings:\n    tone: [1]\nmidi:\n{extra_midi}  outputs:\n    - name: wire\n      path: {}\n",
            show.path("midi.fifo").display()
        ),
    );
    let reader = fifo_reader(&show.path("midi.fifo"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_backline"));
    command
        .arg("play")
        .arg(&show.root)
        .arg("--output")
        .arg(format!("wav:{}", show.path("out.wav").display()));
    let ui = common::PtyChild::spawn(command);
    assert!(
        ui.wait_for_output("1/1 Long", std::time::Duration::from_secs(10)),
        "{}",
        ui.stderr_so_far()
    );
    (show, reader, ui)
}

/// Quits with q and returns every byte that arrived.
fn quit(mut ui: common::PtyChild, reader: JoinHandle<Vec<(u64, u8)>>) -> Vec<(u64, u8)> {
    ui.send(b"q");
    let status = ui
        .wait_timeout(std::time::Duration::from_secs(10))
        .expect("q quits");
    assert!(status.success(), "{}", ui.stderr_so_far());
    reader.join().expect("reader")
}

#[test]
fn thirty_seconds_at_120_bpm_is_start_1440_ticks_stop() {
    let show = TestShow::new("clock");
    show.tone_song("a", "Thirty", 440.0, 30.0);
    show.write(
        "songs/a/song.yaml",
        "kind: song\nname: Thirty\ntracks:\n  - name: tone\n    file: tone.wav\ntempo: { bpm: 120 }\n",
    );
    config(&show);
    let reader = fifo_reader(&show.path("midi.fifo"));
    let (ok, stderr) = play(&show);
    assert!(ok, "{stderr}");
    let bytes = reader.join().expect("reader");
    let kinds: Vec<u8> = bytes.iter().map(|&(_, b)| b).collect();
    assert_eq!(
        kinds.first(),
        Some(&0xFA),
        "Start first: {:02x?}",
        &kinds[..kinds.len().min(8)]
    );
    assert_eq!(kinds.last(), Some(&0xFC), "Stop last");
    let ticks: Vec<u64> = bytes
        .iter()
        .filter(|&&(_, b)| b == 0xF8)
        .map(|&(t, _)| t)
        .collect();
    assert!(
        ticks.len().abs_diff(1440) <= 1,
        "{} ticks in 30 s at 120 BPM",
        ticks.len()
    );
    assert!(
        kinds.iter().all(|&b| matches!(b, 0xF8 | 0xFA | 0xFC)),
        "nothing but clock bytes"
    );
    let mean = fitted_interval_ns(&ticks);
    let nominal = 60e9 / 120.0 / 24.0;
    assert!(
        ((mean - nominal) / nominal).abs() < 0.001,
        "mean tick interval {:.1} µs, expected {:.1} µs ± 0.1 %",
        mean / 1e3,
        nominal / 1e3
    );
    assert!(
        stderr.contains("real-time: clock FIFO 80"),
        "the clock thread runs SCHED_FIFO:\n{stderr}"
    );
}

#[test]
fn a_tempo_change_lands_on_the_tick_the_map_says_and_files_play_in_order() {
    let show = TestShow::new("tempo");
    show.tone_song("a", "Change", 440.0, 6.0);
    // Two 4/4 bars at 120 BPM (4 s), then 60 BPM: tick 192 is the first at the new tempo.
    let mut smf = Vec::new();
    smf.extend_from_slice(b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0"); // type 0, 1 track, 480 PPQ
    let mut track: Vec<u8> = Vec::new();
    for (delta, bytes) in [
        (0u32, [0x90u8, 60, 100]),
        (480, [0x80, 60, 0]),
        (0, [0x90, 62, 100]),
        (480, [0x80, 62, 0]),
        (0, [0x90, 64, 100]),
        (960, [0x80, 64, 0]),
    ] {
        let mut d = Vec::new();
        let mut v = delta;
        d.push((v & 0x7f) as u8);
        v >>= 7;
        while v > 0 {
            d.insert(0, 0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        track.extend(d);
        track.extend(bytes);
    }
    track.extend([0x00, 0xFF, 0x2F, 0x00]);
    smf.extend_from_slice(b"MTrk");
    smf.extend((track.len() as u32).to_be_bytes());
    smf.extend(track);
    std::fs::write(show.path("songs/a/song.mid"), smf).expect("write mid");
    show.write(
        "songs/a/song.yaml",
        "kind: song\nname: Change\nmidi_playback: { file: song.mid }\ntracks:\n  - name: tone\n    file: tone.wav\ntempo:\n  bpm: 120\n  changes:\n    - { measure: 3, bpm: 60 }\n",
    );
    config(&show);
    let reader = fifo_reader(&show.path("midi.fifo"));
    let (ok, stderr) = play(&show);
    assert!(ok, "{stderr}");
    let bytes = reader.join().expect("reader");
    let ticks: Vec<u64> = bytes
        .iter()
        .filter(|&&(_, b)| b == 0xF8)
        .map(|&(t, _)| t)
        .collect();
    assert!(ticks.len() > 200, "{} ticks", ticks.len());
    let interval = |i: usize| (ticks[i + 1] - ticks[i]) as f64 / 1e6;
    let before = fitted_interval_ns(&ticks[100..=190]) / 1e6;
    let after = fitted_interval_ns(&ticks[192..]) / 1e6;
    assert!(
        (before - 20.833).abs() < 0.5,
        "before the change: {before:.3} ms"
    );
    assert!((after - 41.667).abs() < 0.8, "after: {after:.3} ms");
    // The change lands on tick 192 (beat 8): the intervals just before it are 120 BPM ones,
    // from it on 60 BPM ones. Medians of eight, so one scheduling spike cannot decide it.
    let median = |from: usize| {
        let mut v: Vec<f64> = (from..from + 8).map(interval).collect();
        v.sort_by(f64::total_cmp);
        v[4]
    };
    assert!(
        (median(184) - 20.833).abs() < 2.0,
        "ticks 184-192: {:.2} ms",
        median(184)
    );
    assert!(
        (median(192) - 41.667).abs() < 2.0,
        "ticks 192-200: {:.2} ms",
        median(192)
    );
    // Tick 192 itself is 8 beats at 120 BPM after tick 0: 4 s. Each is where its beat's
    // ticks put it, so that one late arrival cannot move it.
    let start = fitted_first_tick_ns(&ticks, 20.833e6);
    let at_192 = (fitted_first_tick_ns(&ticks[192..], 41.667e6) - start) / 1e6;
    assert!(
        (at_192 - 4000.0).abs() < 15.0,
        "tick 192 at {at_192:.2} ms, expected 4000 ms"
    );

    // Notes: in file order, at 0 s, 0.5 s, 1.0 s (+ offs), relative to the first tick.
    let notes: Vec<(f64, u8, u8)> = bytes
        .windows(3)
        .filter(|w| w[0].1 & 0xF0 == 0x90 || w[0].1 & 0xF0 == 0x80)
        .map(|w| ((w[0].0 as f64 - start) / 1e9, w[0].1, w[1].1))
        .collect();
    let on: Vec<(f64, u8)> = notes
        .iter()
        .filter(|n| n.1 == 0x90)
        .map(|n| (n.0, n.2))
        .collect();
    assert_eq!(
        on.iter().map(|n| n.1).collect::<Vec<_>>(),
        vec![60, 62, 64],
        "{notes:?}"
    );
    for ((t, _), expected) in on.iter().zip([0.0, 0.5, 1.0]) {
        assert!(
            (t - expected).abs() < 0.02,
            "note at {t:.4} s, expected {expected} s ± 20 ms"
        );
    }
    // Stop leaves no hanging note: All Notes Off (CC 123) on the channel used, after Stop.
    let stop = bytes.iter().position(|&(_, b)| b == 0xFC).expect("Stop");
    let after: Vec<u8> = bytes[stop..].iter().map(|&(_, b)| b).collect();
    assert!(
        after.windows(3).any(|w| w == [0xB0, 123, 0]),
        "All Notes Off after Stop: {after:02x?}"
    );
}

#[test]
fn clock_only_rehearsal_measures_the_clock_alone() {
    let dir = TestShow::new("clockonly");
    let fifo = dir.path("clock.fifo");
    let reader = fifo_reader(&fifo);
    let output = Command::new(env!("CARGO_BIN_EXE_backline"))
        .args([
            "rehearse",
            "--clock-only",
            "--bpm",
            "300",
            "--duration",
            "3s",
            "--midi-out",
        ])
        .arg(&fifo)
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = reader.join().expect("reader");
    let ticks = bytes.iter().filter(|&&(_, b)| b == 0xF8).count();
    assert!(ticks.abs_diff(360) <= 1, "3 s at 300 BPM: {ticks} ticks");
    assert!(
        stdout.contains("beat clock lateness") && stdout.contains("clock p99"),
        "{stdout}"
    );
}

#[test]
fn persist_tempo_keeps_the_clock_running_while_stopped() {
    let stalls = common::StallWatch::start();
    let (_show, reader, ui) = play_in_terminal("persist", 20.0, "  persist_tempo: true\n");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    ui.send(b" "); // stop: Stop, but the clock runs on at 120 BPM
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ui.send(b" "); // play from the top: Start
    std::thread::sleep(std::time::Duration::from_millis(500));
    let bytes = quit(ui, reader);
    let stop = bytes
        .iter()
        .position(|&(_, b)| b == 0xFC)
        .expect("Stop on stop");
    let restart = stop
        + bytes[stop..]
            .iter()
            .position(|&(_, b)| b == 0xFA)
            .expect("Start on play");
    let free: Vec<u64> = bytes[stop..restart]
        .iter()
        .filter(|&&(_, b)| b == 0xF8)
        .map(|&(t, _)| t)
        .collect();
    assert!(
        free.len() >= 50,
        "ticks while stopped for 1.5 s at 120 BPM: {}",
        free.len()
    );
    let mean = fitted_interval_ns(&free) / 1e6;
    assert!(
        (mean - 20.833).abs() < 0.5,
        "free-running at the last tempo: {mean:.3} ms"
    );
    // No burst: no two ticks around the stop closer than a quarter of an interval, nor
    // further apart than two, unless a machine stall (which delays this reader and the clock
    // alike, and after which the clock sends its overdue ticks) came within a tick of them.
    let stalls = stalls.stalls();
    let stalled = |from: u64, to: u64| stalls.iter().any(|&(a, b)| a < to && b + 45_000_000 > from);
    let around: Vec<u64> = bytes[stop.saturating_sub(20)..(stop + 20).min(bytes.len())]
        .iter()
        .filter(|&&(_, b)| b == 0xF8)
        .map(|&(t, _)| t)
        .collect();
    for pair in around.windows(2) {
        let gap_ms = (pair[1] - pair[0]) as f64 / 1e6;
        assert!(
            (gap_ms > 1.0 && gap_ms < 45.0) || stalled(pair[0], pair[1]),
            "tick spacing at the stop: {gap_ms:.2} ms (machine stalls: {stalls:?})"
        );
    }
}

#[test]
fn resume_from_a_position_sends_song_position_and_continue() {
    let (_show, reader, ui) = play_in_terminal("resume", 20.0, "");
    std::thread::sleep(std::time::Duration::from_millis(2000));
    ui.send(b"r"); // pause where the song is
    std::thread::sleep(std::time::Duration::from_millis(700));
    ui.send(b"r"); // resume from there
    std::thread::sleep(std::time::Duration::from_millis(700));
    let bytes: Vec<u8> = quit(ui, reader).iter().map(|&(_, b)| b).collect();
    let stop = bytes
        .iter()
        .position(|&b| b == 0xFC)
        .expect("Stop on pause");
    let ticks_before = bytes[..stop].iter().filter(|&&b| b == 0xF8).count();
    let spp = bytes[stop..]
        .iter()
        .position(|&b| b == 0xF2)
        .map(|i| i + stop)
        .expect("SPP on resume");
    assert_eq!(
        bytes.get(spp + 3),
        Some(&0xFB),
        "Continue right after the SPP: {:02x?}",
        &bytes[spp..]
    );
    let sixteenths = usize::from(bytes[spp + 1]) | usize::from(bytes[spp + 2]) << 7;
    // The song stood where the clock stopped: ticks_before / 6 sixteenths (6 ticks each), and
    // it resumes at the next sixteenth.
    let paused_at = ticks_before as f64 / 6.0;
    assert!(
        sixteenths as f64 >= paused_at - 0.5 && (sixteenths as f64) <= paused_at + 2.0,
        "SPP {sixteenths} sixteenths, paused after {ticks_before} ticks"
    );
    assert!(!bytes[stop..spp].contains(&0xFA), "a resume is not a Start");
    let after = bytes[spp..].iter().filter(|&&b| b == 0xF8).count();
    assert!(
        after > 20,
        "the clock runs on after the resume: {after} ticks"
    );
}

#[test]
fn a_seek_sends_the_song_position_of_its_target() {
    let (_show, reader, ui) = play_in_terminal("seek", 30.0, "");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    ui.send(b"]"); // 10 s forward
    assert!(
        ui.wait_for_output("0:1", std::time::Duration::from_secs(5)),
        "the position jumps: {:?}",
        ui.output_so_far()
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    let bytes: Vec<u8> = quit(ui, reader).iter().map(|&(_, b)| b).collect();
    let ticks_before = bytes
        .iter()
        .take_while(|&&b| b != 0xFC)
        .filter(|&&b| b == 0xF8)
        .count();
    let spp = bytes
        .iter()
        .position(|&b| b == 0xF2)
        .expect("SPP after the seek");
    assert_eq!(
        bytes.get(spp + 3),
        Some(&0xFB),
        "Continue after the SPP: {:02x?}",
        &bytes[spp..]
    );
    let sixteenths = usize::from(bytes[spp + 1]) | usize::from(bytes[spp + 2]) << 7;
    // 10 s after where it was: (ticks / 6) sixteenths + 10 s × 8 sixteenths per second.
    let expected = ticks_before as f64 / 6.0 + 80.0;
    assert!(
        (sixteenths as f64 - expected).abs() <= 3.0,
        "SPP {sixteenths} sixteenths, expected about {expected:.1}"
    );
    assert!(bytes[..spp].contains(&0xFC), "the old position stops first");
}

//! A lost audio device, for real: the JACK dummy server is killed mid-song and a new one
//! with the same name comes back a second later. The real binary must keep running, report
//! the loss once, reconnect, and play again within 2 s of the server being up — where the
//! song would have been (the default) or from its start (`audio.on_reconnect: restart`) —
//! on a SCHED_FIFO thread again when it can.
//!
//! The song is a DC ramp: every sample says where in the song it is, so a recording tells
//! the song position exactly.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixtures::TestShow;
use common::now_ns;
use common::{unique_client_name, wait_until, JackServer, Player, Recorder, Recording};

const RATE: u32 = 48_000;
const PERIOD: u32 = 256;
/// The song's length: long enough that it never ends during a test.
const SONG_SECONDS: f64 = 40.0;
/// Ramp value at frame 0 and its rise over the song.
const RAMP_START: f64 = 0.1;
const RAMP_RISE: f64 = 0.8;

/// A DC ramp from `start` rising by `rise` over `seconds`, as 16-bit samples.
fn ramp(start: f64, rise: f64, seconds: f64) -> Vec<i16> {
    let frames = (seconds * f64::from(RATE)) as usize;
    (0..frames)
        .map(|n| {
            let v = start + rise * n as f64 / frames as f64;
            (v * 32767.0).round() as i16
        })
        .collect()
}

fn ramp_show(tag: &str, extra_audio: &str) -> TestShow {
    let show = TestShow::new(tag);
    show.wav_i16(
        "songs/1/ramp.wav",
        RATE,
        &[ramp(RAMP_START, RAMP_RISE, SONG_SECONDS)],
    );
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: Ramp\ntracks:\n  - name: ramp\n    file: ramp.wav\ntempo: { bpm: 120 }\n",
    );
    show.write(
        "backline.yaml",
        &format!(
            "songs: songs\naudio:\n  device: jack\n{extra_audio}  track_mappings:\n    ramp: [1]\nmidi:\n  outputs:\n    - name: clock\n      path: {}\n",
            show.path("clock.fifo").display()
        ),
    );
    show
}

/// Song position in seconds that a recorded sample says.
fn position_of(sample: f32) -> f64 {
    position_on(sample, RAMP_START, RAMP_RISE, SONG_SECONDS)
}

/// Position in seconds that `sample` says on a [`ramp`] of these parameters.
fn position_on(sample: f32, start: f64, rise: f64, seconds: f64) -> f64 {
    let v = f64::from((sample * 32768.0).round()) / 32767.0;
    (v - start) / rise * seconds
}

/// JACK microseconds (CLOCK_MONOTONIC) of recorded sample `index`, from the time of the
/// cycle it arrived in.
fn usecs_of(rec: &Recording, index: usize) -> f64 {
    rec.usecs_at(index).expect("recorded something")
}

/// backline on the test server as JACK client `client`.
fn spawn(show: &TestShow, server: &JackServer, client: &str) -> Player {
    spawn_with(show, server, client, &[])
}

fn spawn_with(
    show: &TestShow,
    server: &JackServer,
    client: &str,
    envs: &[(&str, String)],
) -> Player {
    let mut all = server.envs();
    all.extend(envs.iter().cloned());
    Player::spawn(&show.root, &["--output", &format!("jack:{client}")], &all)
}

/// Threads of `pid` named `name`, with their scheduling policy (field 41 of their stat).
fn threads_named(pid: u32, name: &str) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command (in parentheses) start at field 3.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let policy = after
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or(u32::MAX);
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        found.push((tid, policy));
    }
    found
}

struct Outcome {
    /// Seconds from the new server accepting clients to the first audio it played; 0 when
    /// the test's recorder had to be restarted (not measured in that run).
    recovery_s: f64,
    /// Song position of the first sample after the outage, seconds.
    resumed_at_s: f64,
    /// Where the song would have been at that moment, had the device never gone.
    would_have_been_s: f64,
    log: String,
    /// Timing Clock arrival times on the MIDI output, and every byte.
    ticks: Vec<u64>,
    midi: Vec<(u64, u8)>,
    /// Machine stalls seen while it ran.
    stalls: common::StallWatch,
    /// Where the audio device itself ran late (see `Recording::late_cycles`).
    audio_late: Vec<(u64, u64)>,
}

/// Plays, kills the server after 3 s, brings it back 1 s later, records 3 s more.
fn lose_and_recover(tag: &str, extra_audio: &str) -> Outcome {
    let stalls = common::StallWatch::start();
    let show = ramp_show(tag, extra_audio);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let midi = fifo_reader(&show.path("clock.fifo"), None, stop.clone());
    let server = JackServer::start(RATE, PERIOD);
    let client = unique_client_name("backline");
    let ports = format!("{client}:out_");
    let recorder = Recorder::start(&server, &ports, 1);
    let mut player = spawn(&show, &server, &client);
    assert!(
        recorder.wait_connected(Duration::from_secs(20)),
        "{}",
        player.text()
    );
    let playing = recorder.frames_so_far() + 3 * u64::from(RATE);
    assert!(wait_until(Duration::from_secs(15), || recorder
        .frames_so_far()
        >= playing));
    let (before, probe) = kill_the_server(&server, recorder, &player);
    let samples = &before.channels[0];
    let song_start_us = usecs_of(&before, probe) - position_of(samples[probe]) * 1e6;

    std::thread::sleep(Duration::from_secs(1));
    assert!(player.alive(), "still running: {}", player.text());
    server.restart();
    let up_us = jack::get_time() as f64;
    // The time-to-audio figure cannot be measured by a recorder that had to be restarted.
    let (recorder, attempts) = record_after_restart(&server, &ports);
    assert!(
        recorder.wait_connected(Duration::from_secs(10)),
        "the player's ports come back: {}",
        player.text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || player
            .text()
            .contains("audio device back")),
        "the recovery is reported: {}",
        player.text()
    );
    let recorded = recorder.frames_so_far() + 2 * u64::from(RATE);
    assert!(
        wait_until(Duration::from_secs(10), || recorder.frames_so_far()
            >= recorded),
        "the new server runs: {}\n--- jackd ---\n{}",
        player.text(),
        server.log()
    );
    if unsafe { libc::geteuid() } == 0 {
        let audio = threads_named(player.pid(), "backline-audio");
        assert!(
            audio.iter().any(|&(_, policy)| policy == 1),
            "the new audio thread runs SCHED_FIFO: {audio:?}\n{}",
            player.text()
        );
    }
    let after = recorder.stop();
    let audio_late = [before.late_cycles(), after.late_cycles()].concat();
    let samples = &after.channels[0];
    let first = samples
        .iter()
        .position(|s| s.abs() > 0.05)
        .unwrap_or_else(|| panic!("audio after the reconnect: {}", player.text()));
    let heard_us = usecs_of(&after, first);
    // Skip the ramp's first samples after the gain: take one a few ms in.
    let settled = (first + 480).min(samples.len() - 1);
    let resumed_at_s = position_of(samples[settled]) - 480.0 / f64::from(RATE);
    let would_have_been_s = (heard_us - song_start_us) / 1e6;
    let (status, log) = player.terminate();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (midi, _) = midi.join().expect("MIDI reader");
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(
        log.matches("audio device lost").count(),
        1,
        "the loss is logged once: {log}"
    );
    assert_eq!(
        log.matches("audio device back:").count(),
        1,
        "the recovery is logged once: {log}"
    );
    Outcome {
        recovery_s: if attempts == 1 {
            (heard_us - up_us) / 1e6
        } else {
            0.0
        },
        resumed_at_s,
        would_have_been_s,
        log,
        ticks: ticks(&midi),
        midi,
        stalls,
        audio_late,
    }
}

/// Most of the ticks' span that late audio cycles may take out of the gap check: beyond it
/// the machine is too loaded for the check to mean anything, and the test says so rather
/// than excuse every gap.
const MAX_LATE_SHARE: f64 = 0.3;

/// How long, in ns, the audio device ran late (`late`, see [`Recording::late_cycles`])
/// between `first` and `last` (CLOCK_MONOTONIC ns).
fn late_ns_within(late: &[(u64, u64)], first: u64, last: u64) -> u64 {
    common::merge_intervals(late.iter().copied())
        .iter()
        .map(|&(a, b)| b.min(last).saturating_sub(a.max(first)))
        .sum()
}

/// Fails when the audio device ran late for more than [`MAX_LATE_SHARE`] of the ticks' span.
fn assert_late_share_is_bounded(late: &[(u64, u64)], ticks: &[u64]) {
    let (Some(&first), Some(&last)) = (ticks.first(), ticks.last()) else {
        return;
    };
    let late_ns = late_ns_within(late, first, last);
    let share = late_ns as f64 / (last - first).max(1) as f64;
    eprintln!(
        "audio device late for {:.1} ms of {:.1} s ({:.1} %)",
        late_ns as f64 / 1e6,
        (last - first) as f64 / 1e9,
        share * 100.0
    );
    assert!(
        share < MAX_LATE_SHARE,
        "the audio device ran late for {:.1} % of the time: too loaded to judge the clock's gaps",
        share * 100.0
    );
}

/// Kills the server, checks that the player reports the loss, and returns what the recorder
/// heard with the sample to measure from: 100 ms before the loss. Near the loss, so that
/// periods the player missed earlier (a loaded machine's xruns, which hold the song back like
/// any player's) are not counted against it: a resume is measured across the outage alone.
fn kill_the_server(server: &JackServer, recorder: Recorder, player: &Player) -> (Recording, usize) {
    server.kill();
    let before = recorder.stop();
    assert!(
        wait_until(Duration::from_secs(10), || player
            .text()
            .contains("audio device lost")),
        "the loss is reported: {}",
        player.text()
    );
    let probe = before.channels[0]
        .iter()
        .rposition(|s| s.abs() > 0.05)
        .expect("audio before the loss")
        .saturating_sub(RATE as usize / 10);
    (before, probe)
}

/// A recorder on the restarted server, and how many it took. About one run in eight on a
/// loaded machine, the test's own recorder client stalls on the restarted server (libjack
/// state of the old server in the test process; jackd logs "recorder … was not finished").
/// backline is not involved: it logs its recovery in those runs too. Then a new recorder is
/// started (three at most).
fn record_after_restart(server: &JackServer, ports: &str) -> (Recorder, u32) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let recorder = Recorder::start(server, ports, 1);
        let runs = recorder.wait_connected(Duration::from_secs(10)) && {
            let target = recorder.frames_so_far() + u64::from(RATE);
            wait_until(Duration::from_secs(5), || {
                recorder.frames_so_far() >= target
            })
        };
        if runs || attempts == 3 {
            return (recorder, attempts);
        }
        eprintln!("the test's recorder stalled on the restarted server; starting another");
        let _ = recorder.stop();
    }
}

/// Shortest and longest interval between Timing Clocks, in ms.
fn tick_intervals(ticks: &[u64]) -> (f64, f64) {
    let intervals = ticks.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6);
    let shortest = intervals.clone().fold(f64::MAX, f64::min);
    let longest = intervals.fold(0.0, f64::max);
    (shortest, longest)
}

/// The densest 500 ms of tick arrivals: `(ticks in it, most allowed)`. Arrival times come
/// from the test's own reader, which a loaded machine can stall for tens of ms: the bytes
/// written meanwhile are then read at once, so one short interval proves nothing. A burst
/// (the clock catching up an outage) puts far more than 24 ticks of 120 BPM into half a
/// second. Allowed: 24 plus 4 for reader delays of up to ~80 ms, plus one per 20.83 ms of
/// machine stall (`stalls`, [`common::StallWatch`]) within half a second of the window,
/// whose overdue ticks the clock rightly sends when the machine runs again.
fn densest_half_second(ticks: &[u64], stalls: &[(u64, u64)]) -> (usize, usize) {
    const HALF_SECOND: u64 = 500_000_000;
    let stalls = common::merge_intervals(stalls.iter().copied());
    ticks
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let count = ticks[i..]
                .iter()
                .take_while(|&&u| u - t < HALF_SECOND)
                .count();
            let stalled_ns: u64 = stalls
                .iter()
                .map(|&(a, b)| {
                    b.min(t + HALF_SECOND)
                        .saturating_sub(a.max(t.saturating_sub(HALF_SECOND)))
                })
                .sum();
            let allowed = 28 + (stalled_ns as f64 / (1e9 / 48.0)).ceil() as usize;
            (count, allowed)
        })
        .max_by_key(|&(count, allowed)| count as i64 - allowed as i64)
        .unwrap_or((0, 28))
}

#[test]
fn a_server_that_comes_back_resumes_the_song_where_it_would_have_been() {
    let outcome = lose_and_recover("reconnect-resume", "");
    eprintln!(
        "resume: audio back {:.3} s after the server; song at {:.3} s, would have been at {:.3} s",
        outcome.recovery_s, outcome.resumed_at_s, outcome.would_have_been_s
    );
    assert!(
        outcome.recovery_s < 2.0,
        "audio within 2 s of the server: {:.3} s\n{}",
        outcome.recovery_s,
        outcome.log
    );
    assert!(
        (outcome.resumed_at_s - outcome.would_have_been_s).abs() < 0.5,
        "resumed at {:.3} s, would have been at {:.3} s\n{}",
        outcome.resumed_at_s,
        outcome.would_have_been_s,
        outcome.log
    );
    assert!(
        outcome.log.contains("where it would have been"),
        "{}",
        outcome.log
    );
    // The beat clock runs on through the outage (the song goes on where it would have been)
    // and across the reconnect: no burst, no gap, no restart.
    let (shortest, longest) = tick_intervals(&outcome.ticks);
    eprintln!(
        "resume: tick intervals {shortest:.1}..{longest:.1} ms (nominal 20.8), {} bytes",
        outcome.midi.len()
    );
    assert!(
        outcome.ticks.len() > 150,
        "{} ticks\n{}",
        outcome.ticks.len(),
        outcome.log
    );
    let (densest, allowed) = densest_half_second(&outcome.ticks, &outcome.stalls.stalls());
    assert!(
        densest <= allowed,
        "no burst of ticks: {densest} in 500 ms, {allowed} allowed (shortest interval {shortest:.1} ms)"
    );
    // A stall of the whole machine (which stops the test's reader too) is not a gap in the
    // clock, nor is a cycle the audio device ran late (the clock follows the audio): both
    // are taken out of the interval they fall in. A clock that stopped through the outage
    // would leave a gap of more than a second.
    let (own_longest, _) = outcome
        .stalls
        .longest_gap_ms_excluding(&outcome.ticks, &outcome.audio_late);
    assert_late_share_is_bounded(&outcome.audio_late, &outcome.ticks);
    assert!(
        own_longest < 100.0,
        "no gap in the clock: {own_longest:.1} ms without machine stalls ({longest:.1} ms as measured)"
    );
    let starts = outcome.midi.iter().filter(|&&(_, b)| b == 0xFA).count();
    assert_eq!(starts, 1, "one Start: the clock never restarted");
}

#[test]
fn with_on_reconnect_restart_the_song_starts_again() {
    let outcome = lose_and_recover("reconnect-restart", "  on_reconnect: restart\n");
    eprintln!(
        "restart: audio back {:.3} s after the server; song at {:.3} s",
        outcome.recovery_s, outcome.resumed_at_s
    );
    assert!(
        outcome.recovery_s < 2.0,
        "audio within 2 s of the server: {:.3} s\n{}",
        outcome.recovery_s,
        outcome.log
    );
    assert!(
        outcome.resumed_at_s < 0.5,
        "restarted from the top: at {:.3} s\n{}",
        outcome.resumed_at_s,
        outcome.log
    );
    assert!(outcome.log.contains("from its start"), "{}", outcome.log);
    // The clock stops with the song at the loss and starts again with it: Start, Stop,
    // Start, and no burst of ticks anywhere.
    let transport: Vec<u8> = outcome
        .midi
        .iter()
        .map(|&(_, b)| b)
        .filter(|&b| b == 0xFA || b == 0xFC || b == 0xFB)
        .collect();
    assert_eq!(
        &transport[..3.min(transport.len())],
        &[0xFA, 0xFC, 0xFA],
        "{transport:02X?}"
    );
    let (shortest, _) = tick_intervals(&outcome.ticks);
    let (densest, allowed) = densest_half_second(&outcome.ticks, &outcome.stalls.stalls());
    eprintln!("restart: shortest tick interval {shortest:.1} ms");
    assert!(
        densest <= allowed,
        "no burst of ticks: {densest} in 500 ms, {allowed} allowed (shortest interval {shortest:.1} ms)"
    );
}

/// Timestamped bytes, and when the reader came back (if it went away).
type Captured = (Vec<(u64, u8)>, Option<u64>);

/// Reads a FIFO non-blocking, timestamping every byte, until `stop`; with `gone`, the reader
/// goes away for that window, counted from the first byte it read (closes the FIFO), and
/// then opens it again. Returns the bytes and when the FIFO was opened again.
fn fifo_reader(
    path: &std::path::Path,
    gone: Option<(Duration, Duration)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Captured> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::Ordering;
    let c_path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: c_path is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
    let open = {
        let path = path.to_path_buf();
        move || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .expect("open fifo")
        }
    };
    let mut file = Some(open());
    std::thread::spawn(move || {
        // Just below the clock (80), like the jitter bench's reader: a gap in the arrivals is
        // then the player's (or a machine stall, see `StallWatch`), never this thread waiting
        // behind the rest of the test run. Normal priority when not permitted.
        let param = libc::sched_param { sched_priority: 79 };
        // SAFETY: a valid sched_param for the calling thread (pid 0).
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        let mut bytes = Vec::new();
        let mut reopened = None;
        let mut buffer = [0u8; 256];
        let mut first_byte: Option<Instant> = None;
        loop {
            if let (Some((close_at, reopen_at)), Some(first_byte)) = (gone, first_byte) {
                let elapsed = first_byte.elapsed();
                if file.is_some()
                    && reopened.is_none()
                    && elapsed >= close_at
                    && elapsed < reopen_at
                {
                    file = None;
                } else if file.is_none() && elapsed >= reopen_at {
                    file = Some(open());
                    reopened = Some(now_ns());
                }
            }
            let read = file.as_mut().map(|f| f.read(&mut buffer));
            match read {
                Some(Ok(n)) if n > 0 => {
                    first_byte.get_or_insert_with(Instant::now);
                    let t = now_ns();
                    bytes.extend(buffer[..n].iter().map(|&b| (t, b)));
                }
                _ => {
                    if stop.load(Ordering::Acquire) {
                        return (bytes, reopened);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    })
}

/// Arrival times of Timing Clock bytes.
fn ticks(bytes: &[(u64, u8)]) -> Vec<u64> {
    bytes
        .iter()
        .filter(|&&(_, b)| b == 0xF8)
        .map(|&(t, _)| t)
        .collect()
}

#[test]
fn a_midi_output_whose_reader_comes_back_gets_the_clock_again_without_disturbing_the_rest() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stalls = common::StallWatch::start();
    let show = TestShow::new("midi-reconnect");
    show.tone_song("a", "Long", 440.0, 20.0);
    show.write(
        "songs/a/song.yaml",
        "kind: song\nname: Long\ntracks:\n  - name: tone\n    file: tone.wav\ntempo: { bpm: 120 }\n",
    );
    show.write(
        "backline.yaml",
        &format!(
            "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    tone: [1]\nmidi:\n  outputs:\n    - name: flaky\n      path: {}\n    - name: steady\n      path: {}\n",
            show.path("flaky.fifo").display(),
            show.path("steady.fifo").display()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    // The flaky reader goes away 3 s into the song and comes back a second later.
    let flaky = fifo_reader(
        &show.path("flaky.fifo"),
        Some((Duration::from_secs(3), Duration::from_secs(4))),
        stop.clone(),
    );
    let steady = fifo_reader(&show.path("steady.fifo"), None, stop.clone());
    let server = JackServer::start(RATE, PERIOD);
    let client = unique_client_name("backline");
    let recorder = Recorder::start(&server, &format!("{client}:out_"), 1);
    let player = spawn(&show, &server, &client);
    assert!(
        recorder.wait_connected(Duration::from_secs(20)),
        "{}",
        player.text()
    );
    assert!(
        wait_until(Duration::from_secs(20), || player
            .text()
            .contains("connected (")
            && player.text().contains("MIDI output `flaky` lost")),
        "the flaky output is lost: {}",
        player.text()
    );
    std::thread::sleep(Duration::from_secs(4));
    let (status, log) = player.terminate();
    stop.store(true, Ordering::Release);
    let recording = recorder.stop();
    let (flaky, reopened) = flaky.join().expect("flaky reader");
    let (steady, _) = steady.join().expect("steady reader");
    assert!(status.success(), "exit {status:?}: {log}");
    let reopened = reopened.expect("the flaky reader came back");

    // The flaky output gets the clock again, soon after its reader is back.
    let flaky_ticks = ticks(&flaky);
    let first_again = flaky_ticks
        .iter()
        .find(|&&t| t >= reopened)
        .unwrap_or_else(|| panic!("ticks after the reader came back: {log}"));
    let back_after = (first_again - reopened) as f64 / 1e9;
    eprintln!("MIDI output back {back_after:.3} s after its reader");
    assert!(back_after < 2.0, "{back_after:.3} s\n{log}");
    assert_eq!(
        log.matches("MIDI output `flaky` lost").count(),
        1,
        "lost once: {log}"
    );
    assert!(!log.contains("MIDI output `steady` lost"), "{log}");

    // The steady output never missed a tick (120 BPM: one every 20.8 ms) while the song
    // played, the other's loss notwithstanding.
    let steady_ticks = ticks(&steady);
    let (Some(&first), Some(&last)) = (steady_ticks.first(), steady_ticks.last()) else {
        panic!("no ticks on the steady output: {log}");
    };
    let closed = flaky_ticks
        .iter()
        .rev()
        .find(|&&t| t < reopened)
        .copied()
        .unwrap_or(reopened);
    assert!(
        first < closed && last > reopened + 2_000_000_000,
        "the steady output ticked from before the other's loss until 2 s after its return: \
         ticks for {:.3} s, loss at {:.3} s, return at {:.3} s",
        (last - first) as f64 / 1e9,
        (closed - first) as f64 / 1e9,
        (reopened - first) as f64 / 1e9
    );
    // As many ticks as the span holds (one per 20.83 ms) once the time the audio device ran
    // late is taken out (the clock follows the audio, as it must; the dummy driver drops
    // that time), less 10 % for scheduling.
    let audio_late = recording.late_cycles();
    assert_late_share_is_bounded(&audio_late, &steady_ticks);
    let late_ns = late_ns_within(&audio_late, first, last);
    let expected = (last - first).saturating_sub(late_ns) as f64 / (1e9 / 48.0);
    assert!(
        steady_ticks.len() as f64 >= 0.9 * expected,
        "{} ticks over {:.3} s ({:.3} s of it the audio ran late), {expected:.0} expected",
        steady_ticks.len(),
        (last - first) as f64 / 1e9,
        late_ns as f64 / 1e9
    );
    // Machine stalls (which stop the test's reader too) and cycles the audio device ran late
    // (which the clock follows) are taken out of the gaps.
    let (worst, measured) = stalls.longest_gap_ms_excluding(&steady_ticks, &audio_late);
    eprintln!("steady output: worst tick interval {worst:.1} ms ({measured:.1} ms as measured)");
    assert!(
        worst < 100.0,
        "steady ticks kept coming: worst gap {worst:.1} ms without machine stalls ({measured:.1} ms as measured)"
    );

    // Audio played on without a dropout.
    let samples = &recording.channels[0];
    let (start, end) = common::non_silent_span(samples, 0.05).expect("audio");
    let longest = common::fixtures::longest_silence(&samples[start..end]);
    assert!(
        longest < 4 * PERIOD as usize,
        "no dropout in the audio: {longest} silent frames"
    );
}

/// sd_notify datagrams from the player, one line each, with their arrival time.
fn notify_listener(path: &std::path::Path) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind the notify socket");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let now = Instant::now();
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            sink.extend(text.lines().map(|l| (now, l.to_string())));
        }
    });
    lines
}

#[test]
fn systemd_hears_the_loss_and_the_watchdog_keeps_pinging_while_reconnecting() {
    let show = ramp_show("reconnect-notify", "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _midi = fifo_reader(&show.path("clock.fifo"), None, stop.clone());
    let notify = show.path("notify.sock");
    let lines = notify_listener(&notify);
    let seen = |prefix: &str, after: Instant| {
        lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(t, l)| *t >= after && l.starts_with(prefix))
            .map(|(_, l)| l.clone())
            .collect::<Vec<_>>()
    };
    let server = JackServer::start(RATE, PERIOD);
    let client = unique_client_name("backline");
    let player = spawn_with(
        &show,
        &server,
        &client,
        &[
            ("NOTIFY_SOCKET", notify.display().to_string()),
            ("WATCHDOG_USEC", "1000000".to_string()),
        ],
    );
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || !seen("READY=1", start)
            .is_empty()),
        "READY: {}",
        player.text()
    );
    std::thread::sleep(Duration::from_secs(2));
    server.kill();
    let lost = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || seen("STATUS=", lost)
            .iter()
            .any(|l| l.contains("audio device lost, retrying"))),
        "STATUS says so: {:?}\n{}",
        seen("STATUS=", lost),
        player.text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let pings = seen("WATCHDOG=1", lost).len();
    assert!(
        pings >= 3,
        "the watchdog keeps pinging while reconnecting: {pings} pings in {:.1} s\n{}",
        lost.elapsed().as_secs_f64(),
        player.text()
    );
    server.restart();
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || seen("STATUS=playing", back)
            .iter()
            .any(|l| l.contains("Ramp"))),
        "STATUS is back to playing: {:?}\n{}",
        seen("STATUS=", back),
        player.text()
    );
    let (status, log) = player.terminate();
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(!log.contains("not pinging"), "no watchdog complaint: {log}");
}

/// The first song: a 2 s ramp from 0.1 to 0.3; the second: a 40 s ramp from 0.4 to 0.9.
const SHORT_SECONDS: f64 = 2.0;
const SHORT: (f64, f64) = (0.1, 0.2);
const LONG: (f64, f64) = (0.4, 0.5);

#[test]
fn an_outage_across_a_songs_end_resumes_part_way_into_the_next_song() {
    let show = TestShow::new("reconnect-span");
    show.wav_i16(
        "songs/1/ramp.wav",
        RATE,
        &[ramp(SHORT.0, SHORT.1, SHORT_SECONDS)],
    );
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: A short one\ntracks:\n  - name: ramp\n    file: ramp.wav\ntempo: { bpm: 120 }\n",
    );
    show.wav_i16(
        "songs/2/ramp.wav",
        RATE,
        &[ramp(LONG.0, LONG.1, SONG_SECONDS)],
    );
    show.write(
        "songs/2/song.yaml",
        "kind: song\nname: B long one\ntracks:\n  - name: ramp\n    file: ramp.wav\ntempo: { bpm: 120 }\n",
    );
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    ramp: [1]\n",
    );
    let server = JackServer::start(RATE, PERIOD);
    let client = unique_client_name("backline");
    let ports = format!("{client}:out_");
    let recorder = Recorder::start(&server, &ports, 1);
    let player = spawn(&show, &server, &client);
    assert!(
        wait_until(Duration::from_secs(20), || player
            .text()
            .contains("song started: 1/2")),
        "{}",
        player.text()
    );
    // 1.5 s into the 2 s song the server goes, for at least two seconds: well past the
    // song's end, so that starting the next song from its top would be far off.
    std::thread::sleep(Duration::from_millis(1500));
    let (before, probe) = kill_the_server(&server, recorder, &player);
    let samples = &before.channels[0];
    let short_at = position_on(samples[probe], SHORT.0, SHORT.1, SHORT_SECONDS);
    assert!(
        short_at > 0.5 && short_at < SHORT_SECONDS - 0.2,
        "the loss came inside the first song: {short_at:.3} s"
    );
    // When the second song would have started, had the device never gone.
    let long_start_us = usecs_of(&before, probe) + (SHORT_SECONDS - short_at) * 1e6;

    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let (recorder, _) = record_after_restart(&server, &ports);
    assert!(
        recorder.wait_connected(Duration::from_secs(10)),
        "the player's ports come back: {}",
        player.text()
    );
    let recorded = recorder.frames_so_far() + u64::from(RATE);
    assert!(
        wait_until(Duration::from_secs(10), || recorder.frames_so_far()
            >= recorded),
        "the new server runs: {}",
        player.text()
    );
    let after = recorder.stop();
    let samples = &after.channels[0];
    let first = samples
        .iter()
        .position(|s| s.abs() > 0.05)
        .unwrap_or_else(|| panic!("audio after the reconnect: {}", player.text()));
    let settled = (first + 480).min(samples.len() - 1);
    let heard_us = usecs_of(&after, settled);
    let long_at = position_on(samples[settled], LONG.0, LONG.1, SONG_SECONDS);
    let would_have_been = (heard_us - long_start_us) / 1e6;
    let (status, log) = player.terminate();
    eprintln!(
        "span: lost {short_at:.3} s into the 2 s song; the next song resumed at {long_at:.3} s, would have been at {would_have_been:.3} s"
    );
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(
        samples[settled] > (LONG.0 - 0.01) as f32,
        "the second song plays after the outage, not the first: {} ({log})",
        samples[settled]
    );
    assert!(
        would_have_been > 1.0,
        "the outage reached past the first song's end: {would_have_been:.3} s"
    );
    // Tighter than the in-song resume's 0.5 s: the carry itself is what is judged here.
    assert!(
        (long_at - would_have_been).abs() < 0.25,
        "the next song resumed at {long_at:.3} s, would have been at {would_have_been:.3} s\n{log}"
    );
    assert!(log.contains("song started: 2/2"), "{log}");
}

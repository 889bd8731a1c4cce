//! JACK MIDI on a real JACK server (dummy driver): the real binary plays a song whose audio
//! has an impulse exactly on every beat, with a beat clock on a JACK MIDI port of its own
//! client. A recorder client in the test records the audio and the MIDI with absolute JACK
//! frame times; every beat's Timing Clock must land on the frame of that beat's impulse
//! (±1 frame), i.e. at its exact offset inside the cycle, not at frame 0.
//!
//! Audio and MIDI leave the player in the same process cycle and reach the recorder in the
//! same cycle, so no cycle of latency has to be accounted for: the frame times compare
//! directly.

mod common;

use std::process::{Command, Stdio};

use common::fixtures::TestShow;
use common::{unique_client_name, JackServer, MidiCapture, Recorder, Recording};

const RATE: u32 = 48_000;
const PERIOD: u32 = 256;
const BPM: f64 = 120.0;
/// Lead-in before beat 1 (the song's `tempo.start`), in seconds.
const LEAD_IN: f64 = 0.5;
const SONG_SECONDS: f64 = 6.0;
/// Frames per beat and per Timing Clock at 120 BPM, 48 kHz.
const BEAT_FRAMES: i64 = 24_000;
const TICK_FRAMES: i64 = 1_000;

/// Beats in the song after the lead-in.
fn beats() -> usize {
    ((SONG_SECONDS - LEAD_IN) * BPM / 60.0).ceil() as usize
}

/// A mono click track: one full-scale-ish sample on every beat, silence elsewhere.
fn click_track() -> Vec<i16> {
    let mut samples = vec![0i16; (SONG_SECONDS * f64::from(RATE)) as usize];
    for beat in 0..beats() {
        let frame = (LEAD_IN * f64::from(RATE)) as usize + beat * BEAT_FRAMES as usize;
        if let Some(sample) = samples.get_mut(frame) {
            *sample = 30_000;
        }
    }
    samples
}

/// Frame times of the impulses in the recording (first sample of each run above half scale).
fn impulses(rec: &Recording) -> Vec<i64> {
    let out = &rec.channels[0];
    (0..out.len())
        .filter(|&i| out[i] > 0.5 && (i == 0 || out[i - 1] <= 0.5))
        .filter_map(|i| rec.frame_time_at(i))
        .map(i64::from)
        .collect()
}

/// The xrun count from the player's last "done:" line.
fn xruns_reported(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("done:"))
        .filter_map(|l| l.split(" xruns").next()?.rsplit(' ').next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Plays `show` on a fresh dummy server as JACK client `client`, recording its first audio
/// output and its MIDI port `midi_port`; returns the run, its log and the recording.
fn play_recording(
    show: &TestShow,
    client: &str,
    midi_port: &str,
) -> (std::process::Output, String, common::Recording) {
    let server = JackServer::start(RATE, PERIOD);
    let recorder = Recorder::start_with_midi(
        &server,
        &format!("{client}:out_"),
        1,
        Some(&format!("{client}:{midi_port}")),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_backline"))
        .arg("play")
        .arg(&show.root)
        .args(["--output", &format!("jack:{client}")])
        .envs(server.envs())
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Let the last cycles reach the recorder.
    std::thread::sleep(std::time::Duration::from_millis(200));
    (output, stderr, recorder.stop())
}

#[test]
fn every_beat_tick_lands_on_the_frame_of_its_audio_impulse() {
    let show = TestShow::new("jack-midi");
    show.wav_i16("songs/click/click.wav", RATE, &[click_track()]);
    show.write(
        "songs/click/song.yaml",
        &format!(
            "kind: song\nname: Click\ntracks:\n  - name: click\n    file: click.wav\ntempo: {{ bpm: {BPM}, start: {LEAD_IN} }}\n"
        ),
    );
    let client = unique_client_name("backline");
    // The client part names our own client (`--output jack:NAME`): the port is ours.
    show.write(
        "backline.yaml",
        &format!(
            "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    click: [1]\nmidi:\n  outputs:\n    - {{ name: clock, jack: \"{client}:midi_out\", clock: true, midi_file: false }}\n"
        ),
    );
    let (output, stderr, rec) = play_recording(&show, &client, "midi_out");
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("set finished: 1 songs played, 0 skipped"),
        "{stderr}"
    );
    // Cycles lost to a VM scheduling spike (the recorder's or the player's) can lose beats;
    // each such disturbance is allowed to cost one beat of the comparison.
    let disturbances = rec.gaps.len() + xruns_reported(&stderr) + rec.xruns as usize;

    let midi: Vec<MidiCapture> = rec.midi.clone();
    let start = midi
        .iter()
        .position(|e| e.bytes() == [0xFA])
        .unwrap_or_else(|| {
            panic!(
                "Start (0xFA) arrives: {:?}\n{stderr}",
                &midi[..midi.len().min(10)]
            )
        });
    let stop = midi
        .iter()
        .rposition(|e| e.bytes() == [0xFC])
        .unwrap_or_else(|| panic!("Stop (0xFC) arrives at the end\n{stderr}"));
    assert!(start < stop, "Start before Stop");
    let ticks: Vec<i64> = midi[start..stop]
        .iter()
        .filter(|e| e.bytes() == [0xF8])
        .map(|e| i64::from(e.frame_time))
        .collect();
    assert!(
        midi[start..stop]
            .iter()
            .all(|e| matches!(e.bytes(), [0xFA] | [0xF8])),
        "only Start and Timing Clock between Start and Stop"
    );
    // Sample-accurate, not at frame 0: the ticks fall at many different cycle offsets.
    let offsets: std::collections::BTreeSet<u32> = midi[start..stop]
        .iter()
        .filter(|e| e.bytes() == [0xF8])
        .map(|e| e.offset)
        .collect();
    assert!(
        offsets.len() > 20,
        "ticks are placed inside the cycle, not at its start: offsets {offsets:?}"
    );

    // Tick count: the song plays (6 − 0.5) s after beat 1 at 48 ticks per second.
    let expected_ticks = ((SONG_SECONDS - LEAD_IN) * BPM / 60.0 * 24.0) as usize;
    assert!(
        ticks.len().abs_diff(expected_ticks) <= 2 + disturbances * 6,
        "{} ticks, expected {expected_ticks} (±2, {disturbances} disturbances)\n{stderr}",
        ticks.len()
    );
    // Tempo: 20.833 ms = exactly 1000 frames between ticks, to the frame.
    let intervals: Vec<i64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
    let exact = intervals
        .iter()
        .filter(|&&d| (d - TICK_FRAMES).abs() <= 1)
        .count();
    assert!(
        exact + 2 * disturbances + 1 >= intervals.len(),
        "tick intervals are {TICK_FRAMES} ± 1 frames: {} of {} ({disturbances} disturbances); others: {:?}",
        exact,
        intervals.len(),
        intervals
            .iter()
            .filter(|&&d| (d - TICK_FRAMES).abs() > 1)
            .collect::<Vec<_>>()
    );

    // Every beat: tick 24·b on the frame of impulse b.
    let clicks = impulses(&rec);
    assert!(
        clicks.len().abs_diff(beats()) <= disturbances,
        "{} impulses recorded, the song has {} beats",
        clicks.len(),
        beats()
    );
    let mut misses = Vec::new();
    let mut matched = 0;
    for (beat, &click) in clicks.iter().enumerate() {
        let strict = ticks.get(beat * 24).copied();
        let nearest = ticks.iter().copied().min_by_key(|&t| (t - click).abs());
        let ok = match (strict, nearest) {
            (Some(tick), _) if (tick - click).abs() <= 1 => true,
            // After a lost cycle the count may be off: still the nearest tick must be there.
            (_, Some(tick)) if disturbances > 0 => (tick - click).abs() <= 1,
            _ => false,
        };
        if ok {
            matched += 1;
        } else {
            misses.push((beat, click, strict, nearest));
        }
    }
    assert!(
        misses.len() <= disturbances,
        "beats whose tick is not within ±1 frame of the impulse (beat, impulse frame, tick 24·b, nearest tick): {misses:?}\n{disturbances} disturbances, gaps {:?}\n{stderr}",
        rec.gaps
    );
    assert!(matched >= beats() - disturbances.min(beats()));
    let worst = clicks
        .iter()
        .enumerate()
        .filter_map(|(beat, &click)| ticks.get(beat * 24).map(|&t| t - click))
        .max_by_key(|d| d.abs());
    eprintln!(
        "{matched}/{} beats on their impulse (worst tick 24·b − impulse: {worst:?} frames), {} ticks, {} distinct cycle offsets, {disturbances} disturbances",
        beats(),
        ticks.len(),
        offsets.len()
    );
    // No JACK MIDI message of the song was late (queued after its cycle began).
    if disturbances == 0 {
        assert!(
            !stderr.contains("messages late"),
            "no late JACK MIDI messages:\n{stderr}"
        );
    }
}

#[test]
fn persist_tempo_keeps_jack_ticks_running_between_songs_without_a_gap() {
    let show = TestShow::new("jack-persist");
    for (dir, name) in [("a", "A"), ("b", "B")] {
        show.wav_i16(
            &format!("songs/{dir}/click.wav"),
            RATE,
            &[vec![0i16; (1.5 * f64::from(RATE)) as usize]],
        );
        show.write(
            &format!("songs/{dir}/song.yaml"),
            &format!(
                "kind: song\nname: {name}\ntracks:\n  - name: click\n    file: click.wav\ntempo: {{ bpm: {BPM} }}\n"
            ),
        );
    }
    let client = unique_client_name("backline");
    // The port named by our client's default name `backline` is ours too.
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    click: [1]\nmidi:\n  persist_tempo: true\n  outputs:\n    - { name: clock, jack: \"backline:clock\", clock: true, midi_file: false }\n",
    );
    let (output, stderr, rec) = play_recording(&show, &client, "clock");
    assert!(output.status.success(), "{stderr}");
    let disturbances = rec.gaps.len() + xruns_reported(&stderr) + rec.xruns as usize;
    let starts: Vec<usize> = (0..rec.midi.len())
        .filter(|&i| rec.midi[i].bytes() == [0xFA])
        .collect();
    assert_eq!(starts.len(), 2, "one Start per song\n{stderr}");
    let between = &rec.midi[starts[0]..starts[1]];
    assert!(
        between.iter().any(|e| e.bytes() == [0xFC]),
        "song 1 ends with Stop"
    );
    let ticks: Vec<i64> = rec.midi[starts[0]..]
        .iter()
        .filter(|e| e.bytes() == [0xF8])
        .map(|e| i64::from(e.frame_time))
        .collect();
    let gaps: Vec<i64> = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > TICK_FRAMES + 1)
        .collect();
    // The clock runs on at 120 BPM through the song change: no gap longer than one tick
    // (plus the one cycle a song's very first tick may be late by).
    assert!(
        gaps.iter().filter(|&&d| d > TICK_FRAMES + i64::from(PERIOD)).count() <= disturbances,
        "gaps between ticks across the song change: {gaps:?} ({disturbances} disturbances)\n{stderr}"
    );
    eprintln!(
        "{} ticks from the first Start; intervals over one tick: {gaps:?}; {disturbances} disturbances",
        ticks.len()
    );
    // Ticks keep coming after the last song's Stop (the recorder ran 200 ms more at least).
    assert!(ticks.len() > 2 * 72, "{} ticks", ticks.len());
}

//! End-to-end playback on a real JACK server (dummy driver): the real binary plays, a JACK
//! client in the test records every output, and the recording is analysed.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::fixtures::{frequency_track, longest_silence, segments, TestShow};
use common::{
    non_silent_span, peak, tone_amplitude_between_gaps, unique_client_name, wait_until, JackServer,
    PtyChild, Recorder,
};

const RATE: u32 = 48_000;
const PERIOD: u32 = 256;
/// Length tolerance: a few periods, to survive this VM's scheduling spikes.
const LENGTH_TOLERANCE: usize = 4 * PERIOD as usize;

fn backline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backline"))
}

/// A JACK client name for the player no other test process uses, and its audio ports'
/// prefix (`NAME:out_`, numbered from 1).
fn player_client() -> (String, String) {
    let name = unique_client_name("backline");
    let ports = format!("{name}:out_");
    (name, ports)
}

/// Runs `backline play --output jack:CLIENT` without a terminal and waits for it; returns
/// (exit code, stderr).
fn play_to_end(
    show: &TestShow,
    server: &JackServer,
    client: &str,
    extra: &[&str],
) -> (i32, String) {
    let output = backline()
        .arg("play")
        .arg(&show.root)
        .args(["--output", &format!("jack:{client}")])
        .args(extra)
        .envs(server.envs())
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn routes_tones_to_the_right_outputs_at_the_right_level_and_length() {
    let show = TestShow::new("routing");
    show.tone_wav("songs/tones/a.wav", RATE, 2.0, &[(440.0, 0.5)]);
    show.tone_wav("songs/tones/b.wav", RATE, 2.0, &[(1000.0, 0.25)]);
    // A stereo file split with file_channel; both halves summed on output 4. It is at
    // 44.1 kHz, so it is resampled to the device rate on the way.
    show.tone_wav(
        "songs/tones/c.wav",
        44_100,
        2.0,
        &[(660.0, 0.3), (880.0, 0.2)],
    );
    show.song(
        "tones",
        "Tones",
        &[
            ("a", "a.wav", None),
            ("b", "b.wav", None),
            ("c-l", "c.wav", Some(1)),
            ("c-r", "c.wav", Some(2)),
        ],
    );
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    a: [1]\n    b: [3]\n    c-l: [4]\n    c-r: [4]\n",
    );
    // A disturbed run is played again: a gap in most 100 ms blocks leaves too little to
    // measure a level on.
    let ((code, stderr, rec), _) = common::least_disturbed(
        || {
            let server = JackServer::start(RATE, PERIOD);
            let (client, ports) = player_client();
            let recorder = Recorder::start(&server, &ports, 4);
            let (code, stderr) = play_to_end(&show, &server, &client, &[]);
            std::thread::sleep(Duration::from_millis(200));
            let rec = recorder.stop();
            let lost = rec.disturbances(&stderr);
            ((code, stderr, rec), lost)
        },
        |(code, _, _)| *code != 0,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("set finished: 1 songs played, 0 skipped"),
        "{stderr}"
    );
    // Cycles the recorder itself missed (a VM scheduling spike) shorten the recording.
    let missed = rec.missed_frames();
    let ch = &rec.channels;

    let (start, end) = non_silent_span(&ch[0], 0.01).expect("output 1 carries the 440 Hz track");
    let length = end - start + 1;
    // A JACK xrun drops the player's period from the graph: allow one period per xrun the
    // player reported, on top of the scheduling tolerance.
    let xruns = common::xruns_reported(&stderr);
    assert!(
        length.abs_diff(2 * RATE as usize) <= LENGTH_TOLERANCE + xruns * PERIOD as usize + missed,
        "song length {length} frames, expected {} ± {LENGTH_TOLERANCE}\n{stderr}",
        2 * RATE
    );
    let span = |c: usize| &ch[c][start..=end];
    // Measured between the recorder's gaps: a gap is a phase jump in the tone.
    let gaps = rec.gaps_within(start, end);
    let level = |c: usize, f: f32| tone_amplitude_between_gaps(span(c), &gaps, f, RATE);
    assert!(
        (level(0, 440.0) - 0.5).abs() < 0.02,
        "out 1 440 Hz: {}",
        level(0, 440.0)
    );
    assert!(level(0, 1000.0) < 0.01, "out 1 has no 1000 Hz");
    assert!(
        peak(&ch[1]) < 1e-4,
        "out 2 is routed nothing and must be silent: peak {}",
        peak(&ch[1])
    );
    assert!(
        (level(2, 1000.0) - 0.25).abs() < 0.02,
        "out 3 1000 Hz: {}",
        level(2, 1000.0)
    );
    assert!(level(2, 440.0) < 0.01, "out 3 has no 440 Hz");
    assert!(
        (level(3, 660.0) - 0.3).abs() < 0.03,
        "out 4 660 Hz (resampled): {}",
        level(3, 660.0)
    );
    assert!(
        (level(3, 880.0) - 0.2).abs() < 0.03,
        "out 4 880 Hz (resampled): {}",
        level(3, 880.0)
    );
    assert!(level(3, 440.0) < 0.01, "out 4 has no 440 Hz");
}

#[test]
fn auto_advance_skips_broken_songs_without_gaps() {
    let show = TestShow::new("advance");
    show.tone_song("1", "One", 440.0, 1.0);
    show.tone_song("2", "Two", 1000.0, 1.0);
    show.tone_song("3", "Three", 660.0, 1.0);
    // A corrupt audio file and a song.yaml with a YAML error, both in the playlist.
    show.write(
        "songs/corrupt/song.yaml",
        "kind: song\nname: Corrupt\ntracks:\n  - name: tone\n    file: tone.wav\n",
    );
    show.write("songs/corrupt/tone.wav", "RIFF this is not audio at all");
    show.write(
        "songs/bad/song.yaml",
        "kind: song\nname: Bad\ntracks:\n  - name: tone\n    file: tone.wav\ncolour: blue\n",
    );
    show.write(
        "playlists/set.yaml",
        "kind: playlist\nsongs:\n  - One\n  - Corrupt\n  - Two\n  - Bad\n  - Three\n",
    );
    show.write(
        "backline.yaml",
        "songs: songs\nplaylist: playlists/set.yaml\naudio:\n  device: jack\n  track_mappings:\n    tone: [1]\n",
    );
    let server = JackServer::start(RATE, PERIOD);
    let (client, ports) = player_client();
    let recorder = Recorder::start(&server, &ports, 2);
    let (code, stderr) = play_to_end(&show, &server, &client, &[]);
    std::thread::sleep(Duration::from_millis(200));
    let rec = recorder.stop();
    assert_eq!(
        code, 0,
        "broken songs are skipped and the set still ends well:\n{stderr}"
    );
    let corrupt = stderr
        .lines()
        .find(|l| l.contains("song skipped: Corrupt"))
        .unwrap_or_else(|| panic!("one error line for the corrupt song:\n{stderr}"));
    assert!(corrupt.contains("tone.wav"), "{corrupt}");
    let bad_yaml = stderr
        .lines()
        .find(|l| l.contains("bad/song.yaml:6:1"))
        .unwrap_or_else(|| panic!("the YAML error names file:line:col:\n{stderr}"));
    assert!(bad_yaml.contains("unknown field `colour`"), "{bad_yaml}");
    assert!(
        stderr.contains("set.yaml:6:5: playlist names song `Bad`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set finished: 3 songs played, 1 skipped"),
        "{stderr}"
    );

    let missed = rec.missed_frames() + common::xruns_reported(&stderr) * PERIOD as usize;
    let out = &rec.channels[0];
    let (start, end) = non_silent_span(out, 0.01).expect("audio on output 1");
    assert_eq!(
        segments(&frequency_track(
            &out[start..=end],
            RATE,
            &[440.0, 1000.0, 660.0]
        )),
        vec![440.0, 1000.0, 660.0],
        "songs play in order, broken ones skipped"
    );
    assert!(
        (end - start + 1).abs_diff(3 * RATE as usize) <= LENGTH_TOLERANCE + missed,
        "three 1 s songs back to back: {} frames",
        end - start + 1
    );
    let gap = longest_silence(&out[start..=end]);
    assert!(
        gap <= PERIOD as usize,
        "no gap longer than one period at a song change: {gap} frames"
    );
}

#[test]
fn keys_next_previous_and_quit_in_a_terminal() {
    let show = TestShow::new("keys");
    // Zero-config order is by name.
    // Alpha is a short loop: it repeats (gaplessly) until "next".
    show.tone_song("1", "Alpha", 440.0, 0.5);
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: Alpha\nloop_playback: true\ntracks:\n  - name: tone\n    file: tone.wav\n",
    );
    show.tone_song("2", "Bravo", 1000.0, 20.0);
    show.tone_song("3", "Charlie", 660.0, 20.0);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    tone: [1]\n",
    );
    let server = JackServer::start(RATE, PERIOD);
    let (client, ports) = player_client();
    let recorder = Recorder::start(&server, &ports, 1);
    let mut command = backline();
    command
        .arg("play")
        .arg(&show.root)
        .args(["--output", &format!("jack:{client}")])
        .envs(server.envs());
    let mut ui = PtyChild::spawn(command);
    assert!(
        recorder.wait_connected(Duration::from_secs(20)),
        "{}",
        ui.stderr_so_far()
    );
    assert!(
        ui.wait_for_output("1/3 Alpha", Duration::from_secs(10)),
        "status line shows the song: {:?}",
        ui.output_so_far()
    );
    let heard = |frames: u64| recorder.frames_so_far() + frames;
    for (key, song) in [
        (b"n", "2/3 Bravo"),
        (b"n", "3/3 Charlie"),
        (b"p", "2/3 Bravo"),
    ] {
        let target = heard(RATE as u64);
        assert!(wait_until(Duration::from_secs(10), || recorder
            .frames_so_far()
            >= target));
        ui.send(key);
        assert!(
            ui.wait_for_output(song, Duration::from_secs(10)),
            "after {key:?}: {:?}",
            ui.output_so_far()
        );
    }
    let target = heard(RATE as u64);
    assert!(wait_until(Duration::from_secs(10), || recorder
        .frames_so_far()
        >= target));
    ui.send(b"q");
    let status = ui.wait_timeout(Duration::from_secs(10)).expect("q quits");
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        ui.stderr_so_far()
    );
    let screen = ui.output_so_far();
    assert!(
        screen.contains("RT "),
        "status line shows the real-time state: {screen:?}"
    );
    assert!(
        screen.contains("xruns"),
        "status line shows xruns: {screen:?}"
    );
    let rec = recorder.stop();
    let out = &rec.channels[0];
    let (start, end) = non_silent_span(out, 0.01).expect("audio");
    let order = segments(&frequency_track(
        &out[start..=end],
        RATE,
        &[440.0, 1000.0, 660.0],
    ));
    assert_eq!(
        order,
        vec![440.0, 1000.0, 660.0, 1000.0],
        "next, next, previous"
    );
    if rec.gaps.is_empty() {
        let gap = longest_silence(&out[start..=end]);
        assert!(
            gap <= PERIOD as usize,
            "'next' starts the pre-rolled song within one period: gap {gap}"
        );
    }
}

#[test]
fn rehearse_on_jack_reports_every_metric_per_song_as_json() {
    let show = TestShow::new("rehearse");
    show.tone_song("1", "Clocked", 440.0, 1.5);
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: Clocked\nmidi_playback: { file: song.mid }\ntracks:\n  - name: tone\n    file: tone.wav\ntempo: { bpm: 180 }\n",
    );
    let midi = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/songs-example/songs/03-with-midi/song.mid"
    ))
    .expect("example MIDI file");
    std::fs::write(show.path("songs/1/song.mid"), midi).expect("write");
    show.tone_song("2", "Second", 660.0, 1.0);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    tone: [1]\nmidi:\n  outputs:\n    - { name: sink, path: /dev/null }\n    - { name: second, path: /dev/null }\n    - { name: unplugged, path: /nonexistent/midi }\n",
    );
    let server = JackServer::start(RATE, PERIOD);
    let report = show.path("report.json");
    let plot = show.path("plot.svg");
    let output = backline()
        .arg("rehearse")
        .arg(&show.root)
        .args(["--output", &format!("jack:{}", player_client().0)])
        .arg("--report")
        .arg(&report)
        .arg("--plot")
        .arg(&plot)
        .envs(server.envs())
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("== 1/2 Clocked") && stdout.contains("== 2/2 Second"),
        "{stdout}"
    );
    assert!(
        stdout.contains("== overall") && stdout.contains("clock p99"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
            .expect("valid JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/rehearsal-report.schema.json"
        ))
        .expect("schema file"),
    )
    .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "report does not validate: {errors:#?}");
    assert_eq!(json["schema"], "backline-rehearsal");
    assert_eq!(json["version"], 2);
    for (metric, unit) in [
        ("audio_interval_error", "ns"),
        ("audio_callback_time", "ns"),
        ("audio_callback_duty", "ppm"),
        ("clock_lateness", "ns"),
        ("midi_event_lateness", "ns"),
    ] {
        let overall = &json["overall"][metric];
        assert!(
            overall["count"].as_u64().unwrap_or(0) > 0,
            "{metric}: {overall}"
        );
        for key in ["min", "p50", "p99", "p999", "max"] {
            assert!(overall[format!("{key}_{unit}")].is_i64(), "{metric}.{key}");
        }
        assert!(
            overall["buckets"].as_array().is_some_and(|b| !b.is_empty()),
            "{metric} buckets"
        );
    }
    // The interval error is signed: callbacks come early as well as late.
    assert!(
        json["overall"]["audio_interval_error"]["min_ns"]
            .as_i64()
            .unwrap_or(0)
            < 0,
        "{}",
        json["overall"]["audio_interval_error"]
    );
    // Per output: both connected outputs carry both streams.
    let outputs = json["outputs"].as_array().expect("outputs");
    let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(names, ["sink", "second"], "{outputs:?}");
    for output in outputs {
        for metric in ["clock_lateness", "midi_event_lateness"] {
            assert!(
                output["metrics"][metric]["count"].as_u64().unwrap_or(0) > 0,
                "{output}"
            );
        }
    }
    assert!(
        stdout.contains("  on `sink`") && stdout.contains("  on `second`"),
        "{stdout}"
    );
    // The output that is not there is in the device log.
    let events = json["device_events"].as_array().expect("device events");
    assert!(
        events
            .iter()
            .any(|e| e["device"] == "MIDI output `unplugged`" && e["event"] == "lost"),
        "{events:?}"
    );
    assert!(
        stdout.contains("MIDI output `unplugged`: lost 1×"),
        "{stdout}"
    );
    let first = &json["songs"][0];
    assert_eq!(first["name"], "Clocked");
    assert!(
        first["metrics"]["midi_event_lateness"]["count"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{first}"
    );
    assert!(
        json["realtime"].as_array().is_some_and(|r| !r.is_empty()),
        "RT state in the report"
    );
}

#[test]
fn a_vanishing_server_is_reported_once_and_does_not_crash_the_player() {
    let show = TestShow::new("server-gone");
    show.tone_song("1", "Long", 440.0, 20.0);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    tone: [1]\n",
    );
    let server = JackServer::start(RATE, PERIOD);
    let (client, ports) = player_client();
    let recorder = Recorder::start(&server, &ports, 1);
    let mut child = backline()
        .arg("play")
        .arg(&show.root)
        .args(["--output", &format!("jack:{client}")])
        .envs(server.envs())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run backline");
    let mut log = common::LogCapture::start(&mut child);
    let text = || log.text();
    assert!(
        recorder.wait_connected(Duration::from_secs(20)),
        "{}",
        text()
    );
    let playing = recorder.frames_so_far() + u64::from(RATE);
    assert!(wait_until(Duration::from_secs(10), || recorder
        .frames_so_far()
        >= playing));
    server.kill();
    assert!(
        wait_until(Duration::from_secs(10), || text()
            .contains("audio device lost")),
        "the loss is reported: {}",
        text()
    );
    assert!(child.try_wait().expect("poll").is_none(), "still running");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM ends the player: {}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = recorder.stop();
    let text = log.finish();
    assert!(status.success(), "exit {status:?}: {text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(
        text.matches("audio device lost").count(),
        1,
        "logged once: {text}"
    );
}

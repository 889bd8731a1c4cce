//! The command line as a user meets it: `check` on a good and a broken show, a missing
//! device, a missing playlist, `devices`.

mod common;

use std::process::{Command, Output, Stdio};

use common::fixtures::TestShow;

fn backline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backline"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run backline")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn check_passes_the_example_show() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/songs-example");
    let output = backline(&["check", dir]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("3 songs, 1 playlists: 0 errors"), "{all}");
    assert!(
        all.contains("With MIDI: 2 track(s), 9.2 s, beat clock from the MIDI file's tempo"),
        "{all}"
    );
    assert!(
        all.contains("Tempo Change: 2 track(s), 16.3 s, beat clock from the tempo block"),
        "{all}"
    );
}

#[test]
fn check_reports_every_problem_with_its_place_and_fails() {
    let show = TestShow::new("check");
    show.tone_wav("songs/good/a.wav", 48_000, 0.5, &[(440.0, 0.5)]);
    show.song("good", "Good", &[("a", "a.wav", None)]);
    // Same name twice.
    show.tone_wav("songs/twin/a.wav", 48_000, 0.5, &[(440.0, 0.5)]);
    show.song("twin", "Good", &[("a", "a.wav", None)]);
    // file_channel beyond the file's channels, a missing file, a path out of the library.
    show.tone_wav(
        "songs/bad/stereo.wav",
        44_100,
        0.5,
        &[(440.0, 0.5), (550.0, 0.5)],
    );
    show.write(
        "songs/bad/song.yaml",
        "kind: song\nname: Bad\ntracks:\n  - name: a\n    file: stereo.wav\n    file_channel: 3\n  - name: b\n    file: missing.wav\n",
    );
    show.write(
        "songs/escape/song.yaml",
        "kind: song\nname: Escape\ntracks:\n  - name: a\n    file: ../../../../../../../../etc/passwd\n",
    );
    show.write(
        "songs/mtrack/song.yaml",
        "kind: song\nname: Lights\nlighting: []\ntracks:\n  - name: a\n    file: ../good/a.wav\n",
    );
    show.write(
        "playlists/main.yaml",
        "kind: playlist\nsongs:\n  - Good\n  - Nope\n",
    );
    show.write(
        "backline.yaml",
        "songs: songs\nplaylist: playlists/main.yaml\naudio:\n  track_mappings:\n    a: [1]\n    ghost: [2]\n",
    );
    let output = backline(&["check", show.root.to_str().expect("utf-8 path")]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    for expected in [
        "twin/song.yaml:2:7: song name `Good` is already used by",
        "bad/song.yaml:6:19: track `a`: file_channel 3 but stereo.wav has 2 channel(s): expected 1 to 2",
        "bad/song.yaml:8:11: track `b`:",
        "missing.wav: cannot open",
        "escape/song.yaml:5:11: `../../../../../../../../etc/passwd` resolves to /etc/passwd which is outside the library",
        "main.yaml:4:5: playlist names song `Nope`",
        "track_mappings routes `ghost`, but no song has a track of that name",
        "`lighting` (used by 1 song) is an mtrack feature backline does not play; ignored",
        "Bad: stereo.wav is 44100 Hz, resampled to 48000 Hz at playback",
        "WILL BE SKIPPED",
    ] {
        assert!(all.contains(expected), "missing `{expected}` in:\n{all}");
    }
    assert_eq!(
        all.matches("playlist names song `Nope`").count(),
        1,
        "the chosen playlist's problem is reported once:\n{all}"
    );
}

#[test]
fn a_missing_device_or_playlist_is_a_clear_error() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/songs-example");
    let output = backline(&["play", dir, "--output", "No Such Interface"]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no output device named `No Such Interface`. Devices found:"),
        "{all}"
    );
    let output = backline(&[
        "play",
        dir,
        "--playlist",
        "encore",
        "--output",
        "wav:/dev/null",
    ]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no playlist named `encore`: expected one of main"),
        "{all}"
    );
}

#[test]
fn jack_without_a_server_is_a_clear_error() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/songs-example");
    let output = Command::new(env!("CARGO_BIN_EXE_backline"))
        .args(["play", dir, "--output", "jack"])
        .env(
            "JACK_DEFAULT_SERVER",
            format!("no-such-server-{}", std::process::id()),
        )
        .env("JACK_NO_START_SERVER", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("cannot connect to a JACK server") && all.contains("is jackd running"),
        "{all}"
    );
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn devices_lists_every_host() {
    let output = backline(&["devices"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("ALSA"), "{all}");
    assert!(all.contains("jack"), "{all}");
    assert!(all.contains("MIDI port"), "MIDI ports (or why not): {all}");
    assert!(all.contains("raw MIDI device"), "raw MIDI devices: {all}");
}

#[test]
fn missing_midi_port_and_footswitch_are_warnings_and_the_show_plays() {
    let show = TestShow::new("midiport");
    show.tone_song("a", "Short", 440.0, 0.5);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  track_mappings:\n    tone: [1]\nmidi:\n  outputs:\n    - { name: synth, port: USB MIDI Interface }\n  control:\n    port: FCB1010\n    next: { type: note_on, channel: 16, note: 62 }\n",
    );
    let out = show.path("out.wav");
    let output = backline(&[
        "play",
        show.root.to_str().expect("utf-8"),
        "--output",
        &format!("wav:{}", out.display()),
    ]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains("WARN MIDI output `synth` (port `USB MIDI Interface`) is not available"),
        "{all}"
    );
    assert!(all.contains("WARN footswitch not available"), "{all}");
    assert!(all.contains("set finished: 1 songs played"), "{all}");
}

#[test]
fn check_flags_a_broken_midi_file_as_play_would() {
    let show = TestShow::new("checkmidi");
    show.tone_song("a", "Drums", 440.0, 0.5);
    show.write(
        "songs/a/song.yaml",
        "kind: song\nname: Drums\nmidi_playback:\n  file: song.mid\ntracks:\n  - name: tone\n    file: tone.wav\n",
    );
    // A header that promises a track the file does not have.
    std::fs::write(
        show.path("songs/a/song.mid"),
        b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0",
    )
    .expect("write");
    let output = backline(&["check", show.root.to_str().expect("utf-8")]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("a/song.yaml:4:9: MIDI file:"), "{all}");
    assert!(
        all.contains("declares 2 tracks"),
        "says what is wrong: {all}"
    );
    assert!(all.contains("WILL BE SKIPPED"), "{all}");
}

#[test]
fn unit_prints_the_packaged_unit_with_this_binary_and_the_show() {
    let output = backline(&["unit", "--library", "/srv/show", "--user", "stage"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_backline")).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("\nExecStart={} play /srv/show\n", exe.display())),
        "{stdout}"
    );
    assert!(stdout.contains("\nUser=stage\n"), "{stdout}");
    assert!(stdout.contains("\nReadOnlyPaths=-/srv/show\n"), "{stdout}");
    assert!(
        stdout.contains("\nAmbientCapabilities=CAP_SYS_NICE\n"),
        "{stdout}"
    );
    // Relative paths are made absolute; a bad user name is refused.
    let output = backline(&["unit", "--config", "show/backline.yaml"]);
    let cwd = std::env::current_dir().unwrap();
    assert!(
        text(&output).contains(&format!(
            " play {}\n",
            cwd.join("show/backline.yaml").display()
        )),
        "{}",
        text(&output)
    );
    let output = backline(&["unit", "--user", "no body"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

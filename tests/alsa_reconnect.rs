//! A lost ALSA device, for real: backline plays through cpal's ALSA backend into ALSA's
//! `pulse` PCM (libasound2-plugins), which feeds a private PulseAudio daemon's null sink; the
//! test records the sink's monitor with `parec`. The daemon is SIGKILLed mid-song, so the
//! ALSA PCM starts failing (EIO from every poll), and started again a second later. The real
//! binary, sandbox on, must keep running, report the loss once, reconnect, and be heard again
//! within 2 s of the daemon accepting clients (`pactl info` succeeding), measured on the
//! recording itself.
//!
//! Skips (with a message) when PulseAudio or the ALSA plugin is not installed; scripts/setup.sh
//! installs both.

mod common;

use std::time::Duration;

use common::fixtures::TestShow;
use common::{dominant_frequency, now_ns, pulse_unavailable, wait_until, Player, PulseServer};

const RATE: u32 = 48_000;
const TONE_HZ: f32 = 440.0;

/// backline's own lines (ALSA and libjack print their probing noise on the same stderr).
fn own_lines(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pulse_daemon_killed_and_back_alsa_output_resumes() {
    if let Some(reason) = pulse_unavailable() {
        eprintln!("SKIPPED alsa_reconnect: {reason}; scripts/setup.sh installs it");
        return;
    }
    let show = TestShow::new("alsa-reconnect");
    show.tone_song("1", "Tone", TONE_HZ, 40.0);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: pulse\n  sample_rate: 48000\n  track_mappings:\n    tone: [1, 2]\n",
    );
    let server = PulseServer::start();
    let recorder = server.record();
    let mut player = Player::spawn(&show.root, &[], &server.envs());

    // Real output first: the tone reaches the null sink through ALSA's pulse plugin.
    assert!(
        wait_until(Duration::from_secs(30), || recorder
            .first_sound_after(0, 0.1)
            .is_some()),
        "no audio on the null sink's monitor:\n{}",
        own_lines(&player.text())
    );
    let heard = recorder.first_sound_after(0, 0.1).expect("heard");
    let target = recorder.samples() + 2 * RATE as usize;
    assert!(wait_until(Duration::from_secs(10), || recorder.samples() >= target));
    let before = recorder.stop();
    let tail: Vec<f32> = before
        .iter()
        .filter(|(at, _)| *at > heard)
        .flat_map(|(_, s)| s.iter().copied())
        .collect();
    let tail = &tail[tail.len().saturating_sub(RATE as usize)..];
    assert_eq!(
        dominant_frequency(tail, RATE, &[220.0, 440.0, 880.0]),
        TONE_HZ,
        "the recording before the loss is the song's tone"
    );

    // The device goes away.
    let killed_at = now_ns();
    server.kill();
    assert!(
        wait_until(Duration::from_secs(10), || player
            .text()
            .contains("audio device lost")),
        "the loss is reported:\n{}",
        own_lines(&player.text())
    );
    let lost_after_ms = (now_ns() - killed_at) as f64 / 1e6;
    // A long outage: the retries have backed off to 5 s (0.25 + 0.5 + 1 + 2 + 4 s), so output
    // back within 2 s proves the sound server's return is noticed, not waited out.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        player.alive(),
        "backline survives the loss:\n{}",
        own_lines(&player.text())
    );

    // It comes back: measure from `pactl info` succeeding to the tone on the monitor.
    let back_at = server.restart();
    let recorder = server.record();
    let heard_again = wait_until(Duration::from_secs(10), || {
        recorder.first_sound_after(back_at, 0.1).is_some()
    });
    let log = player.text();
    assert!(
        heard_again,
        "no audio after the server came back:\n{}",
        own_lines(&log)
    );
    let resumed_ms =
        (recorder.first_sound_after(back_at, 0.1).expect("heard") - back_at) as f64 / 1e6;
    let target = recorder.samples() + RATE as usize;
    assert!(wait_until(Duration::from_secs(10), || recorder.samples() >= target));
    assert!(wait_until(Duration::from_secs(5), || player
        .text()
        .contains("audio device back")));
    let after = recorder.stop();
    let samples: Vec<f32> = after.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let tail = &samples[samples.len().saturating_sub(RATE as usize / 2)..];
    let log = player.text();
    eprintln!(
        "alsa_reconnect: loss logged {lost_after_ms:.0} ms after SIGKILL; server accepting clients → tone on its monitor {resumed_ms:.0} ms\n{}",
        own_lines(&log)
    );
    assert_eq!(
        dominant_frequency(tail, RATE, &[220.0, 440.0, 880.0]),
        TONE_HZ,
        "the song's tone again after the reconnect"
    );
    assert!(
        resumed_ms < 2000.0,
        "output resumes within 2 s of the server accepting clients (took {resumed_ms:.0} ms):\n{}",
        own_lines(&log)
    );
    assert_eq!(
        log.matches("audio device lost").count(),
        1,
        "one loss line:\n{}",
        own_lines(&log)
    );
    assert_eq!(
        log.matches("audio device back").count(),
        1,
        "one recovery line:\n{}",
        own_lines(&log)
    );
    assert!(!log.contains("panicked"), "{log}");

    // And it still ends cleanly.
    let (status, log) = player.terminate();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        own_lines(&log)
    );
}

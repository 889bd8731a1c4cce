//! The service path, end to end on the real binary: a non-interactive `play` rendering to a
//! WAV file in real time, a test-bound NOTIFY_SOCKET standing in for systemd, the control
//! socket through `backline ctl`, and the signals (SIGSTOP/SIGCONT, SIGTERM, SIGHUP). A
//! single stalled thread is made with ptrace (PTRACE_INTERRUPT stops one thread, not the
//! process), exactly what a wedged audio callback looks like from outside.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixtures::{read_f32_wav, TestShow};
use common::wait_until;

/// Generous bound for start-up (debug build, two other test binaries on two cores).
const START: Duration = Duration::from_secs(30);

/// Datagrams from the player, with their arrival time.
#[derive(Clone, Default)]
struct Notifications(Arc<Mutex<Vec<(Instant, String)>>>);

impl Notifications {
    fn listen(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        let notes = Notifications::default();
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                sink.0.lock().expect("lock").push((Instant::now(), text));
            }
        });
        notes
    }

    /// Every `KEY=value` line received, with its time.
    fn lines(&self) -> Vec<(Instant, String)> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(t, text)| {
                text.lines()
                    .map(|l| (*t, l.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn count(&self, line: &str, after: Instant) -> usize {
        self.lines()
            .iter()
            .filter(|(t, l)| l == line && *t >= after)
            .count()
    }

    fn first(&self, prefix: &str) -> Option<(Instant, String)> {
        self.lines()
            .into_iter()
            .find(|(_, l)| l.starts_with(prefix))
    }
}

/// A running `backline play`, killed if a test fails half-way.
struct Player {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
    out: PathBuf,
}

impl Player {
    fn start(show: &TestShow, envs: &[(&str, String)]) -> Player {
        let log = show.path("player.log");
        let socket = show.path("ctl.sock");
        let out = show.path("out.wav");
        let child = Command::new(env!("CARGO_BIN_EXE_backline"))
            .arg("play")
            .arg(&show.root)
            .arg("--output")
            .arg(format!("wav:{}", out.display()))
            .arg("--control-socket")
            .arg(&socket)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create log"))
            .spawn()
            .expect("start backline");
        Player {
            child: Some(child),
            log,
            socket,
            out,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_backline"))
            .arg("ctl")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .expect("run backline ctl")
    }

    fn status(&self) -> serde_json::Value {
        let output = self.ctl(&["status", "--json"]);
        assert!(
            output.status.success(),
            "ctl status failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    fn song(&self) -> String {
        self.status()["song"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn wait_playing(&self) {
        let ok = wait_until(START, || {
            UnixStream::connect(&self.socket).is_ok() && self.status()["state"] == "playing"
        });
        assert!(ok, "the player did not start playing:\n{}", self.log());
    }

    /// SIGTERM, then the exit status and how long the process took to go.
    fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        self.signal(libc::SIGTERM);
        let sent = Instant::now();
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!(
                    "backline did not exit within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A show of three long tone songs (so nothing ends during a test), in a playlist.
fn three_song_show(tag: &str) -> TestShow {
    let show = TestShow::new(tag);
    show.tone_song("one", "Song One", 440.0, 40.0);
    show.tone_song("two", "Song Two", 550.0, 40.0);
    show.tone_song("three", "Song Three", 660.0, 40.0);
    show.write(
        "playlists/main.yaml",
        "kind: playlist\nsongs:\n  - Song One\n  - Song Two\n  - Song Three\n",
    );
    show.write(
        "backline.yaml",
        "songs: songs\nplaylist: playlists/main.yaml\naudio:\n  buffer_size: 256\n",
    );
    show
}

/// The thread id of the player's thread called `name`.
fn thread_id(pid: i32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .and_then(|task| task.file_name().to_str()?.parse().ok())
}

#[test]
fn systemd_notifications_watchdog_and_a_clean_sigterm() {
    let show = three_song_show("svc-notify");
    let notify_path = show.path("notify.sock");
    let notes = Notifications::listen(&notify_path);
    // 1 s watchdog: a ping every 0.5 s while healthy.
    let mut player = Player::start(
        &show,
        &[
            ("NOTIFY_SOCKET", notify_path.display().to_string()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
    );
    assert!(
        wait_until(START, || notes.first("READY=1").is_some()),
        "no READY=1:\n{}",
        player.log()
    );
    // READY only once the render has played a period.
    let log = player.log();
    assert!(
        log.contains("ready: the first audio period has played"),
        "{log}"
    );
    assert!(player.status()["callbacks"].as_u64().unwrap_or(0) > 0);
    assert!(
        wait_until(Duration::from_secs(5), || notes
            .lines()
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=playing 1/3 Song One"))),
        "no STATUS with the song: {:?}",
        notes.lines()
    );
    let status = notes
        .first("STATUS=playing")
        .map(|(_, l)| l)
        .unwrap_or_default();
    // The xrun count is there (not necessarily 0: a VM stall at start can cost one).
    assert!(
        status.contains("| xruns ") && status.contains("RT "),
        "{status}"
    );

    // Healthy: pings keep coming (6 expected in 3 s; spikes of a few ms cost none).
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let pings = notes.count("WATCHDOG=1", from);
    assert!((4..=8).contains(&pings), "{pings} pings in 3 s");

    // A stopped process sends nothing...
    player.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    // A ping sent just before the stop may be read up to half a second late on a loaded
    // machine; a process that kept pinging would still send about four after that.
    let during = notes.count("WATCHDOG=1", stopped + Duration::from_millis(500));
    // ...and pings again once it continues.
    player.signal(libc::SIGCONT);
    let resumed = Instant::now();
    assert_eq!(during, 0, "WATCHDOG=1 while SIGSTOPped");
    assert!(
        wait_until(Duration::from_secs(3), || notes
            .count("WATCHDOG=1", resumed)
            >= 2),
        "no WATCHDOG=1 after SIGCONT:\n{}",
        player.log()
    );

    assert_eq!(notes.count("STOPPING=1", from), 0);
    let (status, took) = player.terminate();
    assert!(status.success(), "exit {status:?}:\n{}", player.log());
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM to exit took {took:?}:\n{}",
        player.log()
    );
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(
        wait_until(Duration::from_secs(1), || notes.count("STOPPING=1", from)
            == 1),
        "no STOPPING=1: {:?}",
        notes.lines()
    );
    assert!(
        !player.socket.exists(),
        "the control socket is removed at exit"
    );
    // The file was finalised: what played is in it.
    let (_, channels) = read_f32_wav(&player.out);
    assert!(
        channels[0].len() > 48_000 * 3,
        "{} frames",
        channels[0].len()
    );
}

/// Ptrace-stops one thread of the player (the rest of the process runs on).
struct ThreadStop {
    tid: i32,
}

impl ThreadStop {
    fn stop(tid: i32) -> ThreadStop {
        // SAFETY: ptrace requests on a thread of our own child; arguments per ptrace(2).
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        }
        ThreadStop { tid }
    }
}

impl Drop for ThreadStop {
    fn drop(&mut self) {
        // SAFETY: detaching from the thread stopped above resumes it.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0usize, 0usize) };
    }
}

/// Ptrace-stops the player's thread `thread` for 3 s: no WATCHDOG=1 meanwhile, the log
/// says `why`, the rest of the process runs on, and pings resume once the thread does.
fn stalled_thread_stops_the_watchdog(show: &TestShow, thread: &str, why: &str) {
    let notify_path = show.path("notify.sock");
    let notes = Notifications::listen(&notify_path);
    let player = Player::start(
        show,
        &[
            ("NOTIFY_SOCKET", notify_path.display().to_string()),
            ("WATCHDOG_USEC", "1000000".into()),
        ],
    );
    player.wait_playing();
    let tid = thread_id(player.pid(), thread).expect("the thread");
    let healthy = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || notes
        .count("WATCHDOG=1", healthy)
        >= 2));

    let stall = ThreadStop::stop(tid);
    let stalled = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    // At most the one check that straddled the stall may still have passed.
    let during = notes.count("WATCHDOG=1", stalled + Duration::from_millis(600));
    // The rest of the process is alive: the socket answers.
    assert_eq!(player.status()["state"], "playing");
    let log = player.log();
    drop(stall);
    let resumed = Instant::now();
    assert_eq!(during, 0, "WATCHDOG=1 while {thread} was stalled:\n{log}");
    assert!(log.contains(why), "{log}");
    assert!(
        wait_until(Duration::from_secs(3), || notes
            .count("WATCHDOG=1", resumed)
            >= 2),
        "no WATCHDOG=1 once {thread} runs again:\n{}",
        player.log()
    );
    assert!(player.log().contains("watchdog: healthy again"));
}

#[test]
fn a_stalled_audio_thread_stops_the_watchdog() {
    let show = three_song_show("svc-stall");
    stalled_thread_stops_the_watchdog(
        &show,
        "backline-render",
        "watchdog: the audio callback is stalled",
    );
}

#[test]
fn a_stalled_clock_thread_stops_the_watchdog() {
    let show = three_song_show("svc-clock");
    // A MIDI output nobody reads yet: the clock thread runs (and is retried) all the same.
    show.write(
        "backline.yaml",
        "songs: songs\nplaylist: playlists/main.yaml\naudio:\n  buffer_size: 256\nmidi:\n  outputs:\n    - { name: nowhere, path: missing.fifo }\n",
    );
    stalled_thread_stops_the_watchdog(
        &show,
        "backline-clock",
        "watchdog: the beat clock thread is stalled",
    );
}

/// Sends raw bytes on a fresh connection and returns the reply (until the line or EOF).
fn raw_request(socket: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn ctl_drives_the_player_and_garbage_changes_nothing() {
    let show = three_song_show("svc-ctl");
    let player = Player::start(&show, &[]);
    player.wait_playing();
    let status = player.status();
    assert_eq!(status["song"], "Song One", "{status}");
    assert_eq!(status["index"], 1);
    assert_eq!(status["total"], 3);
    assert_eq!(status["setlist"], "main");
    let text = player.ctl(&["status"]);
    assert!(text.status.success());
    assert!(
        String::from_utf8_lossy(&text.stdout).starts_with("playing 1/3 Song One "),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // Idle clients holding connections open do not block anyone.
    let idle: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&player.socket).expect("connect"))
        .collect();
    // Garbage gets an error line and changes nothing.
    for garbage in [
        &b"\x00\xff\xfe\n"[..],
        b"rm -rf /\n",
        b"next next\n",
        b"\n",
        &[b'x'; 10_000][..],
    ] {
        let reply = raw_request(&player.socket, garbage);
        assert!(reply.starts_with("error:"), "{reply:?}");
    }
    let before = player.status();
    assert_eq!(before["song"], "Song One");
    assert_eq!(before["state"], "playing");
    let position = before["position_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        wait_until(Duration::from_secs(3), || {
            player.status()["position_seconds"].as_f64().unwrap_or(0.0) > position + 0.5
        }),
        "playback stopped after garbage:\n{}",
        player.log()
    );
    drop(idle);

    let next = player.ctl(&["next"]);
    assert!(next.status.success(), "{next:?}");
    assert!(
        wait_until(Duration::from_secs(5), || player.song() == "Song Two"),
        "ctl next did not move on:\n{}",
        player.log()
    );
    let previous = player.ctl(&["previous"]);
    assert!(previous.status.success(), "{previous:?}");
    assert!(wait_until(Duration::from_secs(5), || player.song() == "Song One"));
    let stop = player.ctl(&["stop"]);
    assert!(stop.status.success());
    assert!(wait_until(Duration::from_secs(5), || player.status()
        ["state"]
        == "stopped"));
    assert!(player.ctl(&["play"]).status.success());
    assert!(wait_until(Duration::from_secs(5), || player.status()
        ["state"]
        == "playing"));

    // A socket nobody listens on: a clear error and a failing exit code.
    let missing = Command::new(env!("CARGO_BIN_EXE_backline"))
        .args(["ctl", "status", "--socket"])
        .arg(show.path("nobody.sock"))
        .output()
        .expect("run ctl");
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("is backline running? expected its control socket at"),
        "{err}"
    );
}

#[test]
fn sighup_reloads_from_the_next_song_and_survives_a_broken_config() {
    let show = three_song_show("svc-hup");
    let mut player = Player::start(&show, &[]);
    player.wait_playing();
    let before = player.status()["position_seconds"].as_f64().unwrap_or(0.0);

    // A broken config: the error names file:line:col, the old config stays, music goes on.
    let good = std::fs::read_to_string(show.path("backline.yaml")).expect("read config");
    show.write("backline.yaml", &format!("{good}audio_typo: 1\n"));
    player.signal(libc::SIGHUP);
    let config = show.path("backline.yaml");
    let expected = format!("reload: {}:5:1", config.display());
    assert!(
        wait_until(Duration::from_secs(5), || player
            .log()
            .contains("reload failed")),
        "{}",
        player.log()
    );
    assert!(player.log().contains(&expected), "{}", player.log());
    let status = player.status();
    assert_eq!(status["song"], "Song One");
    assert_eq!(status["state"], "playing");
    assert!(status["position_seconds"].as_f64().unwrap_or(0.0) > before);

    // A valid change: Song Two leaves the playlist and the tone track drops 20 dB. Song One
    // plays on untouched; Song Three follows it, at the new gain.
    show.write(
        "playlists/main.yaml",
        "kind: playlist\nsongs:\n  - Song One\n  - Song Three\n",
    );
    show.write(
        "backline.yaml",
        "songs: songs\nplaylist: playlists/main.yaml\naudio:\n  buffer_size: 256\n  track_gains:\n    tone: -20\n",
    );
    let at_reload = player.status()["position_seconds"].as_f64().unwrap_or(0.0);
    player.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || player
            .log()
            .contains("reload: `Song One` plays on; next: `Song Three`")),
        "{}",
        player.log()
    );
    let status = player.status();
    assert_eq!(status["song"], "Song One", "{status}");
    assert_eq!(status["total"], 2);
    assert!(
        status["position_seconds"].as_f64().unwrap_or(0.0) >= at_reload,
        "the playing song restarted: {status}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(player.ctl(&["next"]).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || player.song() == "Song Three"),
        "{}",
        player.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (exit, _) = player.terminate();
    assert!(exit.success());

    // In the file: Song One (440 Hz) at full level, then Song Three (660 Hz) 20 dB down.
    let (rate, channels) = read_f32_wav(&player.out);
    let samples = &channels[0];
    let peak = |from: usize, to: usize| {
        samples[from.min(samples.len())..to.min(samples.len())]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()))
    };
    let rate = rate as usize;
    let early = peak(rate / 2, rate);
    let late = peak(samples.len().saturating_sub(rate), samples.len() - rate / 4);
    assert!((early - 0.5).abs() < 0.02, "Song One peak {early}");
    assert!(
        (late - 0.05).abs() < 0.01,
        "Song Three peak {late} (expected -20 dB)"
    );
}

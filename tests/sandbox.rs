//! Self-sandboxing with real parts: the real binary plays (a real-time WAV render, or a real
//! JACK dummy server), and the test reads `/proc/PID/task/*/status` of every task while it
//! plays — as root, as an unprivileged user without CAP_SYS_NICE and as that user with only
//! CAP_SYS_NICE (setpriv). With the `sandbox-probe` feature (scripts/test.sh runs
//! `cargo test --features sandbox-probe --test sandbox`) a probe inside the sandboxed player
//! tries what must fail — execve, fork, writing outside the state folder, reading outside the
//! library, AF_PACKET and AF_INET sockets, ptrace — while the show plays on, and promotes a
//! thread started after the sandbox to SCHED_FIFO.
//!
//! The JACK backend in this tree (cpal's) does not reconnect after a server restart yet, so
//! "RT promotion after a restart" is covered by the probe's new thread: it is created after
//! every layer is in place and must still get SCHED_FIFO by raising CAP_SYS_NICE.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fixtures::TestShow;
use common::wait_until;

const CAP_SYS_NICE: u64 = 1 << 23;

/// The fields the sandbox sets, from one task's status file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskStatus {
    tid: String,
    name: String,
    cap_eff: u64,
    cap_prm: u64,
    cap_inh: u64,
    cap_bnd: u64,
    cap_amb: u64,
    no_new_privs: u8,
    seccomp: u8,
}

fn task_statuses(pid: u32) -> Vec<TaskStatus> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(&v, 16).ok());
            Some(TaskStatus {
                tid: t.file_name().to_string_lossy().into_owned(),
                name: field("Name:")?,
                cap_eff: hex("CapEff:")?,
                cap_prm: hex("CapPrm:")?,
                cap_inh: hex("CapInh:")?,
                cap_bnd: hex("CapBnd:")?,
                cap_amb: hex("CapAmb:").unwrap_or(0),
                no_new_privs: field("NoNewPrivs:")?.parse().ok()?,
                seccomp: field("Seccomp:")?.parse().ok()?,
            })
        })
        .collect()
}

/// Waits until the main task shows the sandbox (Seccomp 2), then returns every task.
fn sandboxed_tasks(pid: u32) -> Vec<TaskStatus> {
    let main = pid.to_string();
    let up = wait_until(Duration::from_secs(15), || {
        task_statuses(pid)
            .iter()
            .any(|t| t.tid == main && t.seccomp == 2)
    });
    assert!(up, "pid {pid} never reached Seccomp 2");
    // The broadcast is done before seccomp goes on; give late threads a moment anyway.
    std::thread::sleep(Duration::from_millis(300));
    task_statuses(pid)
}

/// Every task: CapEff 0, CapPrm/CapBnd = `expected`, no inheritable or ambient, NNP, seccomp.
fn assert_every_task(tasks: &[TaskStatus], expected: u64) {
    assert!(
        tasks.len() >= 4,
        "expected the player's threads: {tasks:#?}"
    );
    for t in tasks {
        let ok = t.cap_eff == 0
            && t.cap_prm == expected
            && t.cap_bnd == expected
            && t.cap_inh == 0
            && t.cap_amb == 0
            && t.no_new_privs == 1
            && t.seccomp == 2;
        assert!(
            ok,
            "task {} ({}) is not sandboxed (want CapPrm=CapBnd={expected:#x}): {t:?}\nall: {tasks:#?}",
            t.tid, t.name
        );
    }
}

struct Run {
    child: Child,
    show: TestShow,
}

/// A one-song show with a beat clock to /dev/null, rendered in real time for `seconds`.
fn render_show(tag: &str, seconds: f32, config_extra: &str) -> TestShow {
    let show = TestShow::on_disk(tag);
    show.tone_song("1", "Long", 440.0, seconds);
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: Long\ntracks:\n  - name: tone\n    file: tone.wav\ntempo: { bpm: 120 }\n",
    );
    show.write(
        "backline.yaml",
        &format!("songs: songs\nmidi:\n  outputs:\n    - {{ name: null, path: /dev/null }}\n{config_extra}"),
    );
    std::fs::create_dir_all(show.path("out")).expect("out dir");
    make_world_accessible(&show.root);
    show
}

fn start(show: TestShow, setpriv: &[&str], extra: &[&str], env: &[(&str, String)]) -> Run {
    let mut command = common::backline_command(setpriv);
    command
        .arg("play")
        .arg(&show.root)
        .arg("--output")
        .arg(format!("wav:{}", show.path("out/out.wav").display()))
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("start backline");
    Run { child, show }
}

/// Waits for the end; returns (success, stdout, stderr, frames rendered).
fn finish(run: Run) -> (bool, String, String, u64) {
    let output = run.child.wait_with_output().expect("wait");
    let frames = hound::WavReader::open(run.show.path("out/out.wav"))
        .map(|r| r.duration())
        .unwrap_or(0);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        u64::from(frames),
    )
}

fn make_world_accessible(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let is_dir = p.is_dir();
        let mode = if is_dir { 0o777 } else { 0o666 };
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
        if is_dir {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];

#[test]
fn as_root_every_task_keeps_only_cap_sys_nice_permitted() {
    assert!(is_root(), "these tests run as root (CI does)");
    let run = start(render_show("sbx-root", 3.0, ""), &[], &[], &[]);
    let tasks = sandboxed_tasks(run.child.id());
    assert_every_task(&tasks, CAP_SYS_NICE);
    let (ok, _, stderr, frames) = finish(run);
    assert!(ok, "{stderr}");
    assert_eq!(frames, 3 * 48_000, "the whole song was rendered");
    assert!(
        stderr.contains(
            "sandbox best_effort: caps cap_sys_nice (permitted), no_new_privs, Landlock ABI"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("render FIFO 70 (CAP_SYS_NICE)"), "{stderr}");
    // Nothing else to warn about. (Root without CAP_SYS_RESOURCE, as on the CI machine,
    // cannot lift RLIMIT_MEMLOCK and is told its memory lock was released for the sandbox.)
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("WARN") && !l.contains("memory unlocked")),
        "{stderr}"
    );
}

#[test]
fn without_cap_sys_nice_every_task_ends_with_no_capabilities() {
    assert!(is_root(), "these tests run as root (CI does)");
    let mut args = NOBODY.to_vec();
    args.extend(["--inh-caps=-all", "--bounding-set=-all"]);
    let run = start(render_show("sbx-nobody", 3.0, ""), &args, &[], &[]);
    let tasks = sandboxed_tasks(run.child.id());
    assert_every_task(&tasks, 0);
    let (ok, _, stderr, frames) = finish(run);
    assert!(ok, "{stderr}");
    assert_eq!(frames, 3 * 48_000);
    assert!(
        stderr.contains("sandbox best_effort: caps none"),
        "{stderr}"
    );
}

#[test]
fn with_only_cap_sys_nice_it_stays_permitted_not_effective_and_not_ambient() {
    assert!(is_root(), "these tests run as root (CI does)");
    let mut args = NOBODY.to_vec();
    args.extend([
        "--inh-caps=+sys_nice",
        "--ambient-caps=+sys_nice",
        "--bounding-set=-all,+sys_nice",
    ]);
    let run = start(render_show("sbx-nice", 3.0, ""), &args, &[], &[]);
    let tasks = sandboxed_tasks(run.child.id());
    assert_every_task(&tasks, CAP_SYS_NICE);
    let (ok, _, stderr, _) = finish(run);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("render FIFO 70 (CAP_SYS_NICE)"), "{stderr}");
    assert!(stderr.contains("clock FIFO 80 (CAP_SYS_NICE)"), "{stderr}");
}

#[test]
fn no_sandbox_is_reported_loudly_and_leaves_the_process_alone() {
    let run = start(render_show("sbx-off", 2.0, ""), &[], &["--no-sandbox"], &[]);
    let (ok, stdout, stderr, _) = finish(run);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("SANDBOX OFF (--no-sandbox)"),
        "{stderr}"
    );
    assert!(stdout.contains("SANDBOX OFF"), "{stdout}");
}

#[test]
fn strict_kill_mode_plays_a_whole_render() {
    // With seccomp_action: kill, any syscall missing from the allow-list kills the player.
    let show = render_show(
        "sbx-strict",
        3.0,
        "sandbox: { mode: strict, seccomp_action: kill }\n",
    );
    let run = start(show, &[], &[], &[]);
    let (ok, _, stderr, frames) = finish(run);
    assert!(ok, "{stderr}");
    assert_eq!(frames, 3 * 48_000);
    assert!(stderr.contains("sandbox strict:"), "{stderr}");
    assert!(stderr.contains("seccomp kill"), "{stderr}");
}

#[test]
fn jack_playback_in_strict_kill_mode_sandboxes_libjack_threads_too() {
    use common::{non_silent_span, JackServer, Recorder};
    let show = TestShow::on_disk("sbx-jack");
    show.tone_wav("songs/t/a.wav", 48_000, 2.0, &[(440.0, 0.5)]);
    show.song("t", "Tone", &[("a", "a.wav", None)]);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  device: jack\n  track_mappings:\n    a: [1]\nsandbox: { mode: strict, seccomp_action: kill }\n",
    );
    let server = JackServer::start(48_000, 256);
    let client = common::unique_client_name("backline-sbx");
    let recorder = Recorder::start(&server, &format!("{client}:out_"), 1);
    let child = Command::new(env!("CARGO_BIN_EXE_backline"))
        .arg("play")
        .arg(&show.root)
        .args(["--output", &format!("jack:{client}")])
        .envs(server.envs())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backline");
    let tasks = sandboxed_tasks(child.id());
    // The JACK backend runs libjack's threads in the player: they were created before the
    // sandbox and must have been reached too.
    assert!(tasks.len() >= 5, "{tasks:#?}");
    assert_every_task(&tasks, CAP_SYS_NICE);
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    std::thread::sleep(Duration::from_millis(200));
    let rec = recorder.stop();
    let (start, end) = non_silent_span(&rec.channels[0], 0.01).expect("the tone was recorded");
    let length = end - start + 1;
    // Cycles the recorder missed, or the player lost in an xrun, shorten the recording.
    let lost = rec.missed_frames() + common::xruns_reported(&stderr) * 256;
    assert!(
        length.abs_diff(2 * 48_000) <= 8 * 256 + lost,
        "length {length} ({lost} frames lost to xruns)\n{stderr}"
    );
}

#[cfg(feature = "sandbox-probe")]
mod probe {
    use super::*;

    /// (name, result) of each `sandbox-probe: NAME: RESULT` line.
    fn probe_lines(stdout: &str) -> Vec<(String, String)> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("sandbox-probe: "))
            .filter_map(|l| l.split_once(": "))
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .collect()
    }

    fn check_blocked(stdout: &str) -> Vec<(String, String)> {
        assert!(stdout.contains("sandbox-probe: done"), "{stdout}");
        let lines = probe_lines(stdout);
        for name in [
            "execve",
            "fork",
            "write-outside-state",
            "read-outside-library",
            "af-packet-socket",
            "af-inet-socket",
            "ptrace",
        ] {
            let result = lines
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no probe line for {name}:\n{stdout}"));
            assert!(result.1.starts_with("blocked"), "{name}: {}", result.1);
        }
        lines
    }

    fn probe_env(show: &TestShow) -> (Vec<(&'static str, String)>, PathBuf) {
        // Writing: inside the (read-only) library, not in the state folder out/. Reading: a
        // file outside the show's folders.
        let secret = std::env::temp_dir().join(format!(
            "backline-sandbox-secret-{}-{}.txt",
            std::process::id(),
            show.root
                .file_name()
                .map_or("x".into(), |n| n.to_string_lossy())
        ));
        std::fs::write(&secret, "not for the player").expect("secret");
        make_world_accessible(&show.root);
        let target = show.path("songs/1/written-by-the-player.txt");
        (
            vec![(
                "BACKLINE_SANDBOX_PROBE",
                format!("write={};read={}", target.display(), secret.display()),
            )],
            target,
        )
    }

    #[test]
    fn probe_inside_the_player_is_blocked_while_the_render_goes_on() {
        assert!(is_root(), "these tests run as root (CI does)");
        let show = render_show("sbx-probe", 3.0, "");
        // The library is read-only: the file must not appear even though root owns it all.
        let (env, target) = probe_env(&show);
        let run = start(show, &[], &[], &env);
        let (ok, stdout, stderr, frames) = finish(run);
        assert!(ok, "playback continues after the probe:\n{stderr}");
        assert_eq!(frames, 3 * 48_000, "the whole song was rendered");
        let lines = check_blocked(&stdout);
        assert!(!target.exists(), "{} was written", target.display());
        let rt = lines
            .iter()
            .find(|(n, _)| n == "rt-promotion-new-thread")
            .expect("rt line");
        assert_eq!(
            rt.1, "Fifo 70",
            "a thread started after the sandbox still gets SCHED_FIFO"
        );
    }

    #[test]
    fn probe_as_unprivileged_user_with_cap_sys_nice() {
        assert!(is_root(), "these tests run as root (CI does)");
        let mut args = NOBODY.to_vec();
        args.extend([
            "--inh-caps=+sys_nice",
            "--ambient-caps=+sys_nice",
            "--bounding-set=-all,+sys_nice",
        ]);
        let show = render_show("sbx-probe-nice", 3.0, "");
        let (env, _) = probe_env(&show);
        let run = start(show, &args, &[], &env);
        let (ok, stdout, stderr, _) = finish(run);
        assert!(ok, "{stderr}");
        let lines = check_blocked(&stdout);
        let rt = lines
            .iter()
            .find(|(n, _)| n == "rt-promotion-new-thread")
            .expect("rt line");
        assert_eq!(rt.1, "Fifo 70", "{stderr}");
    }
}

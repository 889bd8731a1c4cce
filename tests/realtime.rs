//! Real-time scheduling with real privileges: the real binary renders a show, and the test
//! reads its threads' scheduling policy from /proc (field 41 of /proc/PID/task/TID/stat)
//! while it plays — as root, as an unprivileged user without CAP_SYS_NICE (setpriv), and as
//! that user with only CAP_SYS_NICE.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::fixtures::TestShow;
use common::wait_until;

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;

/// (policy, rt_priority) of every thread of `pid` whose name starts with `prefix`.
fn thread_policies(pid: u32, prefix: &str) -> Vec<(u32, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let name = &stat[open + 1..close];
            if !name.starts_with(prefix) {
                return None;
            }
            // Fields from 3 on follow the closing parenthesis; field N is index N - 3.
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let priority = fields.get(40 - 3)?.parse().ok()?;
            let policy = fields.get(41 - 3)?.parse().ok()?;
            Some((policy, priority))
        })
        .collect()
}

struct Run {
    child: Child,
    show: TestShow,
}

/// Starts a 4 s render of a one-song show, optionally wrapped in setpriv arguments.
fn start(setpriv: &[&str], extra: &[&str]) -> Run {
    let show = TestShow::new("rt");
    show.tone_song("1", "Long", 440.0, 4.0);
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: Long\ntracks:\n  - name: tone\n    file: tone.wav\ntempo: { bpm: 120 }\n",
    );
    // A MIDI output gives the show a beat clock thread.
    show.write(
        "backline.yaml",
        "songs: songs\nmidi:\n  outputs:\n    - { name: null, path: /dev/null }\n",
    );
    // Everything the unprivileged user needs to read and write.
    let out_dir = show.path("out");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    for path in [show.root.clone(), out_dir.clone()] {
        make_world_accessible(&path);
    }
    let mut command = common::backline_command(setpriv);
    command
        .arg("play")
        .arg(&show.root)
        .arg("--output")
        .arg(format!("wav:{}", out_dir.join("out.wav").display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("start backline");
    Run { child, show }
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

/// Waits until the thread named `name` exists and has promoted itself; returns its
/// (policy, priority).
fn thread_policy(run: &Run, name: &str) -> (u32, u32) {
    let pid = run.child.id();
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(10), || {
        seen = thread_policies(pid, name);
        !seen.is_empty()
    });
    // Promotion happens as the thread starts; give it a moment, then read again.
    std::thread::sleep(Duration::from_millis(300));
    let now = thread_policies(pid, name);
    *now.first()
        .or(seen.first())
        .unwrap_or_else(|| panic!("no {name} thread in pid {pid}"))
}

fn render_thread_policy(run: &Run) -> (u32, u32) {
    thread_policy(run, "backline-render")
}

fn clock_thread_policy(run: &Run) -> (u32, u32) {
    thread_policy(run, "backline-clock")
}

fn finish(run: Run) -> (bool, String, u64) {
    let output = run.child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let frames = hound::WavReader::open(run.show.path("out/out.wav"))
        .map(|r| r.duration())
        .unwrap_or(0);
    (output.status.success(), stderr, u64::from(frames))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];

#[test]
fn root_gets_sched_fifo_at_the_configured_priority() {
    assert!(
        is_root(),
        "these tests run as root (CI does); they drop privileges with setpriv"
    );
    let run = start(&[], &["--rt-priority", "61"]);
    assert_eq!(render_thread_policy(&run), (SCHED_FIFO, 61));
    assert_eq!(clock_thread_policy(&run), (SCHED_FIFO, 71));
    let (ok, stderr, frames) = finish(run);
    assert!(ok, "{stderr}");
    assert_eq!(frames, 4 * 48_000);
    assert!(stderr.contains("render FIFO 61 (CAP_SYS_NICE)"), "{stderr}");
    assert!(stderr.contains("clock FIFO 71 (CAP_SYS_NICE)"), "{stderr}");
}

#[test]
fn without_cap_sys_nice_it_plays_at_normal_priority_and_says_why_once() {
    assert!(
        is_root(),
        "these tests run as root (CI does); they drop privileges with setpriv"
    );
    let mut args = NOBODY.to_vec();
    args.extend(["--inh-caps=-all", "--bounding-set=-all"]);
    let run = start(&args, &[]);
    assert_eq!(render_thread_policy(&run).0, SCHED_OTHER);
    assert_eq!(clock_thread_policy(&run).0, SCHED_OTHER);
    let (ok, stderr, frames) = finish(run);
    assert!(
        ok,
        "the song plays to the end at normal priority:\n{stderr}"
    );
    assert_eq!(frames, 4 * 48_000, "the whole song was rendered");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("SCHED_FIFO"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "exactly one warning per role (render, clock):\n{stderr}"
    );
    for role in ["render", "clock"] {
        let warning = warnings
            .iter()
            .find(|w| w.contains(&format!("the {role} thread")))
            .unwrap_or_else(|| panic!("a warning for the {role} thread:\n{stderr}"));
        assert!(
            warning.contains("no CAP_SYS_NICE and RLIMIT_RTPRIO is 0"),
            "{warning}"
        );
        assert!(
            warning.contains("setcap cap_sys_nice+ep"),
            "the remedy: {warning}"
        );
    }
}

#[test]
fn with_only_cap_sys_nice_an_unprivileged_user_gets_sched_fifo() {
    assert!(
        is_root(),
        "these tests run as root (CI does); they drop privileges with setpriv"
    );
    let mut args = NOBODY.to_vec();
    args.extend([
        "--inh-caps=+sys_nice",
        "--ambient-caps=+sys_nice",
        "--bounding-set=-all,+sys_nice",
    ]);
    let run = start(&args, &[]);
    assert_eq!(render_thread_policy(&run), (SCHED_FIFO, 70));
    assert_eq!(clock_thread_policy(&run), (SCHED_FIFO, 80));
    let (ok, stderr, _) = finish(run);
    assert!(ok, "{stderr}");
}

#[test]
fn no_rt_turns_it_off_on_purpose() {
    let run = start(&[], &["--no-rt"]);
    assert_eq!(render_thread_policy(&run).0, SCHED_OTHER);
    assert_eq!(clock_thread_policy(&run).0, SCHED_OTHER);
    let (ok, stderr, _) = finish(run);
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("WARN"),
        "off on purpose is not a warning:\n{stderr}"
    );
    assert!(
        stderr.contains("real-time scheduling off for the render thread"),
        "{stderr}"
    );
}

//! Real-time scheduling with real privileges: the real binary renders a show, and the test
//! reads its threads' scheduling policy from /proc (field 41 of /proc/PID/task/TID/stat)
//! while it plays — as root, as an unprivileged user without CAP_SYS_NICE (setpriv), and as
//! that user with only CAP_SYS_NICE.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    // Everything the unprivileged user needs to read and write.
    let out_dir = show.path("out");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    for path in [show.root.clone(), out_dir.clone()] {
        make_world_accessible(&path);
    }
    let binary = env!("CARGO_BIN_EXE_backline");
    let mut command = if setpriv.is_empty() {
        Command::new(binary)
    } else {
        let mut c = Command::new("setpriv");
        c.args(setpriv).arg(binary);
        c
    };
    command
        .arg("play")
        .arg(show.root.join("songs"))
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

/// Waits until the render thread exists and has promoted itself, returns its (policy, priority).
fn render_thread_policy(run: &Run) -> (u32, u32) {
    let pid = run.child.id();
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(10), || {
        seen = thread_policies(pid, "backline-render");
        !seen.is_empty()
    });
    // Promotion happens as the thread starts; give it a moment, then read again.
    std::thread::sleep(Duration::from_millis(300));
    let now = thread_policies(pid, "backline-render");
    *now.first()
        .or(seen.first())
        .unwrap_or_else(|| panic!("no backline-render thread in pid {pid}"))
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
    let (ok, stderr, frames) = finish(run);
    assert!(ok, "{stderr}");
    assert_eq!(frames, 4 * 48_000);
    assert!(stderr.contains("render FIFO 61 (CAP_SYS_NICE)"), "{stderr}");
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
        1,
        "exactly one warning for the render role:\n{stderr}"
    );
    assert!(
        warnings[0].contains("no CAP_SYS_NICE and RLIMIT_RTPRIO is 0"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("setcap cap_sys_nice+ep"),
        "the warning gives the remedy: {}",
        warnings[0]
    );
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
    let (ok, stderr, _) = finish(run);
    assert!(ok, "{stderr}");
}

#[test]
fn no_rt_turns_it_off_on_purpose() {
    let run = start(&[], &["--no-rt"]);
    assert_eq!(render_thread_policy(&run).0, SCHED_OTHER);
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

//! Self-sandboxing after start-up: capabilities, `no_new_privs`, Landlock and seccomp, in the
//! order of DESIGN.md ("Privileges, in order", steps 4–7), and the [`SandboxReport`] that says
//! what took effect.
//!
//! # Every thread, not just the caller
//!
//! By the time backline locks itself down, devices are open and threads are running: the
//! audio backend's (cpal's ALSA worker, or libjack's process and notification threads), the
//! beat clock, the loader and the stats thread. Three of the four layers are per thread in
//! Linux: `capset(2)`, the bounding set (`PR_CAPBSET_DROP`), the ambient set, `no_new_privs`
//! and `landlock_restrict_self(2)` (before Landlock ABI 8, which this crate does not require)
//! act on the calling thread only, and a thread inherits them only from the thread that
//! creates it. Only seccomp can synchronise the whole process (`SECCOMP_FILTER_FLAG_TSYNC`).
//!
//! So [`apply`] works like glibc's `setuid(2)` (and libcap's psx): it installs a handler for a
//! private real-time signal whose only work is a fixed series of raw syscalls (drop the
//! bounding set, clear ambient, `no_new_privs`, `landlock_restrict_self` with a ruleset fd
//! prepared beforehand, `capset`) — async-signal-safe, no allocation, no locks. It sends that
//! signal with `tgkill` to every other task listed in `/proc/self/task`, waits for each to
//! acknowledge (the handler records its tid), lists the tasks again to catch threads an
//! unrestricted thread created meanwhile, and repeats until every task is covered (or a
//! deadline passes: reported, and an error in `strict` mode). The calling thread restricts
//! itself last, then installs the seccomp filter on all threads with TSYNC. Threads created
//! afterwards (the footswitch listener, the key reader, a reconnecting backend) inherit all
//! layers from their creator. The handler is installed with `SA_RESTART`, as glibc's setxid
//! signal is; interrupted `poll`/`clock_nanosleep` calls in our threads already retry on
//! `EINTR`. Finally [`apply`] reads `/proc/self/task/*/status` and counts the tasks that show
//! `CapEff` 0 and `NoNewPrivs` 1 and the expected `CapPrm`/`CapBnd`, so the report states
//! coverage as the kernel sees it.
//!
//! # Layers
//!
//! - Capabilities: everything is dropped from the effective, permitted, inheritable, ambient
//!   and bounding sets, except `CAP_SYS_NICE`, which stays permitted but not effective when
//!   the process had it. [`crate::rt::promote_current_thread`] raises it for the one
//!   `sched_setscheduler` of a new RT thread and lowers it again. A process that never had
//!   it ends with no capabilities at all.
//! - `PR_SET_NO_NEW_PRIVS`: no set-uid or file capabilities through `execve` (which seccomp
//!   blocks anyway).
//! - Landlock (best effort per kernel ABI): library and config read-only; state directories
//!   (WAV render, reports) read-write; `/dev/snd` and MIDI device paths read-write with device
//!   ioctls; what re-opening a device needs read-only (ALSA configuration and plugins, the
//!   dynamic loader cache, `/proc/self`, cgroup and CPU facts in `/sys`) or read-write
//!   (`/dev/shm` and `/tmp/jack-*` for JACK's sockets, semaphores and shared memory); nothing
//!   executable; TCP bind and connect denied (ABI 4+); abstract unix sockets scoped (ABI 6+).
//!   Signals are not scoped: on the 6.12 kernels that introduced signal scoping, threads
//!   restricted by separate calls sit in sibling domains and could not signal each other
//!   (thread cancellation in libjack uses signals).
//! - seccomp: an allow-list built from `strace -f -c` of full runs (WAV render, JACK dummy
//!   playback, MIDI FIFO, rehearsal with report and plot) plus what ALSA (`dmix` shared
//!   memory, plugins' poll loops), PulseAudio's ALSA plugin and RT promotion need. Sockets
//!   only `AF_UNIX`; `clone` only with `CLONE_THREAD` (no `fork`); `clone3` answers `ENOSYS`
//!   so glibc falls back to `clone`, where the flags can be checked. Anything else returns
//!   `EPERM` (`seccomp_action: errno`, the default: a missed call is a log line, not a dead
//!   show) or kills the process (`kill`).
//!
//! A layer the kernel lacks is skipped and reported; in `strict` mode it is an error.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

const CAP_SYS_NICE: u32 = 23;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Most tasks [`apply`] records; more are reported as not covered.
const MAX_TASKS: usize = 512;
/// How long the broadcast waits for every task to acknowledge.
const BROADCAST_DEADLINE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

/// How hard the sandbox insists (`sandbox.mode` in backline.yaml).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every layer must take effect on every thread, or start-up fails.
    Strict,
    /// Apply what the kernel offers; report what is missing (the default).
    #[default]
    BestEffort,
    /// No sandbox (`sandbox.mode: off` or `--no-sandbox`); reported loudly.
    Off,
}

impl Mode {
    /// The name used in backline.yaml and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::BestEffort => "best_effort",
            Mode::Off => "off",
        }
    }
}

/// What a syscall outside the allow-list gets (`sandbox.seccomp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Blocked {
    /// The call fails with `EPERM` (the default).
    #[default]
    Errno,
    /// The process is killed (`SIGSYS`).
    Kill,
}

impl Blocked {
    /// The name used in backline.yaml and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Blocked::Errno => "errno",
            Blocked::Kill => "kill",
        }
    }
}

/// What [`apply`] restricts the process to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Strict, best effort or off.
    pub mode: Mode,
    /// `--no-sandbox` was given (reported as such).
    pub disabled_by_flag: bool,
    /// Action for syscalls outside the allow-list.
    pub blocked: Blocked,
    /// Read-only: the song library, the config's folder, extra roots, the playlist.
    pub read_only: Vec<PathBuf>,
    /// Read-write: state directories (WAV render folder, report and plot folders,
    /// `sandbox.state_dir`, `$STATE_DIRECTORY`).
    pub read_write: Vec<PathBuf>,
    /// Devices, FIFOs and serial ports written with device ioctls (MIDI outputs).
    pub devices: Vec<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// The outcome of the capability layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapsOutcome {
    /// Only `CAP_SYS_NICE` is left, permitted but not effective.
    SysNiceOnly,
    /// No capability at all (the process never had `CAP_SYS_NICE`).
    None,
    /// The drop failed (reason).
    Failed(String),
    /// Not attempted (sandbox off).
    NotApplied,
}

/// The outcome of the Landlock layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LandlockOutcome {
    /// Enforced at this ABI with this many path rules.
    Enforced {
        /// The kernel's Landlock ABI version.
        abi: i32,
        /// Path rules added.
        rules: usize,
    },
    /// The kernel has no Landlock (not built in, or not in the `lsm=` list).
    Unsupported,
    /// Building or enforcing the ruleset failed (reason).
    Failed(String),
    /// Not attempted (sandbox off).
    NotApplied,
}

/// The outcome of the seccomp layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeccompOutcome {
    /// A filter is installed on every thread.
    Filter {
        /// What a blocked call gets.
        blocked: Blocked,
        /// Syscalls on the allow-list.
        syscalls: usize,
    },
    /// No filter for this architecture or kernel (reason).
    Unsupported(String),
    /// Installing the filter failed (reason).
    Failed(String),
    /// Not attempted (sandbox off).
    NotApplied,
}

/// What the sandbox did, for `check --system`, the status line, logs and rehearsal reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxReport {
    /// The mode asked for.
    pub mode: Mode,
    /// `--no-sandbox` turned it off.
    pub disabled_by_flag: bool,
    /// Capability layer.
    pub caps: CapsOutcome,
    /// `no_new_privs` is set on every covered thread.
    pub no_new_privs: bool,
    /// Landlock layer.
    pub landlock: LandlockOutcome,
    /// seccomp layer.
    pub seccomp: SeccompOutcome,
    /// Tasks whose `/proc/self/task/TID/status` shows the restricted state.
    pub tasks_covered: usize,
    /// Tasks seen in `/proc/self/task`.
    pub tasks_total: usize,
}

impl SandboxReport {
    /// A report for a sandbox that was turned off.
    pub fn off(disabled_by_flag: bool) -> SandboxReport {
        SandboxReport {
            mode: Mode::Off,
            disabled_by_flag,
            caps: CapsOutcome::NotApplied,
            no_new_privs: false,
            landlock: LandlockOutcome::NotApplied,
            seccomp: SeccompOutcome::NotApplied,
            tasks_covered: 0,
            tasks_total: 0,
        }
    }

    /// Layers that did not take effect, as phrases (empty = fully sandboxed).
    pub fn missing(&self) -> Vec<String> {
        if self.mode == Mode::Off {
            return vec!["sandbox off".into()];
        }
        let mut missing = Vec::new();
        match &self.caps {
            CapsOutcome::SysNiceOnly | CapsOutcome::None => {}
            CapsOutcome::Failed(e) => missing.push(format!("capabilities: {e}")),
            CapsOutcome::NotApplied => missing.push("capabilities not dropped".into()),
        }
        if !self.no_new_privs {
            missing.push("no_new_privs not set".into());
        }
        match &self.landlock {
            LandlockOutcome::Enforced { .. } => {}
            LandlockOutcome::Unsupported => missing.push("Landlock: not in this kernel".into()),
            LandlockOutcome::Failed(e) => missing.push(format!("Landlock: {e}")),
            LandlockOutcome::NotApplied => missing.push("Landlock not applied".into()),
        }
        match &self.seccomp {
            SeccompOutcome::Filter { .. } => {}
            SeccompOutcome::Unsupported(e) | SeccompOutcome::Failed(e) => {
                missing.push(format!("seccomp: {e}"))
            }
            SeccompOutcome::NotApplied => missing.push("seccomp not applied".into()),
        }
        if self.tasks_covered < self.tasks_total {
            missing.push(format!(
                "{} of {} threads not restricted",
                self.tasks_total - self.tasks_covered,
                self.tasks_total
            ));
        }
        missing
    }

    /// Every layer took effect on every thread.
    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// A few words for the status line: `sandbox on`, `sandbox partial`, `SANDBOX OFF`.
    pub fn short(&self) -> &'static str {
        if self.mode == Mode::Off {
            "SANDBOX OFF"
        } else if self.is_complete() {
            "sandbox on"
        } else {
            "sandbox partial"
        }
    }

    /// The report as JSON for rehearsal reports.
    pub fn to_json(&self) -> serde_json::Value {
        let caps = match &self.caps {
            CapsOutcome::SysNiceOnly => "cap_sys_nice permitted, not effective".to_string(),
            CapsOutcome::None => "none".to_string(),
            CapsOutcome::Failed(e) => format!("failed: {e}"),
            CapsOutcome::NotApplied => "not dropped".to_string(),
        };
        let (landlock_abi, landlock_rules) = match &self.landlock {
            LandlockOutcome::Enforced { abi, rules } => (Some(*abi), Some(*rules)),
            _ => (None, None),
        };
        let (seccomp_action, seccomp_syscalls) = match &self.seccomp {
            SeccompOutcome::Filter { blocked, syscalls } => (Some(blocked.name()), Some(*syscalls)),
            _ => (None, None),
        };
        serde_json::json!({
            "mode": self.mode.name(),
            "disabled_by_flag": self.disabled_by_flag,
            "complete": self.is_complete(),
            "capabilities": caps,
            "no_new_privs": self.no_new_privs,
            "landlock_abi": landlock_abi,
            "landlock_rules": landlock_rules,
            "seccomp_action": seccomp_action,
            "seccomp_syscalls": seccomp_syscalls,
            "threads_covered": self.tasks_covered,
            "threads_total": self.tasks_total,
            "missing": self.missing(),
        })
    }
}

impl fmt::Display for SandboxReport {
    /// One line, e.g. `sandbox best_effort: caps cap_sys_nice (permitted), no_new_privs,
    /// Landlock ABI 7 (31 rules), seccomp errno (151 syscalls), 9/9 threads`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mode == Mode::Off {
            let why = if self.disabled_by_flag {
                "--no-sandbox"
            } else {
                "sandbox: off"
            };
            return write!(
                f,
                "SANDBOX OFF ({why}): all capabilities kept, no Landlock, no seccomp"
            );
        }
        write!(f, "sandbox {}: caps ", self.mode.name())?;
        match &self.caps {
            CapsOutcome::SysNiceOnly => write!(f, "cap_sys_nice (permitted)")?,
            CapsOutcome::None => write!(f, "none")?,
            CapsOutcome::Failed(e) => write!(f, "NOT DROPPED ({e})")?,
            CapsOutcome::NotApplied => write!(f, "not dropped")?,
        }
        if self.no_new_privs {
            write!(f, ", no_new_privs")?;
        } else {
            write!(f, ", NO no_new_privs")?;
        }
        match &self.landlock {
            LandlockOutcome::Enforced { abi, rules } => {
                write!(f, ", Landlock ABI {abi} ({rules} rules)")?
            }
            LandlockOutcome::Unsupported => write!(f, ", Landlock missing (kernel)")?,
            LandlockOutcome::Failed(e) => write!(f, ", Landlock FAILED ({e})")?,
            LandlockOutcome::NotApplied => write!(f, ", no Landlock")?,
        }
        match &self.seccomp {
            SeccompOutcome::Filter { blocked, syscalls } => {
                write!(f, ", seccomp {} ({syscalls} syscalls)", blocked.name())?
            }
            SeccompOutcome::Unsupported(e) => write!(f, ", seccomp missing ({e})")?,
            SeccompOutcome::Failed(e) => write!(f, ", seccomp FAILED ({e})")?,
            SeccompOutcome::NotApplied => write!(f, ", no seccomp")?,
        }
        write!(f, ", {}/{} threads", self.tasks_covered, self.tasks_total)
    }
}

static REPORT: OnceLock<SandboxReport> = OnceLock::new();

/// The report of this process's sandbox, once [`apply`] has run.
pub fn current() -> Option<&'static SandboxReport> {
    REPORT.get()
}

/// Why a `strict` sandbox refused to start.
#[derive(Debug, thiserror::Error)]
#[error("sandbox: strict: {}", .missing.join("; "))]
pub struct StrictError {
    /// The layers that did not take effect.
    pub missing: Vec<String>,
    /// The full report.
    pub report: Box<SandboxReport>,
}

// ---------------------------------------------------------------------------------------------
// What the machine offers (check --system)
// ---------------------------------------------------------------------------------------------

/// The kernel's Landlock ABI version (0 = no Landlock).
pub fn landlock_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version; no pointer is dereferenced.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// Lines for `backline check --system`: what the sandbox would do on this machine.
pub fn system_lines(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    if plan.mode == Mode::Off {
        lines.push("sandbox: off (sandbox.mode: off)".into());
        return lines;
    }
    let nice = caps::has_cap(
        None,
        caps::CapSet::Permitted,
        caps::Capability::CAP_SYS_NICE,
    )
    .unwrap_or(false);
    lines.push(format!(
        "sandbox ({}): capabilities → {}; no_new_privs",
        plan.mode.name(),
        if nice {
            "cap_sys_nice permitted, raised only to promote an RT thread"
        } else {
            "none"
        }
    ));
    let abi = landlock_abi();
    lines.push(if abi > 0 {
        format!(
            "sandbox: Landlock ABI {abi}{}",
            match abi {
                1..=3 => " (no TCP restriction, no device-ioctl control, no scoping)",
                4 => " (no device-ioctl control, no scoping)",
                5 => " (no abstract-socket scoping)",
                _ => "",
            }
        )
    } else {
        "sandbox: Landlock not available in this kernel (skipped; an error with sandbox.mode: strict)"
            .into()
    });
    lines.push(match seccomp_arch() {
        Ok(_) => format!(
            "sandbox: seccomp allow-list of {} syscalls, blocked calls get {}",
            allowed_syscalls().len(),
            match plan.blocked {
                Blocked::Errno => "EPERM",
                Blocked::Kill => "SIGSYS (process killed)",
            }
        ),
        Err(e) => format!("sandbox: seccomp not available: {e}"),
    });
    lines
}

// ---------------------------------------------------------------------------------------------
// apply
// ---------------------------------------------------------------------------------------------

/// Applies `plan` to every thread of the process (see the module docs for how), logs the
/// outcome and records it for [`current`].
///
/// Call once, after devices are open, RT threads started and memory locked. In `strict` mode
/// any missing layer is an error (the process should exit); otherwise it is logged.
pub fn apply(plan: &Plan) -> Result<SandboxReport, StrictError> {
    #[cfg(feature = "sandbox-probe")]
    let probe = probe::start_if_requested();
    let report = if plan.mode == Mode::Off {
        SandboxReport::off(plan.disabled_by_flag)
    } else {
        restrict(plan)
    };
    let _ = REPORT.set(report.clone());
    #[cfg(feature = "sandbox-probe")]
    if let Some(probe) = probe {
        probe.release();
    }
    if report.mode == Mode::Off {
        warn!("{report} — for debugging only; never on stage");
        return Ok(report);
    }
    let missing = report.missing();
    if missing.is_empty() {
        info!("{report}");
        Ok(report)
    } else if plan.mode == Mode::Strict {
        error!("{report}");
        Err(StrictError {
            missing,
            report: Box::new(report),
        })
    } else {
        warn!("{report}; missing: {}", missing.join("; "));
        Ok(report)
    }
}

fn restrict(plan: &Plan) -> SandboxReport {
    let keep_nice = caps::has_cap(
        None,
        caps::CapSet::Permitted,
        caps::Capability::CAP_SYS_NICE,
    )
    .unwrap_or(false);
    crate::rt::release_memory_lock_above_limit();
    let (landlock, ruleset_fd) = landlock_ruleset(plan);
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63)
        .min(63);
    PER_THREAD.keep_nice.store(keep_nice, Ordering::SeqCst);
    PER_THREAD.last_cap.store(last_cap, Ordering::SeqCst);
    PER_THREAD.landlock_fd.store(
        ruleset_fd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        Ordering::SeqCst,
    );
    let broadcast = broadcast();
    // The calling thread goes last: it is the one that signals the others.
    let own = restrict_current_thread();
    PER_THREAD.landlock_fd.store(-1, Ordering::SeqCst);
    drop(ruleset_fd);
    let failures = PER_THREAD.failures.load(Ordering::SeqCst) | own;
    if let Err(e) = &broadcast {
        warn!("sandbox: {e}");
    }

    let caps = if failures & (FAIL_CAPSET | FAIL_BOUNDING | FAIL_AMBIENT) != 0 {
        CapsOutcome::Failed(failure_phrase(failures))
    } else if keep_nice {
        CapsOutcome::SysNiceOnly
    } else {
        CapsOutcome::None
    };
    let landlock = match landlock {
        LandlockOutcome::Enforced { .. } if failures & FAIL_LANDLOCK != 0 => {
            LandlockOutcome::Failed("landlock_restrict_self failed".into())
        }
        other => other,
    };
    let seccomp = install_seccomp(plan.blocked);
    let expected_prm = if keep_nice { 1u64 << CAP_SYS_NICE } else { 0 };
    let (covered, total) = verify_tasks(
        expected_prm,
        matches!(seccomp, SeccompOutcome::Filter { .. }),
    );
    SandboxReport {
        mode: plan.mode,
        disabled_by_flag: false,
        caps,
        no_new_privs: failures & FAIL_NNP == 0,
        landlock,
        seccomp,
        tasks_covered: covered,
        tasks_total: total,
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread restriction (signal-handler safe)
// ---------------------------------------------------------------------------------------------

const FAIL_BOUNDING: u32 = 1;
const FAIL_AMBIENT: u32 = 2;
const FAIL_NNP: u32 = 4;
const FAIL_LANDLOCK: u32 = 8;
const FAIL_CAPSET: u32 = 16;

fn failure_phrase(failures: u32) -> String {
    let mut parts = Vec::new();
    for (bit, what) in [
        (FAIL_BOUNDING, "bounding set not dropped (no CAP_SETPCAP)"),
        (FAIL_AMBIENT, "ambient set not cleared"),
        (FAIL_NNP, "no_new_privs failed"),
        (FAIL_LANDLOCK, "landlock_restrict_self failed"),
        (FAIL_CAPSET, "capset failed"),
    ] {
        if failures & bit != 0 {
            parts.push(what);
        }
    }
    parts.join(", ")
}

/// What the per-thread step needs, readable from a signal handler.
struct PerThread {
    keep_nice: AtomicBool,
    last_cap: AtomicU32,
    landlock_fd: AtomicI32,
    failures: AtomicU32,
    done: [AtomicI32; MAX_TASKS],
    done_count: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the array below
const ZERO_TID: AtomicI32 = AtomicI32::new(0);

static PER_THREAD: PerThread = PerThread {
    keep_nice: AtomicBool::new(false),
    last_cap: AtomicU32::new(40),
    landlock_fd: AtomicI32::new(-1),
    failures: AtomicU32::new(0),
    done: [ZERO_TID; MAX_TASKS],
    done_count: AtomicUsize::new(0),
};

fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn is_done(tid: i32) -> bool {
    let n = PER_THREAD.done_count.load(Ordering::SeqCst).min(MAX_TASKS);
    PER_THREAD.done[..n]
        .iter()
        .any(|t| t.load(Ordering::SeqCst) == tid)
}

/// Drops the calling thread's capabilities, sets `no_new_privs` and enforces the prepared
/// Landlock ruleset. Only raw syscalls and atomics: safe in a signal handler. Returns the
/// failure bits (also or-ed into `PER_THREAD.failures`).
fn restrict_current_thread() -> u32 {
    let tid = gettid();
    if is_done(tid) {
        return 0;
    }
    let keep_nice = PER_THREAD.keep_nice.load(Ordering::SeqCst);
    let last_cap = PER_THREAD.last_cap.load(Ordering::SeqCst);
    let mut failures = 0;
    // Bounding set first: dropping from it needs CAP_SETPCAP, which capset removes below.
    for cap in 0..=last_cap {
        if keep_nice && cap == CAP_SYS_NICE {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ/DROP take a plain capability number.
        unsafe {
            if libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) == 1
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) != 0
            {
                failures |= FAIL_BOUNDING;
            }
        }
    }
    // SAFETY: plain prctl values; EINVAL on kernels without ambient capabilities is harmless.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
            && *libc::__errno_location() != libc::EINVAL
        {
            failures |= FAIL_AMBIENT;
        }
        if libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            failures |= FAIL_NNP;
        }
    }
    let fd = PER_THREAD.landlock_fd.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: fd is a Landlock ruleset fd kept open by `restrict` until every thread has
        // acknowledged; flags 0.
        let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
        if r != 0 {
            failures |= FAIL_LANDLOCK;
        }
    }
    let permitted = if keep_nice { 1u32 << CAP_SYS_NICE } else { 0 };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: 0,
            permitted,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: v3 header with two data elements, as the kernel expects.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        failures |= FAIL_CAPSET;
    }
    PER_THREAD.failures.fetch_or(failures, Ordering::SeqCst);
    let slot = PER_THREAD.done_count.fetch_add(1, Ordering::SeqCst);
    if let Some(entry) = PER_THREAD.done.get(slot) {
        entry.store(tid, Ordering::SeqCst);
    }
    failures
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

extern "C" fn on_restrict_signal(_signal: libc::c_int) {
    // SAFETY: __errno_location is the calling thread's errno; the handler must preserve it.
    let saved = unsafe { *libc::__errno_location() };
    restrict_current_thread();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Installs the handler on a free real-time signal; returns the signal number.
fn install_handler() -> Result<libc::c_int, String> {
    let (low, high) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    for signal in (low..=high).rev().skip(2) {
        // SAFETY: sigaction structs are plain data; we read the old disposition first and only
        // take a signal nobody handles.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_restrict_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) == 0 {
                return Ok(signal);
            }
        }
    }
    Err("no free real-time signal to reach the other threads".into())
}

fn task_ids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Signals every other task until each has run [`restrict_current_thread`].
fn broadcast() -> Result<(), String> {
    let signal = install_handler()?;
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let me = gettid();
    let deadline = Instant::now() + BROADCAST_DEADLINE;
    let mut signalled: Vec<(i32, Instant)> = Vec::new();
    loop {
        // A thread that blocks every signal (libpulse's mainloop thread does) can never run
        // the handler: once it has been signalled and still blocks it 100 ms later (not just
        // a short critical section), it is reported instead of waited for until the deadline.
        let (blocking, pending): (Vec<i32>, Vec<i32>) = task_ids()
            .into_iter()
            .filter(|&tid| tid != me && !is_done(tid))
            .partition(|&tid| {
                signalled
                    .iter()
                    .any(|(t, at)| *t == tid && at.elapsed() > Duration::from_millis(100))
                    && blocks_signal(tid, signal)
            });
        if pending.is_empty() && blocking.is_empty() {
            return Ok(());
        }
        if pending.is_empty() {
            return Err(format!(
                "threads {blocking:?} block signals, so they keep their capabilities and Landlock does not reach them (seccomp, applied with TSYNC, does)"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "threads {pending:?} did not take the restrictions (signal blocked?)"
            ));
        }
        for tid in pending {
            // Re-send every 100 ms: a thread that exits and whose tid is reused must not stall us.
            let due = signalled
                .iter()
                .find(|(t, _)| *t == tid)
                .map_or(true, |(_, at)| at.elapsed() > Duration::from_millis(100));
            if due {
                // SAFETY: tgkill to a task of our own process with our handler installed.
                let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
                if r != 0 {
                    debug!("sandbox: tgkill {tid}: {}", std::io::Error::last_os_error());
                }
                signalled.retain(|(t, _)| *t != tid);
                signalled.push((tid, Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether task `tid` blocks `signal` (its `SigBlk` mask in `/proc/self/task/TID/status`).
fn blocks_signal(tid: i32, signal: libc::c_int) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigBlk:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| signal >= 1 && mask & (1u64 << (signal - 1)) != 0)
}

/// Counts the tasks whose `/proc/self/task/TID/status` shows the restricted state.
fn verify_tasks(expected_prm: u64, seccomp: bool) -> (usize, usize) {
    let tasks = task_ids();
    let covered = tasks
        .iter()
        .filter(|tid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            else {
                return false;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_string)
            };
            let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(&v, 16).ok());
            let ok = hex("CapEff:") == Some(0)
                && hex("CapPrm:") == Some(expected_prm)
                && hex("CapInh:") == Some(0)
                && hex("CapBnd:").is_some_and(|b| b & !expected_prm == 0)
                && hex("CapAmb:").map_or(true, |a| a == 0)
                && field("NoNewPrivs:").as_deref() == Some("1")
                && (!seccomp || field("Seccomp:").as_deref() == Some("2"));
            if !ok {
                debug!("sandbox: task {tid} is not fully restricted");
            }
            ok
        })
        .count();
    (covered, tasks.len())
}

// ---------------------------------------------------------------------------------------------
// Landlock
// ---------------------------------------------------------------------------------------------

/// Paths outside the plan that playing and re-opening devices read.
fn system_read_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        // ALSA configuration, its plugins, and the loader cache their dependencies need.
        "/usr/share/alsa",
        "/etc/asound.conf",
        "/etc/alsa",
        "/usr/lib/alsa-lib",
        "/usr/lib64/alsa-lib",
        "/etc/ld.so.cache",
        // PulseAudio/PipeWire client configuration for ALSA's pulse plugin.
        "/etc/pulse",
        "/usr/share/pipewire",
        // Kernel facts the RT probe, std and libjack read.
        "/proc/sys/kernel",
        "/sys/fs/cgroup",
        "/sys/devices/system/cpu",
        "/sys/class/sound",
        "/etc/localtime",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for base in ["/usr/lib", "/lib"] {
        if let Ok(dir) = std::fs::read_dir(base) {
            for entry in dir.filter_map(|e| e.ok()) {
                let plugins = entry.path().join("alsa-lib");
                if plugins.is_dir() {
                    paths.push(plugins);
                }
            }
        }
    }
    // /proc/self is a symlink; the rule goes on the directory it names (this process only).
    if let Ok(own) = std::fs::canonicalize("/proc/self") {
        paths.push(own);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        paths.push(home.join(".asoundrc"));
        paths.push(home.join(".config/pulse"));
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        paths.push(PathBuf::from(runtime).join("pulse"));
    }
    paths
}

/// Paths JACK and ALSA write to when a client (re)connects.
fn system_write_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/dev/shm")];
    if let Ok(dir) = std::fs::read_dir("/tmp") {
        for entry in dir.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with("jack-") {
                paths.push(entry.path());
            }
        }
    }
    paths
}

/// Builds the Landlock ruleset; returns its outcome (assuming enforcement succeeds) and fd.
fn landlock_ruleset(plan: &Plan) -> (LandlockOutcome, Option<OwnedFd>) {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, Scope, ABI,
    };
    let abi = landlock_abi();
    if abi == 0 {
        return (LandlockOutcome::Unsupported, None);
    }
    // The newest ABI this build knows; the crate downgrades to the kernel's (best effort).
    let target = ABI::V6;
    let read = AccessFs::from_read(target);
    let all = AccessFs::from_all(target) & !AccessFs::Execute;
    let device = all;
    let build = || -> Result<(landlock::RulesetCreated, usize), landlock::RulesetError> {
        let mut created = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(target))?
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
            .scope(Scope::AbstractUnixSocket)?
            .create()?;
        let mut rules = 0usize;
        let mut add = |created: landlock::RulesetCreated,
                       path: &Path,
                       access: landlock::BitFlags<AccessFs>|
         -> Result<landlock::RulesetCreated, landlock::RulesetError> {
            match PathFd::new(path) {
                Ok(fd) => {
                    rules += 1;
                    debug!("sandbox: Landlock rule {} {access:?}", path.display());
                    created.add_rule(PathBeneath::new(fd, access))
                }
                Err(_) => Ok(created),
            }
        };
        for path in plan.read_only.iter().chain(system_read_paths().iter()) {
            created = add(created, path, read)?;
        }
        for path in plan.read_write.iter().chain(system_write_paths().iter()) {
            created = add(created, path, all)?;
        }
        created = add(created, Path::new("/dev/snd"), device)?;
        for path in &plan.devices {
            if path.exists() {
                created = add(created, path, device)?;
            } else if let Some(parent) = path.parent() {
                // Not there yet (a FIFO made later, a USB serial port unplugged): its folder.
                created = add(created, parent, device)?;
            }
        }
        Ok((created, rules))
    };
    match build() {
        Ok((created, rules)) => {
            let fd: Option<OwnedFd> = created.into();
            match fd {
                Some(fd) => (LandlockOutcome::Enforced { abi, rules }, Some(fd)),
                None => (LandlockOutcome::Unsupported, None),
            }
        }
        Err(e) => (LandlockOutcome::Failed(e.to_string()), None),
    }
}

// ---------------------------------------------------------------------------------------------
// seccomp
// ---------------------------------------------------------------------------------------------

fn seccomp_arch() -> Result<seccompiler::TargetArch, String> {
    seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("no filter for {}", std::env::consts::ARCH))
}

/// The allow-list. Source: `strace -f -c` of a WAV render with a MIDI FIFO and a rehearsal
/// report and plot, and of JACK dummy playback (see the README), plus what ALSA hardware and
/// plugins, PulseAudio's ALSA plugin, reconnects and RT promotion call.
pub fn allowed_syscalls() -> Vec<(&'static str, i64)> {
    macro_rules! list {
        ($($name:ident),* $(,)?) => {
            vec![$((stringify!($name), libc::$name as i64)),*]
        };
    }
    let mut calls = list![
        // files and devices
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_pread64,
        SYS_pwrite64,
        SYS_lseek,
        SYS_close,
        SYS_openat,
        SYS_newfstatat,
        SYS_fstat,
        SYS_statx,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_readlinkat,
        SYS_getdents64,
        SYS_fcntl,
        SYS_ioctl,
        SYS_mkdirat,
        SYS_unlinkat,
        SYS_renameat2,
        SYS_ftruncate,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fchmod,
        SYS_fstatfs,
        SYS_statfs,
        SYS_flock,
        SYS_dup,
        SYS_dup3,
        SYS_getcwd,
        // memory
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_mremap,
        SYS_madvise,
        SYS_brk,
        SYS_mlock,
        SYS_munlock,
        SYS_mlockall,
        SYS_munlockall,
        SYS_memfd_create,
        // threads and scheduling (RT promotion raises CAP_SYS_NICE with capset)
        SYS_clone,
        SYS_clone3,
        SYS_futex,
        SYS_set_robust_list,
        SYS_get_robust_list,
        SYS_rseq,
        SYS_set_tid_address,
        SYS_gettid,
        SYS_getpid,
        SYS_tgkill,
        SYS_exit,
        SYS_exit_group,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_sched_setaffinity,
        SYS_sched_getparam,
        SYS_sched_setparam,
        SYS_sched_getscheduler,
        SYS_sched_setscheduler,
        SYS_sched_getattr,
        SYS_sched_setattr,
        SYS_sched_get_priority_max,
        SYS_sched_get_priority_min,
        SYS_getpriority,
        SYS_setpriority,
        SYS_prctl,
        SYS_capget,
        SYS_capset,
        SYS_prlimit64,
        SYS_getrusage,
        SYS_membarrier,
        // time
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_gettimeofday,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        // signals
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_rt_sigtimedwait,
        SYS_restart_syscall,
        // waiting
        SYS_ppoll,
        SYS_pselect6,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_eventfd2,
        SYS_pipe2,
        // unix sockets (JACK, PulseAudio); the domain is checked below
        SYS_socket,
        SYS_socketpair,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept,
        SYS_accept4,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_shutdown,
        SYS_getsockopt,
        SYS_setsockopt,
        SYS_getsockname,
        SYS_getpeername,
        // System V IPC: JACK's shm registry lock, ALSA dmix/dsnoop
        SYS_semget,
        SYS_semop,
        SYS_semtimedop,
        SYS_semctl,
        SYS_shmget,
        SYS_shmat,
        SYS_shmdt,
        SYS_shmctl,
        // identity and facts
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getresuid,
        SYS_getresgid,
        SYS_uname,
        SYS_sysinfo,
        SYS_getrandom,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend(list![
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_readlink,
        SYS_mkdir,
        SYS_unlink,
        SYS_rename,
        SYS_dup2,
        SYS_poll,
        SYS_select,
        SYS_epoll_wait,
        SYS_pipe,
        SYS_getrlimit,
        SYS_arch_prctl,
        SYS_time,
    ]);
    calls
}

fn install_seccomp(blocked: Blocked) -> SeccompOutcome {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };
    use std::collections::BTreeMap;
    let arch = match seccomp_arch() {
        Ok(arch) => arch,
        Err(e) => return SeccompOutcome::Unsupported(e),
    };
    let calls = allowed_syscalls();
    let build = || -> Result<(BpfProgram, BpfProgram), seccompiler::Error> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (_, nr) in &calls {
            rules.insert(*nr, Vec::new());
        }
        let unix_only = |arg: u8| -> Result<Vec<SeccompRule>, seccompiler::Error> {
            Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )?])?])
        };
        rules.insert(libc::SYS_socket, unix_only(0)?);
        rules.insert(libc::SYS_socketpair, unix_only(0)?);
        // Threads only: no fork, no new process.
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?])?],
        );
        let mismatch = match blocked {
            Blocked::Errno => SeccompAction::Errno(libc::EPERM as u32),
            Blocked::Kill => SeccompAction::KillProcess,
        };
        let allow = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
        // clone3 passes its flags in memory a filter cannot read: answer ENOSYS so glibc
        // falls back to clone(2), whose flags the first filter checks.
        let mut clone3 = BTreeMap::new();
        clone3.insert(libc::SYS_clone3, Vec::new());
        let clone3 = SeccompFilter::new(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?;
        Ok((allow.try_into()?, clone3.try_into()?))
    };
    let (allow, clone3) = match build() {
        Ok(programs) => programs,
        Err(e) => return SeccompOutcome::Failed(e.to_string()),
    };
    // The clone3 filter first: once the allow-list is in, seccomp(2) itself is blocked.
    for program in [&clone3, &allow] {
        if let Err(e) = seccompiler::apply_filter_all_threads(program) {
            return SeccompOutcome::Failed(e.to_string());
        }
    }
    SeccompOutcome::Filter {
        blocked,
        syscalls: calls.len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Test-only probe
// ---------------------------------------------------------------------------------------------

/// Test-only: tries what the sandbox must forbid, from inside the running player.
///
/// Enabled by the `sandbox-probe` cargo feature (never in release packages) and the
/// environment variable `BACKLINE_SANDBOX_PROBE=write=PATH;read=PATH`. A thread started
/// before the sandbox (so it proves that pre-existing threads are covered) waits until the
/// sandbox is applied, then tries `execve`, `fork`, opening `write` for writing, reading
/// `read`, an `AF_PACKET` and an `AF_INET` socket, `ptrace(PTRACE_ATTACH)` on the parent,
/// and promoting a new thread to `SCHED_FIFO`; it prints one `sandbox-probe: NAME: …` line
/// per attempt on stdout while the show plays on.
#[cfg(feature = "sandbox-probe")]
pub mod probe {
    use std::io::Read;
    use std::sync::mpsc;

    /// The waiting probe thread.
    pub struct Waiting(mpsc::Sender<()>);

    impl Waiting {
        /// Lets the probe run (the sandbox has been applied).
        pub fn release(self) {
            let _ = self.0.send(());
        }
    }

    /// Starts the probe thread if `BACKLINE_SANDBOX_PROBE` is set.
    pub fn start_if_requested() -> Option<Waiting> {
        let spec = std::env::var("BACKLINE_SANDBOX_PROBE").ok()?;
        let mut write = None;
        let mut read = None;
        for part in spec.split(';') {
            if let Some(p) = part.strip_prefix("write=") {
                write = Some(p.to_string());
            } else if let Some(p) = part.strip_prefix("read=") {
                read = Some(p.to_string());
            }
        }
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sandbox-probe".into())
            .spawn(move || {
                if rx.recv().is_err() {
                    return;
                }
                // Let playback run a while first; the test checks it goes on afterwards.
                std::thread::sleep(std::time::Duration::from_millis(500));
                run(write.as_deref(), read.as_deref());
            })
            .ok()?;
        Some(Waiting(tx))
    }

    fn outcome(ok: bool) -> String {
        if ok {
            "ALLOWED".into()
        } else {
            format!("blocked ({})", std::io::Error::last_os_error())
        }
    }

    fn run(write: Option<&str>, read: Option<&str>) {
        let mut lines = Vec::new();
        // SAFETY: execve with valid NUL-terminated strings; on success it would replace us,
        // which the test notices (no probe lines, no finished render).
        let exec = unsafe {
            let path = c"/bin/true".as_ptr();
            let argv = [path, std::ptr::null()];
            let envp = [std::ptr::null()];
            libc::execve(path, argv.as_ptr(), envp.as_ptr()) == 0
        };
        lines.push(("execve", outcome(exec)));
        // SAFETY: fork; a child (if the sandbox failed) exits at once without touching state.
        let forked = unsafe {
            match libc::fork() {
                0 => libc::_exit(0),
                -1 => false,
                _ => true,
            }
        };
        lines.push(("fork", outcome(forked)));
        if let Some(path) = write {
            let r = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path);
            lines.push((
                "write-outside-state",
                match r {
                    Ok(_) => "ALLOWED".into(),
                    Err(e) => format!("blocked ({e})"),
                },
            ));
        }
        if let Some(path) = read {
            let r = std::fs::File::open(path).and_then(|mut f| {
                let mut buf = [0u8; 16];
                f.read(&mut buf)
            });
            lines.push((
                "read-outside-library",
                match r {
                    Ok(_) => "ALLOWED".into(),
                    Err(e) => format!("blocked ({e})"),
                },
            ));
        }
        for (name, domain, kind, protocol) in [
            (
                "af-packet-socket",
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            ),
            ("af-inet-socket", libc::AF_INET, libc::SOCK_STREAM, 0),
        ] {
            // SAFETY: socket takes plain values; a returned fd is closed at once.
            let fd = unsafe { libc::socket(domain, kind, protocol) };
            let ok = fd >= 0;
            if ok {
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
            }
            lines.push((name, outcome(ok)));
        }
        // SAFETY: PTRACE_ATTACH to our parent; detached at once if it (wrongly) succeeds.
        let traced = unsafe {
            let parent = libc::getppid();
            let ok = libc::ptrace(libc::PTRACE_ATTACH, parent, 0usize, 0usize) == 0;
            if ok {
                libc::ptrace(libc::PTRACE_DETACH, parent, 0usize, 0usize);
            }
            ok
        };
        lines.push(("ptrace", outcome(traced)));
        let promotion = std::thread::Builder::new()
            .name("probe-rt".into())
            .spawn(crate::rt::promote_probe_thread)
            .ok()
            .and_then(|t| t.join().ok());
        lines.push((
            "rt-promotion-new-thread",
            promotion.unwrap_or_else(|| "no thread".into()),
        ));
        for (name, result) in lines {
            println!("sandbox-probe: {name}: {result}");
        }
        println!("sandbox-probe: done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_blocking_every_signal_is_recognised() {
        let signal = libc::SIGRTMAX() - 2;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let blocker = std::thread::spawn(move || {
            // SAFETY: sigset_t is plain data; the mask applies to this thread only.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            let _ = tid_tx.send(gettid());
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().expect("blocker started");
        assert!(blocks_signal(tid, signal));
        assert!(!blocks_signal(gettid(), signal));
        let _ = done_tx.send(());
        let _ = blocker.join();
    }

    #[test]
    fn allow_list_has_what_promotion_needs_and_nothing_dangerous() {
        let names: Vec<&str> = allowed_syscalls().iter().map(|(n, _)| *n).collect();
        for needed in [
            "SYS_sched_setscheduler",
            "SYS_sched_setattr",
            "SYS_sched_setparam",
            "SYS_capset",
            "SYS_capget",
            "SYS_futex",
            "SYS_clock_nanosleep",
        ] {
            assert!(names.contains(&needed), "{needed} missing");
        }
        for forbidden in [
            "SYS_execve",
            "SYS_execveat",
            "SYS_ptrace",
            "SYS_fork",
            "SYS_vfork",
            "SYS_kill",
            "SYS_mount",
            "SYS_setuid",
            "SYS_bpf",
            "SYS_process_vm_writev",
        ] {
            assert!(!names.contains(&forbidden), "{forbidden} allowed");
        }
        let mut numbers: Vec<i64> = allowed_syscalls().iter().map(|(_, n)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), names.len(), "a syscall is listed twice");
    }

    #[test]
    fn report_names_missing_layers() {
        let report = SandboxReport {
            mode: Mode::BestEffort,
            disabled_by_flag: false,
            caps: CapsOutcome::SysNiceOnly,
            no_new_privs: true,
            landlock: LandlockOutcome::Unsupported,
            seccomp: SeccompOutcome::Filter {
                blocked: Blocked::Errno,
                syscalls: 120,
            },
            tasks_covered: 5,
            tasks_total: 5,
        };
        assert_eq!(report.missing(), vec!["Landlock: not in this kernel"]);
        assert_eq!(report.short(), "sandbox partial");
        let text = report.to_string();
        assert!(text.contains("cap_sys_nice (permitted)"), "{text}");
        assert!(text.contains("seccomp errno (120 syscalls)"), "{text}");
        assert_eq!(report.to_json()["seccomp_syscalls"], 120);
        let off = SandboxReport::off(true);
        assert_eq!(off.short(), "SANDBOX OFF");
        assert!(off.to_string().contains("--no-sandbox"));
    }
}

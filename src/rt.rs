//! Real-time scheduling for the time-critical threads: probe, promotion, fallback, memory lock.
//!
//! The audio callback and the beat clock run `SCHED_FIFO` when the process may (it holds
//! `CAP_SYS_NICE`, or `RLIMIT_RTPRIO` is high enough), and keep playing at normal priority
//! with the best nice value and 1 ns timer slack when it may not — saying why, once per
//! thread role, with the remedy that fits.
//!
//! Split by where code runs:
//! - [`probe`], [`lock_memory`], [`log_pending_reports`], [`report`]: normal threads; they may
//!   allocate, read `/proc` and log.
//! - [`promote_current_thread`], [`prefault_stack`], [`current_thread_policy`]: safe inside the
//!   audio callback. They only make syscalls (no allocation, no locks, no logging) and record
//!   their outcome in a static of atomics, which [`log_pending_reports`] turns into log lines
//!   later on a normal thread.

use std::fmt;
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

/// Default `SCHED_FIFO` priority of the audio callback (and the WAV-render timer thread).
pub const DEFAULT_AUDIO_PRIORITY: u8 = 70;
/// Default `SCHED_FIFO` priority of the beat clock thread; above audio, its deadlines are tighter.
pub const DEFAULT_CLOCK_PRIORITY: u8 = 80;
/// Bytes of stack that [`prefault_stack`] touches.
pub const PREFAULT_STACK_BYTES: usize = 256 * 1024;

const CAP_SYS_NICE: u32 = 23;
const RLIM_INF: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Roles and settings
// ---------------------------------------------------------------------------------------------

/// Which time-critical thread a promotion is for; outcomes are recorded and logged per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// The audio callback thread (created by cpal, or by JACK which already runs it RT).
    Audio = 0,
    /// The beat clock / MIDI-file events thread.
    Clock = 1,
    /// The WAV-render timer thread, standing in for the audio callback when rendering to a file.
    Render = 2,
}

impl Role {
    /// All roles, in status-line order.
    pub const ALL: [Role; 3] = [Role::Audio, Role::Clock, Role::Render];

    /// Short lower-case name used in status lines and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Audio => "audio",
            Role::Clock => "clock",
            Role::Render => "render",
        }
    }

    /// The configured `SCHED_FIFO` priority for this role (render uses the audio priority).
    pub const fn priority(self, cfg: &RtSettings) -> u8 {
        match self {
            Role::Audio | Role::Render => cfg.audio_priority,
            Role::Clock => cfg.clock_priority,
        }
    }

    /// The configuration key that sets this role's priority (named in remedies).
    pub const fn priority_key(self) -> &'static str {
        match self {
            Role::Audio | Role::Render => "realtime.audio_priority",
            Role::Clock => "realtime.clock_priority",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of CPUs (0–63) as a bitmask; empty means "no affinity requested".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(pub u64);

impl CpuSet {
    /// The empty set: leave the threads' affinity alone.
    pub const NONE: CpuSet = CpuSet(0);

    /// True when no CPU is selected.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when `cpu` is in the set.
    pub const fn contains(self, cpu: usize) -> bool {
        cpu < 64 && self.0 & (1u64 << cpu) != 0
    }

    /// The set with `cpu` added; `None` if `cpu` is 64 or above.
    pub const fn with(self, cpu: usize) -> Option<CpuSet> {
        if cpu < 64 {
            Some(CpuSet(self.0 | (1u64 << cpu)))
        } else {
            None
        }
    }
}

/// Error parsing a `realtime.cpus` list such as `"2,3"` or `"1-3,6"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSetError {
    /// An item is not a number or a range of numbers.
    #[error("invalid CPU list item {0:?} (expected e.g. \"2,3\" or \"1-3\")")]
    Syntax(String),
    /// A CPU number is 64 or above.
    #[error("CPU {0} is out of range (0-63)")]
    OutOfRange(usize),
    /// A range whose end is before its start.
    #[error("CPU range {0}-{1} is reversed")]
    Reversed(usize, usize),
}

impl FromStr for CpuSet {
    type Err = CpuSetError;

    /// Parses the Linux cpu-list format: comma-separated numbers and `a-b` ranges.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = CpuSet::NONE;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let num = |t: &str| {
                t.trim()
                    .parse::<usize>()
                    .map_err(|_| CpuSetError::Syntax(item.to_string()))
            };
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(item)?, num(item)?),
            };
            if hi < lo {
                return Err(CpuSetError::Reversed(lo, hi));
            }
            for cpu in lo..=hi {
                set = set.with(cpu).ok_or(CpuSetError::OutOfRange(cpu))?;
            }
        }
        Ok(set)
    }
}

impl fmt::Display for CpuSet {
    /// Formats in cpu-list form (`"1-3,6"`), or `"none"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        let mut cpu = 0;
        while cpu < 64 {
            if !self.contains(cpu) {
                cpu += 1;
                continue;
            }
            let start = cpu;
            while cpu + 1 < 64 && self.contains(cpu + 1) {
                cpu += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == cpu {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{cpu}")?;
            }
            cpu += 1;
        }
        Ok(())
    }
}

/// The `realtime:` configuration; `Copy` so the audio callback can capture it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtSettings {
    /// `false` (`--no-rt` / `realtime: false`) turns promotion, nice, timer slack and affinity off.
    pub enabled: bool,
    /// `SCHED_FIFO` priority of the audio callback and the WAV-render timer (1–99).
    pub audio_priority: u8,
    /// `SCHED_FIFO` priority of the beat clock thread (1–99).
    pub clock_priority: u8,
    /// CPUs the RT threads are pinned to (`realtime.cpus`); empty = no pinning.
    pub cpus: CpuSet,
}

impl Default for RtSettings {
    fn default() -> Self {
        RtSettings {
            enabled: true,
            audio_priority: DEFAULT_AUDIO_PRIORITY,
            clock_priority: DEFAULT_CLOCK_PRIORITY,
            cpus: CpuSet::NONE,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probe
// ---------------------------------------------------------------------------------------------

/// The facts promotion decisions need, `Copy` so the audio callback can capture it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSummary {
    /// `CAP_SYS_NICE` is in the effective set of the probing thread.
    pub cap_sys_nice_effective: bool,
    /// `CAP_SYS_NICE` is in the permitted set (it can be raised to effective for a promotion).
    pub cap_sys_nice_permitted: bool,
    /// `RLIMIT_RTPRIO` soft limit (`u64::MAX` = unlimited).
    pub rtprio_soft: u64,
    /// `RLIMIT_RTPRIO` hard limit (`u64::MAX` = unlimited).
    pub rtprio_hard: u64,
    /// `RLIMIT_NICE` soft limit: the lowest nice allowed is `20 - limit`.
    pub nice_soft: u64,
    /// `cpu.rt_runtime_us` of our cgroup where RT group scheduling exists; `None` otherwise.
    pub cgroup_rt_runtime_us: Option<i64>,
    /// `/proc/sys/kernel/sched_rt_runtime_us` (-1 = unthrottled); `None` if unreadable.
    pub system_rt_runtime_us: Option<i64>,
    /// A seccomp filter (or strict mode) is active on this thread.
    pub seccomp: bool,
    /// `no_new_privs` is set (file capabilities would be ignored on exec).
    pub no_new_privs: bool,
}

impl Default for ProbeSummary {
    /// An unprivileged process with no budget or seccomp information.
    fn default() -> Self {
        ProbeSummary {
            cap_sys_nice_effective: false,
            cap_sys_nice_permitted: false,
            rtprio_soft: 0,
            rtprio_hard: 0,
            nice_soft: 0,
            cgroup_rt_runtime_us: None,
            system_rt_runtime_us: None,
            seccomp: false,
            no_new_privs: false,
        }
    }
}

impl ProbeSummary {
    /// What a promotion to `SCHED_FIFO` at `priority` is expected to give, without trying.
    ///
    /// For `backline check --system`; a seccomp filter's verdict cannot be predicted.
    pub fn predict(&self, priority: u8) -> Result<Via, FallbackReason> {
        if !(1..=99).contains(&priority) {
            return Err(FallbackReason::InvalidPriority);
        }
        let reason = decide(self, priority, libc::EPERM);
        let privileged = self.cap_sys_nice_effective
            || self.cap_sys_nice_permitted
            || self.rtprio_soft >= u64::from(priority);
        match reason {
            FallbackReason::CgroupBudgetZero | FallbackReason::SystemBudgetZero => Err(reason),
            _ if privileged => {
                let raised = ProbeSummary {
                    cap_sys_nice_effective: self.cap_sys_nice_effective
                        || self.cap_sys_nice_permitted,
                    ..*self
                };
                Ok(success_via(&raised, priority))
            }
            _ => Err(reason),
        }
    }
}

/// Everything the start-up probe found; `Display` gives the long form for `check --system`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The part promotion needs.
    pub summary: ProbeSummary,
    /// `RLIMIT_MEMLOCK` soft limit in bytes (`u64::MAX` = unlimited).
    pub memlock_soft: u64,
    /// `RLIMIT_MEMLOCK` hard limit in bytes (`u64::MAX` = unlimited).
    pub memlock_hard: u64,
    /// `RLIMIT_NICE` hard limit.
    pub nice_hard: u64,
    /// `CAP_IPC_LOCK` is effective (mlockall is not bound by `RLIMIT_MEMLOCK`).
    pub cap_ipc_lock_effective: bool,
    /// Our cgroup path in the hierarchy that holds the cpu controller (v1) or the unified one.
    pub cgroup: Option<String>,
    /// The `cpu.rt_runtime_us` file read for `summary.cgroup_rt_runtime_us`.
    pub cgroup_rt_file: Option<PathBuf>,
    /// `cpu.rt_period_us` next to it.
    pub cgroup_rt_period_us: Option<i64>,
    /// RT group scheduling seen in the kernel (`cpu.rt_runtime_us` exists somewhere we looked).
    pub rt_group_sched: bool,
    /// The `Seccomp:` mode from `/proc/self/status` (0 off, 1 strict, 2 filter), if read.
    pub seccomp_mode: Option<u8>,
    /// Problems met while probing (unreadable files and the like); never fatal.
    pub notes: Vec<String>,
}

impl Probe {
    /// The `Copy` part for promotion decisions.
    pub fn summary(&self) -> ProbeSummary {
        self.summary
    }
}

static CGROUP_RT_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Probes capabilities, rlimits, RT budgets, seccomp and no_new_privs; reads only.
///
/// Call on a normal thread at start-up (before the sandbox drops capabilities).
pub fn probe() -> Probe {
    let mut notes = Vec::new();
    let cap = |set: caps::CapSet, c: caps::Capability, notes: &mut Vec<String>| {
        caps::has_cap(None, set, c).unwrap_or_else(|e| {
            notes.push(format!("reading {c} ({set:?}): {e}"));
            false
        })
    };
    let nice_eff = cap(
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_NICE,
        &mut notes,
    );
    let nice_prm = cap(
        caps::CapSet::Permitted,
        caps::Capability::CAP_SYS_NICE,
        &mut notes,
    );
    let ipc_lock = cap(
        caps::CapSet::Effective,
        caps::Capability::CAP_IPC_LOCK,
        &mut notes,
    );
    let (rtprio_soft, rtprio_hard) = get_rlimit(libc::RLIMIT_RTPRIO).unwrap_or_else(|e| {
        notes.push(format!("getrlimit(RLIMIT_RTPRIO): errno {e}"));
        (0, 0)
    });
    let (nice_soft, nice_hard) = get_rlimit(libc::RLIMIT_NICE).unwrap_or((0, 0));
    let (memlock_soft, memlock_hard) = get_rlimit(libc::RLIMIT_MEMLOCK).unwrap_or((0, 0));

    let system_rt_runtime_us = read_i64("/proc/sys/kernel/sched_rt_runtime_us");
    if system_rt_runtime_us.is_none() {
        notes.push("cannot read /proc/sys/kernel/sched_rt_runtime_us".into());
    }

    let (seccomp_mode, no_new_privs) = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => parse_status(&s),
        Err(e) => {
            notes.push(format!("cannot read /proc/self/status: {e}"));
            (None, None)
        }
    };

    let cg = match (
        std::fs::read_to_string("/proc/self/cgroup"),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) {
        (Ok(cgroup), Ok(mountinfo)) => find_rt_cgroup(&cgroup, &mountinfo),
        _ => {
            notes.push("cannot read /proc/self/cgroup or mountinfo".into());
            CgroupRt::default()
        }
    };
    let cgroup_rt_runtime_us = cg.file.as_deref().and_then(read_i64);
    let cgroup_rt_period_us = cg
        .file
        .as_deref()
        .and_then(|f| read_i64(f.with_file_name("cpu.rt_period_us")));
    if let Some(f) = &cg.file {
        if cgroup_rt_runtime_us.is_none() {
            notes.push(format!("cannot read {}", f.display()));
        } else {
            let _ = CGROUP_RT_FILE.set(f.clone());
        }
    }

    Probe {
        summary: ProbeSummary {
            cap_sys_nice_effective: nice_eff,
            cap_sys_nice_permitted: nice_prm,
            rtprio_soft,
            rtprio_hard,
            nice_soft,
            cgroup_rt_runtime_us,
            system_rt_runtime_us,
            seccomp: seccomp_mode.is_some_and(|m| m != 0),
            no_new_privs: no_new_privs.unwrap_or(false),
        },
        memlock_soft,
        memlock_hard,
        nice_hard,
        cap_ipc_lock_effective: ipc_lock,
        cgroup: cg.path,
        cgroup_rt_file: cg.file,
        cgroup_rt_period_us,
        rt_group_sched: cg.rt_group_sched,
        seccomp_mode,
        notes,
    }
}

fn get_rlimit(resource: RlimitResource) -> Result<(u64, u64), i32> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut rl) } == 0 {
        #[allow(clippy::useless_conversion)] // rlim_t is u32 on 32-bit targets (armv7)
        let conv = |v: libc::rlim_t| {
            if v == libc::RLIM_INFINITY {
                RLIM_INF
            } else {
                u64::from(v)
            }
        };
        Ok((conv(rl.rlim_cur), conv(rl.rlim_max)))
    } else {
        Err(errno())
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type RlimitResource = libc::c_int;

fn read_i64(path: impl AsRef<Path>) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `(Seccomp mode, NoNewPrivs)` from the text of `/proc/self/status`.
fn parse_status(status: &str) -> (Option<u8>, Option<bool>) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u8>().ok())
    };
    (field("Seccomp:"), field("NoNewPrivs:").map(|v| v != 0))
}

#[derive(Default, Debug, PartialEq, Eq)]
struct CgroupRt {
    path: Option<String>,
    file: Option<PathBuf>,
    rt_group_sched: bool,
}

/// Locates our cgroup's `cpu.rt_runtime_us`: the v1 hierarchy carrying the `cpu` controller
/// first, else the unified (v2) hierarchy, where the file only exists on kernels with RT group
/// scheduling for v2. Existence is checked on the real filesystem.
fn find_rt_cgroup(proc_cgroup: &str, mountinfo: &str) -> CgroupRt {
    let mut out = CgroupRt::default();
    let v1 = proc_cgroup.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        ctrls.split(',').any(|c| c == "cpu").then_some(path)
    });
    let v2 = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|_| v1.is_none());
    let (path, want_v1) = match (v1, v2) {
        (Some(p), _) => (p, true),
        (None, Some(p)) => (p, false),
        _ => return out,
    };
    out.path = Some(path.to_string());
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let lf: Vec<&str> = left.split(' ').collect();
        let rf: Vec<&str> = right.split(' ').collect();
        if lf.len() < 5 || rf.len() < 3 {
            continue;
        }
        let matches = if want_v1 {
            rf[0] == "cgroup" && rf[2].split(',').any(|o| o == "cpu")
        } else {
            rf[0] == "cgroup2"
        };
        if !matches {
            continue;
        }
        let root = unescape_mount(lf[3]);
        let mount_point = PathBuf::from(unescape_mount(lf[4]));
        let rel = if root == "/" {
            Some(path)
        } else {
            path.strip_prefix(root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let Some(rel) = rel else { continue };
        if mount_point.join("cpu.rt_runtime_us").exists() {
            out.rt_group_sched = true;
        }
        let file = mount_point
            .join(rel.trim_start_matches('/'))
            .join("cpu.rt_runtime_us");
        if file.exists() {
            out.rt_group_sched = true;
            out.file = Some(file);
        }
        break;
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

/// A scheduling policy as reported for a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_OTHER` (normal time sharing).
    Other,
    /// `SCHED_FIFO`.
    Fifo,
    /// `SCHED_RR`.
    Rr,
}

impl Policy {
    fn from_raw(p: i32) -> Policy {
        match p {
            libc::SCHED_FIFO => Policy::Fifo,
            libc::SCHED_RR => Policy::Rr,
            _ => Policy::Other,
        }
    }

    /// Short name: `FIFO`, `RR` or `normal`.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::Other => "normal",
            Policy::Fifo => "FIFO",
            Policy::Rr => "RR",
        }
    }
}

/// How a real-time policy was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// We set it, allowed by `CAP_SYS_NICE`.
    Capability,
    /// We set it, allowed by `RLIMIT_RTPRIO` without the capability.
    Rlimit,
    /// The thread was already real-time when we got it (JACK runs its process thread RT);
    /// left unchanged.
    AlreadyRt,
}

/// Why `SCHED_FIFO` was not obtained; see [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// EPERM: no `CAP_SYS_NICE` and `RLIMIT_RTPRIO` is 0.
    NoPrivilege,
    /// EPERM: no `CAP_SYS_NICE`, and the requested priority is above `RLIMIT_RTPRIO`.
    AboveRlimit {
        /// The soft `RLIMIT_RTPRIO`.
        limit: u8,
    },
    /// EPERM: our cgroup's `cpu.rt_runtime_us` is 0 (fails even for root).
    CgroupBudgetZero,
    /// EPERM: `kernel.sched_rt_runtime_us` is 0.
    SystemBudgetZero,
    /// EPERM despite privilege with a seccomp filter active (systemd `RestrictRealtime=`).
    Seccomp,
    /// EPERM despite privilege, no seccomp filter seen (e.g. a user namespace whose
    /// `CAP_SYS_NICE` does not count for the host, or a filter installed after the probe).
    Denied,
    /// EINVAL: the configured priority is not a valid `SCHED_FIFO` priority (1–99).
    InvalidPriority,
    /// Any other error; the errno is in the outcome.
    Error,
}

/// Picks the reason for a failed `pthread_setschedparam(SCHED_FIFO, requested_priority)`.
///
/// Pure, so every combination can be unit-tested. Checks follow the kernel's order: the
/// privilege check (capability or rlimit), then the RT group budget, then (since seccomp
/// cannot be seen failing) a filter is blamed only when privilege and budget were fine.
pub fn decide(probe: &ProbeSummary, requested_priority: u8, errno: i32) -> FallbackReason {
    if errno == libc::EINVAL {
        return if (1..=99).contains(&requested_priority) {
            FallbackReason::Error
        } else {
            FallbackReason::InvalidPriority
        };
    }
    if errno != libc::EPERM {
        return FallbackReason::Error;
    }
    let has_cap = probe.cap_sys_nice_effective || probe.cap_sys_nice_permitted;
    if !has_cap {
        if probe.rtprio_soft == 0 {
            return FallbackReason::NoPrivilege;
        }
        if u64::from(requested_priority) > probe.rtprio_soft {
            return FallbackReason::AboveRlimit {
                limit: probe.rtprio_soft.min(255) as u8,
            };
        }
    }
    if probe.cgroup_rt_runtime_us == Some(0) {
        return FallbackReason::CgroupBudgetZero;
    }
    if probe.system_rt_runtime_us == Some(0) {
        return FallbackReason::SystemBudgetZero;
    }
    if probe.seccomp {
        FallbackReason::Seccomp
    } else {
        FallbackReason::Denied
    }
}

/// How a successful promotion was allowed: the capability if we hold it, else the rlimit.
fn success_via(probe: &ProbeSummary, requested_priority: u8) -> Via {
    if !probe.cap_sys_nice_effective && probe.rtprio_soft >= u64::from(requested_priority) {
        Via::Rlimit
    } else {
        Via::Capability
    }
}

impl FallbackReason {
    /// One short phrase for the status line.
    pub fn phrase(self, requested_priority: u8) -> Phrase {
        Phrase {
            reason: self,
            requested: requested_priority,
        }
    }

    /// The remedy that fits this reason; `exe` is the path of the binary for `setcap`.
    pub fn remedy(self, role: Role, requested_priority: u8, exe: &str) -> String {
        let rt_file = CGROUP_RT_FILE
            .get()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "cpu.rt_runtime_us of the service's cgroup".to_string());
        match self {
            FallbackReason::NoPrivilege => format!(
                "run `setcap cap_sys_nice+ep {exe}`, or run it from the shipped systemd unit, \
                 or add `@audio - rtprio 95` to /etc/security/limits.conf and join the audio group"
            ),
            FallbackReason::AboveRlimit { limit } => format!(
                "set {} to {limit} or less, or raise the limit (`@audio - rtprio 95` in \
                 /etc/security/limits.conf), or run `setcap cap_sys_nice+ep {exe}` \
                 (asked for {requested_priority})",
                role.priority_key()
            ),
            FallbackReason::CgroupBudgetZero => format!(
                "give the cgroup an RT budget, e.g. `echo 950000 > {rt_file}` (parent cgroups \
                 first), or run outside that cgroup"
            ),
            FallbackReason::SystemBudgetZero => {
                "raise the RT budget: `sysctl kernel.sched_rt_runtime_us=950000`".to_string()
            }
            FallbackReason::Seccomp => "remove `RestrictRealtime=yes` from the service unit, or \
                 allow sched_setscheduler in the seccomp filter"
                .to_string(),
            FallbackReason::Denied => {
                "the kernel refused despite CAP_SYS_NICE: a user namespace (container) does not \
                 grant RT scheduling — run on the host or grant it to the container"
                    .to_string()
            }
            FallbackReason::InvalidPriority => {
                format!("set {} between 1 and 99", role.priority_key())
            }
            FallbackReason::Error => "none known".to_string(),
        }
    }
}

/// Display helper returned by [`FallbackReason::phrase`].
#[derive(Clone, Copy, Debug)]
pub struct Phrase {
    reason: FallbackReason,
    requested: u8,
}

impl fmt::Display for Phrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            FallbackReason::NoPrivilege => f.write_str("no CAP_SYS_NICE and RLIMIT_RTPRIO is 0"),
            FallbackReason::AboveRlimit { limit } => {
                write!(f, "priority {} above RLIMIT_RTPRIO {limit}", self.requested)
            }
            FallbackReason::CgroupBudgetZero => f.write_str("RT group budget is 0"),
            FallbackReason::SystemBudgetZero => f.write_str("sched_rt_runtime_us is 0"),
            FallbackReason::Seccomp => f.write_str("blocked by seccomp or RestrictRealtime"),
            FallbackReason::Denied => f.write_str("refused despite CAP_SYS_NICE"),
            FallbackReason::InvalidPriority => {
                write!(f, "priority {} invalid (1-99)", self.requested)
            }
            FallbackReason::Error => f.write_str("sched_setscheduler failed"),
        }
    }
}

/// What happened to a thread's scheduling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Real-time scheduling is off on purpose (`--no-rt` / `realtime: false`).
    Off,
    /// The thread runs real-time.
    Realtime {
        /// `Fifo`, or `Rr` if JACK chose it.
        policy: Policy,
        /// The priority the thread has.
        priority: u8,
        /// How it was obtained.
        via: Via,
    },
    /// The thread runs `SCHED_OTHER`.
    Fallback {
        /// Why promotion failed.
        reason: FallbackReason,
        /// errno of `pthread_setschedparam`.
        errno: i32,
        /// The thread's nice value afterwards, if it could be read.
        nice: Option<i8>,
        /// `PR_SET_TIMERSLACK` 1 ns succeeded.
        timer_slack: bool,
    },
}

/// Result of applying `realtime.cpus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// No CPUs configured, or RT off.
    NotRequested,
    /// `sched_setaffinity` succeeded.
    Applied,
    /// `sched_setaffinity` failed with this errno.
    Failed(i32),
}

/// The outcome of [`promote_current_thread`]; plain values, `Copy`, built without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The role promoted.
    pub role: Role,
    /// The configured priority that was asked for.
    pub requested_priority: u8,
    /// Policy obtained, or why not.
    pub outcome: Outcome,
    /// What happened to `realtime.cpus`.
    pub affinity: Affinity,
}

impl Promotion {
    /// True when the thread runs real-time.
    pub fn is_realtime(&self) -> bool {
        matches!(self.outcome, Outcome::Realtime { .. })
    }

    /// Packs into a `u64` for [`RtState`]; `0` is never produced (it means "nothing yet").
    /// The role is not packed: each role has its own slot.
    ///
    /// Bits: 0–2 kind, 3–4 policy, 5–6 via, 7–10 reason, 11 timer slack, 12 nice known,
    /// 13–14 affinity, 16–23 priority, 24–31 requested, 32–39 rlimit, 40–47 nice,
    /// 48–55 errno, 56–63 affinity errno.
    fn pack(&self) -> u64 {
        let mut v = u64::from(self.requested_priority) << 24;
        match self.outcome {
            Outcome::Off => v |= 1,
            Outcome::Realtime {
                policy,
                priority,
                via,
            } => {
                let policy = match policy {
                    Policy::Other => 0u64,
                    Policy::Fifo => 1,
                    Policy::Rr => 2,
                };
                let via = match via {
                    Via::Capability => 0u64,
                    Via::Rlimit => 1,
                    Via::AlreadyRt => 2,
                };
                v |= 2 | policy << 3 | via << 5 | u64::from(priority) << 16;
            }
            Outcome::Fallback {
                reason,
                errno,
                nice,
                timer_slack,
            } => {
                let (code, limit) = match reason {
                    FallbackReason::NoPrivilege => (0u64, 0u64),
                    FallbackReason::AboveRlimit { limit } => (1, u64::from(limit)),
                    FallbackReason::CgroupBudgetZero => (2, 0),
                    FallbackReason::SystemBudgetZero => (3, 0),
                    FallbackReason::Seccomp => (4, 0),
                    FallbackReason::Denied => (5, 0),
                    FallbackReason::InvalidPriority => (6, 0),
                    FallbackReason::Error => (7, 0),
                };
                v |= 3 | code << 7 | u64::from(timer_slack) << 11 | limit << 32;
                v |= (errno.clamp(0, 255) as u64) << 48;
                if let Some(n) = nice {
                    v |= 1 << 12 | u64::from(n as u8) << 40;
                }
            }
        }
        v |= match self.affinity {
            Affinity::NotRequested => 0,
            Affinity::Applied => 1 << 13,
            Affinity::Failed(e) => 2 << 13 | (e.clamp(0, 255) as u64) << 56,
        };
        v
    }

    /// Inverse of [`Promotion::pack`]; `None` for 0 (nothing recorded) or garbage.
    fn unpack(role: Role, v: u64) -> Option<Promotion> {
        let bits = |shift: u32, width: u32| (v >> shift) & ((1u64 << width) - 1);
        let outcome = match bits(0, 3) {
            1 => Outcome::Off,
            2 => Outcome::Realtime {
                policy: match bits(3, 2) {
                    0 => Policy::Other,
                    1 => Policy::Fifo,
                    2 => Policy::Rr,
                    _ => return None,
                },
                priority: bits(16, 8) as u8,
                via: match bits(5, 2) {
                    0 => Via::Capability,
                    1 => Via::Rlimit,
                    2 => Via::AlreadyRt,
                    _ => return None,
                },
            },
            3 => Outcome::Fallback {
                reason: match bits(7, 4) {
                    0 => FallbackReason::NoPrivilege,
                    1 => FallbackReason::AboveRlimit {
                        limit: bits(32, 8) as u8,
                    },
                    2 => FallbackReason::CgroupBudgetZero,
                    3 => FallbackReason::SystemBudgetZero,
                    4 => FallbackReason::Seccomp,
                    5 => FallbackReason::Denied,
                    6 => FallbackReason::InvalidPriority,
                    7 => FallbackReason::Error,
                    _ => return None,
                },
                errno: bits(48, 8) as i32,
                nice: (bits(12, 1) == 1).then_some(bits(40, 8) as u8 as i8),
                timer_slack: bits(11, 1) == 1,
            },
            _ => return None,
        };
        let affinity = match bits(13, 2) {
            0 => Affinity::NotRequested,
            1 => Affinity::Applied,
            2 => Affinity::Failed(bits(56, 8) as i32),
            _ => return None,
        };
        Some(Promotion {
            role,
            requested_priority: bits(24, 8) as u8,
            outcome,
            affinity,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Per-role state (atomics only)
// ---------------------------------------------------------------------------------------------

const LOGGED_INFO: u8 = 1;
const LOGGED_WARN: u8 = 2;
const LOGGED_AFFINITY: u8 = 4;

/// The latest [`Promotion`] of each role, packed in atomics so an RT thread can record it,
/// plus which log lines have been emitted for each role.
#[derive(Debug)]
pub struct RtState {
    slots: [AtomicU64; 3],
    logged: [AtomicU8; 3],
}

impl Default for RtState {
    fn default() -> Self {
        RtState::new()
    }
}

impl RtState {
    /// An empty state (nothing recorded, nothing logged).
    pub const fn new() -> Self {
        RtState {
            slots: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            logged: [AtomicU8::new(0), AtomicU8::new(0), AtomicU8::new(0)],
        }
    }

    /// Records a promotion as the current state of its role; one atomic store, RT-safe.
    pub fn record(&self, p: &Promotion) {
        self.slots[p.role as usize].store(p.pack(), Ordering::Release);
    }

    /// The latest promotion recorded for `role`.
    pub fn get(&self, role: Role) -> Option<Promotion> {
        Promotion::unpack(role, self.slots[role as usize].load(Ordering::Acquire))
    }

    /// Logs what has not been logged yet: at most one INFO (real-time or off) and at most one
    /// WARN (fallback) per role over the life of the process, plus at most one WARN about a
    /// failed CPU pinning. Returns the number of lines emitted. Normal threads only.
    pub fn log_pending(&self) -> usize {
        let mut emitted = 0;
        for role in Role::ALL {
            let Some(p) = self.get(role) else { continue };
            let flag = match p.outcome {
                Outcome::Off | Outcome::Realtime { .. } => LOGGED_INFO,
                Outcome::Fallback { .. } => LOGGED_WARN,
            };
            if self.claim(role, flag) {
                emitted += 1;
                let report = RtReport { promotion: p };
                match p.outcome {
                    Outcome::Off => tracing::info!(
                        role = role.name(),
                        "real-time scheduling off for the {role} thread (--no-rt / realtime: false)"
                    ),
                    Outcome::Realtime { .. } => {
                        tracing::info!(role = role.name(), "real-time: {report}")
                    }
                    Outcome::Fallback { reason, errno, .. } => tracing::warn!(
                        role = role.name(),
                        errno,
                        "the {role} thread could not get SCHED_FIFO {} ({}): {}; {}. Remedy: {}",
                        p.requested_priority,
                        errno_name(errno),
                        reason.phrase(p.requested_priority),
                        report.fallback_state(),
                        reason.remedy(role, p.requested_priority, &exe_path()),
                    ),
                }
            }
            if let Affinity::Failed(e) = p.affinity {
                if self.claim(role, LOGGED_AFFINITY) {
                    emitted += 1;
                    tracing::warn!(
                        role = role.name(),
                        errno = e,
                        "could not pin the {role} thread to realtime.cpus ({}); it runs on any CPU",
                        errno_name(e)
                    );
                }
            }
        }
        emitted
    }

    /// Sets `flag` for `role`; true if this call set it (so exactly one caller logs).
    fn claim(&self, role: Role, flag: u8) -> bool {
        self.logged[role as usize].fetch_or(flag, Ordering::AcqRel) & flag == 0
    }
}

static STATE: RtState = RtState::new();

/// Logs newly recorded promotion outcomes (see [`RtState::log_pending`]) from the global
/// state; call periodically from a normal thread. Returns the number of lines emitted.
pub fn log_pending_reports() -> usize {
    STATE.log_pending()
}

/// The current real-time state of `role`, for status lines; `None` before its first promotion.
pub fn report(role: Role) -> Option<RtReport> {
    STATE.get(role).map(|promotion| RtReport { promotion })
}

// ---------------------------------------------------------------------------------------------
// Promotion (RT-safe: syscalls only)
// ---------------------------------------------------------------------------------------------

/// Promotes the calling thread to `SCHED_FIFO` at the role's configured priority, or falls
/// back to `SCHED_OTHER` with the best nice value allowed and 1 ns timer slack; applies
/// `realtime.cpus`; records the outcome for [`log_pending_reports`] and [`report`].
///
/// Safe inside the audio callback: no allocation, no locks, no logging — only
/// `pthread_getschedparam`/`pthread_setschedparam`, `capget`/`capset`, `getrlimit`,
/// `getpriority`/`setpriority`, `prctl`, `sched_setaffinity` and `gettid`. One attempt, never
/// a retry. An audio thread that is already `SCHED_FIFO`/`SCHED_RR` (JACK) is left as it is.
/// If `CAP_SYS_NICE` is permitted but not effective (after the sandbox's capability drop) it
/// is raised for the call and lowered again. `probe` is live-refreshed for capabilities,
/// rlimits and seccomp before a failure is explained.
pub fn promote_current_thread(role: Role, cfg: &RtSettings, probe: &ProbeSummary) -> Promotion {
    promote_into(&STATE, role, cfg, probe)
}

/// Test-only (`sandbox-probe`): promotes the calling thread to `SCHED_FIFO` at the default
/// audio priority the way [`promote_current_thread`] does (raising `CAP_SYS_NICE` if it is
/// permitted), without recording a role; returns the outcome as text, e.g. `FIFO 70`.
#[cfg(feature = "sandbox-probe")]
pub fn promote_probe_thread() -> String {
    let probe = ProbeSummary::default();
    match promote_self(DEFAULT_AUDIO_PRIORITY, &probe) {
        Outcome::Realtime {
            policy, priority, ..
        } => format!("{policy:?} {priority}"),
        Outcome::Fallback { errno, .. } => format!("normal priority ({})", errno_name(errno)),
        other => format!("{other:?}"),
    }
}

/// Promotes a helper of `role` (the beat clock's standby writer) like
/// [`promote_current_thread`] — `realtime.cpus`, then SCHED_FIFO at the role's priority —
/// without recording it: the role's own thread is the one the status line and the report
/// speak for. True when the calling thread now runs real-time. Same RT-safety as
/// [`promote_current_thread`].
pub fn promote_helper_thread(role: Role, cfg: &RtSettings, probe: &ProbeSummary) -> bool {
    promote_into(&RtState::new(), role, cfg, probe).is_realtime()
}

fn promote_into(state: &RtState, role: Role, cfg: &RtSettings, probe: &ProbeSummary) -> Promotion {
    let requested = role.priority(cfg);
    if !cfg.enabled {
        let p = Promotion {
            role,
            requested_priority: requested,
            outcome: Outcome::Off,
            affinity: Affinity::NotRequested,
        };
        state.record(&p);
        return p;
    }
    let affinity = apply_affinity(cfg.cpus);
    let (policy, priority) = current_thread_policy();
    let outcome = if role == Role::Audio && is_rt_policy(policy) {
        Outcome::Realtime {
            policy: Policy::from_raw(policy),
            priority: priority.clamp(0, 255) as u8,
            via: Via::AlreadyRt,
        }
    } else {
        promote_self(requested, probe)
    };
    let p = Promotion {
        role,
        requested_priority: requested,
        outcome,
        affinity,
    };
    state.record(&p);
    p
}

fn promote_self(requested: u8, probe: &ProbeSummary) -> Outcome {
    let mut live = *probe;
    let caps = cap_get();
    let mut raised = false;
    if let Some(c) = caps {
        let eff = c[0].effective & (1 << CAP_SYS_NICE) != 0;
        let prm = c[0].permitted & (1 << CAP_SYS_NICE) != 0;
        if prm && !eff {
            let mut up = c;
            up[0].effective |= 1 << CAP_SYS_NICE;
            raised = cap_set(&up);
        }
        live.cap_sys_nice_effective = eff || raised;
        live.cap_sys_nice_permitted = prm;
    }
    if let Ok((soft, hard)) = get_rlimit(libc::RLIMIT_RTPRIO) {
        live.rtprio_soft = soft;
        live.rtprio_hard = hard;
    }
    let err = set_fifo(requested);
    let outcome = if err == 0 {
        let (policy, priority) = match current_thread_policy() {
            (-1, _) => (libc::SCHED_FIFO, i32::from(requested)),
            read_back => read_back,
        };
        Outcome::Realtime {
            policy: Policy::from_raw(policy),
            priority: priority.clamp(0, 255) as u8,
            via: success_via(&live, requested),
        }
    } else {
        // SAFETY: PR_GET_SECCOMP takes no pointer; 2 = filter mode, -1 = not available.
        let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP) };
        if mode >= 0 {
            live.seccomp = mode != 0;
        }
        if let Ok((soft, _)) = get_rlimit(libc::RLIMIT_NICE) {
            live.nice_soft = soft;
        }
        let reason = decide(&live, requested, err);
        let nice = lower_nice(&live);
        // SAFETY: PR_SET_TIMERSLACK takes a plain value (nanoseconds) for the calling thread.
        let timer_slack = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) } == 0;
        Outcome::Fallback {
            reason,
            errno: err,
            nice,
            timer_slack,
        }
    };
    if raised {
        if let Some(c) = caps {
            cap_set(&c);
        }
    }
    outcome
}

fn is_rt_policy(policy: i32) -> bool {
    policy == libc::SCHED_FIFO || policy == libc::SCHED_RR
}

/// `pthread_setschedparam(self, SCHED_FIFO, priority)`; returns its error number (0 = ok).
fn set_fifo(priority: u8) -> i32 {
    // SAFETY: sched_param is plain data; zeroed is valid for all its fields.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = i32::from(priority);
    // SAFETY: pthread_self() is the calling thread; param outlives the call.
    unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) }
}

/// Lowers the calling thread's nice value as far as allowed: -20 with `CAP_SYS_NICE`, else
/// `20 - RLIMIT_NICE`. One attempt; returns the nice value the thread has afterwards.
fn lower_nice(live: &ProbeSummary) -> Option<i8> {
    let tid = gettid();
    let floor: i32 = if live.cap_sys_nice_effective {
        -20
    } else {
        (20 - live.nice_soft.min(40) as i32).clamp(-20, 19)
    };
    set_errno(0);
    // SAFETY: plain syscall on our own thread id (nice is per thread on Linux).
    let cur = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    let cur = if cur == -1 && errno() != 0 {
        None
    } else {
        Some(cur)
    };
    if cur.map_or(true, |c| floor < c) {
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, floor) } == 0 {
            return Some(floor as i8);
        }
    }
    cur.map(|c| c.clamp(-20, 19) as i8)
}

fn apply_affinity(cpus: CpuSet) -> Affinity {
    if cpus.is_empty() {
        return Affinity::NotRequested;
    }
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..64 {
        if cpus.contains(cpu) {
            // SAFETY: cpu < 64 is within cpu_set_t's 1024 bits.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: pid 0 = the calling thread; set lives on our stack for the call.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Affinity::Applied
    } else {
        Affinity::Failed(errno())
    }
}

/// The calling thread's `(policy, priority)` from `pthread_getschedparam`, e.g.
/// `(libc::SCHED_FIFO, 70)`; `(-1, 0)` if it fails. RT-safe; also a test helper.
pub fn current_thread_policy() -> (i32, i32) {
    let mut policy = 0;
    // SAFETY: sched_param is plain data; zeroed is valid.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_self() is the calling thread; both out-pointers are ours.
    let r = unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
    if r == 0 {
        (policy, param.sched_priority)
    } else {
        (-1, 0)
    }
}

/// Touches [`PREFAULT_STACK_BYTES`] of the calling thread's stack so the RT thread takes no
/// page faults on it later (with `mlockall` the pages then stay resident). RT-safe; call
/// once at the start of each RT thread, right after [`promote_current_thread`].
#[inline(never)]
pub fn prefault_stack() {
    let mut buf = MaybeUninit::<[u8; PREFAULT_STACK_BYTES]>::uninit();
    let base = buf.as_mut_ptr().cast::<u8>();
    let mut i = 0;
    while i < PREFAULT_STACK_BYTES {
        // SAFETY: i < PREFAULT_STACK_BYTES, inside buf; a volatile write is not optimised away.
        unsafe { std::ptr::write_volatile(base.add(i), 0) };
        i += 1024;
    }
    black_box(&mut buf);
}

fn gettid() -> libc::id_t {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: as in errno().
    unsafe { *libc::__errno_location() = v }
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

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets via raw `capget` (the caps crate allocates).
fn cap_get() -> Option<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: v3 header with two data elements, as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    (r == 0).then_some(data)
}

/// Sets the calling thread's capability sets via raw `capset`; true on success.
fn cap_set(data: &[CapData; 2]) -> bool {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: v3 header with two data elements, as the kernel expects.
    unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) == 0 }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::ESRCH => "ESRCH",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::EFAULT => "EFAULT",
        _ => "error",
    }
}

fn exe_path() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/path/to/backline".to_string())
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// The real-time state of one thread role. `Display` is one short phrase for the status line
/// ("audio FIFO 70 (CAP_SYS_NICE)"); [`RtReport::long`] is the form for `check --system`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtReport {
    /// The latest promotion of this role.
    pub promotion: Promotion,
}

impl RtReport {
    /// The role reported on.
    pub fn role(&self) -> Role {
        self.promotion.role
    }

    /// True when real-time was wanted but not obtained ("degraded", as opposed to "off").
    pub fn is_degraded(&self) -> bool {
        matches!(self.promotion.outcome, Outcome::Fallback { .. })
    }

    /// What the thread runs with after a fallback, e.g. "running at normal priority, nice -20,
    /// timer slack 1 ns".
    fn fallback_state(&self) -> String {
        let Outcome::Fallback {
            nice, timer_slack, ..
        } = self.promotion.outcome
        else {
            return String::new();
        };
        let mut s = String::from("running at normal priority");
        if let Some(n) = nice {
            s.push_str(&format!(", nice {n}"));
        }
        if timer_slack {
            s.push_str(", timer slack 1 ns");
        }
        s
    }

    /// Multi-line description with policy, how it was obtained or why not, errno, nice,
    /// timer slack, CPU pinning and the remedy.
    pub fn long(&self) -> String {
        let p = &self.promotion;
        let role = p.role;
        let mut s = match p.outcome {
            Outcome::Off => format!("{role}: real-time off (--no-rt / realtime: false)"),
            Outcome::Realtime {
                policy,
                priority,
                via,
            } => {
                let how = match via {
                    Via::Capability => "set by backline, allowed by CAP_SYS_NICE".to_string(),
                    Via::Rlimit => "set by backline, allowed by RLIMIT_RTPRIO".to_string(),
                    Via::AlreadyRt if role == Role::Audio => format!(
                        "set by JACK, left unchanged (configured {} is not used)",
                        p.requested_priority
                    ),
                    Via::AlreadyRt => "already real-time, left unchanged".to_string(),
                };
                format!("{role}: SCHED_{} {priority}, {how}", policy.name())
            }
            Outcome::Fallback { reason, errno, .. } => format!(
                "{role}: SCHED_OTHER (SCHED_FIFO {} refused: {} {errno})\n  reason: {}\n  now: {}\n  remedy: {}",
                p.requested_priority,
                errno_name(errno),
                reason.phrase(p.requested_priority),
                self.fallback_state(),
                reason.remedy(role, p.requested_priority, &exe_path()),
            ),
        };
        match p.affinity {
            Affinity::NotRequested => {}
            Affinity::Applied => s.push_str("\n  pinned to realtime.cpus"),
            Affinity::Failed(e) => s.push_str(&format!(
                "\n  pinning to realtime.cpus failed ({} {e})",
                errno_name(e)
            )),
        }
        s
    }
}

impl fmt::Display for RtReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.promotion;
        match p.outcome {
            Outcome::Off => write!(f, "{} RT off", p.role),
            Outcome::Realtime {
                policy,
                priority,
                via,
            } => {
                let how = match via {
                    Via::Capability => "CAP_SYS_NICE",
                    Via::Rlimit => "RLIMIT_RTPRIO",
                    Via::AlreadyRt if p.role == Role::Audio => "JACK",
                    Via::AlreadyRt => "inherited",
                };
                write!(f, "{} {} {priority} ({how})", p.role, policy.name())
            }
            Outcome::Fallback { reason, .. } => write!(
                f,
                "{} normal: {}",
                p.role,
                reason.phrase(p.requested_priority)
            ),
        }
    }
}

fn fmt_limit(v: u64) -> String {
    if v == RLIM_INF {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

fn fmt_bytes(v: u64) -> String {
    if v == RLIM_INF {
        "unlimited".to_string()
    } else if v >= 1 << 20 && v % (1 << 20) == 0 {
        format!("{} MiB", v >> 20)
    } else if v >= 1 << 10 && v % (1 << 10) == 0 {
        format!("{} KiB", v >> 10)
    } else {
        format!("{v} B")
    }
}

impl fmt::Display for Probe {
    /// Multi-line form for `backline check --system`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "CAP_SYS_NICE: effective {}, permitted {}",
            yn(s.cap_sys_nice_effective),
            yn(s.cap_sys_nice_permitted)
        )?;
        writeln!(
            f,
            "RLIMIT_RTPRIO: soft {}, hard {}",
            fmt_limit(s.rtprio_soft),
            fmt_limit(s.rtprio_hard)
        )?;
        writeln!(
            f,
            "RLIMIT_NICE: soft {}, hard {}",
            fmt_limit(s.nice_soft),
            fmt_limit(self.nice_hard)
        )?;
        writeln!(
            f,
            "RLIMIT_MEMLOCK: soft {}, hard {} (CAP_IPC_LOCK {})",
            fmt_bytes(self.memlock_soft),
            fmt_bytes(self.memlock_hard),
            yn(self.cap_ipc_lock_effective)
        )?;
        match (&self.cgroup_rt_file, s.cgroup_rt_runtime_us) {
            (Some(file), Some(us)) => writeln!(
                f,
                "RT group budget: {us} µs per {} µs ({})",
                self.cgroup_rt_period_us
                    .map_or_else(|| "?".to_string(), |p| p.to_string()),
                file.display()
            )?,
            (Some(file), None) => writeln!(f, "RT group budget: unreadable ({})", file.display())?,
            (None, _) if self.rt_group_sched => writeln!(
                f,
                "RT group budget: not found for cgroup {}",
                self.cgroup.as_deref().unwrap_or("?")
            )?,
            (None, _) => writeln!(f, "RT group budget: none (no RT group scheduling)")?,
        }
        match s.system_rt_runtime_us {
            Some(-1) => writeln!(f, "kernel.sched_rt_runtime_us: -1 (unthrottled)")?,
            Some(v) => writeln!(f, "kernel.sched_rt_runtime_us: {v}")?,
            None => writeln!(f, "kernel.sched_rt_runtime_us: unreadable")?,
        }
        let seccomp = match self.seccomp_mode {
            Some(0) => "off",
            Some(1) => "strict",
            Some(_) => "filter",
            None => "unknown",
        };
        writeln!(f, "seccomp: {seccomp}")?;
        write!(f, "NoNewPrivs: {}", yn(s.no_new_privs))?;
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Memory lock
// ---------------------------------------------------------------------------------------------

/// What [`lock_memory`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLockOutcome {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)` succeeded.
    All,
    /// Only `MCL_CURRENT`: with a finite `RLIMIT_MEMLOCK`, `MCL_FUTURE` would make later
    /// allocations fail once the limit is reached (or once `CAP_IPC_LOCK` is dropped).
    CurrentOnly,
    /// `mlockall` failed with this errno; nothing is locked.
    Failed(i32),
}

/// Outcome of [`lock_memory`] with the `RLIMIT_MEMLOCK` it ran under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLock {
    /// What was locked.
    pub outcome: MemoryLockOutcome,
    /// `RLIMIT_MEMLOCK` soft limit in bytes after raising it to the hard limit.
    pub memlock_soft: u64,
    /// `RLIMIT_MEMLOCK` hard limit in bytes.
    pub memlock_hard: u64,
}

impl fmt::Display for MemoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = fmt_bytes(self.memlock_soft);
        match self.outcome {
            MemoryLockOutcome::All => write!(f, "memory locked (current and future)"),
            MemoryLockOutcome::CurrentOnly => write!(
                f,
                "memory locked (current only; RLIMIT_MEMLOCK {limit} is finite)"
            ),
            MemoryLockOutcome::Failed(e) => write!(
                f,
                "memory not locked ({} {e}, RLIMIT_MEMLOCK {limit})",
                errno_name(e)
            ),
        }
    }
}

/// Large allocations (at least this size) get their own mapping, returned to the system when
/// freed. glibc's default (128 KiB) is the same value, but glibc raises it on every free of a
/// mapped block, up to 32 MiB.
pub const MALLOC_MMAP_THRESHOLD: usize = 128 * 1024;

/// Pins glibc malloc's mmap threshold at [`MALLOC_MMAP_THRESHOLD`], for a process that runs for
/// hours. Each song's loader, decoder and resampler allocate buffers of a few hundred KiB and
/// free them when the song ends. With glibc's dynamic threshold the first such free raises the
/// threshold past their size, so from then on they come from the thread's heap arena, whose
/// fragments are not returned: the hour soak grew ~1 MB that way. With the threshold fixed
/// they are mapped and unmapped per song (a few mmap/munmap calls on loader threads, never on
/// an RT thread): `bash benches/soak.sh 300` grew +836 kB without, +144 kB with. Other C
/// libraries (musl) ignore this. Call before spawning threads.
pub fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let bytes = libc::c_int::try_from(MALLOC_MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes two integers; M_MMAP_THRESHOLD accepts values up to 32 MiB.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) } != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused; allocator thresholds stay dynamic");
        }
    }
}

/// Before the sandbox drops CAP_IPC_LOCK: if more memory is locked than RLIMIT_MEMLOCK
/// allows (root locks past the limit with the capability), unlocks it. Otherwise, once the
/// capability is gone, every later locked mapping fails — libjack maps its semaphores with
/// `MAP_LOCKED` when it reconnects to a restarted server, so the show could never get its
/// audio back. Returns true when it unlocked (and logs a warning with the remedy).
pub fn release_memory_lock_above_limit() -> bool {
    let has_ipc_lock = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_IPC_LOCK,
    )
    .unwrap_or(false);
    let Ok((soft, _)) = get_rlimit(libc::RLIMIT_MEMLOCK) else {
        return false;
    };
    if !has_ipc_lock || soft == RLIM_INF {
        return false;
    }
    let locked_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmLck:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    if locked_kb * 1024 <= soft {
        return false;
    }
    // With CAP_SYS_RESOURCE (root on most machines) the limit itself can go: the lock stays.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        tracing::info!("RLIMIT_MEMLOCK raised to unlimited before the sandbox drops CAP_IPC_LOCK");
        return false;
    }
    // SAFETY: munlockall takes no arguments.
    unsafe { libc::munlockall() };
    tracing::warn!(
        "memory unlocked: {} MiB were locked with CAP_IPC_LOCK, above RLIMIT_MEMLOCK ({} MiB), and the sandbox drops that capability (later locked mappings, libjack's on a reconnect, would fail). Remedy: LimitMEMLOCK=infinity in the service unit, or `memlock unlimited` in /etc/security/limits.conf",
        locked_kb / 1024,
        soft / (1024 * 1024)
    );
    true
}

/// Locks the process's memory, best effort, and logs the outcome (INFO, or WARN on failure).
///
/// Raises the soft `RLIMIT_MEMLOCK` to the hard one first. Uses `MCL_CURRENT | MCL_FUTURE`
/// only when the limit is unlimited: with a finite limit `MCL_FUTURE` turns every later
/// `mmap`/`brk` beyond the limit into an allocation failure (an abort in Rust), which the
/// capability drop would trigger even for root; then it locks `MCL_CURRENT` only.
/// `MCL_FUTURE` comes with `MCL_ONFAULT` (Linux 4.4+): later pages are locked when first
/// touched, not populated at `mmap` time. Without it, a decoder allocating what a hostile
/// header claims (symphonia reserves a FLAC picture's declared length, up to 4 GB, before
/// reading it; overcommit never backs those untouched pages) would have to be locked in
/// full, fail, and abort the show. Never fails the program. Normal threads only.
pub fn lock_memory() -> MemoryLock {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; setrlimit reads it. Raising the soft
    // limit up to the hard one needs no privilege.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) == 0 && rl.rlim_cur != rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl);
        }
    }
    let (soft, hard) = get_rlimit(libc::RLIMIT_MEMLOCK).unwrap_or((0, 0));
    let flags = if soft == RLIM_INF {
        libc::MCL_CURRENT | libc::MCL_FUTURE
    } else {
        libc::MCL_CURRENT
    };
    // SAFETY: mlockall takes flags only. Kernels before 4.4 refuse MCL_ONFAULT with EINVAL:
    // then lock without it.
    let locked = if flags & libc::MCL_FUTURE != 0 {
        unsafe { libc::mlockall(flags | libc::MCL_ONFAULT) == 0 || libc::mlockall(flags) == 0 }
    } else {
        unsafe { libc::mlockall(flags) == 0 }
    };
    let outcome = if locked {
        if flags & libc::MCL_FUTURE != 0 {
            MemoryLockOutcome::All
        } else {
            MemoryLockOutcome::CurrentOnly
        }
    } else {
        MemoryLockOutcome::Failed(errno())
    };
    let lock = MemoryLock {
        outcome,
        memlock_soft: soft,
        memlock_hard: hard,
    };
    match outcome {
        MemoryLockOutcome::Failed(_) => tracing::warn!(
            "{lock}; page faults may cause dropouts. Remedy: LimitMEMLOCK=infinity in the service \
             unit, or `@audio - memlock unlimited` in /etc/security/limits.conf"
        ),
        _ => tracing::info!("{lock}"),
    }
    lock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    fn unpriv() -> ProbeSummary {
        ProbeSummary {
            system_rt_runtime_us: Some(950_000),
            ..ProbeSummary::default()
        }
    }

    fn with_cap() -> ProbeSummary {
        ProbeSummary {
            cap_sys_nice_effective: true,
            cap_sys_nice_permitted: true,
            ..unpriv()
        }
    }

    fn with_rlimit(limit: u64) -> ProbeSummary {
        ProbeSummary {
            rtprio_soft: limit,
            rtprio_hard: limit,
            ..unpriv()
        }
    }

    const EPERM: i32 = libc::EPERM;

    #[test]
    fn decide_no_capability_and_no_rlimit() {
        assert_eq!(decide(&unpriv(), 70, EPERM), FallbackReason::NoPrivilege);
        // Even with a zero budget and seccomp, the kernel's first refusal is the privilege check.
        let p = ProbeSummary {
            cgroup_rt_runtime_us: Some(0),
            seccomp: true,
            ..unpriv()
        };
        assert_eq!(decide(&p, 80, EPERM), FallbackReason::NoPrivilege);
    }

    #[test]
    fn decide_priority_above_rlimit() {
        assert_eq!(
            decide(&with_rlimit(50), 70, EPERM),
            FallbackReason::AboveRlimit { limit: 50 }
        );
        assert_eq!(
            decide(&with_rlimit(1), 2, EPERM),
            FallbackReason::AboveRlimit { limit: 1 }
        );
        // At or below the limit the rlimit is not the reason.
        assert_ne!(
            decide(&with_rlimit(70), 70, EPERM),
            FallbackReason::AboveRlimit { limit: 70 }
        );
        // The capability makes the rlimit irrelevant.
        let p = ProbeSummary {
            rtprio_soft: 10,
            ..with_cap()
        };
        assert_eq!(decide(&p, 70, EPERM), FallbackReason::Denied);
        // Unlimited never is "above".
        assert_eq!(
            decide(&with_rlimit(RLIM_INF), 99, EPERM),
            FallbackReason::Denied
        );
    }

    #[test]
    fn decide_budgets() {
        let cg0 = ProbeSummary {
            cgroup_rt_runtime_us: Some(0),
            ..with_cap()
        };
        assert_eq!(decide(&cg0, 70, EPERM), FallbackReason::CgroupBudgetZero);
        let cg0_rlimit = ProbeSummary {
            cgroup_rt_runtime_us: Some(0),
            ..with_rlimit(95)
        };
        assert_eq!(
            decide(&cg0_rlimit, 70, EPERM),
            FallbackReason::CgroupBudgetZero
        );
        let sys0 = ProbeSummary {
            system_rt_runtime_us: Some(0),
            ..with_cap()
        };
        assert_eq!(decide(&sys0, 70, EPERM), FallbackReason::SystemBudgetZero);
        // A non-zero or absent budget is not blamed.
        for cg in [None, Some(950_000), Some(-1)] {
            let p = ProbeSummary {
                cgroup_rt_runtime_us: cg,
                system_rt_runtime_us: Some(-1),
                ..with_cap()
            };
            assert_eq!(decide(&p, 70, EPERM), FallbackReason::Denied);
        }
    }

    #[test]
    fn decide_seccomp_and_denied() {
        let sec = ProbeSummary {
            seccomp: true,
            ..with_cap()
        };
        assert_eq!(decide(&sec, 70, EPERM), FallbackReason::Seccomp);
        // Permitted-only capability counts: promotion raises it.
        let prm = ProbeSummary {
            cap_sys_nice_effective: false,
            seccomp: true,
            ..with_cap()
        };
        assert_eq!(decide(&prm, 70, EPERM), FallbackReason::Seccomp);
        let rl = ProbeSummary {
            seccomp: true,
            ..with_rlimit(95)
        };
        assert_eq!(decide(&rl, 70, EPERM), FallbackReason::Seccomp);
        assert_eq!(decide(&with_cap(), 70, EPERM), FallbackReason::Denied);
        // The budget is a surer explanation than a filter.
        let both = ProbeSummary {
            cgroup_rt_runtime_us: Some(0),
            ..sec
        };
        assert_eq!(decide(&both, 70, EPERM), FallbackReason::CgroupBudgetZero);
    }

    #[test]
    fn decide_other_errors() {
        assert_eq!(
            decide(&with_cap(), 0, libc::EINVAL),
            FallbackReason::InvalidPriority
        );
        assert_eq!(
            decide(&with_cap(), 100, libc::EINVAL),
            FallbackReason::InvalidPriority
        );
        assert_eq!(decide(&with_cap(), 70, libc::EINVAL), FallbackReason::Error);
        assert_eq!(decide(&unpriv(), 70, libc::ESRCH), FallbackReason::Error);
    }

    #[test]
    fn success_via_rlimit_without_capability() {
        assert_eq!(success_via(&with_rlimit(95), 70), Via::Rlimit);
        assert_eq!(success_via(&with_rlimit(70), 70), Via::Rlimit);
        assert_eq!(success_via(&with_cap(), 70), Via::Capability);
        let both = ProbeSummary {
            rtprio_soft: 95,
            ..with_cap()
        };
        assert_eq!(success_via(&both, 70), Via::Capability);
        let r = RtReport {
            promotion: Promotion {
                role: Role::Clock,
                requested_priority: 80,
                outcome: Outcome::Realtime {
                    policy: Policy::Fifo,
                    priority: 80,
                    via: success_via(&with_rlimit(95), 80),
                },
                affinity: Affinity::NotRequested,
            },
        };
        assert_eq!(r.to_string(), "clock FIFO 80 (RLIMIT_RTPRIO)");
    }

    #[test]
    fn predict_without_trying() {
        assert_eq!(with_cap().predict(70), Ok(Via::Capability));
        let prm = ProbeSummary {
            cap_sys_nice_effective: false,
            ..with_cap()
        };
        assert_eq!(prm.predict(70), Ok(Via::Capability));
        assert_eq!(with_rlimit(95).predict(70), Ok(Via::Rlimit));
        assert_eq!(
            with_rlimit(50).predict(70),
            Err(FallbackReason::AboveRlimit { limit: 50 })
        );
        assert_eq!(unpriv().predict(70), Err(FallbackReason::NoPrivilege));
        assert_eq!(with_cap().predict(0), Err(FallbackReason::InvalidPriority));
        let cg0 = ProbeSummary {
            cgroup_rt_runtime_us: Some(0),
            ..with_cap()
        };
        assert_eq!(cg0.predict(70), Err(FallbackReason::CgroupBudgetZero));
    }

    fn fallback(role: Role, prio: u8, reason: FallbackReason) -> Promotion {
        Promotion {
            role,
            requested_priority: prio,
            outcome: Outcome::Fallback {
                reason,
                errno: EPERM,
                nice: Some(0),
                timer_slack: true,
            },
            affinity: Affinity::NotRequested,
        }
    }

    fn realtime(role: Role, prio: u8, via: Via) -> Promotion {
        Promotion {
            role,
            requested_priority: prio,
            outcome: Outcome::Realtime {
                policy: Policy::Fifo,
                priority: prio,
                via,
            },
            affinity: Affinity::NotRequested,
        }
    }

    #[test]
    fn display_short_phrases() {
        let s = |p: Promotion| RtReport { promotion: p }.to_string();
        assert_eq!(
            s(realtime(Role::Audio, 70, Via::Capability)),
            "audio FIFO 70 (CAP_SYS_NICE)"
        );
        assert_eq!(
            s(realtime(Role::Clock, 80, Via::Rlimit)),
            "clock FIFO 80 (RLIMIT_RTPRIO)"
        );
        let mut jack = realtime(Role::Audio, 70, Via::AlreadyRt);
        jack.outcome = Outcome::Realtime {
            policy: Policy::Fifo,
            priority: 5,
            via: Via::AlreadyRt,
        };
        assert_eq!(s(jack), "audio FIFO 5 (JACK)");
        assert_eq!(
            s(realtime(Role::Render, 70, Via::AlreadyRt)),
            "render FIFO 70 (inherited)"
        );
        let off = Promotion {
            outcome: Outcome::Off,
            ..realtime(Role::Clock, 80, Via::Capability)
        };
        assert_eq!(s(off), "clock RT off");
        let cases = [
            (
                FallbackReason::NoPrivilege,
                "clock normal: no CAP_SYS_NICE and RLIMIT_RTPRIO is 0",
            ),
            (
                FallbackReason::AboveRlimit { limit: 50 },
                "clock normal: priority 80 above RLIMIT_RTPRIO 50",
            ),
            (
                FallbackReason::CgroupBudgetZero,
                "clock normal: RT group budget is 0",
            ),
            (
                FallbackReason::SystemBudgetZero,
                "clock normal: sched_rt_runtime_us is 0",
            ),
            (
                FallbackReason::Seccomp,
                "clock normal: blocked by seccomp or RestrictRealtime",
            ),
            (
                FallbackReason::Denied,
                "clock normal: refused despite CAP_SYS_NICE",
            ),
            (
                FallbackReason::Error,
                "clock normal: sched_setscheduler failed",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(s(fallback(Role::Clock, 80, reason)), text);
        }
        assert_eq!(
            s(fallback(Role::Audio, 0, FallbackReason::InvalidPriority)),
            "audio normal: priority 0 invalid (1-99)"
        );
    }

    #[test]
    fn remedies_fit_reasons() {
        let r = |reason: FallbackReason| reason.remedy(Role::Audio, 70, "/path/to/backline");
        let np = r(FallbackReason::NoPrivilege);
        assert!(
            np.contains("setcap cap_sys_nice+ep /path/to/backline"),
            "{np}"
        );
        assert!(np.contains("systemd unit"), "{np}");
        assert!(np.contains("@audio - rtprio 95"), "{np}");
        let ar = r(FallbackReason::AboveRlimit { limit: 50 });
        assert!(ar.contains("realtime.audio_priority to 50 or less"), "{ar}");
        assert!(ar.contains("@audio - rtprio 95"), "{ar}");
        assert!(r(FallbackReason::CgroupBudgetZero).contains("rt_runtime_us"));
        assert!(r(FallbackReason::SystemBudgetZero).contains("sched_rt_runtime_us"));
        assert!(r(FallbackReason::Seccomp).contains("RestrictRealtime"));
        assert!(FallbackReason::InvalidPriority
            .remedy(Role::Clock, 0, "x")
            .contains("realtime.clock_priority"));
    }

    #[test]
    fn long_form() {
        let p = fallback(Role::Clock, 80, FallbackReason::NoPrivilege);
        let long = RtReport { promotion: p }.long();
        assert!(long.starts_with("clock: SCHED_OTHER (SCHED_FIFO 80 refused: EPERM 1)"));
        assert!(long.contains("reason: no CAP_SYS_NICE and RLIMIT_RTPRIO is 0"));
        assert!(long.contains("nice 0, timer slack 1 ns"));
        assert!(long.contains("remedy: run `setcap cap_sys_nice+ep "));
        let mut jack = realtime(Role::Audio, 70, Via::AlreadyRt);
        jack.affinity = Affinity::Failed(libc::EINVAL);
        let long = RtReport { promotion: jack }.long();
        assert!(long.contains("set by JACK, left unchanged"), "{long}");
        assert!(
            long.contains("pinning to realtime.cpus failed (EINVAL 22)"),
            "{long}"
        );
    }

    #[test]
    fn pack_round_trip() {
        let mut all = Vec::new();
        let reasons = [
            FallbackReason::NoPrivilege,
            FallbackReason::AboveRlimit { limit: 0 },
            FallbackReason::AboveRlimit { limit: 99 },
            FallbackReason::AboveRlimit { limit: 255 },
            FallbackReason::CgroupBudgetZero,
            FallbackReason::SystemBudgetZero,
            FallbackReason::Seccomp,
            FallbackReason::Denied,
            FallbackReason::InvalidPriority,
            FallbackReason::Error,
        ];
        let affinities = [
            Affinity::NotRequested,
            Affinity::Applied,
            Affinity::Failed(libc::EINVAL),
            Affinity::Failed(255),
        ];
        for role in Role::ALL {
            for requested in [0u8, 1, 70, 99, 255] {
                for affinity in affinities {
                    let base = Promotion {
                        role,
                        requested_priority: requested,
                        outcome: Outcome::Off,
                        affinity,
                    };
                    all.push(base);
                    for policy in [Policy::Other, Policy::Fifo, Policy::Rr] {
                        for via in [Via::Capability, Via::Rlimit, Via::AlreadyRt] {
                            for priority in [0u8, 1, 80, 99, 255] {
                                all.push(Promotion {
                                    outcome: Outcome::Realtime {
                                        policy,
                                        priority,
                                        via,
                                    },
                                    ..base
                                });
                            }
                        }
                    }
                    for reason in reasons {
                        for errno in [0, 1, 22, 255] {
                            for nice in [None, Some(-20i8), Some(0), Some(19)] {
                                for timer_slack in [false, true] {
                                    all.push(Promotion {
                                        outcome: Outcome::Fallback {
                                            reason,
                                            errno,
                                            nice,
                                            timer_slack,
                                        },
                                        ..base
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(all.len() > 10_000);
        for p in all {
            let v = p.pack();
            assert_ne!(v, 0);
            assert_eq!(Promotion::unpack(p.role, v), Some(p), "{v:#x}");
        }
        assert_eq!(Promotion::unpack(Role::Audio, 0), None);
    }

    /// Captures tracing output of `f` as text.
    fn capture_logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn warns_only_once_per_role() {
        let state = RtState::new();
        let mut counts = Vec::new();
        let logs = capture_logs(|| {
            // First audio thread falls back.
            state.record(&fallback(Role::Audio, 70, FallbackReason::NoPrivilege));
            counts.push(state.log_pending());
            counts.push(state.log_pending());
            // A reconnect: a new audio thread falls back again; no second warning.
            state.record(&fallback(Role::Audio, 70, FallbackReason::NoPrivilege));
            counts.push(state.log_pending());
            // The clock succeeds: one INFO, once.
            state.record(&realtime(Role::Clock, 80, Via::Capability));
            counts.push(state.log_pending());
            counts.push(state.log_pending());
            // A failed pinning is warned about once.
            let mut r = realtime(Role::Render, 70, Via::Capability);
            r.affinity = Affinity::Failed(libc::EINVAL);
            state.record(&r);
            state.record(&r);
            counts.push(state.log_pending());
            counts.push(state.log_pending());
        });
        assert_eq!(counts, [1, 0, 0, 1, 0, 2, 0]);
        assert_eq!(logs.matches(" WARN ").count(), 2, "{logs}");
        assert_eq!(logs.matches(" INFO ").count(), 2, "{logs}");
        let warn = logs
            .lines()
            .find(|l| l.contains("audio thread"))
            .unwrap_or_default();
        assert!(warn.contains("WARN"), "{warn}");
        assert!(
            warn.contains("no CAP_SYS_NICE and RLIMIT_RTPRIO is 0"),
            "{warn}"
        );
        assert!(warn.contains("setcap cap_sys_nice+ep"), "{warn}");
        assert!(
            logs.contains("real-time: clock FIFO 80 (CAP_SYS_NICE)"),
            "{logs}"
        );
        // The state still shows the latest outcome.
        assert_eq!(
            state.get(Role::Audio),
            Some(fallback(Role::Audio, 70, FallbackReason::NoPrivilege))
        );
    }

    #[test]
    fn concurrent_loggers_emit_once() {
        let state = Arc::new(RtState::new());
        state.record(&fallback(Role::Clock, 80, FallbackReason::Seccomp));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&state);
                std::thread::spawn(move || s.log_pending())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(99)).sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn cpuset_parse_and_display() {
        let s: CpuSet = "1-3,6".parse().unwrap_or_default();
        assert_eq!(s, CpuSet(0b100_1110));
        assert_eq!(s.to_string(), "1-3,6");
        assert_eq!("0".parse::<CpuSet>(), Ok(CpuSet(1)));
        assert_eq!("".parse::<CpuSet>(), Ok(CpuSet::NONE));
        assert_eq!(CpuSet::NONE.to_string(), "none");
        assert_eq!(
            "63".parse::<CpuSet>().map(|s| s.to_string()),
            Ok("63".into())
        );
        assert_eq!("64".parse::<CpuSet>(), Err(CpuSetError::OutOfRange(64)));
        assert_eq!("3-1".parse::<CpuSet>(), Err(CpuSetError::Reversed(3, 1)));
        assert!(matches!("x".parse::<CpuSet>(), Err(CpuSetError::Syntax(_))));
        assert_eq!(CpuSet(0b1011).to_string(), "0-1,3");
    }

    #[test]
    fn parse_proc_status() {
        let s = "Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(parse_status(s), (Some(2), Some(true)));
        assert_eq!(
            parse_status("Seccomp:\t0\nNoNewPrivs:\t0\n"),
            (Some(0), Some(false))
        );
        assert_eq!(parse_status(""), (None, None));
    }

    #[test]
    fn cgroup_lookup() {
        let dir = std::env::temp_dir().join(format!("backline-rt-test-{}", std::process::id()));
        let grp = dir
            .join("cpu")
            .join("system.slice")
            .join("backline.service");
        std::fs::create_dir_all(&grp).unwrap_or_default();
        std::fs::write(dir.join("cpu").join("cpu.rt_runtime_us"), "950000\n").unwrap_or_default();
        std::fs::write(grp.join("cpu.rt_runtime_us"), "0\n").unwrap_or_default();
        let mp = dir.join("cpu");
        let mountinfo = format!(
            "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
             32 31 0:29 / {} rw,relatime - cgroup cgroup rw,cpuacct,cpu\n\
             41 31 0:38 / /nonexistent rw,relatime - cgroup2 cgroup2 rw\n",
            mp.display()
        );
        let v1 = "2:cpuacct,cpu:/system.slice/backline.service\n1:name=systemd:/x\n0::/x\n";
        let found = find_rt_cgroup(v1, &mountinfo);
        assert_eq!(
            found.file.as_deref(),
            Some(grp.join("cpu.rt_runtime_us").as_path())
        );
        assert!(found.rt_group_sched);
        assert_eq!(found.file.as_deref().and_then(read_i64), Some(0));
        // Mount root below "/" (a cgroup namespace or bind mount).
        let mountinfo_ns = format!(
            "32 31 0:29 /system.slice {} rw - cgroup cgroup rw,cpu\n",
            dir.join("cpu").join("system.slice").display()
        );
        let found = find_rt_cgroup(v1, &mountinfo_ns);
        assert_eq!(
            found.file.as_deref(),
            Some(grp.join("cpu.rt_runtime_us").as_path())
        );
        // cgroup v2 without RT group scheduling: nothing to read, not an error.
        let found = find_rt_cgroup("0::/user.slice\n", &mountinfo);
        assert_eq!(found.path.as_deref(), Some("/user.slice"));
        assert_eq!(found.file, None);
        assert!(!found.rt_group_sched);
        // No cpu controller at all.
        assert_eq!(find_rt_cgroup("", &mountinfo), CgroupRt::default());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount(r"/a\04"), r"/a\04");
    }

    #[test]
    fn probe_this_machine() {
        let p = probe();
        let text = p.to_string();
        assert!(text.contains("CAP_SYS_NICE: effective"), "{text}");
        assert!(text.contains("RLIMIT_RTPRIO: soft"), "{text}");
        assert!(text.contains("seccomp: "), "{text}");
        assert_eq!(p.summary(), p.summary);
    }

    /// Policy and RT priority of a thread from /proc (fields 41 and 40 of stat).
    fn proc_policy(tid: libc::id_t) -> (i64, i64) {
        let stat =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        // Fields after the command start at field 3.
        let f: Vec<i64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(-1))
            .collect();
        (
            f.get(41 - 3).copied().unwrap_or(-1),
            f.get(40 - 3).copied().unwrap_or(-1),
        )
    }

    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        match std::thread::spawn(f).join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    }

    #[test]
    fn promote_real_thread() {
        let probe = probe().summary();
        let state = Arc::new(RtState::new());
        let st = Arc::clone(&state);
        let (p, policy, proc) = on_thread(move || {
            let p = promote_into(&st, Role::Clock, &RtSettings::default(), &probe);
            prefault_stack();
            (p, current_thread_policy(), proc_policy(gettid()))
        });
        assert_eq!(state.get(Role::Clock), Some(p));
        if probe.predict(80).is_ok() {
            assert_eq!(
                p.outcome,
                Outcome::Realtime {
                    policy: Policy::Fifo,
                    priority: 80,
                    via: Via::Capability
                }
            );
            assert_eq!(policy, (libc::SCHED_FIFO, 80));
            assert_eq!(proc, (i64::from(libc::SCHED_FIFO), 80));
            assert_eq!(
                report_of(&state, Role::Clock),
                "clock FIFO 80 (CAP_SYS_NICE)"
            );
        } else {
            assert!(matches!(p.outcome, Outcome::Fallback { .. }), "{p:?}");
            assert_eq!(policy.0, libc::SCHED_OTHER);
        }
    }

    fn report_of(state: &RtState, role: Role) -> String {
        state
            .get(role)
            .map(|promotion| RtReport { promotion }.to_string())
            .unwrap_or_default()
    }

    fn drop_sys_nice(permitted_too: bool) -> bool {
        let Some(mut c) = cap_get() else { return false };
        c[0].effective &= !(1 << CAP_SYS_NICE);
        if permitted_too {
            c[0].permitted &= !(1 << CAP_SYS_NICE);
        }
        cap_set(&c)
    }

    #[test]
    fn fallback_on_real_thread_without_capability() {
        let probe = probe().summary();
        if !probe.cap_sys_nice_permitted || probe.rtprio_soft != 0 {
            eprintln!("skipped: needs CAP_SYS_NICE and RLIMIT_RTPRIO 0");
            return;
        }
        let state = Arc::new(RtState::new());
        let st = Arc::clone(&state);
        let (p, policy, slack) = on_thread(move || {
            assert!(drop_sys_nice(true));
            let p = promote_into(&st, Role::Audio, &RtSettings::default(), &probe);
            // SAFETY: plain prctl query.
            let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
            (p, current_thread_policy(), slack)
        });
        assert!(
            matches!(
                p.outcome,
                Outcome::Fallback {
                    reason: FallbackReason::NoPrivilege,
                    errno: libc::EPERM,
                    timer_slack: true,
                    ..
                }
            ),
            "{p:?}"
        );
        assert_eq!(policy.0, libc::SCHED_OTHER);
        assert_eq!(slack, 1);
        assert_eq!(
            report_of(&state, Role::Audio),
            "audio normal: no CAP_SYS_NICE and RLIMIT_RTPRIO is 0"
        );
    }

    #[test]
    fn raises_permitted_capability_for_the_promotion_only() {
        let probe = probe().summary();
        if probe.predict(70).is_err() || !probe.cap_sys_nice_permitted {
            eprintln!("skipped: needs CAP_SYS_NICE");
            return;
        }
        let (p, eff_after) = on_thread(move || {
            assert!(drop_sys_nice(false));
            let p = promote_into(
                &RtState::new(),
                Role::Render,
                &RtSettings::default(),
                &probe,
            );
            let eff = cap_get().map(|c| c[0].effective & (1 << CAP_SYS_NICE) != 0);
            (p, eff)
        });
        assert_eq!(
            p.outcome,
            Outcome::Realtime {
                policy: Policy::Fifo,
                priority: 70,
                via: Via::Capability
            }
        );
        assert_eq!(eff_after, Some(false), "CAP_SYS_NICE must be lowered again");
    }

    #[test]
    fn already_realtime_audio_thread_is_left_alone() {
        let probe = probe().summary();
        if probe.predict(33).is_err() {
            eprintln!("skipped: needs RT privilege");
            return;
        }
        let (p, policy) = on_thread(move || {
            // Stand in for JACK: the thread is already FIFO 33 when the callback first runs.
            assert_eq!(set_fifo(33), 0);
            let p = promote_into(&RtState::new(), Role::Audio, &RtSettings::default(), &probe);
            (p, current_thread_policy())
        });
        assert_eq!(
            p.outcome,
            Outcome::Realtime {
                policy: Policy::Fifo,
                priority: 33,
                via: Via::AlreadyRt
            }
        );
        assert_eq!(policy, (libc::SCHED_FIFO, 33));
        assert_eq!(
            RtReport { promotion: p }.to_string(),
            "audio FIFO 33 (JACK)"
        );
    }

    #[test]
    fn off_changes_nothing() {
        let probe = probe().summary();
        let cfg = RtSettings {
            enabled: false,
            cpus: CpuSet(1),
            ..RtSettings::default()
        };
        let (p, policy, slack) = on_thread(move || {
            let p = promote_into(&RtState::new(), Role::Clock, &cfg, &probe);
            // SAFETY: plain prctl query.
            (p, current_thread_policy(), unsafe {
                libc::prctl(libc::PR_GET_TIMERSLACK)
            })
        });
        assert_eq!(p.outcome, Outcome::Off);
        assert_eq!(p.affinity, Affinity::NotRequested);
        assert_eq!(policy.0, libc::SCHED_OTHER);
        assert_ne!(slack, 1);
        assert!(!RtReport { promotion: p }.is_degraded());
    }

    #[test]
    fn affinity_is_applied_to_the_calling_thread() {
        let probe = probe().summary();
        let cfg = RtSettings {
            cpus: CpuSet(1),
            ..RtSettings::default()
        };
        let (p, cpu0_only) = on_thread(move || {
            let p = promote_into(&RtState::new(), Role::Clock, &cfg, &probe);
            // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
            };
            // SAFETY: reading our own set.
            let only = r == 0 && unsafe { libc::CPU_COUNT(&set) == 1 && libc::CPU_ISSET(0, &set) };
            (p, only)
        });
        assert_eq!(p.affinity, Affinity::Applied);
        assert!(cpu0_only);
    }

    #[test]
    fn bad_priority_is_reported_not_fatal() {
        let probe = probe().summary();
        let cfg = RtSettings {
            audio_priority: 0,
            ..RtSettings::default()
        };
        let p = on_thread(move || promote_into(&RtState::new(), Role::Render, &cfg, &probe));
        assert!(
            matches!(
                p.outcome,
                Outcome::Fallback {
                    reason: FallbackReason::InvalidPriority,
                    ..
                } | Outcome::Fallback {
                    reason: FallbackReason::NoPrivilege,
                    ..
                }
            ),
            "{p:?}"
        );
    }
}

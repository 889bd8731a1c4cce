//! Shared helpers for end-to-end tests against a *real* JACK server (dummy driver), plus a pty
//! runner for the terminal UI. See DESIGN.md, "Testing with real parts on a machine without a
//! sound card".
//!
//! Requirements: `jackd` (package jackd2) on PATH and libjack (libjack-jackd2-dev / libjack0).
//!
//! # How a client picks its server (and why there is a process-wide lock)
//!
//! `jack::Client::new` (jack 0.11) calls `jack_client_open(name, options, &status)` with no
//! variadic argument, so libjack falls back to `$JACK_DEFAULT_SERVER` of the *whole process*.
//! Setting that env var from parallel test threads is racy (and `setenv` is not thread-safe).
//! jack 0.11 does define `ClientOptions::SERVER_NAME`, but its safe API cannot pass the name
//! argument, and jack-sys 0.5 declares `jack_client_open` without the C varargs. So this module
//! looks up `jack_client_open` itself with `dlsym` as the real variadic C signature, calls it with
//! `JackServerName | JackNoStartServer | JackUseExactName` and the server name, and wraps the
//! result with `jack::Client::from_raw`. No env var is touched in the test process. Child
//! processes (the player under test) get `JACK_DEFAULT_SERVER` via [`JackServer::envs`].
//!
//! libjack (jack2) keeps per-process globals (graph manager, engine control, client table indexed
//! by refnum) that belong to ONE server: a process must not be a client of two JACK servers at
//! the same time. So a [`JackServer`] holds a process-wide token for its whole life (and every
//! [`Recorder`] / [`JackClientGuard`] made from it holds a clone). A second `JackServer::start`
//! in the same test binary blocks until the previous server and all its in-process clients are
//! gone: JACK tests inside one test binary run one after another, while separate test binaries
//! (separate processes) run side by side, each with its own private server.
//!
//! # Other jack2 facts this module works around (found while building it)
//!
//! * Client sockets are NOT per server: a client's notification socket is
//!   /dev/shm/jack_<client>_<uid>_0, so two processes opening same-named clients on different
//!   servers at the same moment can cross-wire. Use [`unique_client_name`] for anything that may
//!   open concurrently with another test process (e.g. `backline --output jack:NAME`). cpal's
//! * jack2 has 8 server slots per machine in /dev/shm/jack-shm-registry; a SIGKILLed jackd keeps
//!   its slot (and a ~100 MB shm segment) forever. [`reclaim_dead_jack_servers`] frees them
//!   (after `kill()` and before every start).
//! * jack 0.11's `Client::drop` panics if jackd is gone (see [`JackClientGuard`]).
//! * xruns happen on these VMs (several-ms scheduling spikes; more with two servers on two
//!   cores). A recorder that misses cycles loses samples: see `Recording::gaps`, and measure
//!   levels with [`tone_amplitude`] (median of 100 ms blocks), not one long Goertzel window.
//!
//! # Typical use
//!
//! ```ignore
//! let server = JackServer::start(48_000, 256);
//! let name = unique_client_name("backline");
//! let rec = Recorder::start(&server, &format!("{name}:out_"), 2);
//! let mut cmd = Command::new(env!("CARGO_BIN_EXE_backline"));
//! cmd.args(["play", show_dir, "--output", &format!("jack:{name}")]).envs(server.envs());
//! let mut ui = PtyChild::spawn(cmd);
//! assert!(rec.wait_connected(Duration::from_secs(20)), "{}", ui.stderr_so_far());
//! ui.send(b" ");                                          // keys go to the TUI
//! wait_until(Duration::from_secs(30), || rec.frames_so_far() > 3 * 48_000);
//! let r = rec.stop();
//! let (a, b) = non_silent_span(&r.channels[0], 0.01).expect("silence");
//! assert!((tone_amplitude(&r.channels[0][a..=b], 440.0, r.sample_rate) - 0.5).abs() < 0.02);
//! ```
#![allow(dead_code)]

pub mod fixtures;

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jack::jack_sys as j;

/// How long to wait for jackd to accept clients.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Recorder ring capacity, in seconds of audio per channel.
const RECORDER_RING_SECS: usize = 10;
/// Connector poll interval of the recorder.
const CONNECT_POLL: Duration = Duration::from_millis(2);

fn log(msg: &str) {
    eprintln!("[jack-harness] {msg}");
}

// ---------------------------------------------------------------------------------------------
// wait_until
// ---------------------------------------------------------------------------------------------

/// CLOCK_MONOTONIC in ns: the player's own clock read, so test, bench and player compare
/// like with like.
#[allow(unused_imports)] // not every bench or test binary reads the clock
pub use backline::engine::callback::monotonic_ns as now_ns;

/// The backline binary under test, run through `setpriv ARGS…` when `setpriv` is not empty
/// (to remove or grant capabilities and change the user).
pub fn backline_command(setpriv: &[&str]) -> Command {
    let binary = env!("CARGO_BIN_EXE_backline");
    if setpriv.is_empty() {
        Command::new(binary)
    } else {
        let mut command = Command::new("setpriv");
        command.args(setpriv).arg(binary);
        command
    }
}

/// A child's stderr, collected on a thread so a test can read what it has logged so far.
pub struct LogCapture {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl LogCapture {
    /// Takes `child`'s piped stderr and starts collecting it.
    pub fn start(child: &mut Child) -> LogCapture {
        let text = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let chunk = String::from_utf8_lossy(&buffer[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&chunk);
            }
        });
        LogCapture {
            text,
            reader: Some(reader),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for the pipe to close (the child has exited) and returns everything logged.
    pub fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.text()
    }
}

/// The real binary playing a show in the background (outside systemd: no notify or watchdog
/// variables), its stderr collected; killed when dropped.
pub struct Player {
    child: Child,
    log: LogCapture,
}

impl Player {
    /// `backline play ROOT ARGS…` with `envs` added to the environment.
    pub fn spawn(root: &Path, args: &[&str], envs: &[(&str, String)]) -> Player {
        let mut child = Command::new(env!("CARGO_BIN_EXE_backline"))
            .arg("play")
            .arg(root)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run backline");
        let log = LogCapture::start(&mut child);
        Player { child, log }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.log.text()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit status and everything it logged (panics after 10 s).
    pub fn terminate(mut self) -> (ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "SIGTERM ends the player: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.log.finish())
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 5 ms until it returns true (-> true) or `timeout` passes (-> false).
/// `cond` is evaluated once more at the deadline.
/// Watches for stalls of the whole machine (this VM descheduled by its host for tens or
/// hundreds of ms, which stops the player and the test's own readers alike): a thread at
/// SCHED_FIFO 90 (normal priority when not permitted) sleeps 1 ms at a time and notes every
/// wake-up more than 10 ms late. A gap in a measured stream that such a stall covers is the
/// machine's, not the program's: tests subtract it before judging.
pub struct StallWatch {
    stalls: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StallWatch {
    /// Starts watching.
    pub fn start() -> StallWatch {
        use std::sync::atomic::Ordering;
        let stalls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (stalls, stop) = (stalls.clone(), stop.clone());
            std::thread::spawn(move || {
                let param = libc::sched_param { sched_priority: 90 };
                // SAFETY: a valid sched_param for the calling thread (pid 0).
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
                let mut before = now_ns();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    let after = now_ns();
                    if after - before > 11_000_000 {
                        if let Ok(mut stalls) = stalls.lock() {
                            stalls.push((before + 1_000_000, after));
                        }
                    }
                    before = after;
                }
            })
        };
        StallWatch {
            stalls,
            stop,
            thread: Some(thread),
        }
    }

    /// The machine stalls seen so far, `(from, to)` in CLOCK_MONOTONIC ns.
    pub fn stalls(&self) -> Vec<(u64, u64)> {
        self.stalls.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The longest gap between consecutive `times` once machine stalls inside it are taken
    /// out, and the longest as measured, in ms.
    pub fn longest_gap_ms(&self, times: &[u64]) -> (f64, f64) {
        self.longest_gap_ms_excluding(times, &[])
    }

    /// Like [`StallWatch::longest_gap_ms`], with `also` (CLOCK_MONOTONIC ns intervals, such
    /// as an audio device's late cycles, [`Recording::late_cycles`]) taken out as well.
    pub fn longest_gap_ms_excluding(&self, times: &[u64], also: &[(u64, u64)]) -> (f64, f64) {
        let excluded = merge_intervals(self.stalls().into_iter().chain(also.iter().copied()));
        let mut own = 0u64;
        let mut raw = 0u64;
        for pair in times.windows(2) {
            let gap = pair[1].saturating_sub(pair[0]);
            raw = raw.max(gap);
            let covered: u64 = excluded
                .iter()
                .map(|&(a, b)| b.min(pair[1]).saturating_sub(a.max(pair[0])))
                .sum();
            own = own.max(gap.saturating_sub(covered));
        }
        (own as f64 / 1e6, raw as f64 / 1e6)
    }
}

/// Sorted, non-overlapping union of `(from, to)` intervals.
pub fn merge_intervals(intervals: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = intervals.into_iter().filter(|&(a, b)| b > a).collect();
    all.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (a, b) in all {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Process-wide "one JACK server at a time" token
// ---------------------------------------------------------------------------------------------

/// The thread that acquired the token (None = free).
static JACK_BUSY: Mutex<Option<std::thread::ThreadId>> = Mutex::new(None);
static JACK_FREE: Condvar = Condvar::new();

/// Held (via `Arc`) by a server and every in-process client made for it; released on last drop.
struct ProcessJackToken;

impl ProcessJackToken {
    fn acquire() -> Arc<ProcessJackToken> {
        let me = std::thread::current().id();
        let mut busy = JACK_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let mut waited = false;
        while let Some(holder) = *busy {
            assert!(
                holder != me,
                "this thread already has a JackServer (or a Recorder/client of one) alive: one \
                 JACK server per test process at a time (libjack limitation, see tests/common)"
            );
            if !waited {
                log("another JackServer is alive in this test process; waiting for it (libjack can only talk to one server per process)");
                waited = true;
            }
            busy = JACK_FREE.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = Some(me);
        Arc::new(ProcessJackToken)
    }
}

impl Drop for ProcessJackToken {
    fn drop(&mut self) {
        let mut busy = JACK_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        *busy = None;
        JACK_FREE.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// Opening a client on a named server (thread-safe, no env vars)
// ---------------------------------------------------------------------------------------------

type JackClientOpenFn = unsafe extern "C" fn(
    client_name: *const libc::c_char,
    options: j::jack_options_t,
    status: *mut j::jack_status_t,
    ...
) -> *mut j::jack_client_t;
type JackSetMsgFn = unsafe extern "C" fn(Option<unsafe extern "C" fn(*const libc::c_char)>);

struct LibJack {
    client_open: JackClientOpenFn,
    set_error_function: JackSetMsgFn,
    set_info_function: JackSetMsgFn,
}

fn libjack() -> &'static LibJack {
    static LIB: OnceLock<LibJack> = OnceLock::new();
    LIB.get_or_init(|| unsafe {
        // Same soname jack-sys loads, so this is the same (refcounted) library instance whether the
        // jack crate uses dynamic loading or links libjack. Never dlclose'd.
        let name = CString::new(j::JACK_LIB).expect("JACK_LIB has no NUL");
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            let err = CStr::from_ptr(libc::dlerror())
                .to_string_lossy()
                .into_owned();
            panic!(
                "cannot dlopen {}: {err} (install libjack-jackd2-dev / jackd2)",
                j::JACK_LIB
            );
        }
        let sym = |s: &str| {
            let c = CString::new(s).expect("symbol name");
            let p = libc::dlsym(handle, c.as_ptr());
            assert!(!p.is_null(), "libjack has no symbol {s}");
            p
        };
        LibJack {
            client_open: std::mem::transmute::<*mut libc::c_void, JackClientOpenFn>(sym(
                "jack_client_open",
            )),
            set_error_function: std::mem::transmute::<*mut libc::c_void, JackSetMsgFn>(sym(
                "jack_set_error_function",
            )),
            set_info_function: std::mem::transmute::<*mut libc::c_void, JackSetMsgFn>(sym(
                "jack_set_info_function",
            )),
        }
    })
}

/// Recent libjack error/info messages of this process (libjack would otherwise print every
/// failed connection attempt while we poll a starting server). Shown when something fails.
static JACK_MESSAGES: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

unsafe extern "C" fn collect_jack_message(msg: *const libc::c_char) {
    if msg.is_null() {
        return;
    }
    // May be called from a JACK thread: never block.
    if let Ok(mut q) = JACK_MESSAGES.try_lock() {
        if q.len() >= 200 {
            q.pop_front();
        }
        q.push_back(CStr::from_ptr(msg).to_string_lossy().into_owned());
    }
}

/// The last `n` libjack messages of this process, one per line.
pub fn recent_jack_messages(n: usize) -> String {
    let q = JACK_MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
    let skip = q.len().saturating_sub(n);
    q.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
}

/// Opens a JACK client called exactly `client_name` on the server called `server_name`, never
/// starting a server. Thread-safe (libjack serialises open/close internally).
fn open_client_on(server_name: &str, client_name: &str) -> Result<jack::Client, String> {
    let lib = libjack();
    let c_client = CString::new(client_name).map_err(|_| "client name contains NUL".to_string())?;
    let c_server = CString::new(server_name).map_err(|_| "server name contains NUL".to_string())?;
    let options = j::JackNoStartServer | j::JackServerName | j::JackUseExactName;
    let mut status: j::jack_status_t = 0;
    let raw = unsafe {
        (lib.set_error_function)(Some(collect_jack_message));
        (lib.set_info_function)(Some(collect_jack_message));
        (lib.client_open)(c_client.as_ptr(), options, &mut status, c_server.as_ptr())
    };
    if raw.is_null() {
        let status = jack::ClientStatus::from_bits_truncate(status);
        return Err(format!(
            "jack_client_open({client_name:?}) on server {server_name:?} failed: {status:?}"
        ));
    }
    Ok(unsafe { jack::Client::from_raw(raw) })
}

/// The xrun count from the player's last "done:" line (0 if there is none).
pub fn xruns_reported(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("done:"))
        .filter_map(|l| l.split(" xruns").next()?.rsplit(' ').next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// How many times [`least_disturbed`] plays a run.
pub const DISTURBED_RUN_ATTEMPTS: usize = 3;

/// Runs `run` (which returns a result and how many cycles the machine cost it, e.g.
/// [`Recording::disturbances`]) until one run is undisturbed, at most
/// [`DISTURBED_RUN_ATTEMPTS`] times, and returns the least disturbed run with its count.
/// A fresh CI VM has shown a hundred xruns in a 3 s run; such a recording cannot witness
/// sample-exact behaviour, so the run is played again, and the test then allows for the
/// disturbances the returned run still has. `keep` returning true stops at once (a run
/// that failed for the player's own reasons is returned as it is).
pub fn least_disturbed<T>(
    mut run: impl FnMut() -> (T, usize),
    keep: impl Fn(&T) -> bool,
) -> (T, usize) {
    let mut best: Option<(T, usize)> = None;
    for attempt in 1..=DISTURBED_RUN_ATTEMPTS {
        let (result, lost) = run();
        if lost == 0 || keep(&result) {
            return (result, lost);
        }
        eprintln!(
            "run {attempt}/{DISTURBED_RUN_ATTEMPTS}: {lost} disturbances (xruns or recorder gaps)"
        );
        if best.as_ref().map_or(true, |(_, fewest)| lost < *fewest) {
            best = Some((result, lost));
        }
    }
    best.expect("DISTURBED_RUN_ATTEMPTS > 0")
}

static CLIENT_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `"{base}-{pid}-{n}"`: a JACK client name no other process uses. Give every client that may
/// open while another test process opens one (the player under test: `--output jack:NAME`, whose
/// ports are then `NAME:out_1..`) such a name. jack2 binds each client's
/// notification socket at /dev/shm/jack_<client>_<uid>_0 -- NOT per server -- so two processes
/// opening same-named clients on different servers at the same moment can cross-wire (seen here
/// as "NotifyAddClient new_client fails" / broken pipe). Never reuse a server's name either: the
/// server socket lives in the same namespace (jack_<server>_<uid>_0).
pub fn unique_client_name(base: &str) -> String {
    format!(
        "{base}-{}-{}",
        std::process::id(),
        CLIENT_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `jack::Client` opened on a test server. Derefs to the client; `into_inner` if you need to
/// activate it (keep the `JackServer` alive meanwhile).
///
/// jack 0.11's `Client::drop` asserts that `jack_client_close` returns 0, which it does not once
/// jackd is gone, so dropping a plain `jack::Client` after `JackServer::kill` panics. The guard
/// leaks the client instead when its server was stopped or killed. (An *activated*
/// `jack::AsyncClient` does not have this problem: its drop fails to deactivate and leaks.)
pub struct JackClientGuard {
    client: Option<jack::Client>,
    server_gone: Arc<AtomicBool>,
    _token: Arc<ProcessJackToken>,
}

impl std::ops::Deref for JackClientGuard {
    type Target = jack::Client;
    fn deref(&self) -> &jack::Client {
        self.client.as_ref().expect("client present until drop")
    }
}

impl JackClientGuard {
    pub fn into_inner(mut self) -> jack::Client {
        self.client.take().expect("client present until drop")
    }
}

impl Drop for JackClientGuard {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.server_gone.load(Ordering::Acquire) {
                std::mem::forget(client);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// jack2's shared-memory registry: reclaim entries of dead servers
// ---------------------------------------------------------------------------------------------
//
// jack2 keeps ONE registry for all servers of the machine (/dev/shm/jack-shm-registry, guarded by
// SysV semaphore 0x282929) with only MAX_SERVERS = 8 server slots. A jackd that exits normally
// frees its slot; a SIGKILLed one does not, and jack2 reclaims a dead slot only when a server
// with the *same name* starts. With unique names per test, every `kill()` would leak a slot until
// "Too many servers already active". So we do what jack_register_server/jack_cleanup_shm do for
// dead pids, under the same lock: clear server slots and segment entries (unlinking the segment,
// jack-UID-N, ~100 MB each) whose owner process no longer exists. Live entries are never touched.

const JACK_SHM_MAGIC: u32 = 0x4a41434b;
const JACK_SEMAPHORE_KEY: libc::key_t = 0x282929;
const JACK_MAX_SERVERS: usize = 8;
const JACK_REGISTRY_PATH: &str = "/dev/shm/jack-shm-registry";

fn pid_is_dead(pid: i32) -> bool {
    pid > 0
        && unsafe { libc::kill(pid, 0) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

struct RegistryLock(libc::c_int);

impl RegistryLock {
    fn acquire() -> Result<Option<RegistryLock>, String> {
        let semid = unsafe { libc::semget(JACK_SEMAPHORE_KEY, 0, 0) };
        if semid == -1 {
            return Ok(None); // no JACK server has ever run: nothing to clean
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut op = libc::sembuf {
                sem_num: 0,
                sem_op: -1,
                sem_flg: (libc::SEM_UNDO | libc::IPC_NOWAIT) as libc::c_short,
            };
            if unsafe { libc::semop(semid, &mut op, 1) } == 0 {
                return Ok(Some(RegistryLock(semid)));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EAGAIN) && err.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("semop on JACK registry semaphore: {err}"));
            }
            if Instant::now() >= deadline {
                return Err("JACK registry semaphore stayed locked for 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for RegistryLock {
    fn drop(&mut self) {
        let mut op = libc::sembuf {
            sem_num: 0,
            sem_op: 1,
            sem_flg: libc::SEM_UNDO as libc::c_short,
        };
        unsafe { libc::semop(self.0, &mut op, 1) };
    }
}

/// Runs `f(base, len, hdr_len, entry_len)` on the mapped registry with the registry lock held.
fn with_jack_registry<T>(
    f: impl FnOnce(*mut u8, usize, usize, usize) -> T,
) -> Result<Option<T>, String> {
    let Some(_lock) = RegistryLock::acquire()? else {
        return Ok(None);
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(JACK_REGISTRY_PATH)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {JACK_REGISTRY_PATH}: {e}")),
    };
    let len = file
        .metadata()
        .map_err(|e| format!("stat registry: {e}"))?
        .len() as usize;
    if len < 24 {
        return Err(format!("{JACK_REGISTRY_PATH} is only {len} bytes"));
    }
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!(
            "mmap registry: {}",
            std::io::Error::last_os_error()
        ));
    }
    let base = base as *mut u8;
    let rd = |off: usize| unsafe { std::ptr::read_unaligned(base.add(off) as *const u32) };
    // Header: magic u32, protocol u16, type i32 @8, size i32 @12, hdr_len i32 @16, entry_len i32 @20,
    // then server[8] = { pid_t pid; char name[257]; } (stride 264).
    let (magic, size, hdr_len, entry_len) =
        (rd(0), rd(12) as usize, rd(16) as usize, rd(20) as usize);
    let result = if magic != JACK_SHM_MAGIC
        || size != len
        || hdr_len < 24 + JACK_MAX_SERVERS * 8
        || (hdr_len - 24) % JACK_MAX_SERVERS != 0
        || entry_len < 12
        || hdr_len > len
    {
        Err(format!(
            "unexpected JACK registry layout (magic {magic:#x}, size {size}/{len}, hdr_len {hdr_len}, entry_len {entry_len}); not touching it"
        ))
    } else {
        Ok(Some(f(base, len, hdr_len, entry_len)))
    };
    unsafe { libc::munmap(base as *mut libc::c_void, len) };
    result
}

/// (pid, registered name) of every occupied server slot in jack2's registry.
pub fn jack_registry_servers() -> Vec<(i32, String)> {
    with_jack_registry(|base, _len, hdr_len, _| {
        let stride = (hdr_len - 24) / JACK_MAX_SERVERS;
        (0..JACK_MAX_SERVERS)
            .filter_map(|i| {
                let slot = unsafe { base.add(24 + i * stride) };
                let pid = unsafe { std::ptr::read_unaligned(slot as *const i32) };
                (pid != 0).then(|| {
                    let name = unsafe { std::slice::from_raw_parts(slot.add(4), stride - 4) };
                    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    (pid, String::from_utf8_lossy(&name[..end]).into_owned())
                })
            })
            .collect()
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Frees registry slots and shm segments whose owning jackd is dead. Returns (slots, segments).
pub fn reclaim_dead_jack_servers() -> (usize, usize) {
    let res = with_jack_registry(|base, len, hdr_len, entry_len| {
        let stride = (hdr_len - 24) / JACK_MAX_SERVERS;
        let mut slots = 0;
        for i in 0..JACK_MAX_SERVERS {
            let slot = unsafe { base.add(24 + i * stride) };
            let pid = unsafe { std::ptr::read_unaligned(slot as *const i32) };
            if pid_is_dead(pid) {
                unsafe { std::ptr::write_bytes(slot, 0, stride) };
                slots += 1;
            }
        }
        // Segment entries: { int16 index; pid_t allocator @4; int32 size @8; char id[] @12 }.
        let mut segments = 0;
        let count = (len - hdr_len) / entry_len;
        for i in 0..count {
            let e = unsafe { base.add(hdr_len + i * entry_len) };
            let allocator = unsafe { std::ptr::read_unaligned(e.add(4) as *const i32) };
            if !pid_is_dead(allocator) {
                continue;
            }
            let id = unsafe { std::slice::from_raw_parts(e.add(12), entry_len - 12) };
            let end = id.iter().position(|&b| b == 0).unwrap_or(0);
            if end > 0 && id[0] == b'/' {
                if let Ok(c) = CString::new(&id[..end]) {
                    unsafe { libc::shm_unlink(c.as_ptr()) };
                }
            }
            unsafe {
                std::ptr::write_unaligned(e.add(4) as *mut i32, 0); // allocator
                std::ptr::write_unaligned(e.add(8) as *mut i32, 0); // size
                std::ptr::write_bytes(e.add(12), 0, entry_len - 12); // id
            }
            segments += 1;
        }
        (slots, segments)
    });
    match res {
        Ok(Some((slots, segments))) => {
            if slots + segments > 0 {
                log(&format!("reclaimed {slots} dead server slot(s) and {segments} shm segment(s) in JACK's registry"));
            }
            (slots, segments)
        }
        Ok(None) => (0, 0),
        Err(e) => {
            log(&format!("could not clean JACK's registry: {e}"));
            (0, 0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JackServer
// ---------------------------------------------------------------------------------------------

static SERVER_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private `jackd -d dummy` for one test. Dropping it stops jackd (SIGTERM, then SIGKILL).
pub struct JackServer {
    name: String,
    sample_rate: u32,
    period: u32,
    realtime_requested: bool,
    child: Mutex<Option<Child>>,
    log_path: PathBuf,
    token: Arc<ProcessJackToken>,
    gone: Arc<AtomicBool>,
}

impl JackServer {
    /// Starts `jackd -R -n backline-test-<pid>-<n> -d dummy -r <rate> -p <period>` and waits (up
    /// to 10 s) until it accepts clients. If it does not come up in realtime mode it is retried
    /// once with `--no-realtime`. Panics with jackd's log if it cannot be started.
    ///
    /// Blocks while another `JackServer` of this process is alive (see module docs).
    pub fn start(sample_rate: u32, period: u32) -> JackServer {
        let token = ProcessJackToken::acquire();
        let name = format!(
            "backline-test-{}-{}",
            std::process::id(),
            SERVER_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let log_path = std::env::temp_dir().join(format!("{name}.jackd.log"));
        let mut failures = Vec::new();
        // jack2 allows 8 servers per machine: wait a while for a slot if other test processes
        // hold them all (e.g. cargo nextest running many JACK tests at once).
        let slot_deadline = Instant::now() + Duration::from_secs(60);
        let mut told_full = false;
        for realtime in [true, false] {
            reclaim_dead_jack_servers();
            let result = loop {
                let r = spawn_jackd(&name, sample_rate, period, realtime, &log_path);
                let full = r.is_err()
                    && std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .contains("Too many servers already active");
                if !full || Instant::now() >= slot_deadline {
                    break r;
                }
                if !told_full {
                    log(&format!(
                        "all 8 JACK server slots are taken ({:?}); waiting for one",
                        jack_registry_servers()
                    ));
                    told_full = true;
                }
                std::thread::sleep(Duration::from_millis(500));
                reclaim_dead_jack_servers();
            };
            match result {
                Ok(child) => {
                    let server = JackServer {
                        name: name.clone(),
                        sample_rate,
                        period,
                        realtime_requested: realtime,
                        child: Mutex::new(Some(child)),
                        log_path: log_path.clone(),
                        token: token.clone(),
                        gone: Arc::new(AtomicBool::new(false)),
                    };
                    log(&format!(
                        "jackd {} up: {} Hz, period {}, {}",
                        server.name,
                        sample_rate,
                        period,
                        server.realtime_description()
                    ));
                    return server;
                }
                Err(e) => {
                    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let mode = if realtime {
                        "realtime (-R)"
                    } else {
                        "--no-realtime"
                    };
                    log(&format!("jackd {name} failed to start in {mode} mode: {e}"));
                    failures.push(format!("{mode}: {e}\n--- jackd log ---\n{log_text}"));
                }
            }
        }
        panic!(
            "could not start a JACK dummy server (is jackd2 installed?)\n{}\n--- libjack messages ---\n{}\n--- JACK registry servers ---\n{:?}",
            failures.join("\n"),
            recent_jack_messages(20),
            jack_registry_servers()
        );
    }

    /// The server name (what `JACK_DEFAULT_SERVER` must be set to).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `("JACK_DEFAULT_SERVER", name)`, for `Command::env`.
    pub fn env(&self) -> (&'static str, &str) {
        ("JACK_DEFAULT_SERVER", &self.name)
    }

    /// Everything a child process needs: the server name and `JACK_NO_START_SERVER=1` (so a
    /// child never auto-starts a default jackd if ours is gone). Use with `Command::envs`.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("JACK_DEFAULT_SERVER", self.name.clone()),
            ("JACK_NO_START_SERVER", "1".to_string()),
        ]
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn period(&self) -> u32 {
        self.period
    }

    /// jackd's pid, if it is still running.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.id())
    }

    /// True if jackd was started with -R and did not report that it was refused RT scheduling.
    pub fn is_realtime(&self) -> bool {
        self.realtime_requested && !self.log().contains("Cannot use real-time scheduling")
    }

    fn realtime_description(&self) -> &'static str {
        if !self.realtime_requested {
            "started with --no-realtime"
        } else if self.is_realtime() {
            "realtime (-R)"
        } else {
            "-R requested but RT scheduling refused (running non-RT)"
        }
    }

    /// jackd's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Opens an in-process JACK client with exactly this name on this server.
    pub fn open_client(&self, client_name: &str) -> JackClientGuard {
        let client = open_client_on(&self.name, client_name).unwrap_or_else(|e| {
            panic!(
                "{e}\n--- libjack messages ---\n{}\n--- jackd log ---\n{}",
                recent_jack_messages(20),
                self.log()
            )
        });
        JackClientGuard {
            client: Some(client),
            server_gone: self.gone.clone(),
            _token: self.token.clone(),
        }
    }

    /// Full names of all ports on the server (via a short-lived client).
    pub fn port_names(&self) -> Vec<String> {
        let c = self.open_client(&unique_client_name("lsp"));
        c.ports(None, None, jack::PortFlags::empty())
    }

    /// True while the jackd process runs (not killed/stopped, not crashed).
    pub fn is_alive(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Simulates device loss: SIGKILLs jackd immediately and reaps it. Clients see the server
    /// vanish (shutdown callback). Idempotent.
    pub fn kill(&self) {
        self.gone.store(true, Ordering::Release);
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            log(&format!("jackd {} killed (SIGKILL)", self.name));
            self.remove_stale_files();
            reclaim_dead_jack_servers();
        }
    }

    /// Starts jackd again under the same name, rate and period after [`JackServer::kill`] or
    /// [`JackServer::stop`] (the server coming back); returns once it accepts clients. Stop
    /// recorders of the old server first.
    pub fn restart(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            guard.is_none(),
            "restart: jackd {} is still running",
            self.name
        );
        reclaim_dead_jack_servers();
        let child = spawn_jackd(
            &self.name,
            self.sample_rate,
            self.period,
            self.realtime_requested,
            &self.log_path,
        )
        .unwrap_or_else(|e| panic!("restart jackd {}: {e}\n{}", self.name, self.log()));
        *guard = Some(child);
        self.gone.store(false, Ordering::Release);
        log(&format!("jackd {} restarted", self.name));
    }

    /// Stops jackd gracefully: SIGTERM, up to 3 s, then SIGKILL. Idempotent.
    pub fn stop(&self) {
        self.gone.store(true, Ordering::Release);
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            terminate_child(&mut child, Duration::from_secs(3));
            self.remove_stale_files();
            reclaim_dead_jack_servers(); // only does something if jackd needed SIGKILL
        }
    }

    /// After a SIGKILL jackd leaves its socket and semaphore files behind in /dev/shm.
    fn remove_stale_files(&self) {
        let Ok(dir) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        let needle = format!("_{}_", self.name);
        for entry in dir.flatten() {
            let file_name = entry.file_name();
            let f = file_name.to_string_lossy();
            if f.starts_with("jack") && f.contains(&needle) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for JackServer {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        } else {
            log(&format!(
                "test panicked; jackd log kept at {}",
                self.log_path.display()
            ));
        }
    }
}

fn terminate_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_jackd(
    name: &str,
    sample_rate: u32,
    period: u32,
    realtime: bool,
    log_path: &PathBuf,
) -> Result<Child, String> {
    let log_file =
        File::create(log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("dup log fd: {e}"))?;
    let mut cmd = Command::new("jackd");
    // NB: before `-d`, `-r` means --no-realtime; after `-d dummy`, `-r` is the sample rate.
    cmd.arg(if realtime {
        "--realtime"
    } else {
        "--no-realtime"
    })
    .args(["-n", name, "-d", "dummy"])
    .args(["-r", &sample_rate.to_string(), "-p", &period.to_string()])
    .env("JACK_NO_AUDIO_RESERVATION", "1")
    .env_remove("JACK_DEFAULT_SERVER")
    .stdin(Stdio::null())
    .stdout(Stdio::from(log_file))
    .stderr(Stdio::from(log_err));
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot run jackd: {e} (install the jackd2 package: apt-get install jackd2 libjack-jackd2-dev)")
    })?;
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    let mut last_err;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("jackd exited during startup with {status}")),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for jackd: {e}")),
        }
        match open_client_on(name, &format!("probe-{}", std::process::id())) {
            Ok(client) => {
                // Close without jack::Client::drop's assert (jackd could die right now).
                let raw = client.raw();
                std::mem::forget(client);
                unsafe { j::jack_client_close(raw) };
                return Ok(child);
            }
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            terminate_child(&mut child, Duration::from_secs(2));
            return Err(format!(
                "jackd did not accept clients within {SERVER_START_TIMEOUT:?}; last error: {last_err}\n{}",
                recent_jack_messages(10)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Recorder
// ---------------------------------------------------------------------------------------------

/// What a [`Recorder`] captured.
#[derive(Debug, Clone)]
pub struct Recording {
    pub sample_rate: u32,
    /// One Vec per input port (`in_1` is `channels[0]`), all the same length.
    pub channels: Vec<Vec<f32>>,
    /// JACK frame time (`jack_last_frame_time`) of sample 0 of every channel.
    pub first_frame_time: Option<u32>,
    /// `(sample index, CLOCK_MONOTONIC µs)` of the first sample of every recorded cycle: when
    /// the recorder's process callback began (`jack_get_time` on entry), so a missed or late
    /// cycle (the dummy driver falls behind the wall clock on a loaded machine) shifts no
    /// later timestamp. Not `jack_get_cycle_times`' current_usecs: that is JACK's DLL
    /// estimate, which after one 12 ms stall ran 16 % slow (measured: cycles of 256 frames
    /// 6.2 ms apart instead of 5.33, still 6.0 ms 300 ms later), while the driver wakes on
    /// time. See [`Recording::usecs_at`].
    pub cycle_usecs: Vec<(usize, u64)>,
    /// xruns the server reported while recording.
    pub xruns: u64,
    /// Discontinuities in the recording: `(sample index, frames)` where the recorder's cycle
    /// started `frames` away from where the previous cycle ended (JACK frame time). Positive:
    /// the recorder missed cycles (an xrun), so sample `index` is `frames` later in time than
    /// continuity predicts. Negative values also occur right after an xrun (frame time steps
    /// back while a late cycle is caught up, e.g. +512 then -256). Empty = gap-free recording.
    pub gaps: Vec<(usize, i64)>,
    /// The server shut the recorder down (e.g. after `JackServer::kill`).
    pub server_shut_down: bool,
    /// MIDI events received on the MIDI input (see [`Recorder::start_with_midi`]), in order.
    pub midi: Vec<MidiCapture>,
}

/// One MIDI event a [`Recorder`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MidiCapture {
    /// Absolute JACK frame time: the cycle's `last_frame_time` + the event's offset in it.
    pub frame_time: u32,
    /// Offset of the event inside its cycle.
    pub offset: u32,
    pub len: u8,
    pub bytes: [u8; 3],
}

impl MidiCapture {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Recording {
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, |c| c.len())
    }

    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / self.sample_rate as f64
    }

    /// Sample index -> seconds since the first recorded frame.
    pub fn secs_at(&self, index: usize) -> f64 {
        index as f64 / self.sample_rate as f64
    }

    /// Seconds -> sample index.
    pub fn index_at(&self, secs: f64) -> usize {
        (secs * self.sample_rate as f64).round().max(0.0) as usize
    }

    /// CLOCK_MONOTONIC microseconds at which sample `index` was taken: its cycle's start
    /// time plus its offset in that cycle. None before the first cycle.
    pub fn usecs_at(&self, index: usize) -> Option<f64> {
        let after = self.cycle_usecs.partition_point(|&(at, _)| at <= index);
        let &(at, usecs) = self.cycle_usecs.get(after.checked_sub(1)?)?;
        Some(usecs as f64 + (index - at) as f64 * 1e6 / f64::from(self.sample_rate))
    }

    /// Where the audio device ran late while recording, `(from, to)` in CLOCK_MONOTONIC ns:
    /// a cycle that started more than half a period after the samples before it predicted
    /// (the dummy driver woke late and fell behind the wall clock, as a loaded machine makes
    /// it). The beat clock follows the audio clock, so it is held back by as much.
    pub fn late_cycles(&self) -> Vec<(u64, u64)> {
        let rate = f64::from(self.sample_rate.max(1));
        self.cycle_usecs
            .windows(2)
            .filter_map(|pair| {
                let ((at, start), (next_at, next_start)) = (pair[0], pair[1]);
                // The previous cycle's length: when the next one was due.
                let expected_us = (next_at - at) as f64 * 1e6 / rate;
                let actual_us = next_start.saturating_sub(start) as f64;
                (actual_us > 1.5 * expected_us).then(|| {
                    let due = (start as f64 + expected_us) * 1e3;
                    (due as u64, next_start * 1000)
                })
            })
            .collect()
    }

    /// Frames the recorder did not get: the sum of the positive [`Recording::gaps`].
    pub fn missed_frames(&self) -> usize {
        self.gaps
            .iter()
            .map(|&(_, frames)| frames.max(0) as usize)
            .sum()
    }

    /// Cycles a run lost: the recorder's gaps and the xruns it saw, plus the xruns the player
    /// reported in `player_stderr`. Each can cost the recording a cycle's audio or MIDI.
    pub fn disturbances(&self, player_stderr: &str) -> usize {
        self.gaps.len() + self.xruns as usize + xruns_reported(player_stderr)
    }

    /// The sample indices in `from..=to` where a gap is, relative to `from`: pass them to
    /// [`tone_amplitude_between_gaps`] for a span of the recording.
    pub fn gaps_within(&self, from: usize, to: usize) -> Vec<usize> {
        self.gaps
            .iter()
            .map(|&(at, _)| at)
            .filter(|at| (from..=to).contains(at))
            .map(|at| at - from)
            .collect()
    }

    /// Absolute JACK frame time of sample `index` (first frame time + index + every gap
    /// before it), comparable with [`MidiCapture::frame_time`].
    pub fn frame_time_at(&self, index: usize) -> Option<u32> {
        let shift: i64 = self
            .gaps
            .iter()
            .filter(|&&(at, _)| at <= index)
            .map(|&(_, frames)| frames)
            .sum();
        self.first_frame_time
            .map(|first| (i64::from(first) + index as i64 + shift) as u32)
    }
}

struct RecShared {
    stop_connector: AtomicBool,
    stop_drain: AtomicBool,
    frames: AtomicU64,
    /// u64::MAX = not yet.
    first_frame_time: AtomicU64,
    overrun_frames: AtomicU64,
    xruns: AtomicU64,
    shut_down: AtomicBool,
    connected: AtomicUsize,
    connect_error: Mutex<Option<String>>,
}

struct RecProcess {
    ports: Vec<jack::Port<jack::AudioIn>>,
    producers: Vec<rtrb::Producer<f32>>,
    midi_in: Option<jack::Port<jack::MidiIn>>,
    midi: rtrb::Producer<MidiCapture>,
    gaps: rtrb::Producer<(u64, i64)>,
    /// (sample index, `jack_get_time` at callback entry) of every cycle written.
    cycles: rtrb::Producer<(u64, u64)>,
    /// Frame time expected at the next cycle (u64::MAX before the first one).
    next_frame_time: u64,
    shared: Arc<RecShared>,
}

impl jack::ProcessHandler for RecProcess {
    fn process(&mut self, _: &jack::Client, ps: &jack::ProcessScope) -> jack::Control {
        // Real-time thread: no allocation, no locks.
        let entered_usecs = jack::get_time();
        let n = ps.n_frames() as usize;
        let now = ps.last_frame_time();
        if self.next_frame_time == u64::MAX {
            self.shared
                .first_frame_time
                .store(now as u64, Ordering::Release);
        } else if now != self.next_frame_time as u32 {
            let at = self.shared.frames.load(Ordering::Relaxed);
            let delta = now.wrapping_sub(self.next_frame_time as u32) as i32 as i64;
            let _ = self.gaps.push((at, delta));
        }
        self.next_frame_time = now.wrapping_add(n as u32) as u64;
        if let Some(port) = self.midi_in.as_ref() {
            for event in port.iter(ps) {
                let len = event.bytes.len().min(3);
                let mut bytes = [0u8; 3];
                bytes[..len].copy_from_slice(&event.bytes[..len]);
                let _ = self.midi.push(MidiCapture {
                    frame_time: now.wrapping_add(event.time),
                    offset: event.time,
                    len: len as u8,
                    bytes,
                });
            }
        }
        // Keep channels aligned: write either all of them or none.
        if self.producers.iter().any(|p| p.slots() < n) {
            self.shared
                .overrun_frames
                .fetch_add(n as u64, Ordering::Relaxed);
            return jack::Control::Continue;
        }
        for (port, producer) in self.ports.iter().zip(self.producers.iter_mut()) {
            let input = port.as_slice(ps);
            if let Ok(chunk) = producer.write_chunk_uninit(input.len()) {
                chunk.fill_from_iter(input.iter().copied());
            }
        }
        let at = self.shared.frames.load(Ordering::Relaxed);
        let _ = self.cycles.push((at, entered_usecs));
        self.shared.frames.fetch_add(n as u64, Ordering::Release);
        jack::Control::Continue
    }
}

struct RecNotify {
    shared: Arc<RecShared>,
}

impl jack::NotificationHandler for RecNotify {
    fn shutdown(&mut self, _status: jack::ClientStatus, _reason: &str) {
        self.shared.shut_down.store(true, Ordering::Release);
    }

    fn xrun(&mut self, _: &jack::Client) -> jack::Control {
        self.shared.xruns.fetch_add(1, Ordering::Relaxed);
        jack::Control::Continue
    }
}

type RecClient = jack::AsyncClient<RecNotify, RecProcess>;
/// Per-channel samples, gaps, cycle times and MIDI events, returned by the drain thread.
type DrainResult = (
    Vec<Vec<f32>>,
    Vec<(usize, i64)>,
    Vec<(usize, u64)>,
    Vec<MidiCapture>,
);

/// An in-process JACK client that records `channels` audio inputs (`in_1..in_N`), connecting
/// `"{prefix}{i}"` -> `in_{i}` (i = 1..=N, like the player's `out_1..`) whenever that source port exists and is not yet
/// connected (so a player started after the recorder, or restarted, gets picked up within a few
/// ms). Recording starts at activation, i.e. there is silence before the connection.
pub struct Recorder {
    client: Arc<Mutex<Option<RecClient>>>,
    shared: Arc<RecShared>,
    connector: Option<JoinHandle<()>>,
    drain: Option<JoinHandle<DrainResult>>,
    sample_rate: u32,
    channels: usize,
    /// Ports to connect: the audio channels, plus one when recording MIDI.
    sources: usize,
    client_name: String,
    server_gone: Arc<AtomicBool>,
    _token: Arc<ProcessJackToken>,
}

impl Recorder {
    /// Records `channels` audio inputs, `"{prefix}{i}"` -> `in_{i}` (i = 1..=N).
    pub fn start(server: &JackServer, source_port_prefix: &str, channels: usize) -> Recorder {
        Recorder::start_with_midi(server, source_port_prefix, channels, None)
    }

    /// Like [`Recorder::start`], plus a MIDI input `midi_in` connected from `midi_source` (a
    /// full port name) whose events are kept with their absolute JACK frame time.
    pub fn start_with_midi(
        server: &JackServer,
        source_port_prefix: &str,
        channels: usize,
        midi_source: Option<&str>,
    ) -> Recorder {
        assert!(channels > 0, "Recorder needs at least one channel");
        let client = server
            .open_client(&unique_client_name("recorder"))
            .into_inner();
        let sample_rate = client.sample_rate() as u32;
        let ports: Vec<_> = (1..=channels)
            .map(|i| {
                client
                    .register_port(&format!("in_{i}"), jack::AudioIn)
                    .unwrap_or_else(|e| panic!("register recorder port in_{i}: {e:?}"))
            })
            .collect();
        let capacity = sample_rate as usize * RECORDER_RING_SECS;
        let (producers, consumers): (Vec<_>, Vec<_>) = (0..channels)
            .map(|_| rtrb::RingBuffer::<f32>::new(capacity))
            .unzip();
        let (gap_producer, gap_consumer) = rtrb::RingBuffer::<(u64, i64)>::new(4096);
        let (cycle_producer, cycle_consumer) = rtrb::RingBuffer::<(u64, u64)>::new(1 << 14);
        let (midi_producer, midi_consumer) = rtrb::RingBuffer::<MidiCapture>::new(1 << 16);
        let midi_in = midi_source.map(|_| {
            client
                .register_port("midi_in", jack::MidiIn)
                .unwrap_or_else(|e| panic!("register recorder port midi_in: {e:?}"))
        });
        let shared = Arc::new(RecShared {
            stop_connector: AtomicBool::new(false),
            stop_drain: AtomicBool::new(false),
            frames: AtomicU64::new(0),
            first_frame_time: AtomicU64::new(u64::MAX),
            overrun_frames: AtomicU64::new(0),
            xruns: AtomicU64::new(0),
            shut_down: AtomicBool::new(false),
            connected: AtomicUsize::new(0),
            connect_error: Mutex::new(None),
        });

        let drain = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("recorder-drain".into())
                .spawn(move || {
                    drain_loop(
                        consumers,
                        gap_consumer,
                        cycle_consumer,
                        midi_consumer,
                        &shared,
                    )
                })
                .expect("spawn recorder drain thread")
        };

        let process = RecProcess {
            ports,
            producers,
            midi_in,
            midi: midi_producer,
            gaps: gap_producer,
            cycles: cycle_producer,
            next_frame_time: u64::MAX,
            shared: shared.clone(),
        };
        let notify = RecNotify {
            shared: shared.clone(),
        };
        let active = client
            .activate_async(notify, process)
            .unwrap_or_else(|e| panic!("activate recorder client: {e:?}\n{}", server.log()));
        let full_name = active.as_client().name().to_string();
        let client = Arc::new(Mutex::new(Some(active)));

        let connector = {
            let client = client.clone();
            let shared = shared.clone();
            let mut pairs: Vec<(String, String)> = (1..=channels)
                .map(|i| {
                    (
                        format!("{source_port_prefix}{i}"),
                        format!("{full_name}:in_{i}"),
                    )
                })
                .collect();
            if let Some(source) = midi_source {
                pairs.push((source.to_string(), format!("{full_name}:midi_in")));
            }
            std::thread::Builder::new()
                .name("recorder-connect".into())
                .spawn(move || connect_loop(&client, &shared, &pairs))
                .expect("spawn recorder connector thread")
        };

        Recorder {
            client,
            shared,
            connector: Some(connector),
            drain: Some(drain),
            sample_rate,
            channels,
            sources: channels + usize::from(midi_source.is_some()),
            client_name: full_name,
            server_gone: server.gone.clone(),
            _token: server.token.clone(),
        }
    }

    /// The recorder's JACK client name (`recorder-<pid>-<n>`); its ports are `NAME:in_1..`.
    pub fn client_name(&self) -> &str {
        &self.client_name
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Frames captured so far (per channel), counted in the process callback.
    pub fn frames_so_far(&self) -> u64 {
        self.shared.frames.load(Ordering::Acquire)
    }

    /// How many of the inputs (audio, and MIDI if recorded) are connected to their source now.
    pub fn connected_channels(&self) -> usize {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Waits until every input is connected to its source port.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.connected_channels() == self.sources)
    }

    /// The last error from connecting a source port (for diagnostics when `wait_connected`
    /// fails; "not active" errors are normal while the player registers ports before activating).
    pub fn connect_error(&self) -> Option<String> {
        self.shared
            .connect_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server shut this client down (jackd died or kicked us).
    pub fn server_shut_down(&self) -> bool {
        self.shared.shut_down.load(Ordering::Acquire)
    }

    pub fn xruns(&self) -> u64 {
        self.shared.xruns.load(Ordering::Relaxed)
    }

    /// Stops recording and returns everything captured. Works after `JackServer::kill` too.
    pub fn stop(mut self) -> Recording {
        self.finish()
    }

    fn finish(&mut self) -> Recording {
        self.shared.stop_connector.store(true, Ordering::Release);
        if let Some(h) = self.connector.take() {
            let _ = h.join();
        }
        let active = self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
        let server_gone = || self.server_shut_down() || self.server_gone.load(Ordering::Acquire);
        if let Some(active) = active {
            if server_gone() {
                // The server is gone: jack 0.11's Client::drop asserts close() == 0, which
                // cannot hold. Close the client through libjack directly and leak the Rust
                // wrapper: a client left open keeps libjack's process-wide state (shared memory
                // of the dead server) alive, and a client opened later on a restarted server
                // with the same name would use it and stall.
                let raw = active.as_client().raw();
                std::mem::forget(active);
                unsafe { j::jack_client_close(raw) };
            } else {
                match active.deactivate() {
                    Ok((client, _notify, _process)) if server_gone() => std::mem::forget(client),
                    Ok((client, _notify, _process)) => drop(client),
                    Err(e) => log(&format!(
                        "recorder deactivate failed: {e:?} (client leaked)"
                    )),
                }
            }
        }
        self.shared.stop_drain.store(true, Ordering::Release);
        let (mut channels, gaps, cycle_usecs, midi) = match self.drain.take() {
            Some(h) => h.join().expect("recorder drain thread panicked"),
            None => (
                vec![Vec::new(); self.channels],
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ),
        };
        let overruns = self.shared.overrun_frames.load(Ordering::Relaxed);
        assert!(
            overruns == 0,
            "recorder dropped {overruns} frames: the drain thread fell more than {RECORDER_RING_SECS} s behind"
        );
        let len = channels.iter().map(Vec::len).min().unwrap_or(0);
        for c in &mut channels {
            c.truncate(len);
        }
        let fft = self.shared.first_frame_time.load(Ordering::Acquire);
        Recording {
            sample_rate: self.sample_rate,
            channels,
            first_frame_time: (fft != u64::MAX).then_some(fft as u32),
            cycle_usecs,
            xruns: self.shared.xruns.load(Ordering::Relaxed),
            gaps,
            server_shut_down: self.server_shut_down(),
            midi,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.drain.is_some() {
            // Not stopped explicitly (e.g. the test panicked): stop threads and the client, but
            // don't pile a second panic on top.
            if std::thread::panicking() {
                self.shared.stop_connector.store(true, Ordering::Release);
                self.shared.stop_drain.store(true, Ordering::Release);
                if let Some(h) = self.connector.take() {
                    let _ = h.join();
                }
                let active = self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
                if self.server_shut_down() || self.server_gone.load(Ordering::Acquire) {
                    std::mem::forget(active);
                } else {
                    drop(active);
                }
            } else {
                let _ = self.finish();
            }
        }
    }
}

fn connect_loop(client: &Mutex<Option<RecClient>>, shared: &RecShared, pairs: &[(String, String)]) {
    while !shared.stop_connector.load(Ordering::Acquire) {
        if shared.shut_down.load(Ordering::Acquire) {
            break;
        }
        {
            let guard = client.lock().unwrap_or_else(|e| e.into_inner());
            let Some(active) = guard.as_ref() else { break };
            let c = active.as_client();
            let mut connected = 0;
            for (src, dst) in pairs {
                let Some(dst_port) = c.port_by_name(dst) else {
                    continue;
                };
                if dst_port.is_connected_to(src).unwrap_or(false) {
                    connected += 1;
                    continue;
                }
                if c.port_by_name(src).is_some() {
                    match c.connect_ports_by_name(src, dst) {
                        Ok(()) => connected += 1,
                        Err(e) => {
                            *shared
                                .connect_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner()) =
                                Some(format!("connect {src} -> {dst}: {e:?}"));
                        }
                    }
                }
            }
            shared.connected.store(connected, Ordering::Release);
        }
        std::thread::sleep(CONNECT_POLL);
    }
}

fn drain_loop(
    mut consumers: Vec<rtrb::Consumer<f32>>,
    mut gap_consumer: rtrb::Consumer<(u64, i64)>,
    mut cycle_consumer: rtrb::Consumer<(u64, u64)>,
    mut midi_consumer: rtrb::Consumer<MidiCapture>,
    shared: &RecShared,
) -> DrainResult {
    let mut midi = Vec::new();
    let mut out: Vec<Vec<f32>> = consumers
        .iter()
        .map(|_| Vec::with_capacity(1 << 20))
        .collect();
    let mut gaps = Vec::new();
    let mut cycles = Vec::new();
    loop {
        while let Ok((at, frames)) = gap_consumer.pop() {
            gaps.push((at as usize, frames));
        }
        while let Ok((at, usecs)) = cycle_consumer.pop() {
            cycles.push((at as usize, usecs));
        }
        while let Ok(event) = midi_consumer.pop() {
            midi.push(event);
        }
        // Read the flag before draining so the last pass sees everything written before it.
        let stopping = shared.stop_drain.load(Ordering::Acquire);
        for (consumer, dst) in consumers.iter_mut().zip(out.iter_mut()) {
            let n = consumer.slots();
            if n == 0 {
                continue;
            }
            if let Ok(chunk) = consumer.read_chunk(n) {
                let (a, b) = chunk.as_slices();
                dst.extend_from_slice(a);
                dst.extend_from_slice(b);
                chunk.commit_all();
            }
        }
        if stopping {
            while let Ok((at, frames)) = gap_consumer.pop() {
                gaps.push((at as usize, frames));
            }
            while let Ok((at, usecs)) = cycle_consumer.pop() {
                cycles.push((at as usize, usecs));
            }
            while let Ok(event) = midi_consumer.pop() {
                midi.push(event);
            }
            return (out, gaps, cycles, midi);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------------------------

/// Estimated amplitude of the `freq_hz` component of `samples` (a full-scale sine at exactly
/// that frequency gives ~1.0; 0.5 * sin gives ~0.5). Goertzel at the exact (non-bin) frequency
/// with a Hann window, so leakage from other tones is negligible once the window holds more than
/// a few cycles of the difference frequency. Pass a slice that covers only the tone.
pub fn goertzel_power(samples: &[f32], freq_hz: f32, sample_rate: u32) -> f32 {
    let n = samples.len();
    if n < 2 {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq_hz as f64 / sample_rate as f64;
    let coeff = 2.0 * w.cos();
    let win_step = 2.0 * std::f64::consts::PI / (n - 1) as f64;
    let (mut s1, mut s2, mut win_sum) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &x) in samples.iter().enumerate() {
        let win = 0.5 - 0.5 * (win_step * i as f64).cos();
        win_sum += win;
        let s0 = x as f64 * win + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    (2.0 * power.sqrt() / win_sum) as f32
}

pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&x| x as f64 * x as f64).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

pub fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// First and last index whose |sample| > threshold.
pub fn non_silent_span(samples: &[f32], threshold: f32) -> Option<(usize, usize)> {
    let first = samples.iter().position(|x| x.abs() > threshold)?;
    let last = samples.iter().rposition(|x| x.abs() > threshold)?;
    Some((first, last))
}

/// Like [`goertzel_power`], but the median over consecutive 100 ms blocks. Use this for level
/// checks on real recordings: one long Goertzel window is phase-coherent, so a single xrun
/// (a few samples lost or repeated, see `Recording::gaps`) can pull a perfect tone's estimate
/// from 0.5 down to 0.1. A 100 ms Hann block still separates tones >= ~40 Hz apart.
pub fn tone_amplitude(samples: &[f32], freq_hz: f32, sample_rate: u32) -> f32 {
    tone_amplitude_between_gaps(samples, &[], freq_hz, sample_rate)
}

/// Like [`tone_amplitude`], but no 100 ms block spans one of `gaps` (indices into `samples`,
/// see [`Recording::gaps_within`]): a recording with a gap every few blocks (a badly
/// disturbed machine) would otherwise have a phase jump in most blocks and the median with
/// them. With fewer than two whole blocks between gaps, the longest gap-free stretch is
/// measured alone.
pub fn tone_amplitude_between_gaps(
    samples: &[f32],
    gaps: &[usize],
    freq_hz: f32,
    sample_rate: u32,
) -> f32 {
    let block = (sample_rate as usize / 10).max(2);
    let mut cuts: Vec<usize> = gaps
        .iter()
        .copied()
        .filter(|&g| g < samples.len())
        .collect();
    cuts.push(0);
    cuts.push(samples.len());
    cuts.sort_unstable();
    cuts.dedup();
    let stretches: Vec<&[f32]> = cuts.windows(2).map(|w| &samples[w[0]..w[1]]).collect();
    let mut v: Vec<f32> = stretches
        .iter()
        .flat_map(|s| s.chunks_exact(block))
        .map(|c| goertzel_power(c, freq_hz, sample_rate))
        .collect();
    if v.len() < 2 {
        let longest = stretches.iter().max_by_key(|s| s.len()).copied();
        return goertzel_power(longest.unwrap_or(samples), freq_hz, sample_rate);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The candidate with the largest [`tone_amplitude`] in `samples` (NaN if no candidates).
pub fn dominant_frequency(samples: &[f32], sample_rate: u32, candidates: &[f32]) -> f32 {
    candidates
        .iter()
        .map(|&f| (f, tone_amplitude(samples, f, sample_rate)))
        .fold(
            (f32::NAN, -1.0f32),
            |best, (f, a)| if a > best.1 { (f, a) } else { best },
        )
        .0
}

// ---------------------------------------------------------------------------------------------
// PtyChild
// ---------------------------------------------------------------------------------------------

/// A child process whose stdin and stdout are the slave side of a fresh pty (so it believes it
/// runs in a terminal, 40 rows x 120 cols) and whose stderr goes to a pipe. The child is a
/// session leader with the pty as its controlling terminal. Dropping it SIGKILLs the child's
/// process group.
pub struct PtyChild {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn spawn_reader(mut src: File, dst: Arc<Mutex<Vec<u8>>>, name: &str) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => dst
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO on the pty master = every slave fd is closed (child gone).
                    Err(_) => break,
                }
            }
        })
        .expect("spawn pty reader thread")
}

impl PtyChild {
    /// Spawns `cmd` on a new pty. stdin/stdout/stderr settings of `cmd` are overridden.
    pub fn spawn(mut cmd: Command) -> PtyChild {
        // posix_openpt + open(slave) with O_CLOEXEC: no window in which a child spawned by another
        // test thread could inherit either end (openpty has one).
        let master = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            File::from_raw_fd(fd)
        };
        let slave_path = unsafe {
            assert!(
                libc::grantpt(master.as_raw_fd()) == 0 && libc::unlockpt(master.as_raw_fd()) == 0,
                "grantpt/unlockpt: {}",
                std::io::Error::last_os_error()
            );
            let mut buf = [0 as libc::c_char; 128];
            let rc = libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len());
            assert!(
                rc == 0,
                "ptsname_r: {}",
                std::io::Error::from_raw_os_error(rc)
            );
            CStr::from_ptr(buf.as_ptr()).to_owned()
        };
        let slave = unsafe {
            let fd = libc::open(
                slave_path.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(
                fd >= 0,
                "open {slave_path:?}: {}",
                std::io::Error::last_os_error()
            );
            OwnedFd::from_raw_fd(fd)
        };
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
        let slave_out = slave.try_clone().expect("dup pty slave");

        let (err_r, err_w) = {
            let mut fds = [-1; 2];
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
            assert!(rc == 0, "pipe2 failed: {}", std::io::Error::last_os_error());
            unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };

        cmd.stdin(Stdio::from(slave))
            .stdout(Stdio::from(slave_out))
            .stderr(Stdio::from(err_w));
        // The child gets a real terminal, so give it a real terminal type (CI often has none or
        // TERM=dumb) unless the caller chose one.
        if !cmd.get_envs().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm-256color");
        }
        unsafe {
            cmd.pre_exec(|| {
                // Runs in the child after stdio is set up: fd 0 is the pty slave.
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?} on a pty: {e}", cmd.get_program()));
        // `cmd` still owns the parent's copies of the slave and the pipe's write end: drop them,
        // or the readers would never see EOF.
        drop(cmd);

        let output = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            spawn_reader(
                master.try_clone().expect("dup pty master"),
                output.clone(),
                "pty-reader",
            ),
            spawn_reader(err_r, stderr.clone(), "pty-stderr"),
        ];
        PtyChild {
            child,
            master,
            output,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes bytes (keys) to the terminal, as if typed.
    pub fn send(&self, bytes: &[u8]) {
        let mut master = &self.master;
        master.write_all(bytes).expect("write to pty master");
        let _ = master.flush();
    }

    /// Everything the child wrote to the terminal so far (raw, including escape sequences; the
    /// pty turns "\n" into "\r\n" unless the child switched to raw mode).
    pub fn output_bytes(&self) -> Vec<u8> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `output_bytes` as (lossy) UTF-8.
    pub fn output_so_far(&self) -> String {
        String::from_utf8_lossy(&self.output_bytes()).into_owned()
    }

    /// What the child wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits until the terminal output contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.output_so_far().contains(needle))
    }

    /// Non-blocking exit check.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on pty child");
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` to the child (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Sets the terminal size (the child gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
    }

    /// SIGKILLs the child's process group and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        self.kill();
        // Readers end when the child's side closes; don't hang on a grandchild holding the pty.
        let deadline = Instant::now() + Duration::from_secs(2);
        for h in self.readers.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PulseServer: a private PulseAudio daemon with a null sink, for ALSA's pulse plugin
// ---------------------------------------------------------------------------------------------

/// Whether a private PulseAudio server and ALSA's pulse plugin can be used here (packages
/// pulseaudio, pulseaudio-utils, libasound2-plugins); the reason when not.
pub fn pulse_unavailable() -> Option<String> {
    for tool in ["pulseaudio", "pactl", "pacat", "parec"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        if !found {
            return Some(format!(
                "`{tool}` is not installed (packages pulseaudio, pulseaudio-utils)"
            ));
        }
    }
    let plugin = ["/usr/lib", "/usr/lib64", "/lib"].iter().any(|base| {
        std::fs::read_dir(base).is_ok_and(|dir| {
            dir.flatten().any(|e| {
                e.path()
                    .join("alsa-lib/libasound_module_pcm_pulse.so")
                    .is_file()
            })
        }) || PathBuf::from(base)
            .join("alsa-lib/libasound_module_pcm_pulse.so")
            .is_file()
    });
    if !plugin {
        return Some("ALSA's pulse plugin is not installed (package libasound2-plugins)".into());
    }
    None
}

/// Samples read from `parec` at once, with `now_ns()` when they reached the test.
pub type TimedChunk = (u64, Vec<f32>);

static PULSE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private `pulseaudio` (no dbus, anonymous Unix socket in a temp folder) with a null sink
/// `out` at 48 kHz (`norewinds=1`, see [`PulseServer::restart`]), plus a low-latency `pacat` stream kept attached so new clients do not
/// stall for up to 2 s while the idle sink wakes up (DESIGN.md). Clients find it through
/// [`PulseServer::envs`]; ALSA's `pulse` PCM (libasound2-plugins) plays into it.
pub struct PulseServer {
    dir: PathBuf,
    daemon: Mutex<Option<Child>>,
    keepalive: Mutex<Option<Child>>,
}

impl PulseServer {
    /// Starts the daemon and waits (up to 10 s) until `pactl info` answers.
    pub fn start() -> PulseServer {
        let dir = std::env::temp_dir().join(format!(
            "backline-pulse-{}-{}",
            std::process::id(),
            PULSE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).expect("pulse home");
        std::fs::create_dir_all(dir.join("run")).expect("pulse runtime dir");
        let server = PulseServer {
            dir,
            daemon: Mutex::new(None),
            keepalive: Mutex::new(None),
        };
        server.restart();
        server
    }

    /// Environment for a client of this server (libpulse, ALSA's pulse plugin, backline).
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        let run = self.dir.join("run");
        vec![
            ("HOME", self.dir.join("home").display().to_string()),
            ("PULSE_RUNTIME_PATH", run.display().to_string()),
            ("XDG_RUNTIME_DIR", run.display().to_string()),
            (
                "PULSE_SERVER",
                format!("unix:{}", run.join("native").display()),
            ),
        ]
    }

    fn tool(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .envs(self.envs())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Whether `pactl info` succeeds (the server accepts clients).
    pub fn answers(&self) -> bool {
        self.tool("pactl")
            .arg("info")
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the daemon (again, after [`PulseServer::kill`]) and returns `now_ns()` at the
    /// moment `pactl info` first succeeded; the keep-alive stream is attached right after.
    pub fn restart(&self) -> u64 {
        let mut daemon = self.daemon.lock().unwrap_or_else(|e| e.into_inner());
        assert!(daemon.is_none(), "pulseaudio is still running");
        let socket = self.dir.join("run/native");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("pulseaudio.log"))
            .expect("pulse log");
        let child = self
            .tool("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "-L",
                // Without norewinds a freshly started null sink passes nothing for its first
                // ~2 s (its first block is its 2 s maximum latency and a new stream cannot
                // rewind it), whatever is attached: measured 2.0 s vs 45 ms with it.
                "module-null-sink sink_name=out rate=48000 norewinds=1",
                "-L",
            ])
            .arg(format!(
                "module-native-protocol-unix auth-anonymous=1 socket={}",
                socket.display()
            ))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("run pulseaudio");
        *daemon = Some(child);
        drop(daemon);
        let deadline = Instant::now() + Duration::from_secs(10);
        let up_at = loop {
            if self.answers() {
                break now_ns();
            }
            assert!(
                Instant::now() < deadline,
                "pulseaudio did not accept clients within 10 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let keepalive = self
            .tool("pacat")
            .args([
                "--latency-msec=10",
                "--rate=48000",
                "--channels=2",
                "--format=s16le",
                "/dev/zero",
            ])
            .spawn()
            .expect("run pacat");
        *self.keepalive.lock().unwrap_or_else(|e| e.into_inner()) = Some(keepalive);
        up_at
    }

    /// SIGKILLs the daemon (its clients' ALSA PCMs start failing) and the keep-alive stream.
    pub fn kill(&self) {
        for slot in [&self.daemon, &self.keepalive] {
            let child = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut child) = child {
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.wait();
            }
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pulseaudio.log")).unwrap_or_default()
    }

    /// Records the null sink's monitor (mono, 48 kHz) with `parec`.
    pub fn record(&self) -> MonitorRecorder {
        let mut child = self
            .tool("parec")
            .args([
                "-d",
                "out.monitor",
                "--rate=48000",
                "--channels=1",
                "--format=s16le",
                "--latency-msec=10",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run parec");
        let mut pipe = child.stdout.take().expect("parec stdout");
        let chunks: Arc<Mutex<Vec<TimedChunk>>> = Arc::default();
        let sink = chunks.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            let mut odd: Option<u8> = None;
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let at = now_ns();
                let mut bytes: Vec<u8> = odd.take().into_iter().collect();
                bytes.extend_from_slice(&buffer[..n]);
                if bytes.len() % 2 == 1 {
                    odd = bytes.pop();
                }
                let samples = bytes
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                    .collect();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((at, samples));
            }
        });
        MonitorRecorder {
            child,
            chunks,
            reader: Some(reader),
        }
    }
}

impl Drop for PulseServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "[pulse-harness] test panicked; pulseaudio log:\n{}",
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `parec` of the null sink's monitor: samples in arrival order, each read timestamped
/// with `now_ns()` when it reached the test.
pub struct MonitorRecorder {
    child: Child,
    chunks: Arc<Mutex<Vec<TimedChunk>>>,
    reader: Option<JoinHandle<()>>,
}

impl MonitorRecorder {
    /// Samples recorded so far.
    pub fn samples(&self) -> usize {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        chunks.iter().map(|(_, s)| s.len()).sum()
    }

    /// Arrival time of the first read holding a sample above `threshold`, at or after `since`.
    pub fn first_sound_after(&self, since: u64, threshold: f32) -> Option<u64> {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        chunks
            .iter()
            .find(|(at, samples)| *at >= since && samples.iter().any(|s| s.abs() > threshold))
            .map(|(at, _)| *at)
    }

    /// Stops `parec` and returns every (arrival time, samples) read.
    pub fn stop(mut self) -> Vec<TimedChunk> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.chunks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for MonitorRecorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! What the timing benchmarks share: the monotonic clock, CPU load on every core, and the
//! machine's scheduling floor measured by `cyclictest` (package rt-tests).

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// CLOCK_MONOTONIC in ns: the player's own clock read, so test, bench and player compare
/// like with like.
#[allow(unused_imports)] // not every bench or test binary reads the clock
pub use backline::engine::callback::monotonic_ns as now_ns;

/// Busy threads, one per core, until dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts one busy thread per core (none when `on` is false).
    pub fn start(on: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = if on {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            0
        };
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `cyclictest -m -p 80 -i 1000` for `seconds`: every latency in µs (from its histogram)
/// and the maximum it reports. `None` when cyclictest is missing or fails.
pub fn cyclictest(seconds: u64) -> Option<(Vec<f64>, f64)> {
    let output = Command::new("cyclictest")
        .args([
            "-m", "-p", "80", "-i", "1000", "-t", "1", "-q", "-h", "20000",
        ])
        .arg(format!("-D{seconds}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut latencies = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        if let (Some(Ok(us)), Some(Ok(count))) = (
            parts.next().map(str::parse::<f64>),
            parts.next().map(str::parse::<usize>),
        ) {
            latencies.extend(std::iter::repeat(us).take(count));
        }
    }
    let max: f64 = text
        .lines()
        .find(|l| l.starts_with("# Max Latencies"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()?;
    (!latencies.is_empty()).then_some((latencies, max))
}

/// The q-quantile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// How a bench's stand-in MIDI device reads the FIFO the clock writes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReaderMode {
    /// Blocked in `read(2)`: every write has to wake it (on a VM an inter-processor
    /// interrupt), and its own wake-up latency is in every arrival stamp.
    Blocking,
    /// Sleeps until `POLL_WINDOW_NS` before the next tick is due (the last arrival + one tick
    /// interval) and then polls with non-blocking reads, the way a MIDI interface's UART sees
    /// a byte the moment it is on the wire: the writer wakes nobody, and the stamp is taken
    /// within a read's time of the byte's arrival.
    Polling {
        /// The tick interval the reader expects, in ns.
        interval_ns: u64,
    },
}

/// How long before a tick is due the polling reader starts to poll: more than the clock's
/// lateness almost always is, so a byte is rarely already waiting when polling starts
/// (after an inexact stamp the window doubles until a stamp is exact again).
pub const POLL_WINDOW_NS: u64 = 1_000_000;

/// After this many tick intervals with nothing to read, the polling reader blocks in
/// `poll(2)` instead (the clock stopped, or the writer has not written yet).
const POLL_GIVE_UP_INTERVALS: u64 = 4;

/// One read's worth of bytes and when it was read.
pub struct Arrival<'a> {
    /// CLOCK_MONOTONIC when the read returned, in ns.
    pub time_ns: u64,
    /// The bytes read.
    pub bytes: &'a [u8],
    /// The bytes were already waiting when the polling reader looked (it woke late, or the
    /// tick came early by more than the window), or the reader was woken from `poll(2)`:
    /// either way the stamp may be later than the arrival.
    pub inexact: bool,
}

/// Reads the FIFO at `fd` (opened for reading) until its writer closes it, calling `arrived`
/// for every read that returned bytes.
pub fn read_fifo(fd: std::os::fd::RawFd, mode: ReaderMode, mut arrived: impl FnMut(Arrival)) {
    let mut buffer = [0u8; 64];
    let read = |buffer: &mut [u8; 64]| {
        // SAFETY: buffer is valid for its length; fd is an open descriptor.
        unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) }
    };
    let ReaderMode::Polling { interval_ns } = mode else {
        while let n @ 1.. = read(&mut buffer) {
            let time_ns = now_ns();
            arrived(Arrival {
                time_ns,
                bytes: &buffer[..n as usize],
                inexact: true,
            });
        }
        return;
    };
    // SAFETY: F_SETFL with O_NONBLOCK changes only this descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    // The next tick is expected one interval after the last stamp. An inexact stamp may be
    // late, so after one the window doubles (up to half an interval) until a stamp is exact
    // again: a late stamp cannot leave the reader waking after every tick from then on.
    let mut last: Option<u64> = None;
    let mut window_ns = POLL_WINDOW_NS;
    loop {
        if let Some(last) = last {
            backline::timing::sleep_until_ns((last + interval_ns).saturating_sub(window_ns));
        }
        let mut polling_since = now_ns();
        let mut first_look = true;
        let mut woken = false;
        loop {
            // poll(2) looks at a pipe without its mutex; read(2) takes the mutex, and a reader
            // whose vCPU the host stalls while it holds it stalls the clock's write as long.
            // So read only once a byte is there, stamped the moment poll saw it.
            let mut pollfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; timeout 0 never blocks.
            let ready = unsafe { libc::poll(&mut pollfd, 1, 0) } > 0;
            let seen_ns = now_ns();
            let n = if ready { read(&mut buffer) } else { -1 };
            if n > 0 {
                let time_ns = seen_ns;
                let inexact = woken || first_look;
                arrived(Arrival {
                    time_ns,
                    bytes: &buffer[..n as usize],
                    inexact,
                });
                window_ns = if inexact {
                    (window_ns * 2).min(interval_ns / 2)
                } else {
                    POLL_WINDOW_NS
                };
                last = Some(time_ns);
                break;
            }
            if ready && n == 0 {
                return; // end of file: the writer closed
            }
            let would_block =
                !ready || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
            if !would_block {
                return; // an error
            }
            first_look = false;
            if now_ns() - polling_since > POLL_GIVE_UP_INTERVALS * interval_ns {
                let mut pollfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; -1 waits until the FIFO is readable or hung up.
                unsafe { libc::poll(&mut pollfd, 1, -1) };
                woken = true;
                polling_since = now_ns();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// The beat clock's waiting pattern with nothing else around it: a SCHED_FIFO 80 thread that
/// sleeps until the spin window before each of `seconds` × (1 s / `period_ns`) absolute
/// deadlines (the clock's adaptive window, `SpinWindow`, from `spin_ns` up to `spin_max_ns`),
/// spins to the deadline and records how late it got there (no write, no audio clock, no
/// other thread). What is left is the machine: the tail a perfect clock would have here.
/// Lateness in µs, sorted; `None` when SCHED_FIFO was not granted.
pub fn sleep_and_spin(
    seconds: u64,
    period_ns: u64,
    spin_ns: u64,
    spin_max_ns: u64,
) -> Option<Vec<f64>> {
    sleep_and_spin_pair(seconds, period_ns, spin_ns, spin_max_ns).map(|[alone, _, _]| alone)
}

/// [`sleep_and_spin`] as backline runs it with its standby writer (`midi::standby`): the
/// clock's loop (SCHED_FIFO 80, adaptive window) and a second loop (SCHED_FIFO 69, fixed
/// `spin_ns` window) to the same deadlines at once, on whichever vCPUs the kernel gives them.
/// Returns the lateness of the first loop, of the second, and of the earlier of the two per
/// deadline (what a device would see from two writers racing for each write), µs, sorted.
pub fn sleep_and_spin_pair(
    seconds: u64,
    period_ns: u64,
    spin_ns: u64,
    spin_max_ns: u64,
) -> Option<[Vec<f64>; 3]> {
    let count = seconds * 1_000_000_000 / period_ns;
    let first_deadline = now_ns() + 100_000_000;
    let spawn = |priority: i32, max_ns: u64| {
        std::thread::spawn(move || {
            let param = libc::sched_param {
                sched_priority: priority,
            };
            // SAFETY: param is a valid sched_param; pid 0 is the calling thread.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
                return None;
            }
            backline::rt::prefault_stack();
            let mut window = backline::timing::SpinWindow::new(spin_ns, max_ns);
            let mut lateness = Vec::with_capacity(count as usize);
            let mut deadline = first_deadline;
            for _ in 0..count {
                let target = deadline - window.window_ns();
                backline::timing::sleep_until_ns(target);
                let woke = now_ns();
                window.observe(woke, woke.saturating_sub(target));
                while now_ns() < deadline {
                    std::hint::spin_loop();
                }
                lateness.push((now_ns() - deadline) as f64 / 1000.0);
                deadline += period_ns;
            }
            Some(lateness)
        })
    };
    let clock = spawn(80, spin_max_ns);
    let standby = spawn(69, spin_ns);
    let mut clock = clock.join().ok().flatten()?;
    let mut standby = standby.join().ok().flatten()?;
    let mut earlier: Vec<f64> = clock.iter().zip(&standby).map(|(a, b)| a.min(*b)).collect();
    for v in [&mut clock, &mut standby, &mut earlier] {
        v.sort_by(f64::total_cmp);
    }
    Some([clock, standby, earlier])
}

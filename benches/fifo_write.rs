//! What one MIDI byte costs to *write* on this machine, before any timing error: the time a
//! one-byte non-blocking `write(2)` takes, issued at 120 absolute deadlines a second from a
//! SCHED_FIFO 80 thread that sleeps and spins exactly like the beat clock, into `/dev/null`
//! and into a FIFO whose reader (SCHED_FIFO 79, blocked in `read`) sits on the other core or
//! on the same core, idle and with a busy thread on every core.
//!
//! The clock jitter bench measures lateness at the *completion* of the write into such a FIFO,
//! so the FIFO rows are the part of its self-reported lateness that belongs to the pipe and
//! the reader's wake-up (on a VM, an inter-processor interrupt), not to the clock.
//!
//! Run: `cargo bench --bench fifo_write` (BACKLINE_BENCH_SECONDS=N per condition, default 15).
//! Needs root or CAP_SYS_NICE for SCHED_FIFO (rows are marked when it was not granted).

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::ReaderMode;

use backline::engine::callback::monotonic_ns;
use backline::stats::{MetricHistogram, Summary};
use backline::timing::sleep_until_ns;

/// 300 BPM × 24 PPQN: the clock bench's tick rate.
const TICK_NS: u64 = 8_333_333;
/// The clock's default spin window.
const SPIN_NS: u64 = 400_000;

/// Where the clock's bytes go.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    DevNull,
    Fifo {
        /// The reader is pinned to the writer's core instead of the other one.
        same_core: bool,
        reader: ReaderMode,
        /// The FIFO lives on tmpfs (`/dev/shm`) instead of `$TMPDIR`.
        tmpfs: bool,
    },
}

impl Target {
    fn name(self) -> String {
        match self {
            Target::DevNull => "/dev/null".to_string(),
            Target::Fifo {
                same_core,
                reader,
                tmpfs,
            } => format!(
                "FIFO in {}, {} reader, {} core",
                if tmpfs {
                    "/dev/shm".to_string()
                } else {
                    std::env::temp_dir().display().to_string()
                },
                match reader {
                    ReaderMode::Blocking => "blocking",
                    ReaderMode::Polling { .. } => "polling",
                },
                if same_core { "same" } else { "other" }
            ),
        }
    }
}

/// Pins the calling thread to `cpu`; false when the machine has no such CPU.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// SCHED_FIFO at `priority` for the calling thread; false when not permitted.
fn fifo(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: param is a valid sched_param; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn open(path: &str, flags: i32) -> Option<OwnedFd> {
    let path = CString::new(path).ok()?;
    // SAFETY: path is NUL-terminated; a non-negative result is a descriptor we own.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    // SAFETY: fd was just opened and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs one condition; the summary of write durations, and whether SCHED_FIFO was granted.
fn measure(target: Target, seconds: u64) -> Option<(Summary, bool)> {
    let base = match target {
        Target::Fifo { tmpfs: true, .. } => std::path::PathBuf::from("/dev/shm"),
        _ => std::env::temp_dir(),
    };
    let dir = base.join(format!("backline-fifo-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let fifo_path = dir.join("midi");
    let fifo_str = fifo_path.to_str()?.to_string();
    let reader = if let Target::Fifo {
        same_core, reader, ..
    } = target
    {
        let c_path = CString::new(fifo_str.clone()).ok()?;
        // SAFETY: c_path is NUL-terminated.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            return None;
        }
        let path = fifo_str.clone();
        Some(std::thread::spawn(move || {
            pin_to(if same_core { 0 } else { 1 });
            fifo(79);
            if let Some(fd) = open(&path, libc::O_RDONLY) {
                common::read_fifo(fd.as_raw_fd(), reader, |_| {});
            }
        }))
    } else {
        None
    };
    let writer_path = match target {
        Target::DevNull => "/dev/null".to_string(),
        Target::Fifo { .. } => fifo_str,
    };
    let result = std::thread::spawn(move || {
        pin_to(0);
        let realtime = fifo(80);
        backline::rt::prefault_stack();
        // Blocks until the reader opens its end, then non-blocking like a MIDI output.
        let fd = open(&writer_path, libc::O_WRONLY)?;
        // SAFETY: fd is open; F_SETFL with O_NONBLOCK changes only its flags.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut histogram = MetricHistogram::default();
        let mut deadline = monotonic_ns() + 10 * TICK_NS;
        let end = deadline + seconds * 1_000_000_000;
        while deadline < end {
            sleep_until_ns(deadline - SPIN_NS);
            while monotonic_ns() < deadline {
                std::hint::spin_loop();
            }
            let started = monotonic_ns();
            // SAFETY: one byte from a valid buffer to an open descriptor.
            unsafe { libc::write(fd.as_raw_fd(), [0xF8u8].as_ptr().cast(), 1) };
            histogram.record((monotonic_ns() - started) as i64);
            deadline += TICK_NS;
        }
        // Closing the write end ends the reader.
        drop(fd);
        Some((histogram.summary(), realtime))
    })
    .join()
    .ok()
    .flatten();
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() {
    let seconds: u64 = std::env::var("BACKLINE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    backline::rt::lock_memory();
    println!(
        "one-byte write(2) duration at 120 deadlines/s from a SCHED_FIFO 80 thread that spins to each deadline, {seconds} s per condition (µs)"
    );
    println!(
        "{:<58} {:>7} {:>8} {:>8} {:>8} {:>9}",
        "condition", "writes", "p50", "p99", "p99.9", "max"
    );
    let only_loaded = std::env::var("BACKLINE_BENCH_ONLY").as_deref() == Ok("loaded");
    let polling = ReaderMode::Polling {
        interval_ns: TICK_NS,
    };
    let fifo = |same_core, reader, tmpfs| Target::Fifo {
        same_core,
        reader,
        tmpfs,
    };
    let targets = [
        Target::DevNull,
        fifo(false, ReaderMode::Blocking, false),
        fifo(true, ReaderMode::Blocking, false),
        fifo(false, ReaderMode::Blocking, true),
        fifo(false, polling, false),
        fifo(false, polling, true),
    ];
    for load in [false, true] {
        if only_loaded && !load {
            continue;
        }
        for target in targets {
            let _load = common::Load::start(load);
            let name = format!(
                "{}, {}",
                target.name(),
                if load { "loaded" } else { "idle" }
            );
            match measure(target, seconds) {
                Some((s, realtime)) => {
                    let us = |ns: i64| ns as f64 / 1000.0;
                    println!(
                        "{name:<58} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>9.1}{}",
                        s.count,
                        us(s.p50),
                        us(s.p99),
                        us(s.p999),
                        us(s.max),
                        if realtime {
                            ""
                        } else {
                            "  (SCHED_FIFO not granted)"
                        }
                    );
                }
                None => println!("{name:<58} could not be measured (FIFO or thread setup failed)"),
            }
        }
    }
}

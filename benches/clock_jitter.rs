//! Beat-clock jitter against the machine's floor. Runs the real binary
//! (`backline rehearse --clock-only --bpm 300`, 120 ticks/s) into a FIFO on tmpfs read by an
//! independent reader process that timestamps every byte with CLOCK_MONOTONIC, in four
//! conditions — SCHED_FIFO idle, SCHED_FIFO with a busy thread on every core, normal
//! priority idle, normal priority loaded — next to two floors measured under the same load
//! for as long: `cyclictest -m -p 80 -i 1000`, and the clock's own sleep-and-spin pattern
//! with nothing else (`common::sleep_and_spin_pair`), the tail a perfect clock would have here,
//! and the same loop raced by a standby loop as backline's standby writer races the clock
//! thread (`midi::standby`): the earlier of the two per deadline.
//!
//! The reader polls (`common::ReaderMode::Polling`): it sleeps until 1 ms before the next
//! tick is due and then reads non-blocking until the byte is there, as a MIDI interface's
//! UART sees a byte the moment it is on the wire. A reader blocked in `read(2)` (the mode
//! BACKLINE_BENCH_READER_MODE=blocking keeps) makes every write wake it — on this VM an
//! inter-processor interrupt and an exit to the hypervisor inside the clock's write — and
//! puts its own wake-up latency into every arrival stamp: `cargo bench --bench fifo_write`
//! measures both. "inexact" counts stamps taken when the byte was already waiting as the
//! reader started to poll (it woke late), which may be later than the arrival; "exact999" is
//! the arrival p99.9 without them, where the reader's own stalls do not count.
//!
//! Self-reported lateness (write completion − deadline) comes from the rehearsal JSON.
//! Arrival lateness is measured against a steady grid of ticks (tick n at t0 + n × interval,
//! the interval fitted to the run — see `arrival_lateness` — and t0 the 0.1th percentile of the
//! arrivals after removing the grid): it is the jitter a device sees. "early" counts ticks
//! that arrived more than 100 µs before the median arrival. "rate ppm" is the fitted interval's
//! difference from the nominal 8.333 ms. Drift: the last second's median offset from the
//! nominal grid placed on the first second's (a tick late by a stall at the very end is
//! jitter, not drift); "last": the last tick's own offset from that grid. "spin%": the share
//! of one core the clock spent busy-waiting before its deadlines (its adaptive spin window's
//! cost, from backline's end-of-run log line).
//!
//! Sandbox cost (seccomp filters every syscall): SCHED_FIFO loaded runs alternate with and
//! without `--no-sandbox` (plus a second sandbox-off run per round, for the noise between
//! identical runs), and the table gives the difference in clock p99 and in audio callback
//! duty p99 (callback time / period, of the clock-only show's silent render). Target: under
//! 5 %. The per-syscall cost behind it: `cargo bench --bench sandbox_syscalls`.
//!
//! Run: `cargo bench --bench clock_jitter` (BACKLINE_BENCH_SECONDS per condition, default 20;
//! BACKLINE_BENCH_ONLY=sandbox for the sandbox comparison alone, =loaded for SCHED_FIFO loaded
//! and the floor alone; BACKLINE_BENCH_PAIRS
//! on/off/off rounds, default 2; BACKLINE_BENCH_KEEP=1 keeps each run's arrival stamps and
//! rehearsal report; BACKLINE_BENCH_READER_MODE=blocking for a reader blocked in `read`).

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;

use common::{percentile, ReaderMode};

const BPM: f64 = 300.0;

/// The clock's default spin window (`realtime.spin_us`, `spin_max_us`), for the
/// sleep-and-spin floor.
const SPIN_NS: u64 = 400_000;
const SPIN_MAX_NS: u64 = 2_000_000;

/// Reader mode (this executable re-run): timestamp every clock byte arriving on the FIFO.
/// Writes one line per tick: the arrival time in ns, and `1` when the stamp may be late
/// (`common::Arrival::inexact`).
fn reader(fifo: &str, out: &str, mode: ReaderMode) {
    // A polling reader runs SCHED_FIFO 60: above the bench's load, below the audio (70) and
    // the clock (80), which its polling window must never delay. A blocking reader runs at 79,
    // so that its own wake-ups blur the arrival times as little as they can, still below the
    // clock so that it never preempts the clock inside write(2).
    let priority = match mode {
        ReaderMode::Polling { .. } => 60,
        ReaderMode::Blocking => 79,
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall on the calling thread.
    unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    backline::rt::prefault_stack();
    let Ok(file) = std::fs::File::open(fifo) else {
        return;
    };
    let mut times = Vec::with_capacity(1 << 20);
    common::read_fifo(file.as_raw_fd(), mode, |arrival| {
        let ticks = arrival.bytes.iter().filter(|&&b| b == 0xF8).count();
        times.extend(std::iter::repeat((arrival.time_ns, arrival.inexact)).take(ticks));
    });
    if let Ok(mut f) = std::fs::File::create(out) {
        for (t, inexact) in times {
            let _ = writeln!(f, "{t} {}", u8::from(inexact));
        }
    }
}

/// The reader the bench uses: polling unless BACKLINE_BENCH_READER_MODE=blocking.
fn reader_mode() -> ReaderMode {
    if std::env::var("BACKLINE_BENCH_READER_MODE").as_deref() == Ok("blocking") {
        ReaderMode::Blocking
    } else {
        ReaderMode::Polling {
            interval_ns: (60e9 / BPM / 24.0) as u64,
        }
    }
}

struct Row {
    self_p50: f64,
    self_p99: f64,
    self_p999: f64,
    self_max: f64,
    arrival: [f64; 4],
    drift_us: f64,
    /// The last tick's offset from the nominal grid of the first second, µs.
    last_tick_us: f64,
    /// The fitted tick rate's difference from the nominal one, in parts per million.
    rate_ppm: f64,
    /// Arrivals more than `EARLY_US` before the grid.
    early_ticks: usize,
    ticks: usize,
    /// Arrival stamps that may be late (see `common::Arrival::inexact`); every one with a
    /// blocking reader.
    inexact_stamps: usize,
    /// Arrival p99.9 over the exact stamps only, µs.
    exact_p999: f64,
    /// p99 of the audio callback's time in µs and the nominal period in µs.
    callback_p99: f64,
    period_us: f64,
    /// Share of one core the clock spent busy-waiting before deadlines, % (backline's own
    /// end-of-run log line).
    spin_share: f64,
}

/// `only_sys_nice`: run backline through setpriv with CAP_SYS_NICE as its only capability
/// (as the systemd unit does), so that no run locks memory beyond RLIMIT_MEMLOCK with
/// CAP_IPC_LOCK: with the sandbox on, such a lock is released before the capability goes
/// (see `rt::release_memory_lock_above_limit`), which would compare locked memory with
/// unlocked memory instead of measuring the sandbox.
fn run_condition(
    seconds: u64,
    realtime: bool,
    load: bool,
    sandbox: bool,
    only_sys_nice: bool,
) -> Option<Row> {
    let dir = fifo_dir().join(format!(
        "backline-jitter-{}-{realtime}-{load}-{sandbox}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let fifo = dir.join("clock.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str()?).ok()?;
    // SAFETY: valid C string.
    unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    let arrivals = dir.join("arrivals.txt");
    let report = dir.join("report.json");
    let mut reader = Command::new(std::env::current_exe().ok()?)
        .env(
            "BACKLINE_BENCH_READER",
            format!("{}\n{}", fifo.display(), arrivals.display()),
        )
        .env(
            "BACKLINE_BENCH_READER_MODE",
            match reader_mode() {
                ReaderMode::Blocking => "blocking",
                ReaderMode::Polling { .. } => "polling",
            },
        )
        .spawn()
        .ok()?;
    let load = common::Load::start(load);
    let mut command = if only_sys_nice {
        let mut setpriv = Command::new("setpriv");
        setpriv
            .args([
                "--bounding-set=-all,+sys_nice",
                "--inh-caps=-all,+sys_nice",
                "--ambient-caps=+sys_nice",
            ])
            .arg(env!("CARGO_BIN_EXE_backline"));
        setpriv
    } else {
        Command::new(env!("CARGO_BIN_EXE_backline"))
    };
    command
        .args([
            // Info for the clock's end-of-run line on its busy-waiting (`spin_share`).
            "--log-level",
            "info",
            "rehearse",
            "--clock-only",
            "--bpm",
            "300",
            "--duration",
        ])
        .arg(format!("{seconds}s"))
        .arg("--midi-out")
        .arg(&fifo)
        .arg("--report")
        .arg(&report);
    if !realtime {
        command.arg("--no-rt");
    }
    if !sandbox {
        command.arg("--no-sandbox");
    }
    let status = command.output().ok()?;
    drop(load);
    // The reader ends when backline closes the FIFO; if backline never opened it, the reader
    // still waits in open(2): give it a moment, then end it.
    let waited = std::time::Instant::now();
    while matches!(reader.try_wait(), Ok(None)) {
        if waited.elapsed() > std::time::Duration::from_secs(5) {
            let _ = reader.kill();
            let _ = reader.wait();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !status.status.success() {
        eprintln!(
            "backline failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        return None;
    }
    let log = String::from_utf8_lossy(&status.stderr);
    let spin_share = busy_wait_share(&log);
    // The standby writer's share and rescues (`midi::standby`), as backline logged them.
    for line in log.lines().filter(|l| l.contains("standby writer")) {
        eprintln!("  {}", line.split("beat clock: ").last().unwrap_or(line));
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).ok()?).ok()?;
    let clock = &json["overall"]["clock_lateness"];
    let us = |key: &str| clock[key].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let callback_p99 = json["overall"]["audio_callback_time"]["p99_ns"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / 1000.0;
    let period_us = json["period_ns"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let stamps: Vec<(f64, bool)> = std::fs::read_to_string(&arrivals)
        .ok()?
        .lines()
        .filter_map(|l| {
            let (time, inexact) = l.split_once(' ')?;
            Some((time.parse::<f64>().ok()?, inexact == "1"))
        })
        .collect();
    let times: Vec<f64> = stamps.iter().map(|s| s.0).collect();
    let inexact_stamps = stamps.iter().filter(|s| s.1).count();
    if std::env::var_os("BACKLINE_BENCH_KEEP").is_some() {
        eprintln!(
            "kept the arrival stamps and the report in {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let interval = 60e9 / BPM / 24.0;
    let offsets: Vec<f64> = times
        .iter()
        .enumerate()
        .map(|(n, t)| t - n as f64 * interval)
        .collect();
    let (mut lateness, rate_ppm, early_ticks) = arrival_lateness(&offsets, interval);
    // Drift: the nominal grid placed on the first second (median offset) against the last
    // second (median offset): where the last ticks sit against their ideal times. Medians, so
    // that one tick late by a stall at the very end (jitter, counted above) is not taken for
    // drift; the last tick's own offset is printed as "last".
    let second = (1e9 / interval) as usize;
    let median_of = |ticks: &[f64]| {
        let mut sorted = ticks.to_vec();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 0.5)
    };
    let first = median_of(&offsets[..second.min(offsets.len())]);
    let drift_us = (median_of(&offsets[offsets.len().saturating_sub(second)..]) - first) / 1000.0;
    let last_tick_us = offsets
        .last()
        .map_or(f64::NAN, |last| (last - first) / 1000.0);
    let mut exact: Vec<f64> = lateness
        .iter()
        .zip(&stamps)
        .filter(|(_, (_, inexact))| !inexact)
        .map(|(l, _)| *l)
        .collect();
    exact.sort_by(f64::total_cmp);
    lateness.sort_by(f64::total_cmp);
    Some(Row {
        self_p50: us("p50_ns"),
        self_p99: us("p99_ns"),
        self_p999: us("p999_ns"),
        self_max: us("max_ns"),
        arrival: [
            percentile(&lateness, 0.5),
            percentile(&lateness, 0.99),
            percentile(&lateness, 0.999),
            lateness.last().copied().unwrap_or(f64::NAN),
        ],
        drift_us,
        last_tick_us,
        rate_ppm,
        early_ticks,
        ticks: times.len(),
        inexact_stamps,
        exact_p999: percentile(&exact, 0.999),
        callback_p99,
        period_us,
        spin_share,
    })
}

/// The share of one core from backline's "busy-waiting before deadlines took X % of one
/// core" log line, or NaN without one.
fn busy_wait_share(log: &str) -> f64 {
    log.lines()
        .find_map(|line| {
            let (_, after) = line.split_once("busy-waiting before deadlines took ")?;
            after.split_once(" %")?.0.parse().ok()
        })
        .unwrap_or(f64::NAN)
}

/// Where the bench makes its FIFO: tmpfs (`/dev/shm`) when the machine has it. A FIFO on a
/// disk filesystem updates its modification time on every write, through the filesystem's
/// journal on ext4, which `cargo bench --bench fifo_write` shows costs the writer up to
/// hundreds of µs: a cost of the file's location, not of the clock (a MIDI device node is
/// on devtmpfs).
fn fifo_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Arrival lateness in µs, unsorted, the fitted rate's deviation in ppm, and how many ticks
/// arrived more than `EARLY_US` early. `offsets[n]` is
/// arrival n minus n nominal intervals.
///
/// The ticks follow the audio clock, whose rate differs from CLOCK_MONOTONIC's by a fraction
/// of a ppm (the audio clock's estimate of the device's crystal). Measured against a grid at
/// the nominal rate, that slow drift — tens of µs over ten minutes, which no device can hear
/// and which the drift column reports on its own — would be counted as jitter and lift every
/// percentile above the lowest arrivals. So the grid's rate is fitted first: a least-squares
/// line through one median offset per second (medians, so the tails do not pull the line),
/// and lateness is each arrival's distance above that line, from the anchor (`ANCHOR_QUANTILE`).
fn arrival_lateness(offsets: &[f64], interval: f64) -> (Vec<f64>, f64, usize) {
    let per_window = ((1e9 / interval) as usize).max(1);
    let mut points = Vec::new();
    for (w, window) in offsets.chunks(per_window).enumerate() {
        if window.len() < per_window / 2 {
            continue;
        }
        let mut sorted = window.to_vec();
        sorted.sort_by(f64::total_cmp);
        let centre = (w * per_window) as f64 + (window.len() as f64 - 1.0) / 2.0;
        points.push((centre, percentile(&sorted, 0.5)));
    }
    let slope = if points.len() >= 2 {
        let n = points.len() as f64;
        let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        if sxx > 0.0 {
            sxy / sxx
        } else {
            0.0
        }
    } else {
        0.0
    };
    let residuals: Vec<f64> = offsets
        .iter()
        .enumerate()
        .map(|(n, o)| o - slope * n as f64)
        .collect();
    let mut sorted = residuals.clone();
    sorted.sort_by(f64::total_cmp);
    let t0 = percentile(&sorted, ANCHOR_QUANTILE);
    let lateness: Vec<f64> = residuals.iter().map(|r| (r - t0) / 1000.0).collect();
    // Early against the median arrival, which a cluster of early ticks cannot move the way
    // it can move the anchor.
    let median_us = (percentile(&sorted, 0.5) - t0) / 1000.0;
    let early = lateness
        .iter()
        .filter(|&&l| l < median_us - EARLY_US)
        .count();
    (lateness, slope / interval * 1e6, early)
}

/// The grid is anchored at this quantile of the arrivals, not at the very earliest: one tick
/// sent early (the audio clock re-locking after a stall of tens of ms) would otherwise lift
/// every figure by its earliness — in a 10-minute run with a 56 ms stall the earliest arrival
/// was 2.3 ms before the rest, and an anchor at the minimum reported a p50 of 2285 µs.
const ANCHOR_QUANTILE: f64 = 0.001;

/// Arrivals further than this before the median arrival are counted and reported as early
/// ticks.
const EARLY_US: f64 = 100.0;

fn cyclictest(seconds: u64) -> Option<[f64; 4]> {
    let (mut latencies, max) = common::cyclictest(seconds)?;
    latencies.sort_by(f64::total_cmp);
    Some([
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        max,
    ])
}

fn main() {
    if let Ok(spec) = std::env::var("BACKLINE_BENCH_READER") {
        let mut parts = spec.lines();
        if let (Some(fifo), Some(out)) = (parts.next(), parts.next()) {
            reader(fifo, out, reader_mode());
        }
        return;
    }
    let seconds: u64 = std::env::var("BACKLINE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    match std::env::var("BACKLINE_BENCH_ONLY").as_deref() {
        Ok("sandbox") => sandbox_cost(seconds),
        Ok("loaded") => conditions(seconds, true),
        _ => {
            conditions(seconds, false);
            sandbox_cost(seconds);
        }
    }
}

/// Alternating runs with and without the sandbox (SCHED_FIFO, every core loaded — on this VM
/// the loaded figures are far steadier than the idle ones, whose tails come from waking an
/// idle vCPU): medians of clock p99 and callback duty p99, and their differences. Each round
/// also runs a second sandbox-off show (order rotating), so the table gives the spread between
/// two identical configurations next to the difference: a difference inside that spread is
/// the VM's noise, not the sandbox's cost (`benches/sandbox_syscalls.rs` measures the cost
/// itself, per system call).
fn sandbox_cost(seconds: u64) {
    let rounds: usize = std::env::var("BACKLINE_BENCH_PAIRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1);
    // [sandbox on, sandbox off, sandbox off again]
    let mut runs: [Vec<Row>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for step in 0..3 {
            let which = (round + step) % 3;
            runs[which].extend(run_condition(seconds, true, true, which == 0, true));
        }
    }
    if runs.iter().any(Vec::is_empty) {
        println!("sandbox comparison failed");
        return;
    }
    let median = |rows: &[Row], f: &dyn Fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let relative = |a: f64, b: f64| {
        if b != 0.0 {
            100.0 * (a - b) / b
        } else {
            f64::NAN
        }
    };
    let clock = |r: &Row| r.self_p99;
    let arrival = |r: &Row| r.arrival[1];
    let duty = |r: &Row| 100.0 * r.callback_p99 / r.period_us;
    println!();
    println!(
        "sandbox cost: SCHED_FIFO loaded, CAP_SYS_NICE only, {rounds} round(s) of on/off/off (rotating) of {seconds} s, medians"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>11} {:>14}",
        "metric", "sandbox on", "sandbox off", "difference", "off vs off"
    );
    for (name, f, unit) in [
        (
            "clock lateness p99 (self, µs)",
            &clock as &dyn Fn(&Row) -> f64,
            "",
        ),
        ("clock arrival p99 (µs)", &arrival, ""),
        ("audio callback duty p99 (%)", &duty, "%"),
    ] {
        let on = median(&runs[0], f);
        let off = median(&runs[1], f);
        let again = median(&runs[2], f);
        println!(
            "{name:<34} {on:>11.2}{unit:1} {off:>11.2}{unit:1} {:>+10.1}% {:>+13.1}%",
            relative(on, off),
            relative(again, off)
        );
    }
}

/// The four conditions next to the floor; `loaded_fifo_only` runs just SCHED_FIFO loaded (the
/// condition the targets are about, e.g. for a 10-minute drift run).
fn conditions(seconds: u64, loaded_fifo_only: bool) {
    println!(
        "beat clock at {BPM} BPM (120 ticks/s), {seconds} s per condition, FIFO in {}, {:?} reader; µs",
        fifo_dir().display(),
        reader_mode()
    );
    println!(
        "{:<26} {:>6} | {:>7} {:>7} {:>7} {:>8} | {:>7} {:>7} {:>7} {:>8} {:>7} {:>8} | {:>9} {:>9} {:>8} {:>5} | {:>10} {:>6}",
        "condition",
        "ticks",
        "self50",
        "self99",
        "self999",
        "selfmax",
        "arr50",
        "arr99",
        "arr999",
        "arrmax",
        "inexact",
        "exact999",
        "drift",
        "last",
        "rate ppm",
        "early",
        "p99/floor",
        "spin%"
    );
    let (floor, spinners) = {
        let _load = common::Load::start(true);
        let floor = cyclictest(seconds);
        let spinners =
            common::sleep_and_spin_pair(seconds, (60e9 / BPM / 24.0) as u64, SPIN_NS, SPIN_MAX_NS)
                .map(|runs| {
                    runs.map(|l| {
                        [
                            percentile(&l, 0.5),
                            percentile(&l, 0.99),
                            percentile(&l, 0.999),
                            l.last().copied().unwrap_or(f64::NAN),
                        ]
                    })
                });
        (floor, spinners)
    };
    for (name, realtime, load) in [
        ("SCHED_FIFO, idle", true, false),
        ("SCHED_FIFO, loaded", true, true),
        ("normal priority, idle", false, false),
        ("normal priority, loaded", false, true),
    ] {
        if loaded_fifo_only && !(realtime && load) {
            continue;
        }
        match run_condition(seconds, realtime, load, true, false) {
            Some(r) => {
                let ratio = floor.map_or("-".to_string(), |f| format!("{:.2}×", r.self_p99 / f[1]));
                println!(
                    "{name:<26} {:>6} | {:>7.1} {:>7.1} {:>7.1} {:>8.1} | {:>7.1} {:>7.1} {:>7.1} {:>8.1} {:>7} {:>8.1} | {:>9.1} {:>9.1} {:>8.3} {:>5} | {:>10} {:>6.1}",
                    r.ticks, r.self_p50, r.self_p99, r.self_p999, r.self_max, r.arrival[0], r.arrival[1], r.arrival[2], r.arrival[3], r.inexact_stamps, r.exact_p999, r.drift_us, r.last_tick_us, r.rate_ppm, r.early_ticks, ratio, r.spin_share
                );
            }
            None => println!("{name:<26} failed"),
        }
    }
    match floor {
        Some(f) => println!(
            "{:<26} {:>6} | {:>7.1} {:>7.1} {:>7.1} {:>8.1} |  (cyclictest -m -p 80 -i 1000, loaded)",
            "floor", "", f[0], f[1], f[2], f[3]
        ),
        None => println!("cyclictest not found (install rt-tests): no floor"),
    }
    match spinners {
        Some([alone, _, earlier]) => {
            println!(
                "{:<26} {:>6} | {:>7.1} {:>7.1} {:>7.1} {:>8.1} |  (the clock's sleep-and-spin alone: SCHED_FIFO 80, loaded, no write)",
                "floor: sleep and spin", "", alone[0], alone[1], alone[2], alone[3]
            );
            println!(
                "{:<26} {:>6} | {:>7.1} {:>7.1} {:>7.1} {:>8.1} |  (the earlier of that and a standby loop at 69 per deadline, run alongside)",
                "floor: with a standby", "", earlier[0], earlier[1], earlier[2], earlier[3]
            );
        }
        None => println!("floor: sleep and spin: SCHED_FIFO not granted"),
    }
}

//! Wake-up lateness of the WAV-render timer loop (absolute `clock_nanosleep` deadlines, the
//! same code the render thread runs) with and without SCHED_FIFO, idle and with a busy
//! thread on every core, next to `cyclictest -m -p 80 -i 1000` run under the same load: the
//! machine's scheduling floor. Prints p50/p99/p99.9/max in µs.
//!
//! Run: `cargo bench --bench rt_timer` (BACKLINE_BENCH_SECONDS=N per condition, default 10).
//! Needs root or CAP_SYS_NICE for the SCHED_FIFO rows; target: SCHED_FIFO under load p99
//! within 2× of cyclictest's.

mod common;

use backline::engine::callback::monotonic_ns;
use backline::rt::{self, Role, RtSettings};
use backline::stats::{MetricHistogram, Summary};
use backline::timing::sleep_until_ns;

const PERIOD_NS: u64 = 1_000_000;

fn timer_loop(realtime: bool, seconds: u64) -> Summary {
    let probe = rt::probe().summary();
    let settings = RtSettings {
        enabled: realtime,
        ..RtSettings::default()
    };
    std::thread::spawn(move || {
        let promotion = rt::promote_current_thread(Role::Render, &settings, &probe);
        if realtime && !promotion.is_realtime() {
            eprintln!("warning: SCHED_FIFO not granted (run as root or with CAP_SYS_NICE)");
        }
        rt::prefault_stack();
        let mut histogram = MetricHistogram::default();
        let mut deadline = monotonic_ns() + PERIOD_NS;
        let end = deadline + seconds * 1_000_000_000;
        while deadline < end {
            sleep_until_ns(deadline);
            histogram.record((monotonic_ns() - deadline) as i64);
            deadline += PERIOD_NS;
        }
        histogram.summary()
    })
    .join()
    .unwrap_or_default()
}

fn cyclictest(seconds: u64) -> Option<Summary> {
    let (latencies, max_us) = common::cyclictest(seconds)?;
    let mut histogram = MetricHistogram::default();
    for us in latencies {
        histogram.record((us * 1000.0) as i64);
    }
    let mut summary = histogram.summary();
    summary.max = summary.max.max((max_us * 1000.0) as i64);
    Some(summary)
}

fn with_load<T>(load: bool, run: impl FnOnce() -> T) -> T {
    let _load = common::Load::start(load);
    run()
}

fn row(name: &str, s: &Summary, floor: Option<&Summary>) {
    let us = |ns: i64| ns as f64 / 1000.0;
    let ratio = floor
        .filter(|f| f.p99 > 0)
        .map(|f| format!("{:.2}×", s.p99 as f64 / f.p99 as f64))
        .unwrap_or_else(|| "-".into());
    println!(
        "{name:<36} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>14}",
        s.count,
        us(s.p50),
        us(s.p99),
        us(s.p999),
        us(s.max),
        ratio
    );
}

fn main() {
    let seconds: u64 = std::env::var("BACKLINE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    rt::lock_memory();
    println!("timer wake-up lateness, 1 ms absolute deadlines, {seconds} s per condition (µs)");
    println!(
        "{:<36} {:>8} {:>9} {:>9} {:>9} {:>9} {:>14}",
        "condition", "wakeups", "p50", "p99", "p99.9", "max", "p99 / floor"
    );
    let floor_loaded = with_load(true, || cyclictest(seconds));
    let fifo_loaded = with_load(true, || timer_loop(true, seconds));
    let other_loaded = with_load(true, || timer_loop(false, seconds));
    let fifo_idle = with_load(false, || timer_loop(true, seconds));
    let other_idle = with_load(false, || timer_loop(false, seconds));
    match &floor_loaded {
        Some(floor) => row("cyclictest -m -p 80 -i 1000, loaded", floor, None),
        None => println!("cyclictest not found (install rt-tests) or failed: no floor"),
    }
    row(
        "backline timer, SCHED_FIFO, loaded",
        &fifo_loaded,
        floor_loaded.as_ref(),
    );
    row(
        "backline timer, normal, loaded",
        &other_loaded,
        floor_loaded.as_ref(),
    );
    row("backline timer, SCHED_FIFO, idle", &fifo_idle, None);
    row("backline timer, normal, idle", &other_idle, None);
}

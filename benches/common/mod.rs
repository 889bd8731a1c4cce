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

//! Measurements: real-time threads push raw nanosecond samples into lock-free SPSC rings
//! (never blocking, counting what a full ring drops); a normal-priority stats thread drains
//! them into HDR histograms; reports are made from the histograms.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hdrhistogram::Histogram;

/// What a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Audio callback: |time since the previous callback − nominal period|.
    AudioIntervalError,
    /// Audio callback: time spent rendering.
    AudioBusy,
    /// Beat clock: completion of the write − deadline.
    ClockLateness,
    /// MIDI-file events: completion of the write − deadline.
    MidiEventLateness,
    /// An audio xrun; the value is the song position in frames, not a duration.
    Xrun,
}

impl Metric {
    /// All metrics, in report order.
    pub const ALL: [Metric; 4] = [
        Metric::AudioIntervalError,
        Metric::AudioBusy,
        Metric::ClockLateness,
        Metric::MidiEventLateness,
    ];

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Metric::AudioIntervalError => "audio callback |interval - period|",
            Metric::AudioBusy => "audio callback time",
            Metric::ClockLateness => "beat clock lateness",
            Metric::MidiEventLateness => "MIDI file event lateness",
            Metric::Xrun => "xrun",
        }
    }
}

/// One raw measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// What it measures.
    pub metric: Metric,
    /// Value in nanoseconds (may be negative, e.g. an early callback).
    pub value_ns: i64,
    /// Setlist position + 1 of the song playing when it was taken (0 = none).
    pub song: u32,
}

/// The real-time side: push samples without ever blocking.
pub struct SampleSender {
    ring: rtrb::Producer<Sample>,
    dropped: Arc<AtomicU64>,
    song: u32,
}

impl SampleSender {
    /// Records a sample; when the ring is full the sample is dropped and counted. RT-safe.
    #[inline]
    pub fn send(&mut self, metric: Metric, value_ns: i64) {
        let sample = Sample {
            metric,
            value_ns,
            song: self.song,
        };
        if self.ring.push(sample).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tags the following samples with a song (setlist position + 1; 0 = none). RT-safe.
    #[inline]
    pub fn set_song(&mut self, song: u32) {
        self.song = song;
    }
}

/// Percentiles of one metric, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Smallest value.
    pub min: i64,
    /// Median.
    pub p50: i64,
    /// 99th percentile.
    pub p99: i64,
    /// 99.9th percentile.
    pub p999: i64,
    /// Largest value.
    pub max: i64,
}

/// Largest value tracked: 10 s (anything bigger is clamped).
const HIGHEST_NS: u64 = 10_000_000_000;

/// One metric's histogram. Values are nanoseconds with 3 significant figures; negative
/// values (an early wake-up) count as 0 in the percentiles, and the true minimum is kept.
#[derive(Clone)]
pub struct MetricHistogram {
    histogram: Histogram<u64>,
    min: i64,
}

impl Default for MetricHistogram {
    fn default() -> Self {
        MetricHistogram {
            histogram: Histogram::new_with_bounds(1, HIGHEST_NS, 3)
                .expect("constant histogram bounds are valid"),
            min: i64::MAX,
        }
    }
}

impl MetricHistogram {
    /// Adds a value in ns.
    pub fn record(&mut self, value_ns: i64) {
        self.min = self.min.min(value_ns);
        let value = value_ns.clamp(0, HIGHEST_NS as i64) as u64;
        // hdrhistogram's lowest trackable value is 1: store v + 1.
        self.histogram.saturating_record(value + 1);
    }

    /// Count, min, p50, p99, p99.9, max.
    pub fn summary(&self) -> Summary {
        let h = &self.histogram;
        if h.is_empty() {
            return Summary::default();
        }
        let at = |q: f64| h.value_at_quantile(q) as i64 - 1;
        Summary {
            count: h.len(),
            min: self.min,
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: h.max() as i64 - 1,
        }
    }

    /// Non-empty buckets as (value ns, count), for JSON reports and plots.
    pub fn buckets(&self) -> Vec<(i64, u64)> {
        self.histogram
            .iter_recorded()
            .map(|v| (v.value_iterated_to() as i64 - 1, v.count_at_value()))
            .collect()
    }
}

/// Everything the stats thread has gathered.
#[derive(Clone, Default)]
pub struct Figures {
    /// One histogram per metric, over the whole run.
    pub metrics: Vec<(Metric, MetricHistogram)>,
    /// One histogram per (song tag, metric).
    pub per_song: Vec<((u32, Metric), MetricHistogram)>,
    /// Samples dropped because a ring was full.
    pub dropped: u64,
    /// Xruns as they happened: (wall-clock time, song tag, song position in frames), the
    /// first [`MAX_XRUN_EVENTS`].
    pub xrun_events: Vec<(std::time::SystemTime, u32, i64)>,
    /// Beat-clock lateness over time: (song tag, seconds since the stats thread started,
    /// lateness ns), thinned to at most [`SERIES_POINTS`] points.
    pub clock_series: Vec<(u32, f64, i64)>,
    series_stride: usize,
    series_seen: usize,
}

/// Xrun events kept with their time and place (the count goes on beyond).
pub const MAX_XRUN_EVENTS: usize = 1000;

/// Most points kept for the lateness-over-time plot (older points are thinned, not dropped
/// wholesale, so the whole run stays visible).
pub const SERIES_POINTS: usize = 20_000;

impl Figures {
    /// Empty figures whose bounded lists (clock series, xrun events) already own — and have
    /// touched — all the memory they will ever use, so a long show's resident size does not
    /// creep up as they fill (the soak's "RSS growth" target).
    fn with_reserved_memory() -> Figures {
        let mut figures = Figures::default();
        figures.clock_series.resize(SERIES_POINTS, (0, 0.0, 0));
        figures.clock_series.clear();
        figures
            .xrun_events
            .resize(MAX_XRUN_EVENTS, (std::time::UNIX_EPOCH, 0, 0));
        figures.xrun_events.clear();
        figures
    }

    /// The histogram of `metric`, if any sample arrived.
    pub fn get(&self, metric: Metric) -> Option<&MetricHistogram> {
        self.metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, h)| h)
    }

    /// The histogram of `metric` during the song tagged `song`.
    pub fn get_song(&self, song: u32, metric: Metric) -> Option<&MetricHistogram> {
        self.per_song
            .iter()
            .find(|(key, _)| *key == (song, metric))
            .map(|(_, h)| h)
    }

    /// Song tags that have samples, in order.
    pub fn songs(&self) -> Vec<u32> {
        let mut songs: Vec<u32> = self.per_song.iter().map(|((song, _), _)| *song).collect();
        songs.sort_unstable();
        songs.dedup();
        songs
    }

    fn record(&mut self, sample: Sample, seconds: f64) {
        if sample.metric == Metric::Xrun {
            if self.xrun_events.len() < MAX_XRUN_EVENTS {
                self.xrun_events
                    .push((std::time::SystemTime::now(), sample.song, sample.value_ns));
            }
            return;
        }
        if sample.metric == Metric::ClockLateness {
            let stride = self.series_stride.max(1);
            if self.series_seen % stride == 0 {
                self.clock_series
                    .push((sample.song, seconds, sample.value_ns));
                if self.clock_series.len() >= SERIES_POINTS {
                    // Keep every other point and sample half as often from now on.
                    let mut keep = false;
                    self.clock_series.retain(|_| {
                        keep = !keep;
                        keep
                    });
                    self.series_stride = stride * 2;
                }
            }
            self.series_seen += 1;
        }
        record_into(&mut self.metrics, sample.metric, sample.value_ns);
        if sample.song > 0 {
            record_into(
                &mut self.per_song,
                (sample.song, sample.metric),
                sample.value_ns,
            );
        }
    }
}

fn record_into<K: PartialEq>(table: &mut Vec<(K, MetricHistogram)>, key: K, value_ns: i64) {
    match table.iter_mut().find(|(k, _)| *k == key) {
        Some((_, h)) => h.record(value_ns),
        None => {
            let mut h = MetricHistogram::default();
            h.record(value_ns);
            table.push((key, h));
        }
    }
}

/// The stats thread and the figures it keeps.
pub struct StatsCollector {
    figures: Arc<Mutex<Figures>>,
    rings: Arc<Mutex<Vec<rtrb::Consumer<Sample>>>>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Capacity of a sample ring: about 10 s of audio callbacks at 128 frames, several seconds
/// of beat-clock ticks; the stats thread drains it every 50 ms.
pub const RING_CAPACITY: usize = 16_384;

impl StatsCollector {
    /// Starts the stats thread with one ring; returns the collector and the ring's sender.
    pub fn start() -> (StatsCollector, SampleSender) {
        let figures = Arc::new(Mutex::new(Figures::with_reserved_memory()));
        let rings: Arc<Mutex<Vec<rtrb::Consumer<Sample>>>> = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = std::time::Instant::now();
        let thread = {
            let figures = figures.clone();
            let rings = rings.clone();
            let stop = stop.clone();
            thread::Builder::new()
                .name("backline-stats".into())
                .spawn(move || loop {
                    let finishing = stop.load(Ordering::Acquire);
                    let seconds = started.elapsed().as_secs_f64();
                    if let (Ok(mut f), Ok(mut rings)) = (figures.lock(), rings.lock()) {
                        for ring in rings.iter_mut() {
                            while let Ok(sample) = ring.pop() {
                                f.record(sample, seconds);
                            }
                        }
                    }
                    if finishing {
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                })
                .ok()
        };
        let collector = StatsCollector {
            figures,
            rings,
            dropped,
            stop,
            thread,
        };
        let sender = collector.sender();
        (collector, sender)
    }

    /// A new ring for one more real-time thread (each ring has exactly one producer).
    pub fn sender(&self) -> SampleSender {
        let (producer, consumer) = rtrb::RingBuffer::new(RING_CAPACITY);
        if let Ok(mut rings) = self.rings.lock() {
            rings.push(consumer);
        }
        SampleSender {
            ring: producer,
            dropped: self.dropped.clone(),
            song: 0,
        }
    }

    /// The current summary of one metric (cheap: no copy of the histograms).
    pub fn summary(&self, metric: Metric) -> Option<Summary> {
        let figures = self.figures.lock().ok()?;
        figures.get(metric).map(MetricHistogram::summary)
    }

    /// The figures so far.
    pub fn figures(&self) -> Figures {
        let mut figures = self.figures.lock().map(|f| f.clone()).unwrap_or_default();
        figures.dropped = self.dropped.load(Ordering::Relaxed);
        figures
    }

    /// Drains what is left and stops the thread.
    pub fn finish(mut self) -> Figures {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.figures()
    }
}

/// The header of a timing table: label column, then count, min, p50, p99, p99.9, max.
pub fn table_header(label: &str) -> String {
    format!(
        "{label:<34} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "min", "p50", "p99", "p99.9", "max"
    )
}

/// One row of a timing table, in µs.
pub fn table_row(label: &str, s: &Summary) -> String {
    let us = |ns: i64| ns as f64 / 1000.0;
    format!(
        "{label:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.count,
        us(s.min),
        us(s.p50),
        us(s.p99),
        us(s.p999),
        us(s.max)
    )
}

/// The end-of-run timing report as text: one row per metric, in microseconds.
pub struct TimingReport<'a> {
    /// The figures.
    pub figures: &'a Figures,
    /// Nominal audio period in ns (for the duty column).
    pub period_ns: i64,
    /// Device xruns.
    pub xruns: u64,
}

impl fmt::Display for TimingReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", table_header("timing (µs)"))?;
        for metric in Metric::ALL {
            let Some(h) = self.figures.get(metric) else {
                continue;
            };
            let s = h.summary();
            writeln!(f, "{}", table_row(metric.label(), &s))?;
            if metric == Metric::AudioBusy && self.period_ns > 0 {
                let pct = |ns: i64| ns as f64 * 100.0 / self.period_ns as f64;
                writeln!(
                    f,
                    "{:<34} {:>8} {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}%",
                    "audio callback duty (of period)",
                    s.count,
                    pct(s.min),
                    pct(s.p50),
                    pct(s.p99),
                    pct(s.p999),
                    pct(s.max)
                )?;
            }
        }
        write!(
            f,
            "xruns {}, samples dropped {} (period {:.2} ms)",
            self.xruns,
            self.figures.dropped,
            self.period_ns as f64 / 1e6
        )?;
        if let Some(clock) = self.figures.get(Metric::ClockLateness) {
            write!(f, "\n{}", verdict(clock.summary().p99))?;
        }
        Ok(())
    }
}

/// One byte on a DIN MIDI cable takes 320 µs (10 bits at 31 250 baud): the yardstick
/// musicians' gear already lives with.
pub const DIN_BYTE_NS: i64 = 320_000;

/// The clock's p99 in musicians' terms.
pub fn verdict(clock_p99_ns: i64) -> String {
    let us = clock_p99_ns as f64 / 1000.0;
    if clock_p99_ns <= DIN_BYTE_NS {
        format!("clock p99 {us:.0} µs — tighter than a DIN MIDI byte (320 µs)")
    } else if clock_p99_ns <= 1_000_000 {
        format!("clock p99 {us:.0} µs — within a millisecond, but looser than a DIN MIDI byte (320 µs): check the RT state above")
    } else {
        format!(
            "clock p99 {:.1} ms — audible drift risk for tight parts: give backline real-time priority (see the RT state above)",
            us / 1000.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut h = MetricHistogram::default();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        h.record(-5000);
        let s = h.summary();
        assert_eq!(s.count, 1001);
        assert_eq!(s.min, -5000);
        assert_eq!(
            h.buckets().first().map(|b| b.0),
            Some(0),
            "negative counts as 0"
        );
        // 3 significant figures: values are exact to 0.1 %.
        assert!((s.p50 - 500_000).abs() <= 500, "{s:?}");
        assert!((s.p99 - 990_000).abs() <= 1000, "{s:?}");
        assert!((s.max - 1_000_000).abs() <= 1000, "{s:?}");
    }

    #[test]
    fn verdicts_speak_musician() {
        assert_eq!(
            verdict(38_000),
            "clock p99 38 µs — tighter than a DIN MIDI byte (320 µs)"
        );
        assert!(verdict(700_000).contains("within a millisecond"));
        assert!(verdict(3_000_000).contains("3.0 ms"));
    }

    #[test]
    fn collector_drains_and_counts_drops() {
        let (collector, mut sender) = StatsCollector::start();
        {
            // Hold the figures so the stats thread cannot drain while the ring overflows.
            let _held = collector.figures.lock().expect("lock");
            for _ in 0..(RING_CAPACITY + 10) {
                sender.send(Metric::AudioBusy, 1_000);
            }
        }
        let figures = collector.finish();
        let busy = figures
            .get(Metric::AudioBusy)
            .map(|h| h.summary().count)
            .unwrap_or(0);
        assert_eq!(busy + figures.dropped, RING_CAPACITY as u64 + 10);
        assert_eq!(figures.dropped, 10);
    }
}

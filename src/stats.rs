//! Measurements: real-time threads push raw nanosecond samples into lock-free SPSC rings
//! (never blocking, counting what a full ring drops); a normal-priority stats thread drains
//! them into HDR histograms per metric, per song and per MIDI output; reports are made from
//! the histograms. Device losses and returns, which happen on normal threads, go to a
//! process-wide event list ([`device_event`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

/// What a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Audio callback: time since the previous callback − nominal period (negative = early).
    AudioIntervalError,
    /// Audio callback: time spent rendering.
    AudioBusy,
    /// Audio callback: time spent rendering ÷ the callback's period, in parts per million.
    AudioDuty,
    /// Beat clock: completion of the write − deadline.
    ClockLateness,
    /// MIDI-file events: completion of the write − deadline.
    MidiEventLateness,
    /// An audio xrun; the value is the song position in frames, not a duration.
    Xrun,
}

impl Metric {
    /// All metrics, in report order.
    pub const ALL: [Metric; 5] = [
        Metric::AudioIntervalError,
        Metric::AudioBusy,
        Metric::AudioDuty,
        Metric::ClockLateness,
        Metric::MidiEventLateness,
    ];

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Metric::AudioIntervalError => "audio callback interval - period",
            Metric::AudioBusy => "audio callback time",
            Metric::AudioDuty => "audio callback duty (% of period)",
            Metric::ClockLateness => "beat clock lateness",
            Metric::MidiEventLateness => "MIDI file event lateness",
            Metric::Xrun => "xrun",
        }
    }

    /// The unit of its values: nanoseconds, or parts per million for the duty.
    pub fn unit(self) -> Unit {
        match self {
            Metric::AudioDuty => Unit::Ppm,
            _ => Unit::Ns,
        }
    }

    /// Whether it is measured per MIDI output as well as overall.
    pub fn is_per_output(self) -> bool {
        matches!(self, Metric::ClockLateness | Metric::MidiEventLateness)
    }
}

/// The unit of a metric's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds (shown in µs).
    Ns,
    /// Parts per million (shown in %).
    Ppm,
}

impl Unit {
    /// The suffix of the JSON report's keys (`p99_ns`, `p99_ppm`).
    pub fn key_suffix(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::Ppm => "ppm",
        }
    }

    /// A value in the unit tables show (µs, %).
    pub fn display(self, value: i64) -> f64 {
        match self {
            Unit::Ns => value as f64 / 1000.0,
            Unit::Ppm => value as f64 / 10_000.0,
        }
    }
}

/// One raw measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// What it measures.
    pub metric: Metric,
    /// Value in nanoseconds (or ppm, see [`Metric::unit`]); may be negative (an early callback).
    pub value_ns: i64,
    /// Setlist position + 1 of the song playing when it was taken (0 = none).
    pub song: u32,
    /// MIDI output it was taken on: its position in `midi.outputs` + 1 (0 = not an output's).
    pub output: u16,
}

/// The real-time side: push samples without ever blocking.
pub struct SampleSender {
    ring: rtrb::Producer<Sample>,
    dropped: Arc<AtomicU64>,
    song: u32,
    /// Whether its song tag is the one device events get (the audio callback's sender).
    tags_device_events: bool,
}

impl SampleSender {
    /// Records a sample; when the ring is full the sample is dropped and counted. RT-safe.
    #[inline]
    pub fn send(&mut self, metric: Metric, value_ns: i64) {
        self.send_for_output(metric, 0, value_ns);
    }

    /// Records a sample taken on one MIDI output (`output`: position in `midi.outputs` + 1).
    /// RT-safe.
    #[inline]
    pub fn send_for_output(&mut self, metric: Metric, output: u16, value_ns: i64) {
        let sample = Sample {
            metric,
            value_ns,
            song: self.song,
            output,
        };
        if self.ring.push(sample).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tags the following samples with a song (setlist position + 1; 0 = none). RT-safe.
    #[inline]
    pub fn set_song(&mut self, song: u32) {
        if self.song != song {
            self.song = song;
            if self.tags_device_events {
                DEVICE_LOG.set_song(song);
            }
        }
    }

    /// Makes this sender's song tag the one device events are tagged with. Meant for the
    /// audio callback's sender, which follows the transport (the clock's goes to 0 at a
    /// pause).
    pub fn tag_device_events(mut self) -> SampleSender {
        self.tags_device_events = true;
        self
    }
}

/// A device that went away or came back, for the rehearsal report.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    /// When it happened.
    pub time: SystemTime,
    /// Which device: `audio <device>`, ``MIDI output `<name>` `` or `JACK MIDI <port> → <port>`.
    pub device: String,
    /// Lost (true) or back (false).
    pub lost: bool,
    /// The song playing then (setlist position + 1; 0 = none).
    pub song: u32,
    /// What the log said: the error, or how long the outage was.
    pub detail: String,
}

/// Device events kept (a flapping device cannot grow the list without bound).
pub const MAX_DEVICE_EVENTS: usize = 1000;

/// Devices lost and back, each tagged with the song playing then.
pub struct DeviceLog {
    events: Mutex<Vec<DeviceEvent>>,
    /// Setlist position + 1 of the song the real-time threads last said was playing.
    current_song: AtomicU32,
}

impl Default for DeviceLog {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceLog {
    /// An empty log.
    pub const fn new() -> DeviceLog {
        DeviceLog {
            events: Mutex::new(Vec::new()),
            current_song: AtomicU32::new(0),
        }
    }

    /// Notes the song playing now (setlist position + 1; 0 = none). RT-safe: one store.
    #[inline]
    pub fn set_song(&self, song: u32) {
        self.current_song.store(song, Ordering::Relaxed);
    }

    /// Notes a device lost (`lost`) or back, with the song playing now. Locks and allocates:
    /// normal-priority threads only. The first [`MAX_DEVICE_EVENTS`] are kept.
    pub fn record(&self, device: &str, lost: bool, detail: &str) {
        if let Ok(mut events) = self.events.lock() {
            if events.len() < MAX_DEVICE_EVENTS {
                events.push(DeviceEvent {
                    time: SystemTime::now(),
                    device: device.to_string(),
                    lost,
                    song: self.current_song.load(Ordering::Relaxed),
                    detail: detail.to_string(),
                });
            }
        }
    }

    /// The events so far, oldest first.
    pub fn events(&self) -> Vec<DeviceEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// The process's device log: losses are process-wide facts, noted by whichever thread sees
/// them (the audio reconnect thread, the MIDI connectors), like `rt::report`'s RT states.
static DEVICE_LOG: DeviceLog = DeviceLog::new();

/// Notes a device lost (`lost`) or back in the process's log (normal threads only).
pub fn device_event(device: &str, lost: bool, detail: &str) {
    DEVICE_LOG.record(device, lost, detail);
}

/// The process's device events so far, oldest first.
pub fn device_events() -> Vec<DeviceEvent> {
    DEVICE_LOG.events()
}

/// Percentiles of one metric, in nanoseconds (or ppm).
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

/// Largest magnitude tracked: 10 s (anything bigger is clamped).
const HIGHEST_NS: u64 = 10_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("constant histogram bounds are valid")
}

/// The `rank`-th smallest value (1-based) of `h`, as its bucket's highest equivalent value
/// (what `value_at_quantile` returns).
fn nth_value(h: &Histogram<u64>, rank: u64) -> u64 {
    let mut seen = 0;
    for bucket in h.iter_recorded() {
        seen += bucket.count_at_value();
        if seen >= rank {
            return bucket.value_iterated_to();
        }
    }
    h.max()
}

/// One metric's histogram. Values keep 3 significant figures (0.1 %); negative values (an
/// early callback) go to a second histogram of magnitudes, made on the first one, so the
/// percentiles of a signed metric are true percentiles. A percentile is the upper edge of its
/// bucket (as hdrhistogram reports), kept within the exact minimum and maximum, which are
/// tracked too. Values are clamped to ±10 s.
#[derive(Clone)]
pub struct MetricHistogram {
    /// Values ≥ 0, stored as value + 1 (hdrhistogram's lowest trackable value is 1).
    non_negative: Histogram<u64>,
    /// Magnitudes of values < 0.
    negative: Option<Histogram<u64>>,
    min: i64,
    max: i64,
}

impl Default for MetricHistogram {
    fn default() -> Self {
        MetricHistogram {
            non_negative: new_histogram(),
            negative: None,
            min: i64::MAX,
            max: i64::MIN,
        }
    }
}

impl MetricHistogram {
    /// Adds a value.
    pub fn record(&mut self, value_ns: i64) {
        let value_ns = value_ns.clamp(-(HIGHEST_NS as i64), HIGHEST_NS as i64);
        self.min = self.min.min(value_ns);
        self.max = self.max.max(value_ns);
        if value_ns >= 0 {
            let value = (value_ns as u64).min(HIGHEST_NS);
            self.non_negative.saturating_record(value + 1);
        } else {
            let magnitude = value_ns.unsigned_abs().min(HIGHEST_NS);
            self.negative
                .get_or_insert_with(new_histogram)
                .saturating_record(magnitude);
        }
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.non_negative.len() + self.negative.as_ref().map_or(0, Histogram::len)
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `rank`-th smallest value (1-based, at most `len()`): its bucket's upper edge,
    /// within the exact minimum and maximum.
    fn value_at_rank(&self, rank: u64) -> i64 {
        let below = self.negative.as_ref().map_or(0, Histogram::len);
        let value = match &self.negative {
            // The k-th smallest of the negatives is the (below − k + 1)-th smallest magnitude;
            // the upper edge of a negative bucket is its magnitude's lower edge.
            Some(negative) if rank <= below => {
                let magnitude = nth_value(negative, below - rank + 1);
                -(negative.lowest_equivalent(magnitude) as i64)
            }
            _ => nth_value(&self.non_negative, rank - below) as i64 - 1,
        };
        value.clamp(self.min, self.max)
    }

    /// The value at quantile `q` (0..=1): the smallest value with at least q × count samples
    /// at or below it, as hdrhistogram computes it.
    pub fn value_at_quantile(&self, q: f64) -> i64 {
        let count = self.len();
        if count == 0 {
            return 0;
        }
        let exact = q.clamp(0.0, 1.0) * count as f64;
        // Guard against 0.99 × 100 = 99.000000000001.
        let rank = (exact - exact * 1e-12).ceil().max(1.0) as u64;
        self.value_at_rank(rank.min(count))
    }

    /// Count, min, p50, p99, p99.9, max.
    pub fn summary(&self) -> Summary {
        let count = self.len();
        if count == 0 {
            return Summary::default();
        }
        Summary {
            count,
            min: self.min,
            p50: self.value_at_quantile(0.5),
            p99: self.value_at_quantile(0.99),
            p999: self.value_at_quantile(0.999),
            max: self.max,
        }
    }

    /// Non-empty buckets as (value, count) in ascending order of value, for JSON reports and
    /// plots. A bucket's value is its upper edge (the largest value it holds).
    pub fn buckets(&self) -> Vec<(i64, u64)> {
        let mut buckets: Vec<(i64, u64)> = self
            .negative
            .iter()
            .flat_map(|h| h.iter_recorded())
            .map(|v| {
                let magnitude = v.value_iterated_to();
                let edge = self
                    .negative
                    .as_ref()
                    .map_or(magnitude, |h| h.lowest_equivalent(magnitude));
                (-(edge as i64), v.count_at_value())
            })
            .collect();
        buckets.reverse();
        buckets.extend(
            self.non_negative
                .iter_recorded()
                .map(|v| (v.value_iterated_to() as i64 - 1, v.count_at_value())),
        );
        buckets
    }
}

/// Everything the stats thread has gathered.
#[derive(Clone, Default)]
pub struct Figures {
    /// One histogram per metric, over the whole run.
    pub metrics: Vec<(Metric, MetricHistogram)>,
    /// One histogram per (song tag, metric).
    pub per_song: Vec<((u32, Metric), MetricHistogram)>,
    /// One histogram per (MIDI output tag, metric), over the whole run, for the metrics
    /// measured per output.
    pub per_output: Vec<((u16, Metric), MetricHistogram)>,
    /// Samples dropped because a ring was full.
    pub dropped: u64,
    /// Xruns as they happened: (wall-clock time, song tag, song position in frames), the
    /// first [`MAX_XRUN_EVENTS`].
    pub xrun_events: Vec<(std::time::SystemTime, u32, i64)>,
    /// Beat-clock lateness over time: (song tag, seconds since the stats thread started,
    /// lateness ns), thinned to at most [`SERIES_POINTS`] points; one output's ticks (the
    /// first to report), so several outputs do not interleave.
    pub clock_series: Vec<(u32, f64, i64)>,
    series_output: Option<u16>,
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

    /// The histogram of `metric` on the MIDI output tagged `output`.
    pub fn get_output(&self, output: u16, metric: Metric) -> Option<&MetricHistogram> {
        self.per_output
            .iter()
            .find(|(key, _)| *key == (output, metric))
            .map(|(_, h)| h)
    }

    /// MIDI output tags that have samples, in order.
    pub fn outputs(&self) -> Vec<u16> {
        let mut outputs: Vec<u16> = self.per_output.iter().map(|((o, _), _)| *o).collect();
        outputs.sort_unstable();
        outputs.dedup();
        outputs
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
        if sample.metric == Metric::ClockLateness
            && *self.series_output.get_or_insert(sample.output) == sample.output
        {
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
        if sample.output > 0 {
            record_into(
                &mut self.per_output,
                (sample.output, sample.metric),
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
            tags_device_events: false,
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

/// One row of a timing table: µs, or % for the duty.
pub fn table_row(label: &str, unit: Unit, s: &Summary) -> String {
    let v = |value: i64| unit.display(value);
    let precision = match unit {
        Unit::Ns => 1,
        Unit::Ppm => 2,
    };
    format!(
        "{label:<34} {:>8} {:>9.p$} {:>9.p$} {:>9.p$} {:>9.p$} {:>9.p$}",
        s.count,
        v(s.min),
        v(s.p50),
        v(s.p99),
        v(s.p999),
        v(s.max),
        p = precision
    )
}

/// The label of a per-output row: the output's name under its metric's row.
pub fn output_label(output: u16, output_names: &[String]) -> String {
    let name = output_names
        .get(usize::from(output).saturating_sub(1))
        .map_or("?", String::as_str);
    format!("  on `{name}`")
}

/// Rows for every metric of `get` (one per metric with samples), each followed by a row per
/// MIDI output when `per_output` gives more than one.
pub fn metric_rows(
    get: impl Fn(Metric) -> Option<Summary>,
    per_output: impl Fn(Metric) -> Vec<(u16, Summary)>,
    output_names: &[String],
) -> Vec<String> {
    let mut rows = Vec::new();
    for metric in Metric::ALL {
        let Some(s) = get(metric) else {
            continue;
        };
        rows.push(table_row(metric.label(), metric.unit(), &s));
        let outputs = per_output(metric);
        if outputs.len() > 1 {
            for (output, s) in outputs {
                rows.push(table_row(
                    &output_label(output, output_names),
                    metric.unit(),
                    &s,
                ));
            }
        }
    }
    rows
}

/// One line per device that went away during the run: how often it was lost and came back.
pub fn device_lines(events: &[DeviceEvent]) -> Vec<String> {
    let mut devices: Vec<&str> = Vec::new();
    for event in events {
        if !devices.contains(&event.device.as_str()) {
            devices.push(&event.device);
        }
    }
    devices
        .iter()
        .map(|device| {
            let count = |lost: bool| {
                events
                    .iter()
                    .filter(|e| e.device == *device && e.lost == lost)
                    .count()
            };
            format!("{device}: lost {}×, back {}×", count(true), count(false))
        })
        .collect()
}

/// The end-of-run timing report as text: one row per metric (µs; the duty in %), per MIDI
/// output when there are several, then xruns, device losses and the verdict.
pub struct TimingReport<'a> {
    /// The figures.
    pub figures: &'a Figures,
    /// Nominal audio period in ns.
    pub period_ns: i64,
    /// Device xruns.
    pub xruns: u64,
    /// `midi.outputs` names in config order (output tag − 1).
    pub output_names: &'a [String],
    /// Devices lost and back during the run.
    pub device_events: &'a [DeviceEvent],
}

impl fmt::Display for TimingReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let figures = self.figures;
        writeln!(f, "{}", table_header("timing (µs)"))?;
        let rows = metric_rows(
            |m| figures.get(m).map(MetricHistogram::summary),
            |m| {
                figures
                    .outputs()
                    .into_iter()
                    .filter_map(|o| figures.get_output(o, m).map(|h| (o, h.summary())))
                    .collect()
            },
            self.output_names,
        );
        for row in rows {
            writeln!(f, "{row}")?;
        }
        write!(
            f,
            "xruns {}, samples dropped {} (period {:.2} ms)",
            self.xruns,
            figures.dropped,
            self.period_ns as f64 / 1e6
        )?;
        for line in device_lines(self.device_events) {
            write!(f, "\n{line}")?;
        }
        if let Some(clock) = figures.get(Metric::ClockLateness) {
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
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, 1000);
        // 3 significant figures: values are exact to 0.1 %.
        assert!((s.p50 - 500_000).abs() <= 500, "{s:?}");
        assert!((s.p99 - 990_000).abs() <= 1000, "{s:?}");
        assert!((s.max - 1_000_000).abs() <= 1000, "{s:?}");
    }

    #[test]
    fn negative_values_are_true_percentiles() {
        let mut h = MetricHistogram::default();
        // 900 early values, 100 late ones: the median is early.
        for v in 1..=900 {
            h.record(-v);
        }
        for v in 1..=100 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, -900);
        // The 500th smallest of −900…−1, 1…100 is −401.
        assert_eq!(s.p50, -401);
        // The 990th is 90, the 999th 99, the last 100.
        assert_eq!(s.p99, 90);
        assert_eq!(s.p999, 99);
        assert_eq!(s.max, 100);
        let buckets = h.buckets();
        assert_eq!(buckets.first(), Some(&(-900, 1)));
        assert_eq!(buckets.last(), Some(&(100, 1)));
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
        // All negative: the maximum is the one closest to zero.
        let mut early = MetricHistogram::default();
        early.record(-7);
        early.record(-3);
        assert_eq!(early.summary().max, -3);
        assert_eq!(early.summary().p50, -7);
        // Extremes are clamped, not a panic.
        early.record(i64::MIN);
        early.record(i64::MAX);
        assert_eq!(early.summary().count, 4);
        assert_eq!(early.summary().min, -(HIGHEST_NS as i64));
        assert_eq!(early.summary().max, HIGHEST_NS as i64);
        // Above 2048 a bucket holds several values: a percentile is the bucket's upper edge,
        // never outside the exact minimum and maximum.
        let mut wide = MetricHistogram::default();
        wide.record(-12_345);
        let s = wide.summary();
        assert_eq!((s.min, s.p50, s.max), (-12_345, -12_345, -12_345));
        wide.record(-12_340);
        wide.record(99_999);
        let s = wide.summary();
        assert!(s.min <= s.p50 && s.p50 <= s.p99 && s.p99 <= s.max, "{s:?}");
        assert!((-12_345..=-12_330).contains(&s.p50), "{s:?}");
        assert_eq!(s.max, 99_999);
        let buckets = wide.buckets();
        assert!((-12_345..=-12_330).contains(&buckets[0].0), "{buckets:?}");
    }

    #[test]
    fn device_events_carry_the_song_playing() {
        let log = DeviceLog::new();
        log.record("audio", true, "stream error");
        log.set_song(3);
        log.record("audio", false, "after 1.20 s");
        let events = log.events();
        assert_eq!(events.len(), 2);
        assert!(events[0].lost && events[0].song == 0);
        assert!(!events[1].lost && events[1].song == 3);
        for _ in 0..MAX_DEVICE_EVENTS {
            log.record("MIDI output `x`", true, "gone");
        }
        assert_eq!(log.events().len(), MAX_DEVICE_EVENTS, "bounded");
        assert_eq!(
            device_lines(&events),
            vec!["audio: lost 1×, back 1×".to_string()]
        );
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

//! The rehearsal report: the run's figures per song and overall, as a table for the band and
//! as JSON (schema `backline-rehearsal`, version 1, documented in the README) for tools.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::rt::{self, Role};
use crate::stats::{table_header, table_row, verdict, Figures, Metric, MetricHistogram};

/// Version of the JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The stable key of a metric in the JSON report.
pub fn metric_key(metric: Metric) -> &'static str {
    match metric {
        Metric::AudioIntervalError => "audio_interval_error",
        Metric::AudioBusy => "audio_callback_time",
        Metric::ClockLateness => "clock_lateness",
        Metric::MidiEventLateness => "midi_event_lateness",
        Metric::Xrun => "xrun",
    }
}

/// The per-song tables, as text.
pub fn per_song_table(figures: &Figures, song_names: &[String], sample_rate: u32) -> String {
    let mut out = String::new();
    let header = format!("  {}\n", table_header("(µs)"));
    for tag in figures.songs() {
        let name = song_names
            .get(tag as usize - 1)
            .map(String::as_str)
            .unwrap_or("?");
        out.push_str(&format!("== {tag}/{} {name}\n", song_names.len()));
        out.push_str(&header);
        for metric in Metric::ALL {
            if let Some(h) = figures.get_song(tag, metric) {
                out.push_str(&format!("  {}", table_row(metric.label(), &h.summary())));
                out.push('\n');
            }
        }
        let xruns: Vec<String> = figures
            .xrun_events
            .iter()
            .filter(|(_, song, _)| *song == tag)
            .map(|(_, _, frames)| {
                format!("{:.1} s", *frames as f64 / f64::from(sample_rate.max(1)))
            })
            .collect();
        if xruns.is_empty() {
            out.push_str("  xruns: none\n");
        } else {
            out.push_str(&format!(
                "  xruns: {} (at {})\n",
                xruns.len(),
                xruns.join(", ")
            ));
        }
        if let Some(clock) = figures.get_song(tag, Metric::ClockLateness) {
            out.push_str(&format!("  {}\n", verdict(clock.summary().p99)));
        }
    }
    out
}

fn metric_json(histogram: &MetricHistogram) -> Value {
    let s = histogram.summary();
    json!({
        "count": s.count,
        "min_ns": s.min,
        "p50_ns": s.p50,
        "p99_ns": s.p99,
        "p999_ns": s.p999,
        "max_ns": s.max,
        "buckets": histogram.buckets().iter().map(|(ns, n)| json!([ns, n])).collect::<Vec<_>>(),
    })
}

fn metrics_json(get: impl Fn(Metric) -> Option<MetricHistogram>) -> Value {
    let mut map = Map::new();
    for metric in Metric::ALL {
        if let Some(h) = get(metric) {
            map.insert(metric_key(metric).into(), metric_json(&h));
        }
    }
    Value::Object(map)
}

/// Everything the JSON report holds besides the figures.
pub struct RunFacts<'a> {
    /// Setlist name.
    pub setlist: &'a str,
    /// Song names in setlist order.
    pub song_names: &'a [String],
    /// Output device description.
    pub device: &'a str,
    /// Nominal audio period.
    pub period_ns: i64,
    /// Device xruns.
    pub xruns: u64,
    /// Frames per second, to turn xrun positions into seconds.
    pub sample_rate: u32,
}

fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The JSON report.
pub fn json_report(figures: &Figures, facts: &RunFacts) -> Value {
    let realtime: Vec<Value> = [Role::Audio, Role::Render, Role::Clock]
        .iter()
        .filter_map(|&role| rt::report(role))
        .map(|r| {
            json!({
                "role": r.role().name(),
                "state": r.to_string(),
                "degraded": r.is_degraded(),
            })
        })
        .collect();
    let songs: Vec<Value> = figures
        .songs()
        .into_iter()
        .map(|tag| {
            json!({
                "position": tag,
                "name": facts.song_names.get(tag as usize - 1).cloned().unwrap_or_default(),
                "metrics": metrics_json(|m| figures.get_song(tag, m).cloned()),
            })
        })
        .collect();
    json!({
        "schema": "backline-rehearsal",
        "version": SCHEMA_VERSION,
        "setlist": facts.setlist,
        "device": facts.device,
        "period_ns": facts.period_ns,
        "xruns": facts.xruns,
        "xrun_events": figures
            .xrun_events
            .iter()
            .map(|(time, song, frames)| {
                json!({
                    "unix_time": unix_seconds(*time),
                    "song": song,
                    "song_name": song.checked_sub(1).and_then(|i| facts.song_names.get(i as usize)),
                    "position_s": *frames as f64 / f64::from(facts.sample_rate.max(1)),
                })
            })
            .collect::<Vec<_>>(),
        "samples_dropped": figures.dropped,
        "realtime": realtime,
        "sandbox": crate::sandbox::current().map(|s| s.to_json()),
        "overall": metrics_json(|m| figures.get(m).cloned()),
        "songs": songs,
        "verdict": figures.get(Metric::ClockLateness).map(|h| verdict(h.summary().p99)),
    })
}

/// Writes the JSON report to `path`.
pub fn write_json(path: &Path, report: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| format!("cannot encode the report: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::StatsCollector;

    #[test]
    fn report_figures_come_from_known_samples() {
        let (collector, mut sender) = StatsCollector::start();
        sender.set_song(1);
        // Values under 2048 ns are stored exactly at 3 significant figures.
        for v in 1..=100 {
            sender.send(Metric::ClockLateness, v * 10);
        }
        sender.set_song(2);
        sender.send(Metric::ClockLateness, 1_500);
        let figures = collector.finish();
        let names = vec!["One".to_string(), "Two".to_string()];
        let facts = RunFacts {
            setlist: "set",
            song_names: &names,
            device: "wav:x",
            period_ns: 5_333_333,
            xruns: 0,
            sample_rate: 48_000,
        };
        let report = json_report(&figures, &facts);
        assert_eq!(report["schema"], "backline-rehearsal");
        assert_eq!(report["version"], 1);
        let one = &report["songs"][0];
        assert_eq!(one["name"], "One");
        assert_eq!(one["metrics"]["clock_lateness"]["count"], 100);
        let clock = &one["metrics"]["clock_lateness"];
        assert_eq!(clock["min_ns"], 10);
        assert_eq!(clock["p50_ns"], 500);
        assert_eq!(clock["p99_ns"], 990);
        assert_eq!(clock["p999_ns"], 1000);
        assert_eq!(clock["max_ns"], 1000);
        assert_eq!(clock["buckets"].as_array().map(Vec::len), Some(100));
        assert_eq!(
            report["songs"][1]["metrics"]["clock_lateness"]["p50_ns"],
            1500
        );
        assert_eq!(report["overall"]["clock_lateness"]["count"], 101);
        assert_eq!(report["songs"][1]["metrics"]["clock_lateness"]["count"], 1);
        let text = per_song_table(&figures, &names, 48_000);
        assert!(
            text.contains("== 1/2 One") && text.contains("== 2/2 Two"),
            "{text}"
        );
    }
}

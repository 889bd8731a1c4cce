//! The rehearsal report: the run's figures per song, per MIDI output and overall, as a table
//! for the band and as JSON for tools (schema `backline-rehearsal`, version 2: the JSON Schema
//! is `docs/rehearsal-report.schema.json`, the README explains it).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::rt::{self, Role};
use crate::stats::{
    metric_rows, table_header, verdict, DeviceEvent, Figures, Metric, MetricHistogram,
};

/// Version of the JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 2;

/// The stable key of a metric in the JSON report.
pub fn metric_key(metric: Metric) -> &'static str {
    match metric {
        Metric::AudioIntervalError => "audio_interval_error",
        Metric::AudioBusy => "audio_callback_time",
        Metric::AudioDuty => "audio_callback_duty",
        Metric::ClockLateness => "clock_lateness",
        Metric::MidiEventLateness => "midi_event_lateness",
        Metric::Xrun => "xrun",
    }
}

/// The per-song tables, as text: each song's figures, xruns and device losses.
pub fn per_song_table(
    figures: &Figures,
    song_names: &[String],
    sample_rate: u32,
    device_events: &[DeviceEvent],
) -> String {
    let mut out = String::new();
    let header = format!("  {}\n", table_header("(µs)"));
    for tag in figures.songs() {
        let name = song_names
            .get(tag as usize - 1)
            .map(String::as_str)
            .unwrap_or("?");
        out.push_str(&format!("== {tag}/{} {name}\n", song_names.len()));
        out.push_str(&header);
        let rows = metric_rows(
            |m| figures.get_song(tag, m).map(MetricHistogram::summary),
            |_| Vec::new(),
            &[],
        );
        for row in rows {
            out.push_str(&format!("  {row}\n"));
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
        for event in device_events.iter().filter(|e| e.song == tag) {
            out.push_str(&format!(
                "  {} {}: {}\n",
                event.device,
                if event.lost { "lost" } else { "back" },
                event.detail
            ));
        }
        if let Some(clock) = figures.get_song(tag, Metric::ClockLateness) {
            out.push_str(&format!("  {}\n", verdict(clock.summary().p99)));
        }
    }
    out
}

fn metric_json(metric: Metric, histogram: &MetricHistogram) -> Value {
    let s = histogram.summary();
    let unit = metric.unit().key_suffix();
    let mut object = Map::new();
    object.insert("unit".into(), json!(unit));
    object.insert("count".into(), json!(s.count));
    for (name, value) in [
        ("min", s.min),
        ("p50", s.p50),
        ("p99", s.p99),
        ("p999", s.p999),
        ("max", s.max),
    ] {
        object.insert(format!("{name}_{unit}"), json!(value));
    }
    object.insert(
        "buckets".into(),
        json!(histogram
            .buckets()
            .iter()
            .map(|(value, n)| json!([value, n]))
            .collect::<Vec<_>>()),
    );
    Value::Object(object)
}

fn metrics_json(get: impl Fn(Metric) -> Option<MetricHistogram>) -> Value {
    let mut map = Map::new();
    for metric in Metric::ALL {
        if let Some(h) = get(metric) {
            map.insert(metric_key(metric).into(), metric_json(metric, &h));
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
    /// `midi.outputs` names in config order.
    pub output_names: &'a [String],
    /// Devices lost and back during the run.
    pub device_events: &'a [DeviceEvent],
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
    let outputs: Vec<Value> = figures
        .outputs()
        .into_iter()
        .map(|tag| {
            json!({
                "output": tag,
                "name": facts.output_names.get(usize::from(tag) - 1).cloned().unwrap_or_default(),
                "metrics": metrics_json(|m| figures.get_output(tag, m).cloned()),
            })
        })
        .collect();
    let song_name = |song: u32| {
        song.checked_sub(1)
            .and_then(|i| facts.song_names.get(i as usize))
    };
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
                    "song_name": song_name(*song),
                    "position_s": *frames as f64 / f64::from(facts.sample_rate.max(1)),
                })
            })
            .collect::<Vec<_>>(),
        "device_events": facts
            .device_events
            .iter()
            .map(|event| {
                json!({
                    "unix_time": unix_seconds(event.time),
                    "device": event.device,
                    "event": if event.lost { "lost" } else { "back" },
                    "song": event.song,
                    "song_name": song_name(event.song),
                    "detail": event.detail,
                })
            })
            .collect::<Vec<_>>(),
        "samples_dropped": figures.dropped,
        "realtime": realtime,
        "sandbox": crate::sandbox::current().map(|s| s.to_json()),
        "overall": metrics_json(|m| figures.get(m).cloned()),
        "outputs": outputs,
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
            sender.send_for_output(Metric::ClockLateness, 1, v * 10);
        }
        // A signed metric: −50 ns … 49 ns.
        for v in -50..50 {
            sender.send(Metric::AudioIntervalError, v);
        }
        sender.send(Metric::AudioDuty, 1_500);
        sender.set_song(2);
        sender.send_for_output(Metric::ClockLateness, 2, 1_500);
        let figures = collector.finish();
        let names = vec!["One".to_string(), "Two".to_string()];
        let outputs = vec!["drums".to_string(), "synth".to_string()];
        let events = vec![DeviceEvent {
            time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(100),
            device: "MIDI output `synth`".into(),
            lost: true,
            song: 2,
            detail: "write failed".into(),
        }];
        let facts = RunFacts {
            setlist: "set",
            song_names: &names,
            output_names: &outputs,
            device_events: &events,
            device: "wav:x",
            period_ns: 5_333_333,
            xruns: 0,
            sample_rate: 48_000,
        };
        let report = json_report(&figures, &facts);
        let schema: Value =
            serde_json::from_str(include_str!("../../docs/rehearsal-report.schema.json"))
                .expect("the schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
        let errors: Vec<String> = validator
            .iter_errors(&report)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(report["schema"], "backline-rehearsal");
        assert_eq!(report["version"], SCHEMA_VERSION);
        assert_eq!(schema["properties"]["version"]["const"], SCHEMA_VERSION);
        let one = &report["songs"][0];
        assert_eq!(one["name"], "One");
        let clock = &one["metrics"]["clock_lateness"];
        assert_eq!(clock["unit"], "ns");
        assert_eq!(clock["count"], 100);
        assert_eq!(clock["min_ns"], 10);
        assert_eq!(clock["p50_ns"], 500);
        assert_eq!(clock["p99_ns"], 990);
        assert_eq!(clock["p999_ns"], 1000);
        assert_eq!(clock["max_ns"], 1000);
        assert_eq!(clock["buckets"].as_array().map(Vec::len), Some(100));
        let interval = &one["metrics"]["audio_interval_error"];
        assert_eq!(interval["count"], 100);
        assert_eq!(interval["min_ns"], -50);
        assert_eq!(interval["p50_ns"], -1);
        assert_eq!(interval["p99_ns"], 48);
        assert_eq!(interval["p999_ns"], 49);
        assert_eq!(interval["max_ns"], 49);
        assert_eq!(interval["buckets"][0], json!([-50, 1]));
        assert_eq!(interval["buckets"][99], json!([49, 1]));
        let duty = &report["overall"]["audio_callback_duty"];
        assert_eq!(duty["unit"], "ppm");
        assert_eq!(duty["p50_ppm"], json!(1_500));
        assert!(duty["p50_ns"].is_null());
        assert_eq!(
            report["songs"][1]["metrics"]["clock_lateness"]["p50_ns"],
            1500
        );
        assert_eq!(report["overall"]["clock_lateness"]["count"], 101);
        assert_eq!(report["songs"][1]["metrics"]["clock_lateness"]["count"], 1);
        assert_eq!(report["outputs"][0]["name"], "drums");
        assert_eq!(
            report["outputs"][0]["metrics"]["clock_lateness"]["count"],
            100
        );
        assert_eq!(report["outputs"][1]["name"], "synth");
        assert_eq!(
            report["outputs"][1]["metrics"]["clock_lateness"]["max_ns"],
            1500
        );
        assert!(report["outputs"][0]["metrics"]["audio_interval_error"].is_null());
        let event = &report["device_events"][0];
        assert_eq!(event["device"], "MIDI output `synth`");
        assert_eq!(event["event"], "lost");
        assert_eq!(event["song_name"], "Two");
        assert_eq!(event["unix_time"], 100.0);
        let text = per_song_table(&figures, &names, 48_000, &events);
        assert!(
            text.contains("== 1/2 One") && text.contains("== 2/2 Two"),
            "{text}"
        );
        assert!(
            text.contains("MIDI output `synth` lost: write failed"),
            "{text}"
        );
        let overall = crate::stats::TimingReport {
            figures: &figures,
            period_ns: 5_333_333,
            xruns: 0,
            output_names: &outputs,
            device_events: &events,
        }
        .to_string();
        assert!(
            overall.contains("  on `drums`") && overall.contains("  on `synth`"),
            "{overall}"
        );
        assert!(
            overall.contains("MIDI output `synth`: lost 1×, back 0×"),
            "{overall}"
        );
        assert!(overall.contains("audio callback duty (% of period)"));
    }
}

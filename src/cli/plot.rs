//! The rehearsal plot: one SVG with the beat clock's lateness distribution per song (top) and
//! its lateness over time, coloured by song (bottom), with the 320 µs of one DIN MIDI byte
//! drawn as the yardstick. Written directly as SVG: the picture is a few polylines and
//! circles, and plotters would need a font backend (fontconfig/freetype or a bundled TTF) just
//! to lay out the labels.

use std::fmt::Write as _;
use std::path::Path;

use crate::stats::{Figures, Metric, DIN_BYTE_NS};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 760.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// One colour per song (by setlist position, the same in both panels); grey for ticks that
/// belong to no song (a free-running clock between songs).
fn colour_of(tag: u32) -> &'static str {
    match tag {
        0 => "#999999",
        t => COLOURS[(t as usize - 1) % COLOURS.len()],
    }
}

/// Lateness axis: log scale from 1 µs to the next power of ten above the maximum.
struct LogAxis {
    min_us: f64,
    max_us: f64,
}

impl LogAxis {
    fn fraction(&self, us: f64) -> f64 {
        let us = us.clamp(self.min_us, self.max_us);
        (us.log10() - self.min_us.log10()) / (self.max_us.log10() - self.min_us.log10())
    }

    fn decades(&self) -> impl Iterator<Item = f64> + '_ {
        let first = self.min_us.log10().round() as i32;
        let last = self.max_us.log10().round() as i32;
        (first..=last).map(|e| 10f64.powi(e))
    }
}

fn label_us(us: f64) -> String {
    let ms = us / 1000.0;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG text of the plot.
pub fn svg(figures: &Figures, song_names: &[String]) -> String {
    let songs = figures.songs();
    let max_ns = figures
        .get(Metric::ClockLateness)
        .map_or(1_000_000, |h| h.summary().max)
        .max(DIN_BYTE_NS * 2);
    let axis = LogAxis {
        min_us: 1.0,
        max_us: 10f64.powf((max_ns as f64 / 1000.0).log10().ceil()),
    };
    let plot_width = WIDTH - LEFT - RIGHT;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="28" font-size="18" font-weight="bold">Beat clock lateness (how late each MIDI clock tick left backline)</text>
"#
    );
    // Top panel: distribution, x = lateness (log), y = share of ticks.
    let (top, bottom) = (60.0, 330.0);
    let name = |tag: u32| {
        song_names
            .get(tag as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("song {tag}"))
    };
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">How often: share of ticks at each lateness</text>"#,
        top - 8.0
    );
    let x_of = |us: f64| LEFT + axis.fraction(us) * plot_width;
    frame(&mut out, top, bottom, &axis, &x_of);
    let mut peak_share: f64 = 0.0;
    let mut curves = Vec::new();
    for &tag in &songs {
        let Some(h) = figures.get_song(tag, Metric::ClockLateness) else {
            continue;
        };
        let total = h.summary().count.max(1) as f64;
        // Re-bin into 40 log-spaced bins so every song is drawn on the same grid.
        let mut bins = [0u64; 40];
        for (ns, count) in h.buckets() {
            let f = axis.fraction((ns as f64 / 1000.0).max(1.0));
            bins[((f * 39.0).round() as usize).min(39)] += count;
        }
        let shares: Vec<f64> = bins.iter().map(|&c| c as f64 * 100.0 / total).collect();
        peak_share = shares.iter().copied().fold(peak_share, f64::max);
        curves.push((tag, shares, h.summary().p99));
    }
    let y_share = |share: f64| bottom - share / peak_share.max(1.0) * (bottom - top - 10.0);
    for (i, (tag, shares, p99)) in curves.iter().enumerate() {
        let colour = colour_of(*tag);
        let points: Vec<String> = shares
            .iter()
            .enumerate()
            .map(|(bin, &share)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + bin as f64 / 39.0 * plot_width,
                    y_share(share)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="14" height="14" fill="{colour}"/><text x="{}" y="{}">{} (p99 {})</text>"#,
            WIDTH - RIGHT + 12.0,
            top + 4.0 + i as f64 * 20.0,
            WIDTH - RIGHT + 32.0,
            top + 16.0 + i as f64 * 20.0,
            escape(&name(*tag)),
            label_us((*p99 as f64 / 1000.0).round())
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">% of ticks (peak {peak_share:.0} %)</text>"#,
        (top + bottom) / 2.0,
        (top + bottom) / 2.0
    );
    // Bottom panel: lateness over time, y = lateness (log), x = seconds.
    let (top2, bottom2) = (400.0, 700.0);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">When: lateness of the ticks over the run (log scale; long runs are thinned evenly)</text>"#,
        top2 - 8.0
    );
    let end = figures.clock_series.last().map_or(1.0, |p| p.1).max(1.0);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top2}" width="{plot_width}" height="{}" fill="none" stroke="#888"/>"##,
        bottom2 - top2
    );
    let y_late = |us: f64| bottom2 - axis.fraction(us) * (bottom2 - top2);
    for decade in axis.decades() {
        let y = y_late(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            label_us(decade)
        );
    }
    let din = y_late(DIN_BYTE_NS as f64 / 1000.0);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" x2="{}" y1="{din:.1}" y2="{din:.1}" stroke="#000" stroke-dasharray="6 4"/><text x="{}" y="{:.1}">one DIN MIDI byte (320 µs)</text>"##,
        LEFT + plot_width,
        LEFT + plot_width + 6.0,
        din + 4.0
    );
    for (song, seconds, ns) in &figures.clock_series {
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}"/>"#,
            LEFT + seconds / end * plot_width,
            y_late((*ns as f64 / 1000.0).max(1.0)),
            colour_of(*song)
        );
    }
    for step in 0..=5 {
        let seconds = end * f64::from(step) / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{seconds:.0} s</text>"#,
            LEFT + f64::from(step) / 5.0 * plot_width,
            bottom2 + 18.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">time since the start of the run</text>"#,
        LEFT + plot_width / 2.0,
        bottom2 + 40.0
    );
    out.push_str("</svg>\n");
    out
}

fn frame(out: &mut String, top: f64, bottom: f64, axis: &LogAxis, x_of: &dyn Fn(f64) -> f64) {
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        WIDTH - LEFT - RIGHT,
        bottom - top
    );
    for decade in axis.decades() {
        let x = x_of(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 18.0,
            label_us(decade)
        );
    }
    let din = x_of(DIN_BYTE_NS as f64 / 1000.0);
    let _ = writeln!(
        out,
        r##"<line x1="{din:.1}" x2="{din:.1}" y1="{top}" y2="{bottom}" stroke="#000" stroke-dasharray="6 4"/><text x="{:.1}" y="{}">one DIN MIDI byte</text>"##,
        din + 4.0,
        top + 14.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">lateness (log scale)</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        bottom + 38.0
    );
}

/// Writes the plot to `path`.
pub fn write_svg(path: &Path, figures: &Figures, song_names: &[String]) -> Result<(), String> {
    std::fs::write(path, svg(figures, song_names))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

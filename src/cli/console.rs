//! The terminal front-end of `backline play`: raw-mode keys (space, n, p, q, Ctrl-C), a
//! one-line status that redraws in place, and a guard that restores the terminal on every
//! exit path (normal return, error, panic, signal).

use std::io::Write;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal;

use crate::engine::{Request, StatusSink, StatusSnapshot};
use crate::rt::{self, Role};

/// Restores the terminal when dropped (and from the panic hook).
pub struct TerminalGuard;

impl TerminalGuard {
    /// Switches the terminal to raw mode for single-key commands.
    pub fn enter() -> std::io::Result<TerminalGuard> {
        // Keys typed while the show was loading must not act the moment it starts.
        // SAFETY: tcflush on stdin's descriptor only discards pending input.
        unsafe { libc::tcflush(libc::STDIN_FILENO, libc::TCIFLUSH) };
        terminal::enable_raw_mode()?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Ok(TerminalGuard)
    }
}

/// Leaves raw mode and clears the status line. Safe to call more than once.
pub fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\r\x1b[2K");
    let _ = out.flush();
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads keys on a background thread and turns them into requests.
pub fn spawn_key_reader(requests: Sender<Request>) {
    let spawned = std::thread::Builder::new()
        .name("backline-keys".into())
        .spawn(move || loop {
            let Ok(TermEvent::Key(key)) = event::read() else {
                continue;
            };
            let Some(request) = key_to_request(key) else {
                continue;
            };
            let quit = request == Request::Quit;
            if requests.send(request).is_err() || quit {
                return;
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot read keys: {e}");
    }
}

/// The key map: space = play/stop, r = pause/resume, ] / [ = seek forward / back (next or
/// previous section, or 10 s), n = next, p = previous, q / Ctrl-C = quit.
pub fn key_to_request(key: KeyEvent) -> Option<Request> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Request::Quit),
        KeyCode::Char(' ') => Some(Request::TogglePlay),
        KeyCode::Char('r') => Some(Request::TogglePause),
        KeyCode::Char(']') => Some(Request::Seek { forward: true }),
        KeyCode::Char('[') => Some(Request::Seek { forward: false }),
        KeyCode::Char('n') | KeyCode::Right => Some(Request::Next),
        KeyCode::Char('p') | KeyCode::Left => Some(Request::Previous),
        KeyCode::Char('q') | KeyCode::Esc => Some(Request::Quit),
        _ => None,
    }
}

/// Formats seconds as m:ss.
pub fn clock(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    format!("{}:{:02}", total / 60, total % 60)
}

/// The one-line status, e.g.
/// `▶ 2/3 Tempo Change  0:12/0:16  120.0 BPM  jack:backline_out  xruns 0  RT audio FIFO 70 (CAP_SYS_NICE)`.
pub fn status_line(status: &StatusSnapshot, audio_role: Role, clock_p99_us: Option<f64>) -> String {
    let state = if status.device_lost {
        "⚠ audio device lost, retrying"
    } else if status.set_ended {
        "■ end of set"
    } else if status.playing {
        "▶"
    } else {
        "■"
    };
    let length = status
        .length_seconds
        .map(clock)
        .unwrap_or_else(|| "?:??".into());
    let tempo = status
        .bpm
        .map(|b| format!("{b:.1} BPM"))
        .unwrap_or_else(|| "no tempo".into());
    let realtime = [audio_role, Role::Clock]
        .iter()
        .filter_map(|&role| rt::report(role).map(|r| r.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let realtime = if realtime.is_empty() {
        format!("{audio_role} pending")
    } else {
        realtime
    };
    let clock_p99 = clock_p99_us
        .map(|us| format!("  clock p99 {us:.0} µs"))
        .unwrap_or_default();
    let sandbox = crate::sandbox::current()
        .map(|s| format!("  {}", s.short()))
        .unwrap_or_default();
    format!(
        "{state} {}/{} {}  {}/{}  {tempo}  {}  xruns {}{clock_p99}  RT {realtime}{sandbox}",
        status.index,
        status.total,
        status.song,
        clock(status.position_seconds),
        length,
        status.device,
        status.xruns
    )
}

/// Draws the status line in place, at most 10 times a second.
pub struct StatusLine {
    last_draw: Instant,
    audio_role: Role,
    /// Live beat-clock p99 lateness, when a clock runs.
    pub clock_p99_us: Option<f64>,
}

impl StatusLine {
    /// A status line reporting the RT state of `audio_role`.
    pub fn new(audio_role: Role) -> Self {
        StatusLine {
            last_draw: Instant::now() - Duration::from_secs(1),
            audio_role,
            clock_p99_us: None,
        }
    }
}

impl StatusSink for StatusLine {
    fn update(&mut self, status: &StatusSnapshot) {
        if self.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_draw = Instant::now();
        let width = terminal::size()
            .map(|(w, _)| usize::from(w))
            .unwrap_or(120)
            .max(20);
        let line: String = status_line(status, self.audio_role, self.clock_p99_us)
            .chars()
            .take(width - 1)
            .collect();
        let mut out = std::io::stdout();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
    }
}

/// What `play` shows while it runs: the status line in a terminal (nothing otherwise: the
/// player logs state changes), the live clock p99 in it, and the current figures in the log
/// on SIGUSR1.
pub struct ShowStatus<'a> {
    /// The terminal status line, when there is a terminal.
    pub line: Option<StatusLine>,
    /// The measurements.
    pub stats: &'a crate::stats::StatsCollector,
    /// Set by the SIGUSR1 handler.
    pub usr1: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Nominal audio period in ns.
    pub period_ns: i64,
    /// `midi.outputs` names in config order, for the per-output rows.
    pub output_names: Vec<String>,
    last_p99: Instant,
}

impl<'a> ShowStatus<'a> {
    /// A status sink for a run.
    pub fn new(
        line: Option<StatusLine>,
        stats: &'a crate::stats::StatsCollector,
        usr1: std::sync::Arc<std::sync::atomic::AtomicBool>,
        period_ns: i64,
        output_names: Vec<String>,
    ) -> Self {
        ShowStatus {
            line,
            stats,
            usr1,
            period_ns,
            output_names,
            last_p99: Instant::now(),
        }
    }
}

impl StatusSink for ShowStatus<'_> {
    fn update(&mut self, status: &StatusSnapshot) {
        if self.usr1.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let figures = self.stats.figures();
            let device_events = crate::stats::device_events();
            let report = crate::stats::TimingReport {
                figures: &figures,
                period_ns: self.period_ns,
                xruns: status.xruns,
                output_names: &self.output_names,
                device_events: &device_events,
            };
            tracing::info!(
                "figures at {} {}/{}:",
                status.song,
                clock(status.position_seconds),
                status.length_seconds.map(clock).unwrap_or_default()
            );
            for line in report.to_string().lines() {
                tracing::info!("{line}");
            }
        }
        if let Some(line) = self.line.as_mut() {
            if self.last_p99.elapsed() >= Duration::from_millis(500) {
                self.last_p99 = Instant::now();
                line.clock_p99_us = self
                    .stats
                    .summary(crate::stats::Metric::ClockLateness)
                    .map(|s| s.p99 as f64 / 1000.0);
            }
            line.update(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_requests() {
        let key = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        assert_eq!(key_to_request(key(' ')), Some(Request::TogglePlay));
        assert_eq!(key_to_request(key('n')), Some(Request::Next));
        assert_eq!(key_to_request(key('p')), Some(Request::Previous));
        assert_eq!(key_to_request(key('q')), Some(Request::Quit));
        assert_eq!(
            key_to_request(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Request::Quit)
        );
        assert_eq!(key_to_request(key('r')), Some(Request::TogglePause));
        assert_eq!(key_to_request(key('x')), None);
    }

    #[test]
    fn status_line_shows_everything() {
        let line = status_line(
            &StatusSnapshot {
                song: "Tempo Change".into(),
                index: 2,
                total: 3,
                position_seconds: 72.4,
                length_seconds: Some(196.0),
                bpm: Some(120.0),
                device: "jack:backline_out".into(),
                xruns: 1,
                playing: true,
                set_ended: false,
                device_lost: false,
            },
            Role::Audio,
            Some(38.4),
        );
        assert!(
            line.starts_with(
                "▶ 2/3 Tempo Change  1:12/3:16  120.0 BPM  jack:backline_out  xruns 1  clock p99 38 µs  RT "
            ),
            "{line}"
        );
    }
}

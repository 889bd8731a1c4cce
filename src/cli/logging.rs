//! Log output through tracing: one line per event on stderr; no timestamps under systemd
//! (journald adds its own); in the terminal UI, each line first clears the status line and
//! ends with CR LF so raw mode does not staircase.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// True when started by systemd (journald captures stderr and timestamps it).
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Installs the global subscriber. `level` is the default filter (RUST_LOG overrides it).
/// symphonia's and libjack's own messages are silenced: every failure they report reaches the
/// user as one backline line that names the file or device.
pub fn init(level: &str, raw_terminal: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},symphonia=off,jack=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false);
    let result = if raw_terminal {
        builder.with_writer(RawTerminalWriter).try_init()
    } else if under_systemd() {
        builder
            .without_time()
            .with_writer(std::io::stderr)
            .try_init()
    } else {
        builder.with_writer(std::io::stderr).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    install_panic_hook();
}

/// Routes panics through the log as one line (thread, message, place) instead of a
/// multi-line dump on stderr. Panics that the media decoder catches and turns into an error
/// naming the file are logged at debug level only: the user sees that error, not two.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if crate::media::inside_guard() {
            tracing::debug!("decoder panic caught in thread `{thread}`: {message} ({place})");
        } else {
            tracing::error!(
                "internal error in thread `{thread}`: {message} ({place}); please report it"
            );
        }
    }));
}

/// Writes log lines above the status line while the terminal is in raw mode.
#[derive(Clone, Copy)]
pub struct RawTerminalWriter;

/// One log line being written in raw mode.
pub struct RawLine(Vec<u8>);

impl Write for RawLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RawLine {
    fn drop(&mut self) {
        let mut text = Vec::with_capacity(self.0.len() + 8);
        text.extend_from_slice(b"\r\x1b[2K");
        for &byte in &self.0 {
            if byte == b'\n' {
                text.push(b'\r');
            }
            text.push(byte);
        }
        let mut err = std::io::stderr();
        let _ = err.write_all(&text);
        let _ = err.flush();
    }
}

impl<'a> MakeWriter<'a> for RawTerminalWriter {
    type Writer = RawLine;

    fn make_writer(&'a self) -> Self::Writer {
        RawLine(Vec::with_capacity(128))
    }
}

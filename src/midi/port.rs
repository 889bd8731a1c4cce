//! MIDI ports through midir (the ALSA sequencer on Linux, CoreMIDI on macOS): outputs fed
//! through a pipe by the clock thread, footswitch input, and port listing. The clock thread
//! writes to a port exactly as to a raw path (one non-blocking `write(2)` on a pipe); a
//! forwarding thread reads whole messages from the pipe and hands them to midir, so the hot
//! loop never calls into the MIDI library.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;

use midir::{MidiInput, MidiInputConnection, MidiOutput};

use crate::library::MidiEvent;
use crate::rt::RtSettings;

/// What a footswitch event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// Start playing.
    Play,
    /// Stop.
    Stop,
    /// Next song.
    Next,
    /// Previous song.
    Previous,
}

fn find_output(midi: &MidiOutput, wanted: &str) -> Option<midir::MidiOutputPort> {
    let ports = midi.ports();
    let names: Vec<String> = ports
        .iter()
        .map(|p| midi.port_name(p).unwrap_or_default())
        .collect();
    let index = names.iter().position(|n| n == wanted).or_else(|| {
        names
            .iter()
            .position(|n| n.to_lowercase().contains(&wanted.to_lowercase()))
    })?;
    ports.into_iter().nth(index)
}

/// Connects to output port `name` and returns the write end of a pipe that forwards to it.
pub fn open_output(name: &str, rt_settings: RtSettings) -> Result<i32, String> {
    let midi = MidiOutput::new("backline")
        .map_err(|e| format!("the MIDI system is not available ({e}); on Linux this needs the ALSA sequencer (/dev/snd/seq, module snd-seq)"))?;
    let port = find_output(&midi, name).ok_or_else(|| {
        let names: Vec<String> = midi
            .ports()
            .iter()
            .filter_map(|p| midi.port_name(p).ok())
            .collect();
        format!(
            "no MIDI output port named `{name}`. Ports found: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    })?;
    let mut connection = midi
        .connect(&port, "backline-out")
        .map_err(|e| format!("cannot connect to MIDI port `{name}`: {e}"))?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fds[1] was just created; the write end becomes non-blocking for the RT writer.
    unsafe {
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // SAFETY: fds[0] is a fresh descriptor owned from here on by the forwarder.
    let mut reader = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let port_name = name.to_string();
    thread::Builder::new()
        .name("backline-midi-port".into())
        .spawn(move || {
            // One step below the clock, so it never preempts the clock on a shared CPU; not
            // recorded as the clock's RT state (a failure here only adds latency).
            if rt_settings.enabled {
                let priority = i32::from(rt_settings.clock_priority.saturating_sub(1).max(1));
                let param = libc::sched_param {
                    sched_priority: priority,
                };
                // SAFETY: plain syscall on the calling thread.
                unsafe {
                    libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param)
                };
            }
            let mut buffer = [0u8; 256];
            let mut parser = MessageParser::default();
            let mut last_check = std::time::Instant::now();
            loop {
                // Wake at least once a second to see whether the port is still there: ALSA
                // accepts sends to a vanished port, so only looking tells.
                let mut poll = libc::pollfd {
                    fd: reader.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads one valid pollfd.
                let ready = unsafe { libc::poll(&mut poll, 1, 1000) };
                if ready > 0 {
                    let n = match reader.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for &byte in &buffer[..n] {
                        if let Some(message) = parser.push(byte) {
                            if connection.send(message).is_err() {
                                // Dropping the read end makes the clock's next write fail,
                                // which hands the output to the reconnect loop.
                                return;
                            }
                        }
                    }
                }
                if last_check.elapsed() >= std::time::Duration::from_secs(1) {
                    last_check = std::time::Instant::now();
                    let present = MidiOutput::new("backline-check")
                        .map(|midi| find_output(&midi, &port_name).is_some())
                        .unwrap_or(false);
                    if !present {
                        return;
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the MIDI port thread: {e}"))?;
    Ok(fds[1])
}

/// Splits a MIDI byte stream into whole messages (real-time bytes pass through at once).
#[derive(Default)]
pub struct MessageParser {
    message: [u8; 3],
    len: usize,
    expected: usize,
}

impl MessageParser {
    /// Feeds one byte; returns a complete message when this byte finishes one.
    pub fn push(&mut self, byte: u8) -> Option<&[u8]> {
        if byte >= 0xF8 {
            self.message[2] = byte;
            return Some(&self.message[2..3]);
        }
        if byte & 0x80 != 0 {
            self.message[0] = byte;
            self.len = 1;
            self.expected = match byte {
                0xC0..=0xDF | 0xF1 | 0xF3 => 2,
                0x80..=0xBF | 0xE0..=0xEF | 0xF2 => 3,
                0xF6 => 1,
                _ => 0,
            };
        } else if self.len > 0 && self.len < self.expected {
            self.message[self.len] = byte;
            self.len += 1;
        } else {
            return None;
        }
        if self.expected > 0 && self.len == self.expected {
            let len = self.len;
            // Running status: keep the status byte for the next data bytes.
            self.len = if self.message[0] < 0xF0 { 1 } else { 0 };
            return Some(&self.message[..len]);
        }
        None
    }
}

/// Listens on input port `port` and calls `on_action` for each configured event.
pub fn start_control(
    port: &str,
    bindings: Vec<(MidiEvent, ControlAction)>,
    on_action: impl Fn(ControlAction) + Send + 'static,
) -> Result<MidiInputConnection<()>, String> {
    let midi = MidiInput::new("backline-control")
        .map_err(|e| format!("the MIDI system is not available ({e}); on Linux this needs the ALSA sequencer (/dev/snd/seq, module snd-seq)"))?;
    let ports = midi.ports();
    let names: Vec<String> = ports
        .iter()
        .map(|p| midi.port_name(p).unwrap_or_default())
        .collect();
    let index = names
        .iter()
        .position(|n| n == port)
        .or_else(|| {
            names
                .iter()
                .position(|n| n.to_lowercase().contains(&port.to_lowercase()))
        })
        .ok_or_else(|| {
            format!(
                "no MIDI input port named `{port}`. Ports found: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
    let chosen = ports
        .into_iter()
        .nth(index)
        .ok_or_else(|| format!("MIDI input port `{port}` vanished"))?;
    midi.connect(
        &chosen,
        "backline-control",
        move |_, message, _| {
            if let Some(action) = match_action(&bindings, message) {
                on_action(action);
            }
        },
        (),
    )
    .map_err(|e| format!("cannot connect to MIDI input `{port}`: {e}"))
}

/// The action bound to an incoming message, if any (unknown events are ignored).
pub fn match_action(
    bindings: &[(MidiEvent, ControlAction)],
    message: &[u8],
) -> Option<ControlAction> {
    let [status, data1, rest @ ..] = message else {
        return None;
    };
    let data2 = rest.first().copied();
    bindings.iter().find_map(|(event, action)| {
        let (expected, len) = event.to_bytes();
        if expected[0] != *status || expected[1] != *data1 {
            return None;
        }
        let velocity_matters = !matches!(
            event,
            MidiEvent::NoteOn { velocity: None, .. } | MidiEvent::NoteOff { velocity: None, .. }
        );
        let same = len < 3 || !velocity_matters || data2 == Some(expected[2]);
        // A note-on with velocity 0 is a note-off: not a press.
        let is_release = *status & 0xF0 == 0x90 && data2 == Some(0);
        (same && !is_release).then_some(*action)
    })
}

/// Output and input port names (or why they cannot be listed).
pub fn list_ports() -> Vec<String> {
    let mut lines = Vec::new();
    match MidiOutput::new("backline-list") {
        Ok(midi) => {
            let ports = midi.ports();
            if ports.is_empty() {
                lines.push("MIDI port: (no output ports)".into());
            }
            for port in ports {
                lines.push(format!(
                    "MIDI port: {}",
                    midi.port_name(&port).unwrap_or_default()
                ));
            }
        }
        Err(e) => lines.push(format!(
            "MIDI ports: (unavailable: {e}; needs the ALSA sequencer, /dev/snd/seq)"
        )),
    }
    let mut raw: Vec<String> = std::fs::read_dir("/dev/snd")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .filter(|p| p.contains("/midiC"))
                .collect()
        })
        .unwrap_or_default();
    raw.sort();
    if raw.is_empty() {
        lines.push("raw MIDI devices: (none in /dev/snd)".into());
    }
    for path in raw {
        lines.push(format!("raw MIDI device: {path} (use `path: {path}`)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_splits_messages_and_running_status() {
        let mut parser = MessageParser::default();
        let stream = [0xFA, 0xF8, 0x90, 60, 100, 62, 100, 0xF8, 0xC0, 5, 0xFC];
        let mut out = Vec::new();
        for byte in stream {
            if let Some(m) = parser.push(byte) {
                out.push(m.to_vec());
            }
        }
        assert_eq!(
            out,
            vec![
                vec![0xFA],
                vec![0xF8],
                vec![0x90, 60, 100],
                vec![0x90, 62, 100],
                vec![0xF8],
                vec![0xC0, 5],
                vec![0xFC]
            ]
        );
    }

    #[test]
    fn control_events_match_like_a_footswitch() {
        let next = MidiEvent::NoteOn {
            channel: 16,
            key: 62,
            velocity: None,
        };
        let cc = MidiEvent::ControlChange {
            channel: 1,
            controller: 80,
            value: 127,
        };
        let bindings = vec![(next, ControlAction::Next), (cc, ControlAction::Stop)];
        assert_eq!(
            match_action(&bindings, &[0x9F, 62, 99]),
            Some(ControlAction::Next)
        );
        assert_eq!(match_action(&bindings, &[0x9F, 62, 0]), None, "release");
        assert_eq!(
            match_action(&bindings, &[0x9E, 62, 99]),
            None,
            "other channel"
        );
        assert_eq!(
            match_action(&bindings, &[0xB0, 80, 127]),
            Some(ControlAction::Stop)
        );
        assert_eq!(match_action(&bindings, &[0xB0, 80, 0]), None);
        assert_eq!(match_action(&bindings, &[0xF8]), None);
    }

    #[test]
    fn a_missing_sequencer_is_an_error_not_a_panic() {
        // On machines without /dev/snd/seq (like CI) both paths must fail cleanly.
        if std::path::Path::new("/dev/snd/seq").exists() {
            return;
        }
        let error = open_output("USB MIDI", RtSettings::default()).expect_err("no sequencer");
        assert!(error.contains("ALSA sequencer"), "{error}");
        let Err(error) = start_control("FCB1010", Vec::new(), |_| {}) else {
            panic!("connected to a footswitch without a sequencer");
        };
        assert!(error.contains("ALSA sequencer"), "{error}");
        assert!(list_ports().iter().any(|l| l.contains("unavailable")));
    }
}

//! JACK MIDI outputs, sample-accurate. Each output is a MIDI port on the player's own JACK
//! client. The clock thread queues every message ahead of time, with the device frame it
//! belongs to, into one lock-free SPSC ring per output ([`JackMidiFeed`]); the JACK process
//! callback takes the messages whose frame falls in the current cycle and writes each at its
//! exact offset, `frame − first frame of the cycle` ([`JackMidiSink`]). A message whose frame
//! has already passed goes at offset 0 and is counted as late.
//!
//! Port naming (`jack:` in the config): `backline:midi_out` or `midi_out` registers our port
//! `midi_out`; the client part may also be the client's own name (`--output jack:NAME`). Any
//! other client part names a destination: we register a port named after the output
//! (`name:` in the config) and connect it to that port.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::jack_output::{CycleHook, DEFAULT_CLIENT_NAME};
use crate::library::{MidiOutputConfig, MidiTarget};
use crate::stats::{Metric, SampleSender};

/// Messages one output can have queued (several seconds of dense MIDI at a lookahead of a
/// few periods).
const RING_CAPACITY: usize = 4096;

/// Which stream a message belongs to (for the lateness statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The beat clock (Timing Clock, Start, Stop, SPP, Continue).
    Clock,
    /// A MIDI file, a song-select event, All Notes Off.
    File,
}

/// One queued message.
#[derive(Debug, Clone, Copy)]
struct Queued {
    /// Device frame it belongs to (output offset included); `None` = as soon as possible.
    frame: Option<i64>,
    generation: u32,
    stream: Stream,
    len: u8,
    bytes: [u8; 3],
}

/// Counters one output shares between its two sides.
#[derive(Debug, Default)]
pub struct JackMidiCounters {
    /// Messages written after their frame had passed (at offset 0 of a later cycle).
    pub late: AtomicU64,
    /// Messages lost: the ring was full, or the port buffer had no room.
    pub dropped: AtomicU64,
}

/// The clock thread's side of one JACK MIDI output. Real-time safe.
pub struct JackMidiFeed {
    /// Name from the config.
    pub name: String,
    /// Whether this output carries the beat clock.
    pub clock: bool,
    /// Whether this output carries MIDI files and song-select events.
    pub midi_file: bool,
    /// The output's `offset_ms`, in frames, added to every frame.
    pub offset_frames: i64,
    ring: rtrb::Producer<Queued>,
    generation: Arc<AtomicU32>,
    current: u32,
    counters: Arc<JackMidiCounters>,
}

impl JackMidiFeed {
    /// Whether this output carries `stream`.
    pub fn carries(&self, stream: Stream) -> bool {
        match stream {
            Stream::Clock => self.clock,
            Stream::File => self.midi_file,
        }
    }

    /// Whether `messages` more messages fit in the ring now.
    pub fn has_room(&self, messages: usize) -> bool {
        self.ring.slots() >= messages
    }

    /// Queues `bytes` (one or more complete messages) for device frame `frame` plus the
    /// output's offset, or as soon as possible when `frame` is `None`. Real-time safe.
    pub fn push(&mut self, frame: Option<i64>, stream: Stream, bytes: &[u8]) {
        let frame = frame.map(|f| f + self.offset_frames);
        for message in messages(bytes) {
            let mut queued = Queued {
                frame,
                generation: self.current,
                stream,
                len: message.len() as u8,
                bytes: [0; 3],
            };
            queued.bytes[..message.len()].copy_from_slice(message);
            if self.ring.push(queued).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops every message queued so far that the process callback has not written yet
    /// (ticks and notes queued ahead of a stop). Real-time safe.
    pub fn cancel_pending(&mut self) {
        self.current = self.current.wrapping_add(1);
        self.generation.store(self.current, Ordering::Release);
    }

    /// The output's counters.
    pub fn counters(&self) -> &Arc<JackMidiCounters> {
        &self.counters
    }
}

/// Complete MIDI messages in `bytes`: a real-time byte (0xF8..) alone, otherwise a status byte
/// and the data bytes after it (at most two). JACK wants one message per event.
fn messages(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        while let Some((&first, tail)) = rest.split_first() {
            if first < 0x80 {
                // A stray data byte (no running status here): skip it.
                rest = tail;
                continue;
            }
            let data = if first >= 0xF8 {
                0
            } else {
                tail.iter().take(2).take_while(|&&b| b < 0x80).count()
            };
            let (message, after) = rest.split_at(1 + data);
            rest = after;
            return Some(message);
        }
        None
    })
}

/// The process callback's side of one output, without the JACK port (testable without a
/// server).
pub struct JackMidiQueue {
    ring: rtrb::Consumer<Queued>,
    generation: Arc<AtomicU32>,
    counters: Arc<JackMidiCounters>,
    /// A message this many frames late is stale (an audio outage): ticks and note-ons are
    /// dropped rather than sent in a burst; anything that ends a note still goes.
    stale_frames: i64,
    /// The output's tag in the stats: position in `midi.outputs` + 1 (0 = untagged).
    output_tag: u16,
}

/// How late a queued message may be before it is stale, in seconds.
const STALE_SECONDS: f64 = 0.1;

/// Whether a message still matters when it is stale: it ends a note or a song (note off,
/// note on with velocity 0, a controller such as All Notes Off, Stop).
fn ends_something(bytes: &[u8]) -> bool {
    match bytes {
        [status, ..] if status & 0xF0 == 0x80 || status & 0xF0 == 0xB0 => true,
        [status, _, 0] if status & 0xF0 == 0x90 => true,
        [0xFC] => true,
        _ => false,
    }
}

/// A feed and queue pair for one output (allocate off the RT thread).
pub fn queue(config: &MidiOutputConfig, sample_rate: u32) -> (JackMidiFeed, JackMidiQueue) {
    let (producer, consumer) = rtrb::RingBuffer::new(RING_CAPACITY);
    let generation = Arc::new(AtomicU32::new(0));
    let counters = Arc::new(JackMidiCounters::default());
    let offset_frames = (config.offset_ms * f64::from(sample_rate) / 1000.0).round() as i64;
    (
        JackMidiFeed {
            name: config.name.clone(),
            clock: config.clock,
            midi_file: config.midi_file,
            offset_frames,
            ring: producer,
            generation: generation.clone(),
            current: 0,
            counters: counters.clone(),
        },
        JackMidiQueue {
            ring: consumer,
            generation,
            counters,
            stale_frames: (STALE_SECONDS * f64::from(sample_rate)) as i64,
            output_tag: 0,
        },
    )
}

impl JackMidiQueue {
    /// Tags the lateness this output reports with its position in `midi.outputs` + 1.
    pub fn with_output_tag(mut self, tag: u16) -> Self {
        self.output_tag = tag;
        self
    }

    /// Hands every message due before the end of the cycle `first_frame..first_frame +
    /// frames` to `write(offset, bytes)`, in order, at offset `frame − first_frame` (0 when
    /// late; never before a message already written this cycle). `late(stream, frames)` is
    /// told how late each scheduled message is (0 = on its frame). Real-time safe.
    pub fn drain_cycle(
        &mut self,
        first_frame: u64,
        frames: u32,
        mut write: impl FnMut(u32, &[u8]) -> bool,
        mut late: impl FnMut(Stream, &[u8], u64),
    ) {
        let generation = self.generation.load(Ordering::Acquire);
        let first = first_frame as i64;
        let end = first + i64::from(frames);
        let mut last_offset = 0u32;
        while let Ok(queued) = self.ring.peek().copied() {
            if queued.generation != generation {
                let _ = self.ring.pop();
                continue;
            }
            let offset = match queued.frame {
                None => 0,
                Some(frame) if frame >= end => break,
                Some(frame)
                    if first - frame > self.stale_frames
                        && !ends_something(&queued.bytes[..usize::from(queued.len)]) =>
                {
                    // Queued before an audio outage for a time that has passed: drop it.
                    let _ = self.ring.pop();
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(frame) => {
                    let behind = (first - frame).max(0) as u64;
                    if behind > 0 {
                        self.counters.late.fetch_add(1, Ordering::Relaxed);
                    }
                    late(
                        queued.stream,
                        &queued.bytes[..usize::from(queued.len)],
                        behind,
                    );
                    (frame - first).max(0) as u32
                }
            };
            let _ = self.ring.pop();
            let offset = offset.max(last_offset).min(frames.saturating_sub(1));
            last_offset = offset;
            if !write(offset, &queued.bytes[..usize::from(queued.len)]) {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// All JACK MIDI outputs' process-callback side: runs after the audio every cycle.
pub struct JackMidiSink {
    ports: Vec<(jack::Port<jack::MidiOut>, JackMidiQueue)>,
    /// Each port's own name and destination, to register it again after a server restart.
    plans: Vec<(String, Option<String>)>,
    stats: SampleSender,
    ns_per_frame: f64,
}

impl CycleHook for JackMidiSink {
    fn cycle(&mut self, scope: &jack::ProcessScope, first_frame: u64, song_tag: u32) {
        let JackMidiSink {
            ports,
            stats,
            ns_per_frame,
            ..
        } = self;
        stats.set_song(song_tag);
        for (port, queue) in ports.iter_mut() {
            // Clears the port buffer: a cycle with nothing due sends nothing.
            let mut writer = port.writer(scope);
            let output = queue.output_tag;
            queue.drain_cycle(
                first_frame,
                scope.n_frames(),
                |time, bytes| writer.write(&jack::RawMidi { time, bytes }).is_ok(),
                |stream, bytes, behind| {
                    record_lateness(stats, output, *ns_per_frame, stream, bytes, behind)
                },
            );
        }
    }

    fn reattach(&mut self, client: &jack::Client) -> Vec<(String, String)> {
        let mut connections = Vec::new();
        let mut kept = Vec::with_capacity(self.ports.len());
        let mut kept_plans = Vec::with_capacity(self.plans.len());
        for ((old, queue), (port_name, destination)) in
            self.ports.drain(..).zip(self.plans.drain(..))
        {
            // The old port belonged to the dead client: never touch it again.
            drop(old);
            match client.register_port(&port_name, jack::MidiOut) {
                Ok(port) => {
                    if let (Some(to), Ok(name)) = (&destination, port.name()) {
                        connections.push((name, to.clone()));
                    }
                    kept.push((port, queue));
                    kept_plans.push((port_name, destination));
                }
                Err(e) => tracing::warn!(
                    "JACK MIDI port `{port_name}` cannot be registered again after the reconnect ({e}); the show plays without it"
                ),
            }
        }
        self.ports = kept;
        self.plans = kept_plans;
        connections
    }
}

/// Lateness of a JACK MIDI message is where it landed minus where it belongs, in ns: 0 when
/// sample-accurate, a multiple of the frame time when it missed its cycle. One sample per
/// Timing Clock (not for Start, which shares its frame) and per MIDI-file message.
fn record_lateness(
    stats: &mut SampleSender,
    output: u16,
    ns_per_frame: f64,
    stream: Stream,
    bytes: &[u8],
    behind: u64,
) {
    let value = (behind as f64 * ns_per_frame) as i64;
    match stream {
        Stream::Clock if bytes.first() == Some(&super::clock::TIMING_CLOCK) => {
            stats.send_for_output(Metric::ClockLateness, output, value);
        }
        Stream::Clock => {}
        Stream::File => stats.send_for_output(Metric::MidiEventLateness, output, value),
    }
}

/// The JACK MIDI outputs registered on a client.
pub struct JackMidiPorts {
    /// The clock thread's sides, in config order.
    pub feeds: Vec<JackMidiFeed>,
    /// The process callback's side (a [`CycleHook`] for the JACK output), until taken.
    pub sink: Option<JackMidiSink>,
    /// `(our port, destination)` pairs to connect once the client runs.
    pub connections: Vec<(String, String)>,
    /// Each output's name and counters, for the end-of-run summary.
    pub counters: Vec<(String, Arc<JackMidiCounters>)>,
}

/// What a `jack:` value asks for: our own port's name, and the port to connect it to.
fn port_plan(spec: &str, output_name: &str, own_client: &str) -> (String, Option<String>) {
    match spec.split_once(':') {
        None => (spec.to_string(), None),
        Some((client, port)) if client == own_client || client == DEFAULT_CLIENT_NAME => {
            (port.to_string(), None)
        }
        Some(_) => (output_name.replace(':', "_"), Some(spec.to_string())),
    }
}

/// Registers a MIDI port on `client` for every `jack:` output in `configs` (see the module
/// docs for naming). An output whose port cannot be registered is a warning; the show plays
/// without it.
pub fn register(
    client: &jack::Client,
    own_client: &str,
    configs: &[MidiOutputConfig],
    stats: SampleSender,
) -> JackMidiPorts {
    let sample_rate = u32::try_from(client.sample_rate()).unwrap_or(48_000);
    let mut feeds = Vec::new();
    let mut ports = Vec::new();
    let mut connections = Vec::new();
    let mut counters = Vec::new();
    let mut plans = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        let MidiTarget::Jack(spec) = &config.target else {
            continue;
        };
        let tag = u16::try_from(index + 1).unwrap_or(u16::MAX);
        let (port_name, destination) = port_plan(spec, &config.name, own_client);
        let port = match client.register_port(&port_name, jack::MidiOut) {
            Ok(port) => port,
            Err(e) => {
                tracing::warn!(
                    "MIDI output `{}`: cannot register JACK MIDI port `{port_name}` ({e}); the show plays without it",
                    config.name
                );
                continue;
            }
        };
        let full_name = port
            .name()
            .unwrap_or_else(|_| format!("{}:{port_name}", client.name()));
        match &destination {
            Some(to) => tracing::info!("MIDI output `{}`: JACK {full_name} → {to}", config.name),
            None => tracing::info!("MIDI output `{}`: JACK port {full_name}", config.name),
        }
        let destination_for_plan = destination.clone();
        if let Some(to) = destination {
            connections.push((full_name, to));
        }
        let (feed, queue) = queue(config, sample_rate);
        let queue = queue.with_output_tag(tag);
        counters.push((config.name.clone(), feed.counters().clone()));
        feeds.push(feed);
        ports.push((port, queue));
        plans.push((port_name, destination_for_plan));
    }
    JackMidiPorts {
        feeds,
        sink: Some(JackMidiSink {
            ports,
            plans,
            stats,
            ns_per_frame: 1e9 / f64::from(sample_rate.max(1)),
        }),
        connections,
        counters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(offset_ms: f64) -> MidiOutputConfig {
        MidiOutputConfig {
            name: "drums".into(),
            target: MidiTarget::Jack("backline:midi_out".into()),
            clock: true,
            midi_file: true,
            offset_ms,
        }
    }

    #[test]
    fn splits_bytes_into_messages() {
        let all: Vec<&[u8]> = messages(&[0xFA, 0xF8, 0xF2, 1, 2, 0x90, 60, 100, 0xC0, 5]).collect();
        assert_eq!(
            all,
            vec![
                &[0xFA][..],
                &[0xF8],
                &[0xF2, 1, 2],
                &[0x90, 60, 100],
                &[0xC0, 5]
            ]
        );
    }

    #[test]
    fn port_names() {
        assert_eq!(
            port_plan("backline:midi_out", "x", "stage"),
            ("midi_out".into(), None)
        );
        assert_eq!(
            port_plan("stage:clock", "x", "stage"),
            ("clock".into(), None)
        );
        assert_eq!(
            port_plan("midi_out", "x", "stage"),
            ("midi_out".into(), None)
        );
        assert_eq!(
            port_plan("synth:midi_in", "drum machine", "stage"),
            ("drum machine".into(), Some("synth:midi_in".into()))
        );
    }

    #[test]
    fn messages_land_on_their_frame_late_ones_at_zero() {
        let (mut feed, mut queue) = queue(&config(0.0), 48_000);
        feed.push(Some(90), Stream::Clock, &[0xFA, 0xF8]);
        feed.push(Some(130), Stream::Clock, &[0xF8]);
        feed.push(Some(300), Stream::File, &[0x90, 60, 100]);
        feed.push(Some(100), Stream::Clock, &[0xF8]);
        let mut written = Vec::new();
        let mut lateness = Vec::new();
        queue.drain_cycle(
            128,
            128,
            |offset, bytes| {
                written.push((offset, bytes.to_vec()));
                true
            },
            |_, _, behind| lateness.push(behind),
        );
        assert_eq!(
            written,
            vec![(0, vec![0xFA]), (0, vec![0xF8]), (2, vec![0xF8])],
            "late at 0, on time at frame − first frame; the rest waits"
        );
        assert_eq!(lateness, vec![38, 38, 0]);
        assert_eq!(queue.counters.late.load(Ordering::Relaxed), 2);
        written.clear();
        queue.drain_cycle(
            256,
            128,
            |offset, bytes| {
                written.push((offset, bytes.to_vec()));
                true
            },
            |_, _, _| {},
        );
        assert_eq!(written, vec![(44, vec![0x90, 60, 100]), (44, vec![0xF8])]);
    }

    #[test]
    fn offsets_and_cancel() {
        let (mut feed, mut queue) = queue(&config(1.0), 48_000);
        feed.push(Some(0), Stream::Clock, &[0xF8]);
        feed.cancel_pending();
        feed.push(None, Stream::Clock, &[0xFC]);
        feed.push(Some(10), Stream::Clock, &[0xF8]);
        let mut written = Vec::new();
        queue.drain_cycle(
            0,
            256,
            |offset, bytes| {
                written.push((offset, bytes.to_vec()));
                true
            },
            |_, _, _| {},
        );
        assert_eq!(
            written,
            vec![(0, vec![0xFC]), (58, vec![0xF8])],
            "the cancelled tick is gone; offset_ms 1 = 48 frames"
        );
    }
}

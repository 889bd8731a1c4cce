//! Standard MIDI Files (types 0 and 1) turned into a flat, time-sorted schedule that the
//! real-time MIDI thread plays without allocating.
//!
//! Only channel voice messages are kept (note on/off, poly aftertouch, control change,
//! program change, channel pressure, pitch bend), each with its full status byte. SysEx and
//! meta events are not sent; Set Tempo meta events drive the timing, End of Track events set
//! the song length.
//!
//! Events are read with midly's lazy per-track iterators. The crate is built without midly's
//! `strict` feature, so on its own midly would read a truncated chunk to the end of the file
//! and stop a track silently at its first damaged event. A backing track that quietly loses
//! its second half is worse than an error at load time, so this module walks the chunks
//! itself and checks each event's bytes: a damaged file is refused with the track, the byte
//! offset and what was expected. Harmless oddities are accepted: unknown chunks (skipped, as
//! the specification says), more tracks than the header declares, a missing End of Track,
//! bytes after End of Track, running status kept across meta and SysEx events, and malformed
//! meta events that do not affect timing (skipped).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use midly::{EventIter, MetaMessage, MidiMessage, TrackEventKind};

use crate::library::Diagnostic;

/// MIDI files larger than this are refused before parsing: backing-track files are a few
/// hundred kilobytes, and the bound caps what a hostile file can make the loader do.
pub const MAX_MIDI_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Files with more events than this (of any kind, in all tracks) are refused. It bounds the
/// schedule's memory (16 bytes per event) and the load time.
pub const MAX_EVENTS: usize = 2_000_000;
/// Files that last longer than this are refused: no song is a day long, and such a length
/// means a damaged delta-time or tempo.
pub const MAX_LENGTH_SECONDS: f64 = 24.0 * 3600.0;
/// Tempo before the first Set Tempo event: 120 BPM, as the MIDI specification says.
pub const DEFAULT_TEMPO_US_PER_QUARTER: u32 = 500_000;
/// Set Tempo values below this (faster than 1000 BPM, the fastest tempo a song's `tempo:`
/// block may give) refuse the file. A tempo of 0 would put every later event at the same
/// instant (and 60 000 000 / 0 BPM is infinite); 1 µs would ask the beat clock for 24 ticks
/// per microsecond. No real song comes near this speed: such a value is damage.
pub const MIN_TEMPO_US_PER_QUARTER: u32 = 60_000;

/// One MIDI message to send at a time in the song: a channel voice message with its full
/// status byte (no running status), `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledEvent {
    /// When to send it, in seconds from the start of the song.
    pub seconds: f64,
    /// Status byte then data bytes; bytes past `len` are 0.
    pub bytes: [u8; 3],
    /// How many of `bytes` make the message: 2 (program change, channel pressure) or 3.
    pub len: u8,
}

impl ScheduledEvent {
    /// The message bytes to send.
    pub fn message(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(3)]
    }

    /// The 0-based MIDI channel of the message.
    pub fn channel(&self) -> u8 {
        self.bytes[0] & 0x0F
    }
}

/// A MIDI file ready to play: every kept event of every track, merged and sorted by time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MidiSchedule {
    /// Events sorted by time; events at the same time keep their file order (track by
    /// track, and within a track as written).
    pub events: Vec<ScheduledEvent>,
    /// Bit n is set when 0-based channel n carries at least one scheduled event (excluded
    /// channels are not counted): the channels to silence on stop, see [`all_notes_off`].
    pub channels_used: u16,
    /// Time of the last event of any kind (End of Track included) in any track.
    pub length_seconds: f64,
}

impl MidiSchedule {
    /// Index of the first event at or after `seconds`, to start playing mid-song after a
    /// seek (`events.len()` when none is left; a NaN position counts as the start).
    pub fn first_index_at_or_after(&self, seconds: f64) -> usize {
        self.events.partition_point(|e| e.seconds < seconds)
    }
}

/// The messages that leave nothing hanging when a song stops or is skipped: for every channel
/// set in `channels_used`, Reset All Controllers (CC 121, which also lifts the sustain pedal)
/// then All Notes Off (CC 123). Controllers go first so that a synth holding notes under the
/// pedal really releases them. Allocation-free, usable from the real-time thread.
pub fn all_notes_off(channels_used: u16) -> impl Iterator<Item = [u8; 3]> {
    (0u8..16)
        .filter(move |channel| channels_used & (1 << channel) != 0)
        .flat_map(|channel| [[0xB0 | channel, 121, 0], [0xB0 | channel, 123, 0]])
}

/// Loads a Standard MIDI File (type 0 or 1) into a schedule, leaving out events on the
/// 1-based channels in `exclude_channels` (the song's `exclude_midi_channels`). Files over
/// [`MAX_MIDI_FILE_BYTES`] are refused before they are read.
pub fn load_schedule(path: &Path, exclude_channels: &[u8]) -> Result<MidiSchedule, Diagnostic> {
    let bytes = read_bounded(path, MAX_MIDI_FILE_BYTES).map_err(|m| Diagnostic::file(path, m))?;
    parse_schedule(&bytes, exclude_channels).map_err(|m| Diagnostic::file(path, m))
}

/// Parses the bytes of a Standard MIDI File (type 0 or 1) into a schedule, leaving out events
/// on the 1-based channels in `exclude` (values outside 1-16 are ignored; the song loader
/// reports them). The error says what is wrong and what was expected.
pub fn parse_schedule(bytes: &[u8], exclude: &[u8]) -> Result<MidiSchedule, String> {
    parse_with(bytes, exclude, &LIMITS)
}

/// The bounds a file must stay within; a parameter so tests can use small ones.
#[derive(Debug, Clone, Copy)]
struct Limits {
    bytes: u64,
    events: usize,
    seconds: f64,
}

const LIMITS: Limits = Limits {
    bytes: MAX_MIDI_FILE_BYTES,
    events: MAX_EVENTS,
    seconds: MAX_LENGTH_SECONDS,
};

fn too_big(len: u64, max: u64) -> String {
    format!(
        "the file is {len} bytes: expected a MIDI file of at most {} MB ({max} bytes)",
        max / (1024 * 1024)
    )
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > max {
        return Err(too_big(len, max));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // The file may grow between the size check and the read: read at most one byte more.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64, max));
    }
    Ok(bytes)
}

/// How ticks become seconds, from the header's division field.
#[derive(Debug, Clone, Copy)]
enum Division {
    /// Ticks per quarter note; Set Tempo events give the quarter's length.
    Metrical(u16),
    /// SMPTE frames per second (29 means 29.97 drop-frame) and ticks per frame.
    Timecode(u8, u8),
}

struct Header {
    declared_tracks: u16,
    division: Division,
    /// Offset of the first byte after the header chunk.
    end: usize,
}

const NOT_SMF: &str = "expected a type 0 or 1 .mid file";

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.is_empty() {
        return Err(format!("the file is empty: {NOT_SMF}"));
    }
    if bytes.starts_with(b"RIFF") {
        return Err(format!(
            "an RMID (RIFF-wrapped) MIDI file: {NOT_SMF} starting with `MThd`; export it as a plain Standard MIDI File"
        ));
    }
    if !bytes.starts_with(b"MThd") {
        return Err(format!(
            "not a Standard MIDI File (it does not start with `MThd`): {NOT_SMF}"
        ));
    }
    let len = be_u32(bytes, 4).ok_or_else(|| {
        format!("not a Standard MIDI File: the MThd header is cut short: {NOT_SMF}")
    })?;
    if len < 6 {
        return Err(format!(
            "the MThd header chunk is {len} bytes: expected at least 6 (format, track count, division)"
        ));
    }
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "not a Standard MIDI File: the MThd header chunk says {len} bytes but the file is {} bytes long: {NOT_SMF}",
                bytes.len()
            )
        })?;
    // The length check above guarantees bytes 8..14.
    let format = be_u16(bytes, 8).unwrap_or(0);
    let declared_tracks = be_u16(bytes, 10).unwrap_or(0);
    let division = be_u16(bytes, 12).unwrap_or(0);
    match format {
        0 | 1 => {}
        2 => {
            return Err(
                "a type 2 MIDI file (independent sequences played one after another): expected type 0 or 1, whose tracks play together; re-export it as type 1"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "unknown MIDI file type {other} in the header: {NOT_SMF}"
            ))
        }
    }
    let division = if division & 0x8000 != 0 {
        // SMPTE: the high byte is minus the frame rate, the low byte the ticks per frame.
        let [high, ticks_per_frame] = division.to_be_bytes();
        let fps = (high as i8).unsigned_abs();
        if !matches!(fps, 24 | 25 | 29 | 30) {
            return Err(format!(
                "SMPTE timing with {fps} frames per second in the header: expected 24, 25, 29 (29.97 drop-frame) or 30"
            ));
        }
        if ticks_per_frame == 0 {
            return Err(
                "SMPTE timing with 0 ticks per frame in the header: expected at least 1".into(),
            );
        }
        Division::Timecode(fps, ticks_per_frame)
    } else {
        if division == 0 {
            return Err(
                "0 ticks per quarter note in the header: expected a positive number such as 480"
                    .into(),
            );
        }
        Division::Metrical(division)
    };
    Ok(Header {
        declared_tracks,
        division,
        end,
    })
}

/// The MTrk chunks after the header, with damage that midly would paper over turned into
/// errors: a chunk longer than the rest of the file, a second header, missing tracks.
fn track_chunks<'a>(bytes: &'a [u8], header: &Header) -> Result<Vec<&'a [u8]>, String> {
    let declared = usize::from(header.declared_tracks);
    let mut tracks = Vec::with_capacity(declared.min(1024));
    let mut pos = header.end;
    while bytes.len().saturating_sub(pos) >= 8 {
        let id = &bytes[pos..pos + 4];
        let len = be_u32(bytes, pos + 4).unwrap_or(0);
        let start = pos + 8;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= bytes.len());
        let Some(end) = end else {
            if id != b"MTrk" && tracks.len() >= declared {
                // Trailing bytes after every promised track: nothing is lost.
                break;
            }
            return Err(format!(
                "the file is truncated: track {} (chunk at byte {pos}) says {len} bytes but the file ends {} bytes later; expected a complete .mid file",
                tracks.len() + 1,
                bytes.len() - start
            ));
        };
        match id {
            b"MTrk" if tracks.len() == MAX_TRACKS => {
                return Err(format!(
                    "more than {MAX_TRACKS} track chunks: expected at most as many as a header can declare"
                ))
            }
            b"MTrk" => tracks.push(&bytes[start..end]),
            b"MThd" => {
                return Err(format!(
                    "a second MThd header chunk at byte {pos}: expected one header followed by MTrk track chunks"
                ))
            }
            // Unknown chunk types are skipped, as the specification says.
            _ => {}
        }
        pos = end;
    }
    if tracks.len() < declared {
        return Err(format!(
            "the header declares {declared} tracks but the file holds {}: the file is truncated or damaged",
            tracks.len()
        ));
    }
    if tracks.is_empty() {
        return Err("the file holds no tracks: expected at least one MTrk chunk".into());
    }
    Ok(tracks)
}

/// The most track chunks a header can declare; more are refused, which bounds the list of
/// chunks a file of empty tracks could make.
const MAX_TRACKS: usize = u16::MAX as usize;

/// A kept event before its time is known.
#[derive(Debug, Clone, Copy)]
struct Pending {
    tick: u64,
    bytes: [u8; 3],
    len: u8,
}

/// A variable-length quantity at the start of `raw`: its value and byte count.
fn read_vlq(raw: &[u8]) -> Result<(u32, usize), &'static str> {
    let mut value = 0u32;
    for index in 0..4 {
        let byte = *raw.get(index).ok_or("cut short by the end of the track")?;
        value = (value << 7) | u32::from(byte & 0x7F);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err("longer than 4 bytes")
}

/// Checks what midly accepts without its `strict` feature but which loses or invents data:
/// an over-long delta-time, and a SysEx or meta event whose length runs past the track.
fn check_event_bytes(raw: &[u8]) -> Result<(), String> {
    let (_, delta_len) = read_vlq(raw).map_err(|e| format!("delta-time {e}"))?;
    let rest = &raw[delta_len..];
    let (what, length_at) = match rest.first() {
        Some(0xF0) | Some(0xF7) => ("SysEx", 1),
        Some(0xFF) => ("meta", 2),
        _ => return Ok(()),
    };
    let (len, len_bytes) = rest
        .get(length_at..)
        .ok_or_else(|| format!("{what} event cut short by the end of the track"))
        .and_then(|raw| read_vlq(raw).map_err(|e| format!("{what} event length {e}")))?;
    let header = length_at + len_bytes;
    let present = rest.len() - header;
    if u64::from(len) != present as u64 {
        return Err(format!(
            "{what} event says {len} bytes but the track ends {present} bytes later"
        ));
    }
    Ok(())
}

/// Why midly stopped at the event starting `raw` (running status `running` before it).
fn describe_bad_event(raw: &[u8], running: Option<u8>) -> String {
    let delta_len = match read_vlq(raw) {
        Ok((_, n)) => n,
        Err(e) => return format!("delta-time {e}"),
    };
    let Some(&first) = raw.get(delta_len) else {
        return "the track ends after a delta-time, with no event".into();
    };
    let (status, data_at) = if first >= 0x80 {
        (first, delta_len + 1)
    } else {
        match running {
            Some(status) => (status, delta_len),
            None => {
                return format!(
                    "data byte 0x{first:02X} where a status byte was expected (no running status: the first MIDI message of a track must carry its status byte)"
                )
            }
        }
    };
    match status {
        0x80..=0xEF => {
            let needed = if (0xC0..=0xDF).contains(&status) { 1 } else { 2 };
            for index in 0..needed {
                match raw.get(data_at + index) {
                    None => {
                        return format!(
                            "MIDI message 0x{status:02X} cut short by the end of the track"
                        )
                    }
                    Some(&byte) if byte >= 0x80 => {
                        return format!(
                            "byte 0x{byte:02X} where a data byte of MIDI message 0x{status:02X} was expected (a data byte is missing)"
                        )
                    }
                    Some(_) => {}
                }
            }
            format!("malformed MIDI message 0x{status:02X}")
        }
        0xF1..=0xF6 | 0xF8..=0xFE => format!(
            "status byte 0x{status:02X} (a system common or real-time message), which a MIDI file cannot hold"
        ),
        0xFF => "malformed meta event".into(),
        _ => format!("malformed event with status 0x{status:02X}"),
    }
}

/// Whether the event starting `raw` begins (after its delta-time) with a data byte instead of
/// a status byte. The specification says meta and SysEx events cancel running status, but
/// some writers keep using it after them, and common readers such as mido accept
/// that; so does backline, with the status of the track's last channel message.
fn lacks_status(raw: &[u8]) -> bool {
    read_vlq(raw)
        .ok()
        .and_then(|(_, delta_len)| raw.get(delta_len))
        .is_some_and(|&byte| byte < 0x80)
}

/// The byte length and delta-time of the meta event starting `raw`, when it lies wholly in
/// the track: such an event, if midly cannot read it, can be skipped without losing anything
/// that is played.
fn skippable_meta(raw: &[u8]) -> Option<(usize, u32)> {
    let (delta, delta_len) = read_vlq(raw).ok()?;
    let rest = raw.get(delta_len..)?;
    if rest.first() != Some(&0xFF) || rest.get(1) == Some(&0x51) {
        return None;
    }
    let (len, len_bytes) = read_vlq(rest.get(2..)?).ok()?;
    let total = delta_len + 2 + len_bytes + usize::try_from(len).ok()?;
    (total <= raw.len()).then_some((total, delta))
}

/// The bytes of a channel voice message, full status byte first.
fn encode(channel: u8, message: MidiMessage) -> ([u8; 3], u8) {
    match message {
        MidiMessage::NoteOff { key, vel } => ([0x80 | channel, key.as_int(), vel.as_int()], 3),
        MidiMessage::NoteOn { key, vel } => ([0x90 | channel, key.as_int(), vel.as_int()], 3),
        MidiMessage::Aftertouch { key, vel } => ([0xA0 | channel, key.as_int(), vel.as_int()], 3),
        MidiMessage::Controller { controller, value } => {
            ([0xB0 | channel, controller.as_int(), value.as_int()], 3)
        }
        MidiMessage::ProgramChange { program } => ([0xC0 | channel, program.as_int(), 0], 2),
        MidiMessage::ChannelAftertouch { vel } => ([0xD0 | channel, vel.as_int(), 0], 2),
        MidiMessage::PitchBend { bend } => {
            let value = bend.0.as_int();
            (
                [0xE0 | channel, (value & 0x7F) as u8, (value >> 7) as u8],
                3,
            )
        }
    }
}

/// The beat clock's tempo map for a MIDI file: its tempo and time-signature events, read by
/// the same walk as [`parse_schedule`] (header, chunks and events, with the same recoveries
/// and refusals), so the clock and the MIDI file can never follow different tempos. `None`
/// for SMPTE timing, which has no tempo to follow, or a file the schedule refuses.
pub fn clock_tempo_map(bytes: &[u8]) -> Option<crate::timing::TempoMap> {
    // Every channel excluded: only the meta events are kept.
    let (header, collector) = collect(bytes, u16::MAX, &LIMITS).ok()?;
    let Division::Metrical(ppq) = header.division else {
        return None;
    };
    Some(crate::timing::TempoMap::from_midi_events(
        ppq,
        collector.tempos,
        &collector.meters,
    ))
}

/// Everything gathered from the tracks before times are computed.
struct Collector {
    excluded: u16,
    max_events: usize,
    events_seen: usize,
    pending: Vec<Pending>,
    /// (tick, µs per quarter) in file order.
    tempos: Vec<(u64, u32)>,
    /// (tick, meter) in file order, for the beat clock's bars.
    meters: Vec<(u64, crate::library::TimeSignature)>,
    end_tick: u64,
}

impl Collector {
    fn count_event(&mut self) -> Result<(), String> {
        self.events_seen += 1;
        if self.events_seen > self.max_events {
            return Err(format!(
                "the file holds more than {} events: expected at most {} (a backing-track file has far fewer)",
                self.max_events, self.max_events
            ));
        }
        Ok(())
    }

    /// Reads one track (`number` is 1-based, for messages); `file` is the whole file, for
    /// byte offsets.
    fn read_track(&mut self, file: &[u8], number: usize, data: &[u8]) -> Result<(), String> {
        let damaged = |at: &[u8], what: String, expected: &str| {
            let offset = (at.as_ptr() as usize).wrapping_sub(file.as_ptr() as usize);
            format!("track {number} is damaged at byte {offset}: {what}; expected {expected}")
        };
        const EVENT: &str = "a well-formed event";
        let mut events = EventIter::new(data);
        let mut tick = 0u64;
        // The status of the last channel message, which meta and SysEx events do not clear
        // here (see `lacks_status`).
        let mut last_status: Option<u8> = None;
        loop {
            let before = events.unread();
            if before.is_empty() {
                break;
            }
            let running = events.running_status();
            let event = match events.next() {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(damaged(before, e.to_string(), EVENT)),
                None => {
                    // midly stops silently at an event it cannot read.
                    if running.is_none() && last_status.is_some() && lacks_status(before) {
                        events = EventIter::new(before);
                        *events.running_status_mut() = last_status;
                        continue;
                    }
                    let Some((skip, delta)) = skippable_meta(before) else {
                        return Err(damaged(before, describe_bad_event(before, running), EVENT));
                    };
                    self.count_event()?;
                    tick += u64::from(delta);
                    self.end_tick = self.end_tick.max(tick);
                    events = EventIter::new(&before[skip..]);
                    continue;
                }
            };
            let consumed = before.len() - events.unread().len();
            check_event_bytes(&before[..consumed]).map_err(|what| damaged(before, what, EVENT))?;
            self.count_event()?;
            // At most MAX_EVENTS deltas of 2^28 ticks: no overflow.
            tick += u64::from(event.delta.as_int());
            self.end_tick = self.end_tick.max(tick);
            match event.kind {
                TrackEventKind::Midi { channel, message } => {
                    let channel = channel.as_int();
                    let (bytes, len) = encode(channel, message);
                    last_status = Some(bytes[0]);
                    if self.excluded & (1 << channel) == 0 {
                        self.pending.push(Pending { tick, bytes, len });
                    }
                }
                TrackEventKind::Meta(MetaMessage::Tempo(tempo)) => {
                    let us = tempo.as_int();
                    if us < MIN_TEMPO_US_PER_QUARTER {
                        let bpm = if us == 0 {
                            "infinite".to_string()
                        } else {
                            format!("{:.0}", 60_000_000.0 / f64::from(us))
                        };
                        return Err(damaged(
                            before,
                            format!("tempo of {us} µs per quarter note ({bpm} BPM) at tick {tick}"),
                            "at least 60000 µs per quarter note (1000 BPM at most)",
                        ));
                    }
                    self.tempos.push((tick, us));
                }
                TrackEventKind::Meta(MetaMessage::Unknown(0x51, data)) => {
                    return Err(damaged(
                        before,
                        format!("Set Tempo event with {} data bytes", data.len()),
                        "3 bytes (microseconds per quarter note)",
                    ));
                }
                TrackEventKind::Meta(MetaMessage::TimeSignature(beats, log2_note, _, _))
                    if beats > 0 && log2_note < 6 =>
                {
                    let meter = crate::library::TimeSignature {
                        beats,
                        note_value: 1 << log2_note,
                    };
                    self.meters.push((tick, meter));
                }
                TrackEventKind::Meta(MetaMessage::EndOfTrack) => break,
                // SysEx, escapes and other meta events are not sent.
                _ => {}
            }
        }
        Ok(())
    }
}

/// A stretch of the song at one tempo: seconds = `seconds` + (tick - `tick`) × `numer` / `denom`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    tick: u64,
    seconds: f64,
    numer: f64,
    denom: f64,
}

impl Segment {
    fn at(&self, tick: u64) -> f64 {
        // Multiply before dividing: exact for the usual tempos and resolutions.
        self.seconds + (tick.saturating_sub(self.tick) as f64 * self.numer) / self.denom
    }
}

/// Ticks → seconds for the whole file.
struct TickMap {
    segments: Vec<Segment>,
}

impl TickMap {
    fn new(division: Division, mut tempos: Vec<(u64, u32)>) -> TickMap {
        match division {
            Division::Timecode(fps, ticks_per_frame) => {
                // Tempo events do not apply: ticks are fractions of SMPTE frames.
                let (numer, denom) = match fps {
                    29 => (1001.0, 30_000.0 * f64::from(ticks_per_frame)),
                    fps => (1.0, f64::from(fps) * f64::from(ticks_per_frame)),
                };
                TickMap {
                    segments: vec![Segment {
                        tick: 0,
                        seconds: 0.0,
                        numer,
                        denom,
                    }],
                }
            }
            Division::Metrical(ticks_per_quarter) => {
                let denom = f64::from(ticks_per_quarter) * 1e6;
                // Stable: at one tick, the last tempo in file order wins.
                tempos.sort_by_key(|&(tick, _)| tick);
                let mut segments = vec![Segment {
                    tick: 0,
                    seconds: 0.0,
                    numer: f64::from(DEFAULT_TEMPO_US_PER_QUARTER),
                    denom,
                }];
                for (tick, tempo) in tempos {
                    let numer = f64::from(tempo.max(MIN_TEMPO_US_PER_QUARTER));
                    let last = segments.last_mut().expect("starts with one segment");
                    if last.tick == tick {
                        last.numer = numer;
                        continue;
                    }
                    let seconds = last.at(tick);
                    segments.push(Segment {
                        tick,
                        seconds,
                        numer,
                        denom,
                    });
                }
                TickMap { segments }
            }
        }
    }

    fn cursor(&self) -> TempoCursor<'_> {
        TempoCursor {
            segments: &self.segments,
            index: 0,
        }
    }
}

/// Converts non-decreasing ticks in one pass over the tempo map.
struct TempoCursor<'a> {
    segments: &'a [Segment],
    index: usize,
}

impl TempoCursor<'_> {
    fn seconds(&mut self, tick: u64) -> f64 {
        while self
            .segments
            .get(self.index + 1)
            .is_some_and(|next| next.tick <= tick)
        {
            self.index += 1;
        }
        self.segments[self.index].at(tick)
    }
}

fn exclusion_mask(exclude: &[u8]) -> u16 {
    exclude
        .iter()
        .filter(|channel| (1..=16).contains(*channel))
        .fold(0, |mask, channel| mask | 1 << (channel - 1))
}

/// Reads the header, the track chunks and every event: what both the schedule and the beat
/// clock's tempo map are built from. Channels whose bit is set in `excluded` are not kept.
fn collect(bytes: &[u8], excluded: u16, limits: &Limits) -> Result<(Header, Collector), String> {
    if bytes.len() as u64 > limits.bytes {
        return Err(too_big(bytes.len() as u64, limits.bytes));
    }
    let header = read_header(bytes)?;
    let tracks = track_chunks(bytes, &header)?;
    let mut collector = Collector {
        excluded,
        max_events: limits.events,
        events_seen: 0,
        pending: Vec::new(),
        tempos: Vec::new(),
        meters: Vec::new(),
        end_tick: 0,
    };
    for (index, data) in tracks.iter().enumerate() {
        collector.read_track(bytes, index + 1, data)?;
    }
    Ok((header, collector))
}

fn parse_with(bytes: &[u8], exclude: &[u8], limits: &Limits) -> Result<MidiSchedule, String> {
    let (header, collector) = collect(bytes, exclusion_mask(exclude), limits)?;
    let Collector {
        mut pending,
        tempos,
        end_tick,
        ..
    } = collector;
    let map = TickMap::new(header.division, tempos);
    let length_seconds = map.cursor().seconds(end_tick);
    if length_seconds.is_nan() || length_seconds > limits.seconds {
        return Err(format!(
            "the file lasts {:.1} hours: expected at most {:.0} hours (a damaged delta-time or tempo event?)",
            length_seconds / 3600.0,
            limits.seconds / 3600.0
        ));
    }
    // Stable: events at one tick keep track order, then their order within the track (a
    // note-off written before a note-on of the same key stays before it). Tracks are
    // already sorted runs, which the sort merges cheaply.
    pending.sort_by_key(|event| event.tick);
    let mut cursor = map.cursor();
    let mut channels_used = 0u16;
    let events = pending
        .iter()
        .map(|event| {
            channels_used |= 1 << (event.bytes[0] & 0x0F);
            ScheduledEvent {
                seconds: cursor.seconds(event.tick),
                bytes: event.bytes,
                len: event.len,
            }
        })
        .collect();
    Ok(MidiSchedule {
        events,
        channels_used,
        length_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use midly::num::{u15, u24, u28, u4, u7};
    use midly::{Format, Header as SmfHeader, Smf, Timing, TrackEvent};

    fn vlq(mut value: u32, out: &mut Vec<u8>) {
        let mut groups = vec![(value & 0x7F) as u8];
        value >>= 7;
        while value > 0 {
            groups.push((value & 0x7F) as u8 | 0x80);
            value >>= 7;
        }
        out.extend(groups.iter().rev());
    }

    /// A track chunk body from (delta, raw event bytes), with End of Track appended.
    fn track(events: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (delta, bytes) in events {
            vlq(*delta, &mut out);
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&[0x00, 0xFF, 0x2F, 0x00]);
        out
    }

    fn smf(format: u16, division: u16, tracks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"MThd\0\0\0\x06".to_vec();
        out.extend_from_slice(&format.to_be_bytes());
        out.extend_from_slice(&(tracks.len() as u16).to_be_bytes());
        out.extend_from_slice(&division.to_be_bytes());
        for body in tracks {
            out.extend_from_slice(b"MTrk");
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    fn tempo(us: u32) -> [u8; 6] {
        let b = us.to_be_bytes();
        [0xFF, 0x51, 0x03, b[1], b[2], b[3]]
    }

    #[test]
    fn the_clock_follows_tempo_changes_after_a_recovered_event_like_the_schedule() {
        // Running status right after a meta event (midly stops there; the schedule recovers),
        // then a change to 240 BPM at tick 96 (0.2 beats = 0.1 s). The beat clock must see it.
        let body = track(&[
            (0, &[0x90, 0x3C, 0x64]),
            (0, &tempo(500_000)),
            (96, &[0x3C, 0x00]),
            (0, &tempo(250_000)),
            (0, &[0xFF, 0x58, 0x04, 0x03, 0x02, 0x18, 0x08]),
            (480, &[0x80, 0x3C, 0x00]),
        ]);
        let file = smf(0, 480, &[body]);
        let schedule = parse_schedule(&file, &[]).expect("the schedule recovers");
        assert_eq!(schedule.events.len(), 3);
        let map = clock_tempo_map(&file).expect("metrical file");
        assert!((map.bpm_at_seconds(0.5) - 240.0).abs() < 0.01);
    }

    fn times(schedule: &MidiSchedule) -> Vec<f64> {
        schedule.events.iter().map(|e| e.seconds).collect()
    }

    fn messages(schedule: &MidiSchedule) -> Vec<Vec<u8>> {
        schedule
            .events
            .iter()
            .map(|e| e.message().to_vec())
            .collect()
    }

    #[test]
    fn type0_times_bytes_and_running_status() {
        let body = track(&[
            (0, &[0xC0, 5]),          // program change, 2 bytes
            (0, &[0x90, 60, 100]),    // note on
            (480, &[60, 0]),          // running status: note on velocity 0
            (0, &[0xE1, 0x00, 0x40]), // pitch bend centre, channel 2
            (240, &[0xD1, 77]),       // channel pressure
            (0, &[0xF0, 0x02, 0x7E, 0xF7]),
            (0, &[0xA1, 61, 3]), // poly aftertouch after SysEx, with its status
            (0, &[0xB1, 7, 90]),
            (0, &[0x81, 61, 64]),
        ]);
        let s = parse_schedule(&smf(0, 480, &[body]), &[]).expect("valid");
        assert_eq!(times(&s), vec![0.0, 0.0, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75]);
        assert_eq!(
            messages(&s),
            vec![
                vec![0xC0, 5],
                vec![0x90, 60, 100],
                vec![0x90, 60, 0],
                vec![0xE1, 0x00, 0x40],
                vec![0xD1, 77],
                vec![0xA1, 61, 3],
                vec![0xB1, 7, 90],
                vec![0x81, 61, 64],
            ]
        );
        assert_eq!(s.channels_used, 0b11);
        assert_eq!(s.length_seconds, 0.75);
        assert_eq!(s.events[3].channel(), 1);
        assert_eq!(std::mem::size_of::<ScheduledEvent>(), 16);
    }

    fn ev(delta: u32, kind: TrackEventKind<'static>) -> TrackEvent<'static> {
        TrackEvent {
            delta: u28::new(delta),
            kind,
        }
    }

    fn note(channel: u8, key: u8, vel: u8) -> TrackEventKind<'static> {
        TrackEventKind::Midi {
            channel: u4::new(channel),
            message: MidiMessage::NoteOn {
                key: u7::new(key),
                vel: u7::new(vel),
            },
        }
    }

    fn end() -> TrackEvent<'static> {
        ev(0, TrackEventKind::Meta(MetaMessage::EndOfTrack))
    }

    /// Type 1 written by midly: tempo track (500000, then 250000 at tick 960) and one note track.
    fn tempo_change_file() -> Vec<u8> {
        let mut smf = Smf::new(SmfHeader::new(
            Format::Parallel,
            Timing::Metrical(u15::new(480)),
        ));
        smf.tracks.push(vec![
            ev(
                0,
                TrackEventKind::Meta(MetaMessage::Tempo(u24::new(500_000))),
            ),
            ev(
                960,
                TrackEventKind::Meta(MetaMessage::Tempo(u24::new(250_000))),
            ),
            ev(960, TrackEventKind::Meta(MetaMessage::EndOfTrack)),
        ]);
        smf.tracks.push(vec![
            ev(0, note(0, 60, 100)),
            ev(480, note(0, 60, 0)),
            ev(480, note(0, 62, 100)),
            ev(480, note(0, 62, 0)),
            end(),
        ]);
        let mut bytes = Vec::new();
        smf.write_std(&mut bytes).expect("write");
        bytes
    }

    #[test]
    fn type1_tempo_change_mid_file_times_are_exact() {
        let s = parse_schedule(&tempo_change_file(), &[]).expect("valid");
        // Ticks 0, 480, 960, 1440: 0, 0.5, 1.0, then 1.0 + 480 ticks at 250 000 µs = 1.25.
        assert_eq!(times(&s), vec![0.0, 0.5, 1.0, 1.25]);
        // Tempo track ends at tick 1920: 1.0 + 960 ticks at 250 000 µs.
        assert_eq!(s.length_seconds, 1.5);
        assert_eq!(s.channels_used, 1);
    }

    #[test]
    fn tempo_in_any_track_applies_to_all() {
        let notes = track(&[(0, &[0x90, 60, 1]), (960, &[0x80, 60, 0])]);
        let tempos = track(&[(480, &tempo(1_000_000))]);
        let s = parse_schedule(&smf(1, 480, &[notes, tempos]), &[]).expect("valid");
        // 480 ticks at 0.5 s per quarter, then 480 at 1 s.
        assert_eq!(times(&s), vec![0.0, 1.5]);
    }

    #[test]
    fn smpte_timing_ignores_tempo() {
        // 25 fps × 40 ticks per frame = 1000 ticks per second.
        let division = u16::from_be_bytes([(-25i8) as u8, 40]);
        let body = track(&[
            (0, &tempo(100_000)),
            (1500, &[0x90, 60, 1]),
            (500, &[0x80, 60, 0]),
        ]);
        let s = parse_schedule(&smf(0, division, &[body]), &[]).expect("valid");
        assert_eq!(times(&s), vec![1.5, 2.0]);
        // 29.97 drop-frame, 80 ticks per frame.
        let division = u16::from_be_bytes([(-29i8) as u8, 80]);
        let body = track(&[(2400, &[0x90, 60, 1])]);
        let s = parse_schedule(&smf(0, division, &[body]), &[]).expect("valid");
        assert!((s.events[0].seconds - 1.001).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn excluded_channels_are_left_out_and_not_counted_as_used() {
        let body = track(&[
            (0, &[0x90, 60, 1]),  // channel 1
            (0, &[0x99, 36, 1]),  // channel 10
            (0, &[0x9E, 40, 1]),  // channel 15
            (10, &[0x89, 36, 0]), // channel 10
        ]);
        let file = smf(0, 480, &[body]);
        let all = parse_schedule(&file, &[]).expect("valid");
        assert_eq!(all.events.len(), 4);
        assert_eq!(all.channels_used, 1 | 1 << 9 | 1 << 14);
        let some = parse_schedule(&file, &[10, 0, 17, 200]).expect("valid");
        assert_eq!(messages(&some), vec![vec![0x90, 60, 1], vec![0x9E, 40, 1]]);
        assert_eq!(some.channels_used, 1 | 1 << 14);
        // The length still counts every event.
        assert_eq!(some.length_seconds, all.length_seconds);
    }

    #[test]
    fn same_time_events_keep_file_order() {
        // Track 1: note-off then note-on of the same key at tick 480.
        let first = track(&[
            (0, &[0x90, 60, 100]),
            (480, &[0x80, 60, 0]),
            (0, &[0x90, 60, 90]),
            (480, &[0x80, 60, 0]),
        ]);
        // Track 2: an event at tick 480 goes after track 1's events at tick 480.
        let second = track(&[(480, &[0xB0, 1, 2]), (0, &[0xB0, 1, 3])]);
        let s = parse_schedule(&smf(1, 480, &[first, second]), &[]).expect("valid");
        assert_eq!(
            messages(&s),
            vec![
                vec![0x90, 60, 100],
                vec![0x80, 60, 0],
                vec![0x90, 60, 90],
                vec![0xB0, 1, 2],
                vec![0xB0, 1, 3],
                vec![0x80, 60, 0],
            ]
        );
        assert!(s.events.windows(2).all(|w| w[0].seconds <= w[1].seconds));
    }

    #[test]
    fn example_song_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("songs-example/songs/03-with-midi/song.mid");
        let s = load_schedule(&path, &[]).expect("example loads");
        assert_eq!(s.channels_used, 1 | 1 << 9, "bass on 1, drums on 10");
        assert!(
            (s.length_seconds - 16.0 * 0.545_455).abs() < 0.01,
            "{}",
            s.length_seconds
        );
        // Every note-on has a later note-off of the same channel and key.
        let mut held = [0i32; 16 * 128];
        for e in &s.events {
            let (status, key, vel) = (e.bytes[0] & 0xF0, e.bytes[1], e.bytes[2]);
            let slot = usize::from(e.channel()) * 128 + usize::from(key);
            match (status, vel) {
                (0x90, v) if v > 0 => held[slot] += 1,
                (0x80, _) | (0x90, 0) => held[slot] -= 1,
                _ => {}
            }
            assert!(held[slot] >= 0, "note-off before note-on at {}", e.seconds);
        }
        assert!(held.iter().all(|&n| n == 0), "hanging notes");
        assert!(s.events.iter().any(|e| e.bytes[0] == 0x99));
        assert!(s.events.iter().any(|e| e.bytes[0] == 0x90));
        let drums_only = load_schedule(&path, &[1]).expect("loads");
        assert_eq!(drums_only.channels_used, 1 << 9);
    }

    #[test]
    fn absurd_tempos_are_refused_with_their_place() {
        for us in [0u32, 1, 59_999] {
            let body = track(&[
                (0, &tempo(us)),
                (480, &[0x90, 60, 1]),
                (480, &[0x80, 60, 0]),
            ]);
            let message = parse_schedule(&smf(0, 480, &[body]), &[]).expect_err("refused");
            assert!(
                message.contains(&format!("tempo of {us} µs per quarter note"))
                    && message.contains("at tick 0")
                    && message.contains("1000 BPM at most"),
                "{message}"
            );
        }
        // The fastest accepted tempo: 60 000 µs per quarter, 480 ticks = 60 ms.
        let body = track(&[(0, &tempo(60_000)), (480, &[0x90, 60, 1])]);
        let s = parse_schedule(&smf(0, 480, &[body]), &[]).expect("valid");
        assert_eq!(times(&s), vec![0.06]);
        // The slowest tempo the format can hold is fine too.
        let body = track(&[(0, &tempo(0xFF_FFFF)), (480, &[0x90, 60, 1])]);
        let s = parse_schedule(&smf(0, 480, &[body]), &[]).expect("valid");
        assert!((s.events[0].seconds - 16.777_215).abs() < 1e-9);
    }

    #[test]
    fn harmless_oddities_are_accepted() {
        // Unknown chunk, missing End of Track, bytes after End of Track, a malformed key
        // signature meta event (skipped), more tracks than declared.
        let mut body = Vec::new();
        body.extend_from_slice(&[0x00, 0xFF, 0x59, 0x01, 0x00]); // key signature, 1 byte
        body.extend_from_slice(&[0x10, 0x90, 60, 1]);
        let mut file = smf(0, 480, &[body]);
        file.extend_from_slice(b"XFIH\0\0\0\x02ab");
        file.extend_from_slice(b"MTrk\0\0\0\x08");
        file.extend_from_slice(&[0x00, 0xFF, 0x2F, 0x00, 0x00, 0x90, 1, 2]);
        file.extend_from_slice(&[0, 0, 0]); // trailing padding
        let s = parse_schedule(&file, &[]).expect("accepted");
        assert_eq!(messages(&s), vec![vec![0x90, 60, 1]]);
        assert_eq!(s.events[0].seconds, 16.0 / 960.0);
    }

    #[test]
    fn running_status_survives_meta_and_sysex() {
        let body = track(&[
            (0, &[0x91, 60, 100]),
            (0, &[0xFF, 0x01, 0x01, b'x']),
            (10, &[60, 0]),
            (0, &[0xF0, 0x01, 0xF7]),
            (0, &[62, 5]),
        ]);
        let s = parse_schedule(&smf(0, 480, &[body]), &[]).expect("accepted");
        assert_eq!(
            messages(&s),
            vec![vec![0x91, 60, 100], vec![0x91, 60, 0], vec![0x91, 62, 5]]
        );
    }

    #[test]
    fn track_chunk_count_is_bounded() {
        let mut file = smf(1, 480, &[track(&[])]);
        for _ in 0..MAX_TRACKS {
            file.extend_from_slice(b"MTrk\0\0\0\0");
        }
        let e = refused(&file);
        assert!(e.contains("more than 65535 track chunks"), "{e}");
    }

    fn refused(bytes: &[u8]) -> String {
        parse_schedule(bytes, &[]).expect_err("must be refused")
    }

    #[test]
    fn damaged_and_unsupported_files_are_refused_with_reasons() {
        let good = track(&[(0, &[0x90, 60, 1])]);
        let one = [good.clone()];
        assert!(refused(b"").contains("empty"));
        assert!(refused(b"hello world").contains("not a Standard MIDI File"));
        assert!(refused(b"RIFF\0\0\0\0RMID").contains("RMID"));
        assert!(refused(b"MThd\0\0").contains("cut short"));
        assert!(refused(&smf(2, 480, &one)).contains("type 2"));
        assert!(refused(&smf(7, 480, &one)).contains("unknown MIDI file type 7"));
        assert!(refused(&smf(1, 0, &one)).contains("0 ticks per quarter"));
        let bad_fps = u16::from_be_bytes([(-23i8) as u8, 4]);
        assert!(refused(&smf(1, bad_fps, &one)).contains("23 frames"));
        let zero_tpf = u16::from_be_bytes([(-25i8) as u8, 0]);
        assert!(refused(&smf(1, zero_tpf, &one)).contains("0 ticks per frame"));
        assert!(refused(&smf(1, 480, &[])).contains("no tracks"));

        let whole = smf(1, 480, &[good.clone(), good.clone()]);
        let cut = refused(&whole[..whole.len() - 3]);
        assert!(
            cut.contains("truncated") && cut.contains("track 2"),
            "{cut}"
        );
        let missing = refused(&whole[..14 + 8 + good.len()]);
        assert!(missing.contains("declares 2 tracks"), "{missing}");
        let mut twice = whole.clone();
        twice.extend_from_slice(&whole[..14]);
        assert!(refused(&twice).contains("second MThd"));

        // Track data starts at byte 22; the second case fails at its second event.
        let cases: [(&[u8], &str, usize); 8] = [
            (&[0x00, 60, 100], "no running status", 22),
            (
                &[0x00, 0xFF, 0x01, 0x00, 0x00, 60, 1],
                "no running status",
                26,
            ),
            (
                &[0x00, 0xF0, 0x01, 0xF7, 0x00, 60, 1],
                "no running status",
                26,
            ),
            (&[0x00, 0x90, 60, 0x90, 61, 1], "a data byte is missing", 22),
            (&[0x00, 0xF8], "real-time", 22),
            (&[0x00, 0x90, 60], "cut short", 22),
            (
                &[0x00, 0xF0, 0x20, 0x7E, 0xF7],
                "SysEx event says 32 bytes",
                22,
            ),
            (
                &[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x90, 60, 1],
                "longer than 4 bytes",
                22,
            ),
        ];
        for (body, reason, offset) in cases {
            let e = refused(&smf(0, 480, &[body.to_vec()]));
            let place = format!("track 1 is damaged at byte {offset}:");
            assert!(e.contains(reason) && e.contains(&place), "{body:02X?}: {e}");
        }
        let short_tempo = [0x00, 0xFF, 0x51, 0x02, 0x07, 0xA1];
        let e = refused(&smf(0, 480, &[short_tempo.to_vec()]));
        assert!(
            e.contains("Set Tempo event with 2 data bytes") && e.contains("expected 3 bytes"),
            "{e}"
        );
    }

    #[test]
    fn limits_on_events_length_and_size() {
        let body = track(&[(0, &[0x90, 60, 1]), (0, &[60, 0]), (0, &[61, 1])]);
        let file = smf(0, 480, &[body]);
        let small = Limits {
            events: 3,
            ..LIMITS
        };
        let e = parse_with(&file, &[], &small).expect_err("4 events with End of Track");
        assert!(e.contains("more than 3 events"), "{e}");
        assert!(parse_with(
            &file,
            &[],
            &Limits {
                events: 4,
                ..LIMITS
            }
        )
        .is_ok());
        let tiny = Limits {
            bytes: 10,
            ..LIMITS
        };
        assert!(parse_with(&file, &[], &tiny)
            .expect_err("too big")
            .contains("at most"));

        // 2^28 - 1 ticks at 1 tick per quarter and the slowest tempo: about 142 years.
        let body = track(&[(0, &tempo(0xFF_FFFF)), (0x0FFF_FFFF, &[0x90, 60, 1])]);
        let e = refused(&smf(0, 1, &[body]));
        assert!(e.contains("expected at most 24 hours"), "{e}");

        // A file over 64 MB is refused from its size, before it is read (sparse file).
        let dir = std::env::temp_dir().join(format!("backline-midi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let big = dir.join("big.mid");
        File::create(&big)
            .and_then(|f| f.set_len(MAX_MIDI_FILE_BYTES + 1))
            .expect("sparse file");
        let e = load_schedule(&big, &[]).expect_err("too big");
        assert!(e.message.contains("at most 64 MB"), "{e}");
        assert_eq!(e.file, big);
        let e = load_schedule(&dir.join("missing.mid"), &[]).expect_err("missing");
        assert!(e.message.starts_with("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn seek_index_and_all_notes_off() {
        let s = parse_schedule(&tempo_change_file(), &[]).expect("valid");
        assert_eq!(s.first_index_at_or_after(-1.0), 0);
        assert_eq!(s.first_index_at_or_after(0.0), 0);
        assert_eq!(s.first_index_at_or_after(0.1), 1);
        assert_eq!(s.first_index_at_or_after(1.0), 2);
        assert_eq!(s.first_index_at_or_after(1.25), 3);
        assert_eq!(s.first_index_at_or_after(1.3), 4);
        assert_eq!(s.first_index_at_or_after(f64::NAN), 0);
        assert_eq!(MidiSchedule::default().first_index_at_or_after(3.0), 0);

        let off: Vec<[u8; 3]> = all_notes_off(1 | 1 << 9).collect();
        assert_eq!(
            off,
            vec![
                [0xB0, 121, 0],
                [0xB0, 123, 0],
                [0xB9, 121, 0],
                [0xB9, 123, 0]
            ]
        );
        assert_eq!(all_notes_off(0).count(), 0);
        assert_eq!(all_notes_off(u16::MAX).count(), 32);
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            const INTERESTING: [u8; 10] =
                [0x00, 0x7F, 0x80, 0xFF, 0xF0, 0xF7, 0x51, 0x2F, 0x90, 0x81];
            if self.next() % 3 == 0 {
                INTERESTING[self.below(INTERESTING.len())]
            } else {
                self.next() as u8
            }
        }
    }

    fn check_invariants(s: &MidiSchedule) {
        assert!(s.length_seconds.is_finite() && s.length_seconds >= 0.0);
        let mut previous = 0.0;
        for e in &s.events {
            assert!(e.seconds.is_finite() && e.seconds >= previous);
            assert!(e.seconds <= s.length_seconds);
            assert!((2..=3).contains(&e.len));
            assert!((0x80..=0xEF).contains(&e.bytes[0]));
            assert!(e.message()[1..].iter().all(|&b| b < 0x80));
            assert!(s.channels_used & (1 << e.channel()) != 0);
            previous = e.seconds;
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let base = {
            let first = track(&[
                (0, &tempo(500_000)),
                (0, &[0xFF, 0x58, 0x04, 4, 2, 24, 8]),
                (0, &[0xF0, 0x03, 0x7E, 0x7F, 0xF7]),
                (0, &[0xC0, 3]),
                (10, &[0x90, 60, 100]),
                (10, &[62, 100]),
                (120, &tempo(60_000)),
                (10, &[0xE0, 0, 64]),
                (10, &[0x80, 60, 0]),
            ]);
            let second = track(&[
                (5, &[0x99, 36, 90]),
                (5, &[36, 0]),
                (960, &tempo(0xFF_FFFF)),
            ]);
            smf(1, 96, &[first, second])
        };
        let mut accepted = 0;
        for iteration in 0..5000 {
            let mut data = base.clone();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(data.len());
                match rng.below(6) {
                    0 | 1 => data[at] = rng.byte(),
                    2 => data.insert(at, rng.byte()),
                    3 => {
                        data.remove(at);
                    }
                    4 => data.truncate(at),
                    _ => {
                        let len = rng.below(16).min(data.len() - at);
                        let copy = data[at..at + len].to_vec();
                        let to = rng.below(data.len());
                        data.splice(to..to, copy);
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            let result = std::panic::catch_unwind(|| parse_schedule(&data, &[3, 10]));
            match result {
                Ok(Ok(s)) => {
                    check_invariants(&s);
                    accepted += 1;
                }
                Ok(Err(message)) => assert!(!message.is_empty()),
                Err(_) => panic!("iteration {iteration} panicked on {data:02X?}"),
            }
        }
        // Garbage inside a well-formed container: midly-parsable header and chunk, random events.
        for iteration in 0..3000 {
            let len = rng.below(200);
            let body: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            let division = if rng.below(4) == 0 {
                rng.next() as u16
            } else {
                96
            };
            let data = smf(rng.below(2) as u16, division, &[body]);
            match std::panic::catch_unwind(|| parse_schedule(&data, &[])) {
                Ok(Ok(s)) => {
                    check_invariants(&s);
                    accepted += 1;
                }
                Ok(Err(_)) => {}
                Err(_) => panic!("garbage {iteration} panicked on {data:02X?}"),
            }
        }
        // Some mutated files must still load, or the mutations test nothing past the header.
        println!("midi::file fuzz: {accepted} of 8000 hostile inputs accepted");
        assert!(accepted > 100, "only {accepted} accepted");
    }

    /// A type 1 file with 4 note tracks of `per_track` events and a tempo track with a
    /// change every quarter note.
    fn big_file(per_track: usize) -> Vec<u8> {
        let mut tracks = Vec::new();
        let mut tempos = Vec::new();
        for i in 0..1000u32 {
            vlq(if i == 0 { 0 } else { 480 }, &mut tempos);
            tempos.extend_from_slice(&tempo(if i % 2 == 0 { 500_000 } else { 400_000 }));
        }
        tempos.extend_from_slice(&[0x00, 0xFF, 0x2F, 0x00]);
        tracks.push(tempos);
        for channel in 0..4u8 {
            let mut body = vec![0x00, 0x90 | channel, 60, 100];
            for i in 1..per_track {
                // Running status: a note-off (velocity 0) then the next note-on, 24 ticks on.
                let (delta, vel) = if i % 2 == 1 { (24, 0) } else { (0, 100) };
                body.extend_from_slice(&[delta, 60, vel]);
            }
            body.extend_from_slice(&[0x00, 0xFF, 0x2F, 0x00]);
            tracks.push(body);
        }
        smf(1, 480, &tracks)
    }

    #[test]
    fn a_million_events_load_in_bounded_time() {
        let per_track = 250_000;
        let file = big_file(per_track);
        let started = std::time::Instant::now();
        let s = parse_schedule(&file, &[]).expect("loads");
        let elapsed = started.elapsed();
        println!(
            "midi::file: {} events ({} bytes) loaded in {:.1} ms",
            s.events.len(),
            file.len(),
            elapsed.as_secs_f64() * 1e3
        );
        assert_eq!(s.events.len(), 4 * per_track);
        assert_eq!(s.channels_used, 0b1111);
        check_invariants(&s);
        assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
    }
}

//! The transport: what the audio callback plays (current song, the pre-rolled next one,
//! playing or stopped), driven by commands over a lock-free ring and reporting back over
//! another. Songs are built off the RT thread, travel in as `Box`es and travel back out to be
//! dropped, so the callback never allocates or frees.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::mixer::{PlanarBuffer, SongMixer, MAX_BLOCK_FRAMES};
use crate::timing::anchor::{Anchor, AnchorWriter};

/// A song ready to play: its mixer plus identity and length.
pub struct PreparedSong {
    /// Unique id of this preparation (a song prepared twice has two ids).
    pub id: u64,
    /// The stems and routing.
    pub mixer: SongMixer,
    /// Frames played so far.
    pub position: u64,
    /// Setlist position + 1, tagging the measurements taken while it plays (0 = none).
    pub song_tag: u32,
}

/// Requests from the control thread to the callback.
pub enum Command {
    /// Replace the current song (the old one is sent back to be dropped).
    Load(Box<PreparedSong>),
    /// Set the song to start the moment the current one ends (or on `Advance`).
    Queue(Box<PreparedSong>),
    /// Forget the queued song (the set ends after the current one).
    Unqueue,
    /// Start playing the current song.
    Play,
    /// Stop: the current song is sent back; the control thread loads a fresh copy.
    Stop,
    /// Pause: keep the current song where it is; `Play` resumes it from there.
    Pause,
    /// Jump to the queued song now.
    Advance,
    /// Ramp a stem of the current song to a new linear gain.
    SetGain {
        /// Stem index.
        stem: usize,
        /// Linear gain.
        gain: f32,
    },
}

/// What happened in the callback, for the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A song began playing (`id` of its preparation).
    Started {
        /// Preparation id.
        id: u64,
    },
    /// A song played to its end.
    Finished {
        /// Preparation id.
        id: u64,
        /// Frames it played.
        frames: u64,
    },
    /// Playback stopped on request.
    Stopped {
        /// Preparation id, if a song was loaded.
        id: Option<u64>,
    },
    /// The last song ended and nothing was queued.
    SetEnded,
    /// The song the control thread queued became current without playing: a pause came
    /// while the transport was waiting for it. `Play` starts it.
    Cued {
        /// Preparation id.
        id: u64,
    },
}

/// Counters the callback publishes and anyone may read (atomics only).
#[derive(Debug, Default)]
pub struct SharedStatus {
    /// Callbacks run so far (the watchdog's heartbeat).
    pub callbacks: AtomicU64,
    /// Frames rendered to the device so far.
    pub frames_rendered: AtomicU64,
    /// Id of the current song's preparation (0 = none).
    pub current_id: AtomicU64,
    /// Position of the current song in frames.
    pub position: AtomicU64,
    /// Whether the transport is playing.
    pub playing: AtomicBool,
    /// `song_tag` of the song playing (0 = none), for per-song statistics.
    pub song_tag: AtomicU32,
    /// Stem-frames played as silence because a loader was late.
    pub underrun_frames: AtomicU64,
    /// Device xruns (late callbacks, or reported by the backend).
    pub xruns: AtomicU64,
    /// Set when the output device reported it is gone; cleared when a new stream runs.
    pub device_lost: AtomicBool,
    /// Audio devices lost and found again so far.
    pub reconnects: AtomicU64,
    /// Length of the last outage in frames, as the new stream's first callback counted it.
    pub outage_frames: AtomicU64,
    /// Songs that could not be handed back for dropping (ring full); leaked, never freed on RT.
    pub leaked: AtomicU64,
}

/// The callback's side of the transport.
pub struct Transport {
    commands: rtrb::Consumer<Command>,
    events: rtrb::Producer<Event>,
    trash: rtrb::Producer<Box<PreparedSong>>,
    current: Option<Box<PreparedSong>>,
    queued: Option<Box<PreparedSong>>,
    playing: bool,
    status: Arc<SharedStatus>,
    /// Device frames rendered before the current block.
    device_frame: u64,
    /// Where the current song sits on the device frame counter, for the beat clock.
    anchor: Option<AnchorWriter>,
    /// A queued song just became current: the control thread owes a `Queue` or `Unqueue`.
    awaiting_queue: bool,
    /// The current song ended while `awaiting_queue`: silence until the control thread says
    /// what follows (a song shorter than the control thread's reaction must not end the set).
    waiting_for_queue: bool,
    /// An `Unqueue` arrived while waiting: the set ends at the start of this block.
    end_set_now: bool,
    /// Frames of silence spent waiting; past [`MAX_QUEUE_WAIT_FRAMES`] the set ends anyway.
    waited_frames: usize,
    /// A `Pause` came while `waiting_for_queue`: the next song arrives paused (current, not
    /// playing); a `Play` before it arrives goes back to waiting.
    cue_paused: bool,
    /// Frames of an outage that reached past the end of the song that ended: the next song
    /// starts that far in (`on_reconnect: resume`, the song goes on where it would have been).
    outage_carry: u64,
}

/// Longest wait for the control thread's `Queue`/`Unqueue` after a song ended before it came
/// (30 s at 48 kHz). Preparing the next song can take a while (a huge MIDI file, a slow disk,
/// a render running faster than real time); only a control thread that never answers should
/// end the set this way — the service watchdog restarts such a process anyway.
const MAX_QUEUE_WAIT_FRAMES: usize = 1_440_000;

/// The control thread's side of the transport.
pub struct TransportControl {
    /// Commands to the callback.
    pub commands: rtrb::Producer<Command>,
    /// Events from the callback.
    pub events: rtrb::Consumer<Event>,
    /// Songs the callback is done with, to be dropped here.
    pub trash: rtrb::Consumer<Box<PreparedSong>>,
    /// Live counters.
    pub status: Arc<SharedStatus>,
}

/// Most commands handled per callback (bounds the work done before audio).
const COMMANDS_PER_CALLBACK: usize = 16;

/// Creates the two sides of a transport.
pub fn transport() -> (Transport, TransportControl) {
    let (command_tx, command_rx) = rtrb::RingBuffer::new(64);
    let (event_tx, event_rx) = rtrb::RingBuffer::new(256);
    let (trash_tx, trash_rx) = rtrb::RingBuffer::new(64);
    let status = Arc::new(SharedStatus::default());
    (
        Transport {
            commands: command_rx,
            events: event_tx,
            trash: trash_tx,
            current: None,
            queued: None,
            playing: false,
            status: status.clone(),
            device_frame: 0,
            anchor: None,
            awaiting_queue: false,
            waiting_for_queue: false,
            cue_paused: false,
            end_set_now: false,
            waited_frames: 0,
            outage_carry: 0,
        },
        TransportControl {
            commands: command_tx,
            events: event_rx,
            trash: trash_rx,
            status,
        },
    )
}

/// Result of one [`Transport::process`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// When the set ended inside this buffer: the number of frames that carry audio.
    pub set_ended_at: Option<usize>,
}

impl Transport {
    /// Publishes the current song's position on the device frame counter to `anchor` after
    /// every block (the beat clock follows it).
    pub fn set_anchor(&mut self, anchor: AnchorWriter) {
        self.anchor = Some(anchor);
    }

    /// Pauses playback without telling the control thread (no event): the song keeps its
    /// place, the anchor says "not playing" so the beat clock stops. For a lost device whose
    /// song restarts when it comes back; call it only while no callback runs the transport.
    pub fn suspend(&mut self) {
        self.playing = false;
        self.status.playing.store(false, Ordering::Relaxed);
        self.status.song_tag.store(0, Ordering::Relaxed);
        if let Some(anchor) = self.anchor.as_mut() {
            let (id, position) = self.current.as_ref().map_or((0, 0), |s| (s.id, s.position));
            anchor.publish(Anchor {
                song_id: id,
                start_frame: self.device_frame as i64 - position as i64,
                playing: false,
            });
        }
    }

    /// Accounts for `frames` frames a lost device did not play: the device frame counter
    /// advances by as many and, with `skip_song` and a song playing, so does the song (its
    /// stems drop that much audio as it arrives). The song anchor does not move. Real-time
    /// safe.
    pub fn skip_outage(&mut self, frames: u64, skip_song: bool) {
        self.device_frame += frames;
        if !(skip_song && self.playing) {
            return;
        }
        if let Some(song) = self.current.as_mut() {
            song.position += frames;
            song.mixer.skip(frames);
        }
    }

    /// Fills the first `frames` frames (at most [`MAX_BLOCK_FRAMES`]) of `output`.
    /// Real-time safe: no allocation, no locks, no I/O.
    pub fn process(&mut self, output: &mut PlanarBuffer, frames: usize) -> Processed {
        let frames = frames.min(MAX_BLOCK_FRAMES);
        output.clear(frames);
        self.handle_commands();
        let mut offset = 0;
        let mut set_ended_at = None;
        if self.waiting_for_queue {
            self.waited_frames += frames;
            if self.waited_frames > MAX_QUEUE_WAIT_FRAMES {
                self.waiting_for_queue = false;
                self.awaiting_queue = false;
                self.end_set_now = true;
            }
        }
        if self.end_set_now {
            self.end_set_now = false;
            set_ended_at = Some(0);
            self.emit(Event::SetEnded);
        }
        while self.playing && offset < frames {
            let Some(song) = self.current.as_mut() else {
                self.playing = false;
                break;
            };
            let rendered = song.mixer.render(output, offset, frames - offset);
            song.position += rendered.frames as u64;
            offset += rendered.frames;
            if rendered.underrun_frames > 0 {
                self.status
                    .underrun_frames
                    .fetch_add(rendered.underrun_frames as u64, Ordering::Relaxed);
            }
            if rendered.ended {
                let finished_id = song.id;
                // An outage that reached past this song's end goes on into the next one.
                self.outage_carry = song.mixer.skipped_past_end();
                let frames_played = song.position.saturating_sub(self.outage_carry);
                self.emit(Event::Finished {
                    id: finished_id,
                    frames: frames_played,
                });
                let done = self.current.take();
                self.discard(done);
                match self.queued.take() {
                    Some(mut next) => {
                        self.emit(Event::Started { id: next.id });
                        self.carry_outage_into(&mut next);
                        self.current = Some(next);
                        self.awaiting_queue = true;
                    }
                    None if self.awaiting_queue => {
                        self.playing = false;
                        self.waiting_for_queue = true;
                        self.waited_frames = 0;
                    }
                    None => {
                        self.playing = false;
                        self.outage_carry = 0;
                        set_ended_at = Some(offset);
                        self.emit(Event::SetEnded);
                    }
                }
            }
        }
        self.status.playing.store(self.playing, Ordering::Relaxed);
        let tag = match (&self.current, self.playing) {
            (Some(song), true) => song.song_tag,
            _ => 0,
        };
        self.status.song_tag.store(tag, Ordering::Relaxed);
        let (id, position) = self.current.as_ref().map_or((0, 0), |s| (s.id, s.position));
        self.device_frame += frames as u64;
        if let Some(anchor) = self.anchor.as_mut() {
            // Frame `position` of the song is the one just before device frame `device_frame`.
            anchor.publish(Anchor {
                song_id: id,
                start_frame: self.device_frame as i64 - position as i64,
                playing: self.playing,
            });
        }
        self.status.current_id.store(id, Ordering::Relaxed);
        self.status.position.store(position, Ordering::Relaxed);
        self.status.callbacks.fetch_add(1, Ordering::Relaxed);
        self.status
            .frames_rendered
            .fetch_add(frames as u64, Ordering::Relaxed);
        Processed { set_ended_at }
    }

    fn handle_commands(&mut self) {
        for _ in 0..COMMANDS_PER_CALLBACK {
            let Ok(command) = self.commands.pop() else {
                return;
            };
            match command {
                Command::Load(song) => {
                    // An explicit choice: whatever was owed for the old song is void.
                    self.outage_carry = 0;
                    self.waiting_for_queue = false;
                    self.awaiting_queue = false;
                    self.cue_paused = false;
                    let id = song.id;
                    let old = self.current.replace(song);
                    self.discard(old);
                    if self.playing {
                        self.emit(Event::Started { id });
                    }
                }
                Command::Queue(mut song) => {
                    self.awaiting_queue = false;
                    if self.waiting_for_queue {
                        // The previous song already ended: this one starts now.
                        self.waiting_for_queue = false;
                        self.playing = true;
                        let id = song.id;
                        self.carry_outage_into(&mut song);
                        let old = self.current.replace(song);
                        self.discard(old);
                        self.emit(Event::Started { id });
                        self.awaiting_queue = true;
                    } else if self.cue_paused {
                        // Paused on the way: it waits at its start (what an outage carried
                        // past the last song's end is void: the player stopped anyway).
                        self.cue_paused = false;
                        self.outage_carry = 0;
                        let id = song.id;
                        let old = self.current.replace(song);
                        self.discard(old);
                        self.emit(Event::Cued { id });
                        self.awaiting_queue = true;
                    } else {
                        let old = self.queued.replace(song);
                        self.discard(old);
                    }
                }
                Command::Unqueue => {
                    self.outage_carry = 0;
                    self.awaiting_queue = false;
                    if self.waiting_for_queue || self.cue_paused {
                        self.waiting_for_queue = false;
                        self.cue_paused = false;
                        self.end_set_now = true;
                    }
                    let old = self.queued.take();
                    self.discard(old);
                }
                Command::Play => {
                    if !self.playing {
                        if let Some(song) = &self.current {
                            self.playing = true;
                            let id = song.id;
                            self.emit(Event::Started { id });
                        } else if self.cue_paused {
                            // Un-paused before the next song arrived: it plays when it does.
                            self.cue_paused = false;
                            self.waiting_for_queue = true;
                            self.waited_frames = 0;
                        }
                    }
                }
                Command::Stop => {
                    self.outage_carry = 0;
                    self.cue_paused = false;
                    self.waiting_for_queue = false;
                    self.awaiting_queue = false;
                    self.playing = false;
                    let old = self.current.take();
                    let id = old.as_ref().map(|s| s.id);
                    self.discard(old);
                    self.emit(Event::Stopped { id });
                }
                Command::Pause => {
                    if self.playing {
                        self.playing = false;
                        let id = self.current.as_ref().map(|s| s.id);
                        self.emit(Event::Stopped { id });
                    } else if self.waiting_for_queue {
                        // The last song ended and the next is on its way: it arrives paused.
                        self.waiting_for_queue = false;
                        self.cue_paused = true;
                        self.emit(Event::Stopped { id: None });
                    }
                }
                Command::Advance => {
                    if let Some(next) = self.queued.take() {
                        self.waiting_for_queue = false;
                        self.awaiting_queue = true;
                        let id = next.id;
                        let old = self.current.replace(next);
                        self.discard(old);
                        if self.playing {
                            self.emit(Event::Started { id });
                        }
                    }
                }
                Command::SetGain { stem, gain } => {
                    if let Some(stem) = self
                        .current
                        .as_mut()
                        .and_then(|s| s.mixer.stems.get_mut(stem))
                    {
                        stem.gain.set_target(gain);
                    }
                }
            }
        }
    }

    /// Starts `song` as far in as the outage carried past the previous song's end (if any).
    fn carry_outage_into(&mut self, song: &mut PreparedSong) {
        let carry = std::mem::take(&mut self.outage_carry);
        if carry > 0 {
            song.position += carry;
            song.mixer.skip(carry);
        }
    }

    fn emit(&mut self, event: Event) {
        // A full event ring means the control thread is stuck; dropping an event is better
        // than blocking the audio.
        let _ = self.events.push(event);
    }

    fn discard(&mut self, song: Option<Box<PreparedSong>>) {
        if let Some(song) = song {
            if let Err(rtrb::PushError::Full(song)) = self.trash.push(song) {
                // Never free on the RT thread: leak instead, and count it.
                std::mem::forget(song);
                self.status.leaked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mixer::{routes_for, StemMix};
    use crate::media::StemStream;

    /// A mono stem of `frames` frames, fully loaded, whose frame n is `first + n`, sent to
    /// `output`.
    fn stem(first: f32, frames: usize, output: usize) -> StemMix {
        let (mut producer, consumer) = rtrb::RingBuffer::new(frames);
        for n in 0..frames {
            producer.push(first + n as f32).expect("room");
        }
        let stream = StemStream {
            name: "stem".into(),
            ring: consumer,
            channels: 1,
            finished: Arc::new(AtomicBool::new(true)),
        };
        StemMix::new(stream, routes_for(1, &[output]), 1.0)
    }

    fn song_of(id: u64, stems: Vec<StemMix>) -> Box<PreparedSong> {
        Box::new(PreparedSong {
            id,
            mixer: SongMixer::new(stems),
            position: 0,
            song_tag: id as u32,
        })
    }

    /// A one-stem song of `frames` frames whose frame n is `first + n`.
    fn song(id: u64, first: f32, frames: usize) -> Box<PreparedSong> {
        song_of(id, vec![stem(first, frames, 0)])
    }

    fn push(control: &mut TransportControl, command: Command) {
        assert!(control.commands.push(command).is_ok(), "command ring full");
    }

    /// A transport playing `first`, with `next` queued, after `frames` frames.
    fn playing(
        first: Box<PreparedSong>,
        next: Box<PreparedSong>,
        frames: usize,
    ) -> (Transport, TransportControl, PlanarBuffer) {
        let (mut transport, mut control) = transport();
        push(&mut control, Command::Load(first));
        push(&mut control, Command::Queue(next));
        push(&mut control, Command::Play);
        let mut output = PlanarBuffer::new(2);
        transport.process(&mut output, frames);
        (transport, control, output)
    }

    #[test]
    fn an_outage_across_a_songs_end_goes_on_into_the_next_song() {
        let (mut transport, mut control, mut output) =
            playing(song(1, 1.0, 1000), song(2, 10_001.0, 1000), 400);
        assert_eq!(output.channel(0, 0, 1)[0], 1.0);
        // The device is gone for 900 frames, 300 of them past the first song's end.
        transport.skip_outage(900, true);
        transport.process(&mut output, 100);
        let first = output.channel(0, 0, 1)[0];
        assert_eq!(
            first, 10_301.0,
            "the next song plays from frame 300, at once"
        );
        assert_eq!(control.status.current_id.load(Ordering::Relaxed), 2);
        assert_eq!(control.status.position.load(Ordering::Relaxed), 400);
        let events = events(&mut control);
        assert!(
            events.contains(&Event::Finished {
                id: 1,
                frames: 1000
            }),
            "{events:?}"
        );
        assert!(events.contains(&Event::Started { id: 2 }), "{events:?}");
    }

    fn events(control: &mut TransportControl) -> Vec<Event> {
        let mut events = Vec::new();
        while let Ok(event) = control.events.pop() {
            events.push(event);
        }
        events
    }

    /// A transport whose only song ended while the control thread still owed the next one.
    fn waiting_for_the_next_song() -> (Transport, TransportControl, PlanarBuffer) {
        let (mut transport, mut control, mut output) =
            playing(song(1, 1.0, 100), song(2, 10_001.0, 100), 50);
        // Song 2 takes over at frame 100; the control thread has not queued song 3 yet.
        transport.process(&mut output, 200);
        assert_eq!(control.status.current_id.load(Ordering::Relaxed), 0);
        events(&mut control);
        (transport, control, output)
    }

    #[test]
    fn a_pause_while_the_next_song_is_on_its_way_holds_it_at_its_start() {
        let (mut transport, mut control, mut output) = waiting_for_the_next_song();
        push(&mut control, Command::Pause);
        transport.process(&mut output, 100);
        assert_eq!(events(&mut control), vec![Event::Stopped { id: None }]);
        push(&mut control, Command::Queue(song(3, 20_001.0, 100)));
        transport.process(&mut output, 100);
        assert_eq!(events(&mut control), vec![Event::Cued { id: 3 }]);
        assert_eq!(output.channel(0, 0, 1)[0], 0.0, "paused: silence");
        assert_eq!(control.status.current_id.load(Ordering::Relaxed), 3);
        assert_eq!(control.status.position.load(Ordering::Relaxed), 0);
        push(&mut control, Command::Play);
        transport.process(&mut output, 10);
        assert_eq!(
            output.channel(0, 0, 1)[0],
            20_001.0,
            "Play starts it at its start"
        );
        assert_eq!(events(&mut control), vec![Event::Started { id: 3 }]);
    }

    #[test]
    fn play_before_the_paused_next_song_arrives_goes_back_to_waiting_for_it() {
        let (mut transport, mut control, mut output) = waiting_for_the_next_song();
        push(&mut control, Command::Pause);
        push(&mut control, Command::Play);
        transport.process(&mut output, 100);
        push(&mut control, Command::Queue(song(3, 20_001.0, 100)));
        transport.process(&mut output, 10);
        assert_eq!(
            output.channel(0, 0, 1)[0],
            20_001.0,
            "it plays as it arrives"
        );
        assert_eq!(
            events(&mut control),
            vec![Event::Stopped { id: None }, Event::Started { id: 3 }]
        );
    }

    #[test]
    fn an_unqueue_while_paused_on_the_way_ends_the_set() {
        let (mut transport, mut control, mut output) = waiting_for_the_next_song();
        push(&mut control, Command::Pause);
        push(&mut control, Command::Unqueue);
        let processed = transport.process(&mut output, 100);
        assert_eq!(processed.set_ended_at, Some(0));
        assert_eq!(
            events(&mut control),
            vec![Event::Stopped { id: None }, Event::SetEnded]
        );
    }

    #[test]
    fn an_outage_inside_a_song_leaves_the_next_song_at_its_start() {
        let (mut transport, _control, mut output) =
            playing(song(1, 1.0, 1000), song(2, 10_001.0, 1000), 400);
        transport.skip_outage(300, true);
        transport.process(&mut output, 100);
        assert_eq!(
            output.channel(0, 0, 1)[0],
            701.0,
            "where it would have been"
        );
        transport.process(&mut output, 200);
        transport.process(&mut output, 100);
        assert_eq!(
            output.channel(0, 0, 1)[0],
            10_001.0,
            "the next song from its top"
        );
    }

    #[test]
    fn the_longest_stem_says_how_far_an_outage_reached_past_the_end() {
        // Stems of 1000 and 600 frames: the song ends with the longer one.
        let first = song_of(1, vec![stem(1.0, 1000, 0), stem(1.0, 600, 1)]);
        let (mut transport, _control, mut output) = playing(first, song(2, 10_001.0, 1000), 400);
        transport.skip_outage(800, true);
        transport.process(&mut output, 100);
        assert_eq!(
            output.channel(0, 0, 1)[0],
            10_201.0,
            "200 frames past the end"
        );
    }

    #[test]
    fn silence_while_a_loader_catches_up_is_skipped_too() {
        let (mut transport, mut control) = transport();
        // Only 500 of the song's 2000 frames are loaded when an 800-frame outage ends.
        let (mut producer, consumer) = rtrb::RingBuffer::new(2000);
        for n in 0..500 {
            producer.push(1.0 + n as f32).expect("room");
        }
        let finished = Arc::new(AtomicBool::new(false));
        let stream = StemStream {
            name: "slow".into(),
            ring: consumer,
            channels: 1,
            finished: finished.clone(),
        };
        let slow = song_of(1, vec![StemMix::new(stream, routes_for(1, &[0]), 1.0)]);
        push(&mut control, Command::Load(slow));
        push(&mut control, Command::Play);
        let mut output = PlanarBuffer::new(1);
        transport.process(&mut output, 100);
        transport.skip_outage(800, true);
        transport.process(&mut output, 100);
        assert_eq!(output.channel(0, 0, 1)[0], 0.0, "silence while loading");
        for n in 500..2000 {
            producer.push(1.0 + n as f32).expect("room");
        }
        finished.store(true, Ordering::Release);
        transport.process(&mut output, 100);
        assert_eq!(
            output.channel(0, 0, 1)[0],
            1001.0,
            "frame 1000: 100 played, the 800 of the outage and the 100 silent frames after it"
        );
        assert_eq!(control.status.position.load(Ordering::Relaxed), 1100);
    }
}

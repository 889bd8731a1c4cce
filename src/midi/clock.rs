//! The beat clock and MIDI-file thread. Every deadline is absolute: tick n of a song falls at
//! the song-relative time the tempo map gives for beat n/24, which becomes a device frame
//! (song start frame + seconds × rate) and then a CLOCK_MONOTONIC time through the audio
//! clock, so MIDI follows the interface's crystal and never accumulates drift. The thread
//! sleeps with `clock_nanosleep(TIMER_ABSTIME)` until shortly before a deadline, spins the
//! rest, writes, and records its lateness. The hot loop follows DESIGN.md's RT rules. A
//! standby thread on another core may make a due write in its place when this thread's core
//! is stalled at the deadline (`midi::standby`, `realtime.clock_standby`).
//!
//! JACK MIDI outputs take a second lane through the same song: instead of waiting for each
//! deadline, every pass of the loop queues what falls within the next
//! `jack_lookahead_frames` device frames, tagged with its device frame (song start frame +
//! the tempo map's frame + the output's offset, no time conversion), and the JACK process
//! callback writes it at its exact offset in the cycle (see `midi::jack`). A stop cancels
//! what was queued ahead.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::file::MidiSchedule;
use super::jack::{JackMidiFeed, Stream};
use super::output::OutputSlot;
use super::standby::{self, ArmedWrite, DueWrites, Settled, Standby};
use crate::engine::callback::monotonic_ns;
use crate::rt::{self, ProbeSummary, Role, RtSettings};
use crate::stats::{Metric, SampleSender};
use crate::timing::anchor::AnchorReader;
use crate::timing::{sleep_until_ns, AudioClock, SpinWindow, TempoMap};

/// While the standby is writing (one `write(2)` per output, a few µs), the clock thread
/// spins this long for it, ns, so that a write due at the same deadline (a note on the beat,
/// a chord) follows at once; then it sleeps [`STANDBY_BUSY_SLEEP_NS`] at a time (the standby's
/// vCPU stalled mid-write).
const STANDBY_BUSY_SPIN_NS: u64 = 100_000;
const STANDBY_BUSY_SLEEP_NS: u64 = 20_000;

/// MIDI real-time and system common bytes.
pub const TIMING_CLOCK: u8 = 0xF8;
/// Start from the top.
pub const START: u8 = 0xFA;
/// Continue from the Song Position Pointer.
pub const CONTINUE: u8 = 0xFB;
/// Stop.
pub const STOP: u8 = 0xFC;
/// Song Position Pointer (followed by 14 bits of sixteenth notes, LSB first).
pub const SONG_POSITION: u8 = 0xF2;
/// Pulses per quarter note of the MIDI beat clock.
pub const PPQN: f64 = 24.0;
/// Longest single sleep, so anchor changes (stop, next song) are noticed quickly.
const MAX_SLEEP_NS: u64 = 2_000_000;
/// How far into a song the clock may first see it and still start from the top.
const LATE_JOIN_SECONDS: f64 = 0.1;
/// Songs the thread keeps prepared (current, queued, previous, and a spare).
const SONG_SLOTS: usize = 8;

/// What the clock needs of a song, prepared off the RT thread.
pub struct ClockSong {
    /// Preparation id (matches the engine's).
    pub id: u64,
    /// Setlist position + 1, tagging this song's measurements.
    pub song_tag: u32,
    /// The beat clock's tempo map, when the song has one.
    pub tempo: Option<TempoMap>,
    /// The song's MIDI file, when it has one.
    pub schedule: Option<MidiSchedule>,
}

/// Requests to the clock thread.
pub enum ClockCommand {
    /// A song that may become current.
    Prepare(Box<ClockSong>),
    /// Bytes to send at once on MIDI-file outputs (a song's `midi_event` on select).
    SendNow([u8; 3], u8),
    /// The player dropped this song: hand it back unless it is playing.
    Forget(u64),
}

/// Settings of the clock thread.
#[derive(Clone, Copy)]
pub struct ClockSettings {
    /// Device frames per second.
    pub sample_rate: u32,
    /// Shortest busy-wait window before each deadline, in µs (0 = sleep only).
    pub spin_us: u32,
    /// Widest the window may grow when wake-ups come late, in µs (see `SpinWindow`).
    pub spin_max_us: u32,
    /// Real-time settings for the promotion.
    pub rt: RtSettings,
    /// What the probe found, for the promotion.
    pub probe: ProbeSummary,
    /// Keep sending Timing Clock at the last tempo while no song plays.
    pub persist_tempo: bool,
    /// How far ahead of the audio the JACK MIDI lane queues messages, in device frames (a
    /// few periods: more than the clock thread's longest sleep plus one cycle).
    pub jack_lookahead_frames: u32,
    /// Run the standby writer on another core (`realtime.clock_standby`, `midi::standby`).
    pub standby: bool,
}

/// The running clock thread.
pub struct ClockThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    heartbeat: Arc<AtomicU64>,
    spin_report: Arc<AtomicU64>,
    /// Time the loop has spent busy-waiting before deadlines, ns.
    spun_ns: Arc<AtomicU64>,
    spin_floor_us: u32,
    started: std::time::Instant,
    standby: Option<Standby>,
    /// Due writes made.
    written: Arc<AtomicU64>,
    /// Writes the standby made while this thread was over `standby::RESCUE_NS` late.
    rescues: Arc<AtomicU64>,
}

/// A write armed in [`DueWrites`], as the clock thread needs it back to collect it.
#[derive(Clone, Copy)]
struct Planned {
    deadline: u64,
    is_tick: bool,
    stream: Stream,
}

const NOTHING_PLANNED: Planned = Planned {
    deadline: 0,
    is_tick: false,
    stream: Stream::Clock,
};

/// Where one lane is in the current song.
#[derive(Clone, Copy, Default)]
struct Cursor {
    next_tick: u64,
    next_event: usize,
    started: bool,
    /// Deadline and tempo of the last tick sent, where a free run continues from.
    last_tick: Option<(u64, f64)>,
}

/// Where the direct lane stands: the song's cursor, or the free run's ticks sent. A copy
/// looks ahead (arming the next writes) without moving the lane itself.
#[derive(Clone, Copy, Default)]
struct DirectPosition {
    song: Cursor,
    free_sent: u64,
}

/// Per-song play state inside the hot loop (plain values, no allocation).
struct Playing {
    slot: usize,
    start_frame: i64,
    /// The lane that writes at each deadline (descriptor outputs).
    direct: Cursor,
    /// The lane that queues ahead for JACK MIDI outputs.
    jack: Cursor,
}

/// The clock running on at the last song's tempo while no song plays (`persist_tempo`).
/// Tick k falls at `from + k × interval`: absolute, so it does not drift either.
struct FreeRun {
    from: u64,
    interval_ns: f64,
    sent: u64,
}

struct Clock {
    outputs: Vec<Arc<OutputSlot>>,
    jack: Vec<JackMidiFeed>,
    audio: AudioClock,
    anchor: AnchorReader,
    commands: rtrb::Consumer<ClockCommand>,
    trash: rtrb::Producer<Box<ClockSong>>,
    songs: [Option<Box<ClockSong>>; SONG_SLOTS],
    playing: Option<Playing>,
    free: Option<FreeRun>,
    free_jack: Option<FreeRun>,
    current_id: u64,
    stats: SampleSender,
    settings: ClockSettings,
    heartbeat: Arc<AtomicU64>,
    spin: SpinWindow,
    /// The widest spin window so far and the latest wake-up, µs (`pack_spin_report`).
    spin_report: Arc<AtomicU64>,
    /// Busy-wait time so far, ns (one writer: this loop).
    spun_ns: Arc<AtomicU64>,
    /// The next due writes, shared with the standby thread.
    due: Arc<DueWrites>,
    /// What is armed in `due`, in order (the first `planned_len`).
    planned: [Planned; standby::CAPACITY],
    planned_len: usize,
    /// How many writes to arm at once: the ring's capacity with a standby to make them, the
    /// first only without one.
    arm_limit: usize,
    /// When this thread got to the first armed write: its own claim, won or lost.
    reached_ns: Option<u64>,
    written: Arc<AtomicU64>,
    rescues: Arc<AtomicU64>,
}

/// The busy-waiting's cost in words: `spun_ns` of spinning over `elapsed_ns` of running.
fn busy_wait_share(spun_ns: u64, elapsed_ns: u128) -> String {
    let share = if elapsed_ns == 0 {
        0.0
    } else {
        spun_ns as f64 / elapsed_ns as f64 * 100.0
    };
    format!(
        "busy-waiting before deadlines took {share:.1} % of one core ({:.1} s in {:.1} s)",
        spun_ns as f64 / 1e9,
        elapsed_ns as f64 / 1e9
    )
}

/// What the spin window did, for the log line at the end.
fn pack_spin_report(widest_us: u64, latest_wake_us: u64) -> u64 {
    (widest_us.min(u64::from(u32::MAX)) << 32) | latest_wake_us.min(u64::from(u32::MAX))
}

impl ClockThread {
    /// Starts the thread; it promotes itself to SCHED_FIFO at the clock priority. Also
    /// returns the ring of songs the thread is done with, to be dropped on a normal thread.
    /// `outputs` are written at each deadline; `jack` outputs are fed ahead with device frames.
    pub fn start(
        outputs: Vec<Arc<OutputSlot>>,
        jack: Vec<JackMidiFeed>,
        audio: AudioClock,
        anchor: AnchorReader,
        commands: rtrb::Consumer<ClockCommand>,
        stats: SampleSender,
        settings: ClockSettings,
    ) -> Result<(ClockThread, rtrb::Consumer<Box<ClockSong>>), String> {
        let (trash_tx, trash_rx) = rtrb::RingBuffer::new(64);
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = Arc::new(AtomicU64::new(0));
        let spin_report = Arc::new(AtomicU64::new(0));
        let spun_ns = Arc::new(AtomicU64::new(0));
        let due = Arc::new(DueWrites::new(outputs.len()));
        let written = Arc::new(AtomicU64::new(0));
        let rescues = Arc::new(AtomicU64::new(0));
        // Only descriptor outputs wait for deadlines (JACK MIDI is queued ahead), and with a
        // single CPU there is no other core to stand by on.
        let cpus = if settings.rt.cpus.is_empty() {
            thread::available_parallelism().map_or(1, usize::from)
        } else {
            settings.rt.cpus.0.count_ones() as usize
        };
        let standby = if settings.standby && settings.rt.enabled && cpus > 1 && !outputs.is_empty()
        {
            match Standby::start(
                due.clone(),
                outputs.clone(),
                u64::from(settings.spin_us) * 1000,
                settings.rt,
                settings.probe,
            ) {
                Ok(standby) => Some(standby),
                Err(e) => {
                    tracing::warn!("{e}; the beat clock runs without it");
                    None
                }
            }
        } else {
            None
        };
        let mut clock = Clock {
            outputs,
            jack,
            audio,
            anchor,
            commands,
            trash: trash_tx,
            songs: Default::default(),
            playing: None,
            free: None,
            free_jack: None,
            current_id: 0,
            stats,
            settings,
            heartbeat: heartbeat.clone(),
            spin: SpinWindow::new(
                u64::from(settings.spin_us) * 1000,
                u64::from(settings.spin_max_us) * 1000,
            ),
            spin_report: spin_report.clone(),
            spun_ns: spun_ns.clone(),
            due,
            planned: [NOTHING_PLANNED; standby::CAPACITY],
            planned_len: 0,
            arm_limit: if standby.is_some() {
                standby::CAPACITY
            } else {
                1
            },
            reached_ns: None,
            written: written.clone(),
            rescues: rescues.clone(),
        };
        let handle = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("backline-clock".into())
                .spawn(move || {
                    rt::prefault_stack();
                    rt::promote_current_thread(Role::Clock, &settings.rt, &settings.probe);
                    // The hot loop runs under the allocation guard: a no-op with the normal
                    // allocator, an abort in tests that install `AllocDisabler`.
                    assert_no_alloc::assert_no_alloc(|| {
                        clock.run(&stop);
                        clock.stop_song();
                    });
                })
                .map_err(|e| format!("cannot start the clock thread: {e}"))?
        };
        Ok((
            ClockThread {
                stop,
                handle: Some(handle),
                heartbeat,
                spin_report,
                spun_ns,
                spin_floor_us: settings.spin_us,
                started: std::time::Instant::now(),
                standby,
                written,
                rescues,
            },
            trash_rx,
        ))
    }

    /// A counter the thread's loop advances at least every 2 ms, playing or idle (the
    /// service's watchdog checks the thread is alive with it).
    pub fn heartbeat(&self) -> Arc<AtomicU64> {
        self.heartbeat.clone()
    }

    /// How many due writes the standby writer has made, or None when it does not run
    /// (`realtime.clock_standby: false`, real-time off or refused, one CPU, or no descriptor
    /// outputs).
    pub fn standby_writes(&self) -> Option<u64> {
        self.standby
            .as_ref()
            .filter(|s| s.realtime() == Some(true))
            .map(|s| s.writes.load(Ordering::Relaxed))
    }

    /// Stops the thread after it sends Stop and All Notes Off, and says how far its spin
    /// window had to widen and what the busy-waiting cost.
    pub fn finish(mut self) {
        self.shutdown();
        let report = self.spin_report.load(Ordering::Relaxed);
        let (widest_us, latest_wake_us) = (report >> 32, report & u64::from(u32::MAX));
        let cost = busy_wait_share(
            self.spun_ns.load(Ordering::Relaxed),
            self.started.elapsed().as_nanos(),
        );
        if widest_us > u64::from(self.spin_floor_us) {
            tracing::info!(
                "beat clock: wake-ups came up to {latest_wake_us} µs late, so the spin window widened from {} to at most {widest_us} µs (realtime.spin_max_us); {cost}",
                self.spin_floor_us
            );
        } else if self.spin_floor_us > 0 {
            tracing::info!(
                "beat clock: the spin window stayed at {} µs; {cost}",
                self.spin_floor_us
            );
        }
        match self.standby.as_ref().map(|s| (s, s.realtime())) {
            Some((standby, Some(true))) => tracing::info!(
                "beat clock: the standby writer made {} of {} due writes, {} of them while the clock thread was over {} µs late; its {}",
                standby.writes.load(Ordering::Relaxed),
                self.written.load(Ordering::Relaxed),
                self.rescues.load(Ordering::Relaxed),
                standby::RESCUE_NS / 1000,
                busy_wait_share(
                    standby.spun_ns.load(Ordering::Relaxed),
                    self.started.elapsed().as_nanos()
                )
            ),
            Some((_, Some(false))) => tracing::info!(
                "beat clock: no standby writer (it could not run real-time, see the clock's real-time line)"
            ),
            _ => {}
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        // The clock thread left nothing armed: the standby has nothing more to write.
        if let Some(standby) = self.standby.as_mut() {
            standby.stop();
        }
    }
}

impl Drop for ClockThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Clock {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            // First take the armed writes back (collecting those made): nothing below may
            // change what is due while the standby could still write it.
            if !self.settle_due_writes() {
                continue;
            }
            // Every pass sleeps at most MAX_SLEEP_NS plus the spin window, so this keeps
            // advancing between songs too (not while a stopped standby holds a write).
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            self.handle_commands();
            self.follow_anchor();
            let now = monotonic_ns();
            self.pump_jack(now);
            let Some((first, deadline)) = self.arm_ahead(now) else {
                self.sleep_until(now + MAX_SLEEP_NS);
                continue;
            };
            if deadline > now + MAX_SLEEP_NS {
                // Far away: sleep a slice and look at the anchor again.
                self.sleep_until(
                    deadline
                        .saturating_sub(self.spin_ns())
                        .min(now + MAX_SLEEP_NS),
                );
                continue;
            }
            if deadline > now + self.spin_ns() {
                self.sleep_until(deadline - self.spin_ns());
            }
            let spin_from = monotonic_ns();
            while monotonic_ns() < deadline {
                std::hint::spin_loop();
            }
            self.spun_ns.store(
                self.spun_ns.load(Ordering::Relaxed) + deadline.saturating_sub(spin_from),
                Ordering::Relaxed,
            );
            self.reached_ns = Some(monotonic_ns());
            self.due.claim_and_write(first, &self.outputs, false);
        }
        // Nothing may stay armed (the Stop that follows must be the last byte) nor uncollected.
        while !self.settle_due_writes() {}
    }

    /// Arms the direct lane's next writes for this thread and the standby, in order: the
    /// first whatever its deadline, then up to [`standby::CAPACITY`] due before now +
    /// [`standby::ARM_HORIZON_NS`]. Returns the first and its deadline; None when nothing is
    /// due.
    fn arm_ahead(&mut self, now: u64) -> Option<(ArmedWrite, u64)> {
        let mut ahead = self.direct_position();
        let mut first = None;
        while self.planned_len < self.arm_limit {
            let Some((deadline, is_tick)) = self.next_deadline(&ahead) else {
                break;
            };
            if first.is_some() && deadline > now + standby::ARM_HORIZON_NS {
                break;
            }
            let Some((stream, bytes, len)) = self.due_bytes(&ahead, is_tick) else {
                break;
            };
            let Some(write) = self.due.arm(deadline, stream, &bytes[..usize::from(len)]) else {
                break;
            };
            self.planned[write.index()] = Planned {
                deadline,
                is_tick,
                stream,
            };
            self.planned_len = write.index() + 1;
            first.get_or_insert((write, deadline));
            self.step(&mut ahead, is_tick, deadline);
        }
        first
    }

    /// Takes the armed writes back, collecting those made (advancing the lane and filing
    /// each output's lateness, whoever wrote them). While the standby is writing it waits up
    /// to [`STANDBY_BUSY_SPIN_NS`] spinning, then one short sleep, and returns false if the
    /// write is still not made.
    fn settle_due_writes(&mut self) -> bool {
        let mut settled = self.due.settle();
        let busy_since = monotonic_ns();
        while settled == Settled::Busy && monotonic_ns() - busy_since < STANDBY_BUSY_SPIN_NS {
            std::hint::spin_loop();
            settled = self.due.settle();
        }
        let Settled::Free { written } = settled else {
            sleep_until_ns(monotonic_ns() + STANDBY_BUSY_SLEEP_NS);
            return false;
        };
        let now = monotonic_ns();
        // Its own claim for the first write; any later one it reaches only now.
        let reached_first = self.reached_ns.take().unwrap_or(now);
        let mut position = self.direct_position();
        for index in 0..written.min(self.planned_len) {
            let planned = self.planned[index];
            self.written.fetch_add(1, Ordering::Relaxed);
            let reached = if index == 0 { reached_first } else { now };
            if self.due.written_by_standby(index) && standby::is_rescue(planned.deadline, reached) {
                self.rescues.fetch_add(1, Ordering::Relaxed);
            }
            self.step(&mut position, planned.is_tick, planned.deadline);
            let metric = match planned.stream {
                Stream::Clock => Metric::ClockLateness,
                Stream::File => Metric::MidiEventLateness,
            };
            for (output_index, output) in self.outputs.iter().enumerate() {
                if let Some(lateness) = self.due.lateness(index, output_index) {
                    self.stats.send_for_output(metric, output.tag, lateness);
                }
            }
        }
        self.set_direct_position(position);
        self.planned_len = 0;
        true
    }

    fn spin_ns(&self) -> u64 {
        self.spin.window_ns()
    }

    /// Sleeps until `target` and lets the spin window learn how late the wake-up came (a
    /// target already past is no sleep, and says nothing about wake-ups).
    fn sleep_until(&mut self, target: u64) {
        if target <= monotonic_ns() {
            return;
        }
        sleep_until_ns(target);
        let now = monotonic_ns();
        let widest = self.spin.widest_ns();
        let latest = self.spin.latest_wake_ns();
        self.spin.observe(now, now.saturating_sub(target));
        if self.spin.widest_ns() != widest || self.spin.latest_wake_ns() != latest {
            self.spin_report.store(
                pack_spin_report(
                    self.spin.widest_ns() / 1000,
                    self.spin.latest_wake_ns() / 1000,
                ),
                Ordering::Relaxed,
            );
        }
    }

    fn handle_commands(&mut self) {
        while let Ok(command) = self.commands.pop() {
            match command {
                ClockCommand::Prepare(song) => self.store_song(song),
                ClockCommand::Forget(id) => {
                    let active = self.playing.as_ref().map(|p| p.slot);
                    let found = self
                        .songs
                        .iter()
                        .position(|s| s.as_ref().is_some_and(|s| s.id == id));
                    if let Some(slot) = found.filter(|&slot| Some(slot) != active) {
                        if let Some(song) = self.songs[slot].take() {
                            self.discard(song);
                        }
                    }
                }
                ClockCommand::SendNow(bytes, len) => {
                    self.write_now(Stream::File, &bytes[..usize::from(len)]);
                }
            }
        }
    }

    fn store_song(&mut self, song: Box<ClockSong>) {
        let active = self.playing.as_ref().map(|p| p.slot);
        let free = self.songs.iter().position(Option::is_none).or_else(|| {
            // Evict the oldest song that is not playing.
            (0..SONG_SLOTS)
                .filter(|&i| Some(i) != active)
                .min_by_key(|&i| self.songs[i].as_ref().map_or(0, |s| s.id))
        });
        if let Some(slot) = free {
            if let Some(old) = self.songs[slot].replace(song) {
                self.discard(old);
            }
        } else {
            self.discard(song);
        }
    }

    fn discard(&mut self, song: Box<ClockSong>) {
        if let Err(rtrb::PushError::Full(song)) = self.trash.push(song) {
            // Never free on the RT thread.
            std::mem::forget(song);
        }
    }

    /// Starts, stops or switches songs as the audio transport does.
    fn follow_anchor(&mut self) {
        let anchor = self.anchor.read();
        if !anchor.playing {
            if self.playing.is_some() {
                self.stop_song();
            }
            return;
        }
        if anchor.song_id == self.current_id && self.playing.is_some() {
            return;
        }
        let Some(slot) = self
            .songs
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.id == anchor.song_id))
        else {
            // A song the clock was not told about (yet): the old one must not keep ticking.
            self.stop_song();
            return;
        };
        if self.playing.is_some() {
            self.stop_song();
        }
        self.current_id = anchor.song_id;
        // The new song's own Start and ticks take over from a free-running clock.
        self.free = None;
        if self.free_jack.take().is_some_and(|free| free.sent > 0) {
            // Free-running ticks queued ahead of the new song must not play. (A Stop queued
            // by `stop_song` in this same pass has no free ticks after it yet: it stays.)
            for feed in &mut self.jack {
                feed.cancel_pending();
            }
        }
        let tag = self.songs[slot].as_ref().map_or(0, |s| s.song_tag);
        self.stats.set_song(tag);
        let mut cursor = Cursor::default();
        // Joining late (the song started before this thread saw it): resume from where the
        // song is, with Song Position Pointer + Continue, rather than a burst of old ticks.
        let now_frame = self
            .audio
            .frame_at_time(monotonic_ns())
            .map_or(anchor.start_frame, |f| f as i64);
        let seconds =
            (now_frame - anchor.start_frame).max(0) as f64 / f64::from(self.settings.sample_rate);
        // A few milliseconds late is the normal case (the song started in the last audio
        // period): play everything from the top, slightly late, rather than skip.
        let joined_late = seconds > LATE_JOIN_SECONDS;
        // Song Position Pointer (when it can say where) and Continue, sent after the look.
        let mut resume: Option<Option<[u8; 3]>> = None;
        if let Some(song) = self.songs[slot].as_ref().filter(|_| joined_late) {
            if let Some(tempo) = &song.tempo {
                let beat = tempo.beat_at_seconds(seconds);
                if beat > 1.0 / PPQN {
                    // The next sixteenth at or after now: no burst of late ticks.
                    let sixteenths = (beat * 4.0).ceil();
                    // Beyond 1024 bars SPP cannot say where: Continue from the next tick.
                    resume = Some((sixteenths <= 16383.0).then(|| {
                        let s = sixteenths as u16;
                        [SONG_POSITION, (s & 0x7f) as u8, (s >> 7) as u8]
                    }));
                    cursor.started = true;
                    cursor.next_tick = (sixteenths / 4.0 * PPQN).ceil() as u64;
                }
            }
            if let Some(schedule) = &song.schedule {
                cursor.next_event = schedule.first_index_at_or_after(seconds);
            }
        }
        if let Some(spp) = resume {
            if let Some(spp) = spp {
                self.write_now(Stream::Clock, &spp);
            }
            self.write_now(Stream::Clock, &[CONTINUE]);
        }
        self.playing = Some(Playing {
            slot,
            start_frame: anchor.start_frame,
            direct: cursor,
            jack: cursor,
        });
    }

    fn stop_song(&mut self) {
        let Some(playing) = self.playing.take() else {
            return;
        };
        if playing.direct.started {
            self.write_clock(&[STOP]);
        }
        // What the JACK lane queued ahead of the stop must not play.
        for feed in &mut self.jack {
            feed.cancel_pending();
            if playing.jack.started && feed.clock {
                feed.push(None, Stream::Clock, &[STOP]);
            }
        }
        // Free-running ticks belong to no song.
        self.stats.set_song(0);
        if self.settings.persist_tempo {
            if let Some((from, bpm)) = playing.direct.last_tick.filter(|(_, bpm)| *bpm > 0.0) {
                self.free = Some(FreeRun {
                    from,
                    interval_ns: 60e9 / (bpm * PPQN),
                    sent: 0,
                });
            }
            if let Some((from, bpm)) = playing.jack.last_tick.filter(|(_, bpm)| *bpm > 0.0) {
                // The ticks queued ahead were just cancelled: run on from the last tick at
                // or before now, in the same phase.
                let interval_ns = 60e9 / (bpm * PPQN);
                let now = monotonic_ns() as f64;
                let mut from = from as f64;
                if from > now {
                    from -= ((from - now) / interval_ns).ceil() * interval_ns;
                }
                self.free_jack = Some(FreeRun {
                    from: from.max(0.0) as u64,
                    interval_ns,
                    sent: 0,
                });
            }
        }
        if let Some(schedule) = self.songs[playing.slot]
            .as_ref()
            .and_then(|s| s.schedule.as_ref())
        {
            let channels = schedule.channels_used;
            for message in super::file::all_notes_off(channels) {
                self.write_now(Stream::File, &message);
            }
        }
        self.current_id = 0;
    }

    /// Time of a song-relative second on this machine's clock, or None before the audio
    /// clock has its first callback.
    fn deadline_of(&self, start_frame: i64, seconds: f64) -> Option<u64> {
        let frame = start_frame as f64 + seconds * f64::from(self.settings.sample_rate);
        if frame < 0.0 {
            return None;
        }
        self.audio.time_of_frame(frame.round() as u64)
    }

    /// The direct lane's position now.
    fn direct_position(&self) -> DirectPosition {
        DirectPosition {
            song: self.playing.as_ref().map(|p| p.direct).unwrap_or_default(),
            free_sent: self.free.as_ref().map_or(0, |f| f.sent),
        }
    }

    /// Moves the direct lane to `position` (its writes were made).
    fn set_direct_position(&mut self, position: DirectPosition) {
        if let Some(playing) = self.playing.as_mut() {
            playing.direct = position.song;
        } else if let Some(free) = self.free.as_mut() {
            free.sent = position.free_sent;
        }
    }

    /// The earliest pending deadline of the direct lane at `at`: (time, is it a clock tick).
    fn next_deadline(&self, at: &DirectPosition) -> Option<(u64, bool)> {
        if self.outputs.is_empty() {
            // JACK outputs only: nothing waits for a deadline.
            return None;
        }
        let Some(playing) = self.playing.as_ref() else {
            return self.free.as_ref().map(|f| {
                (
                    f.from + ((at.free_sent + 1) as f64 * f.interval_ns) as u64,
                    true,
                )
            });
        };
        let song = self.songs[playing.slot].as_ref()?;
        let tick = song.tempo.as_ref().and_then(|tempo| {
            let seconds = tempo.seconds_at_beat(at.song.next_tick as f64 / PPQN);
            self.deadline_of(playing.start_frame, seconds)
                .map(|t| offset(t, self.clock_offset()))
        });
        let event = song.schedule.as_ref().and_then(|schedule| {
            let event = schedule.events.get(at.song.next_event)?;
            self.deadline_of(playing.start_frame, event.seconds)
                .map(|t| offset(t, self.file_offset()))
        });
        match (tick, event) {
            (Some(t), Some(e)) if e < t => Some((e, false)),
            (Some(t), _) => Some((t, true)),
            (None, Some(e)) => Some((e, false)),
            (None, None) => None,
        }
    }

    fn clock_offset(&self) -> i64 {
        self.outputs
            .iter()
            .filter(|o| o.clock)
            .map(|o| o.offset_ns)
            .min()
            .unwrap_or(0)
    }

    fn file_offset(&self) -> i64 {
        self.outputs
            .iter()
            .filter(|o| o.midi_file)
            .map(|o| o.offset_ns)
            .min()
            .unwrap_or(0)
    }

    /// What the next write of the direct lane at `at` sends: a tick (with Start before a
    /// song's first) or the next MIDI-file event, as (stream, bytes, length).
    fn due_bytes(&self, at: &DirectPosition, is_tick: bool) -> Option<(Stream, [u8; 3], u8)> {
        let Some(playing) = self.playing.as_ref() else {
            return self
                .free
                .as_ref()
                .filter(|_| is_tick)
                .map(|_| (Stream::Clock, [TIMING_CLOCK, 0, 0], 1));
        };
        if is_tick {
            return Some(if at.song.started {
                (Stream::Clock, [TIMING_CLOCK, 0, 0], 1)
            } else {
                (Stream::Clock, [START, TIMING_CLOCK, 0], 2)
            });
        }
        let event = self.songs[playing.slot]
            .as_ref()?
            .schedule
            .as_ref()?
            .events
            .get(at.song.next_event)?;
        Some((Stream::File, event.bytes, event.len))
    }

    /// Moves `at` past the write due at `deadline`: a tick, or else a MIDI-file event.
    fn step(&self, at: &mut DirectPosition, is_tick: bool, deadline: u64) {
        let Some(playing) = self.playing.as_ref() else {
            // Between songs only the free run's ticks are due.
            if is_tick {
                at.free_sent += 1;
            }
            return;
        };
        if !is_tick {
            at.song.next_event += 1;
            return;
        }
        let beat = at.song.next_tick as f64 / PPQN;
        let bpm = self.songs[playing.slot]
            .as_ref()
            .and_then(|s| s.tempo.as_ref())
            .map_or(120.0, |tempo| {
                tempo.bpm_at_seconds(tempo.seconds_at_beat(beat))
            });
        at.song.started = true;
        at.song.next_tick += 1;
        at.song.last_tick = Some((deadline, bpm));
    }

    fn write_clock(&self, bytes: &[u8]) {
        for output in self.outputs.iter().filter(|o| o.clock) {
            output.write(bytes);
        }
    }

    /// Sends at once on both lanes (JACK: at the start of the next cycle).
    fn write_now(&mut self, stream: Stream, bytes: &[u8]) {
        for output in self.outputs.iter().filter(|o| o.carries(stream)) {
            output.write(bytes);
        }
        for feed in self.jack.iter_mut().filter(|f| f.carries(stream)) {
            feed.push(None, stream, bytes);
        }
    }

    /// The JACK lane: queues every tick and MIDI-file event (merged in frame order) whose
    /// device frame falls before now + the lookahead, or free-running ticks between songs.
    fn pump_jack(&mut self, now: u64) {
        if self.jack.is_empty() {
            return;
        }
        let Some(now_frame) = self.audio.frame_at_time(now) else {
            return;
        };
        let horizon = now_frame as i64 + i64::from(self.settings.jack_lookahead_frames);
        // The earliest any output needs a message (a negative offset sends early).
        let lead = self.jack.iter().map(|f| f.offset_frames).min().unwrap_or(0);
        let rate = f64::from(self.settings.sample_rate);
        let Some(playing) = self.playing.as_mut() else {
            self.pump_free_jack(horizon - lead);
            return;
        };
        let Some(song) = self.songs[playing.slot].as_ref() else {
            return;
        };
        let cursor = &mut playing.jack;
        while self.jack.iter().all(|f| f.has_room(4)) {
            let tick = song.tempo.as_ref().map(|tempo| {
                let seconds = tempo.seconds_at_beat(cursor.next_tick as f64 / PPQN);
                (frame_of(playing.start_frame, seconds, rate), tempo, seconds)
            });
            let event = song.schedule.as_ref().and_then(|schedule| {
                let event = schedule.events.get(cursor.next_event)?;
                Some((frame_of(playing.start_frame, event.seconds, rate), *event))
            });
            let tick_first = match (&tick, &event) {
                (Some((tick_frame, ..)), Some((event_frame, _))) => tick_frame <= event_frame,
                (Some(_), None) => true,
                (None, _) => false,
            };
            match (tick, event) {
                (Some((frame, tempo, seconds)), _) if tick_first => {
                    if frame + lead >= horizon {
                        break;
                    }
                    let bytes: &[u8] = if cursor.started {
                        &[TIMING_CLOCK]
                    } else {
                        &[START, TIMING_CLOCK]
                    };
                    for feed in self.jack.iter_mut().filter(|f| f.clock) {
                        feed.push(Some(frame), Stream::Clock, bytes);
                    }
                    cursor.started = true;
                    cursor.next_tick += 1;
                    let time = self.audio.time_of_frame(frame.max(0) as u64).unwrap_or(now);
                    cursor.last_tick = Some((time, tempo.bpm_at_seconds(seconds)));
                }
                (_, Some((frame, event))) => {
                    if frame + lead >= horizon {
                        break;
                    }
                    for feed in self.jack.iter_mut().filter(|f| f.midi_file) {
                        feed.push(
                            Some(frame),
                            Stream::File,
                            &event.bytes[..usize::from(event.len)],
                        );
                    }
                    cursor.next_event += 1;
                }
                _ => break,
            }
        }
    }

    /// Free-running JACK ticks (`persist_tempo`) before device frame `until`.
    fn pump_free_jack(&mut self, until: i64) {
        let Some(free) = self.free_jack.as_mut() else {
            return;
        };
        while self.jack.iter().all(|f| f.has_room(2)) {
            let time = free.from + ((free.sent + 1) as f64 * free.interval_ns) as u64;
            let Some(frame) = self.audio.frame_at_time(time) else {
                return;
            };
            let frame = frame as i64;
            if frame >= until {
                return;
            }
            for feed in self.jack.iter_mut().filter(|f| f.clock) {
                feed.push(Some(frame), Stream::Clock, &[TIMING_CLOCK]);
            }
            free.sent += 1;
        }
    }
}

/// Device frame of a song-relative second, for a song whose frame 0 is `start_frame`.
fn frame_of(start_frame: i64, seconds: f64, rate: f64) -> i64 {
    (start_frame as f64 + seconds * rate).round() as i64
}

fn offset(time: u64, offset_ns: i64) -> u64 {
    if offset_ns >= 0 {
        time.saturating_add(offset_ns as u64)
    } else {
        time.saturating_sub(offset_ns.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_wait_share_is_spinning_over_running_time() {
        assert_eq!(
            busy_wait_share(1_000_000_000, 8_000_000_000),
            "busy-waiting before deadlines took 12.5 % of one core (1.0 s in 8.0 s)"
        );
        assert!(busy_wait_share(5, 0).contains("0.0 %"), "no time, no share");
    }

    #[test]
    fn the_spin_report_packs_both_figures() {
        let packed = pack_spin_report(2000, 1234);
        assert_eq!((packed >> 32, packed & u64::from(u32::MAX)), (2000, 1234));
        let clamped = pack_spin_report(u64::MAX, u64::MAX);
        assert_eq!(
            clamped,
            u64::MAX,
            "saturates instead of spilling into the other half"
        );
    }
}

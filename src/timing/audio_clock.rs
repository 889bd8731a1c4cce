//! Song position in audio frames ⇄ CLOCK_MONOTONIC, estimated from the audio callback's
//! timestamps so the beat clock can ask "when will frame N leave the interface?".
//!
//! The audio callback owns an [`AudioClockWriter`] and calls [`AudioClockWriter::update`]
//! once per buffer with the frame counter at the start of the buffer (device frames or song
//! frames: the mapping is in whatever frames the writer counts) and the time it was called.
//! Other threads hold cloneable [`AudioClock`] handles and read the published mapping
//! `time(frame) = t0 + (frame − f0) × ns_per_frame` without locks.
//!
//! # Estimator
//!
//! Two stages, both run by the writer:
//!
//! 1. A second-order delay-locked loop (F. Adriaensen, "Using a DLL to filter time", as in
//!    JACK) filters the callback times into a line: a time for the current frame and a period
//!    per frame. It tracks the crystal's real rate (48 003 Hz instead of 48 000 Hz, say) with
//!    no steady-state error and averages away wake-up jitter. Bandwidth: [`DLL_BANDWIDTH_HZ`]
//!    (0.5 Hz) once locked, [`DLL_ACQUIRE_BANDWIDTH_HZ`] (2 Hz) for the first
//!    [`ACQUIRE_SECONDS`] (2 s) of audio after a (re)start.
//! 2. The *published* mapping follows the loop's line without ever stepping: each update is
//!    anchored at the old mapping's time of the new callback frame (continuous), and its slope
//!    is the loop's period plus a correction that absorbs the remaining offset over
//!    [`SLEW_HORIZON_SECONDS`], limited to ±[`MAX_SLEW_PPM`] (0.5 %). The slope moves by at
//!    most [`MAX_SLOPE_STEP_PPM`] (100 ppm of the nominal period) per update.
//!
//! # Monotonicity bound
//!
//! Within one generation, when an update at callback frame `f_new` replaces a mapping `old`
//! by `new`, for every frame `F`
//!
//! `new(F) ≥ old(F) − |F − f_new| × 100 ppm × nominal period − 1 ns`
//!
//! (the 1 ns is rounding to whole nanoseconds). For a beat-clock tick 20 ms ahead of the
//! audio that is 2 µs; for a frame one second ahead, 100 µs. A tick scheduled 20.8 ms after
//! the previous one can therefore never be moved before it. Successive tick intervals differ
//! from the estimated rate's by at most the 0.5 % slew plus these steps (measured: within
//! 0.6 % of nominal while slewing away a 5 ms start-up error, 0.1 % in steady state).
//!
//! # Resets
//!
//! The loop restarts from the new callback — a step, possibly backwards — when the frame
//! counter goes backwards (device restart), jumps forward by more than
//! [`RESET_JUMP_PERIODS`] buffers (xrun, seek of the device counter), or a callback comes more
//! than max([`RESET_ERROR_PERIODS`] buffers, 20 ms) away from where the loop predicted it
//! (a stall: the frames written after it leave the interface later; a single late callback
//! after an on-time one or after a gap of more than [`STALL_GAP_PERIODS`] buffers, and the
//! catch-up burst after it, are coasted through first — see [`STALL_PERIODS`] — so the
//! restart comes one callback later), or after
//! [`AudioClockWriter::reset`]. Each restart increments the generation (1 for the first
//! callback; 0 means "no mapping yet"; a realignment, below, moves it too). A reader can
//! tell a step by comparing [`AudioClock::generation`] or [`ClockMapping::generation`] with
//! the value it scheduled from. The beat clock needs no such check: it reads a fresh deadline
//! for every tick, so a step shows as one longer (or, backwards, shorter) interval, and a tick
//! whose deadline already passed goes at once. After an xrun the loop keeps its rate estimate;
//! after a backwards counter or `reset` it starts again from the nominal rate.
//!
//! # Realignment
//!
//! The loop's rate is held within ±[`MAX_RATE_ERROR_PPM`] (1 %) of nominal and the published
//! slope within [`MAX_SLEW_PPM`] of the loop's, so a device that loses time faster than that
//! (the JACK dummy driver on a loaded machine skips what a late wake-up missed instead of
//! catching it up; measured here, a 12 ms stall every 72 ms lost 8 ms each time, 11 %) left
//! the published mapping further and further behind the loop, which follows through its
//! phase term: 355 ms after two seconds, then one step (a 250 ms hole in the beat clock) when a longer stall
//! restarted the loop. Now, when the published mapping is further from the loop's line than the
//! restart bound (max([`RESET_ERROR_PERIODS`] buffers, [`RESET_ERROR_MIN_NS`])), it steps
//! forward onto that line and the generation moves, as at a restart: the clock follows a device
//! that loses time in steps of at most that bound
//! (`a_device_losing_time_is_followed_within_the_bound`). Never backwards: a mapping ahead
//! of the loop (a device gaining time, which real crystals do not do at this rate) is slewed
//! as before, since a step back would put tick deadlines in the past and send a burst.
//!
//! # Convergence
//!
//! The first callback of a generation sets the reference at the nominal rate, so the mapping
//! is right at once to within that callback's wake-up lateness; a 100 ppm rate error adds only
//! 0.1 ms per second until the loop has locked (about 1 s at 2 Hz). An initial error of several
//! milliseconds (a late first wake-up) is slewed away at 0.5 % (5 ms per second). Simulated
//! (tests below), one hour at ±100 ppm, 256-frame buffers, 0–200 µs wake-up jitter and
//! 2–5 ms spikes every ~3000 callbacks: every tick deadline is within 0.19 ms of the true time
//! of its frame, from the first tick on. With the first wake-up 5 ms late, deadlines are within
//! 1 ms after 1.8 s; [`CONVERGENCE_SECONDS`] (3 s) is the bound the tests hold it to. The rate
//! reported for status and reports comes from a long baseline once 30 s old (0.01 ppm after
//! an hour in the simulation).
//!
//! # Time base
//!
//! The mapping maps frames to whatever time the writer passes. To get the time a frame
//! *leaves the interface*, the callback passes its CLOCK_MONOTONIC time plus the output
//! latency it knows (or the backend's playback timestamp).
//!
//! # Publication
//!
//! Two seqlocked slots of atomics and an atomic publication counter. The writer fills the slot
//! not holding the newest mapping, then bumps the counter. A reader reads the newest slot and,
//! if the writer is rewriting it, the other one, so a reader never waits on a writer that was
//! preempted mid-write (the beat clock runs at a higher SCHED_FIFO priority than the audio
//! callback, so a single-slot seqlock could spin forever on the same CPU). The writer never
//! waits at all.

use std::f64::consts::{PI, SQRT_2};
use std::hint::spin_loop;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

/// DLL bandwidth once locked, in Hz: low enough to average away wake-up jitter and spikes,
/// high enough to follow a crystal warming up.
pub const DLL_BANDWIDTH_HZ: f64 = 0.5;
/// DLL bandwidth for the first [`ACQUIRE_SECONDS`] after a (re)start, in Hz, to lock quickly.
pub const DLL_ACQUIRE_BANDWIDTH_HZ: f64 = 2.0;
/// Seconds of audio after a (re)start during which the loop uses its acquisition bandwidth.
pub const ACQUIRE_SECONDS: f64 = 2.0;
/// Seconds over which the published mapping absorbs an offset from the loop's estimate.
pub const SLEW_HORIZON_SECONDS: f64 = 1.0;
/// Largest difference, in ppm, between the published slope and the loop's period: the
/// fastest an offset is slewed away (5 000 ppm = 5 ms per second).
pub const MAX_SLEW_PPM: f64 = 5_000.0;
/// Largest change of the published slope per update, in ppm of the nominal period; bounds how
/// far a future frame's time can move backwards (see the module documentation).
pub const MAX_SLOPE_STEP_PPM: f64 = 100.0;
/// Largest accepted deviation of the estimated rate from the nominal rate, in ppm; a real
/// crystal is within ±100 ppm, anything beyond 1 % means the nominal rate is wrong.
pub const MAX_RATE_ERROR_PPM: f64 = 10_000.0;
/// A callback further than this many buffers from the loop's prediction restarts the loop.
pub const RESET_ERROR_PERIODS: f64 = 4.0;
/// A callback further than this from the loop's prediction, in ns, restarts the loop (whichever
/// of this and [`RESET_ERROR_PERIODS`] is larger applies).
pub const RESET_ERROR_MIN_NS: f64 = 20e6;
/// A callback later than this many buffers after the loop's prediction (and at least
/// [`STALL_MIN_NS`] late), coming after an on-time one, may be a scheduling stall that a
/// timer-paced render is about to catch up by running the missed buffers back to back: the
/// loop coasts on its prediction through it and through the burst that follows (callbacks
/// less than half a buffer apart and still late), instead of restarting on it and then
/// re-locking through the burst, which moved the mapping by milliseconds for seconds. A
/// callback that comes a normal buffer later and is still late ends the coast: that is a real
/// shift (JACK skipped cycles, an ALSA device underran), handled as before, one callback later.
pub const STALL_PERIODS: f64 = 1.0;
/// See [`STALL_PERIODS`], in ns.
pub const STALL_MIN_NS: f64 = 1e6;
/// A callback more than this many buffers after the previous one is a (new) stall: it keeps a
/// coast going, and starts one even after a late callback. Without it a host that stalled
/// again in the middle of a catch-up burst restarted the loop on a callback tens of ms late,
/// and the published mapping then slewed back for seconds (the fifth session's 10-minute run
/// on a noisy host; `a_stall_during_a_catch_up_burst_keeps_the_mapping`). A real shift keeps
/// the normal spacing and still ends the coast.
pub const STALL_GAP_PERIODS: f64 = 1.5;
/// Longest coast, CLOCK_MONOTONIC ns from its first callback; a longer burst is followed.
pub const COAST_LIMIT_NS: u64 = 200_000_000;
/// A frame counter advancing by more than this many buffers at once restarts the loop.
pub const RESET_JUMP_PERIODS: u64 = 4;
/// Seconds after a (re)start after which tick deadlines are within 1 ms of the true frame time
/// even when the first callback woke 5 ms late (tested).
pub const CONVERGENCE_SECONDS: f64 = 3.0;

/// Largest DLL loop gain ω per update; keeps the loop stable with very long buffers.
const MAX_OMEGA: f64 = 0.25;
/// Seconds after a (re)start at which the long-baseline rate measurement starts (the loop has
/// settled by then).
const RATE_BASELINE_START_SECONDS: f64 = 5.0;
/// Seconds of baseline after which the reported rate comes from it rather than the loop.
const RATE_BASELINE_MIN_SECONDS: f64 = 30.0;

/// One published frames ⇄ time mapping, copied out of the shared state so that a reader can
/// evaluate many frames against the same estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockMapping {
    /// Reference frame f0: the frame at the start of the newest callback's buffer.
    frame: u64,
    /// Whole nanoseconds of the reference time t0.
    time_ns: u64,
    /// Fraction of a nanosecond of t0, in [0, 1).
    time_frac_ns: f64,
    /// Published slope: nanoseconds per frame, slewed.
    ns_per_frame: f64,
    /// The loop's own estimate of the period, nanoseconds per frame (for rate reports).
    estimated_ns_per_frame: f64,
    /// Restart counter, 1 for the first callback.
    generation: u64,
}

impl ClockMapping {
    /// CLOCK_MONOTONIC time, in ns rounded to the nearest, at which `frame` leaves the
    /// interface (extrapolated both ways from the reference; saturates at 0 and `u64::MAX`).
    pub fn time_of_frame(&self, frame: u64) -> u64 {
        let frames = frame.wrapping_sub(self.frame) as i64 as f64;
        let offset = (self.time_frac_ns + frames * self.ns_per_frame).round();
        if offset >= 0.0 {
            self.time_ns.saturating_add(offset as u64)
        } else {
            self.time_ns.saturating_sub((-offset) as u64)
        }
    }

    /// Song position at time `ns`, in fractional frames (negative before frame 0).
    pub fn position_at_time(&self, ns: u64) -> f64 {
        let since = (i128::from(ns) - i128::from(self.time_ns)) as f64 - self.time_frac_ns;
        self.frame as f64 + since / self.ns_per_frame
    }

    /// The last frame whose [`time_of_frame`](Self::time_of_frame) is at or before `ns`
    /// (0 before the song starts).
    pub fn frame_at_time(&self, ns: u64) -> u64 {
        // The half nanosecond matches time_of_frame's rounding, so frames round-trip.
        let since = (i128::from(ns) - i128::from(self.time_ns)) as f64 + 0.5 - self.time_frac_ns;
        let frames = (since / self.ns_per_frame).floor();
        if frames >= 0.0 {
            self.frame.saturating_add(frames as u64)
        } else {
            self.frame.saturating_sub((-frames) as u64)
        }
    }

    /// The reference frame f0 (start of the newest callback's buffer when published).
    pub fn reference_frame(&self) -> u64 {
        self.frame
    }

    /// Published nanoseconds per frame (the slope readers extrapolate with).
    pub fn ns_per_frame(&self) -> f64 {
        self.ns_per_frame
    }

    /// Estimated real sample rate of the interface, in Hz (for reports).
    pub fn rate_estimate(&self) -> f64 {
        1e9 / self.estimated_ns_per_frame
    }

    /// Restart counter of the estimate this mapping belongs to (1 for the first callback).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// One seqlocked copy of a [`ClockMapping`]: `seq` is odd while the writer fills it.
#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU64,
    /// Which publication (1, 2, …) the slot holds.
    publication: AtomicU64,
    frame: AtomicU64,
    time_ns: AtomicU64,
    time_frac_bits: AtomicU64,
    ns_per_frame_bits: AtomicU64,
    estimated_bits: AtomicU64,
    generation: AtomicU64,
}

impl Slot {
    /// Writer only (one writer at a time): fills the slot.
    fn write(&self, publication: u64, mapping: &ClockMapping) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.publication.store(publication, Ordering::Relaxed);
        self.frame.store(mapping.frame, Ordering::Relaxed);
        self.time_ns.store(mapping.time_ns, Ordering::Relaxed);
        self.time_frac_bits
            .store(mapping.time_frac_ns.to_bits(), Ordering::Relaxed);
        self.ns_per_frame_bits
            .store(mapping.ns_per_frame.to_bits(), Ordering::Relaxed);
        self.estimated_bits
            .store(mapping.estimated_ns_per_frame.to_bits(), Ordering::Relaxed);
        self.generation.store(mapping.generation, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The slot's mapping if it holds publication `publication`; `None` if it holds another
    /// one or the writer is (or was, during the read) filling it.
    fn try_read(&self, publication: u64) -> Option<ClockMapping> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let held = self.publication.load(Ordering::Relaxed);
        let mapping = ClockMapping {
            frame: self.frame.load(Ordering::Relaxed),
            time_ns: self.time_ns.load(Ordering::Relaxed),
            time_frac_ns: f64::from_bits(self.time_frac_bits.load(Ordering::Relaxed)),
            ns_per_frame: f64::from_bits(self.ns_per_frame_bits.load(Ordering::Relaxed)),
            estimated_ns_per_frame: f64::from_bits(self.estimated_bits.load(Ordering::Relaxed)),
            generation: self.generation.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        (held == publication && self.seq.load(Ordering::Relaxed) == before).then_some(mapping)
    }
}

/// State shared by the writer and the readers.
#[derive(Debug, Default)]
struct Shared {
    slots: [Slot; 2],
    /// Number of mappings published; the newest is in `slots[published % 2]`.
    published: AtomicU64,
}

impl Shared {
    /// Writer only: publishes `mapping` without waiting.
    fn publish(&self, mapping: &ClockMapping) {
        let next = self.published.load(Ordering::Relaxed) + 1;
        self.slots[(next & 1) as usize].write(next, mapping);
        self.published.store(next, Ordering::Release);
    }

    /// The newest complete mapping, `None` before the first publication. Successive reads by
    /// one thread never go back to an older publication.
    fn read(&self) -> Option<ClockMapping> {
        loop {
            let newest = self.published.load(Ordering::Acquire);
            if newest == 0 {
                return None;
            }
            // If the writer is already refilling the newest slot (with newest + 2), it has
            // finished newest + 1 in the other one. Accepting only these two publications keeps
            // reads monotonic: a slot seen with a later publication never holds an earlier one
            // again.
            let mapping = self.slots[(newest & 1) as usize]
                .try_read(newest)
                .or_else(|| self.slots[((newest + 1) & 1) as usize].try_read(newest + 1));
            if let Some(mapping) = mapping {
                return Some(mapping);
            }
            spin_loop();
        }
    }
}

/// Reader handle of the frames ⇄ CLOCK_MONOTONIC mapping; cheap to clone, lock-free, never
/// blocks the audio callback.
#[derive(Debug, Clone)]
pub struct AudioClock {
    shared: Arc<Shared>,
}

impl AudioClock {
    /// Creates the writer (for the audio callback) and a reader handle for a device whose
    /// nominal rate is `nominal_rate` Hz. Allocates; call it off the real-time thread.
    ///
    /// # Panics
    ///
    /// If `nominal_rate` is 0.
    pub fn new(nominal_rate: u32) -> (AudioClockWriter, AudioClock) {
        assert!(nominal_rate > 0, "audio clock needs a non-zero sample rate");
        let shared = Arc::new(Shared::default());
        let writer = AudioClockWriter {
            shared: Arc::clone(&shared),
            nominal_rate: f64::from(nominal_rate),
            nominal_ns_per_frame: 1e9 / f64::from(nominal_rate),
            state: None,
            generation: 0,
        };
        (writer, AudioClock { shared })
    }

    /// The newest published mapping, `None` before the first callback. Evaluate several frames
    /// against one snapshot when they must be mutually consistent.
    pub fn mapping(&self) -> Option<ClockMapping> {
        self.shared.read()
    }

    /// CLOCK_MONOTONIC time in ns at which song frame `frame` leaves the interface, from the
    /// newest mapping; `None` before the first callback.
    pub fn time_of_frame(&self, frame: u64) -> Option<u64> {
        self.mapping().map(|m| m.time_of_frame(frame))
    }

    /// The song frame leaving the interface at CLOCK_MONOTONIC time `ns`, rounded down (0
    /// before the song starts); `None` before the first callback.
    pub fn frame_at_time(&self, ns: u64) -> Option<u64> {
        self.mapping().map(|m| m.frame_at_time(ns))
    }

    /// Estimated real sample rate of the interface in Hz, for reports; `None` before the first
    /// callback.
    pub fn rate_estimate(&self) -> Option<f64> {
        self.mapping().map(|m| m.rate_estimate())
    }

    /// Restart counter of the estimate: 0 before the first callback, then incremented at every
    /// reset (xrun, device restart). A change means the mapping may have stepped.
    pub fn generation(&self) -> u64 {
        self.mapping().map_or(0, |m| m.generation)
    }
}

/// Loop and publication state of one generation. Times are f64 ns after `base_ns`, which is
/// moved to the newest callback every update so the f64s stay small and exact.
#[derive(Debug, Clone, Copy)]
struct LoopState {
    base_ns: u64,
    /// Frame at the start of the newest callback's buffer.
    frame: u64,
    /// Frames between the last two callbacks (0 right after a restart).
    period_frames: u64,
    /// Frames since the restart (selects the acquisition bandwidth).
    frames_since_reset: u64,
    /// The loop's filtered time of `frame`.
    loop_time: f64,
    /// The loop's period, ns per frame.
    loop_ns_per_frame: f64,
    /// Published time of `frame`, in [0, 1) after rebasing.
    published_time: f64,
    /// Published slope, ns per frame.
    published_ns_per_frame: f64,
    /// Frames and filtered ns since the start of the rate baseline.
    baseline_frames: u64,
    baseline_ns: f64,
    /// CLOCK_MONOTONIC time of the first callback of the current coast (see [`STALL_PERIODS`]).
    late_since_ns: Option<u64>,
    /// CLOCK_MONOTONIC time of the newest callback.
    last_callback_ns: u64,
    /// Whether the newest callback was later than the stall threshold.
    last_late: bool,
}

impl LoopState {
    /// Period for rate reports: the long-baseline average once it is long enough (far less
    /// noisy than the loop's instantaneous period), the loop's period before.
    fn reported_ns_per_frame(&self, nominal_rate: f64) -> f64 {
        if self.baseline_frames as f64 >= RATE_BASELINE_MIN_SECONDS * nominal_rate {
            self.baseline_ns / self.baseline_frames as f64
        } else {
            self.loop_ns_per_frame
        }
    }
}

/// Writing side, owned by the audio callback. [`update`](Self::update) is real-time safe: no
/// allocation, no locks, no syscalls, bounded time.
#[derive(Debug)]
pub struct AudioClockWriter {
    shared: Arc<Shared>,
    nominal_rate: f64,
    nominal_ns_per_frame: f64,
    state: Option<LoopState>,
    generation: u64,
}

impl AudioClockWriter {
    /// Feeds one callback: `frame` is the frame counter at the start of this buffer (increasing
    /// by the buffer size; a jump or a step back restarts the estimate), `now_ns` the
    /// CLOCK_MONOTONIC time of the callback (plus the output latency, to map to the time frames
    /// leave the interface). Publishes the new mapping before returning; a repeated frame is
    /// ignored.
    pub fn update(&mut self, frame: u64, now_ns: u64) {
        let Some(mut state) = self.state else {
            let ns_per_frame = self.nominal_ns_per_frame;
            self.restart(frame, now_ns, ns_per_frame);
            return;
        };
        if frame == state.frame {
            return;
        }
        if frame < state.frame {
            let ns_per_frame = self.nominal_ns_per_frame;
            self.restart(frame, now_ns, ns_per_frame);
            return;
        }
        let frames = frame - state.frame;
        let n = frames as f64;
        let now = (i128::from(now_ns) - i128::from(state.base_ns)) as f64;
        let predicted = state.loop_time + n * state.loop_ns_per_frame;
        let mut error = now - predicted;
        let buffer_ns = n * state.loop_ns_per_frame;
        let restart_bound_ns = (RESET_ERROR_PERIODS * buffer_ns).max(RESET_ERROR_MIN_NS);
        let jumped = state.period_frames > 0
            && frames > RESET_JUMP_PERIODS.saturating_mul(state.period_frames);
        let late = !jumped && error > (STALL_PERIODS * buffer_ns).max(STALL_MIN_NS);
        let gap_ns = now_ns.saturating_sub(state.last_callback_ns) as f64;
        // A gap of more than 1.5 buffers is a new stall; a real shift keeps the normal spacing.
        let stalled_again = gap_ns > STALL_GAP_PERIODS * buffer_ns;
        let coasting = match state.late_since_ns {
            // In a coast: go on through the catch-up burst, and through another stall in the
            // middle of it, while it is still late.
            Some(since) => {
                !jumped
                    && error > 0.0
                    && (gap_ns < 0.5 * buffer_ns || stalled_again)
                    && now_ns.saturating_sub(since) < COAST_LIMIT_NS
            }
            // A late callback right after an on-time one, or after a stall, starts a coast.
            None => late && (!state.last_late || stalled_again),
        };
        if coasting {
            state.late_since_ns.get_or_insert(now_ns);
        } else {
            state.late_since_ns = None;
        }
        state.last_callback_ns = now_ns;
        state.last_late = late;
        if coasting {
            // Run the loop as if this callback had come when predicted.
            error = 0.0;
        } else if jumped || error.abs() > restart_bound_ns {
            let ns_per_frame = state.loop_ns_per_frame;
            self.restart(frame, now_ns, ns_per_frame);
            return;
        }

        // Second-order DLL, gains per Adriaensen: ω = 2π·B·(buffer duration).
        let bandwidth = if (state.frames_since_reset as f64) < ACQUIRE_SECONDS * self.nominal_rate {
            DLL_ACQUIRE_BANDWIDTH_HZ
        } else {
            DLL_BANDWIDTH_HZ
        };
        let omega = (2.0 * PI * bandwidth * n / self.nominal_rate).min(MAX_OMEGA);
        let loop_time = predicted + SQRT_2 * omega * error;
        if state.frames_since_reset as f64 >= RATE_BASELINE_START_SECONDS * self.nominal_rate {
            state.baseline_frames += frames;
            state.baseline_ns += loop_time - state.loop_time;
        }
        state.loop_time = loop_time;
        let max_rate_error = MAX_RATE_ERROR_PPM * 1e-6 * self.nominal_ns_per_frame;
        state.loop_ns_per_frame = (state.loop_ns_per_frame + omega * omega * error / n).clamp(
            self.nominal_ns_per_frame - max_rate_error,
            self.nominal_ns_per_frame + max_rate_error,
        );

        // Published mapping: continuous at this frame, slope slewed towards the loop's line.
        let mut published_now = state.published_time + n * state.published_ns_per_frame;
        let offset = state.loop_time - published_now;
        if offset > restart_bound_ns {
            // The device loses time faster than the slew can follow: step forward onto the
            // loop's line, a new generation (see "Realignment" in the module documentation).
            // Only forward: a step back would put tick deadlines in the past (a burst).
            self.generation += 1;
            published_now = state.loop_time;
            state.published_ns_per_frame = state.loop_ns_per_frame;
        } else {
            let max_slew = MAX_SLEW_PPM * 1e-6 * self.nominal_ns_per_frame;
            let correction =
                (offset / (SLEW_HORIZON_SECONDS * self.nominal_rate)).clamp(-max_slew, max_slew);
            let target = state.loop_ns_per_frame + correction;
            let max_step = MAX_SLOPE_STEP_PPM * 1e-6 * self.nominal_ns_per_frame;
            state.published_ns_per_frame +=
                (target - state.published_ns_per_frame).clamp(-max_step, max_step);
        }

        // Rebase on the whole nanoseconds of the published time (exact in f64).
        let whole = published_now.floor();
        state.base_ns = state.base_ns.wrapping_add_signed(whole as i64);
        state.published_time = published_now - whole;
        state.loop_time -= whole;
        state.frame = frame;
        state.period_frames = frames;
        state.frames_since_reset = state.frames_since_reset.saturating_add(frames);
        self.state = Some(state);
        self.publish(&state);
    }

    /// The time the published mapping gives `frame` (what readers see), or `None` before the
    /// first update. Real-time safe. A stream that replaces a lost one uses it to tell how
    /// many frames the outage lasted, so that the mapping stays continuous across it.
    pub fn time_of_frame(&self, frame: u64) -> Option<u64> {
        let state = self.state.as_ref()?;
        let frames = frame.wrapping_sub(state.frame) as i64 as f64;
        let offset = (state.published_time + frames * state.published_ns_per_frame).round();
        Some(if offset >= 0.0 {
            state.base_ns.saturating_add(offset as u64)
        } else {
            state.base_ns.saturating_sub((-offset) as u64)
        })
    }

    /// Makes the next [`update`](Self::update) start a new generation from the nominal rate,
    /// e.g. after the stream was restarted. Real-time safe.
    pub fn reset(&mut self) {
        self.state = None;
    }

    /// A reader handle on this writer's mapping.
    pub fn reader(&self) -> AudioClock {
        AudioClock {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Starts a new generation with `frame` at `now_ns`.
    fn restart(&mut self, frame: u64, now_ns: u64, ns_per_frame: f64) {
        self.generation += 1;
        let state = LoopState {
            base_ns: now_ns,
            frame,
            period_frames: 0,
            frames_since_reset: 0,
            loop_time: 0.0,
            loop_ns_per_frame: ns_per_frame,
            published_time: 0.0,
            published_ns_per_frame: ns_per_frame,
            baseline_frames: 0,
            baseline_ns: 0.0,
            late_since_ns: None,
            last_callback_ns: now_ns,
            last_late: false,
        };
        self.state = Some(state);
        self.publish(&state);
    }

    fn publish(&self, state: &LoopState) {
        self.shared.publish(&ClockMapping {
            frame: state.frame,
            time_ns: state.base_ns,
            time_frac_ns: state.published_time,
            ns_per_frame: state.published_ns_per_frame,
            estimated_ns_per_frame: state.reported_ns_per_frame(self.nominal_rate),
            generation: self.generation,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;
    const PERIOD: u64 = 256;
    /// 24 PPQN at 120 BPM: a tick every 20.833 ms of song time = 1000 frames at 48 kHz.
    const TICK_FRAMES: u64 = 1000;
    const MS: f64 = 1e6;

    /// Seeded xorshift64, so the simulations are deterministic without a rand crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A simulated interface: its crystal's true rate, when its frame 0 left it, and the
    /// audio callback's wake-up jitter on this VM.
    struct Interface {
        true_rate: f64,
        start_ns: f64,
        /// Song frames minus device frames (changes on an xrun).
        frame_offset: f64,
        rng: XorShift,
        last_wake: u64,
    }

    impl Interface {
        fn new(ppm: f64, seed: u64) -> Interface {
            Interface {
                true_rate: f64::from(RATE) * (1.0 + ppm * 1e-6),
                // About 14 hours of uptime, not a whole number of nanoseconds.
                start_ns: 50_000_123_456_789.25,
                frame_offset: 0.0,
                rng: XorShift(seed),
                last_wake: 0,
            }
        }

        /// True CLOCK_MONOTONIC time at which song frame `frame` leaves the interface.
        fn true_time(&self, frame: u64) -> f64 {
            self.start_ns + (frame as f64 - self.frame_offset) * 1e9 / self.true_rate
        }

        /// Uniform 0–200 µs, plus a 2–5 ms spike about once every 3000 callbacks.
        fn jitter_ns(&mut self) -> f64 {
            let mut jitter = self.rng.unit() * 200_000.0;
            if self.rng.next() % 3000 == 0 {
                jitter += 2e6 + self.rng.unit() * 3e6;
            }
            jitter
        }

        /// When the callback for the buffer starting at `frame` runs (callbacks never overlap).
        fn wake(&mut self, frame: u64) -> u64 {
            let wake = (self.true_time(frame) + self.jitter_ns()) as u64;
            let wake = wake.max(self.last_wake + 1_000);
            self.last_wake = wake;
            wake
        }
    }

    /// The audio callback side of a simulation: delivers callbacks in time order and checks the
    /// monotonicity bound of every update.
    struct Sim {
        writer: AudioClockWriter,
        clock: AudioClock,
        interface: Interface,
        next_frame: u64,
        next_wake: u64,
        /// Worst backwards move of the frame one tick ahead of a callback, in ns.
        worst_tick_backstep_ns: f64,
    }

    impl Sim {
        fn new(ppm: f64, seed: u64, first_late_ns: u64) -> Sim {
            let (writer, clock) = AudioClock::new(RATE);
            let mut interface = Interface::new(ppm, seed);
            let next_wake = interface.wake(0) + first_late_ns;
            interface.last_wake = next_wake;
            Sim {
                writer,
                clock,
                interface,
                next_frame: 0,
                next_wake,
                worst_tick_backstep_ns: 0.0,
            }
        }

        /// Runs the next callback.
        fn callback(&mut self) {
            let before = self.clock.mapping();
            self.writer.update(self.next_frame, self.next_wake);
            let after = self.clock.mapping().expect("published");
            if let Some(before) = before.filter(|b| b.generation == after.generation) {
                let step = MAX_SLOPE_STEP_PPM * 1e-6 * 1e9 / f64::from(RATE);
                for ahead in [0, 1, PERIOD, TICK_FRAMES, 2 * TICK_FRAMES, 48_000] {
                    let frame = self.next_frame + ahead;
                    let back =
                        before.time_of_frame(frame) as f64 - after.time_of_frame(frame) as f64;
                    let bound = ahead as f64 * step + 1.0;
                    assert!(
                        back <= bound,
                        "frame {frame} moved back {back} ns, bound {bound} ns"
                    );
                    if ahead == TICK_FRAMES {
                        self.worst_tick_backstep_ns = self.worst_tick_backstep_ns.max(back);
                    }
                }
            }
            self.next_frame += PERIOD;
            self.next_wake = self.interface.wake(self.next_frame);
        }

        /// Runs every callback due at or before `ns`.
        fn run_until(&mut self, ns: u64) {
            while self.next_wake <= ns {
                self.callback();
            }
        }

        /// Error of the published time of `frame` against the truth, in ns.
        fn error_ns(&self, frame: u64) -> f64 {
            self.clock.time_of_frame(frame).expect("mapping") as f64
                - self.interface.true_time(frame)
        }
    }

    struct ShowResult {
        worst_error_ns: f64,
        worst_error_after_convergence_ns: f64,
        last_error_over_1ms_s: f64,
        min_interval_ns: u64,
        max_interval_ns: u64,
        ticks: u64,
        rate_estimate: f64,
        true_rate: f64,
        worst_tick_backstep_ns: f64,
    }

    /// Plays `seconds` of song with a beat clock that, right after sending each tick, computes
    /// the next tick's deadline from the mapping published at that moment and sleeps until it.
    fn play_show(ppm: f64, seconds: u64, seed: u64, first_late_ns: u64) -> ShowResult {
        let mut sim = Sim::new(ppm, seed, first_late_ns);
        let nominal_interval = TICK_FRAMES as f64 * 1e9 / f64::from(RATE);
        let mut now = sim.next_wake;
        sim.run_until(now);
        let mut previous = sim.clock.time_of_frame(0).expect("first callback");
        let mut result = ShowResult {
            worst_error_ns: sim.error_ns(0).abs(),
            worst_error_after_convergence_ns: 0.0,
            last_error_over_1ms_s: 0.0,
            min_interval_ns: u64::MAX,
            max_interval_ns: 0,
            ticks: 0,
            rate_estimate: 0.0,
            true_rate: sim.interface.true_rate,
            worst_tick_backstep_ns: 0.0,
        };
        let ticks = seconds * u64::from(RATE) / TICK_FRAMES;
        for tick in 1..=ticks {
            sim.run_until(now);
            let frame = tick * TICK_FRAMES;
            let deadline = sim.clock.time_of_frame(frame).expect("mapping");
            let error = sim.error_ns(frame).abs();
            let song_s = frame as f64 / f64::from(RATE);
            result.worst_error_ns = result.worst_error_ns.max(error);
            if error > MS {
                result.last_error_over_1ms_s = song_s;
            }
            if song_s >= CONVERGENCE_SECONDS {
                result.worst_error_after_convergence_ns =
                    result.worst_error_after_convergence_ns.max(error);
                assert!(error < MS, "tick {tick} at {song_s:.3} s is {error} ns off");
            }
            assert!(deadline > previous, "tick {tick} went backwards");
            let interval = deadline - previous;
            let deviation = (interval as f64 - nominal_interval).abs() / nominal_interval;
            assert!(deviation < 0.01, "tick {tick}: interval {interval} ns");
            result.min_interval_ns = result.min_interval_ns.min(interval);
            result.max_interval_ns = result.max_interval_ns.max(interval);
            previous = deadline;
            now = now.max(deadline);
            result.ticks += 1;
        }
        result.rate_estimate = sim.clock.rate_estimate().expect("mapping");
        result.worst_tick_backstep_ns = sim.worst_tick_backstep_ns;
        result
    }

    fn report(name: &str, r: &ShowResult) {
        eprintln!(
            "{name}: {} ticks, worst error {:.1} µs (after {CONVERGENCE_SECONDS} s: {:.1} µs), \
             last error > 1 ms at {:.3} s, intervals {:.3}–{:.3} ms, rate {:.3} Hz (true {:.3}), \
             worst backwards move one tick ahead {} ns",
            r.ticks,
            r.worst_error_ns / 1e3,
            r.worst_error_after_convergence_ns / 1e3,
            r.last_error_over_1ms_s,
            r.min_interval_ns as f64 / 1e6,
            r.max_interval_ns as f64 / 1e6,
            r.rate_estimate,
            r.true_rate,
            r.worst_tick_backstep_ns,
        );
    }

    #[test]
    fn one_hour_at_plus_and_minus_100_ppm_stays_within_1_ms() {
        for (ppm, seed) in [
            (100.0, 0x9E37_79B9_7F4A_7C15),
            (-100.0, 0xD1B5_4A32_D192_ED03),
        ] {
            let r = play_show(ppm, 3600, seed, 0);
            report(&format!("{ppm:+} ppm, 1 h"), &r);
            assert!(r.worst_error_after_convergence_ns < MS);
            let rate_error_ppm = (r.rate_estimate / r.true_rate - 1.0) * 1e6;
            assert!(rate_error_ppm.abs() < 1.0, "rate {}", r.rate_estimate);
        }
    }

    #[test]
    fn late_first_callback_converges_within_documented_time() {
        for (ppm, seed) in [(100.0, 7), (-100.0, 8)] {
            let r = play_show(ppm, 60, seed, 5_000_000);
            report(&format!("{ppm:+} ppm, first wake-up 5 ms late"), &r);
            assert!(r.last_error_over_1ms_s < CONVERGENCE_SECONDS);
        }
    }

    /// Runs `seconds` of callbacks, then checks the mapping one tick ahead of each callback
    /// after `settle_s`.
    fn check_tracking(sim: &mut Sim, seconds: f64, settle_s: f64) -> f64 {
        let start = sim.next_frame;
        let end = start + (seconds * f64::from(RATE)) as u64;
        let mut worst = 0.0f64;
        while sim.next_frame < end {
            sim.callback();
            let elapsed_s = (sim.next_frame - start) as f64 / f64::from(RATE);
            if elapsed_s >= settle_s {
                let error = sim.error_ns(sim.next_frame + TICK_FRAMES).abs();
                assert!(error < MS, "{error} ns off {elapsed_s:.3} s after start");
                worst = worst.max(error);
            }
        }
        worst
    }

    #[test]
    fn xrun_frame_jump_resets_and_reconverges() {
        let mut sim = Sim::new(100.0, 42, 0);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        assert_eq!(sim.clock.generation(), 1);
        // The song counter jumps ten buffers ahead while the device keeps its pace.
        sim.next_frame += 10 * PERIOD;
        sim.interface.frame_offset += (10 * PERIOD) as f64;
        sim.next_wake = sim.interface.wake(sim.next_frame);
        let worst = check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        assert_eq!(sim.clock.generation(), 2);
        eprintln!("after a 10-buffer frame jump: worst {:.1} µs", worst / 1e3);
    }

    #[test]
    fn stall_and_device_restart_reset() {
        let mut sim = Sim::new(-100.0, 43, 0);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        // No callback for ten buffers; the device underran, so what is written from now on
        // leaves the interface ten buffers later.
        sim.interface.frame_offset -= (10 * PERIOD) as f64;
        sim.next_wake = sim.interface.wake(sim.next_frame);
        // The first late callback may be coasted through (it could be a stall about to be
        // caught up); the next one, a buffer later and still late, restarts the loop.
        sim.callback();
        sim.callback();
        assert_eq!(sim.clock.generation(), 2);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        assert_eq!(sim.clock.generation(), 2);
        // Device restart: the counter starts from 0 again.
        sim.interface.frame_offset -= sim.next_frame as f64;
        sim.next_frame = 0;
        sim.next_wake = sim.interface.wake(0);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        assert_eq!(sim.clock.generation(), 3);
        // An explicit reset starts a new generation at the next callback.
        sim.writer.reset();
        sim.callback();
        assert_eq!(sim.clock.generation(), 4);
    }

    #[test]
    fn a_stall_during_a_catch_up_burst_keeps_the_mapping() {
        let mut sim = Sim::new(-100.0, 46, 0);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        // A 40 ms stall; three buffers of the catch-up burst run, then the host stops the
        // process again for 30 ms in the middle of the burst.
        sim.next_wake += 40_000_000;
        sim.interface.last_wake = sim.next_wake;
        for _ in 0..3 {
            sim.callback();
        }
        sim.next_wake += 30_000_000;
        sim.interface.last_wake = sim.next_wake;
        let worst = check_tracking(&mut sim, 10.0, 0.0);
        assert_eq!(sim.clock.generation(), 1, "coasted, not restarted");
        assert!(worst < 300_000.0, "worst error {worst} ns");
    }

    #[test]
    fn a_stall_caught_up_in_a_burst_keeps_the_mapping() {
        let mut sim = Sim::new(100.0, 45, 0);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        // The host stops the process for 60 ms; the device (a timer-paced render) does not
        // stop, so the missed buffers then run back to back, 1 µs apart, until caught up.
        sim.next_wake += 60_000_000;
        sim.interface.last_wake = sim.next_wake;
        let worst = check_tracking(&mut sim, 0.15, 0.0);
        assert_eq!(sim.clock.generation(), 1);
        // A second stall 150 ms later is coasted through the same way.
        sim.next_wake += 30_000_000;
        sim.interface.last_wake = sim.next_wake;
        let worst = worst.max(check_tracking(&mut sim, 10.0, 0.0));
        assert_eq!(sim.clock.generation(), 1);
        eprintln!(
            "after two stalls and catch-ups: worst {:.1} µs",
            worst / 1e3
        );
    }

    #[test]
    fn a_lasting_shift_below_the_reset_threshold_is_followed() {
        let mut sim = Sim::new(0.0, 46, 0);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        // From now on every buffer leaves the interface 8 ms later (1.5 buffers): not a stall
        // that is caught up, so the loop must follow it rather than coast.
        sim.interface.frame_offset -= 1.5 * PERIOD as f64;
        sim.next_wake = sim.interface.wake(sim.next_frame);
        check_tracking(&mut sim, 10.0, CONVERGENCE_SECONDS);
        assert_eq!(sim.clock.generation(), 1);
    }

    #[test]
    fn spikes_do_not_reset() {
        let mut sim = Sim::new(0.0, 44, 0);
        for _ in 0..200 {
            sim.callback();
        }
        // A 15 ms late wake-up (almost three buffers) is jitter, not a discontinuity.
        sim.next_wake += 15_000_000;
        sim.interface.last_wake = sim.next_wake;
        sim.callback();
        check_tracking(&mut sim, 10.0, 0.0);
        assert_eq!(sim.clock.generation(), 1);
    }

    #[test]
    fn nothing_before_the_first_callback_and_frames_round_trip() {
        let (mut writer, clock) = AudioClock::new(RATE);
        assert_eq!(clock.time_of_frame(0), None);
        assert_eq!(clock.frame_at_time(0), None);
        assert_eq!(clock.rate_estimate(), None);
        assert_eq!(clock.generation(), 0);
        writer.update(4_800, 1_000_000_000);
        assert_eq!(clock.generation(), 1);
        assert_eq!(clock.time_of_frame(4_800), Some(1_000_000_000));
        assert_eq!(clock.time_of_frame(9_600), Some(1_100_000_000));
        assert_eq!(clock.time_of_frame(0), Some(900_000_000));
        assert_eq!(clock.frame_at_time(1_100_000_000), Some(9_600));
        assert_eq!(clock.frame_at_time(1_099_999_999), Some(9_599));
        assert_eq!(clock.frame_at_time(0), Some(0));
        assert_eq!(clock.rate_estimate(), Some(48_000.0));
        let reader = writer.reader();
        let mut frame = 4_800;
        let mut now = 1_000_000_000.0;
        for _ in 0..1000 {
            frame += PERIOD;
            now += PERIOD as f64 * 1e9 / 48_003.0;
            writer.update(frame, now as u64);
        }
        let mapping = reader.mapping().expect("mapping");
        for f in (frame..frame + 100_000).step_by(997) {
            assert_eq!(mapping.frame_at_time(mapping.time_of_frame(f)), f);
        }
        assert!(
            (mapping.position_at_time(mapping.time_of_frame(frame)) - frame as f64).abs() < 1e-3
        );
    }

    /// A mapping whose every field is derived from `k`, so a torn read is detectable.
    fn synthetic(k: u64) -> ClockMapping {
        ClockMapping {
            frame: k,
            time_ns: k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            time_frac_ns: (k % 1000) as f64 / 1000.0,
            ns_per_frame: k as f64 * 0.5,
            estimated_ns_per_frame: k as f64 * 0.25,
            generation: k / 100,
        }
    }

    #[test]
    fn concurrent_readers_never_see_torn_mappings() {
        let (writer, clock) = AudioClock::new(RATE);
        let done = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let clock = clock.clone();
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    let mut newest = 0;
                    while done.load(Ordering::Acquire) == 0 {
                        if let Some(m) = clock.mapping() {
                            assert_eq!(m, synthetic(m.frame), "torn read");
                            assert!(m.frame >= newest, "went back to an older mapping");
                            newest = m.frame;
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        for k in 1..=2_000_000 {
            writer.shared.publish(&synthetic(k));
        }
        done.store(1, Ordering::Release);
        for reader in readers {
            assert!(reader.join().expect("reader") > 0);
        }
    }

    #[test]
    fn concurrent_readers_follow_a_real_writer() {
        let (mut writer, clock) = AudioClock::new(RATE);
        let done = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let clock = clock.clone();
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    // The same interface, only to know the true time of a frame.
                    let truth = Interface::new(50.0, 99);
                    let settled = (CONVERGENCE_SECONDS * f64::from(RATE)) as u64;
                    let (mut newest, mut reads) = (0, 0u64);
                    while done.load(Ordering::Acquire) == 0 {
                        let Some(m) = clock.mapping() else { continue };
                        assert_eq!(m.generation(), 1);
                        assert_eq!(m.reference_frame() % PERIOD, 0);
                        assert!(m.reference_frame() >= newest, "older mapping");
                        newest = m.reference_frame();
                        assert!((0.0..1.0).contains(&m.time_frac_ns));
                        let ppm = (m.ns_per_frame() * f64::from(RATE) / 1e9 - 1.0) * 1e6;
                        assert!(ppm.abs() < MAX_RATE_ERROR_PPM + MAX_SLEW_PPM, "{ppm} ppm");
                        // A reference time from another update than the reference frame would
                        // be at least one buffer (5.3 ms) off.
                        if m.reference_frame() >= settled {
                            let frame = m.reference_frame();
                            let error = m.time_of_frame(frame) as f64 - truth.true_time(frame);
                            assert!(error.abs() < MS, "torn read: {error} ns off");
                        }
                        reads += 1;
                    }
                    (newest, reads)
                })
            })
            .collect();
        let mut interface = Interface::new(50.0, 99);
        let mut frame = 0;
        for _ in 0..300_000 {
            writer.update(frame, interface.wake(frame));
            frame += PERIOD;
        }
        done.store(1, Ordering::Release);
        for reader in readers {
            let (newest, reads) = reader.join().expect("reader");
            assert!(newest < frame && reads > 0);
        }
    }

    #[test]
    fn update_has_the_signature_the_allocation_test_uses() {
        let update: fn(&mut AudioClockWriter, u64, u64) = AudioClockWriter::update;
        let new: fn(u32) -> (AudioClockWriter, AudioClock) = AudioClock::new;
        let (mut writer, _clock) = new(RATE);
        update(&mut writer, 0, 1);
    }

    #[test]
    fn the_writer_sees_the_mapping_readers_see() {
        let (mut writer, clock) = AudioClock::new(RATE);
        assert_eq!(writer.time_of_frame(0), None);
        let period = 256u64;
        let ns = |frames: u64| frames * 1_000_000_000 / u64::from(RATE);
        for n in 0..500u64 {
            writer.update(
                n * period,
                5_000_000_000 + ns(n * period) + (n % 7) * 20_000,
            );
        }
        for frame in [0, 500 * period, 600 * period, 10_000_000] {
            assert_eq!(writer.time_of_frame(frame), clock.time_of_frame(frame));
        }
    }

    #[test]
    fn an_outage_counted_in_frames_keeps_the_mapping_continuous() {
        // A stream that replaces a lost one advances the counter by the outage measured on
        // the mapping: the restart lands where the old mapping already had that frame.
        let (mut writer, clock) = AudioClock::new(RATE);
        let period = 256u64;
        let ns = |frames: u64| frames * 1_000_000_000 / u64::from(RATE);
        let start = 1_000_000_000u64;
        let mut frame = 0;
        for _ in 0..1000 {
            writer.update(frame, start + ns(frame));
            frame += period;
        }
        let generation = clock.generation();
        let resumed_at = start + ns(frame) + 1_234_567_890;
        let due = writer.time_of_frame(frame).expect("a mapping");
        let outage = (resumed_at - due) * u64::from(RATE) / 1_000_000_000;
        let tick_frame = frame + outage + 10 * period;
        let before = clock.time_of_frame(tick_frame).expect("a mapping");
        writer.update(frame + outage, resumed_at);
        assert_eq!(clock.generation(), generation + 1, "a new generation");
        let after = clock.time_of_frame(tick_frame).expect("a mapping");
        let step = after as i64 - before as i64;
        assert!(step.abs() < 25_000, "step {step} ns (under one frame)");
    }

    #[test]
    fn a_device_losing_time_is_followed_within_the_bound() {
        // The JACK dummy driver on a loaded machine: every 13th period wakes 8 ms late and
        // the time is lost, not caught up (the device runs ~11 % slow, far beyond the loop's
        // 1 % and the slew's 0.5 %). The published mapping must stay within the restart bound
        // (21.3 ms at 256 frames) of when frames really play, plus the newest loss; before the
        // realignment it fell 355 ms behind in two seconds.
        let (mut writer, clock) = AudioClock::new(RATE);
        let period_ns = PERIOD as f64 * 1e9 / f64::from(RATE);
        let bound_ns = (RESET_ERROR_PERIODS * period_ns).max(RESET_ERROR_MIN_NS);
        let mut now = 1_000_000_000.0f64;
        let mut worst: f64 = 0.0;
        for n in 0..2_000u64 {
            if n > 0 {
                now += period_ns;
                if n % 13 == 0 {
                    now += 8e6;
                }
            }
            writer.update(n * PERIOD, now as u64);
            let published = clock.time_of_frame(n * PERIOD).expect("a mapping") as f64;
            worst = worst.max((published - now).abs());
        }
        let generations = clock.generation();
        assert!(
            worst < bound_ns + 8e6 + period_ns,
            "published mapping {:.1} ms from the device at worst (bound {:.1} ms)",
            worst / 1e6,
            bound_ns / 1e6
        );
        // It follows in steps of about the bound (48 here: 8 ms lost 153 times is 1.2 s, taken
        // in steps of a little over the 21.3 ms bound), neither standing still (1) nor
        // restarting on every loss (153).
        assert!(
            (20..=100).contains(&generations),
            "{generations} generations"
        );
    }
}

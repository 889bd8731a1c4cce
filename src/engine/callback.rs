//! The audio callback shared by every output backend: runs the transport into a scratch
//! buffer, converts to the device's sample format (or hands planar blocks to JACK), measures its own timing, and promotes its
//! thread to real-time priority on the first call.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cpal::{FromSample, Sample};

use super::mixer::{PlanarBuffer, MAX_BLOCK_FRAMES};
use super::transport::{Processed, SharedStatus, Transport};
use crate::stats::{Metric, SampleSender};
use crate::timing::AudioClockWriter;

/// Nanoseconds on CLOCK_MONOTONIC (a vDSO call: no allocation, no lock).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Run once on the audio thread's first callback (real-time promotion). Must not allocate.
pub type FirstCallbackHook = Box<dyn FnMut() + Send>;

/// The callback state every backend drives.
pub struct AudioCallback {
    transport: Transport,
    scratch: PlanarBuffer,
    channels: usize,
    sample_rate: u32,
    last_start_ns: u64,
    on_first_call: Option<FirstCallbackHook>,
    first_call_done: bool,
    timings: Option<SampleSender>,
    status: Arc<SharedStatus>,
    audio_clock: Option<AudioClockWriter>,
    device_frame: u64,
    /// Frames of the last callback, to tell when the next one was due.
    last_frames: u64,
    /// The next callback is the first of a stream replacing a lost one: `Some(skip_song)`.
    after_outage: Option<bool>,
}

impl AudioCallback {
    /// A callback rendering `channels` interleaved channels at `sample_rate`.
    pub fn new(
        transport: Transport,
        status: Arc<SharedStatus>,
        channels: usize,
        sample_rate: u32,
        on_first_call: Option<FirstCallbackHook>,
        timings: Option<SampleSender>,
    ) -> Self {
        AudioCallback {
            transport,
            scratch: PlanarBuffer::new(channels),
            channels: channels.max(1),
            sample_rate,
            last_start_ns: 0,
            on_first_call,
            first_call_done: false,
            timings,
            status,
            audio_clock: None,
            device_frame: 0,
            last_frames: 0,
            after_outage: None,
        }
    }

    /// Readies the callback for a stream that replaces a lost one (called off the real-time
    /// thread while the reconnect thread holds it): the first-call hook runs again on the
    /// new audio thread (real-time promotion), and the first callback counts the frames the
    /// outage lasted and advances the device frame counter by as many, so the audio clock
    /// and the song anchor stay continuous (the beat clock neither stops nor jumps). With
    /// `skip_song`, the song playing advances by the outage too: it goes on where it would
    /// have been. Without it, the transport is paused (the control thread restarts the song).
    pub fn prepare_for_new_stream(&mut self, skip_song: bool) {
        self.first_call_done = false;
        self.after_outage = Some(skip_song);
        if !skip_song {
            self.transport.suspend();
        }
    }

    /// Frames between the device frame counter and where a callback starting at `now_ns`
    /// belongs, when the previous stream stopped: the length of an outage in frames.
    fn outage_frames(&self, now_ns: u64) -> u64 {
        let expected = self
            .audio_clock
            .as_ref()
            .and_then(|clock| clock.time_of_frame(self.device_frame))
            .unwrap_or_else(|| {
                let frames = self.last_frames as i64;
                self.last_start_ns
                    .saturating_add(self.period_ns(frames as usize).max(0) as u64)
            });
        let gap_ns = now_ns.saturating_sub(expected);
        (gap_ns as u128 * u128::from(self.sample_rate) / 1_000_000_000) as u64
    }

    /// Feeds every callback's (device frame, time) to the audio clock the beat clock uses.
    pub fn set_audio_clock(&mut self, writer: AudioClockWriter) {
        self.audio_clock = Some(writer);
    }

    /// Device frame of the first frame the next render produces (the frame counter the
    /// transport's song anchor and the beat clock use).
    pub fn device_frame(&self) -> u64 {
        self.device_frame
    }

    /// Renders `frames` frames in planar form for a backend with one buffer per channel
    /// (JACK): `write(channel, offset, samples)` copies each block of each channel to the
    /// device. `cycle_time_ns` is when the backend says this cycle's first frame was taken
    /// (CLOCK_MONOTONIC), which feeds the audio clock instead of the callback's entry time.
    /// Returns where the set ended, if it did. Real-time safe.
    pub fn render_planar(
        &mut self,
        frames: usize,
        cycle_time_ns: u64,
        mut write: impl FnMut(usize, usize, &[f32]),
    ) -> Processed {
        let start = self.begin(frames, Some(cycle_time_ns));
        let mut set_ended_at = None;
        let mut done = 0;
        while done < frames {
            let block = (frames - done).min(MAX_BLOCK_FRAMES);
            let processed = self.transport.process(&mut self.scratch, block);
            for channel in 0..self.channels {
                write(channel, done, self.scratch.channel(channel, 0, block));
            }
            if let (None, Some(at)) = (set_ended_at, processed.set_ended_at) {
                set_ended_at = Some(done + at);
            }
            done += block;
        }
        self.end(start, frames);
        Processed { set_ended_at }
    }

    /// Renders straight into an f32 buffer. `clock_ns`, when the backend knows it, is when
    /// the buffer's first frame is played (CLOCK_MONOTONIC) and feeds the audio clock instead
    /// of the callback's entry time. Returns where the set ended, if it did.
    pub fn render_f32(&mut self, output: &mut [f32], clock_ns: Option<u64>) -> Processed {
        let frames = output.len() / self.channels;
        let start = self.begin(frames, clock_ns);
        let mut set_ended_at = None;
        let mut done = 0;
        for block in output.chunks_mut(MAX_BLOCK_FRAMES * self.channels) {
            let frames = block.len() / self.channels;
            let processed = self.transport.process(&mut self.scratch, frames);
            self.scratch.interleave_f32(frames, block);
            if let (None, Some(at)) = (set_ended_at, processed.set_ended_at) {
                set_ended_at = Some(done + at);
            }
            done += frames;
        }
        self.end(start, frames);
        Processed { set_ended_at }
    }

    /// Renders into a device buffer of any sample format cpal supports.
    pub fn render<T: Sample + FromSample<f32>>(&mut self, output: &mut [T]) {
        let frames = output.len() / self.channels;
        let start = self.begin(frames, None);
        for block in output.chunks_mut(MAX_BLOCK_FRAMES * self.channels) {
            let frames = block.len() / self.channels;
            self.transport.process(&mut self.scratch, frames);
            self.scratch.interleave_into(frames, block, T::from_sample);
        }
        self.end(start, frames);
    }

    /// Start of a callback of `frames` frames: RT promotion on the first call, the audio
    /// clock (fed `clock_ns`, or the entry time when the backend has no better one), xruns.
    fn begin(&mut self, frames: usize, clock_ns: Option<u64>) -> u64 {
        if !self.first_call_done {
            self.first_call_done = true;
            if let Some(hook) = self.on_first_call.as_mut() {
                hook();
            }
        }
        let now = monotonic_ns();
        if let Some(skip_song) = self.after_outage.take() {
            let frames = self.outage_frames(clock_ns.unwrap_or(now));
            self.device_frame += frames;
            self.transport.skip_outage(frames, skip_song);
            self.status.outage_frames.store(frames, Ordering::Relaxed);
            // The gap is not an xrun.
            self.last_start_ns = 0;
        }
        if let Some(clock) = self.audio_clock.as_mut() {
            clock.update(self.device_frame, clock_ns.unwrap_or(now));
        }
        self.device_frame += frames as u64;
        self.last_frames = frames as u64;
        let period_ns = self.period_ns(frames);
        if self.last_start_ns != 0 {
            let interval = now.saturating_sub(self.last_start_ns) as i64;
            // A callback more than half a period late means the device ran dry.
            if interval > period_ns + period_ns / 2 {
                self.status.xruns.fetch_add(1, Ordering::Relaxed);
                if let Some(timings) = self.timings.as_mut() {
                    // Where in the song it happened, for the rehearsal report.
                    timings.set_song(self.status.song_tag.load(Ordering::Relaxed));
                    let position = self.status.position.load(Ordering::Relaxed);
                    timings.send(Metric::Xrun, position as i64);
                }
            }
        }
        now
    }

    fn end(&mut self, start: u64, frames: usize) {
        let period_ns = self.period_ns(frames);
        if let Some(timings) = self.timings.as_mut() {
            timings.set_song(self.status.song_tag.load(Ordering::Relaxed));
            if self.last_start_ns != 0 {
                let interval = start.saturating_sub(self.last_start_ns) as i64;
                timings.send(Metric::AudioIntervalError, interval - period_ns);
                let busy = monotonic_ns().saturating_sub(start) as i64;
                timings.send(Metric::AudioBusy, busy);
                timings.send(
                    Metric::AudioDuty,
                    busy.saturating_mul(1_000_000) / period_ns.max(1),
                );
            }
        }
        self.last_start_ns = start;
    }

    fn period_ns(&self, frames: usize) -> i64 {
        frames as i64 * 1_000_000_000 / i64::from(self.sample_rate.max(1))
    }
}

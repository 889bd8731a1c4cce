//! Rendering to a WAV file in real time: a timer thread wakes once per period on absolute
//! deadlines and runs the audio callback exactly as a device would, so the whole player runs
//! (and can be tested) where there is no sound card. A normal-priority writer thread does
//! the file I/O, keeping it off the timed thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::callback::{monotonic_ns, AudioCallback, FirstCallbackHook};
use super::output::OpenedOutput;
use crate::timing::sleep_until_ns;

/// Seconds of audio the timer can get ahead of the writer.
const WRITE_RING_SECONDS: usize = 4;

/// A running WAV render.
pub struct WavRender {
    stop: Arc<AtomicBool>,
    /// Set once the set has ended and the timer stopped (non-interactive renders).
    pub finished: Arc<AtomicBool>,
    timer: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<u64, String>>>,
    /// What was opened.
    pub opened: OpenedOutput,
    /// Samples dropped because the writer fell behind (disk too slow).
    pub dropped: Arc<AtomicU64>,
}

/// How the render runs.
pub struct RenderSettings {
    /// Output file.
    pub path: PathBuf,
    /// Channels.
    pub channels: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Frames per period (one timer wake-up).
    pub period_frames: u32,
    /// Stop (and trim the file) at the exact end of the set.
    pub stop_at_set_end: bool,
    /// 1.0 renders in real time; larger values render that many times faster (an offline
    /// bounce for tests and benchmarks; the show itself always runs at 1.0).
    pub speed: f64,
    /// Runs first on the timer thread (real-time promotion), before any period.
    pub on_thread_start: Option<FirstCallbackHook>,
}

impl WavRender {
    /// Creates the file and starts the timer and writer threads.
    pub fn start(
        settings: RenderSettings,
        mut callback: AudioCallback,
    ) -> Result<WavRender, String> {
        let spec = hound::WavSpec {
            channels: settings.channels,
            sample_rate: settings.sample_rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut wav = hound::WavWriter::create(&settings.path, spec)
            .map_err(|e| format!("cannot create {}: {e}", settings.path.display()))?;
        let channels = usize::from(settings.channels);
        let period = settings.period_frames as usize;
        let (mut to_writer, mut from_timer) = rtrb::RingBuffer::<f32>::new(
            settings.sample_rate as usize * channels * WRITE_RING_SECONDS,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let timer_done = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let speed = if settings.speed.is_finite() && settings.speed > 0.0 {
            settings.speed
        } else {
            1.0
        };
        // Period k is due at start + k × period_ns, computed from k each time so that no
        // rounding of the period accumulates.
        let period_ns = period as f64 * 1e9 / f64::from(settings.sample_rate) / speed;
        let timer = {
            let stop = stop.clone();
            let finished = finished.clone();
            let timer_done = timer_done.clone();
            let dropped = dropped.clone();
            let stop_at_set_end = settings.stop_at_set_end;
            let mut on_start = settings.on_thread_start;
            thread::Builder::new()
                .name("backline-render".into())
                .spawn(move || {
                    if let Some(hook) = on_start.as_mut() {
                        hook();
                    }
                    let mut buffer = vec![0.0f32; period * channels];
                    let start = monotonic_ns();
                    let mut periods = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        periods += 1;
                        let deadline = start + (periods as f64 * period_ns) as u64;
                        sleep_until_ns(deadline);
                        // This "device" plays period k at its deadline: that, not the thread's
                        // wake-up (late by the machine's scheduling latency, tens of µs, and
                        // by whole stalls), is the time the audio clock maps its frame to.
                        let processed = callback.render_f32(&mut buffer, Some(deadline));
                        let frames = match (stop_at_set_end, processed.set_ended_at) {
                            (true, Some(at)) => at,
                            _ => period,
                        };
                        let samples = &buffer[..frames * channels];
                        match to_writer.write_chunk_uninit(samples.len()) {
                            Ok(chunk) => {
                                chunk.fill_from_iter(samples.iter().copied());
                            }
                            Err(_) => {
                                dropped.fetch_add(samples.len() as u64, Ordering::Relaxed);
                            }
                        }
                        if stop_at_set_end && processed.set_ended_at.is_some() {
                            finished.store(true, Ordering::Release);
                            break;
                        }
                    }
                    timer_done.store(true, Ordering::Release);
                })
                .map_err(|e| format!("cannot start the render thread: {e}"))?
        };
        let writer = {
            let path = settings.path.clone();
            thread::Builder::new()
                .name("backline-wav".into())
                .spawn(move || {
                    let mut written = 0u64;
                    let mut since_flush = 0usize;
                    loop {
                        let done = timer_done.load(Ordering::Acquire);
                        let available = from_timer.slots();
                        if available > 0 {
                            let chunk = from_timer
                                .read_chunk(available)
                                .map_err(|e| format!("render ring: {e}"))?;
                            for sample in chunk {
                                wav.write_sample(sample)
                                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                            }
                            written += available as u64;
                            since_flush += available;
                        }
                        if since_flush >= spec.sample_rate as usize * channels {
                            // Keeps the header valid on disk even if the process is killed.
                            wav.flush()
                                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                            since_flush = 0;
                        }
                        if done && from_timer.is_empty() {
                            break;
                        }
                        if available == 0 {
                            thread::sleep(Duration::from_millis(5));
                        }
                    }
                    wav.finalize()
                        .map_err(|e| format!("cannot finish {}: {e}", path.display()))?;
                    Ok(written / channels as u64)
                })
                .map_err(|e| format!("cannot start the WAV writer thread: {e}"))?
        };
        Ok(WavRender {
            stop,
            finished,
            timer: Some(timer),
            writer: Some(writer),
            opened: OpenedOutput {
                description: format!("wav:{}", settings.path.display()),
                channels: settings.channels,
                sample_rate: settings.sample_rate,
                buffer_size: Some(settings.period_frames),
                sample_format: "f32 file".into(),
            },
            dropped,
        })
    }

    /// Stops rendering and finalises the file; returns the frames written.
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the WAV writer thread panicked".into()),
            None => Ok(0),
        }
    }
}

impl Drop for WavRender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Parses `wav:PATH` into the path.
pub fn wav_path(device: &str) -> Option<&Path> {
    device.strip_prefix("wav:").map(Path::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::transport::transport;
    use crate::timing::AudioClock;

    /// The render thread is the device: period k plays at start + k periods whatever its
    /// wake-ups did, and that line is what the audio clock must map. (Fed the wake-ups, the
    /// mapping wandered by tens of µs with the machine's scheduling latency, and the beat
    /// clock with it.)
    #[test]
    fn the_audio_clock_follows_the_render_deadlines_not_the_wake_ups() {
        const RATE: u32 = 48_000;
        const PERIOD: u32 = 256;
        let (transport, control) = transport();
        let mut callback = AudioCallback::new(transport, control.status, 2, RATE, None, None);
        let (writer, clock) = AudioClock::new(RATE);
        callback.set_audio_clock(writer);
        let dir =
            std::env::temp_dir().join(format!("backline-render-deadlines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let settings = RenderSettings {
            path: dir.join("out.wav"),
            channels: 2,
            sample_rate: RATE,
            period_frames: PERIOD,
            stop_at_set_end: false,
            speed: 1.0,
            on_thread_start: None,
        };
        let render = WavRender::start(settings, callback).expect("render starts");
        std::thread::sleep(Duration::from_millis(300));
        let early = clock.mapping().expect("a mapping after 300 ms");
        std::thread::sleep(Duration::from_millis(300));
        let late = clock.mapping().expect("a mapping after 600 ms");
        let _ = render.finish();
        let _ = std::fs::remove_dir_all(&dir);
        let period_ns = f64::from(PERIOD) * 1e9 / f64::from(RATE);
        // The later mapping puts every period boundary exactly where the earlier one did
        // (nothing was slewed away: there was no wake-up noise to follow) ...
        for k in (0..200u64).step_by(7) {
            let frame = k * u64::from(PERIOD);
            let moved = late.time_of_frame(frame) as f64 - early.time_of_frame(frame) as f64;
            assert!(
                moved.abs() <= 1000.0,
                "period {k} moved by {moved} ns between two readings"
            );
        }
        // ... on a line at the nominal rate.
        let span = late.time_of_frame(100 * u64::from(PERIOD)) - late.time_of_frame(0);
        assert!(
            (span as f64 - 100.0 * period_ns).abs() <= 1000.0,
            "100 periods span {span} ns, expected {}",
            100.0 * period_ns
        );
    }
}

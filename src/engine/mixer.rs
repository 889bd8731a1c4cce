//! The mixer that runs inside the audio callback: stems from their rings, through the
//! routing matrix and per-track gains, summed into the interleaved output buffer.
//! Everything here follows DESIGN.md's real-time rules: no allocation, no locks, no I/O.

use crate::media::StemStream;

/// Length of a gain change, in frames (about 10 ms at 48 kHz): long enough to be click-free,
/// short enough to feel immediate.
pub const GAIN_RAMP_FRAMES: u32 = 480;

/// Converts decibels to a linear factor.
pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// A gain that moves linearly to a new target over [`GAIN_RAMP_FRAMES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GainRamp {
    current: f32,
    target: f32,
    step: f32,
    remaining: u32,
}

impl GainRamp {
    /// A steady gain.
    pub fn new(gain: f32) -> Self {
        GainRamp {
            current: gain,
            target: gain,
            step: 0.0,
            remaining: 0,
        }
    }

    /// Starts a ramp from the current value to `target`.
    pub fn set_target(&mut self, target: f32) {
        self.target = target;
        self.remaining = GAIN_RAMP_FRAMES;
        self.step = (target - self.current) / GAIN_RAMP_FRAMES as f32;
    }

    /// The gain now.
    pub fn current(&self) -> f32 {
        self.current
    }

    /// Writes the gain of each of the next `curve.len()` frames and advances the ramp.
    #[inline]
    fn fill_curve(&mut self, curve: &mut [f32]) {
        let ramp = (self.remaining as usize).min(curve.len());
        let (start, step) = (self.current, self.step);
        for (i, value) in curve[..ramp].iter_mut().enumerate() {
            // i32 → f32 converts in SIMD registers (u64 → f32 does not vectorise on x86-64).
            *value = start + step * (i as i32 + 1) as f32;
        }
        self.remaining -= ramp as u32;
        self.current = if self.remaining == 0 {
            self.target
        } else {
            start + step * ramp as f32
        };
        curve[ramp..].fill(self.current);
    }
}

/// One source channel feeding one output channel with a fixed weight (1.0 unless a
/// multichannel stem is folded down onto fewer outputs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// Channel within the stem (0-based).
    pub source: usize,
    /// Output channel (0-based).
    pub output: usize,
    /// Fixed weight of this connection.
    pub weight: f32,
}

/// Builds the routes for a stem of `channels` channels sent to the 0-based `outputs`:
/// a mono stem goes to every listed output; a stem with as many channels as outputs goes
/// one-to-one; anything else is folded to mono on every output.
pub fn routes_for(channels: usize, outputs: &[usize]) -> Vec<Route> {
    if channels == 1 {
        outputs
            .iter()
            .map(|&output| Route {
                source: 0,
                output,
                weight: 1.0,
            })
            .collect()
    } else if channels == outputs.len() {
        outputs
            .iter()
            .enumerate()
            .map(|(source, &output)| Route {
                source,
                output,
                weight: 1.0,
            })
            .collect()
    } else {
        let weight = 1.0 / channels as f32;
        outputs
            .iter()
            .flat_map(|&output| {
                (0..channels).map(move |source| Route {
                    source,
                    output,
                    weight,
                })
            })
            .collect()
    }
}

/// Most frames one render step handles; callers split longer device buffers.
pub const MAX_BLOCK_FRAMES: usize = 4096;

/// Distance between channels in a [`PlanarBuffer`]: one block plus a cache line, so that
/// channels do not all fall into the same cache set (a power-of-two stride would).
const CHANNEL_STRIDE: usize = MAX_BLOCK_FRAMES + 16;

/// Output audio in planar form (one contiguous run per output channel), which keeps the
/// mixing loops contiguous and vectorisable; it is interleaved once, while converting to
/// the device format.
pub struct PlanarBuffer {
    data: Vec<f32>,
    channels: usize,
}

impl PlanarBuffer {
    /// A buffer of `channels` channels of [`MAX_BLOCK_FRAMES`] frames (allocate off the RT thread).
    pub fn new(channels: usize) -> Self {
        PlanarBuffer {
            data: vec![0.0; channels.max(1) * CHANNEL_STRIDE],
            channels: channels.max(1),
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Samples `offset..offset + frames` of one channel.
    #[inline]
    pub fn channel_mut(&mut self, channel: usize, offset: usize, frames: usize) -> &mut [f32] {
        let start = channel * CHANNEL_STRIDE + offset;
        &mut self.data[start..start + frames]
    }

    /// Samples `offset..offset + frames` of one channel.
    #[inline]
    pub fn channel(&self, channel: usize, offset: usize, frames: usize) -> &[f32] {
        let start = channel * CHANNEL_STRIDE + offset;
        &self.data[start..start + frames]
    }

    /// Zeroes the first `frames` frames of every channel.
    pub fn clear(&mut self, frames: usize) {
        for channel in 0..self.channels {
            self.channel_mut(channel, 0, frames).fill(0.0);
        }
    }

    /// Writes the first `frames` frames into an interleaved f32 buffer. With a multiple of 4
    /// channels this transposes 4×4 blocks in SSE registers, about three times faster than
    /// one sample at a time; other layouts take the scalar path.
    pub fn interleave_f32(&self, frames: usize, output: &mut [f32]) {
        let channels = self.channels;
        let frames = frames.min(MAX_BLOCK_FRAMES).min(output.len() / channels);
        #[cfg(target_arch = "x86_64")]
        if channels % 4 == 0 {
            use std::arch::x86_64::{
                _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_unpackhi_ps,
                _mm_unpacklo_ps,
            };
            let blocks = frames / 4 * 4;
            let data = self.data.as_ptr();
            let out = output.as_mut_ptr();
            for frame in (0..blocks).step_by(4) {
                for channel in (0..channels).step_by(4) {
                    // SAFETY: frame + 3 < frames <= MAX_BLOCK_FRAMES < CHANNEL_STRIDE and
                    // channel + 3 < channels, so every load is inside `data` (channels ×
                    // CHANNEL_STRIDE); (frame + 3) * channels + channel + 3 < frames * channels
                    // <= output.len(), so every store is inside `output`. SSE2 is part of
                    // the x86-64 baseline.
                    unsafe {
                        let row = |c: usize| {
                            _mm_loadu_ps(data.add((channel + c) * CHANNEL_STRIDE + frame))
                        };
                        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                        let t0 = _mm_unpacklo_ps(r0, r1);
                        let t1 = _mm_unpacklo_ps(r2, r3);
                        let t2 = _mm_unpackhi_ps(r0, r1);
                        let t3 = _mm_unpackhi_ps(r2, r3);
                        let at = |f: usize| out.add((frame + f) * channels + channel);
                        _mm_storeu_ps(at(0), _mm_movelh_ps(t0, t1));
                        _mm_storeu_ps(at(1), _mm_movehl_ps(t1, t0));
                        _mm_storeu_ps(at(2), _mm_movelh_ps(t2, t3));
                        _mm_storeu_ps(at(3), _mm_movehl_ps(t3, t2));
                    }
                }
            }
            let data = &self.data[..];
            for (frame, out) in output
                .chunks_exact_mut(channels)
                .take(frames)
                .enumerate()
                .skip(blocks)
            {
                for (channel, dst) in out.iter_mut().enumerate() {
                    *dst = data[channel * CHANNEL_STRIDE + frame];
                }
            }
            return;
        }
        self.interleave_into(frames, output, |s| s);
    }

    /// Writes the first `frames` frames into an interleaved buffer, converting each sample.
    #[inline]
    pub fn interleave_into<T>(&self, frames: usize, output: &mut [T], convert: impl Fn(f32) -> T) {
        let channels = self.channels;
        let data = &self.data[..];
        for (frame, out) in output.chunks_exact_mut(channels).take(frames).enumerate() {
            for (channel, dst) in out.iter_mut().enumerate() {
                *dst = convert(data[channel * CHANNEL_STRIDE + frame]);
            }
        }
    }
}

/// Adds `frames` frames of interleaved `input` (`in_channels` wide) along `routes` into
/// `output` starting at frame `offset`, applying `gain`; `curve` is scratch for ramps.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn mix_into(
    input: &[f32],
    in_channels: usize,
    routes: &[Route],
    gain: &mut GainRamp,
    curve: &mut [f32],
    output: &mut PlanarBuffer,
    offset: usize,
    frames: usize,
) {
    let frames = frames.min(input.len() / in_channels);
    let ramping = gain.remaining > 0;
    if ramping {
        gain.fill_curve(&mut curve[..frames]);
    }
    let g = gain.current;
    for route in routes {
        if route.output >= output.channels() {
            continue;
        }
        let dst = output.channel_mut(route.output, offset, frames);
        match (ramping, in_channels) {
            (false, 1) => {
                let w = route.weight * g;
                for (d, s) in dst.iter_mut().zip(&input[..frames]) {
                    *d += s * w;
                }
            }
            (false, _) => {
                let w = route.weight * g;
                let source = route.source;
                for (d, frame) in dst.iter_mut().zip(input.chunks_exact(in_channels)) {
                    *d += frame[source] * w;
                }
            }
            (true, 1) => {
                let w = route.weight;
                for ((d, s), c) in dst.iter_mut().zip(&input[..frames]).zip(&curve[..frames]) {
                    *d += s * w * c;
                }
            }
            (true, _) => {
                let w = route.weight;
                let source = route.source;
                let frames_in = input.chunks_exact(in_channels);
                for ((d, frame), c) in dst.iter_mut().zip(frames_in).zip(&curve[..frames]) {
                    *d += frame[source] * w * c;
                }
            }
        }
    }
}

/// A stem in the callback: its ring, routes and gain.
pub struct StemMix {
    /// The ring the loader fills.
    pub stream: StemStream,
    /// Where its channels go.
    pub routes: Vec<Route>,
    /// Its gain (ramped).
    pub gain: GainRamp,
    /// Frames lost to an underrun, discarded when audio arrives again so stems stay in sync.
    debt: usize,
    /// Frames to drop before playing on (a lost device's outage), played as silence until
    /// the loader has delivered them; not an underrun.
    skip: u64,
    /// Frames of `skip` the stem ended before it could drop: how far past its end the outage
    /// reached.
    skipped_past_end: u64,
}

impl StemMix {
    /// A stem with its routing and initial gain.
    pub fn new(stream: StemStream, routes: Vec<Route>, gain: f32) -> Self {
        StemMix {
            stream,
            routes,
            gain: GainRamp::new(gain),
            debt: 0,
            skip: 0,
            skipped_past_end: 0,
        }
    }

    /// Mixes up to `frames` frames into `output` from frame `offset`. Returns (frames
    /// delivered, underrun frames).
    fn mix(
        &mut self,
        output: &mut PlanarBuffer,
        offset: usize,
        frames: usize,
        curve: &mut [f32],
    ) -> (usize, usize) {
        let channels = self.stream.channels;
        // Read `finished` before looking at the ring: the loader pushes, then sets it.
        let finished = self
            .stream
            .finished
            .load(std::sync::atomic::Ordering::Acquire);
        // Drop an outage's frames as the loader delivers them.
        if self.skip > 0 {
            let available = (self.stream.ring.slots() / channels) as u64;
            let drop_now = available.min(self.skip) as usize;
            if let Ok(chunk) = self.stream.ring.read_chunk(drop_now * channels) {
                chunk.commit_all();
            }
            self.skip -= drop_now as u64;
        }
        if finished && self.stream.ring.is_empty() {
            // The file ended (or failed) before the frames skipped in an underrun or an
            // outage arrived: there is nothing left to skip, and the stem must be able to end.
            // What an outage still had to skip lies past the end (the next song's share).
            self.debt = 0;
            self.skipped_past_end = self.skipped_past_end.saturating_add(self.skip);
            self.skip = 0;
        }
        if self.skip > 0 {
            // Silence while the loader catches up: the song moves on meanwhile, so that much
            // more is skipped (the stem stays where the song would have been).
            self.skip = self.skip.saturating_add(frames as u64);
            return (frames, 0);
        }
        // Pay back frames skipped during an earlier underrun first.
        if self.debt > 0 {
            let skip = (self.stream.ring.slots() / channels).min(self.debt);
            if let Ok(chunk) = self.stream.ring.read_chunk(skip * channels) {
                chunk.commit_all();
            }
            self.debt -= skip;
        }
        let available = if self.debt > 0 {
            0
        } else {
            self.stream.ring.slots() / channels
        };
        let take = available.min(frames);
        if take > 0 {
            if let Ok(chunk) = self.stream.ring.read_chunk(take * channels) {
                let (first, second) = chunk.as_slices();
                let first_frames = first.len() / channels;
                mix_into(
                    first,
                    channels,
                    &self.routes,
                    &mut self.gain,
                    curve,
                    output,
                    offset,
                    first_frames,
                );
                if !second.is_empty() {
                    mix_into(
                        second,
                        channels,
                        &self.routes,
                        &mut self.gain,
                        curve,
                        output,
                        offset + first_frames,
                        take - first_frames,
                    );
                }
                chunk.commit_all();
            }
        }
        if take < frames && !(finished && self.stream.ring.is_empty()) {
            // The loader is late: play silence for this stem and skip as much later.
            let missing = frames - take;
            self.debt += missing;
            return (frames, missing);
        }
        (take, 0)
    }

    fn is_exhausted(&self) -> bool {
        self.debt == 0 && self.skip == 0 && self.stream.is_exhausted()
    }
}

/// All stems of one song, mixed together.
pub struct SongMixer {
    /// The stems.
    pub stems: Vec<StemMix>,
    curve: Vec<f32>,
}

/// What one call of [`SongMixer::render`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendered {
    /// Frames of the song written (less than asked only when the song ended).
    pub frames: usize,
    /// True when every stem has been played out.
    pub ended: bool,
    /// Stem-frames replaced by silence because a loader was late.
    pub underrun_frames: usize,
}

impl SongMixer {
    /// A song's mixer (allocates its scratch: build it off the RT thread).
    pub fn new(stems: Vec<StemMix>) -> Self {
        SongMixer {
            stems,
            curve: vec![0.0; MAX_BLOCK_FRAMES],
        }
    }

    /// Drops the next `frames` frames of every stem (played as silence until their loaders
    /// have delivered them): the song jumps ahead by that much. Real-time safe.
    pub fn skip(&mut self, frames: u64) {
        for stem in &mut self.stems {
            stem.skip = stem.skip.saturating_add(frames);
        }
    }

    /// How far past the song's end a [`skip`](Self::skip) reached, once the song has ended:
    /// the frames its longest stem had no audio left to drop for (0 when it ended on its own).
    /// An outage that spans the song's end goes on by this much into the next song.
    pub fn skipped_past_end(&self) -> u64 {
        self.stems
            .iter()
            .map(|stem| stem.skipped_past_end)
            .min()
            .unwrap_or(0)
    }

    /// Adds up to `frames` frames (at most [`MAX_BLOCK_FRAMES`] − `offset`) of the song into
    /// `output` from frame `offset` (the caller zeroed it).
    pub fn render(&mut self, output: &mut PlanarBuffer, offset: usize, frames: usize) -> Rendered {
        let frames = frames.min(MAX_BLOCK_FRAMES - offset.min(MAX_BLOCK_FRAMES));
        let mut longest = 0;
        let mut underrun_frames = 0;
        for stem in &mut self.stems {
            let (delivered, missing) = stem.mix(output, offset, frames, &mut self.curve);
            longest = longest.max(delivered);
            underrun_frames += missing;
        }
        let ended = self.stems.iter().all(StemMix::is_exhausted);
        Rendered {
            frames: if ended { longest } else { frames },
            ended,
            underrun_frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_mono_matching_and_fold() {
        assert_eq!(routes_for(1, &[0, 1]).len(), 2);
        let one_to_one = routes_for(2, &[2, 3]);
        assert_eq!((one_to_one[1].source, one_to_one[1].output), (1, 3));
        let folded = routes_for(2, &[0]);
        assert_eq!(folded.len(), 2);
        assert!((folded[0].weight - 0.5).abs() < 1e-6);
    }

    #[test]
    fn ramp_reaches_target_without_jumps() {
        let mut gain = GainRamp::new(1.0);
        gain.set_target(0.0);
        let input = vec![1.0f32; 1000];
        let mut output = PlanarBuffer::new(1);
        let mut curve = vec![0.0; MAX_BLOCK_FRAMES];
        mix_into(
            &input,
            1,
            &routes_for(1, &[0]),
            &mut gain,
            &mut curve,
            &mut output,
            0,
            1000,
        );
        let out = output.channel(0, 0, 1000);
        let biggest_step = out
            .windows(2)
            .map(|w| (w[0] - w[1]).abs())
            .fold(0.0, f32::max);
        assert!(biggest_step <= 1.0 / GAIN_RAMP_FRAMES as f32 + 1e-6);
        assert_eq!(out[999], 0.0);
        assert_eq!(gain.current(), 0.0);
    }

    #[test]
    fn fast_and_scalar_interleave_agree() {
        for channels in [1, 2, 3, 4, 8, 12] {
            let mut planar = PlanarBuffer::new(channels);
            for c in 0..channels {
                for (f, v) in planar.channel_mut(c, 0, 103).iter_mut().enumerate() {
                    *v = (c * 1000 + f) as f32;
                }
            }
            let mut fast = vec![0.0; 103 * channels];
            let mut scalar = vec![0.0; 103 * channels];
            planar.interleave_f32(103, &mut fast);
            planar.interleave_into(103, &mut scalar, |s| s);
            assert_eq!(fast, scalar, "{channels} channels");
            assert_eq!(
                scalar[channels * 5 + channels - 1],
                ((channels - 1) * 1000 + 5) as f32
            );
        }
    }

    #[test]
    fn db_conversion() {
        assert!((db_to_gain(-6.0) - 0.501).abs() < 1e-3);
        assert_eq!(db_to_gain(0.0), 1.0);
    }
}

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

    #[inline]
    fn advance(&mut self) -> f32 {
        if self.remaining > 0 {
            self.remaining -= 1;
            self.current = if self.remaining == 0 {
                self.target
            } else {
                self.current + self.step
            };
        }
        self.current
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

/// Adds `frames` frames of interleaved `input` (`in_channels` wide) into interleaved
/// `output` (`out_channels` wide) along `routes`, applying `gain`.
#[inline]
pub fn mix_into(
    input: &[f32],
    in_channels: usize,
    routes: &[Route],
    gain: &mut GainRamp,
    output: &mut [f32],
    out_channels: usize,
) {
    let frames = (input.len() / in_channels).min(output.len() / out_channels);
    if gain.remaining == 0 {
        let g = gain.current;
        for route in routes {
            let w = route.weight * g;
            let src = input[route.source..].iter().step_by(in_channels);
            let dst = output[route.output..].iter_mut().step_by(out_channels);
            for (d, s) in dst.zip(src).take(frames) {
                *d += s * w;
            }
        }
    } else {
        for frame in 0..frames {
            let g = gain.advance();
            let in_frame = &input[frame * in_channels..(frame + 1) * in_channels];
            let out_frame = &mut output[frame * out_channels..(frame + 1) * out_channels];
            for route in routes {
                out_frame[route.output] += in_frame[route.source] * route.weight * g;
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
}

impl StemMix {
    /// A stem with its routing and initial gain.
    pub fn new(stream: StemStream, routes: Vec<Route>, gain: f32) -> Self {
        StemMix {
            stream,
            routes,
            gain: GainRamp::new(gain),
            debt: 0,
        }
    }

    /// Mixes up to `frames` frames into `output`. Returns (frames delivered, underrun frames).
    fn mix(&mut self, output: &mut [f32], out_channels: usize, frames: usize) -> (usize, usize) {
        let channels = self.stream.channels;
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
                mix_into(first, channels, &self.routes, &mut self.gain, output, out_channels);
                if !second.is_empty() {
                    mix_into(
                        second,
                        channels,
                        &self.routes,
                        &mut self.gain,
                        &mut output[first_frames * out_channels..],
                        out_channels,
                    );
                }
                chunk.commit_all();
            }
        }
        let finished = self.stream.finished.load(std::sync::atomic::Ordering::Acquire);
        if take < frames && !(finished && self.stream.ring.is_empty()) {
            // The loader is late: play silence for this stem and skip as much later.
            let missing = frames - take;
            self.debt += missing;
            return (frames, missing);
        }
        (take, 0)
    }

    fn is_exhausted(&self) -> bool {
        self.debt == 0 && self.stream.is_exhausted()
    }
}

/// All stems of one song, mixed together.
pub struct SongMixer {
    /// The stems.
    pub stems: Vec<StemMix>,
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
    /// Adds up to `frames` frames of the song into `output` (which the caller zeroed).
    pub fn render(&mut self, output: &mut [f32], out_channels: usize, frames: usize) -> Rendered {
        let mut longest = 0;
        let mut underrun_frames = 0;
        for stem in &mut self.stems {
            let (delivered, missing) = stem.mix(output, out_channels, frames);
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
        let mut output = vec![0.0f32; 1000];
        mix_into(&input, 1, &routes_for(1, &[0]), &mut gain, &mut output, 1);
        let biggest_step = output.windows(2).map(|w| (w[0] - w[1]).abs()).fold(0.0, f32::max);
        assert!(biggest_step <= 1.0 / GAIN_RAMP_FRAMES as f32 + 1e-6);
        assert_eq!(output[999], 0.0);
        assert_eq!(gain.current(), 0.0);
    }

    #[test]
    fn db_conversion() {
        assert!((db_to_gain(-6.0) - 0.501).abs() < 1e-3);
        assert_eq!(db_to_gain(0.0), 1.0);
    }
}

//! Sample-rate conversion of planar streams with rubato, aligned so the output starts at the
//! input's first frame and has exactly the length the ratio says (stems stay in sync).

use rubato::{FftFixedIn, Resampler};

/// Input frames handed to rubato at a time.
const CHUNK_FRAMES: usize = 1024;

/// Resamples a stream of planar chunks from one rate to another.
pub struct StreamResampler {
    inner: FftFixedIn<f32>,
    input: Vec<Vec<f32>>,
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
    ratio: f64,
}

impl StreamResampler {
    /// A resampler for `channels` planar channels from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32, channels: usize) -> Result<Self, String> {
        let inner = FftFixedIn::<f32>::new(from as usize, to as usize, CHUNK_FRAMES, 2, channels)
            .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
        let delay_left = inner.output_delay();
        Ok(StreamResampler {
            inner,
            input: vec![Vec::with_capacity(CHUNK_FRAMES * 2); channels],
            delay_left,
            frames_in: 0,
            frames_out: 0,
            ratio: f64::from(to) / f64::from(from),
        })
    }

    /// Feeds planar input; appends whatever output is ready to `out` (one Vec per channel).
    pub fn push(&mut self, planar: &[Vec<f32>], out: &mut [Vec<f32>]) -> Result<(), String> {
        for (buffer, channel) in self.input.iter_mut().zip(planar) {
            buffer.extend_from_slice(channel);
        }
        self.frames_in += planar.first().map_or(0, |c| c.len() as u64);
        while self.input.first().map_or(0, Vec::len) >= self.inner.input_frames_next() {
            let need = self.inner.input_frames_next();
            let result = self
                .inner
                .process(&self.input, None)
                .map_err(|e| format!("resampling failed: {e}"))?;
            for buffer in &mut self.input {
                buffer.drain(..need);
            }
            self.emit(result, out, u64::MAX);
        }
        Ok(())
    }

    /// Flushes the tail at end of stream so the total output is the input length × ratio.
    pub fn finish(&mut self, out: &mut [Vec<f32>]) -> Result<(), String> {
        let expected = (self.frames_in as f64 * self.ratio).round() as u64;
        let mut guard = 0;
        while self.frames_out < expected && guard < 64 {
            guard += 1;
            let input = std::mem::take(&mut self.input);
            let result = if input.first().is_some_and(|c| !c.is_empty()) {
                self.inner.process_partial(Some(&input), None)
            } else {
                self.inner.process_partial::<Vec<f32>>(None, None)
            }
            .map_err(|e| format!("resampling failed: {e}"))?;
            self.input = vec![Vec::new(); input.len()];
            self.emit(result, out, expected);
        }
        Ok(())
    }

    fn emit(&mut self, result: Vec<Vec<f32>>, out: &mut [Vec<f32>], limit: u64) {
        let produced = result.first().map_or(0, Vec::len);
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        let available = (produced - skip) as u64;
        let take = available.min(limit.saturating_sub(self.frames_out)) as usize;
        for (target, channel) in out.iter_mut().zip(&result) {
            target.extend_from_slice(&channel[skip..skip + take]);
        }
        self.frames_out += take as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_alignment_are_preserved() {
        let from = 44_100;
        let to = 48_000;
        let frames = 44_100;
        // An impulse at frame 22050 (0.5 s) must come out near frame 24000.
        let mut input = vec![0.0f32; frames];
        input[22_050] = 1.0;
        let mut r = StreamResampler::new(from, to, 1).expect("resampler");
        let mut out = vec![Vec::new()];
        for chunk in input.chunks(1000) {
            r.push(&[chunk.to_vec()], &mut out).expect("push");
        }
        r.finish(&mut out).expect("finish");
        assert_eq!(out[0].len(), 48_000);
        let peak = out[0]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, _)| i)
            .expect("peak");
        assert!((peak as i64 - 24_000).abs() <= 2, "peak at {peak}");
    }
}

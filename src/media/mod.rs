//! Media: decoding (symphonia), channel pick, resampling (rubato) and streaming each stem
//! through its own lock-free ring (rtrb), filled by a loader thread per song so memory does
//! not grow with song length. A song opened ahead of time is "pre-rolled": its rings fill
//! while the previous song plays, so it can start within one audio period.

mod decode;
mod resample;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::library::{locate, Diagnostic, Song};

pub use decode::{
    decode_all, decode_to_end, inside_guard, probe, FileDecoder, MediaInfo, MAX_FILE_CHANNELS,
    MAX_FILE_SECONDS,
};
pub use resample::StreamResampler;

/// Seconds of audio buffered per stem ahead of the audio callback.
pub const RING_SECONDS: f64 = 1.0;
/// How long the loader sleeps when every ring is full.
const LOADER_IDLE: Duration = Duration::from_millis(5);

/// The consumer side of one stem, owned by the audio callback.
pub struct StemStream {
    /// Track name (for routing and status).
    pub name: String,
    /// Interleaved samples, `channels` per frame, at the device rate.
    pub ring: rtrb::Consumer<f32>,
    /// Channels per frame in the ring.
    pub channels: usize,
    /// Set by the loader after it pushed the last sample (end of file, or a fatal error).
    pub finished: Arc<AtomicBool>,
}

impl StemStream {
    /// True when the ring is at least half full, or the whole file is in it: the stem can
    /// start without an underrun.
    pub fn is_prerolled(&self) -> bool {
        self.finished.load(Ordering::Acquire)
            || self.ring.slots() >= self.ring.buffer().capacity() / 2
    }

    /// True when every sample has been written and read.
    pub fn is_exhausted(&self) -> bool {
        // `finished` first: the loader pushes the tail, then sets it.
        self.finished.load(Ordering::Acquire) && self.ring.is_empty()
    }
}

/// A song opened for playback: one ring per routed stem, fed by a loader thread.
pub struct SongStreams {
    /// The stems, in track order (tracks routed nowhere are not opened).
    pub stems: Vec<StemStream>,
    /// Expected length in device frames, when every header gives a length.
    pub length_frames: Option<u64>,
}

/// Which output each track goes to is decided by the engine; media only needs to know which
/// tracks to open at all. `start_frame` (device frames) starts the song part-way through.
pub fn open_song(
    song: &Song,
    device_rate: u32,
    is_routed: impl Fn(&str) -> bool,
    start_frame: u64,
) -> Result<SongStreams, Diagnostic> {
    let song_text = std::fs::read_to_string(&song.source).unwrap_or_default();
    // Group tracks by file so a stereo file split with file_channel is decoded once.
    let mut by_file: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (index, track) in song.tracks.iter().enumerate() {
        if is_routed(&track.name) {
            by_file.entry(track.file.clone()).or_default().push(index);
        }
    }
    if by_file.is_empty() {
        return Err(Diagnostic::file(
            &song.source,
            "none of this song's tracks is routed to an output: expected at least one track named in track_mappings",
        ));
    }
    let mut jobs = Vec::new();
    let mut stems: Vec<(usize, StemStream)> = Vec::new();
    let mut length_frames = Some(0u64);
    for (file, track_indices) in by_file {
        let mut decoder = FileDecoder::open(&file)?;
        let info = decoder.info().clone();
        if start_frame > 0 {
            // Start mid-song (a seek): the same instant in every file, at its own rate.
            let file_frame = (start_frame as f64 * f64::from(info.sample_rate)
                / f64::from(device_rate))
            .round() as u64;
            decoder.seek_to_frame(file_frame)?;
        }
        let frames_at_device = info.frames.map(|f| {
            (f as f64 * f64::from(device_rate) / f64::from(info.sample_rate)).round() as u64
        });
        length_frames = match (length_frames, frames_at_device) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        // Source channels this file must deliver, and each stem's pick among them.
        let mut used: Vec<usize> = Vec::new();
        let mut sinks = Vec::new();
        for &index in &track_indices {
            let track = &song.tracks[index];
            let picks: Vec<usize> = match track.file_channel {
                Some(channel) => {
                    let channel = usize::from(channel);
                    if channel > info.channels {
                        let nth = song.tracks[..index]
                            .iter()
                            .filter(|t| t.file_channel == track.file_channel)
                            .count();
                        return Err(Diagnostic::at(
                            &song.source,
                            locate(&song_text, "file_channel", Some(&channel.to_string()), nth),
                            format!(
                                "track `{}`: file_channel {channel} but {} has {} channel{}: expected 1 to {}",
                                track.name,
                                file.display(),
                                info.channels,
                                if info.channels == 1 { "" } else { "s" },
                                info.channels
                            ),
                        ));
                    }
                    vec![channel - 1]
                }
                None => (0..info.channels).collect(),
            };
            let picks: Vec<usize> = picks
                .into_iter()
                .map(|source| match used.iter().position(|&u| u == source) {
                    Some(slot) => slot,
                    None => {
                        used.push(source);
                        used.len() - 1
                    }
                })
                .collect();
            let capacity = (RING_SECONDS * f64::from(device_rate)) as usize * picks.len();
            let (producer, consumer) = rtrb::RingBuffer::new(capacity);
            let finished = Arc::new(AtomicBool::new(false));
            stems.push((
                index,
                StemStream {
                    name: track.name.clone(),
                    ring: consumer,
                    channels: picks.len(),
                    finished: finished.clone(),
                },
            ));
            sinks.push(StemSink {
                producer,
                picks,
                pending: Vec::new(),
                sent: 0,
                finished,
            });
        }
        let resampler = if info.sample_rate != device_rate {
            Some(
                StreamResampler::new(info.sample_rate, device_rate, used.len())
                    .map_err(|m| Diagnostic::file(&file, m))?,
            )
        } else {
            None
        };
        jobs.push(FileJob {
            file,
            decoder,
            source_channels: info.channels,
            used,
            resampler,
            sinks,
            done: false,
        });
    }
    stems.sort_by_key(|(index, _)| *index);
    thread::Builder::new()
        .name("backline-loader".into())
        .spawn(move || run_loader(jobs))
        .map_err(|e| {
            Diagnostic::file(&song.source, format!("cannot start a loader thread: {e}"))
        })?;
    Ok(SongStreams {
        stems: stems.into_iter().map(|(_, s)| s).collect(),
        length_frames,
    })
}

struct StemSink {
    producer: rtrb::Producer<f32>,
    picks: Vec<usize>,
    pending: Vec<f32>,
    sent: usize,
    finished: Arc<AtomicBool>,
}

impl StemSink {
    /// Pushes as much pending audio as fits; true when nothing is left pending.
    fn flush(&mut self) -> bool {
        let left = self.pending.len() - self.sent;
        if left == 0 {
            return true;
        }
        let n = self.producer.slots().min(left);
        if n > 0 {
            if let Ok(mut chunk) = self.producer.write_chunk_uninit(n) {
                let (a, b) = chunk.as_mut_slices();
                let src = &self.pending[self.sent..self.sent + n];
                for (dst, &value) in a.iter_mut().chain(b.iter_mut()).zip(src) {
                    dst.write(value);
                }
                // SAFETY: every slot of the chunk was written just above.
                unsafe { chunk.commit_all() };
                self.sent += n;
            }
        }
        if self.sent == self.pending.len() {
            self.pending.clear();
            self.sent = 0;
            true
        } else {
            false
        }
    }
}

struct FileJob {
    file: PathBuf,
    decoder: FileDecoder,
    source_channels: usize,
    used: Vec<usize>,
    resampler: Option<StreamResampler>,
    sinks: Vec<StemSink>,
    done: bool,
}

impl FileJob {
    /// Decodes one packet into the sinks' pending buffers. Returns false at end of file.
    fn decode_next(
        &mut self,
        planar: &mut Vec<Vec<f32>>,
        resampled: &mut Vec<Vec<f32>>,
    ) -> Result<bool, Diagnostic> {
        planar.resize_with(self.used.len(), Vec::new);
        planar.iter_mut().for_each(Vec::clear);
        let more = match self.decoder.next_packet()? {
            Some(samples) => {
                for frame in samples.chunks_exact(self.source_channels) {
                    for (slot, &source) in self.used.iter().enumerate() {
                        planar[slot].push(frame[source]);
                    }
                }
                true
            }
            None => false,
        };
        let output: &Vec<Vec<f32>> = match &mut self.resampler {
            Some(resampler) => {
                resampled.resize_with(self.used.len(), Vec::new);
                resampled.iter_mut().for_each(Vec::clear);
                if more {
                    resampler.push(planar, resampled)
                } else {
                    resampler.finish(resampled)
                }
                .map_err(|m| Diagnostic::file(&self.file, m))?;
                resampled
            }
            None => planar,
        };
        let frames = output.first().map_or(0, Vec::len);
        for sink in &mut self.sinks {
            sink.pending.reserve(frames * sink.picks.len());
            match sink.picks.as_slice() {
                [single] => sink.pending.extend_from_slice(&output[*single][..frames]),
                picks => {
                    let pending = &mut sink.pending;
                    (0..frames).for_each(|frame| {
                        pending.extend(picks.iter().map(|&pick| output[pick][frame]));
                    });
                }
            }
        }
        Ok(more)
    }
}

fn run_loader(mut jobs: Vec<FileJob>) {
    let mut planar = Vec::new();
    let mut resampled = Vec::new();
    loop {
        let mut progressed = false;
        let mut all_done = true;
        for job in &mut jobs {
            if job.done {
                continue;
            }
            all_done = false;
            if job.sinks.iter().all(|s| s.producer.is_abandoned()) {
                // The song was dropped (stopped, skipped): nothing left to feed.
                job.done = true;
                continue;
            }
            let mut flushed = true;
            for sink in &mut job.sinks {
                flushed &= sink.flush();
            }
            if !flushed {
                continue;
            }
            match job.decode_next(&mut planar, &mut resampled) {
                Ok(true) => progressed = true,
                Ok(false) => {
                    // End of file: deliver the tail, then mark each stem finished.
                    while !job.sinks.iter_mut().all(StemSink::flush) {
                        if job.sinks.iter().all(|s| s.producer.is_abandoned()) {
                            break;
                        }
                        thread::sleep(LOADER_IDLE);
                    }
                    finish(job);
                }
                Err(e) => {
                    tracing::error!("{e} (the rest of this file is silent)");
                    finish(job);
                }
            }
        }
        if all_done {
            return;
        }
        if !progressed {
            thread::sleep(LOADER_IDLE);
        }
    }
}

fn finish(job: &mut FileJob) {
    job.done = true;
    for sink in &job.sinks {
        sink.finished.store(true, Ordering::Release);
    }
}

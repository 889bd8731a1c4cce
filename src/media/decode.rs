//! Decoding audio files with symphonia into interleaved f32, one packet at a time.

use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use symphonia::core::units::Time;

use crate::library::Diagnostic;

/// Most channels a file may have: symphonia 0.5 describes a layout as a set of its 26 named
/// channel positions, so its readers refuse more (and so does backline, with this number in
/// the message). Split wider multitrack recordings into several files.
pub const MAX_FILE_CHANNELS: usize = 26;
/// Corrupt packets tolerated in a row before a file is declared undecodable.
const MAX_CONSECUTIVE_BAD_PACKETS: usize = 64;
/// Longest audio file accepted, in seconds. A header claiming more is damaged or hostile
/// (a 2^31-frame WAV, a sparse 10 GB file); refusing it bounds `check`'s decoding time.
pub const MAX_FILE_SECONDS: u64 = 4 * 3600;

/// Runs decoder code that may panic on hostile input (symphonia asserts on some impossible
/// headers, e.g. a 0 Hz WAV): a panic becomes an error naming the file, never a dead show.
fn guarded<T>(path: &Path, work: impl FnOnce() -> Result<T, Diagnostic>) -> Result<T, Diagnostic> {
    catch_decoder_panic(work).unwrap_or_else(|payload| Err(gave_up(path, payload)))
}

thread_local! {
    /// Set while this thread runs decoder code under `catch_unwind`.
    static GUARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while the current thread runs decoder code whose panics become errors (for the
/// panic hook, which then keeps quiet).
pub fn inside_guard() -> bool {
    GUARDING.with(|g| g.get())
}

fn catch_decoder_panic<T>(work: impl FnOnce() -> T) -> std::thread::Result<T> {
    let outer = GUARDING.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    GUARDING.with(|g| g.set(outer));
    result
}

/// The error for a decoder panic, with the panic's message.
fn gave_up(path: &Path, payload: Box<dyn std::any::Any + Send>) -> Diagnostic {
    let why = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown reason".into());
    Diagnostic::file(
        path,
        format!("cannot decode: the decoder gave up on this file ({why}): the file is damaged"),
    )
}

/// `frames` at `rate` as "2 h 05 min".
fn hours_minutes(frames: u64, rate: u32) -> String {
    let minutes = frames / u64::from(rate.max(1)) / 60;
    format!("{} h {:02} min", minutes / 60, minutes % 60)
}

/// What a file's header says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Number of channels.
    pub channels: usize,
    /// Frames per second.
    pub sample_rate: u32,
    /// Length in frames, when the container says.
    pub frames: Option<u64>,
    /// Codec short name, e.g. "flac".
    pub codec: String,
}

/// An open audio file yielding interleaved f32 packets.
pub struct FileDecoder {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    buffer: Option<SampleBuffer<f32>>,
    info: MediaInfo,
    bad_packets: usize,
    /// The first packet was decoded early (to learn the channel count) and not yet returned.
    first_packet_pending: bool,
    /// Frames still to drop after a seek, to land on the exact frame asked for.
    skip_frames: u64,
    /// The decoder panicked once; its state cannot be trusted any more.
    poisoned: bool,
}

fn describe(error: &SymphoniaError) -> String {
    match error {
        SymphoniaError::Unsupported(what) => {
            format!(
                "unsupported format ({what}): expected WAV, FLAC, MP3, OGG/Vorbis, AAC/M4A or AIFF"
            )
        }
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends early (truncated): expected a complete audio file".into()
        }
        SymphoniaError::IoError(e) => format!("cannot read: {e}"),
        SymphoniaError::DecodeError(why) if why.contains("channel count") => {
            format!("unsupported channel count ({why}): expected 1 to {MAX_FILE_CHANNELS} channels")
        }
        other => format!("cannot decode: {other}"),
    }
}

impl FileDecoder {
    /// Opens `path` and checks that the header describes playable audio.
    pub fn open(path: &Path) -> Result<FileDecoder, Diagnostic> {
        guarded(path, || FileDecoder::open_unguarded(path))
    }

    fn open_unguarded(path: &Path) -> Result<FileDecoder, Diagnostic> {
        let file =
            File::open(path).map_err(|e| Diagnostic::file(path, format!("cannot open: {e}")))?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            return Err(Diagnostic::file(path, "the file is empty: expected audio"));
        }
        FileDecoder::from_source(path, Box::new(file))
    }

    /// Opens audio held in memory; `name` stands for the file in messages and gives the
    /// format hint (its extension). For fuzzing the decoder without touching the disk.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<FileDecoder, Diagnostic> {
        if bytes.is_empty() {
            return Err(Diagnostic::file(name, "the file is empty: expected audio"));
        }
        guarded(name, || {
            FileDecoder::from_source(name, Box::new(std::io::Cursor::new(bytes)))
        })
    }

    fn from_source(
        path: &Path,
        source: Box<dyn symphonia::core::io::MediaSource>,
    ) -> Result<FileDecoder, Diagnostic> {
        let stream = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let probed = symphonia::default::get_probe()
            .format(
                &hint,
                stream,
                &FormatOptions {
                    // Trim encoder delay and padding (MP3, AAC) so compressed stems line up
                    // with PCM stems sample for sample.
                    enable_gapless: true,
                    ..FormatOptions::default()
                },
                &MetadataOptions::default(),
            )
            .map_err(|e| Diagnostic::file(path, describe(&e)))?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| Diagnostic::file(path, "no audio track in the file: expected audio"))?;
        let params = track.codec_params.clone();
        let track_id = track.id;
        let sample_rate = params.sample_rate.unwrap_or(0);
        if !(1_000..=768_000).contains(&sample_rate) {
            return Err(Diagnostic::file(
                path,
                format!("the header says {sample_rate} Hz: expected a sample rate from 1000 to 768000 Hz"),
            ));
        }
        let channels = params.channels.map(|c| c.count()).unwrap_or(0);
        if channels > MAX_FILE_CHANNELS {
            return Err(Diagnostic::file(
                path,
                format!("the header says {channels} channels: expected 1 to {MAX_FILE_CHANNELS}"),
            ));
        }
        if let Some(frames) = params.n_frames {
            if frames > MAX_FILE_SECONDS * u64::from(sample_rate) {
                return Err(Diagnostic::file(
                    path,
                    format!(
                        "the header claims {frames} frames ({} at {sample_rate} Hz): expected at most {} hours; the file is damaged",
                        hours_minutes(frames, sample_rate),
                        MAX_FILE_SECONDS / 3600
                    ),
                ));
            }
        }
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| Diagnostic::file(path, describe(&e)))?;
        let codec = symphonia::default::get_codecs()
            .get_codec(params.codec)
            .map(|d| d.short_name.to_string())
            .unwrap_or_else(|| "unknown".into());
        let mut decoder = FileDecoder {
            path: path.to_path_buf(),
            format,
            decoder,
            track_id,
            buffer: None,
            info: MediaInfo {
                channels,
                sample_rate,
                frames: params.n_frames,
                codec,
            },
            bad_packets: 0,
            first_packet_pending: false,
            skip_frames: 0,
            poisoned: false,
        };
        if channels == 0 {
            // Some containers (AAC in MP4) only tell the channel count once decoding starts.
            decoder.info.channels = decoder.peek_channels()?;
        }
        Ok(decoder)
    }

    /// Learns the channel count by decoding the first packet, which is kept for
    /// [`FileDecoder::next_packet`] to return first.
    fn peek_channels(&mut self) -> Result<usize, Diagnostic> {
        let mut channels = self
            .decoder
            .codec_params()
            .channels
            .map(|c| c.count())
            .unwrap_or(0);
        if channels == 0 {
            channels = self.decode_first_packet()?;
        }
        if (1..=MAX_FILE_CHANNELS).contains(&channels) {
            return Ok(channels);
        }
        Err(Diagnostic::file(
            &self.path,
            format!("the header says {channels} channels: expected 1 to {MAX_FILE_CHANNELS}"),
        ))
    }

    fn decode_first_packet(&mut self) -> Result<usize, Diagnostic> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(packet) => packet,
                Err(_) => return Ok(0),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(decoded) => decoded,
                Err(SymphoniaError::DecodeError(_)) => continue,
                Err(e) => return Err(Diagnostic::file(&self.path, describe(&e))),
            };
            let spec = *decoded.spec();
            let mut buffer = SampleBuffer::new(decoded.capacity() as u64, spec);
            buffer.copy_interleaved_ref(decoded);
            self.buffer = Some(buffer);
            self.first_packet_pending = true;
            return Ok(spec.channels.count());
        }
    }

    /// Positions the decoder so that the next samples are those of `frame` (at the file's
    /// own rate): a container seek to at or before it, then the frames in between are
    /// dropped, so the position is exact. Containers that cannot seek are decoded from the
    /// start and the frames dropped.
    pub fn seek_to_frame(&mut self, frame: u64) -> Result<(), Diagnostic> {
        self.first_packet_pending = false;
        if frame == 0 {
            return Ok(());
        }
        let seconds = frame as f64 / f64::from(self.info.sample_rate.max(1));
        let target = SeekTo::Time {
            time: Time::from(seconds),
            track_id: Some(self.track_id),
        };
        match self.format.seek(SeekMode::Accurate, target) {
            Ok(seeked) => {
                self.decoder.reset();
                self.skip_frames = seeked.required_ts.saturating_sub(seeked.actual_ts);
            }
            Err(_) => {
                // Not seekable (or the seek failed): start over and drop up to `frame`.
                let reopened = FileDecoder::open(&self.path)?;
                *self = reopened;
                self.first_packet_pending = false;
                self.skip_frames = frame;
            }
        }
        Ok(())
    }

    /// What the header says.
    pub fn info(&self) -> &MediaInfo {
        &self.info
    }

    /// The next packet as interleaved samples (`info().channels` per frame), or `None` at the
    /// end. Corrupt packets are skipped; a run of them is an error.
    pub fn next_packet(&mut self) -> Result<Option<&[f32]>, Diagnostic> {
        if self.poisoned {
            return Err(Diagnostic::file(
                &self.path,
                "cannot decode: the decoder gave up on this file earlier: the file is damaged",
            ));
        }
        let outcome = catch_decoder_panic(|| self.next_samples_start());
        let start = match outcome {
            Ok(start) => start?,
            Err(payload) => {
                self.poisoned = true;
                return Err(gave_up(&self.path, payload));
            }
        };
        Ok(start.and_then(|start| self.buffer.as_ref().map(|b| &b.samples()[start..])))
    }

    /// Decodes the next packet into `self.buffer`; returns where its samples start.
    fn next_samples_start(&mut self) -> Result<Option<usize>, Diagnostic> {
        if self.first_packet_pending {
            self.first_packet_pending = false;
            return Ok(self.buffer.as_ref().map(|_| 0));
        }
        let start = loop {
            let packet = match self.format.next_packet() {
                Ok(packet) => packet,
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(None)
                }
                Err(SymphoniaError::ResetRequired) => return Ok(None),
                Err(e) => return Err(Diagnostic::file(&self.path, describe(&e))),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            match self.decoder.decode(&packet) {
                Ok(decoded) => {
                    self.bad_packets = 0;
                    let spec = *decoded.spec();
                    if spec.channels.count() != self.info.channels {
                        return Err(Diagnostic::file(
                            &self.path,
                            format!(
                                "the channel count changed from {} to {} mid-file: expected a constant layout",
                                self.info.channels,
                                spec.channels.count()
                            ),
                        ));
                    }
                    let needed = decoded.capacity() as u64;
                    let fits = self.buffer.as_ref().is_some_and(|b| {
                        b.capacity() as u64 >= needed * spec.channels.count() as u64
                    });
                    if !fits {
                        self.buffer = Some(SampleBuffer::new(needed, spec));
                    }
                    let Some(buffer) = self.buffer.as_mut() else {
                        return Ok(None);
                    };
                    buffer.copy_interleaved_ref(decoded);
                    let channels = self.info.channels.max(1);
                    let frames = (buffer.samples().len() / channels) as u64;
                    if self.skip_frames >= frames {
                        self.skip_frames -= frames;
                        continue;
                    }
                    let start = self.skip_frames as usize * channels;
                    self.skip_frames = 0;
                    break start;
                }
                Err(SymphoniaError::DecodeError(_)) | Err(SymphoniaError::IoError(_)) => {
                    self.bad_packets += 1;
                    if self.bad_packets > MAX_CONSECUTIVE_BAD_PACKETS {
                        return Err(Diagnostic::file(
                            &self.path,
                            "too many corrupt packets in a row: the file is damaged",
                        ));
                    }
                }
                Err(e) => return Err(Diagnostic::file(&self.path, describe(&e))),
            }
        };
        Ok(Some(start))
    }
}

/// Reads only the header.
pub fn probe(path: &Path) -> Result<MediaInfo, Diagnostic> {
    FileDecoder::open(path).map(|d| d.info().clone())
}

/// Decodes the whole file (for `backline check`): returns the header and the number of
/// frames actually decoded.
pub fn decode_all(path: &Path) -> Result<(MediaInfo, u64), Diagnostic> {
    decode_to_end(path, FileDecoder::open(path)?)
}

/// Decodes a whole opened file, counting frames, within [`MAX_FILE_SECONDS`].
pub fn decode_to_end(
    path: &Path,
    mut decoder: FileDecoder,
) -> Result<(MediaInfo, u64), Diagnostic> {
    let channels = decoder.info().channels.max(1) as u64;
    let limit = MAX_FILE_SECONDS * u64::from(decoder.info().sample_rate);
    let mut frames = 0u64;
    while let Some(samples) = decoder.next_packet()? {
        frames += samples.len() as u64 / channels;
        if frames > limit {
            return Err(Diagnostic::file(
                path,
                format!(
                    "the audio lasts more than {} hours: the file is damaged or not a song",
                    MAX_FILE_SECONDS / 3600
                ),
            ));
        }
    }
    if frames == 0 {
        return Err(Diagnostic::file(
            path,
            "no audio could be decoded: the file is empty or damaged",
        ));
    }
    Ok((decoder.info().clone(), frames))
}

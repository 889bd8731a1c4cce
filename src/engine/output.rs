//! Audio outputs through cpal (ALSA): picks channels, rate, buffer size and sample format
//! (f32, i32, i16) the device supports, and lists devices for `backline devices`. JACK has
//! its own backend (`engine::jack_output`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig};

use super::callback::AudioCallback;
use super::handover::EngineSlot;
use super::transport::SharedStatus;

/// Stream errors in a row, with no buffer in between, that mean the device is gone.
const ERRORS_MEAN_LOST: u64 = 20;
/// How long the audio thread of a dead stream pauses on each further error.
const DEAD_STREAM_PAUSE: Duration = Duration::from_millis(10);

/// Once its stream is dead, the audio thread gives up real-time priority (lowering it needs
/// no privilege), so a cpal retry loop that never ends runs at normal priority.
fn calm_dead_stream_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread with a valid parameter struct.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

/// What was actually opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedOutput {
    /// Host and device name, for the status line.
    pub description: String,
    /// Output channels.
    pub channels: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Requested frames per period (`None` = device default).
    pub buffer_size: Option<u32>,
    /// Sample format used.
    pub sample_format: String,
}

/// What a device must be opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRequest {
    /// Device name from the config or command line.
    pub device: String,
    /// Channels the routing needs.
    pub channels: u16,
    /// Preferred rate.
    pub sample_rate: u32,
    /// Preferred period.
    pub buffer_size: u32,
}

/// A running cpal stream (audio stops when this is dropped).
pub struct CpalOutput {
    _stream: SendStream,
    lost: Arc<AtomicBool>,
    /// What was opened.
    pub opened: OpenedOutput,
}

impl CpalOutput {
    /// Whether the stream reported its device gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

/// A cpal stream the reconnect thread may own and drop.
struct SendStream(#[allow(dead_code)] cpal::Stream);

// SAFETY: cpal marks every `Stream` `!Send` because some hosts (WASAPI, ASIO) need it; the
// only host built here is ALSA, whose stream is a thread handle, a trigger pipe and an `Arc`
// of the PCM, all of which may be used and dropped from any thread.
unsafe impl Send for SendStream {}

/// A device and the stream config chosen for it, not yet started.
pub struct ChosenOutput {
    device: cpal::Device,
    config: StreamConfig,
    format: SampleFormat,
    /// What will be opened.
    pub opened: OpenedOutput,
}

/// The device and config that would be opened for `request`, without opening a stream.
pub fn choose(request: &OutputRequest) -> Result<ChosenOutput, String> {
    let (host_name, device) = find_device(&request.device)?;
    let name = device.name().unwrap_or_else(|_| "unnamed".into());
    let configs: Vec<cpal::SupportedStreamConfigRange> = device
        .supported_output_configs()
        .map_err(|e| {
            if request.device == "default" {
                format!("the default audio output cannot be opened ({e}); is there a sound card? Use `--output wav:PATH` to render to a file, or `--output jack`")
            } else {
                format!("output device `{name}` cannot report its formats: {e}")
            }
        })?
        .collect();
    if configs.is_empty() {
        return Err(format!("output device `{name}` offers no output formats"));
    }
    // Fewest channels that cover the routing, else the most the device has.
    let channels = configs
        .iter()
        .map(|c| c.channels())
        .filter(|&c| c >= request.channels)
        .min()
        .or_else(|| configs.iter().map(|c| c.channels()).max())
        .unwrap_or(2);
    let rate_fits = |c: &cpal::SupportedStreamConfigRange| {
        c.min_sample_rate().0 <= request.sample_rate && request.sample_rate <= c.max_sample_rate().0
    };
    let with_channels: Vec<&cpal::SupportedStreamConfigRange> = configs
        .iter()
        .filter(|c| c.channels() == channels)
        .collect();
    let preference = [SampleFormat::F32, SampleFormat::I32, SampleFormat::I16];
    let chosen = preference
        .iter()
        .find_map(|format| {
            with_channels
                .iter()
                .find(|c| c.sample_format() == *format && rate_fits(c))
        })
        .or_else(|| {
            preference
                .iter()
                .find_map(|format| with_channels.iter().find(|c| c.sample_format() == *format))
        })
        .ok_or_else(|| {
            format!(
                "output device `{name}` supports none of f32, i32, i16 with {channels} channels"
            )
        })?;
    let sample_rate = if rate_fits(chosen) {
        request.sample_rate
    } else {
        chosen
            .max_sample_rate()
            .0
            .min(48_000)
            .max(chosen.min_sample_rate().0)
    };
    let buffer_size = match chosen.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max }
            if *min <= request.buffer_size && request.buffer_size <= *max =>
        {
            Some(request.buffer_size)
        }
        _ => None,
    };
    let config = StreamConfig {
        channels,
        sample_rate: cpal::SampleRate(sample_rate),
        buffer_size: buffer_size.map_or(cpal::BufferSize::Default, cpal::BufferSize::Fixed),
    };
    let opened = OpenedOutput {
        description: format!("{host_name}:{name}"),
        channels,
        sample_rate,
        buffer_size,
        sample_format: chosen.sample_format().to_string(),
    };
    Ok(ChosenOutput {
        device,
        config,
        format: chosen.sample_format(),
        opened,
    })
}

fn find_device(wanted: &str) -> Result<(String, cpal::Device), String> {
    let host = cpal::default_host();
    let host_name = host.id().name().to_string();
    if wanted == "default" || wanted.is_empty() {
        return host
            .default_output_device()
            .map(|d| (host_name, d))
            .ok_or_else(|| "there is no default audio output device (no sound card?): use `--output wav:PATH` to render to a file, or `--output jack`".into());
    }
    let devices: Vec<cpal::Device> = host
        .output_devices()
        .map_err(|e| format!("cannot list {host_name} output devices: {e}"))?
        .collect();
    let names: Vec<String> = devices
        .iter()
        .map(|d| d.name().unwrap_or_else(|_| "unnamed".into()))
        .collect();
    let exact = names.iter().position(|n| n == wanted);
    let partial = || {
        let lower = wanted.to_lowercase();
        names.iter().position(|n| n.to_lowercase().contains(&lower))
    };
    match exact.or_else(partial) {
        Some(index) => Ok((
            host_name,
            devices.into_iter().nth(index).ok_or("device vanished")?,
        )),
        None => Err(format!(
            "no output device named `{wanted}`. Devices found: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )),
    }
}

/// Opens the device and starts the engine in `slot` on it; `token` is the slot's owner
/// token for this stream.
pub fn start(
    chosen: ChosenOutput,
    slot: Arc<EngineSlot>,
    token: u64,
    status: Arc<SharedStatus>,
) -> Result<CpalOutput, String> {
    let ChosenOutput {
        device,
        config,
        format,
        opened,
    } = chosen;
    let lost = Arc::new(AtomicBool::new(false));
    let stream = match format {
        SampleFormat::F32 => build::<f32>(&device, &config, slot, token, status, lost.clone()),
        SampleFormat::I32 => build::<i32>(&device, &config, slot, token, status, lost.clone()),
        SampleFormat::I16 => build::<i16>(&device, &config, slot, token, status, lost.clone()),
        other => Err(format!("sample format {other} is not supported")),
    }?;
    stream
        .play()
        .map_err(|e| format!("cannot start {}: {e}", opened.description))?;
    Ok(CpalOutput {
        _stream: SendStream(stream),
        lost,
        opened,
    })
}

/// Device sample formats and how the callback fills them (f32 takes the SIMD interleave).
trait DeviceSample: SizedSample + FromSample<f32> {
    fn render(callback: &mut AudioCallback, data: &mut [Self]);
}

impl DeviceSample for f32 {
    fn render(callback: &mut AudioCallback, data: &mut [f32]) {
        callback.render_f32(data, None);
    }
}

impl DeviceSample for i32 {
    fn render(callback: &mut AudioCallback, data: &mut [i32]) {
        callback.render(data);
    }
}

impl DeviceSample for i16 {
    fn render(callback: &mut AudioCallback, data: &mut [i16]) {
        callback.render(data);
    }
}

fn render<T: DeviceSample>(callback: &mut AudioCallback, data: &mut [T]) {
    T::render(callback, data);
}

fn build<T: DeviceSample>(
    device: &cpal::Device,
    config: &StreamConfig,
    slot: Arc<EngineSlot>,
    token: u64,
    status: Arc<SharedStatus>,
    lost: Arc<AtomicBool>,
) -> Result<cpal::Stream, String> {
    // Errors since the last buffer: ALSA reports a pulled USB device as a stream of
    // backend errors (POLLERR, ENODEV) rather than `DeviceNotAvailable`.
    let errors = Arc::new(AtomicU64::new(0));
    let errors_in_data = errors.clone();
    device
        .build_output_stream::<T, _, _>(
            config,
            move |data: &mut [T], _info| {
                errors_in_data.store(0, Ordering::Relaxed);
                if slot
                    .with(token, |engine| render(&mut engine.callback, data))
                    .is_none()
                {
                    // The engine is being handed over: silence.
                    data.fill(T::EQUILIBRIUM);
                }
            },
            move |error| {
                // Runs on the audio thread: flags and counters only (no allocation); the
                // reconnect thread reports and recovers.
                let already_lost = lost.load(Ordering::Acquire);
                let gone = already_lost
                    || match &error {
                        cpal::StreamError::DeviceNotAvailable => true,
                        cpal::StreamError::BackendSpecific { err } => {
                            let text = err.description.as_str();
                            text.contains("No such device")
                                || text.contains("ENODEV")
                                || errors.fetch_add(1, Ordering::Relaxed) + 1 >= ERRORS_MEAN_LOST
                        }
                    };
                if !gone {
                    status.xruns.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if !already_lost {
                    lost.store(true, Ordering::Release);
                    status.device_lost.store(true, Ordering::Release);
                    calm_dead_stream_thread();
                }
                // The stream is dead and this thread has no audio left to serve. cpal's ALSA
                // worker retries a failing call at once, for ever: a poll whose revents fail
                // (ALSA's pulse plugin after its server died: EIO, about 60 000 times a
                // second) or a write that keeps failing (which never looks at cpal's stop
                // pipe, so that stream cannot be joined). Pausing here keeps either loop from
                // burning a core until the reconnect thread closes the stream (or leaves it
                // behind, see `reconnect::release`).
                std::thread::sleep(DEAD_STREAM_PAUSE);
            },
            None,
        )
        .map_err(|e| format!("cannot open the output stream: {e}"))
}

/// One line per output device of every compiled-in host, with its formats.
pub fn list_devices() -> Vec<String> {
    let mut lines = Vec::new();
    for host_id in cpal::available_hosts() {
        let host_name = host_id.name().to_string();
        let Ok(host) = cpal::host_from_id(host_id) else {
            lines.push(format!("{host_name}: (unavailable)"));
            continue;
        };
        let default_name = host.default_output_device().and_then(|d| d.name().ok());
        match host.output_devices() {
            Ok(devices) => {
                let mut any = false;
                for device in devices {
                    any = true;
                    let is_default = device.name().ok() == default_name;
                    lines.push(describe_device(&host_name, &device, is_default));
                }
                if !any {
                    lines.push(format!("{host_name}: (no output devices)"));
                }
            }
            Err(e) => lines.push(format!("{host_name}: (cannot list devices: {e})")),
        }
    }
    lines.push(super::jack_output::describe_server());
    lines
}

fn describe_device(host: &str, device: &cpal::Device, is_default: bool) -> String {
    let name = device.name().unwrap_or_else(|_| "unnamed".into());
    let formats = match device.supported_output_configs() {
        Ok(configs) => {
            let mut parts: Vec<String> = configs
                .map(|c| {
                    format!(
                        "{}ch {}-{}Hz {}",
                        c.channels(),
                        c.min_sample_rate().0,
                        c.max_sample_rate().0,
                        c.sample_format()
                    )
                })
                .collect();
            parts.sort();
            parts.dedup();
            if parts.len() > 6 {
                let more = parts.len() - 6;
                parts.truncate(6);
                parts.push(format!("… {more} more"));
            }
            parts.join(", ")
        }
        Err(e) => format!("formats unknown: {e}"),
    };
    format!(
        "{host}: {name}{} [{formats}]",
        if is_default { " (default)" } else { "" }
    )
}

impl super::reconnect::LiveStream for CpalOutput {
    fn is_lost(&self) -> bool {
        CpalOutput::is_lost(self)
    }
}

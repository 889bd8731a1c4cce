//! `backline play`: loads the show, opens the output, starts the player and the terminal UI
//! (or logs state changes when there is no terminal), in the privilege order of DESIGN.md.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::console::{self, ShowStatus, StatusLine, TerminalGuard};
use crate::engine::handover::{Engine, EngineSlot};
use crate::engine::jack_output::{self, CycleHook, JackOpen};
use crate::engine::output::{self, OpenedOutput, OutputRequest};
use crate::engine::reconnect::{LiveStream, Opener, Presence, ReconnectSettings, Supervisor};
use crate::engine::render::{wav_path, RenderSettings, WavRender};
use crate::engine::Request;
use crate::engine::{
    transport, AudioCallback, FirstCallbackHook, Player, RunSummary, SharedStatus, SongObserver,
};
use crate::library::{Diagnostic, MidiTarget, Show, Song};
use crate::midi::{
    self, ClockCommand, ClockSettings, ClockSong, ClockThread, ControlAction, Outputs,
};
use crate::rt::{self, CpuSet, Role, RtSettings};
use crate::service::{self, ControlSocket, ReloadSource, Service, ServiceParts, Signals};
use crate::stats::{StatsCollector, TimingReport};
use crate::timing::anchor::anchor;
use crate::timing::{AudioClock, TempoMap};

/// Device periods of silence before the first song starts.
const WARM_UP_CALLBACKS: u64 = 16;
/// Least warm-up when a beat clock runs, so its audio-clock estimate has locked.
const CLOCK_WARM_UP: Duration = Duration::from_secs(1);

/// Least time the JACK MIDI lane queues ahead of the audio (also at least four periods).
const JACK_MIDI_LOOKAHEAD: Duration = Duration::from_millis(30);

/// The audio output chosen before songs are prepared.
enum Chosen {
    Cpal(output::ChosenOutput),
    Jack(JackOpen),
}

impl Chosen {
    fn opened(&self) -> &OpenedOutput {
        match self {
            Chosen::Cpal(c) => &c.opened,
            Chosen::Jack(j) => &j.opened,
        }
    }
}

/// Options of `backline play`.
#[derive(Debug, Clone, Default)]
pub struct PlayOptions {
    /// Playlist name or file (`--playlist`).
    pub playlist: Option<String>,
    /// Output device overriding the config (`--output`).
    pub output: Option<String>,
    /// `--no-rt`.
    pub no_rt: bool,
    /// `--rt-priority N`: audio priority N, clock N+10 (at most 99).
    pub rt_priority: Option<u8>,
    /// `--loop-set`: the first song follows the last, until stopped.
    pub loop_set: bool,
    /// `--speed X`: WAV renders only, X times faster than real time.
    pub speed: Option<f64>,
    /// `rehearse`: end with the figures of every song.
    pub rehearsal: bool,
    /// `rehearse --report FILE.json`.
    pub report: Option<std::path::PathBuf>,
    /// `rehearse --plot FILE.svg`.
    pub plot: Option<std::path::PathBuf>,
    /// `--control-socket PATH`.
    pub control_socket: Option<std::path::PathBuf>,
    /// `--no-sandbox`: skip capability drop, Landlock and seccomp (debugging only).
    pub no_sandbox: bool,
}

/// Feeds the clock thread: each prepared song's tempo map and MIDI file, each selected
/// song's `midi_event`; drops the songs the clock thread hands back.
struct MidiFeeder {
    commands: rtrb::Producer<ClockCommand>,
    trash: rtrb::Consumer<Box<ClockSong>>,
}

impl MidiFeeder {
    fn send(&mut self, command: ClockCommand) {
        let mut command = command;
        for _ in 0..50 {
            match self.commands.push(command) {
                Ok(()) => return,
                Err(rtrb::PushError::Full(back)) => {
                    command = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        error!("the clock thread is not taking commands: MIDI for a song dropped");
    }
}

impl SongObserver for MidiFeeder {
    fn prepared(
        &mut self,
        id: u64,
        index: usize,
        song: &Song,
        tempo: Option<&TempoMap>,
    ) -> Result<(), Diagnostic> {
        while self.trash.pop().is_ok() {}
        let schedule = match &song.midi_playback {
            Some(playback) => Some(midi::load_schedule(
                &playback.file,
                &playback.exclude_midi_channels,
            )?),
            None => None,
        };
        self.send(ClockCommand::Prepare(Box::new(ClockSong {
            id,
            song_tag: u32::try_from(index + 1).unwrap_or(u32::MAX),
            tempo: tempo.cloned(),
            schedule,
        })));
        Ok(())
    }

    fn dropped(&mut self, id: u64) {
        self.send(ClockCommand::Forget(id));
    }

    fn selected(&mut self, song: &Song) {
        if let Some(event) = song.midi_event {
            let (bytes, len) = event.to_bytes();
            self.send(ClockCommand::SendNow(bytes, len as u8));
        }
    }
}

/// Opens the footswitch's MIDI input; its presses become player requests.
fn open_footswitch(
    control: &crate::library::MidiControlConfig,
    requests: &mpsc::Sender<Request>,
) -> Result<midir::MidiInputConnection<()>, String> {
    let bindings: Vec<(crate::library::MidiEvent, ControlAction)> = [
        (control.play, ControlAction::Play),
        (control.stop, ControlAction::Stop),
        (control.next, ControlAction::Next),
        (control.previous, ControlAction::Previous),
    ]
    .into_iter()
    .filter_map(|(event, action)| event.map(|e| (e, action)))
    .collect();
    let requests = requests.clone();
    let connection = midi::start_control(&control.port, bindings, move |action| {
        let request = match action {
            ControlAction::Play => Request::Play,
            ControlAction::Stop => Request::Stop,
            ControlAction::Next => Request::Next,
            ControlAction::Previous => Request::Previous,
        };
        let _ = requests.send(request);
    })?;
    info!("footswitch: listening on MIDI input `{}`", control.port);
    Ok(connection)
}

/// Real-time settings from the config and command line.
pub fn rt_settings(show: &Show, options: &PlayOptions) -> RtSettings {
    let realtime = &show.config.realtime;
    let mut cpus = CpuSet::NONE;
    for &cpu in &realtime.cpus {
        match cpus.with(cpu) {
            Some(more) => cpus = more,
            None => warn!("realtime.cpus: CPU {cpu} is out of range (0-63), ignored"),
        }
    }
    let (audio_priority, clock_priority) = match options.rt_priority {
        Some(p) => (p, p.saturating_add(10).min(99)),
        None => (realtime.audio_priority, realtime.clock_priority),
    };
    RtSettings {
        enabled: realtime.enabled && !options.no_rt,
        audio_priority,
        clock_priority,
        cpus,
    }
}

/// Logs every problem the library and setlist have; returns how many there were.
pub fn report_library_problems(show: &Show) -> usize {
    for warning in &show.library.warnings {
        warn!("{warning}");
    }
    for problem in &show.library.errors {
        error!("{problem}");
    }
    show.library.errors.len()
}

/// Opens the JACK client `name` again (after its server went away) with the same ports, the
/// JACK MIDI ports re-registered, on the same engine.
fn jack_opener(name: String, channels: u16, rate: u32, status: Arc<SharedStatus>) -> Opener {
    Box::new(move |mut engine: Box<Engine>, slot: &Arc<EngineSlot>| {
        let open = match jack_output::open(&name, channels, rate) {
            Ok(open) => open,
            Err(e) => return Err((e, engine)),
        };
        if open.opened.sample_rate != rate {
            let e = format!(
                "the JACK server is back at {} Hz, not {rate} Hz: the show's audio is prepared for {rate} Hz; restart backline or the server at {rate} Hz",
                open.opened.sample_rate
            );
            return Err((e, engine));
        }
        let connections = engine
            .hook
            .as_mut()
            .map(|hook| hook.reattach(open.client()))
            .unwrap_or_default();
        let token = slot.put(engine);
        match jack_output::start(open, slot.clone(), token, status.clone(), &connections) {
            Ok(stream) => Ok(Box::new(stream) as Box<dyn LiveStream>),
            Err(e) => match slot.take(Duration::from_secs(2)) {
                Some(engine) => Err((e, engine)),
                None => {
                    error!("{e}; the audio state is stuck in the failed stream");
                    Err((e, Box::new(empty_engine(rate, status.clone()))))
                }
            },
        }
    })
}

/// Opens the cpal device again (after it reported itself gone) on the same engine.
fn cpal_opener(request: OutputRequest, rate: u32, status: Arc<SharedStatus>) -> Opener {
    Box::new(move |engine: Box<Engine>, slot: &Arc<EngineSlot>| {
        let chosen = match output::choose(&request) {
            Ok(chosen) => chosen,
            Err(e) => return Err((e, engine)),
        };
        if chosen.opened.sample_rate != rate {
            let e = format!(
                "the audio device is back but opens at {} Hz, not {rate} Hz",
                chosen.opened.sample_rate
            );
            return Err((e, engine));
        }
        let token = slot.put(engine);
        match output::start(chosen, slot.clone(), token, status.clone()) {
            Ok(stream) => Ok(Box::new(stream) as Box<dyn LiveStream>),
            Err(e) => match slot.take(Duration::from_secs(2)) {
                Some(engine) => Err((e, engine)),
                None => {
                    error!("{e}; the audio state is stuck in the failed stream");
                    Err((e, Box::new(empty_engine(rate, status.clone()))))
                }
            },
        }
    })
}

/// A silent engine, for the case a failed stream never gives the real one back.
fn empty_engine(rate: u32, _status: Arc<SharedStatus>) -> Engine {
    let (transport, control) = transport::transport();
    Engine {
        callback: AudioCallback::new(transport, control.status, 2, rate, None, None),
        hook: None,
    }
}

/// Whether an ALSA device may be back: the set of sound device nodes grew since the loss, or a
/// PulseAudio / PipeWire server (ALSA's `pulse` plugin, often behind `default`) that was seen
/// gone accepts clients again.
fn alsa_presence() -> Presence {
    let count = || {
        std::fs::read_dir("/dev/snd")
            .map(|dir| dir.flatten().count())
            .unwrap_or(0)
    };
    let sockets = pulse_sockets();
    let mut at_loss: Option<usize> = None;
    let mut pulse_seen_gone = false;
    // The reconnect thread asks every few ms; a sound server is knocked on at most every
    // 250 ms.
    let mut probed_at: Option<std::time::Instant> = None;
    Box::new(move || {
        let now = count();
        let new_node = match at_loss {
            None => {
                at_loss = Some(now);
                false
            }
            Some(before) => now > before,
        };
        let due = probed_at.map_or(true, |at| {
            at.elapsed() >= crate::engine::reconnect::FIRST_RETRY
        });
        let mut pulse_back = false;
        if due && !sockets.is_empty() {
            probed_at = Some(std::time::Instant::now());
            let pulse_up = sockets.iter().any(|socket| unix_socket_accepts(socket));
            pulse_back = pulse_seen_gone && pulse_up;
            pulse_seen_gone = !pulse_up;
        }
        let back = new_node || pulse_back;
        if back {
            // Counted again from here: a later loss (or a failed attempt) starts from the
            // nodes present now, so it backs off until something new appears.
            at_loss = None;
        }
        back
    })
}

/// Where libpulse (and so ALSA's pulse plugin) looks for its server's socket: `PULSE_SERVER`'s
/// `unix:` entries, `$PULSE_RUNTIME_PATH/native`, `$XDG_RUNTIME_DIR/pulse/native` and the
/// system-wide daemon's.
fn pulse_sockets() -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    let mut sockets = Vec::new();
    if let Ok(servers) = std::env::var("PULSE_SERVER") {
        for entry in servers.split_whitespace() {
            // An entry may start with `{machine-id}`.
            let entry = entry.rsplit_once('}').map_or(entry, |(_, rest)| rest);
            if let Some(path) = entry.strip_prefix("unix:") {
                sockets.push(PathBuf::from(path));
            } else if entry.starts_with('/') {
                sockets.push(PathBuf::from(entry));
            }
        }
    }
    if let Some(dir) = std::env::var_os("PULSE_RUNTIME_PATH") {
        sockets.push(PathBuf::from(dir).join("native"));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        sockets.push(PathBuf::from(dir).join("pulse/native"));
    }
    sockets.push(PathBuf::from("/run/pulse/native"));
    sockets.dedup();
    sockets
}

/// Whether a server listens on the Unix socket at `path` (a killed server leaves its socket
/// file behind, so the file alone says nothing). Non-blocking: a full backlog counts as
/// listening.
fn unix_socket_accepts(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() {
        return false;
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain syscalls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return false;
        }
        let r = libc::connect(
            fd,
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        libc::close(fd);
        r == 0 || errno == libc::EAGAIN || errno == libc::EINPROGRESS
    }
}

/// Runs `backline play`. Returns the process exit code.
pub fn run(target: &Path, options: &PlayOptions) -> i32 {
    // Signals first: a SIGTERM, SIGHUP or SIGUSR1 during loading must not kill the process.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let signals = Signals::register(!interactive);
    let (quit, usr1) = (signals.quit.clone(), signals.usr1.clone());
    rt::fix_malloc_mmap_threshold();
    let show = match Show::load(target) {
        Ok(show) => show,
        Err(errors) => {
            for e in errors {
                error!("{e}");
            }
            return 1;
        }
    };
    report_library_problems(&show);
    let setlist = match show.setlist(options.playlist.as_deref()) {
        Ok(setlist) => setlist,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    for missing in &setlist.missing {
        error!("{missing}");
    }
    if setlist.songs.is_empty() {
        error!(
            "nothing to play: the setlist `{}` has no loadable song",
            setlist.name
        );
        return 1;
    }
    info!("setlist `{}`: {} songs", setlist.name, setlist.songs.len());
    // The control socket is opened with the devices, before any privilege is dropped.
    let control_socket = match service::socket_path(options.control_socket.as_deref(), &show.config)
    {
        Some(path) => match ControlSocket::bind(&path) {
            Ok(socket) => Some(socket),
            Err(e) => {
                warn!("no control socket: {e}");
                None
            }
        },
        None => {
            info!("no control socket: neither RUNTIME_DIRECTORY nor XDG_RUNTIME_DIR is set (--control-socket PATH gives one)");
            None
        }
    };
    let song_names: Vec<String> = setlist.songs.iter().map(|s| s.name.clone()).collect();
    let output_names: Vec<String> = show
        .config
        .midi
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .collect();
    let setlist_name = setlist.name.clone();

    let device = options
        .output
        .clone()
        .unwrap_or_else(|| show.config.audio.device.clone());
    let settings = rt_settings(&show, options);
    let probe = rt::probe().summary();
    let (mut transport, control) = transport::transport();
    let status = control.status.clone();
    let (anchor_writer, anchor_reader) = anchor();
    transport.set_anchor(anchor_writer);

    // Choose the output first: the player needs its rate and channel count to prepare songs.
    let wav = wav_path(&device).map(Path::to_path_buf);
    let request = OutputRequest {
        device: device.clone(),
        channels: show.config.output_channels(),
        sample_rate: show.config.audio.sample_rate,
        buffer_size: show.config.audio.buffer_size,
    };
    let chosen = match &wav {
        Some(_) => None,
        None => {
            let result = match jack_output::client_name(&device) {
                Some(name) => {
                    jack_output::open(name, request.channels, request.sample_rate).map(Chosen::Jack)
                }
                None => output::choose(&request).map(Chosen::Cpal),
            };
            match result {
                Ok(chosen) => Some(chosen),
                Err(e) => {
                    error!("{e}");
                    return 1;
                }
            }
        }
    };
    if options.speed.is_some() && wav.is_none() {
        warn!("--speed only applies to `--output wav:PATH`; a device plays in real time");
    }
    let (rate, channels, description) = match &chosen {
        Some(c) => (
            c.opened().sample_rate,
            c.opened().channels,
            c.opened().description.clone(),
        ),
        None => (request.sample_rate, request.channels, device.clone()),
    };
    let role = if wav.is_some() {
        Role::Render
    } else {
        Role::Audio
    };
    // Runs on the first callback of every stream, so a stream that replaces a lost one
    // promotes its new thread too.
    let promote: FirstCallbackHook = Box::new(move || {
        // The backend's thread has no name of ours: give it one (ps, tests, the rt report).
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"backline-audio".as_ptr()) };
        rt::prefault_stack();
        rt::promote_current_thread(role, &settings, &probe);
    });

    let mut player = Player::new(
        show.config.clone(),
        setlist,
        control,
        rate,
        usize::from(channels),
        description,
    );
    player.set_loop_set(options.loop_set);
    let (stats, timing_tx) = StatsCollector::start();
    let timing_tx = timing_tx.tag_device_events();
    let (audio_clock_writer, audio_clock) = AudioClock::new(rate);
    let mut clock = None;
    let mut jack_midi = None;
    if !show.config.midi.outputs.is_empty() {
        let outputs = Outputs::open(&show.config.midi.outputs, settings);
        let feeds = match &chosen {
            Some(Chosen::Jack(open)) => {
                let mut ports = midi::jack::register(
                    open.client(),
                    open.requested_name(),
                    &show.config.midi.outputs,
                    stats.sender(),
                );
                let feeds = std::mem::take(&mut ports.feeds);
                jack_midi = Some(ports);
                feeds
            }
            _ => {
                for config in &show.config.midi.outputs {
                    if matches!(config.target, MidiTarget::Jack(_)) {
                        warn!(
                            "MIDI output `{}`: a `jack:` output is a port of the JACK audio output, which this run does not use (`audio.device: jack` or `--output jack`); the show plays without it",
                            config.name
                        );
                    }
                }
                Vec::new()
            }
        };
        let period = chosen
            .as_ref()
            .and_then(|c| c.opened().buffer_size)
            .unwrap_or(show.config.audio.buffer_size);
        let lookahead_min = (JACK_MIDI_LOOKAHEAD.as_secs_f64() * f64::from(rate)) as u32;
        let (commands_tx, commands_rx) = rtrb::RingBuffer::new(64);
        let settings = ClockSettings {
            sample_rate: rate,
            spin_us: show.config.realtime.spin_us,
            spin_max_us: show.config.realtime.spin_max_us,
            rt: settings,
            probe,
            persist_tempo: show.config.midi.persist_tempo,
            jack_lookahead_frames: (4 * period).max(lookahead_min),
            standby: show.config.realtime.clock_standby,
        };
        match ClockThread::start(
            outputs.slots.clone(),
            feeds,
            audio_clock,
            anchor_reader,
            commands_rx,
            stats.sender(),
            settings,
        ) {
            Ok((thread, trash)) => {
                player.set_observer(Box::new(MidiFeeder {
                    commands: commands_tx,
                    trash,
                }));
                clock = Some((thread, outputs));
            }
            Err(e) => error!("{e}: the show plays without MIDI"),
        }
    }
    // A file render starts with the first song; a device first runs a few periods of
    // silence, so that start-up (page faults, RT promotion, a JACK client joining the graph)
    // cannot cost the first notes of the show.
    if !player.load_first(wav.is_some()) {
        error!("nothing to play: every song in the set failed to load");
        return 1;
    }

    let mut callback = AudioCallback::new(
        transport,
        status.clone(),
        usize::from(channels),
        rate,
        (wav.is_none()).then_some(promote),
        Some(timing_tx),
    );
    callback.set_audio_clock(audio_clock_writer);
    // Keep the output alive for the whole run.
    enum Running {
        Device(Supervisor),
        Wav(WavRender),
    }
    let on_reconnect = show.config.audio.on_reconnect;
    let started: Result<(Running, OpenedOutput), String> = match (&wav, chosen) {
        (Some(path), _) => {
            let hook: FirstCallbackHook = Box::new(move || {
                rt::prefault_stack();
                rt::promote_current_thread(Role::Render, &settings, &probe);
            });
            WavRender::start(
                RenderSettings {
                    path: path.clone(),
                    channels,
                    sample_rate: rate,
                    period_frames: show.config.audio.buffer_size,
                    stop_at_set_end: !interactive,
                    speed: options.speed.unwrap_or(1.0),
                    on_thread_start: Some(hook),
                },
                callback,
            )
            .map(|render| {
                let opened = render.opened.clone();
                (Running::Wav(render), opened)
            })
        }
        (None, Some(Chosen::Cpal(chosen))) => {
            let slot = Arc::new(EngineSlot::new(Engine {
                callback,
                hook: None,
            }));
            let token = slot.owner();
            output::start(chosen, slot.clone(), token, status.clone()).and_then(|first| {
                let opened = first.opened.clone();
                let settings = ReconnectSettings {
                    device: opened.description.clone(),
                    on_reconnect,
                    opener: cpal_opener(request.clone(), rate, status.clone()),
                    presence: Some(alsa_presence()),
                };
                Supervisor::start(Box::new(first), slot, status.clone(), settings)
                    .map(|supervisor| (Running::Device(supervisor), opened))
            })
        }
        (None, Some(Chosen::Jack(open))) => {
            let hook = jack_midi
                .as_mut()
                .and_then(|ports| ports.sink.take())
                .map(|sink| Box::new(sink) as Box<dyn CycleHook>);
            let connections = jack_midi
                .as_ref()
                .map(|ports| ports.connections.clone())
                .unwrap_or_default();
            let name = open.requested_name().to_string();
            let slot = Arc::new(EngineSlot::new(Engine { callback, hook }));
            let token = slot.owner();
            jack_output::start(open, slot.clone(), token, status.clone(), &connections).and_then(
                |first| {
                    let opened = first.opened.clone();
                    let settings = ReconnectSettings {
                        device: opened.description.clone(),
                        on_reconnect,
                        opener: jack_opener(name, channels, rate, status.clone()),
                        presence: Some(Box::new(jack_output::server_socket_present)),
                    };
                    Supervisor::start(Box::new(first), slot, status.clone(), settings)
                        .map(|supervisor| (Running::Device(supervisor), opened))
                },
            )
        }
        (None, None) => Err("no output chosen".to_string()),
    };
    let (running, opened) = match started {
        Ok(started) => started,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    info!(
        "output {}: {} channels, {} Hz, {} frames/period, {}",
        opened.description,
        opened.channels,
        opened.sample_rate,
        opened
            .buffer_size
            .map_or("default".to_string(), |b| b.to_string()),
        opened.sample_format
    );
    if settings.enabled {
        rt::lock_memory();
    }
    // DESIGN.md "Privileges, in order", steps 4-7, on every thread.
    if let Err(e) = crate::sandbox::apply(&super::sandbox::plan(&show, options, wav.as_deref())) {
        error!("{e}");
        return 1;
    }
    if wav.is_none() {
        // With a beat clock, also give the audio clock time to lock to the device.
        let settle = if clock.is_some() {
            CLOCK_WARM_UP
        } else {
            Duration::ZERO
        };
        let warm = std::time::Instant::now();
        while (status.callbacks.load(std::sync::atomic::Ordering::Relaxed) < WARM_UP_CALLBACKS
            || warm.elapsed() < settle)
            && warm.elapsed() < Duration::from_secs(3)
            && !quit.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        player.start();
    }

    let (request_tx, request_rx) = mpsc::channel();
    // The footswitch feeds the same requests as the keyboard; SIGHUP may re-open it.
    let mut footswitch =
        show.config.midi.control.as_ref().and_then(|control| {
            match open_footswitch(control, &request_tx) {
                Ok(connection) => Some(connection),
                Err(e) => {
                    warn!("footswitch not available: {e}; keys and signals still work");
                    None
                }
            }
        });
    let footswitch_requests = request_tx.clone();
    let rebind: service::Rebind = Box::new(move |control| {
        match control {
            Some(control) => {
                // The new connection is open before the old one closes.
                let connection = open_footswitch(control, &footswitch_requests)?;
                drop(footswitch.replace(connection));
            }
            None => {
                drop(footswitch.take());
                info!("footswitch: closed (no midi.control)");
            }
        }
        Ok(())
    });
    let service = Service::start(ServiceParts {
        signals,
        status: status.clone(),
        clock_heartbeat: clock.as_ref().map(|(thread, _)| thread.heartbeat()),
        requests: request_tx.clone(),
        control: control_socket,
        reload: ReloadSource {
            target: target.to_path_buf(),
            playlist: options.playlist.clone(),
            config: show.config.clone(),
            footswitch: Some(rebind),
        },
        audio_role: role,
        setlist: setlist_name.clone(),
    });
    let period_frames = opened.buffer_size.unwrap_or(show.config.audio.buffer_size);
    let period_ns = i64::from(period_frames) * 1_000_000_000 / i64::from(rate.max(1));
    let summary: RunSummary = if interactive {
        let guard = TerminalGuard::enter();
        if let Err(e) = &guard {
            warn!("cannot switch the terminal to raw mode: {e}");
        }
        console::spawn_key_reader(request_tx);
        let mut sink = service.sink(
            ShowStatus::new(
                Some(StatusLine::new(role)),
                &stats,
                usr1,
                period_ns,
                output_names.clone(),
            ),
            &stats,
        );
        let summary = player.run(&request_rx, &quit, false, &mut sink);
        drop(guard);
        summary
    } else {
        drop(request_tx);
        let mut sink = service.sink(
            ShowStatus::new(None, &stats, usr1, period_ns, output_names.clone()),
            &stats,
        );
        player.run(&request_rx, &quit, true, &mut sink)
    };
    service.stopping();
    // The transport has stopped: the clock sends Stop and All Notes Off before it ends.
    if let Some((thread, outputs)) = clock.take() {
        thread.finish();
        for slot in &outputs.slots {
            let dropped = slot.dropped.load(std::sync::atomic::Ordering::Relaxed);
            if dropped > 0 {
                warn!(
                    "MIDI output `{}`: {dropped} bytes dropped (the device was missing or its buffer full)",
                    slot.name
                );
            }
        }
    }
    rt::log_pending_reports();
    drop(service);

    match running {
        Running::Wav(render) => match render.finish() {
            Ok(frames) => info!(
                "wrote {frames} frames ({:.2} s) to {}",
                frames as f64 / f64::from(rate),
                opened.description
            ),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        },
        // Lets the last buffers play, then closes the device.
        Running::Device(supervisor) => supervisor.finish(),
    }
    for (name, counters) in jack_midi.iter().flat_map(|ports| ports.counters.iter()) {
        let late = counters.late.load(std::sync::atomic::Ordering::Relaxed);
        let dropped = counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
        if late > 0 || dropped > 0 {
            warn!("JACK MIDI output `{name}`: {late} messages late (sent at the start of a later cycle), {dropped} dropped");
        }
    }
    let xruns = status.xruns.load(std::sync::atomic::Ordering::Relaxed);
    let underruns = status
        .underrun_frames
        .load(std::sync::atomic::Ordering::Relaxed);
    info!(
        "done: {} started, {} finished, {} skipped, {xruns} xruns, {underruns} stem-frames of loader underrun",
        summary.started, summary.finished, summary.skipped,
    );
    let figures = stats.finish();
    let device_events = crate::stats::device_events();
    let report = TimingReport {
        figures: &figures,
        period_ns,
        xruns,
        output_names: &output_names,
        device_events: &device_events,
    };
    if options.rehearsal {
        print!(
            "{}",
            super::report::per_song_table(&figures, &song_names, rate, &device_events)
        );
        println!("== overall");
    }
    println!("{report}");
    for role in [Role::Audio, Role::Render, Role::Clock] {
        if let Some(rt) = rt::report(role) {
            println!("real-time: {rt}");
        }
    }
    if let Some(sandbox) = crate::sandbox::current() {
        println!("{sandbox}");
    }
    if let Some(path) = &options.plot {
        match super::plot::write_svg(path, &figures, &song_names) {
            Ok(()) => info!("rehearsal plot written to {}", path.display()),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        }
    }
    if let Some(path) = &options.report {
        let facts = super::report::RunFacts {
            setlist: &setlist_name,
            song_names: &song_names,
            output_names: &output_names,
            device_events: &device_events,
            device: &opened.description,
            period_ns,
            xruns,
            sample_rate: rate,
        };
        let json = super::report::json_report(&figures, &facts);
        match super::report::write_json(path, &json) {
            Ok(()) => info!("rehearsal report written to {}", path.display()),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        }
    }
    0
}

//! The player: walks the setlist, prepares (pre-rolls) songs off the RT thread, feeds the
//! transport, turns requests (keys, later footswitch and socket) into commands, turns the
//! callback's events into log lines, and publishes a status snapshot.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::mixer::{db_to_gain, routes_for, SongMixer, StemMix};
use super::transport::{Command, Event, PreparedSong, TransportControl};
use crate::library::{Config, Diagnostic, OnReconnect, Setlist, Song};
use crate::media;
use crate::timing::TempoMap;

/// How long a song may take to fill its rings before it starts anyway.
const PREROLL_TIMEOUT: Duration = Duration::from_secs(2);
/// How far a seek jumps in a song without sections.
const SEEK_SECONDS: f64 = 10.0;
/// How often the control loop wakes when nothing happens.
const TICK: Duration = Duration::from_millis(10);

/// What the musician (keys, footswitch, socket) asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Play if stopped, stop (back to the top of the song) if playing.
    TogglePlay,
    /// Start playing (no-op when playing).
    Play,
    /// Stop (no-op when stopped).
    Stop,
    /// Pause where the song is, or resume from there (the beat clock resumes with Song
    /// Position Pointer + Continue).
    TogglePause,
    /// Jump within the song: to the next (`true`) or previous section start when the song
    /// has sections and a tempo map, else 10 s forward or back.
    Seek {
        /// Forward (true) or back.
        forward: bool,
    },
    /// Next song, immediately.
    Next,
    /// Previous song.
    Previous,
    /// Leave the player.
    Quit,
    /// Change a track's gain (ramped).
    SetGain {
        /// Track name.
        track: String,
        /// Gain in dB.
        db: f32,
    },
    /// Play from a re-read config and setlist (SIGHUP): the song playing plays on; the rest
    /// applies from the next song.
    Reload(Box<Reload>),
}

/// A re-read config and setlist, already validated.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The new config (routing, gains; device settings need a restart).
    pub config: Config,
    /// The new setlist.
    pub setlist: Setlist,
}

impl PartialEq for Reload {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
            && self.setlist.name == other.setlist.name
            && self.setlist.songs == other.setlist.songs
    }
}

/// A snapshot of the player for the status line (and later STATUS= and the socket).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusSnapshot {
    /// Current song name.
    pub song: String,
    /// 1-based position in the setlist.
    pub index: usize,
    /// Songs in the setlist.
    pub total: usize,
    /// Seconds into the song.
    pub position_seconds: f64,
    /// Song length in seconds, when known.
    pub length_seconds: Option<f64>,
    /// Tempo at the position, when the song has a tempo map.
    pub bpm: Option<f64>,
    /// Output device description.
    pub device: String,
    /// Device xruns so far.
    pub xruns: u64,
    /// Whether audio is playing.
    pub playing: bool,
    /// True once the last song ended.
    pub set_ended: bool,
    /// True while the audio device is lost (and being reopened).
    pub device_lost: bool,
}

/// Where the status goes (a terminal status line, or nowhere when logging instead).
pub trait StatusSink {
    /// Called about every 10 ms with the latest snapshot.
    fn update(&mut self, status: &StatusSnapshot);
}

/// Told about songs as the player prepares and selects them (the MIDI side hangs here, so
/// the engine does not depend on it).
pub trait SongObserver {
    /// A song (setlist position `index`) was prepared under `id`; an error skips the song
    /// like a broken audio file.
    fn prepared(
        &mut self,
        id: u64,
        index: usize,
        song: &Song,
        tempo: Option<&TempoMap>,
    ) -> Result<(), Diagnostic>;
    /// A song became the current one (started, or selected while stopped).
    fn selected(&mut self, song: &Song);
    /// The preparation `id` is finished with (played out, stopped, skipped, replaced).
    fn dropped(&mut self, id: u64);
}

/// Outcome of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunSummary {
    /// Songs that started playing.
    pub started: usize,
    /// Songs that played to the end.
    pub finished: usize,
    /// Songs skipped because they could not be opened.
    pub skipped: usize,
    /// Whether the set ran to its end (as opposed to quit).
    pub set_ended: bool,
}

struct SongInfo {
    index: usize,
    length_frames: Option<u64>,
}

/// The control side of playback.
pub struct Player {
    config: Config,
    setlist: Setlist,
    control: TransportControl,
    device_rate: u32,
    out_channels: usize,
    device: String,
    next_id: u64,
    prepared: HashMap<u64, SongInfo>,
    current: Option<u64>,
    queued: Option<u64>,
    tempo_maps: HashMap<usize, Option<TempoMap>>,
    warned_routes: BTreeSet<String>,
    summary: RunSummary,
    playing: bool,
    /// `SharedStatus::reconnects` when last looked at.
    reconnects_seen: u64,
    /// `--loop-set`: the first song follows the last.
    loop_set: bool,
    observer: Option<Box<dyn SongObserver>>,
    skipped_songs: BTreeSet<usize>,
}

impl Player {
    /// A player for `setlist` on an output of `out_channels` channels at `device_rate`.
    pub fn new(
        config: Config,
        setlist: Setlist,
        control: TransportControl,
        device_rate: u32,
        out_channels: usize,
        device: String,
    ) -> Player {
        Player {
            config,
            setlist,
            control,
            device_rate,
            out_channels,
            device,
            next_id: 1,
            prepared: HashMap::new(),
            current: None,
            queued: None,
            tempo_maps: HashMap::new(),
            warned_routes: BTreeSet::new(),
            summary: RunSummary::default(),
            playing: false,
            reconnects_seen: 0,
            loop_set: false,
            observer: None,
            skipped_songs: BTreeSet::new(),
        }
    }

    /// Registers the observer told about prepared and selected songs.
    pub fn set_observer(&mut self, observer: Box<dyn SongObserver>) {
        self.observer = Some(observer);
    }

    /// Loads the first playable song (pre-rolled) and queues the one after, before the
    /// output starts, so the first callback already has audio.
    pub fn load_first(&mut self, start_playing: bool) -> bool {
        let Some((index, song)) = self.prepare_from(0, 1) else {
            return false;
        };
        let id = song.id;
        self.wait_preroll(&song);
        self.send(Command::Load(song));
        self.current = Some(id);
        if start_playing {
            self.send(Command::Play);
            self.playing = true;
        }
        self.queue_after(index);
        true
    }

    /// Starts playing the loaded song (after the output has warmed up).
    pub fn start(&mut self) {
        self.play();
    }

    /// Runs until the set ends (when `exit_at_set_end`), a Quit request, or `quit` is set.
    pub fn run(
        &mut self,
        requests: &Receiver<Request>,
        quit: &AtomicBool,
        exit_at_set_end: bool,
        sink: &mut dyn StatusSink,
    ) -> RunSummary {
        loop {
            if quit.load(Ordering::Relaxed) {
                break;
            }
            match requests.recv_timeout(TICK) {
                Ok(Request::Quit) => break,
                Ok(request) => {
                    // Act on the transport as it is now (an auto-advance may be pending).
                    self.drain_events();
                    self.handle_request(request);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // No more requests can come (no keyboard): just keep playing.
                    std::thread::sleep(TICK);
                }
            }
            self.drain_events();
            self.drain_trash();
            self.check_device();
            crate::rt::log_pending_reports();
            sink.update(&self.snapshot());
            if exit_at_set_end && self.summary.set_ended {
                break;
            }
        }
        self.send(Command::Stop);
        self.playing = false;
        self.summary
    }

    /// The current status.
    pub fn snapshot(&self) -> StatusSnapshot {
        let status = &self.control.status;
        let id = self.current.unwrap_or(0);
        let info = self.prepared.get(&id);
        let position_frames = if status.current_id.load(Ordering::Relaxed) == id {
            status.position.load(Ordering::Relaxed)
        } else {
            0
        };
        let rate = f64::from(self.device_rate);
        let position_seconds = position_frames as f64 / rate;
        let bpm = info
            .and_then(|i| self.tempo_maps.get(&i.index))
            .and_then(|m| m.as_ref())
            .map(|m| m.bpm_at_seconds(position_seconds));
        StatusSnapshot {
            song: info
                .and_then(|i| self.setlist.songs.get(i.index))
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            index: info.map_or(0, |i| i.index + 1),
            total: self.setlist.songs.len(),
            position_seconds,
            length_seconds: info.and_then(|i| i.length_frames).map(|f| f as f64 / rate),
            bpm,
            device: self.device.clone(),
            xruns: status.xruns.load(Ordering::Relaxed),
            playing: status.playing.load(Ordering::Relaxed),
            set_ended: self.summary.set_ended,
            device_lost: status.device_lost.load(Ordering::Relaxed),
        }
    }

    fn send(&mut self, command: Command) {
        let mut command = command;
        // The ring only fills if the callback has stopped running; wait a little, then drop.
        for _ in 0..100 {
            match self.control.commands.push(command) {
                Ok(()) => return,
                Err(rtrb::PushError::Full(back)) => {
                    command = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        error!("the audio callback is not taking commands (device stalled?): command dropped");
    }

    fn handle_request(&mut self, request: Request) {
        match request {
            Request::TogglePlay if self.playing => self.stop(),
            Request::TogglePlay | Request::Play => self.play(),
            Request::Stop => self.stop(),
            Request::TogglePause if self.playing => {
                self.send(Command::Pause);
                self.playing = false;
            }
            Request::TogglePause => self.play(),
            Request::Seek { forward } => self.seek(forward),
            Request::Next => self.next(),
            Request::Previous => self.previous(),
            Request::Quit => {}
            Request::SetGain { track, db } => self.set_gain(&track, db),
            Request::Reload(reload) => self.reload(*reload),
        }
    }

    /// Switches to a new config and setlist. The song playing (or selected) keeps its
    /// preparation and plays on; the song after it is prepared again from the new setlist
    /// with the new routing and gains. A current song missing from the new setlist stays in
    /// it, at its old position, so the set goes on from there.
    fn reload(&mut self, reload: Reload) {
        let Reload {
            config,
            mut setlist,
        } = reload;
        let old_names: Vec<String> = self.setlist.songs.iter().map(|s| s.name.clone()).collect();
        let current_index = self
            .current
            .and_then(|id| self.prepared.get(&id))
            .map(|i| i.index);
        let current_song = current_index
            .and_then(|i| self.setlist.songs.get(i))
            .cloned();
        let new_index = current_song.as_ref().map(|song| {
            match setlist.songs.iter().position(|s| s.name == song.name) {
                Some(at) => at,
                None => {
                    let at = current_index.unwrap_or(0).min(setlist.songs.len());
                    setlist.songs.insert(at, song.clone());
                    info!(
                        "reload: `{}` is not in the new setlist: it plays on, then the set continues from there",
                        song.name
                    );
                    at
                }
            }
        });
        // Preparations still alive keep pointing at their song, now by its new position.
        self.prepared.retain(|_, info| {
            match old_names
                .get(info.index)
                .and_then(|name| setlist.songs.iter().position(|s| &s.name == name))
            {
                Some(at) => {
                    info.index = at;
                    true
                }
                None => false,
            }
        });
        let kept_tempo = current_index
            .and_then(|i| self.tempo_maps.remove(&i))
            .filter(|_| new_index.and_then(|at| setlist.songs.get(at)) == current_song.as_ref());
        self.tempo_maps.clear();
        if let (Some(at), Some(map)) = (new_index, kept_tempo) {
            self.tempo_maps.insert(at, map);
        }
        self.skipped_songs.clear();
        self.warned_routes.clear();
        self.config = config;
        self.setlist = setlist;
        info!(
            "reload: setlist `{}`, {} songs",
            self.setlist.name,
            self.setlist.songs.len()
        );
        if let Some(at) = new_index {
            self.queue_after(at);
            let next = self
                .queued
                .and_then(|id| self.prepared.get(&id))
                .and_then(|i| self.setlist.songs.get(i.index))
                .map_or("nothing (end of the set)".to_string(), |s| {
                    format!("`{}`", s.name)
                });
            info!(
                "reload: `{}` plays on; next: {next}",
                self.setlist.songs[at].name
            );
        }
    }

    fn play(&mut self) {
        if self.playing {
            return;
        }
        if self.current.is_none() {
            // After the end of the set: start again from the top.
            if !self.load_first(false) {
                return;
            }
            self.summary.set_ended = false;
        }
        self.send(Command::Play);
        self.playing = true;
    }

    fn stop(&mut self) {
        if !self.playing {
            return;
        }
        self.send(Command::Stop);
        self.playing = false;
        // Reload the same song from the top so "play" starts it instantly.
        if let Some(index) = self
            .current
            .and_then(|id| self.prepared.get(&id))
            .map(|i| i.index)
        {
            match self.prepare_from(index, 1) {
                Some((new_index, song)) => {
                    let id = song.id;
                    self.wait_preroll(&song);
                    self.send(Command::Load(song));
                    self.current = Some(id);
                    if new_index != index {
                        // The song broke since it was first opened: the next playable one
                        // took its place, so what follows it must be queued again.
                        self.queue_after(new_index);
                    }
                }
                None => {
                    // Nothing playable from here on: "play" starts the set again.
                    self.current = None;
                }
            }
        }
    }

    fn next(&mut self) {
        let current_index = self
            .current
            .and_then(|id| self.prepared.get(&id))
            .map(|i| i.index);
        let queued_index = self
            .queued
            .and_then(|id| self.prepared.get(&id))
            .map(|i| i.index);
        if let (Some(index), true) = (current_index, current_index == queued_index) {
            // A looping song queues itself; "next" leaves the loop for the following song.
            if let Some((_, song)) = self.prepare_from(index + 1, 1) {
                let id = song.id;
                self.wait_preroll(&song);
                self.send(Command::Load(song));
                self.current = Some(id);
                if !self.playing {
                    self.announce(id, "selected");
                }
                if let Some(new_index) = self.prepared.get(&id).map(|i| i.index) {
                    self.queue_after(new_index);
                }
            } else {
                info!("next: already on the last song");
            }
            return;
        }
        match self.queued.take() {
            Some(id) => {
                self.send(Command::Advance);
                self.current = Some(id);
                if !self.playing {
                    self.announce(id, "selected");
                }
                if let Some(index) = self.prepared.get(&id).map(|i| i.index) {
                    self.queue_after(index);
                }
            }
            None => info!("next: already on the last song"),
        }
    }

    fn seek(&mut self, forward: bool) {
        let Some(id) = self.current else {
            return;
        };
        let Some(info) = self.prepared.get(&id) else {
            return;
        };
        let index = info.index;
        let length = info.length_frames;
        let status = &self.control.status;
        let position = if status.current_id.load(Ordering::Relaxed) == id {
            status.position.load(Ordering::Relaxed)
        } else {
            0
        };
        let rate = f64::from(self.device_rate);
        let now = position as f64 / rate;
        let song = &self.setlist.songs[index];
        let tempo = self.tempo_maps.get(&index).and_then(Option::as_ref);
        let section_starts: Vec<f64> = match tempo {
            Some(map) => song
                .sections
                .iter()
                .map(|s| {
                    let quarters = map.quarters_before_measure(s.start_measure);
                    map.seconds_at_beat(quarters)
                })
                .collect(),
            None => Vec::new(),
        };
        let target = if section_starts.is_empty() {
            if forward {
                now + SEEK_SECONDS
            } else {
                (now - SEEK_SECONDS).max(0.0)
            }
        } else if forward {
            match section_starts.iter().copied().find(|&t| t > now + 0.5) {
                Some(t) => t,
                None => return,
            }
        } else {
            // Back to the start of the section playing (or the one before, right after a jump).
            section_starts
                .iter()
                .copied()
                .filter(|&t| t < now - 2.0)
                .fold(0.0, f64::max)
        };
        let target_frame = (target * rate).round() as u64;
        if length.is_some_and(|l| target_frame >= l) {
            info!("seek: past the end of the song");
            return;
        }
        match self.prepare_at(index, target_frame) {
            Ok(song) => {
                let new_id = song.id;
                self.wait_preroll(&song);
                self.send(Command::Load(song));
                self.current = Some(new_id);
                info!(
                    "seek: {} to {:.1} s",
                    self.setlist.songs[index].name, target
                );
            }
            Err(e) => error!("seek failed: {e}"),
        }
    }

    fn previous(&mut self) {
        let Some(index) = self
            .current
            .and_then(|id| self.prepared.get(&id))
            .map(|i| i.index)
        else {
            return;
        };
        if index == 0 {
            info!("previous: already on the first song");
            return;
        }
        if let Some((new_index, song)) = self.prepare_from(index - 1, -1) {
            let id = song.id;
            self.wait_preroll(&song);
            self.send(Command::Load(song));
            self.current = Some(id);
            if !self.playing {
                self.announce(id, "selected");
            }
            self.queue_after(new_index);
        }
    }

    fn set_gain(&mut self, track: &str, db: f32) {
        let Some(index) = self
            .current
            .and_then(|id| self.prepared.get(&id))
            .map(|i| i.index)
        else {
            return;
        };
        let Some(song) = self.setlist.songs.get(index) else {
            return;
        };
        let stem = song
            .tracks
            .iter()
            .filter(|t| !self.config.outputs_for(&t.name).is_empty())
            .position(|t| t.name == track);
        match stem {
            Some(stem) => self.send(Command::SetGain {
                stem,
                gain: db_to_gain(db),
            }),
            None => warn!("gain: the current song has no routed track named `{track}`"),
        }
    }

    /// With `true`, the first song of the set follows the last one (`--loop-set`).
    pub fn set_loop_set(&mut self, loop_set: bool) {
        self.loop_set = loop_set;
    }

    /// Queues the song after `index` (or `index` itself when the song loops; the first song
    /// after the last one with `--loop-set`).
    fn queue_after(&mut self, index: usize) {
        let looping = self
            .setlist
            .songs
            .get(index)
            .is_some_and(|s| s.loop_playback);
        let next = if looping {
            Some(index)
        } else if self.loop_set && index + 1 >= self.setlist.songs.len() {
            Some(0)
        } else {
            index.checked_add(1)
        };
        self.queued = None;
        if let Some(start) = next.filter(|&i| i < self.setlist.songs.len()) {
            if let Some((_, song)) = self.prepare_from(start, 1) {
                self.queued = Some(song.id);
                self.send(Command::Queue(song));
                return;
            }
        }
        // Nothing follows: the transport must not keep an older queued song.
        self.send(Command::Unqueue);
    }

    fn announce(&mut self, id: u64, what: &str) {
        if let Some(info) = self.prepared.get(&id) {
            if let Some(song) = self.setlist.songs.get(info.index) {
                if let Some(observer) = self.observer.as_mut() {
                    observer.selected(song);
                }
                let length = info
                    .length_frames
                    .map(|f| format!(", {:.1} s", f as f64 / f64::from(self.device_rate)))
                    .unwrap_or_default();
                info!(
                    "song {what}: {}/{} {}{length}",
                    info.index + 1,
                    self.setlist.songs.len(),
                    song.name
                );
            }
        }
    }

    /// Auto-advance: when the queued song became current, queue the one after it.
    fn queued_became_current(&mut self, id: u64) {
        if self.queued == Some(id) {
            self.current = Some(id);
            self.queued = None;
            if let Some(index) = self.prepared.get(&id).map(|i| i.index) {
                self.queue_after(index);
            }
        }
    }

    fn drain_events(&mut self) {
        while let Ok(event) = self.control.events.pop() {
            match event {
                Event::Started { id } => {
                    self.summary.started += 1;
                    self.announce(id, "started");
                    self.queued_became_current(id);
                }
                Event::Cued { id } => {
                    // A pause came while this song was on its way: it is current, paused.
                    self.announce(id, "ready, paused");
                    self.queued_became_current(id);
                }
                Event::Finished { id, frames } => {
                    self.summary.finished += 1;
                    if let Some(song) = self
                        .prepared
                        .get(&id)
                        .and_then(|i| self.setlist.songs.get(i.index))
                    {
                        info!(
                            "song finished: {} ({:.2} s played)",
                            song.name,
                            frames as f64 / f64::from(self.device_rate)
                        );
                    }
                    self.prepared.remove(&id);
                }
                Event::Stopped { id } => {
                    if let Some(song) = id
                        .and_then(|id| self.prepared.get(&id))
                        .and_then(|i| self.setlist.songs.get(i.index))
                    {
                        info!("stopped: {}", song.name);
                    }
                }
                Event::SetEnded => {
                    self.summary.set_ended = true;
                    self.playing = false;
                    self.current = None;
                    info!(
                        "set finished: {} songs played, {} skipped",
                        self.summary.finished, self.summary.skipped
                    );
                }
            }
        }
    }

    fn drain_trash(&mut self) {
        while let Ok(song) = self.control.trash.pop() {
            if self.current != Some(song.id) && self.queued != Some(song.id) {
                self.prepared.remove(&song.id);
            }
            if let Some(observer) = self.observer.as_mut() {
                observer.dropped(song.id);
            }
            drop(song);
        }
    }

    /// After a lost device came back (the reconnect thread logs loss and recovery): with
    /// `audio.on_reconnect: restart`, starts the song that was playing again from the top.
    fn check_device(&mut self) {
        let reconnects = self.control.status.reconnects.load(Ordering::Acquire);
        if reconnects == self.reconnects_seen {
            return;
        }
        self.reconnects_seen = reconnects;
        if self.config.audio.on_reconnect != OnReconnect::Restart || !self.playing {
            return;
        }
        if let Some(song) = self
            .current
            .and_then(|id| self.prepared.get(&id))
            .and_then(|i| self.setlist.songs.get(i.index))
        {
            info!(
                "on_reconnect: restart: `{}` plays again from its start",
                song.name
            );
        }
        self.stop();
        self.play();
    }

    fn wait_preroll(&self, song: &PreparedSong) {
        let deadline = Instant::now() + PREROLL_TIMEOUT;
        while !song.mixer.stems.iter().all(|s| s.stream.is_prerolled()) {
            if Instant::now() >= deadline {
                warn!("a song's files are loading slowly: playback may start with a gap");
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Prepares the first playable song from `start` walking by `step`, skipping (with one
    /// error line each) songs that cannot be opened.
    fn prepare_from(&mut self, start: usize, step: isize) -> Option<(usize, Box<PreparedSong>)> {
        let mut index = start as isize;
        while index >= 0 && (index as usize) < self.setlist.songs.len() {
            let at = index as usize;
            match self.prepare(at) {
                Ok(song) => return Some((at, song)),
                Err(e) => {
                    // Count each broken song once, however often it is tried.
                    if self.skipped_songs.insert(at) {
                        self.summary.skipped += 1;
                    }
                    error!("song skipped: {}: {e}", self.setlist.songs[at].name);
                }
            }
            index += step;
        }
        None
    }

    fn prepare(&mut self, index: usize) -> Result<Box<PreparedSong>, Diagnostic> {
        self.prepare_at(index, 0)
    }

    /// Prepares song `index` to start at device frame `start_frame` of the song.
    fn prepare_at(
        &mut self,
        index: usize,
        start_frame: u64,
    ) -> Result<Box<PreparedSong>, Diagnostic> {
        let song = &self.setlist.songs[index];
        let config = &self.config;
        let streams = media::open_song(
            song,
            self.device_rate,
            |name| !config.outputs_for(name).is_empty(),
            start_frame,
        )?;
        let mut stems = Vec::with_capacity(streams.stems.len());
        for stream in streams.stems {
            let outputs: Vec<usize> = config
                .outputs_for(&stream.name)
                .into_iter()
                .map(|o| usize::from(o) - 1)
                .collect();
            let usable: Vec<usize> = outputs
                .iter()
                .copied()
                .filter(|&o| o < self.out_channels)
                .collect();
            if usable.len() < outputs.len() && self.warned_routes.insert(stream.name.clone()) {
                warn!(
                    "track `{}` is routed to output {} but the device has {} outputs: those routes are silent",
                    stream.name,
                    outputs.iter().filter(|&&o| o >= self.out_channels).map(|o| (o + 1).to_string()).collect::<Vec<_>>().join(", "),
                    self.out_channels
                );
            }
            let routes = routes_for(stream.channels, &usable);
            let gain = db_to_gain(
                config
                    .audio
                    .track_gains
                    .get(&stream.name)
                    .copied()
                    .unwrap_or(0.0),
            );
            stems.push(StemMix::new(stream, routes, gain));
        }
        self.tempo_maps.entry(index).or_insert_with(|| {
            song.tempo.as_ref().map(TempoMap::from_spec).or_else(|| {
                song.midi_playback
                    .as_ref()
                    .and_then(|m| std::fs::read(&m.file).ok())
                    .and_then(|bytes| crate::midi::file::clock_tempo_map(&bytes))
            })
        });
        let id = self.next_id;
        self.next_id += 1;
        if let Some(observer) = self.observer.as_mut() {
            let tempo = self.tempo_maps.get(&index).and_then(Option::as_ref);
            observer.prepared(id, index, song, tempo)?;
        }
        self.prepared.insert(
            id,
            SongInfo {
                index,
                length_frames: streams.length_frames,
            },
        );
        Ok(Box::new(PreparedSong {
            id,
            mixer: SongMixer::new(stems),
            position: start_frame,
            song_tag: u32::try_from(index + 1).unwrap_or(u32::MAX),
        }))
    }
}

//! `backline check`: validates a show before it is played — YAML, every file exists and
//! decodes, channel numbers, sample rates, routing, MIDI files, playlists — with a progress
//! bar on large libraries. `--system` adds the real-time probe and what it would give.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::library::{locate, Diagnostic, Show, Song};
use crate::media;
use crate::rt::{self, Role};

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems that make a song (or the show) fail.
    pub errors: Vec<Diagnostic>,
    /// Things worth knowing that do not stop playback.
    pub warnings: Vec<Diagnostic>,
    /// Informational lines (per song summary).
    pub notes: Vec<String>,
}

/// Options of `backline check`.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Playlist to check besides the library (`--playlist`).
    pub playlist: Option<String>,
    /// Print the real-time probe (`--system`).
    pub system: bool,
    /// Only read headers instead of decoding every file (`--quick`).
    pub quick: bool,
}

/// Runs the checks on a loaded show.
pub fn check_show(show: &Show, options: &CheckOptions) -> CheckReport {
    let mut report = CheckReport {
        errors: show.library.errors.clone(),
        warnings: show.library.warnings.clone(),
        notes: Vec::new(),
    };
    let config = &show.config;
    match show.setlist(options.playlist.as_deref()) {
        Ok(set) => report.errors.extend(set.missing),
        Err(e) => report.errors.push(e),
    }
    // Every other playlist too; the chosen one's problems are already in (once is enough).
    for playlist in &show.library.playlists {
        for problem in show.library.resolve_playlist(playlist).missing {
            if !report.errors.contains(&problem) {
                report.errors.push(problem);
            }
        }
    }
    // Track mappings naming tracks no song has.
    let all_tracks: BTreeSet<&str> = show
        .library
        .songs
        .iter()
        .flat_map(|s| s.tracks.iter().map(|t| t.name.as_str()))
        .collect();
    if let Some(source) = &config.source {
        let text = std::fs::read_to_string(source).unwrap_or_default();
        for name in config.audio.track_mappings.keys() {
            if !all_tracks.contains(name.as_str()) {
                report.warnings.push(Diagnostic::at(
                    source,
                    locate(&text, name, None, 0),
                    format!("track_mappings routes `{name}`, but no song has a track of that name"),
                ));
            }
        }
    }

    // Every audio file once, decoded in parallel on all cores.
    let files: Vec<PathBuf> = show
        .library
        .songs
        .iter()
        .flat_map(|s| s.tracks.iter().map(|t| t.file.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let results = decode_files(&files, options.quick);

    for song in &show.library.songs {
        check_song(song, show, &results, &mut report);
    }
    report
}

type DecodeResult = Result<(media::MediaInfo, Option<u64>), Diagnostic>;

fn decode_files(files: &[PathBuf], quick: bool) -> Vec<(PathBuf, DecodeResult)> {
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(if quick { "reading headers" } else { "decoding" });
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(files.len()));
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(index) else {
                    return;
                };
                bar.set_message(
                    file.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                let result = if quick {
                    media::probe(file).map(|info| (info, None))
                } else {
                    media::decode_all(file).map(|(info, frames)| (info, Some(frames)))
                };
                if let Ok(mut results) = results.lock() {
                    results.push((file.clone(), result));
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    results.into_inner().unwrap_or_default()
}

fn check_song(
    song: &Song,
    show: &Show,
    results: &[(PathBuf, DecodeResult)],
    report: &mut CheckReport,
) {
    let config = &show.config;
    let text = std::fs::read_to_string(&song.source).unwrap_or_default();
    let rate = config.audio.sample_rate;
    let mut longest = 0f64;
    let mut failed = false;
    for (index, track) in song.tracks.iter().enumerate() {
        let Some((_, result)) = results.iter().find(|(f, _)| *f == track.file) else {
            continue;
        };
        let nth = song.tracks[..index]
            .iter()
            .filter(|t| t.file == track.file)
            .count();
        match result {
            Err(e) => {
                failed = true;
                report.errors.push(Diagnostic::at(
                    &song.source,
                    locate(&text, "file", None, 0).and(locate(
                        &text,
                        "file",
                        track.file.file_name().and_then(|n| n.to_str()),
                        nth,
                    )),
                    format!("track `{}`: {e}", track.name),
                ));
            }
            Ok((info, frames)) => {
                if let Some(channel) = track.file_channel {
                    if usize::from(channel) > info.channels {
                        failed = true;
                        report.errors.push(Diagnostic::at(
                            &song.source,
                            locate(&text, "file_channel", Some(&channel.to_string()), 0),
                            format!(
                                "track `{}`: file_channel {channel} but {} has {} channel(s): expected 1 to {}",
                                track.name,
                                file_name(&track.file),
                                info.channels,
                                info.channels
                            ),
                        ));
                    }
                }
                if info.sample_rate != rate {
                    report.notes.push(format!(
                        "{}: {} is {} Hz, resampled to {rate} Hz at playback",
                        song.name,
                        file_name(&track.file),
                        info.sample_rate
                    ));
                }
                let length = frames
                    .or(info.frames)
                    .map_or(0.0, |f| f as f64 / f64::from(info.sample_rate));
                longest = longest.max(length);
            }
        }
        if config.outputs_for(&track.name).is_empty() {
            report.warnings.push(Diagnostic::at(
                &song.source,
                locate(&text, "name", Some(&track.name), 0),
                format!(
                    "track `{}` is not in track_mappings: it will not be heard",
                    track.name
                ),
            ));
        }
        for &output in &config.outputs_for(&track.name) {
            if output > config.output_channels() {
                failed = true;
            }
        }
    }
    // The MIDI file is loaded exactly as `play` loads it: if it fails here, play skips the song.
    let midi_ok = match &song.midi_playback {
        None => true,
        Some(midi) => match crate::midi::load_schedule(&midi.file, &midi.exclude_midi_channels) {
            Ok(_) => true,
            Err(e) => {
                failed = true;
                report.errors.push(Diagnostic::at(
                    &song.source,
                    locate(
                        &text,
                        "file",
                        midi.file.file_name().and_then(|n| n.to_str()),
                        0,
                    ),
                    format!("MIDI file: {e}"),
                ));
                false
            }
        },
    };
    let clock = match (&song.tempo, &song.midi_playback) {
        (Some(_), _) => "beat clock from the tempo block".to_string(),
        (None, Some(_)) if !midi_ok => "no beat clock".into(),
        (None, Some(midi)) => match std::fs::read(&midi.file)
            .ok()
            .and_then(|b| crate::midi::file::clock_tempo_map(&b))
        {
            Some(_) => "beat clock from the MIDI file's tempo".into(),
            None => "no beat clock (the MIDI file uses SMPTE timing)".into(),
        },
        (None, None) => "no beat clock (no tempo block and no MIDI file)".into(),
    };
    report.notes.push(format!(
        "{}: {} track(s), {:.1} s, {clock}{}",
        song.name,
        song.tracks.len(),
        longest,
        if failed { " — WILL BE SKIPPED" } else { "" }
    ));
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What real-time scheduling would give, without starting playback.
pub fn system_report(show: &Show, settings: &rt::RtSettings) -> Vec<String> {
    let probe = rt::probe();
    let summary = probe.summary();
    let mut lines = vec![probe.to_string()];
    lines.extend(crate::sandbox::system_lines(&super::sandbox::plan(
        show,
        &super::play::PlayOptions::default(),
        None,
    )));
    if !settings.enabled {
        lines.push("real-time: off (--no-rt / realtime: false)".into());
        return lines;
    }
    for (role, priority) in [
        (Role::Audio, settings.audio_priority),
        (Role::Clock, settings.clock_priority),
    ] {
        lines.push(match summary.predict(priority) {
            Ok(via) => format!("{role}: would run SCHED_FIFO {priority} ({via:?})"),
            Err(reason) => format!(
                "{role}: would run at normal priority: {} — {}",
                reason.phrase(priority),
                reason.remedy(
                    role,
                    priority,
                    &std::env::current_exe()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "backline".into())
                )
            ),
        });
    }
    lines.push(format!(
        "audio device: {} ({} outputs needed, {} Hz, {} frames/period)",
        show.config.audio.device,
        show.config.output_channels(),
        show.config.audio.sample_rate,
        show.config.audio.buffer_size
    ));
    lines
}

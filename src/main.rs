//! backline: plays the backing tracks of a live show. This file only parses the command line
//! and hands over to `backline::cli`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use backline::cli::check::{self, CheckOptions};
use backline::cli::logging;
use backline::cli::play::{self, PlayOptions};
use backline::engine::output;
use backline::library::Show;

#[derive(Parser)]
#[command(
    name = "backline",
    version,
    about = "Plays the backing tracks of a live show: stems, MIDI and a beat clock, in real time"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// The options `play` and `rehearse` share.
#[derive(clap::Args)]
struct ShowArgs {
    /// Playlist name (file stem) or playlist file.
    #[arg(long)]
    playlist: Option<String>,
    /// Output device: a cpal device name, `default`, `jack`, or `wav:PATH` to render to a file in real time.
    #[arg(long)]
    output: Option<String>,
    /// Do not try real-time scheduling.
    #[arg(long)]
    no_rt: bool,
    /// SCHED_FIFO priority of the audio thread (the clock gets 10 more, at most 99).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=89))]
    rt_priority: Option<u8>,
    /// After the last song, go on with the first, gaplessly, until stopped (installations,
    /// soak tests).
    #[arg(long)]
    loop_set: bool,
    /// Control socket for `backline ctl` (default: $RUNTIME_DIRECTORY/control.sock under
    /// systemd, else $XDG_RUNTIME_DIR/backline/control.sock).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Do not sandbox (keep all capabilities, no Landlock, no seccomp): for debugging only.
    #[arg(long)]
    no_sandbox: bool,
}

impl ShowArgs {
    fn options(self, rehearsal: bool) -> PlayOptions {
        PlayOptions {
            playlist: self.playlist,
            output: self.output,
            no_rt: self.no_rt,
            rt_priority: self.rt_priority,
            loop_set: self.loop_set,
            speed: None,
            rehearsal,
            report: None,
            plot: None,
            control_socket: self.control_socket,
            no_sandbox: self.no_sandbox,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Play a set: a folder of songs, a folder with backline.yaml, or a backline.yaml.
    Play {
        /// Songs folder or backline.yaml.
        target: PathBuf,
        #[command(flatten)]
        show: ShowArgs,
        /// With `--output wav:PATH`: render this many times faster than real time (an offline bounce).
        #[arg(long, value_parser = parse_speed)]
        speed: Option<f64>,
    },
    /// Play a set like `play`, then report the timing of every song (beat clock, MIDI file,
    /// audio callback, xruns, real-time state) as a table, and optionally as JSON and SVG.
    Rehearse {
        /// Songs folder or backline.yaml (not with --clock-only).
        #[arg(required_unless_present = "clock_only")]
        target: Option<PathBuf>,
        /// Measure the beat clock alone (no show): --bpm, --duration, --midi-out.
        #[arg(long, requires = "midi_out", conflicts_with = "target")]
        clock_only: bool,
        /// Tempo of --clock-only.
        #[arg(long, default_value_t = 120.0)]
        bpm: f64,
        /// Length of --clock-only, e.g. 60s, 10m, 1h.
        #[arg(long, default_value = "60s")]
        duration: String,
        /// Where --clock-only sends the clock (a serial port, /dev/snd/midiC*D*, a FIFO).
        #[arg(long)]
        midi_out: Option<PathBuf>,
        #[command(flatten)]
        show: ShowArgs,
        /// Also write the figures (with histogram buckets) as JSON.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also draw the beat clock's lateness (distribution and over time) as SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Validate a show (YAML, files, decoding, channels, rates, playlists); exit 1 on any error.
    Check {
        /// Songs folder or backline.yaml.
        target: PathBuf,
        /// Also check this playlist.
        #[arg(long)]
        playlist: Option<String>,
        /// Print what real-time scheduling would give on this machine.
        #[arg(long)]
        system: bool,
        /// Read headers only instead of decoding every file.
        #[arg(long)]
        quick: bool,
    },
    /// List audio output devices of every compiled-in host, MIDI ports and raw MIDI devices.
    Devices,
    /// Print the hardened systemd unit with this binary's path filled in (for cargo installs;
    /// the .deb installs it already).
    Unit {
        /// Song library: a folder of songs or a folder with backline.yaml (read-only for the
        /// service). Played when no --config is given.
        #[arg(long)]
        library: Option<PathBuf>,
        /// backline.yaml to play [default: /etc/backline/backline.yaml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// User the service runs as; it must be in the audio group.
        #[arg(long, default_value = "backline")]
        user: String,
    },
    /// Control a running player through its control socket.
    Ctl {
        #[command(subcommand)]
        action: CtlAction,
        /// The player's control socket (default: $XDG_RUNTIME_DIR/backline/control.sock,
        /// else /run/backline/control.sock).
        #[arg(long, global = true, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum CtlAction {
    /// Start playing.
    Play,
    /// Stop (back to the top of the song).
    Stop,
    /// Pause where the song is, or resume.
    Pause,
    /// Next song.
    Next,
    /// Previous song.
    Previous,
    /// Show the song, position, xruns, clock p99 and real-time state.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let raw_terminal = matches!(cli.command, Command::Play { .. } | Command::Rehearse { .. })
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    logging::init(&cli.log_level, raw_terminal);
    let code = match cli.command {
        Command::Play {
            target,
            show,
            speed,
        } => play::run(
            &target,
            &PlayOptions {
                speed,
                ..show.options(false)
            },
        ),
        Command::Rehearse {
            target,
            clock_only,
            bpm,
            duration,
            midi_out,
            show,
            report,
            plot,
        } => {
            let options = PlayOptions {
                report,
                plot,
                ..show.options(true)
            };
            match (clock_only, target, midi_out) {
                (true, _, Some(midi_out)) => run_clock_only(bpm, &duration, &midi_out, &options),
                (false, Some(target), _) => play::run(&target, &options),
                _ => {
                    eprintln!("error: give a show to rehearse, or --clock-only with --midi-out");
                    2
                }
            }
        }
        Command::Check {
            target,
            playlist,
            system,
            quick,
        } => run_check(
            &target,
            &CheckOptions {
                playlist,
                system,
                quick,
            },
        ),
        Command::Ctl { action, socket } => run_ctl(action, socket),
        Command::Devices => {
            for line in output::list_devices() {
                println!("{line}");
            }
            for line in backline::midi::list_ports() {
                println!("{line}");
            }
            0
        }
        Command::Unit {
            library,
            config,
            user,
        } => run_unit(library, config, user),
    };
    ExitCode::from(code as u8)
}

fn run_clock_only(
    bpm: f64,
    duration: &str,
    midi_out: &std::path::Path,
    options: &PlayOptions,
) -> i32 {
    use backline::cli::clock_only;
    let seconds = match clock_only::parse_duration(duration) {
        Ok(seconds) => seconds,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match clock_only::build(bpm, seconds, midi_out, 48_000) {
        Ok(show) => play::run(&show.root, options),
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn run_ctl(action: CtlAction, socket: Option<PathBuf>) -> i32 {
    let line = match action {
        CtlAction::Play => "play",
        CtlAction::Stop => "stop",
        CtlAction::Pause => "pause",
        CtlAction::Next => "next",
        CtlAction::Previous => "previous",
        CtlAction::Status { json: false } => "status",
        CtlAction::Status { json: true } => "status --json",
    };
    let path = socket.unwrap_or_else(backline::service::ctl_socket_path);
    match backline::service::control::request(&path, line, std::time::Duration::from_secs(5)) {
        Ok(reply) => {
            if !reply.is_empty() {
                println!("{reply}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn run_unit(library: Option<PathBuf>, config: Option<PathBuf>, user: String) -> i32 {
    use backline::cli::unit::{self, UnitOptions};
    let binary = match std::env::current_exe().and_then(|p| p.canonicalize()) {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("error: cannot tell where this backline binary is: {e}");
            return 1;
        }
    };
    let absolute = |path: Option<PathBuf>| path.map(|p| std::path::absolute(&p).unwrap_or(p));
    let options = UnitOptions {
        binary,
        config: absolute(config),
        library: absolute(library),
        user,
    };
    match unit::render(&options) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && (0.1..=1000.0).contains(&speed) => Ok(speed),
        _ => Err(format!(
            "`{text}` is not a speed: expected a factor from 0.1 to 1000"
        )),
    }
}

fn run_check(target: &std::path::Path, options: &CheckOptions) -> i32 {
    let show = match Show::load(target) {
        Ok(show) => show,
        Err(errors) => {
            for e in errors {
                println!("error: {e}");
            }
            return 1;
        }
    };
    if options.system {
        let settings = play::rt_settings(&show, &PlayOptions::default());
        for line in check::system_report(&show, &settings) {
            println!("{line}");
        }
    }
    let report = check::check_show(&show, options);
    for note in &report.notes {
        println!("{note}");
    }
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    for error in &report.errors {
        println!("error: {error}");
    }
    println!(
        "{} songs, {} playlists: {} errors, {} warnings",
        show.library.songs.len(),
        show.library.playlists.len(),
        report.errors.len(),
        report.warnings.len()
    );
    i32::from(!report.errors.is_empty())
}

//! Turns the show's config and the command line into a [`sandbox::Plan`]: which folders stay
//! readable (library, config, extra roots), which are writable (WAV render, report and plot
//! folders, `sandbox.state_dir`, systemd's `$STATE_DIRECTORY`), which devices stay open to
//! re-opening (MIDI output paths).

use std::path::{Path, PathBuf};

use super::play::PlayOptions;
use crate::library::{MidiTarget, SandboxMode, SeccompActionConfig, Show};
use crate::sandbox::{Blocked, Mode, Plan};

/// The sandbox plan for playing `show` with `options`; `wav` is the render file, if any.
pub fn plan(show: &Show, options: &PlayOptions, wav: Option<&Path>) -> Plan {
    let config = &show.config;
    let mut read_only = vec![config.songs.clone()];
    read_only.extend(config.extra_roots.iter().cloned());
    if let Some(source) = &config.source {
        read_only.push(folder_of(source));
    }
    if let Some(playlist) = &config.playlist {
        read_only.push(folder_of(playlist));
    }
    let mut read_write = Vec::new();
    let mut devices: Vec<PathBuf> = Vec::new();
    for file in [wav, options.report.as_deref(), options.plot.as_deref()]
        .into_iter()
        .flatten()
    {
        // `wav:/dev/null` (clock-only rehearsals) is that device, not all of /dev.
        match std::fs::metadata(file) {
            Ok(meta) if !meta.is_file() && !meta.is_dir() => devices.push(file.to_path_buf()),
            _ => read_write.push(folder_of(file)),
        }
    }
    read_write.extend(config.sandbox.state_dir.iter().cloned());
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY") {
        read_write.extend(std::env::split_paths(&dirs));
    }
    devices.extend(
        config
            .midi
            .outputs
            .iter()
            .filter_map(|output| match &output.target {
                MidiTarget::Path(path) => Some(path.clone()),
                _ => None,
            }),
    );
    let mode = match (options.no_sandbox, config.sandbox.mode) {
        (true, _) | (false, SandboxMode::Off) => Mode::Off,
        (false, SandboxMode::Strict) => Mode::Strict,
        (false, SandboxMode::BestEffort) => Mode::BestEffort,
    };
    Plan {
        mode,
        disabled_by_flag: options.no_sandbox,
        blocked: match config.sandbox.seccomp_action {
            SeccompActionConfig::Errno => Blocked::Errno,
            SeccompActionConfig::Kill => Blocked::Kill,
        },
        read_only,
        read_write,
        devices,
    }
}

/// The folder a file is in, absolute when possible (`out.wav` → the current directory).
fn folder_of(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    match absolute.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::Config;

    #[test]
    fn plan_covers_library_state_and_midi_paths() {
        let text = "songs: songs\nmidi:\n  outputs:\n    - { name: f, path: /run/midi.fifo }\nsandbox: { seccomp_action: kill }\n";
        let config = Config::parse(Path::new("/show/backline.yaml"), text).expect("config");
        let show = Show {
            config,
            library: Default::default(),
        };
        let options = PlayOptions {
            report: Some(PathBuf::from("/reports/r.json")),
            ..PlayOptions::default()
        };
        let plan = plan(&show, &options, Some(Path::new("/renders/out.wav")));
        assert_eq!(plan.mode, Mode::BestEffort);
        assert_eq!(plan.blocked, Blocked::Kill);
        assert!(plan.read_only.contains(&PathBuf::from("/show/songs")));
        assert!(plan.read_only.contains(&PathBuf::from("/show")));
        assert!(plan.read_write.contains(&PathBuf::from("/renders")));
        assert!(plan.read_write.contains(&PathBuf::from("/reports")));
        assert_eq!(plan.devices, vec![PathBuf::from("/run/midi.fifo")]);
        let off = super::plan(
            &show,
            &PlayOptions {
                no_sandbox: true,
                ..PlayOptions::default()
            },
            None,
        );
        assert_eq!(off.mode, Mode::Off);
        assert!(off.disabled_by_flag);
        let null = super::plan(&show, &PlayOptions::default(), Some(Path::new("/dev/null")));
        assert!(
            !null.read_write.contains(&PathBuf::from("/dev")),
            "{null:?}"
        );
        assert!(null.devices.contains(&PathBuf::from("/dev/null")));
    }
}

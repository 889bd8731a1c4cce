//! SIGHUP: re-read backline.yaml and the library, check them, and hand the player a new
//! config and setlist. What applies from the next song: the setlist and its order, the
//! songs (files, tempo, MIDI), `audio.track_mappings` and `audio.track_gains`. What needs
//! a restart (logged, and the running value stays): the audio device, sample rate and
//! buffer size, `realtime`, `midi.outputs`, `midi.persist_tempo` and
//! `service.control_socket`. The footswitch (`midi.control`) is re-opened with its new port
//! and bindings through the [`Rebind`] hook `play` provides; if that fails the old one stays.

use std::path::PathBuf;

use tracing::{error, info, warn};

use crate::engine::{Reload, Request};
use crate::library::{Config, MidiControlConfig, Show};

/// Re-opens the footswitch with new settings (`None`: no footswitch). On error the old
/// connection must stay open. Provided by `play`, which owns the MIDI wiring.
pub type Rebind = Box<dyn FnMut(Option<&MidiControlConfig>) -> Result<(), String> + Send>;

/// What SIGHUP reloads from, and the config in force.
pub struct ReloadSource {
    /// The show `play` was started on (folder or backline.yaml).
    pub target: PathBuf,
    /// `--playlist`, when given (it wins over the config's `playlist:` on reload too).
    pub playlist: Option<String>,
    /// The config in force.
    pub config: Config,
    /// Re-opens the footswitch when `midi.control` changes.
    pub footswitch: Option<Rebind>,
}

impl ReloadSource {
    /// Loads the show again. On success returns the request for the player and the new
    /// setlist's name; on any error logs it (with file:line:col) and returns `None`: the
    /// running config and setlist stay in force.
    pub fn reload(&mut self) -> Option<(Request, String)> {
        info!("SIGHUP: reloading {}", self.target.display());
        let show = match Show::load(&self.target) {
            Ok(show) => show,
            Err(errors) => {
                for e in errors {
                    error!("reload: {e}");
                }
                error!("reload failed: the running config and setlist stay in force");
                return None;
            }
        };
        for warning in &show.library.warnings {
            warn!("reload: {warning}");
        }
        for problem in &show.library.errors {
            error!("reload: {problem}");
        }
        let setlist = match show.setlist(self.playlist.as_deref()) {
            Ok(setlist) => setlist,
            Err(e) => {
                error!("reload: {e}");
                error!("reload failed: the running config and setlist stay in force");
                return None;
            }
        };
        for missing in &setlist.missing {
            error!("reload: {missing}");
        }
        if setlist.songs.is_empty() {
            error!(
                "reload failed: the setlist `{}` has no loadable song; the running one stays in force",
                setlist.name
            );
            return None;
        }
        let mut config = show.config;
        for line in keep_restart_only(&self.config, &mut config) {
            warn!("reload: {line}");
        }
        if config.midi.control != self.config.midi.control {
            let outcome = match self.footswitch.as_mut() {
                Some(rebind) => rebind(config.midi.control.as_ref()),
                None => Err("no footswitch hook".into()),
            };
            match outcome {
                Ok(()) => {
                    info!("reload: footswitch (midi.control) re-opened with the new settings")
                }
                Err(e) => {
                    warn!("reload: midi.control changed but the footswitch could not be re-opened ({e}): the old one stays");
                    config.midi.control.clone_from(&self.config.midi.control);
                }
            }
        }
        self.config = config.clone();
        let name = setlist.name.clone();
        Some((Request::Reload(Box::new(Reload { config, setlist })), name))
    }
}

/// Puts back into `new` every setting that only a restart can change, and says which ones
/// changed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut note = |what: &str, changed: bool| {
        if changed {
            notes.push(format!(
                "{what} changed: it takes effect after a restart (systemctl restart backline)"
            ));
        }
    };
    note("audio.device", old.audio.device != new.audio.device);
    note(
        "audio.sample_rate",
        old.audio.sample_rate != new.audio.sample_rate,
    );
    note(
        "audio.buffer_size",
        old.audio.buffer_size != new.audio.buffer_size,
    );
    note("realtime", old.realtime != new.realtime);
    note("midi.outputs", old.midi.outputs != new.midi.outputs);
    note(
        "midi.persist_tempo",
        old.midi.persist_tempo != new.midi.persist_tempo,
    );
    note(
        "service.control_socket",
        old.service.control_socket != new.service.control_socket,
    );
    new.audio.device.clone_from(&old.audio.device);
    new.audio.sample_rate = old.audio.sample_rate;
    new.audio.buffer_size = old.audio.buffer_size;
    new.realtime = old.realtime.clone();
    let control = new.midi.control.take();
    new.midi = old.midi.clone();
    new.midi.control = control;
    new.service = old.service.clone();
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn device_settings_wait_for_a_restart() {
        let old = Config::parse(
            Path::new("/s/backline.yaml"),
            "audio:\n  device: a\n  track_gains:\n    x: -3\n",
        )
        .expect("valid");
        let mut new = Config::parse(
            Path::new("/s/backline.yaml"),
            "audio:\n  device: b\n  buffer_size: 512\n  track_gains:\n    x: -6\n",
        )
        .expect("valid");
        let notes = keep_restart_only(&old, &mut new);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("audio.device changed"), "{notes:?}");
        assert_eq!(new.audio.device, "a");
        assert_eq!(new.audio.buffer_size, old.audio.buffer_size);
        assert_eq!(new.audio.track_gains.get("x"), Some(&-6.0));
    }
}

//! The song library: scans a folder tree for song.yaml and playlist files (mtrack layout),
//! loads backline.yaml, and turns them into a validated model. Problems never stop the
//! scan: each one becomes a [`Diagnostic`] and the broken song is left out of the set.

mod config;
mod diagnostic;
mod paths;
mod song;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use config::{
    AudioConfig, Config, MidiConfig, MidiControlConfig, MidiOutputConfig, MidiTarget, OnReconnect,
    RealtimeConfig, SandboxConfig, SandboxMode, SeccompActionConfig, ServiceConfig,
    MAX_OUTPUT_CHANNELS,
};
pub use diagnostic::{locate, Diagnostic, Place};
pub use paths::RootPolicy;
pub use song::{
    parse_song, MidiEvent, MidiPlayback, Section, Song, SongParse, TempoChange, TempoSpec,
    TimeSignature, Track, MTRACK_ONLY_SONG_KEYS,
};

/// YAML files larger than this are refused before parsing: no song or playlist is this big,
/// and it bounds the memory a hostile file can make the parser use.
pub const MAX_YAML_BYTES: u64 = 1024 * 1024;
/// Folder depth the scan descends to (guards against absurd trees).
const MAX_SCAN_DEPTH: usize = 32;

/// A named, ordered list of songs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playlist {
    /// The file stem, used by `--playlist NAME`.
    pub name: String,
    /// The playlist file.
    pub source: PathBuf,
    /// Song names in show order.
    pub songs: Vec<String>,
}

/// Everything found under the library root.
#[derive(Debug, Clone, Default)]
pub struct Library {
    /// The scanned folder.
    pub root: PathBuf,
    /// Playable songs, sorted by name.
    pub songs: Vec<Song>,
    /// Playlists found in the library and next to the config.
    pub playlists: Vec<Playlist>,
    /// Problems that keep a song or playlist from loading.
    pub errors: Vec<Diagnostic>,
    /// Things worth knowing that do not stop anything (mtrack-only keys).
    pub warnings: Vec<Diagnostic>,
}

/// The songs to play, in order, with the problems found while putting it together.
#[derive(Debug, Clone)]
pub struct Setlist {
    /// Playlist name, or "all songs".
    pub name: String,
    /// Songs in show order.
    pub songs: Vec<Song>,
    /// Playlist entries that name no loadable song.
    pub missing: Vec<Diagnostic>,
}

/// A config plus the library it points at: what `play` and `check` work on.
#[derive(Debug, Clone)]
pub struct Show {
    /// The player config (zero-config defaults when pointed at a bare folder).
    pub config: Config,
    /// The scanned library.
    pub library: Library,
}

#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaylist {
    #[serde(default)]
    kind: Option<String>,
    songs: Vec<String>,
}

/// Reads a YAML file with the size bound and UTF-8 check every user file gets.
pub fn read_yaml_text(path: &Path) -> Result<String, Diagnostic> {
    let meta =
        fs::metadata(path).map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
    if meta.len() > MAX_YAML_BYTES {
        return Err(Diagnostic::file(
            path,
            format!(
                "the file is {} bytes: expected a YAML file under {} bytes",
                meta.len(),
                MAX_YAML_BYTES
            ),
        ));
    }
    let bytes = fs::read(path).map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let (line, column) = line_column(e.as_bytes(), offset);
        Diagnostic::at(
            path,
            Some(Place { line, column }),
            "invalid UTF-8: expected a UTF-8 text file",
        )
    })
}

fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

impl Show {
    /// Loads `target`: a backline.yaml, a folder holding one, or a bare folder of songs
    /// (zero-config). Fails only when there is nothing to play from (the config itself is
    /// unreadable or invalid, or the folder does not exist).
    pub fn load(target: &Path) -> Result<Show, Vec<Diagnostic>> {
        let config = if target.is_dir() {
            let candidate = target.join("backline.yaml");
            if candidate.is_file() {
                load_config(&candidate)?
            } else {
                Config::zero(target)
            }
        } else if target.is_file() {
            load_config(target)?
        } else {
            return Err(vec![Diagnostic::file(
                target,
                "does not exist: expected a folder of songs or a backline.yaml",
            )]);
        };
        if !config.songs.is_dir() {
            let text = config
                .source
                .as_ref()
                .and_then(|s| fs::read_to_string(s).ok());
            let place = text.as_deref().and_then(|t| locate(t, "songs", None, 0));
            return Err(vec![Diagnostic::at(
                config.source.clone().unwrap_or_else(|| config.songs.clone()),
                place,
                format!(
                    "the library folder {} does not exist: expected `songs:` to name a folder of songs",
                    config.songs.display()
                ),
            )]);
        }
        let mut library = Library::scan(&config.songs, &config.extra_roots);
        // Playlists may also live next to the config (FORMATS.md: playlists/main.yaml).
        let mut extra_playlist_files = Vec::new();
        if let Some(file) = &config.playlist {
            extra_playlist_files.push(file.clone());
        }
        if let Some(dir) = config.source.as_ref().and_then(|s| s.parent()) {
            if let Ok(entries) = fs::read_dir(dir.join("playlists")) {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_yaml(p))
                    .collect();
                files.sort();
                extra_playlist_files.extend(files);
            }
        }
        for file in extra_playlist_files {
            let canonical = paths::canonical_or_normal(&file);
            if library
                .playlists
                .iter()
                .any(|p| paths::canonical_or_normal(&p.source) == canonical)
            {
                continue;
            }
            match read_yaml_text(&file).and_then(|text| parse_playlist(&file, &text)) {
                Ok(playlist) => library.playlists.push(playlist),
                Err(e) => library.errors.push(e),
            }
        }
        Ok(Show { config, library })
    }

    /// The set to play: `--playlist NAME` (a playlist name or file), else the config's
    /// playlist, else every song sorted by name.
    pub fn setlist(&self, playlist: Option<&str>) -> Result<Setlist, Diagnostic> {
        let chosen = match playlist {
            Some(wanted) => Some(self.find_playlist(wanted)?),
            None => match &self.config.playlist {
                Some(file) => {
                    let canonical = paths::canonical_or_normal(file);
                    self.library
                        .playlists
                        .iter()
                        .find(|p| paths::canonical_or_normal(&p.source) == canonical)
                }
                None => None,
            },
        };
        Ok(match chosen {
            Some(playlist) => self.library.resolve_playlist(playlist),
            None => Setlist {
                name: "all songs".into(),
                songs: self.library.songs.clone(),
                missing: Vec::new(),
            },
        })
    }

    fn find_playlist(&self, wanted: &str) -> Result<&Playlist, Diagnostic> {
        let as_path = paths::canonical_or_normal(Path::new(wanted));
        self.library
            .playlists
            .iter()
            .find(|p| p.name == wanted || paths::canonical_or_normal(&p.source) == as_path)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .library
                    .playlists
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                Diagnostic::file(
                    self.config
                        .source
                        .clone()
                        .unwrap_or_else(|| self.library.root.clone()),
                    format!(
                        "no playlist named `{wanted}`: expected one of {}",
                        if known.is_empty() {
                            "(none found)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })
    }
}

fn load_config(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text = read_yaml_text(path).map_err(|e| vec![e])?;
    Config::parse(path, &text)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// Parses a playlist file's text.
pub fn parse_playlist(path: &Path, text: &str) -> Result<Playlist, Diagnostic> {
    let raw: RawPlaylist =
        serde_yaml::from_str(text).map_err(|e| Diagnostic::from_yaml(path, text, &e))?;
    if let Some(kind) = raw.kind {
        if kind != "playlist" {
            return Err(Diagnostic::at(
                path,
                locate(text, "kind", None, 0),
                format!("kind is `{kind}`: a playlist file must say `kind: playlist`"),
            ));
        }
    }
    Ok(Playlist {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source: path.to_path_buf(),
        songs: raw.songs,
    })
}

impl Library {
    /// Scans `root` recursively. Files named song.yaml / song.yml, or any YAML with
    /// `kind: song`, are songs; YAML with `kind: playlist` are playlists; other YAML is left
    /// alone. Symlink loops are detected and reported, not followed.
    pub fn scan(root: &Path, extra_roots: &[PathBuf]) -> Library {
        let policy = RootPolicy::new(root, extra_roots);
        let mut library = Library {
            root: root.to_path_buf(),
            ..Library::default()
        };
        let mut files = Vec::new();
        let mut visited = HashSet::new();
        walk(root, 0, &mut visited, &mut files, &mut library.errors);
        files.sort();

        let mut mtrack_keys: BTreeMap<&'static str, (PathBuf, usize)> = BTreeMap::new();
        let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            let text = match read_yaml_text(&file) {
                Ok(text) => text,
                Err(e) => {
                    library.errors.push(e);
                    continue;
                }
            };
            let is_song_file = matches!(
                file.file_name().and_then(|n| n.to_str()),
                Some("song.yaml") | Some("song.yml")
            );
            let kind = serde_yaml::from_str::<KindOnly>(&text)
                .ok()
                .and_then(|k| k.kind);
            match (kind.as_deref(), is_song_file) {
                (Some("playlist"), _) => match parse_playlist(&file, &text) {
                    Ok(p) => library.playlists.push(p),
                    Err(e) => library.errors.push(e),
                },
                (Some("song"), _) | (_, true) => {
                    let parsed = parse_song(&file, &text, &policy);
                    for key in parsed.mtrack_keys {
                        mtrack_keys
                            .entry(key)
                            .and_modify(|(_, n)| *n += 1)
                            .or_insert((file.clone(), 1));
                    }
                    library.errors.extend(parsed.errors);
                    if let Some(song) = parsed.song {
                        if let Some(first) = names.get(&song.name) {
                            library.errors.push(Diagnostic::at(
                                &file,
                                locate(&text, "name", None, 0),
                                format!(
                                    "song name `{}` is already used by {}: expected unique song names (this one is skipped)",
                                    song.name,
                                    first.display()
                                ),
                            ));
                        } else {
                            names.insert(song.name.clone(), file.clone());
                            library.songs.push(song);
                        }
                    }
                }
                _ => {}
            }
        }
        for (key, (example, count)) in mtrack_keys {
            library.warnings.push(Diagnostic::file(
                example,
                format!(
                    "`{key}` (used by {count} song{}) is an mtrack feature backline does not play; ignored",
                    if count == 1 { "" } else { "s" }
                ),
            ));
        }
        library.songs.sort_by(|a, b| a.name.cmp(&b.name));
        library.playlists.sort_by(|a, b| a.name.cmp(&b.name));
        library
    }

    /// Looks a song up by name.
    pub fn song(&self, name: &str) -> Option<&Song> {
        self.songs.iter().find(|s| s.name == name)
    }

    /// The songs a playlist names, with a diagnostic for each name that is not a loadable song.
    pub fn resolve_playlist(&self, playlist: &Playlist) -> Setlist {
        let text = fs::read_to_string(&playlist.source).unwrap_or_default();
        let mut songs = Vec::new();
        let mut missing = Vec::new();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for name in &playlist.songs {
            match self.song(name) {
                Some(song) => songs.push(song.clone()),
                None => {
                    let nth = seen.iter().filter(|s| **s == name.as_str()).count();
                    missing.push(Diagnostic::at(
                        &playlist.source,
                        locate(&text, "-", Some(name), nth).or_else(|| find_list_item(&text, name)),
                        format!(
                            "playlist names song `{name}`, which is not in the library (or failed to load): it is skipped"
                        ),
                    ))
                }
            }
            seen.insert(name);
        }
        Setlist {
            name: playlist.name.clone(),
            songs,
            missing,
        }
    }
}

fn find_list_item(text: &str, name: &str) -> Option<Place> {
    text.lines().enumerate().find_map(|(index, line)| {
        let trimmed = line.trim_start();
        let item = trimmed.strip_prefix('-')?.trim();
        let item = item.trim_matches(|c| c == '"' || c == '\'');
        (item == name).then(|| Place {
            line: index + 1,
            column: line.len() - trimmed.len() + 3,
        })
    })
}

fn walk(
    dir: &Path,
    depth: usize,
    visited: &mut HashSet<PathBuf>,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<Diagnostic>,
) {
    if depth > MAX_SCAN_DEPTH {
        errors.push(Diagnostic::file(
            dir,
            format!("folder nesting deeper than {MAX_SCAN_DEPTH}: not scanned further"),
        ));
        return;
    }
    let canonical = match dir.canonicalize() {
        Ok(c) => c,
        Err(e) => {
            errors.push(Diagnostic::file(dir, format!("cannot open folder: {e}")));
            return;
        }
    };
    if !visited.insert(canonical) {
        errors.push(Diagnostic::file(
            dir,
            "symlink loop: this folder was already scanned, skipped",
        ));
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(Diagnostic::file(dir, format!("cannot read folder: {e}")));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, depth + 1, visited, files, errors);
        } else if is_yaml(&path) {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, text).expect("write");
    }

    #[test]
    fn scan_finds_songs_playlists_and_problems() {
        let root = std::env::temp_dir().join(format!("backline-scan-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        write(
            &root.join("a/song.yaml"),
            "kind: song\nname: A\ntracks:\n  - name: t\n    file: t.wav\nlighting: []\n",
        );
        write(
            &root.join("deep/b/song.yaml"),
            "kind: song\nname: B\ntracks:\n  - name: t\n    file: t.wav\nlighting: []\n",
        );
        write(
            &root.join("c/song.yaml"),
            "kind: song\nname: A\ntracks:\n  - name: t\n    file: t.wav\n",
        );
        write(
            &root.join("d/song.yaml"),
            "kind: song\nname: D\ntracks: [\n",
        );
        write(
            &root.join("set.yaml"),
            "kind: playlist\nsongs:\n  - B\n  - Nope\n  - A\n",
        );
        let _ = std::os::unix::fs::symlink(&root, root.join("a/loop"));
        let library = Library::scan(&root, &[]);
        let names: Vec<&str> = library.songs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["A", "B"]);
        let errors: Vec<String> = library.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("c/song.yaml:2:7") && e.contains("already used")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("d/song.yaml:")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("symlink loop")),
            "{errors:?}"
        );
        assert_eq!(library.warnings.len(), 1, "one warning per mtrack key");
        assert!(library.warnings[0].message.contains("used by 2 songs"));
        let set = library.resolve_playlist(&library.playlists[0]);
        assert_eq!(
            set.songs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            vec!["B", "A"]
        );
        assert_eq!(set.missing.len(), 1);
        assert_eq!(set.missing[0].line, Some(4), "{}", set.missing[0]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn invalid_utf8_and_oversized_yaml_are_refused() {
        let dir = std::env::temp_dir().join(format!("backline-yaml-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let bad = dir.join("bad.yaml");
        fs::write(&bad, b"name: ok\nx: \xff\xfe\n").expect("write");
        let e = read_yaml_text(&bad).expect_err("invalid utf8");
        assert_eq!((e.line, e.column), (Some(2), Some(4)));
        let big = dir.join("big.yaml");
        fs::write(&big, vec![b'#'; (MAX_YAML_BYTES + 1) as usize]).expect("write");
        assert!(read_yaml_text(&big)
            .expect_err("too big")
            .message
            .contains("bytes"));
        let _ = fs::remove_dir_all(&dir);
    }
}

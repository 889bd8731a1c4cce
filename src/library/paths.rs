//! Where files may come from: track and MIDI paths are resolved against the song directory
//! and must stay inside the library root (or a root the config allows explicitly), so a
//! song.yaml from a stranger cannot make the player read `/etc/shadow`.

use std::path::{Component, Path, PathBuf};

/// The roots file references may point into.
#[derive(Debug, Clone)]
pub struct RootPolicy {
    roots: Vec<PathBuf>,
}

impl RootPolicy {
    /// The library root plus the config's `extra_roots`.
    pub fn new(library_root: &Path, extra_roots: &[PathBuf]) -> Self {
        let roots = std::iter::once(library_root)
            .chain(extra_roots.iter().map(PathBuf::as_path))
            .map(canonical_or_normal)
            .collect();
        RootPolicy { roots }
    }

    /// Resolves `reference` (as written in a YAML file in `dir`) to an absolute path, or
    /// explains why it is refused.
    pub fn resolve(&self, dir: &Path, reference: &str) -> Result<PathBuf, String> {
        if reference.trim().is_empty() {
            return Err(
                "the file name is empty: expected a path relative to the song directory".into(),
            );
        }
        let joined = dir.join(reference);
        let resolved = canonical_or_normal(&joined);
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(resolved)
        } else {
            Err(format!(
                "`{reference}` resolves to {} which is outside the library ({}): \
                 expected a file under the library root, or add its folder to `extra_roots` in backline.yaml",
                resolved.display(),
                self.roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// The canonical path when the file exists (following symlinks, so a link out of the library
/// is caught), else the lexically normalised absolute path.
pub fn canonical_or_normal(path: &Path) -> PathBuf {
    if let Ok(canonical) = path.canonicalize() {
        return canonical;
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    // Canonicalise the longest existing ancestor, then append the rest lexically.
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other.as_os_str()),
        }
    }
    let mut existing = normal.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return normal,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.iter().rev() {
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes_and_accepts_inside() {
        let root = std::env::temp_dir().join(format!("backline-paths-{}", std::process::id()));
        let song = root.join("song");
        std::fs::create_dir_all(&song).expect("mkdir");
        let policy = RootPolicy::new(&root, &[]);
        assert!(policy.resolve(&song, "a.wav").is_ok());
        assert!(policy.resolve(&song, "../other/a.wav").is_ok());
        assert!(policy.resolve(&song, "../../etc/shadow").is_err());
        assert!(policy.resolve(&song, "/etc/shadow").is_err());
        let link = song.join("escape");
        let _ = std::os::unix::fs::symlink("/etc", &link);
        assert!(policy.resolve(&song, "escape/passwd").is_err());
        let allowed = RootPolicy::new(&root, &[PathBuf::from("/etc")]);
        assert!(allowed.resolve(&song, "/etc/passwd").is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }
}

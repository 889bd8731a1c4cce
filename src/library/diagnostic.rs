//! Errors and warnings about user input, always naming the file and, for YAML, the line and
//! column, so a musician can fix the right spot before the show.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in the user's files: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in a text file.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// A problem with a whole file (missing, unreadable, undecodable).
    pub fn file(file: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.as_ref().to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// A problem at a known place in a text file.
    pub fn at(file: impl AsRef<Path>, place: Option<Place>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.as_ref().to_path_buf(),
            line: place.map(|p| p.line),
            column: place.map(|p| p.column),
            message: message.into(),
        }
    }

    /// Turns a serde_yaml error on `text` into a diagnostic, keeping its line and column.
    /// serde reports a duplicate key without a place; it is found in `text` (the second
    /// occurrence of the key).
    pub fn from_yaml(file: impl AsRef<Path>, text: &str, error: &serde_yaml::Error) -> Self {
        let message = error.to_string();
        let duplicate = message
            .strip_prefix("duplicate field `")
            .and_then(|rest| rest.split('`').next())
            .and_then(|key| {
                locate(text, key, None, 1).map(|p| Place {
                    line: p.line,
                    column: p.column.saturating_sub(key.len() + 2).max(1),
                })
            });
        let place = duplicate.or_else(|| {
            error.location().map(|l| Place {
                line: l.line(),
                column: l.column(),
            })
        });
        // serde_yaml appends " at line X column Y" to its message; we print the place in
        // front instead, so strip it to keep one line per problem.
        let mut message = message;
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        // serde_yaml's guards against hostile YAML, said in words a user can act on.
        if message.starts_with("repetition limit exceeded") {
            message = "aliases expand to too much data (an alias bomb?): expected plain YAML with few `*alias` references".into();
        } else if message.starts_with("recursion limit exceeded") {
            message = "nested too deeply (more than 128 levels): expected the structure of a song, playlist or config file".into();
        } else if message.starts_with("duplicate field") {
            message.push_str(": expected each key once");
        }
        Diagnostic::at(file, place, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// A 1-based line and column in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Finds where `key: value` is written in a YAML text, for errors found after parsing
/// (serde_yaml's values carry no positions). Looks for the `nth` occurrence (0-based) of the
/// key, optionally requiring the value on the same line, and returns the place of the value.
pub fn locate(text: &str, key: &str, value: Option<&str>, nth: usize) -> Option<Place> {
    let mut seen = 0;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
        let indent = line.len() - trimmed.len();
        let Some(rest) = trimmed.strip_prefix(key) else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        if let Some(value) = value {
            let written = rest.trim().trim_matches(|c| c == '"' || c == '\'');
            if !written.starts_with(value) && !rest.contains(value) {
                continue;
            }
        }
        if seen < nth {
            seen += 1;
            continue;
        }
        let value_offset = rest.len() - rest.trim_start().len();
        let column = indent + key.len() + 1 + value_offset + 1;
        return Some(Place {
            line: index + 1,
            column: column.min(line.len().max(1)),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_line_column() {
        let d = Diagnostic::at(
            "songs/a/song.yaml",
            Some(Place { line: 3, column: 7 }),
            "bad",
        );
        assert_eq!(d.to_string(), "songs/a/song.yaml:3:7: bad");
        assert_eq!(Diagnostic::file("x.wav", "gone").to_string(), "x.wav: gone");
    }

    #[test]
    fn locate_finds_nth_key_with_value() {
        let text = "tracks:\n  - name: a\n    file: a.wav\n  - name: b\n    file: b.wav\n";
        assert_eq!(
            locate(text, "file", Some("b.wav"), 0),
            Some(Place {
                line: 5,
                column: 11
            })
        );
        assert_eq!(
            locate(text, "name", None, 1),
            Some(Place {
                line: 4,
                column: 11
            })
        );
        assert_eq!(locate(text, "missing", None, 0), None);
    }
}

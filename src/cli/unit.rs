//! `backline unit`: prints the systemd unit for people who install from cargo. The template is
//! the packaged unit itself (packaging/backline.service), so the .deb and a cargo install run
//! under the same hardening; only the binary, the show, the library and the user change.

use std::path::{Path, PathBuf};

/// The unit the .deb installs, verbatim.
pub const TEMPLATE: &str = include_str!("../../packaging/backline.service");

/// Where the packaged unit's paths point.
pub const PACKAGED_BINARY: &str = "/usr/bin/backline";
/// The config the packaged unit plays.
pub const PACKAGED_CONFIG: &str = "/etc/backline/backline.yaml";
/// The library the packaged config names.
pub const PACKAGED_LIBRARY: &str = "/var/lib/backline/songs";
/// The user the packaged unit runs as (created by sysusers.d).
pub const PACKAGED_USER: &str = "backline";

/// What `backline unit` fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOptions {
    /// The backline binary (ExecStart).
    pub binary: PathBuf,
    /// The backline.yaml to play, if given.
    pub config: Option<PathBuf>,
    /// The song library (read-only for the service), if given.
    pub library: Option<PathBuf>,
    /// The user the service runs as.
    pub user: String,
}

/// Folders that `ProtectHome=yes` hides from the service.
const HOME_ROOTS: [&str; 3] = ["/home", "/root", "/run/user"];

/// Renders the unit. `ExecStart` plays the config when one is given, else the library (a
/// folder of songs, or a folder with backline.yaml), else the packaged config path.
pub fn render(options: &UnitOptions) -> Result<String, String> {
    let config = options.config.as_deref();
    let library = options.library.as_deref();
    for (what, path) in [
        ("binary", Some(options.binary.as_path())),
        ("config", config),
        ("library", library),
    ] {
        if let Some(path) = path {
            if !path.is_absolute() {
                return Err(format!(
                    "the {what} path `{}` is not absolute",
                    path.display()
                ));
            }
        }
    }
    if options.user.is_empty()
        || !options
            .user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!(
            "`{}` is not a user name: expected letters, digits, `_`, `-` or `.`",
            options.user
        ));
    }
    let target = config
        .or(library)
        .unwrap_or(Path::new(PACKAGED_CONFIG))
        .to_path_buf();
    let library_path = library
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(PACKAGED_LIBRARY));
    // Paths under /home, /root or /run/user are hidden by ProtectHome=yes: show an empty home
    // instead (tmpfs) with just those paths bound in, read-only.
    let mut home_binds: Vec<PathBuf> = Vec::new();
    let config_dir = config.and_then(Path::parent);
    for path in [
        Some(options.binary.as_path()),
        config_dir,
        Some(library_path.as_path()),
    ]
    .into_iter()
    .flatten()
    {
        let under_home = HOME_ROOTS.iter().any(|root| path.starts_with(root));
        if under_home && !home_binds.iter().any(|b| path.starts_with(b)) {
            home_binds.retain(|b| !b.starts_with(path));
            home_binds.push(path.to_path_buf());
        }
    }

    let mut out = String::new();
    out.push_str("# Printed by `backline unit`");
    for (flag, value) in [
        ("--config", config.map(|p| p.display().to_string())),
        ("--library", library.map(|p| p.display().to_string())),
    ] {
        if let Some(value) = value {
            out.push_str(&format!(" {flag} {value}"));
        }
    }
    if options.user != PACKAGED_USER {
        out.push_str(&format!(" --user {}", options.user));
    }
    out.push_str(".\n");
    out.push_str(&format!(
        "# Install: save as /etc/systemd/system/backline.service, then\n\
         #   systemctl daemon-reload && systemctl enable --now backline\n\
         # The user `{user}` must exist and be in the audio group, e.g.\n\
         #   useradd --system --groups audio --home-dir /var/lib/backline --shell /usr/sbin/nologin {user}\n",
        user = options.user
    ));
    let mut seen_exec = false;
    let mut seen_user = false;
    let mut seen_library = false;
    let mut seen_home = false;
    for line in TEMPLATE.lines() {
        if let Some(rest) = line.strip_prefix("ExecStart=") {
            if rest != format!("{PACKAGED_BINARY} play {PACKAGED_CONFIG}") {
                return Err(format!("unexpected ExecStart= in the template: {rest}"));
            }
            seen_exec = true;
            out.push_str(&format!(
                "ExecStart={} play {}\n",
                quote(&options.binary),
                quote(&target)
            ));
        } else if line == format!("User={PACKAGED_USER}") {
            seen_user = true;
            out.push_str(&format!("User={}\n", options.user));
        } else if line == format!("ReadOnlyPaths=-{PACKAGED_LIBRARY}") {
            seen_library = true;
            out.push_str(&format!("ReadOnlyPaths=-{}\n", quote(&library_path)));
        } else if line == "ProtectHome=yes" {
            seen_home = true;
            if home_binds.is_empty() {
                out.push_str("ProtectHome=yes\n");
            } else {
                out.push_str(
                    "# Home directories are an empty tmpfs, except for what the show needs.\n",
                );
                out.push_str("ProtectHome=tmpfs\n");
                let binds: Vec<String> = home_binds.iter().map(|p| quote(p)).collect();
                out.push_str(&format!("BindReadOnlyPaths={}\n", binds.join(" ")));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !(seen_exec && seen_user && seen_library && seen_home) {
        return Err("the unit template lost a line `backline unit` fills in".into());
    }
    Ok(out)
}

/// Quotes a path for a unit file: `%` and `$` would be specifiers and variables there, and
/// whitespace or quotes need double quotes.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> UnitOptions {
        UnitOptions {
            binary: PathBuf::from(PACKAGED_BINARY),
            config: None,
            library: None,
            user: PACKAGED_USER.into(),
        }
    }

    fn body(unit: &str) -> String {
        // Everything after the header `backline unit` adds.
        unit.lines()
            .skip_while(|l| !l.starts_with("# backline:"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    #[test]
    fn packaged_paths_give_back_the_packaged_unit() {
        let unit = render(&options()).unwrap();
        assert_eq!(body(&unit), TEMPLATE);
    }

    #[test]
    fn cargo_install_paths_are_filled_in_and_home_is_bound_read_only() {
        let unit = render(&UnitOptions {
            binary: PathBuf::from("/home/ana/.cargo/bin/backline"),
            config: None,
            library: Some(PathBuf::from("/home/ana/My Show")),
            user: "ana".into(),
        })
        .unwrap();
        assert!(
            unit.contains("\nExecStart=/home/ana/.cargo/bin/backline play \"/home/ana/My Show\"\n"),
            "{unit}"
        );
        assert!(unit.contains("\nUser=ana\n"), "{unit}");
        assert!(
            unit.contains("\nReadOnlyPaths=-\"/home/ana/My Show\"\n"),
            "{unit}"
        );
        assert!(unit.contains("\nProtectHome=tmpfs\n"), "{unit}");
        assert!(
            unit.contains(
                "\nBindReadOnlyPaths=/home/ana/.cargo/bin/backline \"/home/ana/My Show\"\n"
            ),
            "{unit}"
        );
        assert!(!unit.contains("ProtectHome=yes"), "{unit}");
    }

    #[test]
    fn the_config_is_played_and_its_folder_bound() {
        let unit = render(&UnitOptions {
            binary: PathBuf::from("/usr/local/bin/backline"),
            config: Some(PathBuf::from("/root/show/backline.yaml")),
            library: Some(PathBuf::from("/root/show/songs")),
            user: PACKAGED_USER.into(),
        })
        .unwrap();
        assert!(
            unit.contains("\nExecStart=/usr/local/bin/backline play /root/show/backline.yaml\n"),
            "{unit}"
        );
        // The library sits inside the config's folder: one bind covers both.
        assert!(unit.contains("\nBindReadOnlyPaths=/root/show\n"), "{unit}");
    }

    #[test]
    fn specifiers_and_bad_input_are_handled() {
        assert_eq!(quote(Path::new("/srv/100%/$HOME")), "/srv/100%%/$$HOME");
        let relative = render(&UnitOptions {
            library: Some(PathBuf::from("show")),
            ..options()
        });
        assert!(relative.unwrap_err().contains("not absolute"));
        let user = render(&UnitOptions {
            user: "a b".into(),
            ..options()
        });
        assert!(user.unwrap_err().contains("not a user name"));
    }
}

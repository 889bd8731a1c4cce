//! The control socket: a Unix stream socket speaking one line per request and one line per
//! reply, so `backline ctl`, `socat` or a script can drive the player like the keys and the
//! footswitch do.
//!
//! Requests (ASCII, one per line, at most [`MAX_REQUEST`] bytes):
//! `play`, `stop`, `pause`, `next`, `previous`, `status`, `status --json`, `help`.
//! Replies: `ok` or `ok <text>` on success, `error: <message>` on failure, and for
//! `status --json` one JSON object (`{…}`). A connection may send several requests; it is
//! closed after [`IDLE_TIMEOUT`] without one, or after a request too long to be one.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Shared;
use crate::engine::Request;

/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 256;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at the same time; more get `error: busy`.
const MAX_CLIENTS: usize = 8;
/// Requests served on one connection.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;
/// How often the accept loop looks at its stop flag (bounds the shutdown delay).
const POLL_MS: i32 = 20;
/// The group that may use the socket, when it exists.
const SOCKET_GROUP: &str = "backline";

/// What a request line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
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
    /// The player's state, as text or JSON.
    Status {
        /// One JSON object instead of text.
        json: bool,
    },
    /// The list of requests.
    Help,
}

/// Parses one request line (without its newline). Words are separated by spaces.
pub fn parse_request(line: &str) -> Result<ControlRequest, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let request = match words.as_slice() {
        ["play"] => ControlRequest::Play,
        ["stop"] => ControlRequest::Stop,
        ["pause"] => ControlRequest::Pause,
        ["next"] => ControlRequest::Next,
        ["previous"] | ["prev"] => ControlRequest::Previous,
        ["status"] => ControlRequest::Status { json: false },
        ["status", "--json"] => ControlRequest::Status { json: true },
        ["help"] => ControlRequest::Help,
        [] => return Err("empty request: expected one of play, stop, pause, next, previous, status [--json], help".into()),
        _ => {
            let shown: String = line.chars().take(40).collect();
            return Err(format!(
                "unknown request `{}`: expected one of play, stop, pause, next, previous, status [--json], help",
                shown.escape_default()
            ));
        }
    };
    Ok(request)
}

/// The listening socket, bound before the show starts.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl ControlSocket {
    /// Binds `path` with mode 0660 (group `backline` when that group exists), creating its
    /// folder (0700) if needed. A leftover socket nobody answers on is removed; a socket
    /// that answers (another backline) or a file that is not a socket is left alone and
    /// is an error.
    pub fn bind(path: &Path) -> Result<ControlSocket, String> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "{shown} answers: another backline is running with this control socket"
                    ));
                }
                match std::fs::remove_file(path) {
                    Ok(()) => info!("control socket: removed the stale {shown}"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot remove the stale socket {shown}: {e}")),
                }
            }
            Ok(_) => {
                return Err(format!(
                    "{shown} exists and is not a socket: not removing it; choose another path with --control-socket"
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot look at {shown}: {e}")),
        }
        let listener =
            UnixListener::bind(path).map_err(|e| format!("cannot create {shown}: {e}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
        if let Some(gid) = group_id(SOCKET_GROUP) {
            if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
                warn!("control socket {shown}: cannot give it to group `{SOCKET_GROUP}` ({e}): only this user can use it");
            }
        }
        let inode = std::fs::symlink_metadata(path)
            .map(|m| m.ino())
            .map_err(|e| format!("cannot look at {shown}: {e}"))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            inode,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients on a normal-priority thread until `stop` is set; the socket file is
    /// removed when the thread ends.
    pub(super) fn serve(
        self,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("backline-control".into())
            .spawn(move || {
                let active = Arc::new(AtomicUsize::new(0));
                while !stop.load(Ordering::Relaxed) {
                    if !readable(&self.listener, POLL_MS) {
                        continue;
                    }
                    let stream = match self.listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            debug!("control socket: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    };
                    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        active.fetch_sub(1, Ordering::AcqRel);
                        refuse(stream);
                        continue;
                    }
                    let shared = shared.clone();
                    let guard = ActiveGuard(active.clone());
                    let spawned = std::thread::Builder::new()
                        .name("backline-ctl-client".into())
                        .spawn(move || {
                            let _guard = guard;
                            serve_client(stream, &shared);
                        });
                    if let Err(e) = spawned {
                        warn!("control socket: cannot serve a client: {e}");
                    }
                }
                self.remove();
            })
    }

    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Counts a client thread for as long as it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse(mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(b"error: busy: too many control connections, try again\n");
}

/// Waits up to `timeout_ms` for a connection to accept.
fn readable(listener: &UnixListener, timeout_ms: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
    n > 0 && fd.revents & libc::POLLIN != 0
}

fn serve_client(stream: UnixStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::with_capacity(MAX_REQUEST, stream);
    let mut line = Vec::with_capacity(MAX_REQUEST);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        line.clear();
        let read = reader
            .by_ref()
            .take(MAX_REQUEST as u64)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {}
            // Timeout or a broken peer: nothing to answer.
            Err(_) => return,
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() >= MAX_REQUEST {
            let _ = writer.write_all(
                format!(
                    "error: request too long: at most {} bytes per line\n",
                    MAX_REQUEST - 1
                )
                .as_bytes(),
            );
            return;
        }
        let reply = match std::str::from_utf8(&line) {
            Ok(text) => answer(text.trim_end_matches(['\n', '\r']), shared),
            Err(_) => "error: the request is not UTF-8 text".to_string(),
        };
        if writer.write_all(reply.as_bytes()).is_err() || writer.write_all(b"\n").is_err() {
            return;
        }
        if !complete {
            // The peer closed the connection after a last line without newline.
            return;
        }
    }
}

/// The reply line (without newline) to one request line.
pub(super) fn answer(line: &str, shared: &Shared) -> String {
    let request = match parse_request(line) {
        Ok(request) => request,
        Err(e) => {
            debug!("control socket: {e}");
            return format!("error: {e}");
        }
    };
    let to_player = match request {
        ControlRequest::Play => Request::Play,
        ControlRequest::Stop => Request::Stop,
        ControlRequest::Pause => Request::TogglePause,
        ControlRequest::Next => Request::Next,
        ControlRequest::Previous => Request::Previous,
        ControlRequest::Status { json: false } => return format!("ok {}", shared.status_text()),
        ControlRequest::Status { json: true } => return shared.status_json().to_string(),
        ControlRequest::Help => {
            return "ok requests: play, stop, pause, next, previous, status, status --json, help"
                .into()
        }
    };
    info!("control socket: {line}");
    match shared.send(to_player) {
        Ok(()) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Why `backline ctl` failed.
#[derive(Debug)]
pub enum CtlError {
    /// No socket at the path (or nobody listening).
    NotRunning(String),
    /// The player answered `error: …`.
    Refused(String),
    /// Anything else on the way.
    Io(String),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::NotRunning(m) | CtlError::Refused(m) | CtlError::Io(m) => f.write_str(m),
        }
    }
}

/// Sends one request line to the socket at `path` and returns the reply: the text after
/// `ok ` (empty for a bare `ok`), or the JSON object as it came.
pub fn request(path: &Path, line: &str, timeout: Duration) -> Result<String, CtlError> {
    let shown = path.display();
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            CtlError::NotRunning(format!(
                "is backline running? expected its control socket at {shown} ({e})"
            ))
        }
        std::io::ErrorKind::PermissionDenied => CtlError::Io(format!(
            "cannot connect to {shown}: {e} (the socket belongs to group `{SOCKET_GROUP}`: is this user in it?)"
        )),
        _ => CtlError::Io(format!("cannot connect to {shown}: {e}")),
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| CtlError::Io(format!("cannot send to {shown}: {e}")))?;
    let mut reply = Vec::new();
    BufReader::new(&stream)
        .take(1 << 20)
        .read_until(b'\n', &mut reply)
        .map_err(|e| CtlError::Io(format!("no reply from {shown}: {e}")))?;
    let reply = String::from_utf8_lossy(&reply).trim_end().to_string();
    if reply.is_empty() {
        return Err(CtlError::Io(format!("{shown} closed without a reply")));
    }
    if reply.starts_with('{') {
        return Ok(reply);
    }
    if let Some(rest) = reply.strip_prefix("error:") {
        return Err(CtlError::Refused(rest.trim().to_string()));
    }
    match reply.strip_prefix("ok") {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => Ok(rest.trim().to_string()),
        _ => Err(CtlError::Io(format!(
            "unexpected reply from {shown}: {reply}"
        ))),
    }
}

/// The id of group `name`, when it exists.
fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: getgrnam_r writes into the zeroed `group` and `buffer` we own; `found` points
    // into them or is null.
    unsafe {
        let mut group: libc::group = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(group.gr_gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request("next"), Ok(ControlRequest::Next));
        assert_eq!(parse_request("  play  "), Ok(ControlRequest::Play));
        assert_eq!(
            parse_request("status --json"),
            Ok(ControlRequest::Status { json: true })
        );
        assert!(parse_request("").is_err());
        assert!(parse_request("rm -rf /")
            .unwrap_err()
            .contains("unknown request"));
        assert!(parse_request("next please").is_err());
    }
}

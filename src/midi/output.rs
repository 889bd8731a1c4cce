//! MIDI outputs the real-time thread writes to. Each output is a slot holding a
//! non-blocking file descriptor in an atomic: the clock thread only ever calls `write(2)` on
//! it; opening, re-opening after a loss, and closing happen on a normal-priority connector
//! thread, so a missing or unplugged device never blocks or stops the show.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::library::{MidiOutputConfig, MidiTarget};
use crate::rt::RtSettings;

/// Opens (or re-opens) one output, returning a descriptor the RT thread can write to.
type Opener = Box<dyn Fn() -> Result<i32, String> + Send>;

/// Shortest and longest wait between attempts to (re)open a missing output.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a retired descriptor stays open after the slot stops handing it out.
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// One output as the clock thread sees it: atomics only.
#[derive(Debug)]
pub struct OutputSlot {
    /// Name from the config.
    pub name: String,
    /// Position in `midi.outputs` + 1: the output's tag in the stats.
    pub tag: u16,
    /// Open descriptor, or -1 while the device is missing.
    fd: AtomicI32,
    /// Set by the writer when a write fails for good (device gone, reader closed the FIFO).
    lost: AtomicBool,
    /// Bytes dropped because the device was missing or its buffer full.
    pub dropped: AtomicU64,
    /// Whether this output carries the beat clock.
    pub clock: bool,
    /// Whether this output carries MIDI files and song-select events.
    pub midi_file: bool,
    /// Signed offset applied to every deadline, in ns.
    pub offset_ns: i64,
}

impl OutputSlot {
    /// Writes `bytes` now; true when they went out (the output is there and took at least a
    /// byte). Real-time safe: one non-blocking `write(2)`, no allocation.
    #[inline]
    pub fn write(&self, bytes: &[u8]) -> bool {
        let fd = self.fd.load(Ordering::Acquire);
        if fd < 0 {
            self.dropped
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return false;
        }
        // SAFETY: fd is an open descriptor owned by this slot (the connector only closes it
        // after swapping it out); bytes is a valid buffer of bytes.len() bytes.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != libc::EAGAIN && errno != libc::EINTR {
                self.lost.store(true, Ordering::Release);
            }
            self.dropped
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            false
        } else {
            if (written as usize) < bytes.len() {
                self.dropped
                    .fetch_add((bytes.len() - written as usize) as u64, Ordering::Relaxed);
            }
            written > 0
        }
    }

    /// Whether this output carries `stream`.
    pub fn carries(&self, stream: super::jack::Stream) -> bool {
        match stream {
            super::jack::Stream::Clock => self.clock,
            super::jack::Stream::File => self.midi_file,
        }
    }

    /// Whether the output is open now.
    pub fn is_connected(&self) -> bool {
        self.fd.load(Ordering::Acquire) >= 0
    }
}

/// All configured outputs, plus the connector thread that keeps them open.
pub struct Outputs {
    /// The slots, in config order.
    pub slots: Vec<Arc<OutputSlot>>,
    stop: Arc<AtomicBool>,
}

impl Outputs {
    /// Opens what can be opened now; each output that cannot is one warning at start and is
    /// retried in the background (250 ms doubling to 5 s) until it appears. `jack:` outputs
    /// are not here: they are ports on the JACK output's client (`midi::jack`).
    pub fn open(configs: &[MidiOutputConfig], rt_settings: RtSettings) -> Outputs {
        let mut slots = Vec::new();
        let mut openers: Vec<(Arc<OutputSlot>, String, Opener)> = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            if matches!(config.target, MidiTarget::Jack(_)) {
                // A port on the JACK output's own client: see `midi::jack`.
                continue;
            }
            let offset_ns = (config.offset_ms * 1e6) as i64;
            let slot = Arc::new(OutputSlot {
                name: config.name.clone(),
                tag: u16::try_from(index + 1).unwrap_or(u16::MAX),
                fd: AtomicI32::new(-1),
                lost: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
                clock: config.clock,
                midi_file: config.midi_file,
                offset_ns,
            });
            let (what, opener): (String, Option<Opener>) = match &config.target {
                MidiTarget::Path(path) => {
                    if let Some(filesystem) = fifo_on_disk(path) {
                        tracing::warn!(
                            "MIDI output `{}`: {} is a FIFO on a {filesystem} filesystem, which updates the FIFO's modification time on every write (on ext4 through its journal) and can hold the clock's write for milliseconds; make the FIFO on tmpfs (/run, /dev/shm) instead",
                            config.name,
                            path.display()
                        );
                    }
                    let path = path.clone();
                    (
                        path.display().to_string(),
                        Some(Box::new(move || open_raw(&path))),
                    )
                }
                MidiTarget::Port(port) => {
                    let port = port.clone();
                    (
                        format!("port `{port}`"),
                        Some(Box::new(move || {
                            super::port::open_output(&port, rt_settings)
                        })),
                    )
                }
                MidiTarget::Rawmidi(device) => match rawmidi_node(device) {
                    Some(node) => (
                        format!("rawmidi {device} ({})", node.display()),
                        Some(Box::new(move || open_raw(&node)) as Opener),
                    ),
                    None => (
                        format!("rawmidi `{device}` (expected hw:CARD,DEVICE[,SUBDEVICE])"),
                        None,
                    ),
                },
                MidiTarget::Jack(_) => continue,
            };
            match opener {
                Some(opener) => {
                    match opener() {
                        Ok(fd) => {
                            slot.fd.store(fd, Ordering::Release);
                            tracing::info!("MIDI output `{}`: {what}", config.name);
                        }
                        Err(e) => {
                            tracing::warn!(
                                "MIDI output `{}` ({what}) is not available: {e}; the show plays without it and it is retried in the background",
                                config.name
                            );
                            crate::stats::device_event(
                                &format!("MIDI output `{}`", config.name),
                                true,
                                &format!("not available at start: {e}"),
                            );
                        }
                    }
                    openers.push((slot.clone(), what, opener));
                }
                None => tracing::warn!(
                    "MIDI output `{}`: {what} is not supported by this build (use `path:`, `port:` or `rawmidi: hw:C,D`); the show plays without it",
                    config.name
                ),
            }
            slots.push(slot);
        }
        let stop = Arc::new(AtomicBool::new(false));
        if !openers.is_empty() {
            let stop = stop.clone();
            let spawned = thread::Builder::new()
                .name("backline-midi-connect".into())
                .spawn(move || reconnect_loop(&openers, &stop));
            if let Err(e) = spawned {
                tracing::error!("cannot start the MIDI reconnect thread: {e}");
            }
        }
        Outputs { slots, stop }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn reconnect_loop(openers: &[(Arc<OutputSlot>, String, Opener)], stop: &AtomicBool) {
    let mut waits: Vec<Duration> = vec![RETRY_MIN; openers.len()];
    let mut next_try: Vec<std::time::Instant> = vec![std::time::Instant::now(); openers.len()];
    while !stop.load(Ordering::Relaxed) {
        for (index, (slot, what, opener)) in openers.iter().enumerate() {
            if slot.lost.swap(false, Ordering::AcqRel) {
                let fd = slot.fd.swap(-1, Ordering::AcqRel);
                if fd >= 0 {
                    // The clock thread may have loaded fd just before the swap and be inside
                    // write(2): give it time to finish, so the number is not reused (by a
                    // file open elsewhere) while it still writes MIDI bytes to it.
                    thread::sleep(CLOSE_GRACE);
                    // SAFETY: the slot no longer hands out fd; we own it and close it once.
                    unsafe { libc::close(fd) };
                }
                tracing::warn!("MIDI output `{}` lost ({what}); retrying", slot.name);
                crate::stats::device_event(&format!("MIDI output `{}`", slot.name), true, what);
                waits[index] = RETRY_MIN;
                next_try[index] = std::time::Instant::now() + RETRY_MIN;
            }
            if slot.is_connected() || std::time::Instant::now() < next_try[index] {
                continue;
            }
            match opener() {
                Ok(fd) => {
                    slot.fd.store(fd, Ordering::Release);
                    waits[index] = RETRY_MIN;
                    tracing::info!("MIDI output `{}` connected ({what})", slot.name);
                    crate::stats::device_event(
                        &format!("MIDI output `{}`", slot.name),
                        false,
                        what,
                    );
                }
                Err(_) => {
                    next_try[index] = std::time::Instant::now() + waits[index];
                    waits[index] = (waits[index] * 2).min(RETRY_MAX);
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(CLOSE_GRACE);
    for (slot, _, _) in openers {
        let fd = slot.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: swapped out of the slot; closed once.
            unsafe { libc::close(fd) };
        }
    }
}

/// The device node of an ALSA rawmidi name: `hw:1,0` or `hw:1,0,0` is /dev/snd/midiC1D0.
/// Writing to the node is what ALSA's rawmidi "hw" plugin does (subdevice 0, the first free
/// one), and it keeps the hot loop to one non-blocking `write(2)` like every other output.
pub fn rawmidi_node(name: &str) -> Option<std::path::PathBuf> {
    let rest = name.strip_prefix("hw:")?;
    let mut parts = rest.split(',').map(|p| p.trim().parse::<u32>());
    let card = parts.next()?.ok()?;
    let device = parts.next()?.ok()?;
    match parts.next() {
        None | Some(Ok(0)) => {}
        _ => return None,
    }
    Some(std::path::PathBuf::from(format!(
        "/dev/snd/midiC{card}D{device}"
    )))
}

/// The filesystem under `path` when `path` is a FIFO on a filesystem that is not held in
/// memory. Writing to a FIFO updates its modification time; on tmpfs that is a store to
/// memory, on a disk filesystem it dirties the inode, which on ext4 starts a journal handle
/// that can wait for a commit. `cargo bench --bench fifo_write` measured it here: the same
/// FIFO in `/tmp` (ext4) and in `/dev/shm` (tmpfs), 7.4 µs against 13.6 µs median, 3.3 ms
/// against 0.16 ms worst write.
pub fn fifo_on_disk(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::metadata(path).ok()?.file_type().is_fifo() {
        return None;
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain data; c_path is NUL-terminated and statfs writes only `info`.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut info) } != 0 {
        return None;
    }
    // f_type is 32 bits wide on 32-bit targets: no sign extension of the magic numbers.
    filesystem_on_disk(i64::from(info.f_type as u32))
}

/// The name of a filesystem type (`statfs`' `f_type`) that keeps inodes on a disk, or None
/// for the memory-backed ones (tmpfs — also devtmpfs —, ramfs, pipefs).
fn filesystem_on_disk(magic: i64) -> Option<String> {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6;
    const PIPEFS: i64 = 0x5049_5045;
    let name = match magic {
        TMPFS | RAMFS | PIPEFS => return None,
        0xEF53 => "ext2/3/4".to_string(),
        0x5846_5342 => "XFS".to_string(),
        0x9123_683E => "Btrfs".to_string(),
        0x794C_7630 => "overlay".to_string(),
        0x4d44 => "FAT".to_string(),
        other => format!("disk (type {other:#x})"),
    };
    Some(name)
}

/// Opens a raw byte path for non-blocking writes; a terminal (serial UART, pty) is switched
/// to raw mode so no byte is translated.
fn open_raw(path: &Path) -> Result<i32, String> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "the path contains a NUL byte".to_string())?;
    // SAFETY: c_path is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ENXIO) => "no reader on the FIFO yet".to_string(),
            _ => error.to_string(),
        });
    }
    // SAFETY: fd is open; termios is plain data written by tcgetattr.
    unsafe {
        if libc::isatty(fd) == 1 {
            let mut termios: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut termios) == 0 {
                libc::cfmakeraw(&mut termios);
                libc::tcsetattr(fd, libc::TCSANOW, &termios);
            }
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_on_tmpfs_is_fine_and_disk_filesystems_are_named() {
        assert_eq!(filesystem_on_disk(0x0102_1994), None, "tmpfs");
        assert_eq!(filesystem_on_disk(0x8584_58f6), None, "ramfs");
        assert_eq!(filesystem_on_disk(0xEF53).as_deref(), Some("ext2/3/4"));
        assert_eq!(
            filesystem_on_disk(0x1234).as_deref(),
            Some("disk (type 0x1234)")
        );
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let fifo = shm.join(format!("backline-output-test-{}", std::process::id()));
            let c_path = CString::new(fifo.as_os_str().as_bytes()).unwrap();
            // SAFETY: c_path is NUL-terminated.
            assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
            assert_eq!(fifo_on_disk(&fifo), None, "a FIFO on tmpfs");
            let _ = std::fs::remove_file(&fifo);
        }
        assert_eq!(fifo_on_disk(Path::new("/dev/null")), None, "not a FIFO");
        assert_eq!(fifo_on_disk(Path::new("/nonexistent/midi")), None);
    }

    #[test]
    fn rawmidi_names_map_to_device_nodes() {
        assert_eq!(rawmidi_node("hw:1,0,0"), Some("/dev/snd/midiC1D0".into()));
        assert_eq!(rawmidi_node("hw:2,1"), Some("/dev/snd/midiC2D1".into()));
        assert_eq!(
            rawmidi_node("hw:1,0,3"),
            None,
            "only subdevice 0 has a node"
        );
        assert_eq!(rawmidi_node("virtual"), None);
    }
}

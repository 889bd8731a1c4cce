//! Shutdown under load: SIGTERM in the middle of dense MIDI-file playback and a real-time WAV
//! render. No note may be left hanging (All Notes Off on every channel the file uses, after
//! its last note-on, on the wire), and the WAV file must be complete (its header says exactly
//! how much data follows).

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixtures::TestShow;

/// MIDI channels (0-based) the dense file plays on.
const CHANNELS: [u8; 4] = [0, 1, 2, 9];

/// A type-0 SMF at 120 BPM: a note-on every 5 ticks (~5 ms), each held 480 ticks (0.5 s),
/// so about a hundred notes sound at any moment, cycling through [`CHANNELS`].
fn dense_midi(seconds: f64) -> Vec<u8> {
    const PPQ: u32 = 480;
    let end = (seconds * 2.0 * f64::from(PPQ)) as u32;
    let mut events: Vec<(u32, [u8; 3])> = Vec::new();
    let mut k = 0u32;
    while k * 5 + 480 < end {
        let channel = CHANNELS[(k % CHANNELS.len() as u32) as usize];
        let note = 36 + (k % 48) as u8;
        events.push((k * 5, [0x90 | channel, note, 100]));
        events.push((k * 5 + 480, [0x80 | channel, note, 0]));
        k += 1;
    }
    events.sort_by_key(|&(t, bytes)| (t, bytes[0] & 0xF0 == 0x90));
    let mut track = Vec::new();
    let vlq = |track: &mut Vec<u8>, mut value: u32| {
        let mut stack = vec![(value & 0x7F) as u8];
        value >>= 7;
        while value > 0 {
            stack.push((value & 0x7F) as u8 | 0x80);
            value >>= 7;
        }
        track.extend(stack.iter().rev());
    };
    // Tempo 500 000 µs per quarter note.
    track.extend([0x00, 0xFF, 0x51, 0x03, 0x07, 0xA1, 0x20]);
    let mut last = 0;
    for (t, bytes) in events {
        vlq(&mut track, t - last);
        last = t;
        track.extend(bytes);
    }
    track.extend([0x00, 0xFF, 0x2F, 0x00]);
    let mut smf = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01".to_vec();
    smf.extend((PPQ as u16).to_be_bytes());
    smf.extend(b"MTrk");
    smf.extend((track.len() as u32).to_be_bytes());
    smf.extend(track);
    smf
}

/// Reads a FIFO (opened non-blocking before the player starts) until `stop`, adding up in
/// `received` how many bytes have come so far.
fn fifo_reader(
    path: &Path,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<u8>> {
    let c_path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: c_path is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open fifo");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match file.read(&mut buffer) {
                Ok(n) if n > 0 => {
                    bytes.extend_from_slice(&buffer[..n]);
                    received.store(bytes.len(), Ordering::Release);
                }
                _ => {
                    if stop.load(Ordering::Acquire) {
                        return bytes;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    })
}

/// Channel messages on the wire, real-time bytes left out.
fn messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let status = bytes[i];
        if !(0x80..0xF8).contains(&status) {
            i += 1;
            continue;
        }
        let data = match status & 0xF0 {
            0xC0 | 0xD0 => 1,
            0xF0 => match status {
                0xF2 => 2,
                0xF1 | 0xF3 => 1,
                _ => 0,
            },
            _ => 2,
        };
        let mut message = vec![status];
        let mut j = i + 1;
        while message.len() < 1 + data && j < bytes.len() {
            if bytes[j] < 0x80 {
                message.push(bytes[j]);
            } else if bytes[j] < 0xF8 {
                break;
            }
            j += 1;
        }
        i = j;
        out.push(message);
    }
    out
}

/// Checks the RIFF structure: the RIFF size and the data chunk's size match the file.
fn assert_complete_wav(path: &Path) {
    let bytes = std::fs::read(path).expect("read the WAV");
    assert!(bytes.len() > 44, "a WAV file: {} bytes", bytes.len());
    assert_eq!(&bytes[0..4], b"RIFF");
    let riff = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    assert_eq!(riff + 8, bytes.len(), "the RIFF size covers the file");
    let mut at = 12;
    let mut data = None;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        if &bytes[at..at + 4] == b"data" {
            data = Some((at + 8, size));
            break;
        }
        at += 8 + size + size % 2;
    }
    let (start, size) = data.expect("a data chunk");
    assert_eq!(start + size, bytes.len(), "the data chunk ends the file");
    let reader = hound::WavReader::open(path).expect("hound opens it");
    let spec = reader.spec();
    let expected = reader.len() as usize;
    assert_eq!(
        expected * usize::from(spec.bits_per_sample / 8),
        size,
        "the header's length matches the data"
    );
    let mut read = 0;
    for sample in reader.into_samples::<f32>() {
        sample.expect("a sample");
        read += 1;
    }
    assert_eq!(read, expected);
    assert!(expected > 0);
}

#[test]
fn sigterm_during_dense_midi_and_a_wav_render_leaves_no_hanging_note_and_a_whole_file() {
    let show = TestShow::new("shutdown-load");
    show.tone_song("a", "Dense", 440.0, 30.0);
    std::fs::write(show.path("songs/a/dense.mid"), dense_midi(30.0)).expect("write midi");
    show.write(
        "songs/a/song.yaml",
        "kind: song\nname: Dense\ntracks:\n  - name: tone\n    file: tone.wav\nmidi_playback:\n  file: dense.mid\n",
    );
    show.write(
        "backline.yaml",
        &format!(
            "songs: songs\naudio:\n  track_mappings:\n    tone: [1, 2]\nmidi:\n  outputs:\n    - name: synth\n      path: {}\n",
            show.path("midi.fifo").display()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let reader = fifo_reader(&show.path("midi.fifo"), stop.clone(), received.clone());
    let wav = show.path("out.wav");
    let mut child = Command::new(env!("CARGO_BIN_EXE_backline"))
        .arg("play")
        .arg(&show.root)
        .arg("--output")
        .arg(format!("wav:{}", wav.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run backline");
    // Mid-song, with notes sounding: once 1500 bytes have arrived, 1.5–2 s of the file
    // (300–400 note-ons), however long a loaded machine took to start the player.
    assert!(
        common::wait_until(Duration::from_secs(25), || received.load(Ordering::Acquire)
            >= 1500),
        "dense playback gets under way: {} bytes",
        received.load(Ordering::Acquire)
    );
    assert!(child.try_wait().expect("poll").is_none(), "still playing");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM ends the player");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Release);
    let bytes = reader.join().expect("reader");
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let messages = messages(&bytes);
    let note_ons = messages
        .iter()
        .filter(|m| m[0] & 0xF0 == 0x90 && m.get(2).is_some_and(|&v| v > 0))
        .count();
    assert!(
        note_ons > 200,
        "dense playback was under way: {note_ons} note-ons\n{stderr}"
    );
    for channel in CHANNELS {
        let last_on = messages
            .iter()
            .rposition(|m| m[0] == 0x90 | channel && m.get(2).is_some_and(|&v| v > 0));
        let last_off_all = messages
            .iter()
            .rposition(|m| m.as_slice() == [0xB0 | channel, 123, 0]);
        let Some(last_on) = last_on else {
            panic!("channel {} played", channel + 1);
        };
        assert!(
            last_off_all.is_some_and(|off| off > last_on),
            "All Notes Off on channel {} after its last note-on (at message {last_on}): {last_off_all:?}\n{stderr}",
            channel + 1
        );
    }
    assert_complete_wav(&wav);
}

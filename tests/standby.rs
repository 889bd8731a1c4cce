//! The beat clock's standby writer on its own, on a real FIFO: writes the clock thread armed
//! and then never got to (as when the host stalls its vCPU) are made by the standby, each
//! once, in order, at its deadline and never before it; writes taken back are never made.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use backline::engine::callback::monotonic_ns;
use backline::library::{MidiOutputConfig, MidiTarget};
use backline::midi::jack::Stream;
use backline::midi::standby::{DueWrites, Settled, Standby};
use backline::midi::Outputs;
use backline::rt::{self, RtSettings};

/// Reads whatever the FIFO holds now.
fn drain(fifo: &mut std::fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 256];
    while let Ok(n) = fifo.read(&mut buffer) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..n]);
    }
    bytes
}

#[test]
fn the_standby_makes_a_write_the_clock_thread_never_reached() {
    let path = std::path::PathBuf::from(format!(
        "/dev/shm/backline-standby-{}.fifo",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let c_path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: c_path is a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // The reader first, so the output opens at once.
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .expect("open the FIFO's read end");
    let outputs = Outputs::open(
        &[MidiOutputConfig {
            name: "fifo".into(),
            target: MidiTarget::Path(path.clone()),
            clock: true,
            midi_file: false,
            offset_ms: 0.0,
        }],
        RtSettings::default(),
    );
    assert!(outputs.slots[0].is_connected(), "the FIFO output is open");
    let due = Arc::new(DueWrites::new(1));
    let mut standby = Standby::start(
        due.clone(),
        outputs.slots.clone(),
        400_000,
        RtSettings::default(),
        rt::probe().summary(),
    )
    .expect("standby thread");
    assert!(
        common::wait_until(Duration::from_secs(5), || standby.realtime().is_some()),
        "the standby tried to promote itself"
    );
    if standby.realtime() != Some(true) {
        eprintln!("skipped: the standby only runs real-time (needs CAP_SYS_NICE or RLIMIT_RTPRIO)");
        return;
    }

    // The clock thread arms each tick 10 ms ahead and then stalls past its deadline.
    let mut lateness = Vec::new();
    for _ in 0..20 {
        let deadline = monotonic_ns() + 10_000_000;
        due.arm(deadline, Stream::Clock, &[0xF8]).expect("room");
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(
            due.settle(),
            Settled::Free { written: 1 },
            "the standby made the write"
        );
        assert!(due.written_by_standby(0));
        lateness.push(due.lateness(0, 0).expect("the output took the byte"));
        assert_eq!(drain(&mut fifo), [0xF8], "one tick on the wire, once");
    }

    // A stall over several writes: three ticks 8 ms apart and a note between, all armed,
    // and the clock thread back only after the last. Each goes out, in order, on time.
    let start = monotonic_ns() + 10_000_000;
    let plan: [(u64, &[u8]); 4] = [
        (start, &[0xF8]),
        (start + 4_000_000, &[0x90, 60, 100]),
        (start + 8_000_000, &[0xF8]),
        (start + 16_000_000, &[0xF8]),
    ];
    for (deadline, bytes) in plan {
        let stream = if bytes.len() == 1 {
            Stream::Clock
        } else {
            Stream::File
        };
        due.arm(deadline, stream, bytes).expect("room");
    }
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(
        due.settle(),
        Settled::Free { written: 4 },
        "the standby made all four (the note on no output: the FIFO carries the clock only)"
    );
    assert!((0..4).all(|index| due.written_by_standby(index)));
    assert_eq!(
        due.lateness(1, 0),
        None,
        "the note is not the FIFO's stream"
    );
    for index in [0, 2, 3] {
        lateness.push(due.lateness(index, 0).expect("the output took the tick"));
    }
    assert_eq!(
        drain(&mut fifo),
        [0xF8; 3],
        "three ticks on the wire, each once"
    );

    // Never early: the bytes went out at or after their deadline.
    assert!(
        lateness.iter().all(|&l| l >= 0),
        "no write before its deadline: {lateness:?}"
    );
    // On time, as a rule: a vCPU stall can make one late, not most of them.
    lateness.sort_unstable();
    assert!(
        lateness[lateness.len() / 2] < 2_000_000,
        "median lateness under 2 ms: {lateness:?}"
    );

    // Writes the clock thread takes back before their deadline never go out: of two armed
    // 10 and 30 ms ahead, taken back after 20 ms, only the first is made.
    let now = monotonic_ns();
    due.arm(now + 10_000_000, Stream::Clock, &[0xF8])
        .expect("room");
    due.arm(now + 30_000_000, Stream::Clock, &[0xF8])
        .expect("room");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        due.settle(),
        Settled::Free { written: 1 },
        "one made, one taken back"
    );
    std::thread::sleep(Duration::from_millis(25));
    assert_eq!(drain(&mut fifo), [0xF8], "only the first on the wire");
    assert_eq!(due.settle(), Settled::Free { written: 0 });

    standby.stop();
    assert_eq!(
        standby.writes.load(std::sync::atomic::Ordering::Relaxed),
        20 + 4 + 1,
        "the standby counted its writes"
    );
    drop(outputs);
    let _ = std::fs::remove_file(&path);
}

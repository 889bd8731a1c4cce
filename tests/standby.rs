//! The beat clock's standby writer on its own, on a real FIFO: a write the clock thread armed
//! and then never got to (as when the host stalls its vCPU) is made by the standby, once, at
//! its deadline and never before it; a write taken back is never made.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use backline::engine::callback::monotonic_ns;
use backline::library::{MidiOutputConfig, MidiTarget};
use backline::midi::jack::Stream;
use backline::midi::standby::{DueWrite, Settled, Standby};
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
    let due = Arc::new(DueWrite::new(1));
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
        due.arm(deadline, Stream::Clock, &[0xF8]);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(
            due.settle(),
            Settled::Written { by_standby: true },
            "the standby made the write"
        );
        lateness.push(due.lateness(0).expect("the output took the byte"));
        due.release();
        assert_eq!(drain(&mut fifo), [0xF8], "one tick on the wire, once");
    }
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

    // A write the clock thread takes back before its deadline never goes out.
    due.arm(monotonic_ns() + 10_000_000, Stream::Clock, &[0xF8]);
    assert_eq!(due.settle(), Settled::Free, "taken back");
    std::thread::sleep(Duration::from_millis(25));
    assert!(drain(&mut fifo).is_empty(), "nothing written");
    assert_eq!(due.settle(), Settled::Free);

    standby.stop();
    assert_eq!(
        standby.writes.load(std::sync::atomic::Ordering::Relaxed),
        20,
        "the standby counted its writes"
    );
    drop(outputs);
    let _ = std::fs::remove_file(&path);
}

//! The beat clock's standby writer on its own, on a real FIFO: writes the clock thread armed
//! and then never got to (as when the host stalls its vCPU) are made by the standby, each
//! once, in order, at its deadline and never before it; writes taken back are never made;
//! and racing the standby for the same writes (as the clock thread does) never sends one
//! twice, out of order, or after it was taken back.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backline::engine::callback::monotonic_ns;
use backline::library::{MidiOutputConfig, MidiTarget};
use backline::midi::jack::Stream;
use backline::midi::standby::{DueWrites, Settled, Standby};
use backline::midi::Outputs;
use backline::rt::{self, RtSettings};

const TICK: [u8; 1] = [0xF8];
const NOTE: [u8; 3] = [0x90, 60, 100];

/// Reads whatever the FIFO holds now.
fn drain(fifo: &mut std::fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = fifo.read(&mut buffer) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..n]);
    }
    bytes
}

fn stream_of(bytes: &[u8]) -> Stream {
    if bytes.len() == 1 {
        Stream::Clock
    } else {
        Stream::File
    }
}

/// Sleeps until `due.written()` reaches `count` (a stalled test thread must not fail it).
fn wait_written(due: &DueWrites, count: usize) {
    assert!(
        common::wait_until(Duration::from_secs(5), || due.written() >= count),
        "the standby made {} of {count} writes",
        due.written()
    );
}

/// Takes the writes back, waiting out a write in progress.
fn settle(due: &DueWrites) -> usize {
    loop {
        match due.settle() {
            Settled::Free { written } => return written,
            Settled::Busy => std::hint::spin_loop(),
        }
    }
}

/// A FIFO in /dev/shm with its read end open, and an output writing both streams to it.
struct Wire {
    path: std::path::PathBuf,
    fifo: std::fs::File,
    outputs: Outputs,
}

impl Wire {
    fn open(name: &str) -> Wire {
        let path = std::path::PathBuf::from(format!(
            "/dev/shm/backline-standby-{name}-{}.fifo",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let c_path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: c_path is a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        // The reader first, so the output opens at once.
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("open the FIFO's read end");
        let outputs = Outputs::open(
            &[MidiOutputConfig {
                name: "fifo".into(),
                target: MidiTarget::Path(path.clone()),
                clock: true,
                midi_file: true,
                offset_ms: 0.0,
            }],
            RtSettings::default(),
        );
        assert!(outputs.slots[0].is_connected(), "the FIFO output is open");
        Wire {
            path,
            fifo,
            outputs,
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts a standby on `wire`, or None (the test is skipped) when it cannot run real-time.
fn start_standby(due: &Arc<DueWrites>, wire: &Wire) -> Option<Standby> {
    let standby = Standby::start(
        due.clone(),
        wire.outputs.slots.clone(),
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
        return None;
    }
    Some(standby)
}

#[test]
fn the_standby_makes_the_writes_the_clock_thread_never_reached() {
    let mut wire = Wire::open("stalled");
    let due = Arc::new(DueWrites::new(1));
    let Some(mut standby) = start_standby(&due, &wire) else {
        return;
    };

    // The clock thread arms each tick 10 ms ahead and then stalls past its deadline.
    let mut lateness = Vec::new();
    for _ in 0..20 {
        due.arm(monotonic_ns() + 10_000_000, Stream::Clock, &TICK)
            .expect("room");
        wait_written(&due, 1);
        assert_eq!(settle(&due), 1, "the standby made the write");
        assert!(due.written_by_standby(0));
        lateness.push(due.lateness(0, 0).expect("the output took the byte"));
        assert_eq!(drain(&mut wire.fifo), TICK, "one tick on the wire, once");
    }

    // A stall over several writes: ticks 8 ms apart with a note between, all armed, and the
    // clock thread back only after the last. Each goes out once, in order, on time.
    let start = monotonic_ns() + 10_000_000;
    let plan: [(u64, &[u8]); 4] = [
        (start, &TICK),
        (start + 4_000_000, &NOTE),
        (start + 8_000_000, &TICK),
        (start + 16_000_000, &TICK),
    ];
    for (deadline, bytes) in plan {
        due.arm(deadline, stream_of(bytes), bytes).expect("room");
    }
    wait_written(&due, 4);
    assert_eq!(settle(&due), 4, "the standby made all four");
    for index in 0..4 {
        lateness.push(due.lateness(index, 0).expect("the output took it"));
    }
    let expected: Vec<u8> = plan.iter().flat_map(|(_, bytes)| bytes.to_vec()).collect();
    assert_eq!(drain(&mut wire.fifo), expected, "each once, in order");

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
    // 10 and 500 ms ahead, taken back once the first is made, only the first goes out.
    let armed_at = monotonic_ns();
    due.arm(armed_at + 10_000_000, Stream::Clock, &TICK)
        .expect("room");
    due.arm(armed_at + 500_000_000, Stream::Clock, &NOTE[..1])
        .expect("room");
    wait_written(&due, 1);
    assert_eq!(settle(&due), 1, "one made, one taken back");
    std::thread::sleep(
        Duration::from_millis(520).saturating_sub(Duration::from_nanos(
            monotonic_ns().saturating_sub(armed_at),
        )),
    );
    assert_eq!(drain(&mut wire.fifo), TICK, "only the first on the wire");
    assert_eq!(settle(&due), 0);

    standby.stop();
    assert_eq!(
        standby.writes.load(Ordering::Relaxed),
        20 + 4 + 1,
        "the standby counted its writes"
    );
}

/// Racing the standby as the clock thread does (claiming the first write at its deadline,
/// taking the rest back at any moment): whatever the timing, the wire carries exactly the
/// writes counted as made, each once and in order.
#[test]
fn racing_the_standby_never_doubles_reorders_or_sends_a_taken_back_write() {
    let mut wire = Wire::open("race");
    let due = Arc::new(DueWrites::new(1));
    let Some(mut standby) = start_standby(&due, &wire) else {
        return;
    };
    let mut expected = Vec::new();
    let mut on_wire = Vec::new();
    let mut made_here = 0u64;
    // A fixed pseudo-random sequence of take-back times (a linear congruential generator).
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..400u32 {
        let now = monotonic_ns();
        let plan: [(u64, [u8; 3]); 3] = std::array::from_fn(|i| {
            let deadline = now + 200_000 + 100_000 * i as u64;
            (deadline, [0x90, (round % 128) as u8, i as u8 + 1])
        });
        let armed: Vec<_> = plan
            .iter()
            .map(|(deadline, bytes)| due.arm(*deadline, Stream::File, bytes).expect("room"))
            .collect();
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let take_back_at = now + (seed >> 33) % 600_000;
        if round % 2 == 0 {
            // Like the clock thread: spin to the first deadline and claim it.
            while monotonic_ns() < plan[0].0 {
                std::hint::spin_loop();
            }
            if due.claim_and_write(armed[0], &wire.outputs.slots, false) {
                made_here += 1;
            }
        }
        while monotonic_ns() < take_back_at {
            std::hint::spin_loop();
        }
        let written = settle(&due);
        for (_, bytes) in plan.iter().take(written) {
            expected.extend_from_slice(bytes);
        }
        on_wire.extend(drain(&mut wire.fifo));
    }
    std::thread::sleep(Duration::from_millis(5));
    on_wire.extend(drain(&mut wire.fifo));
    standby.stop();
    let by_standby = standby.writes.load(Ordering::Relaxed);
    eprintln!(
        "{} of 1200 writes made ({made_here} by the test thread, {by_standby} by the standby), {taken_back} taken back",
        expected.len() / 3,
        taken_back = 1200 - expected.len() / 3
    );
    assert!(
        made_here > 0 && by_standby > 0 && expected.len() < 3 * 1200,
        "the race ran both ways and took writes back"
    );
    assert_eq!(
        on_wire.len(),
        expected.len(),
        "as many bytes on the wire as writes made"
    );
    assert!(
        on_wire == expected,
        "the wire carries the writes made, in order"
    );
    assert_eq!(
        by_standby + made_here,
        expected.len() as u64 / 3,
        "every write made was counted by exactly one thread"
    );
}

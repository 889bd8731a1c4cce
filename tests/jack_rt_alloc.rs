//! The real JACK process path under the allocation guard: backline's own JACK client (audio
//! ports, planar render, a song playing, a JACK MIDI output writing queued messages at their
//! offsets) runs on the dummy server with `AllocDisabler` as the global allocator, and its
//! process callback wraps every cycle in `assert_no_alloc`, so one allocation or free on
//! the JACK thread aborts this test. Its own binary: it sets `JACK_DEFAULT_SERVER` for the
//! whole process (libjack reads it), which only one test per process may do.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use assert_no_alloc::AllocDisabler;
use backline::engine::handover::{Engine, EngineSlot};
use backline::engine::jack_output;
use backline::engine::mixer::{routes_for, SongMixer, StemMix};
use backline::engine::{transport, AudioCallback, Command, PreparedSong};
use backline::library::{MidiOutputConfig, MidiTarget};
use backline::media::StemStream;
use backline::midi::jack::Stream;
use backline::stats::StatsCollector;
use common::{unique_client_name, wait_until, JackServer, Recorder};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const RATE: u32 = 48_000;

#[test]
fn the_jack_process_callback_never_allocates() {
    let server = JackServer::start(RATE, 256);
    // Before the player's client opens; the harness's own clients name their server.
    std::env::set_var("JACK_DEFAULT_SERVER", server.name());
    std::env::set_var("JACK_NO_START_SERVER", "1");
    let name = unique_client_name("rt-alloc");
    let recorder = Recorder::start_with_midi(
        &server,
        &format!("{name}:out_"),
        2,
        Some(&format!("{name}:midi_out")),
    );

    let (transport, mut control) = transport::transport();
    let status = control.status.clone();
    let open = jack_output::open(&name, 2, RATE).expect("open the JACK client");
    let (stats, timings) = StatsCollector::start();
    let mut ports = backline::midi::jack::register(
        open.client(),
        &name,
        &[MidiOutputConfig {
            name: "clock".into(),
            target: MidiTarget::Jack("backline:midi_out".into()),
            clock: true,
            midi_file: true,
            offset_ms: 0.0,
        }],
        stats.sender(),
    );
    let mut feed = ports.feeds.pop().expect("one JACK MIDI feed");
    let sink = ports.sink.take().expect("the sink");

    // A 2 s stereo song, in its ring already.
    let frames = 2 * RATE as usize;
    let (mut producer, consumer) = rtrb::RingBuffer::new(frames * 2);
    for n in 0..frames * 2 {
        let _ = producer.push(((n % 100) as f32 / 100.0) - 0.5);
    }
    let stem = StemMix::new(
        StemStream {
            name: "stem".into(),
            ring: consumer,
            channels: 2,
            finished: Arc::new(AtomicBool::new(true)),
        },
        routes_for(2, &[0, 1]),
        0.5,
    );
    let song = Box::new(PreparedSong {
        id: 1,
        mixer: SongMixer::new(vec![stem]),
        position: 0,
        song_tag: 1,
    });
    assert!(control.commands.push(Command::Load(song)).is_ok());
    assert!(control.commands.push(Command::Play).is_ok());
    // Ticks queued ahead, as the clock's JACK lane does: 40 of them, 1000 frames apart.
    for tick in 0..40i64 {
        let bytes: &[u8] = if tick == 0 { &[0xFA, 0xF8] } else { &[0xF8] };
        feed.push(Some(RATE as i64 + tick * 1000), Stream::Clock, bytes);
    }

    let callback = AudioCallback::new(transport, status.clone(), 2, RATE, None, Some(timings));
    let slot = Arc::new(EngineSlot::new(Engine {
        callback,
        hook: Some(Box::new(sink)),
    }));
    let token = slot.owner();
    let output =
        jack_output::start(open, slot, token, status.clone(), &[]).expect("start the JACK client");
    assert!(
        recorder.wait_connected(Duration::from_secs(10)),
        "{:?}",
        recorder.connect_error()
    );
    assert!(
        wait_until(Duration::from_secs(10), || status
            .frames_rendered
            .load(Ordering::Relaxed)
            > 3 * u64::from(RATE)),
        "the JACK client renders"
    );
    drop(output);
    let rec = recorder.stop();
    let ticks = rec.midi.iter().filter(|e| e.bytes() == [0xF8]).count();
    // A cycle the recorder missed (an xrun on a loaded VM) loses the ticks queued in it;
    // none may be written twice or made up.
    let disturbances =
        rec.gaps.len() + rec.xruns as usize + status.xruns.load(Ordering::Relaxed) as usize;
    assert!(
        ticks <= 40 && ticks + disturbances >= 40,
        "every queued tick was written: {ticks} of 40 recorded, {disturbances} disturbances"
    );
    let offsets: std::collections::BTreeSet<u32> = rec.midi.iter().map(|e| e.offset).collect();
    assert!(offsets.len() > 5, "at their offsets: {offsets:?}");
    assert!(common::peak(&rec.channels[0]) > 0.1, "the song was heard");
    drop(stats);
}

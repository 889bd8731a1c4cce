//! The RT rules of DESIGN.md, enforced: the audio callback path (transport, mixer, gain
//! ramps, song changes, sample-format conversion, the planar path JACK uses, real-time
//! promotion), the beat clock (both its direct and its JACK MIDI lane) and the JACK MIDI
//! queue the process callback drains run under an allocation guard, so an allocation or free
//! on a real-time thread fails CI.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use backline::engine::mixer::{routes_for, SongMixer, StemMix};
use backline::engine::{transport, AudioCallback, Command, Event, FirstCallbackHook, PreparedSong};
use backline::media::StemStream;
use backline::rt::{self, Role, RtSettings};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

/// A song of `stems` stems of `channels` channels, each `frames` long, already in its rings.
fn song(id: u64, stems: usize, channels: usize, frames: usize) -> Box<PreparedSong> {
    let stems = (0..stems)
        .map(|index| {
            let (mut producer, consumer) = rtrb::RingBuffer::new(frames * channels);
            for n in 0..frames * channels {
                let _ = producer.push(((n % 100) as f32 / 100.0) - 0.5);
            }
            let stream = StemStream {
                name: format!("stem{index}"),
                ring: consumer,
                channels,
                finished: Arc::new(AtomicBool::new(true)),
            };
            let outputs: Vec<usize> = (0..channels).map(|c| (index * channels + c) % 4).collect();
            StemMix::new(stream, routes_for(channels, &outputs), 0.5)
        })
        .collect();
    Box::new(PreparedSong {
        id,
        mixer: SongMixer::new(stems),
        position: 0,
        song_tag: id as u32,
    })
}

#[test]
fn audio_callback_never_allocates() {
    let (transport, mut control) = transport::transport();
    let status = control.status.clone();
    let probe = rt::probe().summary();
    let settings = RtSettings::default();
    let hook: FirstCallbackHook = Box::new(move || {
        rt::promote_current_thread(Role::Audio, &settings, &probe);
    });
    let mut callback = AudioCallback::new(transport, status, 4, 48_000, Some(hook), None);
    let mut device_f32 = vec![0.0f32; 256 * 4];
    let mut device_i16 = vec![0i16; 256 * 4];
    // i32 and the planar path share a period's worth of frames per round, so every round
    // renders 3 × 256 frames as before.
    let mut device_i32 = vec![0i32; 128 * 4];
    let mut planar = vec![vec![0.0f32; 128]; 4];

    // Built off the RT thread, as the player does.
    let first = song(1, 3, 2, 3000);
    let second = song(2, 2, 1, 2000);
    let third = song(3, 1, 2, 1000);
    let commands = [
        Command::Load(first),
        Command::Queue(second),
        Command::Play,
        Command::SetGain { stem: 0, gain: 0.1 },
    ];
    for command in commands {
        assert!(control.commands.push(command).is_ok());
    }

    let mut third = Some(third);
    let mut fourth = Some(song(4, 2, 2, 20_000));
    assert_no_alloc(|| {
        for round in 0..60 {
            callback.render_f32(&mut device_f32, None);
            callback.render(&mut device_i16);
            callback.render(&mut device_i32);
            // The JACK backend's path: planar blocks copied to one buffer per port.
            callback.render_planar(128, 0, |channel, offset, samples| {
                planar[channel][offset..offset + samples.len()].copy_from_slice(samples);
            });
            // Song changes happen on the RT thread too: queue, jump, stop, load, play.
            let command = match round {
                1 => third.take().map(Command::Queue),
                2 => Some(Command::Advance),
                3 => Some(Command::Stop),
                4 => fourth.take().map(Command::Load),
                5 => Some(Command::Play),
                6 => Some(Command::SetGain { stem: 1, gain: 2.0 }),
                _ => None,
            };
            if let Some(command) = command {
                if control.commands.push(command).is_err() {
                    panic!("command ring full");
                }
            }
        }
    });
    let mut events = Vec::new();
    while let Ok(event) = control.events.pop() {
        events.push(event);
    }
    assert_eq!(
        events,
        vec![
            Event::Started { id: 1 },
            Event::Started { id: 3 },
            Event::Stopped { id: Some(3) },
            Event::Started { id: 4 },
            Event::Finished {
                id: 4,
                frames: 20_000
            },
            Event::SetEnded,
        ]
    );
    let mut returned = 0;
    while control.trash.pop().is_ok() {
        returned += 1;
    }
    assert_eq!(
        returned, 4,
        "every song comes back to be dropped off the RT thread"
    );
    assert_eq!(control.status.leaked.load(Ordering::Relaxed), 0);
}

#[test]
fn clock_thread_never_allocates() {
    use backline::library::{MidiOutputConfig, MidiTarget};
    use backline::midi::{
        file::parse_schedule, ClockCommand, ClockSettings, ClockSong, ClockThread, Outputs,
    };
    use backline::stats::StatsCollector;
    use backline::timing::anchor::{anchor, Anchor};
    use backline::timing::{AudioClock, TempoMap};

    // Built off the RT threads.
    let (mut audio_writer, audio_clock) = AudioClock::new(48_000);
    let (mut anchor_writer, anchor_reader) = anchor();
    let outputs = Outputs::open(
        &[MidiOutputConfig {
            name: "null".into(),
            target: MidiTarget::Path("/dev/null".into()),
            clock: true,
            midi_file: true,
            offset_ms: 0.0,
        }],
        RtSettings::default(),
    );
    let (stats, _audio_sender) = StatsCollector::start();
    let (jack_feed, mut jack_queue) = backline::midi::jack::queue(
        &MidiOutputConfig {
            name: "jack".into(),
            target: MidiTarget::Jack("backline:midi_out".into()),
            clock: true,
            midi_file: true,
            offset_ms: 2.0,
        },
        48_000,
    );
    let (mut commands, commands_rx) = rtrb::RingBuffer::new(16);
    let settings = ClockSettings {
        sample_rate: 48_000,
        spin_us: 100,
        spin_max_us: 2000,
        rt: RtSettings::default(),
        probe: rt::probe().summary(),
        persist_tempo: true,
        jack_lookahead_frames: 1024,
        // The standby writer's loop runs under the same guard.
        standby: true,
    };
    let (clock, _trash) = ClockThread::start(
        outputs.slots.clone(),
        vec![jack_feed],
        audio_clock,
        anchor_reader,
        commands_rx,
        stats.sender(),
        settings,
    )
    .expect("clock thread");
    let midi = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/songs-example/songs/03-with-midi/song.mid"
    ))
    .expect("example MIDI file");
    for id in 1..=3 {
        let song = ClockSong {
            id,
            song_tag: id as u32,
            tempo: Some(TempoMap::constant(300.0)),
            schedule: Some(parse_schedule(&midi, &[]).expect("schedule")),
        };
        assert!(commands.push(ClockCommand::Prepare(Box::new(song))).is_ok());
    }
    // A simulated audio callback drives the audio clock and the anchor; the clock thread
    // (which wraps its hot loop in assert_no_alloc) plays ticks and notes, switches songs,
    // stops, and sends a song-select event. Any allocation there aborts this test.
    let period = std::time::Duration::from_micros(5333);
    let mut frame = 0u64;
    let mut jack_ticks = 0usize;
    let mut jack_notes = 0usize;
    for step in 0..450u64 {
        let song_id = 1 + step / 150;
        assert_no_alloc(|| {
            // What the JACK process callback does with the queue, once per cycle.
            jack_queue.drain_cycle(
                frame,
                256,
                |_, bytes| {
                    match bytes[0] {
                        0xF8 => jack_ticks += 1,
                        0x90..=0x9F => jack_notes += 1,
                        _ => {}
                    }
                    true
                },
                |_, _, _| {},
            );
            audio_writer.update(frame, backline::engine::callback::monotonic_ns());
            anchor_writer.publish(Anchor {
                song_id,
                start_frame: (song_id as i64 - 1) * 150 * 256,
                playing: step < 440,
            });
        });
        frame += 256;
        std::thread::sleep(period);
    }
    assert!(commands
        .push(ClockCommand::SendNow([0xC0, 5, 0], 2))
        .is_ok());
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Where the clock thread runs real-time on two or more CPUs, so does the standby, and
    // it races the clock thread for every write.
    let clock_realtime = rt::report(rt::Role::Clock).is_some_and(|r| r.promotion.is_realtime());
    if clock_realtime && std::thread::available_parallelism().map_or(1, usize::from) > 1 {
        let standby_writes = clock.standby_writes();
        assert!(
            standby_writes.is_some_and(|w| w > 0),
            "the standby writer made writes too: {standby_writes:?}"
        );
    }
    clock.finish();
    let figures = stats.finish();
    let ticks = figures
        .get(backline::stats::Metric::ClockLateness)
        .map_or(0, |h| h.summary().count);
    assert!(ticks > 100, "the clock ticked ({ticks} ticks recorded)");
    assert!(
        jack_ticks > 100 && jack_notes > 0,
        "the JACK lane queued ticks ({jack_ticks}) and notes ({jack_notes})"
    );
}

//! The RT rules of DESIGN.md, enforced: the audio callback path (transport, mixer, gain
//! ramps, song changes, sample-format conversion, real-time promotion) runs under an
//! allocation guard, so an allocation or free on the audio thread fails CI.

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
    let mut device_i32 = vec![0i32; 256 * 4];

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
            callback.render_f32(&mut device_f32);
            callback.render(&mut device_i16);
            callback.render(&mut device_i32);
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

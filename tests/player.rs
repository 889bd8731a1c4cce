//! The player's setlist logic against the real transport, driven by a simulated audio
//! callback: what plays, in which order, after which request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use backline::engine::mixer::PlanarBuffer;
use backline::engine::{transport, Player, Request, StatusSink, StatusSnapshot};
use backline::library::Show;
use common::fixtures::TestShow;

struct NoStatus;

impl StatusSink for NoStatus {
    fn update(&mut self, _: &StatusSnapshot) {}
}

/// Plays `show` with `requests` sent at the given delays; returns the sequence of songs
/// heard (setlist position + 1; 0 = nothing playing), without repeats.
fn songs_heard(show: &TestShow, requests: Vec<(Duration, Request)>) -> Vec<u32> {
    let show = Show::load(&show.root).expect("show loads");
    let setlist = show.setlist(None).expect("setlist");
    let (mut transport, control) = transport::transport();
    let status = control.status.clone();
    let mut player = Player::new(
        show.config.clone(),
        setlist,
        control,
        48_000,
        1,
        "test".into(),
    );
    assert!(player.load_first(true));
    let heard = Arc::new(Mutex::new(Vec::<u32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let audio = {
        let (heard, stop, status) = (heard.clone(), stop.clone(), status.clone());
        std::thread::spawn(move || {
            let mut buffer = PlanarBuffer::new(1);
            while !stop.load(Ordering::Relaxed) {
                transport.process(&mut buffer, 480);
                let tag = status.song_tag.load(Ordering::Relaxed);
                if let Ok(mut heard) = heard.lock() {
                    if heard.last() != Some(&tag) {
                        heard.push(tag);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    let sender = std::thread::spawn(move || {
        for (delay, request) in requests {
            std::thread::sleep(delay);
            let _ = tx.send(request);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let quit = AtomicBool::new(false);
    let summary = player.run(&rx, &quit, true, &mut NoStatus);
    assert!(summary.set_ended, "the set ends");
    stop.store(true, Ordering::Relaxed);
    audio.join().expect("audio thread");
    drop(sender);
    let heard = heard.lock().expect("heard").clone();
    heard
}

#[test]
fn next_out_of_a_loop_into_the_last_song_ends_the_set() {
    let show = TestShow::new("loopnext");
    show.tone_song("1", "Alpha", 440.0, 0.3);
    show.write(
        "songs/1/song.yaml",
        "kind: song\nname: Alpha\nloop_playback: true\ntracks:\n  - name: tone\n    file: tone.wav\n",
    );
    show.tone_song("2", "Bravo", 1000.0, 0.3);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  track_mappings:\n    tone: [1]\n",
    );
    let heard = songs_heard(&show, vec![(Duration::from_millis(800), Request::Next)]);
    assert_eq!(
        heard,
        vec![1, 2, 0],
        "Alpha loops, next goes to Bravo, then the set ends"
    );
}

#[test]
fn previous_and_next_walk_the_set() {
    let show = TestShow::new("walk");
    for (dir, name, freq) in [
        ("1", "Alpha", 440.0),
        ("2", "Bravo", 550.0),
        ("3", "Charlie", 660.0),
    ] {
        show.tone_song(dir, name, freq, 1.0);
    }
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  track_mappings:\n    tone: [1]\n",
    );
    let heard = songs_heard(
        &show,
        vec![
            (Duration::from_millis(300), Request::Next),
            (Duration::from_millis(300), Request::Previous),
            (Duration::from_millis(300), Request::Next),
            (Duration::from_millis(300), Request::Next),
        ],
    );
    assert_eq!(heard, vec![1, 2, 1, 2, 3, 0]);
}

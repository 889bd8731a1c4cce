//! Standard MIDI File bytes → schedule (sorted, finite, complete messages) and the tempo map
//! the beat clock would follow: never a panic, never an endless or non-finite schedule.
#![no_main]

use backline::midi::file::{clock_tempo_map, parse_schedule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_schedule(data, &[9]) {
        Ok(schedule) => {
            assert!(schedule.length_seconds.is_finite());
            let mut previous = 0.0;
            for event in &schedule.events {
                assert!(event.seconds.is_finite() && event.seconds >= previous);
                previous = event.seconds;
                assert!(event.message()[0] >= 0x80);
            }
            // The beat clock's view of the same file stays finite too.
            if let Some(map) = clock_tempo_map(data) {
                let t = map.seconds_at_beat(64.0);
                assert!(t.is_finite() && t >= 0.0);
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});

//! Tempo maps: where each beat falls in time, from a song's `tempo:` block or a MIDI file's
//! tempo events. Beat positions are in quarter notes from measure 1 beat 1; times are in
//! seconds from the start of the song's audio. The beat clock derives every tick's deadline
//! from this map (never from "last tick + interval"), so it cannot drift.

pub mod anchor;
pub mod audio_clock;
pub mod spin_window;

pub use audio_clock::{AudioClock, AudioClockWriter, ClockMapping};
pub use spin_window::SpinWindow;

use crate::library::{TempoSpec, TimeSignature};

/// One stretch of constant or linearly changing tempo.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    start_beat: f64,
    start_seconds: f64,
    start_bpm: f64,
    end_bpm: f64,
    /// Length in quarter notes; infinite for the last segment.
    beats: f64,
    /// Meter in force (for bar:beat display).
    meter: TimeSignature,
    /// Measure number (1-based) at `start_beat`.
    start_measure: f64,
}

impl Segment {
    /// A stretch of constant tempo.
    fn steady(
        start_beat: f64,
        start_seconds: f64,
        bpm: f64,
        beats: f64,
        meter: TimeSignature,
        start_measure: f64,
    ) -> Segment {
        Segment {
            start_beat,
            start_seconds,
            start_bpm: bpm,
            end_bpm: bpm,
            beats,
            meter,
            start_measure,
        }
    }

    fn is_ramp(&self) -> bool {
        self.beats.is_finite() && (self.end_bpm - self.start_bpm).abs() > 1e-9
    }

    fn bpm_at_beat(&self, beat: f64) -> f64 {
        if !self.is_ramp() {
            return self.start_bpm;
        }
        let fraction = ((beat - self.start_beat) / self.beats).clamp(0.0, 1.0);
        self.start_bpm + (self.end_bpm - self.start_bpm) * fraction
    }

    fn seconds_at_beat(&self, beat: f64) -> f64 {
        let offset = beat - self.start_beat;
        if !self.is_ramp() {
            return self.start_seconds + offset * 60.0 / self.start_bpm;
        }
        // Tempo linear in beats: dt/db = 60 / bpm(b) integrates to a logarithm.
        let slope = (self.end_bpm - self.start_bpm) / self.beats;
        self.start_seconds + 60.0 / slope * (self.bpm_at_beat(beat) / self.start_bpm).ln()
    }

    fn beat_at_seconds(&self, seconds: f64) -> f64 {
        let offset = seconds - self.start_seconds;
        if !self.is_ramp() {
            return self.start_beat + offset * self.start_bpm / 60.0;
        }
        let slope = (self.end_bpm - self.start_bpm) / self.beats;
        let bpm = self.start_bpm * (offset * slope / 60.0).exp();
        self.start_beat + (bpm - self.start_bpm) / slope
    }

    fn end_seconds(&self) -> f64 {
        if self.beats.is_finite() {
            self.seconds_at_beat(self.start_beat + self.beats)
        } else {
            f64::INFINITY
        }
    }
}

/// Beat positions ⇄ seconds for one song.
#[derive(Debug, Clone, PartialEq)]
pub struct TempoMap {
    segments: Vec<Segment>,
}

/// Where the music is: measure and beat, both 1-based, and the tempo there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MusicalPosition {
    /// 1-based measure (0 or negative during the lead-in).
    pub measure: i64,
    /// 1-based beat within the measure (in the meter's beat unit).
    pub beat: u32,
    /// Quarter notes per minute.
    pub bpm: f64,
}

impl TempoMap {
    /// A constant tempo from time zero.
    pub fn constant(bpm: f64) -> TempoMap {
        TempoMap::from_spec(&TempoSpec {
            bpm,
            time_signature: TimeSignature {
                beats: 4,
                note_value: 4,
            },
            start_seconds: 0.0,
            changes: Vec::new(),
        })
    }

    /// Builds the map of a song's `tempo:` block. Ramps are linear in beat position over the
    /// given number of measures (the meter in force at the change's measure).
    pub fn from_spec(spec: &TempoSpec) -> TempoMap {
        let mut segments = Vec::new();
        let mut beat = 0.0;
        let mut seconds = spec.start_seconds;
        let mut measure = 1.0;
        let mut bpm = spec.bpm;
        let mut meter = spec.time_signature;
        for change in &spec.changes {
            let change_measure = f64::from(change.measure);
            let quarters = (change_measure - measure).max(0.0) * meter.quarters_per_measure();
            let plain = Segment::steady(beat, seconds, bpm, quarters, meter, measure);
            seconds = plain.end_seconds();
            beat += quarters;
            measure = change_measure;
            if quarters > 0.0 {
                segments.push(plain);
            }
            if let Some(new_meter) = change.time_signature {
                meter = new_meter;
            }
            if let Some(ramp_measures) = change.ramp_measures {
                let ramp = Segment {
                    start_beat: beat,
                    start_seconds: seconds,
                    start_bpm: bpm,
                    end_bpm: change.bpm,
                    beats: ramp_measures * meter.quarters_per_measure(),
                    meter,
                    start_measure: measure,
                };
                seconds = ramp.end_seconds();
                beat += ramp.beats;
                measure += ramp_measures;
                segments.push(ramp);
            }
            bpm = change.bpm;
        }
        segments.push(Segment::steady(
            beat,
            seconds,
            bpm,
            f64::INFINITY,
            meter,
            measure,
        ));
        TempoMap { segments }
    }

    /// Builds the map from a Standard MIDI File's tempo and time-signature events, already
    /// read and validated by [`crate::midi::file::clock_tempo_map`]: `ppq` ticks per quarter,
    /// `tempos` as (tick, µs per quarter), `meters` as (tick, meter). 120 BPM until the first
    /// tempo event.
    pub fn from_midi_events(
        ppq: u16,
        mut tempos: Vec<(u64, u32)>,
        meters: &[(u64, TimeSignature)],
    ) -> TempoMap {
        let ppq = f64::from(ppq.max(1));
        // The schedule loader refuses faster tempos; clamp here too so the clock can never be
        // asked for more than 1000 BPM.
        for (_, us) in &mut tempos {
            *us = (*us).max(crate::midi::file::MIN_TEMPO_US_PER_QUARTER);
        }
        tempos.sort_by_key(|(tick, _)| *tick);
        let meter = meters.first().map_or(
            TimeSignature {
                beats: 4,
                note_value: 4,
            },
            |(_, m)| *m,
        );
        let mut segments = Vec::new();
        let mut beat = 0.0;
        let mut seconds = 0.0;
        let mut bpm = 120.0;
        for (tick, us_per_quarter) in tempos {
            let at_beat = tick as f64 / ppq;
            if at_beat > beat {
                seconds += (at_beat - beat) * 60.0 / bpm;
                beat = at_beat;
            }
            bpm = 60_000_000.0 / f64::from(us_per_quarter);
            segments.retain(|s: &Segment| s.start_beat < beat);
            if let Some(last) = segments.last_mut() {
                last.beats = beat - last.start_beat;
            }
            segments.push(Segment::steady(
                beat,
                seconds,
                bpm,
                f64::INFINITY,
                meter,
                1.0 + beat / meter.quarters_per_measure(),
            ));
        }
        if segments.is_empty() {
            return TempoMap::constant(120.0);
        }
        if let Some(first) = segments.first_mut() {
            if first.start_beat > 0.0 {
                // 120 BPM until the first tempo event.
                segments.insert(
                    0,
                    Segment::steady(0.0, 0.0, 120.0, segments[0].start_beat, meter, 1.0),
                );
            }
        }
        TempoMap { segments }
    }

    fn segment_for_beat(&self, beat: f64) -> &Segment {
        let index = self
            .segments
            .partition_point(|s| s.start_beat <= beat)
            .saturating_sub(1);
        &self.segments[index.min(self.segments.len() - 1)]
    }

    fn segment_for_seconds(&self, seconds: f64) -> &Segment {
        let index = self
            .segments
            .partition_point(|s| s.start_seconds <= seconds)
            .saturating_sub(1);
        &self.segments[index.min(self.segments.len() - 1)]
    }

    /// Quarter notes from measure 1 beat 1 to the start of `measure` (1-based).
    pub fn quarters_before_measure(&self, measure: u32) -> f64 {
        let measure = f64::from(measure.max(1));
        let index = self
            .segments
            .partition_point(|s| s.start_measure <= measure)
            .saturating_sub(1);
        let segment = &self.segments[index.min(self.segments.len() - 1)];
        segment.start_beat
            + (measure - segment.start_measure) * segment.meter.quarters_per_measure()
    }

    /// Seconds from song start at which quarter-note position `beat` falls.
    pub fn seconds_at_beat(&self, beat: f64) -> f64 {
        self.segment_for_beat(beat).seconds_at_beat(beat)
    }

    /// Quarter-note position at `seconds` from song start (negative in the lead-in).
    pub fn beat_at_seconds(&self, seconds: f64) -> f64 {
        self.segment_for_seconds(seconds).beat_at_seconds(seconds)
    }

    /// Tempo in quarter notes per minute at `seconds`.
    pub fn bpm_at_seconds(&self, seconds: f64) -> f64 {
        let segment = self.segment_for_seconds(seconds);
        segment.bpm_at_beat(segment.beat_at_seconds(seconds))
    }

    /// Measure, beat and tempo at `seconds`, for the status line.
    pub fn position_at_seconds(&self, seconds: f64) -> MusicalPosition {
        let segment = self.segment_for_seconds(seconds);
        let beat = segment.beat_at_seconds(seconds);
        let quarters_per_measure = segment.meter.quarters_per_measure();
        let measures = (beat - segment.start_beat) / quarters_per_measure;
        let measure = (segment.start_measure + measures).floor();
        let within = (segment.start_measure + measures - measure) * quarters_per_measure;
        let beat_unit = 4.0 / f64::from(segment.meter.note_value);
        MusicalPosition {
            measure: measure as i64,
            beat: (within / beat_unit).floor() as u32 + 1,
            bpm: segment.bpm_at_beat(beat),
        }
    }
}

/// Sleeps until `deadline_ns` on CLOCK_MONOTONIC with an absolute deadline, so lateness of
/// one wake-up never shifts the next (no cumulative drift). Real-time safe.
pub fn sleep_until_ns(deadline_ns: u64) {
    let deadline = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: clock_nanosleep reads the timespec and writes nothing when remain is null.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &deadline,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::TempoChange;

    fn example_ramp() -> TempoMap {
        TempoMap::from_spec(&TempoSpec {
            bpm: 100.0,
            time_signature: TimeSignature {
                beats: 4,
                note_value: 4,
            },
            start_seconds: 0.5,
            changes: vec![TempoChange {
                measure: 5,
                bpm: 140.0,
                time_signature: None,
                ramp_measures: Some(2.0),
            }],
        })
    }

    #[test]
    fn ramp_matches_songs_example_formula() {
        // Downbeats documented in songs-example/songs/02-tempo-change/song.yaml.
        let map = example_ramp();
        for (beat, seconds) in [
            (0.0, 0.5),
            (16.0, 10.1),
            (20.0, 12.287859),
            (24.0, 14.137667),
            (28.0, 15.851953),
        ] {
            let got = map.seconds_at_beat(beat);
            assert!(
                (got - seconds).abs() < 1e-5,
                "beat {beat}: {got} vs {seconds}"
            );
            assert!((map.beat_at_seconds(seconds) - beat).abs() < 1e-5);
        }
        assert!((map.bpm_at_seconds(12.287859) - 120.0).abs() < 1e-3);
        let p = map.position_at_seconds(14.2);
        assert_eq!((p.measure, p.beat), (7, 1));
        assert_eq!(map.position_at_seconds(0.0).measure, 0);
    }

    #[test]
    fn meter_change_moves_measures() {
        let map = TempoMap::from_spec(&TempoSpec {
            bpm: 120.0,
            time_signature: TimeSignature {
                beats: 4,
                note_value: 4,
            },
            start_seconds: 0.0,
            changes: vec![TempoChange {
                measure: 3,
                bpm: 120.0,
                time_signature: Some(TimeSignature {
                    beats: 6,
                    note_value: 8,
                }),
                ramp_measures: None,
            }],
        });
        // Two 4/4 bars = 8 quarters = 4 s; then 6/8 bars of 3 quarters = 1.5 s.
        let p = map.position_at_seconds(4.0 + 1.5 + 0.26);
        assert_eq!((p.measure, p.beat), (4, 2));
    }

    #[test]
    fn midi_file_tempo_is_read() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/songs-example/songs/03-with-midi/song.mid"
        ))
        .expect("example MIDI file");
        let map = crate::midi::file::clock_tempo_map(&bytes).expect("metrical file");
        assert!((map.bpm_at_seconds(1.0) - 110.0).abs() < 0.01);
        assert!(crate::midi::file::clock_tempo_map(b"garbage").is_none());
    }
}

//! Where the current song sits on the device's frame counter: which song (preparation id),
//! the device frame its frame 0 was rendered at, and whether the transport plays. The audio
//! callback writes it; the beat clock reads it without locks to turn song positions into
//! device frames (and, through the audio clock, into CLOCK_MONOTONIC deadlines).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Preparation id of the current song (0 = none).
    pub song_id: u64,
    /// Device frame at which the song's frame 0 was (or would have been) rendered; negative
    /// when a seek starts the song further in than the device has run.
    pub start_frame: i64,
    /// Whether the transport is playing.
    pub playing: bool,
}

#[derive(Debug, Default)]
struct Shared {
    sequence: AtomicU64,
    song_id: AtomicU64,
    start_frame: AtomicU64,
    playing: AtomicU64,
}

/// The writing side (the audio callback). Real-time safe.
#[derive(Debug)]
pub struct AnchorWriter {
    shared: Arc<Shared>,
    last: Anchor,
}

/// The reading side, cloneable.
#[derive(Debug, Clone)]
pub struct AnchorReader {
    shared: Arc<Shared>,
    last: Anchor,
}

/// Attempts before a reader settles for the last anchor it read. The writer (the audio
/// thread) may be preempted mid-write by the reader (the clock thread runs at a higher
/// priority, possibly on the same CPU): spinning until it finishes could never end.
const READ_ATTEMPTS: usize = 64;

/// Creates a writer/reader pair (allocate off the RT thread).
pub fn anchor() -> (AnchorWriter, AnchorReader) {
    let shared = Arc::new(Shared::default());
    (
        AnchorWriter {
            shared: shared.clone(),
            last: Anchor {
                song_id: 0,
                start_frame: 0,
                playing: false,
            },
        },
        AnchorReader {
            shared,
            last: Anchor {
                song_id: 0,
                start_frame: 0,
                playing: false,
            },
        },
    )
}

impl AnchorWriter {
    /// Publishes a new anchor if it changed (a seqlock write: odd sequence while writing).
    pub fn publish(&mut self, anchor: Anchor) {
        if anchor == self.last {
            return;
        }
        self.last = anchor;
        let s = &self.shared;
        let seq = s.sequence.load(Ordering::Relaxed);
        s.sequence.store(seq.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        s.song_id.store(anchor.song_id, Ordering::Relaxed);
        s.start_frame
            .store(anchor.start_frame as u64, Ordering::Relaxed);
        s.playing
            .store(u64::from(anchor.playing), Ordering::Relaxed);
        s.sequence.store(seq.wrapping_add(2), Ordering::Release);
    }
}

impl AnchorReader {
    /// The latest consistent anchor; if a write is in progress, the last one read (never
    /// blocks, never spins unbounded).
    pub fn read(&mut self) -> Anchor {
        let s = &self.shared;
        for _ in 0..READ_ATTEMPTS {
            let before = s.sequence.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let anchor = Anchor {
                song_id: s.song_id.load(Ordering::Relaxed),
                start_frame: s.start_frame.load(Ordering::Relaxed) as i64,
                playing: s.playing.load(Ordering::Relaxed) != 0,
            };
            std::sync::atomic::fence(Ordering::Acquire);
            if s.sequence.load(Ordering::Relaxed) == before {
                self.last = anchor;
                return anchor;
            }
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_never_see_torn_anchors() {
        let (mut writer, mut reader) = anchor();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let check = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let a = reader.read();
                    // The writer always sets start_frame = 1000 × id and playing = odd id.
                    assert_eq!(a.start_frame, a.song_id as i64 * 1000);
                    assert_eq!(a.playing, a.song_id % 2 == 1);
                    reads += 1;
                }
                reads
            })
        };
        for id in 1..200_000u64 {
            writer.publish(Anchor {
                song_id: id,
                start_frame: id as i64 * 1000,
                playing: id % 2 == 1,
            });
        }
        stop.store(true, Ordering::Relaxed);
        assert!(check.join().expect("reader") > 0);
    }
}

//! Moving the audio callback's state from a dead stream to a new one.
//!
//! The [`AudioCallback`] (and with it the transport, the songs, the audio clock writer) lives
//! in an [`EngineSlot`], not inside a backend. Every backend callback borrows it for one
//! cycle with [`EngineSlot::with`] — an atomic swap out and a store back, no lock — and
//! renders silence when it cannot have it. When a device is lost, its callback may never run
//! again and cannot hand anything back, but between cycles the state always sits in the slot:
//! the reconnect thread [takes](EngineSlot::take) it from there, prepares it for the new
//! stream off the real-time thread, and [puts](EngineSlot::put) it back under a new owner
//! token before the new stream starts. A callback holding an old token never touches it again.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::callback::AudioCallback;
use super::jack_output::CycleHook;

/// Everything a backend's callback drives: the audio callback and, for JACK, the per-cycle
/// hook (JACK MIDI outputs).
pub struct Engine {
    /// The mixer, transport and timing.
    pub callback: AudioCallback,
    /// Extra per-cycle work after the audio (JACK only).
    pub hook: Option<Box<dyn CycleHook>>,
}

/// Where the [`Engine`] waits between cycles. See the module documentation.
pub struct EngineSlot {
    engine: AtomicPtr<Engine>,
    owner: AtomicU64,
}

// SAFETY: the pointer is only dereferenced by whoever swapped it out of the slot (exclusive
// access), and `Engine` is `Send`.
unsafe impl Sync for EngineSlot {}
unsafe impl Send for EngineSlot {}

impl EngineSlot {
    /// A slot holding `engine`, owned by token 1.
    pub fn new(engine: Engine) -> EngineSlot {
        EngineSlot {
            engine: AtomicPtr::new(Box::into_raw(Box::new(engine))),
            owner: AtomicU64::new(1),
        }
    }

    /// The token of the stream allowed to run the engine now.
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::Acquire)
    }

    /// Runs `f` on the engine if the stream holding `token` owns it and no one else has it
    /// right now; `None` otherwise (the caller renders silence). Real-time safe: two atomic
    /// operations, no lock, no allocation.
    pub fn with<R>(&self, token: u64, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
        if self.owner.load(Ordering::Acquire) != token {
            return None;
        }
        let engine = self.engine.swap(ptr::null_mut(), Ordering::Acquire);
        if engine.is_null() {
            return None;
        }
        if self.owner.load(Ordering::Acquire) != token {
            // Taken over while we looked: leave it to the new owner.
            self.engine.store(engine, Ordering::Release);
            return None;
        }
        // SAFETY: swapping the pointer out of the slot gives exclusive access until it is
        // stored back; it came from `Box::into_raw`.
        let result = f(unsafe { &mut *engine });
        self.engine.store(engine, Ordering::Release);
        Some(result)
    }

    /// Takes the engine out of the slot for a new owner, waiting up to `timeout` for a cycle
    /// in progress to hand it back. Normal threads only. Callbacks holding the old token will
    /// not get it again.
    pub fn take(&self, timeout: Duration) -> Option<Box<Engine>> {
        let deadline = Instant::now() + timeout;
        // From now on, old streams leave the engine alone.
        self.owner.fetch_add(1, Ordering::AcqRel);
        loop {
            let engine = self.engine.swap(ptr::null_mut(), Ordering::Acquire);
            if !engine.is_null() {
                // SAFETY: it came from `Box::into_raw` and we hold it exclusively.
                return Some(unsafe { Box::from_raw(engine) });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Puts the engine back for the stream that will hold the returned token.
    pub fn put(&self, engine: Box<Engine>) -> u64 {
        let token = self.owner.fetch_add(1, Ordering::AcqRel) + 1;
        let old = self.engine.swap(Box::into_raw(engine), Ordering::AcqRel);
        if !old.is_null() {
            // Cannot happen (one engine per slot); never drop twice.
            // SAFETY: a pointer in the slot always came from `Box::into_raw`.
            drop(unsafe { Box::from_raw(old) });
        }
        token
    }
}

impl Drop for EngineSlot {
    fn drop(&mut self) {
        let engine = self.engine.swap(ptr::null_mut(), Ordering::AcqRel);
        if !engine.is_null() {
            // SAFETY: it came from `Box::into_raw`; the slot is being dropped, so no one else
            // can hold it.
            drop(unsafe { Box::from_raw(engine) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::transport::transport;
    use std::sync::Arc;

    fn engine() -> Engine {
        let (transport, control) = transport();
        Engine {
            callback: AudioCallback::new(transport, control.status, 2, 48_000, None, None),
            hook: None,
        }
    }

    #[test]
    fn only_the_owner_runs_the_engine() {
        let slot = EngineSlot::new(engine());
        let first = slot.owner();
        assert_eq!(slot.with(first, |e| e.callback.device_frame()), Some(0));
        let taken = slot.take(Duration::from_millis(10)).expect("taken");
        assert!(slot.with(first, |_| ()).is_none(), "nothing in the slot");
        let second = slot.put(taken);
        assert_ne!(first, second);
        assert!(
            slot.with(first, |_| ()).is_none(),
            "the old stream is locked out"
        );
        assert!(slot.with(second, |_| ()).is_some());
    }

    #[test]
    fn take_waits_for_a_cycle_in_progress() {
        let slot = Arc::new(EngineSlot::new(engine()));
        let token = slot.owner();
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let cycle = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                slot.with(token, |_| {
                    inside_tx.send(()).expect("send");
                    std::thread::sleep(Duration::from_millis(50));
                })
            })
        };
        inside_rx.recv().expect("cycle started");
        let started = Instant::now();
        assert!(slot.take(Duration::from_secs(2)).is_some());
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(cycle.join().expect("join").is_some());
    }
}

//! The beat clock's standby writer: a second real-time thread that makes the clock's due
//! writes itself when the clock thread's core is not running at their deadlines.
//!
//! Why: on a virtual machine the host stops one vCPU at a time, for hundreds of µs up to
//! several ms; a SCHED_FIFO thread on that vCPU is late by as long, whatever its priority,
//! and no spin window helps (the spin itself is stopped). Measured on this 2-vCPU VM, both
//! cores loaded, a sleep-and-spin loop at 300 BPM on each vCPU to the same deadlines
//! (7 200 deadlines): each alone p99.9 805–990 µs, max 8.3 ms; the earlier of the two per
//! deadline p99.9 42 µs, max 243 µs — the stalls of the two vCPUs never overlapped. Bare
//! metal has the same shape on a smaller scale (SMIs and interrupt storms hit one core).
//!
//! How: the clock thread alone decides what is due. At every pass of its loop it *arms*
//! [`DueWrites`] with the writes due next, in order (deadline and bytes, up to
//! [`CAPACITY`] of them and [`ARM_HORIZON_NS`] ahead), and at the top of the next pass it
//! takes back whatever was not written, before anything can change its state, and collects
//! what was. The writes go out strictly in order: only the first unwritten one can be
//! *claimed*, by either thread, with one compare-and-swap on a single state word
//! (generation, armed count, written count, claim flag); the winner writes it to every
//! output and notes each output's lateness. The clock thread then advances its cursor past
//! every write made and files the measurements, whoever wrote. A Stop, Song Position Pointer
//! or All Notes Off is only written while nothing is armed, so the order on the wire is the
//! clock thread's order. Both loops follow DESIGN.md's RT rules: atomics,
//! `clock_nanosleep`, `write(2)`; no allocation, lock or log.
//!
//! Why several: the tenth session armed one write at a time, and a stall of the clock
//! thread's vCPU longer than a tick interval (8.3 ms at 300 BPM) was covered for its first
//! tick only — most of the ten-minute run's p99.9 tail was second ticks of ~10.6 ms stalls,
//! 2.3 ms late. Armed ahead, the standby carries on through such a stall on its own.
//!
//! Limits, on purpose: writes armed before a stall go out even if the transport stopped
//! during the stall, before the clock thread sends the Stop (at most [`ARM_HORIZON_NS`] of
//! them, and only while the clock thread is stalled: the Stop would have been that late
//! anyway); the order on the wire is still right. A stall of the clock thread in the few µs
//! between taking back and re-arming, or in the middle of its own write, is not covered.
//! The standby runs SCHED_FIFO one below the audio priority, not at the clock's: on a
//! two-core machine both clock threads spinning at once must never keep the audio callback
//! from a core.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::jack::Stream;
use super::output::OutputSlot;
use crate::engine::callback::monotonic_ns;
use crate::rt::{self, ProbeSummary, Role, RtSettings};
use crate::timing::sleep_until_ns;

/// Most writes armed at once. For ticks [`ARM_HORIZON_NS`] binds first (12 ticks at
/// 300 BPM); this bounds a dense MIDI file's arming (and its cost per pass).
pub const CAPACITY: usize = 16;
/// How far ahead of now the clock thread arms writes (the first due write is armed however
/// far it is). The ten-minute runs' longest stalls of one vCPU were ~90 ms.
pub const ARM_HORIZON_NS: u64 = 100_000_000;
/// State word: bit 0 = a thread is writing the first unwritten write; then the written
/// count, the armed count, and the generation (bumped whenever the clock thread takes the
/// writes back, so a claim can only take an arming its thread read).
const CLAIMED: u64 = 1;
const WRITTEN_SHIFT: u32 = 1;
const ARMED_SHIFT: u32 = 6;
const GENERATION_SHIFT: u32 = 11;
const COUNT_MASK: u64 = 0x1f;
const _: () = assert!(CAPACITY as u64 <= COUNT_MASK, "counts fit their bits");
/// Lateness of an output that did not take the bytes (missing, full, or not its stream).
const NOT_WRITTEN: i64 = i64::MIN;
/// How often an idle standby looks for an armed write, ns. The clock thread re-arms on
/// every pass (at most 2 ms apart), so 1 ms finds a write in time unless writes are under
/// a ms apart; it costs one wake-up per ms of a thread that then sleeps again.
const POLL_NS: u64 = 1_000_000;
/// How soon the standby looks again when it just lost a write to the clock thread's claim,
/// or found the writes just taken back, ns: the clock thread's write or re-arming takes a
/// few µs, and the next write may be due at the same deadline (a note on the beat).
const REPOLL_NS: u64 = 20_000;
/// The clock thread reaching a write this long after its deadline, with the standby having
/// made it, counts as a rescue in the closing log line.
pub const RESCUE_NS: u64 = 250_000;
/// [`Standby::realtime`] before the thread has tried to promote itself.
const PROMOTION_PENDING: u8 = 0;
const PROMOTION_REALTIME: u8 = 1;
const PROMOTION_FAILED: u8 = 2;

fn written_of(state: u64) -> usize {
    ((state >> WRITTEN_SHIFT) & COUNT_MASK) as usize
}

fn armed_of(state: u64) -> usize {
    ((state >> ARMED_SHIFT) & COUNT_MASK) as usize
}

fn generation_of(state: u64) -> u64 {
    state >> GENERATION_SHIFT
}

/// What [`DueWrites::settle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing is armed any more; the first `written` writes of the arming went out (read
    /// their figures with [`DueWrites::written_by_standby`] and [`DueWrites::lateness`]
    /// before arming again). The clock thread may change its state.
    Free {
        /// How many of the armed writes were made, in order.
        written: usize,
    },
    /// A thread is writing right now; look again in a moment.
    Busy,
}

/// One armed write, as a thread that may claim it names it: the arming's generation and
/// the write's place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmedWrite {
    generation: u64,
    index: usize,
}

impl ArmedWrite {
    /// Its place in the arming: 0 for the first write due.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// One write's deadline and bytes, and who made it.
struct Entry {
    deadline: AtomicU64,
    /// `bytes[0] | bytes[1] << 8 | bytes[2] << 16 | len << 24 | file stream << 26`.
    payload: AtomicU32,
    by_standby: AtomicBool,
}

/// The state word on a cache line of its own: the standby spins reading it while the
/// clock thread fills in entries.
#[repr(align(64))]
struct StateWord(AtomicU64);

impl std::ops::Deref for StateWord {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// What the standby found when it looked for the next write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// This write is the next to make, due at this deadline.
    Next(ArmedWrite, u64),
    /// A thread is writing, or the writes were just taken back: look again soon.
    Moving,
    /// Nothing armed since the last look: the clock is idle.
    Idle,
}

/// The writes the beat clock has due next, in order, shared by the clock thread (which arms
/// them, claims the first, takes them back and collects them) and the standby (which may
/// claim the first unwritten one). Atomics only.
pub struct DueWrites {
    /// See [`CLAIMED`]: one word, so that arming, claiming and taking back are each one
    /// atomic step and the writes can only go out in order.
    state: StateWord,
    entries: [Entry; CAPACITY],
    /// Per write and output (`index * outputs + output`): completion of the write − its
    /// deadline, ns, or `NOT_WRITTEN`.
    lateness: Box<[AtomicI64]>,
    outputs: usize,
}

impl DueWrites {
    /// Room for [`CAPACITY`] writes to `outputs` outputs, nothing armed.
    pub fn new(outputs: usize) -> DueWrites {
        DueWrites {
            state: StateWord(AtomicU64::new(0)),
            entries: std::array::from_fn(|_| Entry {
                deadline: AtomicU64::new(0),
                payload: AtomicU32::new(0),
                by_standby: AtomicBool::new(false),
            }),
            lateness: (0..CAPACITY * outputs)
                .map(|_| AtomicI64::new(NOT_WRITTEN))
                .collect(),
            outputs,
        }
    }

    /// Clock thread, after [`Settled::Free`]: arms `bytes` (at most 3) on `stream` for
    /// `deadline` after the writes already armed (deadlines must not go backwards), or
    /// None when [`CAPACITY`] writes are armed.
    pub fn arm(&self, deadline: u64, stream: Stream, bytes: &[u8]) -> Option<ArmedWrite> {
        let state = self.state.load(Ordering::Relaxed);
        let index = armed_of(state);
        let entry = self.entries.get(index)?;
        debug_assert!(bytes.len() <= 3, "a due write is one short MIDI message");
        let len = bytes.len().min(3);
        let mut payload = (len as u32) << 24;
        for (i, &b) in bytes.iter().take(3).enumerate() {
            payload |= u32::from(b) << (8 * i);
        }
        if stream == Stream::File {
            payload |= 1 << 26;
        }
        entry.deadline.store(deadline, Ordering::Relaxed);
        entry.payload.store(payload, Ordering::Relaxed);
        // An add, not a store: the standby may be claiming an earlier write meanwhile.
        // Release: a thread that sees the count sees the deadline and payload above.
        self.state.fetch_add(1 << ARMED_SHIFT, Ordering::Release);
        Some(ArmedWrite {
            generation: generation_of(state),
            index,
        })
    }

    /// Claims `write` (as returned by [`DueWrites::arm`] or found by the standby) and writes
    /// it to `outputs`; false when it was taken back, is not the first unwritten write, or
    /// the other thread got it.
    pub fn claim_and_write(
        &self,
        write: ArmedWrite,
        outputs: &[Arc<OutputSlot>],
        by_standby: bool,
    ) -> bool {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if !Self::is_next(state, write) {
                return false;
            }
            // Only the armed count can change under us (the clock thread arming more).
            match self.state.compare_exchange_weak(
                state,
                state | CLAIMED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        // Claimed: the clock thread does not touch this write until it is counted written.
        let entry = &self.entries[write.index];
        let deadline = entry.deadline.load(Ordering::Relaxed);
        let payload = entry.payload.load(Ordering::Relaxed);
        let bytes = [payload as u8, (payload >> 8) as u8, (payload >> 16) as u8];
        let len = ((payload >> 24) & 3) as usize;
        let stream = if payload & (1 << 26) != 0 {
            Stream::File
        } else {
            Stream::Clock
        };
        let first = write.index * self.outputs;
        for (output, late) in outputs
            .iter()
            .zip(self.lateness[first..first + self.outputs].iter())
        {
            let value = if output.carries(stream) && output.write(&bytes[..len]) {
                monotonic_ns() as i64 - deadline as i64
            } else {
                NOT_WRITTEN
            };
            late.store(value, Ordering::Relaxed);
        }
        entry.by_standby.store(by_standby, Ordering::Relaxed);
        // Claim flag off and written count up in one add (the armed count may be moving):
        // adding 1 to a set bit 0 carries into the written count, which stays below the
        // armed count (at most CAPACITY) and so never carries further.
        // Release: the clock thread that sees the count sees the figures above.
        let before = self.state.fetch_add(1, Ordering::Release);
        debug_assert!(
            before & CLAIMED != 0 && written_of(before) < armed_of(before),
            "completed a write that was not claimed"
        );
        true
    }

    /// Whether `write` is the first unwritten write of the current arming, unclaimed.
    fn is_next(state: u64, write: ArmedWrite) -> bool {
        state & CLAIMED == 0
            && generation_of(state) == write.generation
            && written_of(state) == write.index
            && write.index < armed_of(state)
    }

    /// Clock thread, top of every pass: takes back every write not made (a new generation
    /// with nothing armed) and says how many were made, or that one is being written.
    pub fn settle(&self) -> Settled {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & CLAIMED != 0 {
                return Settled::Busy;
            }
            let next = (generation_of(state) + 1) << GENERATION_SHIFT;
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Settled::Free {
                        written: written_of(state),
                    }
                }
                // The standby claimed or finished one meanwhile: look again.
                Err(now) => state = now,
            }
        }
    }

    /// How many writes of the current arming were made so far (no effect on the arming).
    pub fn written(&self) -> usize {
        written_of(self.state.load(Ordering::Acquire))
    }

    /// After [`Settled::Free`]: whether the standby (not the clock thread) made write
    /// `index`.
    pub fn written_by_standby(&self, index: usize) -> bool {
        self.entries
            .get(index)
            .is_some_and(|e| e.by_standby.load(Ordering::Relaxed))
    }

    /// After [`Settled::Free`]: write `index`'s lateness on output `output` in ns, or None
    /// when that output did not take the bytes.
    pub fn lateness(&self, index: usize, output: usize) -> Option<i64> {
        if output >= self.outputs {
            return None;
        }
        self.lateness
            .get(index * self.outputs + output)
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != NOT_WRITTEN)
    }

    /// Standby: the first unwritten armed write and its deadline, if one waits unclaimed;
    /// else whether the writes are moving (a claim, or an arming newer than
    /// `last_generation`) or idle. Updates `last_generation`.
    fn look(&self, last_generation: &mut u64) -> Look {
        let state = self.state.load(Ordering::Acquire);
        let write = ArmedWrite {
            generation: generation_of(state),
            index: written_of(state),
        };
        let new_arming = write.generation != *last_generation;
        *last_generation = write.generation;
        if Self::is_next(state, write) {
            Look::Next(
                write,
                self.entries[write.index].deadline.load(Ordering::Relaxed),
            )
        } else if state & CLAIMED != 0 || new_arming {
            Look::Moving
        } else {
            Look::Idle
        }
    }

    /// Standby: whether `write` is still the one to make next.
    fn is_current(&self, write: ArmedWrite) -> bool {
        Self::is_next(self.state.load(Ordering::Relaxed), write)
    }
}
/// The running standby thread.
pub struct Standby {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Writes the standby made.
    pub writes: Arc<AtomicU64>,
    /// Time it has spent busy-waiting before deadlines, ns.
    pub spun_ns: Arc<AtomicU64>,
    /// Whether it runs real-time (`PROMOTION_*`).
    promotion: Arc<AtomicU8>,
}

impl Standby {
    /// Starts the standby for `due` on `outputs`. It promotes itself (`realtime.cpus`,
    /// SCHED_FIFO one below the audio priority, see the module doc) and ends at once when it
    /// cannot run real-time: at normal priority a second spinning thread costs the machine
    /// more than it saves. It spins `spin_ns` before each deadline (the clock's shortest
    /// window).
    pub fn start(
        due: Arc<DueWrites>,
        outputs: Vec<Arc<OutputSlot>>,
        spin_ns: u64,
        rt: RtSettings,
        probe: ProbeSummary,
    ) -> Result<Standby, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let spun_ns = Arc::new(AtomicU64::new(0));
        let promotion = Arc::new(AtomicU8::new(PROMOTION_PENDING));
        let settings = RtSettings {
            clock_priority: rt
                .audio_priority
                .min(rt.clock_priority)
                .saturating_sub(1)
                .max(1),
            ..rt
        };
        let handle = {
            let (stop, writes, spun_ns, promotion) = (
                stop.clone(),
                writes.clone(),
                spun_ns.clone(),
                promotion.clone(),
            );
            thread::Builder::new()
                .name("backline-standby".into())
                .spawn(move || {
                    rt::prefault_stack();
                    let realtime = rt::promote_helper_thread(Role::Clock, &settings, &probe);
                    let outcome = if realtime {
                        PROMOTION_REALTIME
                    } else {
                        PROMOTION_FAILED
                    };
                    promotion.store(outcome, Ordering::Release);
                    if !realtime {
                        return;
                    }
                    assert_no_alloc::assert_no_alloc(|| {
                        standby_loop(&due, &outputs, spin_ns, &stop, &writes, &spun_ns);
                    });
                })
                .map_err(|e| format!("cannot start the clock's standby thread: {e}"))?
        };
        Ok(Standby {
            stop,
            handle: Some(handle),
            writes,
            spun_ns,
            promotion,
        })
    }

    /// Whether the standby runs real-time: None until it has tried, false when it could not
    /// (then it has ended and makes no writes).
    pub fn realtime(&self) -> Option<bool> {
        match self.promotion.load(Ordering::Acquire) {
            PROMOTION_PENDING => None,
            state => Some(state == PROMOTION_REALTIME),
        }
    }

    /// Stops the thread (it makes no write after this returns).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps until shortly before the next armed deadline, spins to it while that write stays
/// the next, and tries to claim it; then goes on to the write after it. The hot loop: atomics, `clock_nanosleep` and `write(2)` only.
fn standby_loop(
    due: &DueWrites,
    outputs: &[Arc<OutputSlot>],
    spin_ns: u64,
    stop: &AtomicBool,
    writes: &AtomicU64,
    spun_ns: &AtomicU64,
) {
    let mut last_generation = 0;
    while !stop.load(Ordering::Acquire) {
        let now = monotonic_ns();
        let (write, deadline) = match due.look(&mut last_generation) {
            Look::Next(write, deadline) => (write, deadline),
            Look::Moving => {
                sleep_until_ns(now + REPOLL_NS);
                continue;
            }
            Look::Idle => {
                sleep_until_ns(now + POLL_NS);
                continue;
            }
        };
        if deadline > now + spin_ns {
            // Never past a re-arming by much: the clock thread may move the deadline.
            sleep_until_ns((deadline - spin_ns).min(now + POLL_NS));
            continue;
        }
        let spin_from = monotonic_ns();
        while monotonic_ns() < deadline && due.is_current(write) {
            std::hint::spin_loop();
        }
        // One writer (this loop): a load and a store, no read-modify-write needed.
        spun_ns.store(
            spun_ns.load(Ordering::Relaxed) + monotonic_ns().saturating_sub(spin_from),
            Ordering::Relaxed,
        );
        if due.claim_and_write(write, outputs, true) {
            writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether a standby write was a rescue: the clock thread got to it `reached - deadline`
/// after its deadline.
pub fn is_rescue(deadline: u64, reached: u64) -> bool {
    reached > deadline + RESCUE_NS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_write_is_claimed_once_and_settles_as_written() {
        let due = DueWrites::new(0);
        let write = due.arm(5, Stream::Clock, &[0xF8]).expect("room");
        assert!(due.claim_and_write(write, &[], true));
        assert!(!due.claim_and_write(write, &[], false), "claimed once");
        assert_eq!(due.settle(), Settled::Free { written: 1 });
        assert!(due.written_by_standby(0));
        assert_eq!(
            due.settle(),
            Settled::Free { written: 0 },
            "nothing armed now"
        );
    }

    #[test]
    fn writes_go_out_in_order_only() {
        let due = DueWrites::new(0);
        let first = due.arm(5, Stream::Clock, &[0xF8]).expect("room");
        let second = due.arm(6, Stream::File, &[0x90, 60, 100]).expect("room");
        let third = due.arm(6, Stream::Clock, &[0xF8]).expect("room");
        assert!(
            !due.claim_and_write(second, &[], true),
            "not before the first"
        );
        let mut generation = 0;
        assert_eq!(due.look(&mut generation), Look::Next(first, 5));
        assert!(due.claim_and_write(first, &[], false));
        assert_eq!(due.written(), 1);
        assert_eq!(due.look(&mut generation), Look::Next(second, 6));
        assert!(due.claim_and_write(second, &[], true));
        // The clock thread takes the rest back: two made, the third never.
        assert_eq!(due.settle(), Settled::Free { written: 2 });
        assert!(!due.written_by_standby(0) && due.written_by_standby(1));
        assert!(!due.claim_and_write(third, &[], true), "taken back");
        assert_eq!(due.look(&mut generation), Look::Moving, "just taken back");
        assert_eq!(due.look(&mut generation), Look::Idle, "nothing armed since");
    }

    #[test]
    fn a_taken_back_arming_cannot_be_claimed_nor_an_older_one() {
        let due = DueWrites::new(0);
        let old = due.arm(5, Stream::Clock, &[0xF8]).expect("room");
        assert_eq!(due.settle(), Settled::Free { written: 0 }, "taken back");
        assert!(!due.claim_and_write(old, &[], true));
        let new = due.arm(5, Stream::Clock, &[0xF8]).expect("room");
        assert_ne!(old, new, "a new generation");
        assert!(!due.claim_and_write(old, &[], true), "not the old arming");
        assert!(due.claim_and_write(new, &[], false));
        assert_eq!(due.settle(), Settled::Free { written: 1 });
    }

    #[test]
    fn arming_stops_at_capacity() {
        let due = DueWrites::new(0);
        for i in 0..CAPACITY {
            assert!(due.arm(i as u64, Stream::Clock, &[0xF8]).is_some());
        }
        assert_eq!(due.arm(99, Stream::Clock, &[0xF8]), None, "full");
        assert_eq!(due.settle(), Settled::Free { written: 0 });
        assert!(due.arm(100, Stream::Clock, &[0xF8]).is_some(), "room again");
    }

    #[test]
    fn a_claimed_write_is_busy_until_done() {
        let due = DueWrites::new(0);
        let write = due.arm(5, Stream::Clock, &[0xF8]).expect("room");
        // What a claim looks like from the outside while the writes are being made.
        due.state.fetch_or(CLAIMED, Ordering::AcqRel);
        assert_eq!(due.settle(), Settled::Busy);
        let mut generation = 0;
        assert_eq!(due.look(&mut generation), Look::Moving, "being written");
        assert!(!due.claim_and_write(write, &[], false), "already claimed");
        // Arming more while it is being written does not disturb the claim.
        assert!(due.arm(6, Stream::Clock, &[0xF8]).is_some());
        due.state.fetch_add(1, Ordering::Release);
        assert_eq!(due.settle(), Settled::Free { written: 1 });
        assert_eq!(due.lateness(0, 0), None, "no output, no figure");
    }

    #[test]
    fn a_rescue_is_the_clock_thread_more_than_250_us_late() {
        assert!(!is_rescue(1_000_000, 1_200_000));
        assert!(is_rescue(1_000_000, 1_300_000));
    }
}

//! The beat clock's standby writer: a second real-time thread that makes the clock's next
//! due write itself when the clock thread's core is not running at the deadline.
//!
//! Why: on a virtual machine the host stops one vCPU at a time, for hundreds of µs up to
//! several ms; a SCHED_FIFO thread on that vCPU is late by as long, whatever its priority,
//! and no spin window helps (the spin itself is stopped). Measured on this 2-vCPU VM, both
//! cores loaded, a sleep-and-spin loop at 300 BPM on each vCPU to the same deadlines
//! (7 200 deadlines): each alone p99.9 805–990 µs, max 8.3 ms; the earlier of the two per
//! deadline p99.9 42 µs, max 243 µs — the stalls of the two vCPUs never overlapped. Bare
//! metal has the same shape on a smaller scale (SMIs and interrupt storms hit one core).
//!
//! How: the clock thread alone decides what is due. It *arms* [`DueWrite`] with the next
//! deadline and its bytes as soon as it knows them, and takes the arming back (or collects
//! the result) at the top of every pass of its loop, before anything can change its state.
//! At the deadline both threads try to *claim* the armed write with one compare-and-swap;
//! the winner writes to every output and notes each output's lateness, and the clock
//! thread then advances its cursor and files the measurements, whoever wrote. A Stop, Song
//! Position Pointer or All Notes Off is only written while nothing is armed, so the order
//! on the wire is the clock thread's order. Both loops follow DESIGN.md's RT rules: atomics,
//! `clock_nanosleep`, `write(2)`; no allocation, lock or log.
//!
//! Limits, on purpose: one write is armed at a time, so a stall covers the write due in it,
//! not a second one due before the clock thread runs again (the next tick is a tick interval
//! away — 8.3 ms at 300 BPM, longer than nearly every stall — but the notes of a chord share
//! a deadline). A write armed before a stall goes out even if the transport stopped during
//! the stall, before the clock thread sends the Stop: the order on the wire is still right.
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

/// Nothing armed: the clock thread owns the slot.
const IDLE: u64 = 0;
/// A write waits for its deadline; either thread may claim it.
const ARMED: u64 = 1;
/// A thread is writing it.
const CLAIMED: u64 = 2;
/// Written; the lateness figures wait for the clock thread.
const DONE: u64 = 3;
/// Lateness of an output that did not take the bytes (missing, full, or not its stream).
const NOT_WRITTEN: i64 = i64::MIN;
/// How often an idle standby looks for an armed write, ns. The clock thread arms the next
/// write on the pass after it collects the previous one, and re-arms it on every pass (at
/// most 2 ms apart), so 1 ms finds it in time unless writes are under a ms apart; it costs
/// one wake-up per ms of a thread that then sleeps again.
const POLL_NS: u64 = 1_000_000;
/// The clock thread reaching a write this long after its deadline, with the standby having
/// made it, counts as a rescue in the closing log line.
pub const RESCUE_NS: u64 = 250_000;
/// [`Standby::realtime`] before the thread has tried to promote itself.
const PROMOTION_PENDING: u8 = 0;
const PROMOTION_REALTIME: u8 = 1;
const PROMOTION_FAILED: u8 = 2;

/// What a [`DueWrite`] holds for the clock thread once a write is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing is armed (any arming was taken back): the clock thread may change its state.
    Free,
    /// A thread is writing right now; look again in a moment.
    Busy,
    /// The armed write went out; read [`DueWrite::lateness`], then [`DueWrite::release`].
    Written {
        /// The standby thread made it (not the clock thread).
        by_standby: bool,
    },
}

/// The one write the beat clock has due next, shared by the clock thread (which arms,
/// claims and collects it) and the standby (which may claim it). Atomics only.
pub struct DueWrite {
    /// `generation << 2 | phase`: every arming is a new generation, so a claim can only
    /// take the arming its thread read.
    state: AtomicU64,
    deadline: AtomicU64,
    /// `bytes[0] | bytes[1] << 8 | bytes[2] << 16 | len << 24 | file stream << 26`.
    payload: AtomicU32,
    /// Set by whoever claims: the standby (true) or the clock thread.
    by_standby: AtomicBool,
    /// Per output (same order as the outputs): completion of its write − deadline, ns, or
    /// `NOT_WRITTEN`.
    lateness: Box<[AtomicI64]>,
}

impl DueWrite {
    /// A slot for `outputs` outputs, nothing armed.
    pub fn new(outputs: usize) -> DueWrite {
        DueWrite {
            state: AtomicU64::new(IDLE),
            deadline: AtomicU64::new(0),
            payload: AtomicU32::new(0),
            by_standby: AtomicBool::new(false),
            lateness: (0..outputs).map(|_| AtomicI64::new(NOT_WRITTEN)).collect(),
        }
    }

    /// Clock thread, slot [`Settled::Free`]: arms `bytes` (at most 3) on `stream` for
    /// `deadline` and returns the arming's state for [`DueWrite::claim_and_write`].
    pub fn arm(&self, deadline: u64, stream: Stream, bytes: &[u8]) -> u64 {
        debug_assert_eq!(
            self.state.load(Ordering::Relaxed) & 3,
            IDLE,
            "armed while busy"
        );
        debug_assert!(bytes.len() <= 3, "a due write is one short MIDI message");
        let len = bytes.len().min(3);
        let mut payload = (len as u32) << 24;
        for (i, &b) in bytes.iter().take(3).enumerate() {
            payload |= u32::from(b) << (8 * i);
        }
        if stream == Stream::File {
            payload |= 1 << 26;
        }
        self.deadline.store(deadline, Ordering::Relaxed);
        self.payload.store(payload, Ordering::Relaxed);
        let generation = (self.state.load(Ordering::Relaxed) >> 2) + 1;
        let armed = generation << 2 | ARMED;
        // Release: a thread that sees ARMED sees the deadline and payload above.
        self.state.store(armed, Ordering::Release);
        armed
    }

    /// Claims the arming `armed` (as returned by [`DueWrite::arm`] or read by the standby)
    /// and writes it to `outputs`; false when it was taken back or the other thread got it.
    pub fn claim_and_write(
        &self,
        armed: u64,
        outputs: &[Arc<OutputSlot>],
        by_standby: bool,
    ) -> bool {
        let claimed = (armed & !3) | CLAIMED;
        if self
            .state
            .compare_exchange(armed, claimed, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Claimed: the clock thread does not touch the fields until DONE.
        let deadline = self.deadline.load(Ordering::Relaxed);
        let payload = self.payload.load(Ordering::Relaxed);
        let bytes = [payload as u8, (payload >> 8) as u8, (payload >> 16) as u8];
        let len = ((payload >> 24) & 3) as usize;
        let stream = if payload & (1 << 26) != 0 {
            Stream::File
        } else {
            Stream::Clock
        };
        for (output, late) in outputs.iter().zip(self.lateness.iter()) {
            let value = if output.carries(stream) && output.write(&bytes[..len]) {
                monotonic_ns() as i64 - deadline as i64
            } else {
                NOT_WRITTEN
            };
            late.store(value, Ordering::Relaxed);
        }
        self.by_standby.store(by_standby, Ordering::Relaxed);
        // Release: the clock thread that sees DONE sees the figures above.
        self.state.store((armed & !3) | DONE, Ordering::Release);
        true
    }

    /// Clock thread, top of every pass: takes an arming back, or reports that it is being
    /// written or was written.
    pub fn settle(&self) -> Settled {
        loop {
            let state = self.state.load(Ordering::Acquire);
            match state & 3 {
                IDLE => return Settled::Free,
                ARMED => {
                    let idle = (state & !3) | IDLE;
                    if self
                        .state
                        .compare_exchange(state, idle, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Settled::Free;
                    }
                    // The standby claimed it meanwhile: look again.
                }
                CLAIMED => return Settled::Busy,
                _ => {
                    return Settled::Written {
                        by_standby: self.by_standby.load(Ordering::Relaxed),
                    }
                }
            }
        }
    }

    /// After [`Settled::Written`]: output `index`'s lateness in ns, or None when that output
    /// did not take the bytes.
    pub fn lateness(&self, index: usize) -> Option<i64> {
        self.lateness
            .get(index)
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != NOT_WRITTEN)
    }

    /// After [`Settled::Written`] and reading the figures: the slot is the clock thread's.
    pub fn release(&self) {
        let state = self.state.load(Ordering::Relaxed);
        debug_assert_eq!(state & 3, DONE, "released before it was written");
        self.state.store((state & !3) | IDLE, Ordering::Release);
    }

    /// Standby: the current arming and its deadline, if something is armed.
    fn armed(&self) -> Option<(u64, u64)> {
        let state = self.state.load(Ordering::Acquire);
        (state & 3 == ARMED).then(|| (state, self.deadline.load(Ordering::Relaxed)))
    }

    /// Standby: whether `armed` is still the current arming.
    fn is_current(&self, armed: u64) -> bool {
        self.state.load(Ordering::Relaxed) == armed
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
        due: Arc<DueWrite>,
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

/// Sleeps until shortly before the armed deadline, spins to it while it stays armed, and
/// tries to claim it. The hot loop: atomics, `clock_nanosleep` and `write(2)` only.
fn standby_loop(
    due: &DueWrite,
    outputs: &[Arc<OutputSlot>],
    spin_ns: u64,
    stop: &AtomicBool,
    writes: &AtomicU64,
    spun_ns: &AtomicU64,
) {
    while !stop.load(Ordering::Acquire) {
        let now = monotonic_ns();
        let Some((armed, deadline)) = due.armed() else {
            sleep_until_ns(now + POLL_NS);
            continue;
        };
        if deadline > now + spin_ns {
            // Never past a re-arming by much: the clock thread may move the deadline.
            sleep_until_ns((deadline - spin_ns).min(now + POLL_NS));
            continue;
        }
        let spin_from = monotonic_ns();
        while monotonic_ns() < deadline && due.is_current(armed) {
            std::hint::spin_loop();
        }
        // One writer (this loop): a load and a store, no read-modify-write needed.
        spun_ns.store(
            spun_ns.load(Ordering::Relaxed) + monotonic_ns().saturating_sub(spin_from),
            Ordering::Relaxed,
        );
        if due.claim_and_write(armed, outputs, true) {
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
    fn an_arming_is_claimed_once_and_settles_as_written() {
        let due = DueWrite::new(0);
        let armed = due.arm(5, Stream::Clock, &[0xF8]);
        assert!(due.claim_and_write(armed, &[], true));
        assert!(!due.claim_and_write(armed, &[], false), "claimed once");
        assert_eq!(due.settle(), Settled::Written { by_standby: true });
        due.release();
        assert_eq!(due.settle(), Settled::Free);
    }

    #[test]
    fn a_taken_back_arming_cannot_be_claimed_nor_an_older_one() {
        let due = DueWrite::new(0);
        let first = due.arm(5, Stream::Clock, &[0xF8]);
        assert_eq!(due.settle(), Settled::Free, "taken back");
        assert!(!due.claim_and_write(first, &[], true));
        let second = due.arm(6, Stream::File, &[0x90, 60, 100]);
        assert_ne!(first, second, "a new generation");
        assert!(!due.claim_and_write(first, &[], true), "not the old arming");
        assert!(due.claim_and_write(second, &[], false));
        assert_eq!(due.settle(), Settled::Written { by_standby: false });
    }

    #[test]
    fn a_claimed_write_is_busy_until_done() {
        let due = DueWrite::new(0);
        let armed = due.arm(5, Stream::Clock, &[0xF8]);
        // What a claim looks like from the outside while the writes are being made.
        due.state.store((armed & !3) | CLAIMED, Ordering::Release);
        assert_eq!(due.settle(), Settled::Busy);
        assert_eq!(due.lateness(0), None, "no output, no figure");
    }

    #[test]
    fn a_rescue_is_the_clock_thread_more_than_250_us_late() {
        assert!(!is_rescue(1_000_000, 1_200_000));
        assert!(is_rescue(1_000_000, 1_300_000));
    }
}

//! How long the beat clock busy-waits before a deadline, adapted to the machine it runs on.
//!
//! The clock sleeps until the window before a deadline and spins the rest, so a wake-up
//! later than the window is late on the wire. How late wake-ups come belongs to the machine:
//! tens of µs on a low-latency kernel, and on this VM now and then a timer interrupt delivered
//! ~1 ms late while a thread that is already running (spinning) is not held up at all —
//! measured with a bare sleep-and-spin loop in C at SCHED_FIFO 80, 120 deadlines a second, a
//! busy thread on every core, 60 s per run: 10–24 ticks a minute more than 250 µs late with a
//! 400 µs window,
//! nearly all of them timers later than the window; 1–3 with 1000–1500 µs, where the rest
//! were stalls of the whole vCPU, which nothing in the guest avoids.
//!
//! So the window follows the wake-ups: every sleep's overshoot, plus [`MARGIN_NS`], widens it
//! at once (up to the ceiling), and it narrows back toward the floor with a half-life of
//! [`HALF_LIFE_NS`]. A quiet machine keeps the floor and its CPU; a noisy one pays for
//! punctual ticks with spinning (at 300 BPM, 120 ticks/s, each 100 µs of window is 1.2 % of
//! one core). Pure arithmetic: safe in the clock's hot loop.

/// Added to an observed overshoot: the next one may be a little later still.
pub const MARGIN_NS: u64 = 100_000;

/// Time for the widening beyond the floor to halve once wake-ups are punctual again.
pub const HALF_LIFE_NS: u64 = 60_000_000_000;

/// The adaptive busy-wait window.
#[derive(Debug, Clone)]
pub struct SpinWindow {
    floor_ns: f64,
    ceiling_ns: f64,
    /// Widening above the floor, ns.
    excess_ns: f64,
    /// When the last overshoot was observed (0: never).
    last_observed_ns: u64,
    /// The widest window so far, ns.
    widest_ns: u64,
    /// The latest wake-up seen so far, ns after its target.
    latest_wake_ns: u64,
}

impl SpinWindow {
    /// A window of `floor_ns` that may widen up to `ceiling_ns` (a ceiling at or below the
    /// floor keeps it fixed).
    pub fn new(floor_ns: u64, ceiling_ns: u64) -> SpinWindow {
        SpinWindow {
            floor_ns: floor_ns as f64,
            ceiling_ns: ceiling_ns.max(floor_ns) as f64,
            excess_ns: 0.0,
            last_observed_ns: 0,
            widest_ns: floor_ns,
            latest_wake_ns: 0,
        }
    }

    /// The busy-wait before the next deadline, ns.
    pub fn window_ns(&self) -> u64 {
        (self.floor_ns + self.excess_ns) as u64
    }

    /// A sleep meant to end at some target ended `overshoot_ns` after it, at `now_ns`.
    pub fn observe(&mut self, now_ns: u64, overshoot_ns: u64) {
        if self.last_observed_ns != 0 && now_ns > self.last_observed_ns {
            let elapsed = (now_ns - self.last_observed_ns) as f64;
            self.excess_ns *= (-elapsed / HALF_LIFE_NS as f64).exp2();
        }
        self.last_observed_ns = now_ns;
        let wanted = overshoot_ns.saturating_add(MARGIN_NS) as f64 - self.floor_ns;
        if wanted > self.excess_ns {
            self.excess_ns = wanted.min(self.ceiling_ns - self.floor_ns);
        }
        self.widest_ns = self.widest_ns.max(self.window_ns());
        self.latest_wake_ns = self.latest_wake_ns.max(overshoot_ns);
    }

    /// The widest the window has been, ns.
    pub fn widest_ns(&self) -> u64 {
        self.widest_ns
    }

    /// The latest any observed wake-up came after its target, ns.
    pub fn latest_wake_ns(&self) -> u64 {
        self.latest_wake_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    #[test]
    fn punctual_wake_ups_keep_the_floor() {
        let mut window = SpinWindow::new(400 * US, 2 * MS);
        for n in 1..=10_000u64 {
            window.observe(n * 8 * MS, 30 * US);
        }
        assert_eq!(window.window_ns(), 400 * US);
        assert_eq!(window.widest_ns(), 400 * US);
        assert_eq!(window.latest_wake_ns(), 30 * US);
    }

    #[test]
    fn a_late_wake_up_widens_the_window_at_once_and_it_narrows_over_minutes() {
        let mut window = SpinWindow::new(400 * US, 2 * MS);
        window.observe(MS, 20 * US);
        window.observe(2 * MS, 900 * US);
        assert_eq!(window.window_ns(), 1000 * US, "overshoot + margin");
        // Punctual again: the widening halves every minute.
        let minute = HALF_LIFE_NS;
        let mut now = 2 * MS;
        while now < 2 * MS + minute {
            now += 8 * MS;
            window.observe(now, 20 * US);
        }
        let after_a_minute = window.window_ns();
        assert!(
            (695 * US..=705 * US).contains(&after_a_minute),
            "400 + 600/2 µs, got {after_a_minute} ns"
        );
        while now < 2 * MS + 10 * minute {
            now += 8 * MS;
            window.observe(now, 20 * US);
        }
        assert!(window.window_ns() < 401 * US, "back at the floor");
        assert_eq!(window.widest_ns(), 1000 * US);
    }

    #[test]
    fn a_stall_widens_it_only_to_the_ceiling() {
        let mut window = SpinWindow::new(400 * US, 2 * MS);
        window.observe(MS, 50 * MS);
        assert_eq!(window.window_ns(), 2 * MS);
        assert_eq!(window.latest_wake_ns(), 50 * MS);
    }

    #[test]
    fn a_ceiling_at_the_floor_keeps_it_fixed() {
        let mut window = SpinWindow::new(400 * US, 0);
        window.observe(MS, 5 * MS);
        assert_eq!(window.window_ns(), 400 * US);
        let mut none = SpinWindow::new(0, 0);
        none.observe(MS, 5 * MS);
        assert_eq!(none.window_ns(), 0, "spin_us 0 still sleeps only");
    }
}

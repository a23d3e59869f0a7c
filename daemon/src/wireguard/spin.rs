//! When a datapath thread busy-polls instead of sleeping (pure policy, no IO).
//!
//! A packet through the tunnel costs a thread wake-up at each end of each
//! direction: four per request/response round trip, on top of what a plain
//! veth hop costs. A woken thread, and on a virtual machine a halted vCPU, takes
//! tens to hundreds of microseconds to run again. After doing work a thread
//! therefore keeps polling its TUN queue and UDP socket without blocking for a
//! short `window`: the reply to what it just forwarded usually comes back
//! within it, and is then handled with no wake-up at all.
//!
//! Bounds: polling starts only after work (an idle datapath sleeps in `poll`),
//! lasts at most `window` after the last packet, uses at most `budget` of each
//! `PERIOD` (after that it blocks in `poll` until the next packet), and only
//! one thread of the process polls at a time (`io` holds a token), so a steady
//! trickle of packets cannot turn it into a spinning core, and stops as soon as
//! yielding the CPU shows that other threads want it (a yield that took longer
//! than `CONTENDED`): polling only ever uses a CPU nobody else needs.
//!
//! What it does not do: the polling itself (see `io`), or any scheduling
//! beyond yielding the CPU between polls.

use std::time::{Duration, Instant};

/// The accounting period of the spin budget.
pub const PERIOD: Duration = Duration::from_millis(100);
/// A yield that returns later than this means other threads were waiting for
/// the CPU: polling stops until the next packet.
pub const CONTENDED: Duration = Duration::from_micros(20);
/// Default polling window after the last packet.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(100);
/// Default share of each period the polling thread may spend polling (10 %;
/// only one thread of the process polls at a time, see `io`).
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(10);

/// Busy-poll settings of a datapath thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinConfig {
    /// How long to keep polling after the last packet (zero: never).
    pub window: Duration,
    /// At most this much polling per [`PERIOD`].
    pub budget: Duration,
}

impl Default for SpinConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            budget: DEFAULT_BUDGET,
        }
    }
}

impl SpinConfig {
    /// From `VEIL_WG_BUSY_POLL_US` (window in µs, `0` turns polling off);
    /// the default when unset, unparsable values are refused by name.
    pub fn from_env_value(v: Option<&str>) -> Result<Self, String> {
        let Some(v) = v else {
            return Ok(Self::default());
        };
        let us: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("VEIL_WG_BUSY_POLL_US={v:?}: not a number of microseconds"))?;
        if us > 10_000 {
            return Err(format!(
                "VEIL_WG_BUSY_POLL_US={us}: more than 10000 µs would make the datapath spin"
            ));
        }
        Ok(Self {
            window: Duration::from_micros(us),
            ..Self::default()
        })
    }
}

/// The per-thread state of the policy.
#[derive(Debug)]
pub struct Spinner {
    cfg: SpinConfig,
    last_work: Option<Instant>,
    period_start: Instant,
    spent: Duration,
    spinning_since: Option<Instant>,
}

impl Spinner {
    /// A spinner that has seen no work yet.
    pub fn new(cfg: SpinConfig, now: Instant) -> Self {
        Self {
            cfg,
            last_work: None,
            period_start: now,
            spent: Duration::ZERO,
            spinning_since: None,
        }
    }

    /// Work was done at `now`.
    pub fn worked(&mut self, now: Instant) {
        self.account(now);
        self.last_work = Some(now);
    }

    /// Nothing was ready at `now`: whether to poll again at once (`true`) or
    /// to block.
    pub fn keep_polling(&mut self, now: Instant) -> bool {
        self.account(now);
        let within = self
            .last_work
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.window);
        if within && self.spent < self.cfg.budget {
            self.spinning_since.get_or_insert(now);
            true
        } else {
            self.spinning_since = None;
            false
        }
    }

    /// A yield between two polls took `took`: if other threads ran meanwhile,
    /// the window ends (the thread blocks until the next packet).
    pub fn yielded(&mut self, took: Duration) {
        if took > CONTENDED {
            self.last_work = None;
        }
    }

    /// Polling time used in the current period.
    pub fn spent(&self) -> Duration {
        self.spent
    }

    fn account(&mut self, now: Instant) {
        if let Some(s) = self.spinning_since.take() {
            self.spent += now.saturating_duration_since(s);
        }
        if now.saturating_duration_since(self.period_start) >= PERIOD {
            self.period_start = now;
            self.spent = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window_us: u64, budget_us: u64) -> SpinConfig {
        SpinConfig {
            window: Duration::from_micros(window_us),
            budget: Duration::from_micros(budget_us),
        }
    }

    #[test]
    fn an_idle_thread_never_spins() {
        let t0 = Instant::now();
        let mut s = Spinner::new(cfg(100, 25_000), t0);
        assert!(!s.keep_polling(t0));
        assert!(!s.keep_polling(t0 + Duration::from_micros(10)));
    }

    #[test]
    fn polling_lasts_the_window_after_the_last_packet() {
        let t0 = Instant::now();
        let us = |n| t0 + Duration::from_micros(n);
        let mut s = Spinner::new(cfg(100, 25_000), t0);
        s.worked(us(0));
        assert!(s.keep_polling(us(10)));
        assert!(s.keep_polling(us(99)));
        assert!(!s.keep_polling(us(100)));
        // New work restarts the window.
        s.worked(us(150));
        assert!(s.keep_polling(us(200)));
    }

    #[test]
    fn a_zero_window_turns_polling_off() {
        let t0 = Instant::now();
        let mut s = Spinner::new(cfg(0, 25_000), t0);
        s.worked(t0);
        assert!(!s.keep_polling(t0));
    }

    #[test]
    fn the_budget_caps_polling_per_period_and_refills() {
        let t0 = Instant::now();
        let us = |n| t0 + Duration::from_micros(n);
        let mut s = Spinner::new(cfg(100, 150), t0);
        // Two exchanges, each polling 90 µs: the second exhausts the budget.
        s.worked(us(0));
        assert!(s.keep_polling(us(0)));
        s.worked(us(90));
        assert!(s.keep_polling(us(90)));
        s.worked(us(180));
        assert_eq!(s.spent(), Duration::from_micros(180));
        assert!(!s.keep_polling(us(181)), "budget used up");
        // Next period: polling again.
        let later = t0 + PERIOD + Duration::from_micros(200);
        s.worked(later);
        assert!(s.keep_polling(later + Duration::from_micros(1)));
    }

    #[test]
    fn a_contended_cpu_ends_the_window() {
        let t0 = Instant::now();
        let us = |n| t0 + Duration::from_micros(n);
        let mut s = Spinner::new(cfg(100, 25_000), t0);
        s.worked(us(0));
        assert!(s.keep_polling(us(1)));
        s.yielded(Duration::from_micros(2));
        assert!(s.keep_polling(us(3)), "a quick yield: nobody else waited");
        s.yielded(Duration::from_micros(500));
        assert!(!s.keep_polling(us(4)), "another thread ran: stop polling");
        s.worked(us(10));
        assert!(s.keep_polling(us(11)), "the next packet opens a new window");
    }

    #[test]
    fn env_value_parses_or_is_refused_by_name() {
        assert_eq!(SpinConfig::from_env_value(None), Ok(SpinConfig::default()));
        assert_eq!(
            SpinConfig::from_env_value(Some("0")).unwrap().window,
            Duration::ZERO
        );
        assert_eq!(
            SpinConfig::from_env_value(Some(" 250 ")).unwrap().window,
            Duration::from_micros(250)
        );
        let e = SpinConfig::from_env_value(Some("fast")).unwrap_err();
        assert!(e.contains("VEIL_WG_BUSY_POLL_US"), "{e}");
        assert!(SpinConfig::from_env_value(Some("50000")).is_err());
    }
}

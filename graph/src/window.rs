//! Sliding-window rates: a ring of fixed-width time buckets. A window of
//! `N` buckets of `W` ms covers the current bucket and the `N - 1` before it,
//! so the rate at `now` is the sum over those buckets divided by `N × W`
//! (the current bucket is partial: the rate lags by at most one bucket).

use serde::{Deserialize, Serialize};

use crate::record::Millis;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Bucket number (`time / width`); only buckets inside the window count.
    index: u64,
    connections: u32,
    bytes: u64,
}

/// A sliding window of `N` buckets of `WIDTH_MS` milliseconds.
#[derive(Debug, Clone)]
pub struct Window<const N: usize, const WIDTH_MS: u64> {
    buckets: [Bucket; N],
}

impl<const N: usize, const WIDTH_MS: u64> Default for Window<N, WIDTH_MS> {
    fn default() -> Self {
        Window {
            buckets: [Bucket::default(); N],
        }
    }
}

/// Rates over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// New connections per second.
    pub connections_per_second: f64,
    /// Bytes (both ways) per second.
    pub bytes_per_second: f64,
}

impl<const N: usize, const WIDTH_MS: u64> Window<N, WIDTH_MS> {
    /// The window's length in milliseconds.
    pub const SPAN_MS: u64 = N as u64 * WIDTH_MS;

    /// Adds `connections` and `bytes` at time `now`.
    pub fn add(&mut self, now: Millis, connections: u32, bytes: u64) {
        let index = now / WIDTH_MS;
        // Bucket number 0 is never used so that a zeroed bucket is always stale.
        let index = index + 1;
        let b = &mut self.buckets[(index % N as u64) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                connections: 0,
                bytes: 0,
            };
        }
        b.connections = b.connections.saturating_add(connections);
        b.bytes = b.bytes.saturating_add(bytes);
    }

    /// Totals over the window ending at `now`.
    pub fn totals(&self, now: Millis) -> (u64, u64) {
        let current = now / WIDTH_MS + 1;
        let oldest = current.saturating_sub(N as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.index >= oldest && b.index <= current)
            .fold((0, 0), |(c, by), b| {
                (c + u64::from(b.connections), by.saturating_add(b.bytes))
            })
    }

    /// The rates over the window ending at `now`.
    pub fn rate(&self, now: Millis) -> Rate {
        let (c, b) = self.totals(now);
        let secs = Self::SPAN_MS as f64 / 1000.0;
        Rate {
            connections_per_second: c as f64 / secs,
            bytes_per_second: b as f64 / secs,
        }
    }
}

/// The last minute, in 6 buckets of 10 s.
pub type OneMinute = Window<6, 10_000>;
/// The last 15 minutes, in 15 buckets of 1 min.
pub type FifteenMinutes = Window<15, 60_000>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_window_and_forget_older_buckets() {
        let mut w = OneMinute::default();
        w.add(0, 6, 600);
        w.add(30_000, 6, 600);
        assert_eq!(w.totals(30_000), (12, 1200));
        let r = w.rate(30_000);
        assert!((r.connections_per_second - 0.2).abs() < 1e-9);
        // At 65 s the bucket of t=0 has left the window.
        assert_eq!(w.totals(65_000), (6, 600));
        assert_eq!(w.totals(200_000), (0, 0));
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let mut w = OneMinute::default();
        w.add(5_000, 1, 10);
        w.add(65_000, 2, 20); // same slot, 6 buckets later
        assert_eq!(w.totals(65_000), (2, 20));
    }

    #[test]
    fn fifteen_minutes_keep_a_quarter_hour() {
        let mut w = FifteenMinutes::default();
        w.add(0, 1, 1);
        w.add(14 * 60_000, 1, 1);
        assert_eq!(w.totals(14 * 60_000).0, 2);
        assert_eq!(w.totals(15 * 60_000).0, 1);
    }

    proptest::proptest! {
        #[test]
        fn totals_equal_the_events_inside_the_window(events in proptest::collection::vec((0u64..2_000_000, 0u32..100, 0u64..10_000), 1..60)) {
            let mut w = OneMinute::default();
            let mut sorted = events.clone();
            sorted.sort_by_key(|e| e.0);
            for (t, c, b) in &sorted {
                w.add(*t, *c, *b);
            }
            let now = sorted.last().map(|e| e.0).unwrap_or(0);
            let current = now / 10_000;
            let expect = sorted
                .iter()
                .filter(|e| e.0 / 10_000 + 6 > current)
                .fold((0u64, 0u64), |(c, b), e| (c + u64::from(e.1), b + e.2));
            proptest::prop_assert_eq!(w.totals(now), expect);
        }
    }
}

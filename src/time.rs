//! Time as the core sees it: an opaque monotonic instant handed in by whoever drives the node.
//!
//! The core never reads a clock. The daemon converts its one `std::time::Instant` reading into an
//! [`Instant`]; the simulator derives one from simulated time and the host's drifting clock. Two
//! instants from different hosts are never compared: every duration the core measures is between
//! two instants of its own host.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Microseconds since an arbitrary origin chosen by the driver (process start, say).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the far future instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(micros(d)))
    }

    /// `self - d`, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(micros(d)))
    }
}

/// Microseconds in `d`, saturating (a duration of 584 000 years is "forever" here).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Milliseconds in `d`, saturating to `u32` (49 days), for evidence fields on the wire.
pub fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Scales `d` by `(1 + ppm/1e6)`, rounding up: converts a duration measured on one clock into an
/// upper bound on another clock whose rate differs by at most `ppm` parts per million.
pub fn stretch(d: Duration, ppm: u32) -> Duration {
    let us = u128::from(micros(d));
    let scaled = us * (1_000_000 + u128::from(ppm)) / 1_000_000 + 1;
    Duration::from_micros(u64::try_from(scaled).unwrap_or(u64::MAX))
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_micros(5);
        assert_eq!(t - Instant::from_micros(9), Duration::ZERO);
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Instant::ZERO);
        assert_eq!(
            Instant::from_micros(u64::MAX - 1) + Duration::from_secs(1),
            Instant::from_micros(u64::MAX)
        );
    }

    #[test]
    fn stretch_rounds_up() {
        assert_eq!(
            stretch(Duration::from_secs(10), 1000),
            Duration::from_micros(10_010_001)
        );
        assert!(stretch(Duration::ZERO, 0) > Duration::ZERO);
    }
}

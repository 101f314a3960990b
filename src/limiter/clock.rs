//! The one place sluice reads time: a `Clock` trait with a system and a manual clock.
//!
//! Limits are aligned to the unix epoch (every replica agrees on a fixed window's
//! reset instant), so time is unix nanoseconds. The system clock samples the wall clock
//! once at start and then advances monotonically, so a wall-clock step never moves a
//! window backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::time::{clock_gettime, ClockId};

/// Unix time in nanoseconds. `u64` nanoseconds last until the year 2554.
pub type Nanos = u64;

/// Nanoseconds per second.
pub const SECOND: Nanos = 1_000_000_000;
/// Nanoseconds per millisecond.
pub const MILLISECOND: Nanos = 1_000_000;

/// Source of the current time. Requests read it once and pass the value down.
pub trait Clock: Send + Sync + 'static {
    /// Current unix time in nanoseconds.
    fn now(&self) -> Nanos;
}

/// Wall clock at start plus a monotonic offset.
#[derive(Debug)]
pub struct SystemClock {
    /// Unix time minus the monotonic clock, both at start.
    offset: Nanos,
}

impl SystemClock {
    /// Samples the wall clock now.
    pub fn new() -> Self {
        let unix_at_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as Nanos)
            .unwrap_or(0);
        Self {
            offset: unix_at_start.wrapping_sub(monotonic()),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, read straight from the vDSO: a request reads the clock
/// three times, and `Instant::elapsed` (with its checked `Duration` arithmetic) cost twice
/// as many instructions as the read itself.
fn monotonic() -> Nanos {
    let now = clock_gettime(ClockId::Monotonic);
    now.tv_sec as Nanos * SECOND + now.tv_nsec as Nanos
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        self.offset.wrapping_add(monotonic())
    }
}

/// A clock that moves only when told to: for tests of window edges and block expiry.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `now`.
    pub fn at(now: Nanos) -> Self {
        Self(AtomicU64::new(now))
    }

    /// Moves the clock forward by `by` nanoseconds.
    pub fn advance(&self, by: Nanos) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `now`.
    pub fn set(&self, now: Nanos) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_unix_time_and_monotonic() {
        let clock = SystemClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(
            a.abs_diff(wall.as_nanos() as Nanos) < SECOND,
            "{a} is not unix time"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(5);
        assert_eq!(clock.now(), 5);
        clock.advance(10);
        assert_eq!(clock.now(), 15);
        clock.set(100);
        assert_eq!(clock.now(), 100);
    }
}

//! Counting windows aligned to the unix epoch: fixed and sliding.
//!
//! Fixed: the count of the window `now / period`; every replica agrees on its reset.
//! Sliding: the weighted two-window counter. The previous window's count is weighted by
//! the share of it still inside the trailing period, assuming its requests were evenly
//! spread. Error bound: every aligned window admits at most `limit`; any interval of one
//! period admits fewer than `2 × limit` (reached only when the previous window's
//! requests all came at its very end); over `k` periods at most `(k + 1) × limit`.
//! Pure functions over a packed `u64`; the store decides where it lives.

use super::clock::Nanos;
use super::{Outcome, Quota, Step};

/// Largest limit a sliding window can count (20 bits per window in the packed state).
pub const SLIDING_MAX_LIMIT: u32 = (1 << 20) - 1;

const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_MASK: u64 = (1 << 24) - 1;

/// Fixed window: state is `window index (32 bits) << 32 | count`.
pub mod fixed {
    use super::*;

    /// Tries to count `cost` in the current window.
    pub fn acquire(state: u64, now: Nanos, quota: &Quota, cost: u32) -> Step {
        let (index, count) = current(state, now, quota);
        let reset = (index + 1) * quota.period();
        let limit = quota.limit();
        let after = count + cost;
        if after > limit {
            return Step {
                outcome: Outcome {
                    allowed: false,
                    limit,
                    remaining: limit.saturating_sub(count),
                    reset,
                    retry_after: reset - now,
                },
                state: None,
                idle_at: if count == 0 { now } else { reset },
            };
        }
        Step {
            outcome: Outcome {
                allowed: true,
                limit,
                remaining: limit - after,
                reset,
                retry_after: 0,
            },
            state: Some(pack(index, after)),
            idle_at: reset,
        }
    }

    /// What `acquire` would answer, without counting.
    pub fn peek(state: u64, now: Nanos, quota: &Quota, cost: u32) -> Outcome {
        let mut outcome = acquire(state, now, quota, cost).outcome;
        let (_, count) = current(state, now, quota);
        outcome.remaining = quota.limit().saturating_sub(count);
        outcome
    }

    /// Takes back `cost` counted by an earlier `acquire` in the same window.
    pub fn refund(state: u64, now: Nanos, quota: &Quota, cost: u32) -> u64 {
        let (index, count) = current(state, now, quota);
        pack(index, count.saturating_sub(cost))
    }

    fn current(state: u64, now: Nanos, quota: &Quota) -> (u64, u32) {
        let index = now / quota.period();
        let same = (state >> 32) == (index & u64::from(u32::MAX));
        (index, if same { state as u32 } else { 0 })
    }

    fn pack(index: u64, count: u32) -> u64 {
        ((index & u64::from(u32::MAX)) << 32) | u64::from(count)
    }
}

/// Sliding window: state is `index (24 bits) << 40 | previous (20) << 20 | current (20)`.
pub mod sliding {
    use super::*;

    /// Tries to count `cost` against the weighted two-window estimate.
    pub fn acquire(state: u64, now: Nanos, quota: &Quota, cost: u32) -> Step {
        let view = View::at(state, now, quota);
        if view.fits(cost) {
            let cur = view.cur + cost;
            let after = View { cur, ..view };
            return Step {
                outcome: after.outcome(true, 0),
                state: Some(after.pack()),
                idle_at: after.idle_at(),
            };
        }
        Step {
            outcome: view.outcome(false, view.retry_after(cost)),
            state: None,
            idle_at: view.idle_at(),
        }
    }

    /// What `acquire` would answer, without counting.
    pub fn peek(state: u64, now: Nanos, quota: &Quota, cost: u32) -> Outcome {
        let view = View::at(state, now, quota);
        let retry = if view.fits(cost) {
            0
        } else {
            view.retry_after(cost)
        };
        view.outcome(retry == 0, retry)
    }

    /// Takes back `cost` counted by an earlier `acquire` in the same window.
    pub fn refund(state: u64, now: Nanos, quota: &Quota, cost: u32) -> u64 {
        let view = View::at(state, now, quota);
        View {
            cur: view.cur.saturating_sub(cost),
            ..view
        }
        .pack()
    }

    /// The counter as seen at one instant.
    struct View {
        index: u64,
        elapsed: u64,
        period: u64,
        limit: u32,
        prev: u32,
        cur: u32,
    }

    impl View {
        fn at(state: u64, now: Nanos, quota: &Quota) -> Self {
            let period = quota.period();
            let index = now / period;
            let stored = state >> 40;
            let (s_prev, s_cur) = (
                ((state >> COUNT_BITS) & COUNT_MASK) as u32,
                (state & COUNT_MASK) as u32,
            );
            let (prev, cur) = if state == 0 {
                (0, 0)
            } else if stored == index & INDEX_MASK {
                (s_prev, s_cur)
            } else if stored == index.wrapping_sub(1) & INDEX_MASK {
                (s_cur, 0)
            } else {
                (0, 0)
            };
            Self {
                index,
                elapsed: now - index * period,
                period,
                limit: quota.limit(),
                prev,
                cur,
            }
        }

        /// Units used, scaled by the period so the weighting stays in integers.
        fn used_scaled(&self) -> u128 {
            u128::from(self.prev) * u128::from(self.period - self.elapsed)
                + u128::from(self.cur) * u128::from(self.period)
        }

        fn capacity_scaled(&self) -> u128 {
            u128::from(self.limit) * u128::from(self.period)
        }

        fn fits(&self, cost: u32) -> bool {
            self.used_scaled() + u128::from(cost) * u128::from(self.period)
                <= self.capacity_scaled()
        }

        fn remaining(&self) -> u32 {
            (self.capacity_scaled().saturating_sub(self.used_scaled()) / u128::from(self.period))
                as u32
        }

        /// When the estimate is back to zero: the quota is whole again.
        fn idle_at(&self) -> Nanos {
            let start = self.index * self.period;
            if self.cur > 0 {
                start + 2 * self.period
            } else if self.prev > 0 {
                start + self.period
            } else {
                start + self.elapsed
            }
        }

        /// The earliest wait after which `cost` fits, given no other traffic.
        fn retry_after(&self, cost: u32) -> Nanos {
            let period = u128::from(self.period);
            let limit = u128::from(self.limit);
            let needed = u128::from(self.cur) + u128::from(cost);
            if needed <= limit && self.prev > 0 {
                // Later in this window, once enough of the previous one has slid out.
                let at = period - (limit - needed) * period / u128::from(self.prev);
                if at < period {
                    return (at as u64).saturating_sub(self.elapsed).max(1);
                }
            }
            // In the next window the current count becomes the weighted one.
            let until_next = self.period - self.elapsed;
            if self.cur == 0 {
                return until_next;
            }
            let free = limit.saturating_sub(u128::from(cost));
            let at = period - free * period / u128::from(self.cur);
            until_next + at as u64
        }

        fn outcome(&self, allowed: bool, retry_after: Nanos) -> Outcome {
            Outcome {
                allowed,
                limit: self.limit,
                remaining: self.remaining(),
                reset: self.idle_at(),
                retry_after,
            }
        }

        fn pack(&self) -> u64 {
            ((self.index & INDEX_MASK) << 40)
                | (u64::from(self.prev) << COUNT_BITS)
                | u64::from(self.cur)
        }
    }
}

#[cfg(test)]
mod tests;

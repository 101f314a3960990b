//! The request path's duration histograms: fixed buckets of atomic counts, rendered into
//! `/metrics` beside the exporter's own output.
//!
//! Every forwarded request records three durations. Through the exporter each record took
//! a clock read of its own (its histograms keep a timestamp per observation for summaries
//! sluice does not use), a push onto an epoch-managed list, and a second pass in the
//! upkeep task to fold the list into buckets: ~800 instructions per request, a thirtieth
//! of the allow path (BENCHMARKS.md). Here a record is a bucket search and two relaxed
//! atomic adds on a cache line of the recording thread's own stripe.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::{BUCKETS, LIMITER_DURATION, REQUEST_DURATION, UPSTREAM_DURATION};

/// Request head to response head.
pub static REQUEST: Durations = Durations::new(REQUEST_DURATION, "Request head to response head.");
/// Upstream time to response headers.
pub static UPSTREAM: Durations =
    Durations::new(UPSTREAM_DURATION, "Upstream time to response headers.");
/// One limiter decision.
pub static LIMITER: Durations = Durations::new(LIMITER_DURATION, "Time for one limiter decision.");

/// Every histogram here, in the order they are rendered.
const ALL: [&Durations; 3] = [&REQUEST, &UPSTREAM, &LIMITER];

/// [`BUCKETS`] in nanoseconds.
const BOUNDS: [u64; BUCKETS.len()] = {
    let mut bounds = [0; BUCKETS.len()];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = (BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    bounds
};

/// Threads record into different stripes, so that two runtime threads do not pass one
/// cache line back and forth at every request.
const STRIPES: usize = 4;

/// One histogram.
pub struct Durations {
    name: &'static str,
    help: &'static str,
    stripes: [Stripe; STRIPES],
}

/// Counts per bucket (the last one: above every bound) and the sum, of some threads.
#[repr(align(64))]
struct Stripe {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Durations {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            stripes: [const {
                Stripe {
                    buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
                    sum_nanos: AtomicU64::new(0),
                }
            }; STRIPES],
        }
    }

    /// Counts one duration.
    pub fn record(&self, nanos: u64) {
        let stripe = &self.stripes[stripe()];
        // The first bucket whose bound is at or above the value: Prometheus's `le`.
        let bucket = BOUNDS.partition_point(|&bound| bound < nanos);
        stripe.buckets[bucket].fetch_add(1, Relaxed);
        stripe.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Appends the histogram in the Prometheus text format.
    fn render(&self, out: &mut String) {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum_nanos = 0u64;
        for stripe in &self.stripes {
            for (count, bucket) in counts.iter_mut().zip(&stripe.buckets) {
                *count += bucket.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(stripe.sum_nanos.load(Relaxed));
        }
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", sum_nanos as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
        out.push('\n');
    }
}

/// Appends every histogram here to `out`, a rendering of the exporter's.
pub fn render(out: &mut String) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    for durations in ALL {
        durations.render(out);
    }
}

/// This thread's stripe.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| {
        if stripe.get() == usize::MAX {
            stripe.set(NEXT.fetch_add(1, Relaxed) % STRIPES);
        }
        stripe.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(durations: &Durations) -> String {
        let mut out = String::new();
        durations.render(&mut out);
        out
    }

    fn assert_line(text: &str, line: &str) {
        assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
    }

    #[test]
    fn a_duration_counts_in_the_first_bucket_at_or_above_it() {
        let durations = Durations::new("t_seconds", "Test.");
        durations.record(10_000); // exactly 10 µs: le="0.00001"
        durations.record(10_001); // just above: le="0.00005"
        durations.record(0);
        durations.record(31_000_000_000); // above every bound: +Inf only
        let text = rendered(&durations);
        assert!(text.starts_with("# HELP t_seconds Test.\n# TYPE t_seconds histogram\n"));
        assert_line(&text, "t_seconds_bucket{le=\"0.00001\"} 2");
        assert_line(&text, "t_seconds_bucket{le=\"0.00005\"} 3");
        assert_line(&text, "t_seconds_bucket{le=\"30\"} 3");
        assert_line(&text, "t_seconds_bucket{le=\"+Inf\"} 4");
        assert_line(&text, "t_seconds_count 4");
        assert_line(&text, "t_seconds_sum 31.000020001");
    }

    #[test]
    fn every_stripe_is_counted() {
        let durations = Durations::new("t_seconds", "Test.");
        std::thread::scope(|scope| {
            for _ in 0..2 * STRIPES {
                scope.spawn(|| durations.record(2_000_000));
            }
        });
        let text = rendered(&durations);
        assert_line(&text, "t_seconds_bucket{le=\"0.001\"} 0");
        assert_line(&text, "t_seconds_bucket{le=\"0.005\"} 8");
        assert_line(&text, "t_seconds_count 8");
    }

    #[test]
    fn bounds_are_the_configured_buckets_in_nanoseconds() {
        assert_eq!(BOUNDS[0], 10_000);
        assert_eq!(BOUNDS[4], 1_000_000);
        assert_eq!(BOUNDS[BOUNDS.len() - 1], 30_000_000_000);
        assert!(BOUNDS.windows(2).all(|w| w[0] < w[1]));
    }
}

//! The request path's duration histograms: fixed buckets of atomic counts, rendered into
//! `/metrics` beside the exporter's own output.
//!
//! Every forwarded request records three durations. Through the exporter each record took
//! a clock read of its own (its histograms keep a timestamp per observation for summaries
//! sluice does not use), a push onto an epoch-managed list, and a second pass in the
//! upkeep task to fold the list into buckets: ~800 instructions per request, a thirtieth
//! of the allow path (BENCHMARKS.md). Here a record is a bucket search and two relaxed
//! atomic adds on a cache line of the recording thread's own stripe.
//!
//! The three come as a [`Set`] per label set: one unlabelled set unless
//! `metrics.histogram_labels` asks for a `route` and/or `plan` breakdown. Sets live in a
//! process-wide registry, so a reload keeps their counts, as the exporter keeps counters'.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::{BUCKETS, LIMITER_DURATION, REQUEST_DURATION, UPSTREAM_DURATION};

/// The request path's three histograms for one label set.
pub struct Set {
    /// Request head to response head.
    pub request: Durations,
    /// Upstream time to response headers.
    pub upstream: Durations,
    /// One limiter decision.
    pub limiter: Durations,
}

/// What a [`Set`] is labelled with; `None` leaves the label out.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    /// The `route` label.
    pub route: Option<Arc<str>>,
    /// The `plan` label.
    pub plan: Option<Arc<str>>,
}

/// Every set registered in this process, in label order (the order they are rendered).
static SETS: Mutex<BTreeMap<Labels, Arc<Set>>> = Mutex::new(BTreeMap::new());

/// The set with `labels`, registered (at zero) on first use.
pub fn set(labels: Labels) -> Arc<Set> {
    let mut sets = SETS.lock().unwrap_or_else(|e| e.into_inner());
    sets.entry(labels)
        .or_insert_with(|| {
            Arc::new(Set {
                request: Durations::new(),
                upstream: Durations::new(),
                limiter: Durations::new(),
            })
        })
        .clone()
}

/// Which histogram of a set.
type Member = fn(&Set) -> &Durations;

/// The three histograms: name, help, and which member of a set.
const HISTOGRAMS: [(&str, &str, Member); 3] = [
    (REQUEST_DURATION, "Request head to response head.", |set| {
        &set.request
    }),
    (
        UPSTREAM_DURATION,
        "Upstream time to response headers.",
        |set| &set.upstream,
    ),
    (LIMITER_DURATION, "Time for one limiter decision.", |set| {
        &set.limiter
    }),
];

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

/// One histogram's counts.
pub struct Durations {
    stripes: [Stripe; STRIPES],
}

/// Counts per bucket (the last one: above every bound) and the sum, of some threads.
#[repr(align(64))]
struct Stripe {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Durations {
    const fn new() -> Self {
        Self {
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

    /// Appends the histogram's samples, labelled `labels` (`name="value",` each), in the
    /// Prometheus text format.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum_nanos = 0u64;
        for stripe in &self.stripes {
            for (count, bucket) in counts.iter_mut().zip(&stripe.buckets) {
                *count += bucket.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(stripe.sum_nanos.load(Relaxed));
        }
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.trim_end_matches(','))
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", sum_nanos as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }
}

/// Appends every histogram here, each with every registered label set, to `out`.
pub fn render(out: &mut String) {
    let sets: Vec<(String, Arc<Set>)> = SETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(labels, set)| (labels.render(), set.clone()))
        .collect();
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    for (name, help, member) in HISTOGRAMS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, set) in &sets {
            member(set).render(out, name, labels);
        }
        out.push('\n');
    }
}

impl Labels {
    /// `route="…",plan="…",` with the values escaped as the text format wants.
    fn render(&self) -> String {
        let mut out = String::new();
        for (name, value) in [("route", &self.route), ("plan", &self.plan)] {
            if let Some(value) = value {
                let _ = write!(out, "{name}=\"{}\",", super::escape_label(value));
            }
        }
        out
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

    fn rendered(durations: &Durations, labels: &str) -> String {
        let mut out = String::new();
        durations.render(&mut out, "t_seconds", labels);
        out
    }

    fn assert_line(text: &str, line: &str) {
        assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
    }

    #[test]
    fn a_duration_counts_in_the_first_bucket_at_or_above_it() {
        let durations = Durations::new();
        durations.record(10_000); // exactly 10 µs: le="0.00001"
        durations.record(10_001); // just above: le="0.00005"
        durations.record(0);
        durations.record(31_000_000_000); // above every bound: +Inf only
        let text = rendered(&durations, "");
        assert_line(&text, "t_seconds_bucket{le=\"0.00001\"} 2");
        assert_line(&text, "t_seconds_bucket{le=\"0.00005\"} 3");
        assert_line(&text, "t_seconds_bucket{le=\"30\"} 3");
        assert_line(&text, "t_seconds_bucket{le=\"+Inf\"} 4");
        assert_line(&text, "t_seconds_count 4");
        assert_line(&text, "t_seconds_sum 31.000020001");
    }

    #[test]
    fn every_stripe_is_counted() {
        let durations = Durations::new();
        std::thread::scope(|scope| {
            for _ in 0..2 * STRIPES {
                scope.spawn(|| durations.record(2_000_000));
            }
        });
        let text = rendered(&durations, "");
        assert_line(&text, "t_seconds_bucket{le=\"0.001\"} 0");
        assert_line(&text, "t_seconds_bucket{le=\"0.005\"} 8");
        assert_line(&text, "t_seconds_count 8");
    }

    #[test]
    fn labels_go_before_le_and_on_the_sum_and_count() {
        let durations = Durations::new();
        durations.record(1_000_000);
        let labels = Labels {
            route: Some("send".into()),
            plan: Some("p\"1".into()),
        };
        let text = rendered(&durations, &labels.render());
        assert_line(
            &text,
            "t_seconds_bucket{route=\"send\",plan=\"p\\\"1\",le=\"0.001\"} 1",
        );
        assert_line(&text, "t_seconds_sum{route=\"send\",plan=\"p\\\"1\"} 0.001");
        assert_line(&text, "t_seconds_count{route=\"send\",plan=\"p\\\"1\"} 1");
    }

    #[test]
    fn bounds_are_the_configured_buckets_in_nanoseconds() {
        assert_eq!(BOUNDS[0], 10_000);
        assert_eq!(BOUNDS[4], 1_000_000);
        assert_eq!(BOUNDS[BOUNDS.len() - 1], 30_000_000_000);
        assert!(BOUNDS.windows(2).all(|w| w[0] < w[1]));
    }
}

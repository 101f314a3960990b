//! The request series of one compiled policy: `sluice_requests_total` and
//! `sluice_near_limit_total` by route, plan and decision, and the request-path histograms
//! by the labels `metrics.histogram_labels` asks for.
//!
//! Only the series the policy can produce are registered up front (at zero, so a rate has a
//! first sample to start from): a plan denied access is only ever `denied`, an exempt route
//! never `limited`, `shadow_limited` needs a shadow limit, and a plan no caller can reach
//! has no series at all. Recording is an index and an atomic add; a combination judged
//! impossible here is still counted if it happens, registered then.

use std::fmt;
use std::sync::{Arc, OnceLock};

use metrics::Counter;

use super::durations::{self, Labels, Set};
use super::{Verdict, NEAR_LIMIT, NO_PLAN, REQUESTS, UNMATCHED};
use crate::identity::{Fallback, KeySource};
use crate::policy::Policy;

/// Which labels the request-path histograms carry (`metrics.histogram_labels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramLabels {
    /// `route`.
    pub route: bool,
    /// `plan`.
    pub plan: bool,
}

/// What besides the policy decides which verdicts a request can get.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    /// Per route, in route order: whether it takes idempotency keys.
    pub idempotent: &'a [bool],
    /// The store answers 503 when it fails (`on_error: deny`).
    pub fail_closed: bool,
    /// Labels on the request-path histograms.
    pub histogram_labels: HistogramLabels,
}

/// A set of verdicts, one bit each.
type Verdicts = u16;

const fn bit(verdict: Verdict) -> Verdicts {
    1 << verdict as u16
}

/// Request series for one compiled policy.
pub struct PolicyMetrics {
    /// Route labels, then `unmatched`.
    routes: Vec<Arc<str>>,
    /// Plan labels, then `none`.
    plans: Vec<Arc<str>>,
    /// Route × plan × verdict.
    requests: Vec<OnceLock<Counter>>,
    /// Route × plan.
    near_limit: Vec<OnceLock<Counter>>,
    histogram_labels: HistogramLabels,
    /// The one set when the histograms carry no labels (the default): no lookup per record.
    unlabelled: Option<Arc<Set>>,
    /// One per label set `histogram_labels` makes, otherwise.
    durations: Vec<OnceLock<Arc<Set>>>,
}

impl fmt::Debug for PolicyMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyMetrics")
            .field("histogram_labels", &self.histogram_labels)
            .finish_non_exhaustive()
    }
}

impl PolicyMetrics {
    /// Registers, at zero, every series `policy` can produce.
    pub fn new(policy: &Policy, settings: Settings<'_>) -> Self {
        let routes: Vec<Arc<str>> = policy
            .routes
            .iter()
            .map(|r| r.name.clone())
            .chain(std::iter::once(Arc::from(UNMATCHED)))
            .collect();
        let plans: Vec<Arc<str>> = policy
            .plan_names
            .iter()
            .cloned()
            .chain(std::iter::once(Arc::from(NO_PLAN)))
            .collect();
        let slots = routes.len() * plans.len();
        let labels = settings.histogram_labels;
        let histogram_slots = match (labels.route, labels.plan) {
            (false, false) => 0,
            (true, false) => routes.len(),
            (false, true) => plans.len(),
            (true, true) => slots,
        };
        let metrics = Self {
            routes,
            plans,
            requests: (0..slots * Verdict::ALL.len())
                .map(|_| OnceLock::new())
                .collect(),
            near_limit: (0..slots).map(|_| OnceLock::new()).collect(),
            histogram_labels: labels,
            unlabelled: (labels == HistogramLabels::default())
                .then(|| durations::set(Labels::default())),
            durations: (0..histogram_slots).map(|_| OnceLock::new()).collect(),
        };
        let (verdicts, near_limit) = possible(policy, &settings);
        for (slot, (&verdicts, &near_limit)) in verdicts.iter().zip(&near_limit).enumerate() {
            let (route, plan) = (slot / metrics.plans.len(), slot % metrics.plans.len());
            for verdict in Verdict::ALL {
                if verdicts & bit(verdict) != 0 {
                    metrics.request_counter(route, plan, verdict);
                }
            }
            if near_limit {
                metrics.near_limit_counter(route, plan);
            }
            if verdicts != 0 && metrics.unlabelled.is_none() {
                metrics.durations_at(route, plan);
            }
        }
        metrics
    }

    /// Counts one request. `route`/`plan` are indexes (None = unmatched / no plan).
    pub fn record(
        &self,
        route: Option<usize>,
        plan: Option<usize>,
        verdict: Verdict,
        near_limit: bool,
    ) {
        let (route, plan) = self.indexes(route, plan);
        self.request_counter(route, plan, verdict).increment(1);
        if near_limit {
            self.near_limit_counter(route, plan).increment(1);
        }
    }

    /// The histograms a request on `route` by a caller of `plan` records into.
    pub fn durations(&self, route: Option<usize>, plan: Option<usize>) -> &Set {
        if let Some(set) = &self.unlabelled {
            return set;
        }
        let (route, plan) = self.indexes(route, plan);
        self.durations_at(route, plan)
    }

    fn indexes(&self, route: Option<usize>, plan: Option<usize>) -> (usize, usize) {
        (
            route.unwrap_or(self.routes.len() - 1),
            plan.unwrap_or(self.plans.len() - 1),
        )
    }

    fn request_counter(&self, route: usize, plan: usize, verdict: Verdict) -> &Counter {
        let slot = (route * self.plans.len() + plan) * Verdict::ALL.len() + verdict as usize;
        self.requests[slot].get_or_init(|| {
            metrics::counter!(
                REQUESTS,
                "route" => self.routes[route].to_string(),
                "plan" => self.plans[plan].to_string(),
                "decision" => verdict.as_str()
            )
        })
    }

    fn near_limit_counter(&self, route: usize, plan: usize) -> &Counter {
        self.near_limit[route * self.plans.len() + plan].get_or_init(|| {
            metrics::counter!(
                NEAR_LIMIT,
                "route" => self.routes[route].to_string(),
                "plan" => self.plans[plan].to_string()
            )
        })
    }

    fn durations_at(&self, route: usize, plan: usize) -> &Set {
        let HistogramLabels {
            route: by_route,
            plan: by_plan,
        } = self.histogram_labels;
        let slot = match (by_route, by_plan) {
            (false, false) => unreachable!("an unlabelled set is kept apart"),
            (true, false) => route,
            (false, true) => plan,
            (true, true) => route * self.plans.len() + plan,
        };
        self.durations[slot].get_or_init(|| {
            durations::set(Labels {
                route: by_route.then(|| self.routes[route].clone()),
                plan: by_plan.then(|| self.plans[plan].clone()),
            })
        })
    }
}

/// Per route (then unmatched) × plan (then none): the verdicts a request can get, and
/// whether it can leave its caller near a limit.
fn possible(policy: &Policy, settings: &Settings<'_>) -> (Vec<Verdicts>, Vec<bool>) {
    use Verdict::*;
    let plans = policy.plan_names.len() + 1;
    let slots = (policy.routes.len() + 1) * plans;
    let (mut verdicts, mut near_limit) = (vec![0; slots], vec![false; slots]);

    let identifier = &policy.identifier;
    let tokens = identifier
        .sources
        .iter()
        .any(|s| matches!(s, KeySource::Jwt(_)));
    let keys = identifier
        .sources
        .iter()
        .any(|s| !matches!(s, KeySource::Jwt(_)));
    // A token that fails verification is always a 401.
    let unauthorized = tokens
        || identifier.anonymous == Fallback::Reject
        || (keys && identifier.unknown_key == Fallback::Reject);
    for r in 0..=policy.routes.len() {
        let slot = &mut verdicts[r * plans + plans - 1];
        if unauthorized {
            *slot |= bit(Unauthorized);
        }
        // A body announced over `max_body` is refused before the caller is identified.
        if policy.routes.get(r).is_some_and(|r| r.max_body.is_some()) {
            *slot |= bit(TooLarge);
        }
        // A request sluice cannot read is refused before it is matched.
        if r == policy.routes.len() {
            *slot |= bit(BadRequest);
        }
    }

    for (profile, callers) in policy.profiles.iter().zip(policy.callers()) {
        if !callers.any() {
            continue;
        }
        // The penalty box blocks after a real rejection, then on every limited route.
        let rejects = profile
            .by_route
            .iter()
            .flatten()
            .any(|limits| limits.iter().any(|l| !l.shadow));
        for (r, set) in profile.by_route.iter().enumerate() {
            let slot = r * plans + profile.plan_index;
            if !profile.access {
                verdicts[slot] |= bit(Denied);
                continue;
            }
            let mut can = match set {
                None => bit(Exempt),
                Some(limits) => {
                    near_limit[slot] |= !limits.is_empty();
                    let mut can = bit(Allowed);
                    if limits.iter().any(|l| !l.shadow) {
                        can |= bit(Limited);
                    }
                    if limits.iter().any(|l| l.shadow) {
                        can |= bit(ShadowLimited);
                    }
                    if profile.penalty.is_some() && rejects {
                        can |= bit(Penalised);
                    }
                    if settings.fail_closed {
                        can |= bit(Unavailable);
                    }
                    can
                }
            };
            if settings.idempotent.get(r).copied().unwrap_or(false) {
                // A body the idempotency layer cannot read is a 400.
                can |= bit(Replayed) | bit(Refused) | bit(TooLarge) | bit(BadRequest);
            }
            verdicts[slot] |= can;
        }
    }
    (verdicts, near_limit)
}

#[cfg(test)]
mod tests;

//! Who can ever be counted under each profile, read from the identification rules: what
//! `check` calls a plan's callers ("per ip" for those identified by address) and which
//! metric series a policy can ever move. Never on the request path.

use crate::identity::{Fallback, KeySource};

use super::{Policy, ProfileId};

/// The callers a profile can have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Callers {
    /// Callers identified by a key or token: registered keys, unknown keys counted per
    /// key, JWT subjects.
    pub by_key: bool,
    /// Callers identified by their address: no key under `anonymous`, or unknown keys
    /// counted per ip.
    pub by_ip: bool,
    /// JWT subjects whose plan claim names the plan: a claim may name any plan, declared
    /// or not, but an issuer names the plans it knows.
    pub by_claim: bool,
}

impl Callers {
    /// Whether anyone can be counted under the profile.
    pub fn any(self) -> bool {
        self.by_key || self.by_ip || self.by_claim
    }

    /// Only callers identified by address, whose `per: key` (and `per: org`: they have no
    /// organisation) limits therefore count per ip.
    pub fn ip_only(self) -> bool {
        self.by_ip && !self.by_key
    }
}

impl Policy {
    /// The callers of every profile, by `ProfileId`.
    pub fn callers(&self) -> Vec<Callers> {
        let mut callers = vec![Callers::default(); self.profiles.len()];
        let mut mark = |profile: ProfileId, how: fn(&mut Callers)| {
            if let Some(c) = callers.get_mut(profile as usize) {
                how(c);
            }
        };
        let by_key: fn(&mut Callers) = |c| c.by_key = true;
        let by_ip: fn(&mut Callers) = |c| c.by_ip = true;
        let identifier = &self.identifier;
        for profile in identifier.registry.profiles() {
            mark(profile, by_key);
        }
        // With no key, both fallbacks count the client address.
        if let Fallback::PerIp(profile) | Fallback::PerKey(profile) = identifier.anonymous {
            mark(profile, by_ip);
        }
        match identifier.unknown_key {
            Fallback::Reject => {}
            Fallback::PerKey(profile) => mark(profile, by_key),
            Fallback::PerIp(profile) => mark(profile, by_ip),
        }
        for source in &identifier.sources {
            if let KeySource::Jwt(jwt) = source {
                mark(jwt.default_profile, by_key);
                if jwt.plan_claim.is_some() {
                    for &profile in jwt.plans.values() {
                        mark(profile, |c| c.by_claim = true);
                    }
                }
            }
        }
        callers
    }

    /// The callers of every plan, by plan index: those of its own profile and of the keys
    /// with overrides of their own under it.
    pub fn plan_callers(&self) -> Vec<Callers> {
        let mut plans = vec![Callers::default(); self.plan_names.len()];
        for (profile, callers) in self.profiles.iter().zip(self.callers()) {
            let plan = &mut plans[profile.plan_index];
            plan.by_key |= callers.by_key;
            plan.by_ip |= callers.by_ip;
            plan.by_claim |= callers.by_claim;
        }
        plans
    }
}

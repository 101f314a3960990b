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
}

impl Callers {
    /// Whether anyone can be counted under the profile.
    pub fn any(self) -> bool {
        self.by_key || self.by_ip
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
        let mut mark = |profile: ProfileId, by_ip: bool| {
            if let Some(c) = callers.get_mut(profile as usize) {
                if by_ip {
                    c.by_ip = true;
                } else {
                    c.by_key = true;
                }
            }
        };
        let identifier = &self.identifier;
        for profile in identifier.registry.profiles() {
            mark(profile, false);
        }
        // With no key, both fallbacks count the client address.
        if let Fallback::PerIp(profile) | Fallback::PerKey(profile) = identifier.anonymous {
            mark(profile, true);
        }
        match identifier.unknown_key {
            Fallback::Reject => {}
            Fallback::PerKey(profile) => mark(profile, false),
            Fallback::PerIp(profile) => mark(profile, true),
        }
        for source in &identifier.sources {
            if let KeySource::Jwt(jwt) = source {
                mark(jwt.default_profile, false);
                if jwt.plan_claim.is_some() {
                    for &profile in jwt.plans.values() {
                        mark(profile, false);
                    }
                }
            }
        }
        callers
    }
}

//! `sluice check`'s words for a [`Summary`]: one line per limit, in columns.

use std::fmt::Write as _;

use super::{FallbackView, LimitView, Summary};

impl Summary {
    /// The summary as `sluice check` prints it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "listen {}  admin {}  upstream {}  store {}",
            self.listen, self.admin.listen, self.upstream, self.store.backend
        );
        let identify = &self.identify;
        let sources = if identify.sources.is_empty() {
            "no key sources".to_string()
        } else {
            identify.sources.join(", then ")
        };
        let _ = writeln!(
            out,
            "identify: {sources}; {} registered {}",
            identify.registered_keys,
            if identify.registered_keys == 1 {
                "key"
            } else {
                "keys"
            }
        );
        let _ = writeln!(
            out,
            "  callers without a key: {}",
            identify.anonymous.text()
        );
        let _ = writeln!(out, "  unknown keys: {}", identify.unknown_key.text());
        for plan in &self.plans {
            let callers = if plan.callers.is_empty() {
                "nobody lands in it".to_string()
            } else {
                plan.callers.join(", ")
            };
            if !plan.access {
                let _ = writeln!(out, "plan {} ({callers}): access denied (403)", plan.name);
                continue;
            }
            let penalty = plan
                .penalty
                .as_ref()
                .map(|p| format!(", penalty box: {p}"))
                .unwrap_or_default();
            let _ = writeln!(out, "plan {} ({callers}){penalty}", plan.name);
            for (on_route, route) in plan.routes.iter().zip(self.route_patterns()) {
                let name = &on_route.route;
                if on_route.exempt {
                    let _ = writeln!(out, "  {name:<16} {route:<28} exempt");
                } else if on_route.limits.is_empty() {
                    let _ = writeln!(out, "  {name:<16} {route:<28} no limits");
                }
                for (i, limit) in on_route.limits.iter().enumerate() {
                    let (name, route) = if i == 0 { (&**name, &*route) } else { ("", "") };
                    let _ = writeln!(out, "  {name:<16} {route:<28} {}", limit.text());
                }
            }
        }
        out
    }

    /// `METHODS PATH [host HOST]` of every route, then an empty one for unmatched requests.
    fn route_patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.routes
            .iter()
            .map(|r| match &r.host {
                None => format!("{} {}", r.methods, r.path),
                Some(host) => format!("{} {}{}", r.methods, host, r.path),
            })
            .chain(std::iter::once(String::new()))
    }
}

impl FallbackView {
    fn text(&self) -> String {
        match self {
            FallbackView::Reject(_) => "rejected (401)".into(),
            FallbackView::Plan { plan, per } => format!("counted per {per} under plan {plan}"),
        }
    }
}

impl LimitView {
    /// `send: 120/min sliding_window per key (route)`, `jobs: 5 in flight per ip (route)`.
    pub fn text(&self) -> String {
        let mut out = format!("{}: ", self.name);
        match (&self.rate, self.concurrency) {
            (Some(rate), _) => {
                let _ = write!(out, "{rate} {}", self.algorithm);
            }
            (None, Some(n)) => {
                let _ = write!(out, "{n} in flight");
            }
            (None, None) => {}
        }
        if let Some(burst) = self.burst {
            let _ = write!(out, " burst {burst}");
        }
        if let Some(delay) = self.delay_ms {
            let _ = write!(out, " delay {delay}ms");
        }
        match self.per {
            "global" => out.push_str(" global"),
            per => {
                let _ = write!(out, " per {per}");
            }
        }
        if self.shadow {
            out.push_str(" shadow");
        }
        let _ = write!(out, " ({})", self.origin);
        out
    }
}

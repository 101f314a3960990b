//! Whether one matcher accepts everything another accepts: how `sluice check` finds a
//! route that an earlier route shadows. Decided on the compiled patterns, never by trying
//! requests; load-time only.

use super::{HostKind, HostPattern, MethodSet, PathKind, PathPattern, Segment, Tail};

impl MethodSet {
    /// Whether every method `other` accepts is accepted here.
    pub fn covers(&self, other: &MethodSet) -> bool {
        self.any
            || (!other.any
                && other.standard & !self.standard == 0
                && other.extensions.iter().all(|m| self.extensions.contains(m)))
    }
}

impl PathPattern {
    /// Whether every path `other` matches is matched here.
    pub fn covers(&self, other: &PathPattern) -> bool {
        // `*` matches the asterisk-form target alone, which no path pattern matches.
        match (&self.kind, &other.kind) {
            (PathKind::Asterisk, theirs) => return *theirs == PathKind::Asterisk,
            (_, PathKind::Asterisk) => return false,
            _ => {}
        }
        let (mine, my_tail) = self.shape();
        let (theirs, their_tail) = other.shape();
        let prefix_covers = |n: usize| {
            mine.iter()
                .zip(&theirs[..n])
                .all(|(m, t)| segment_covers(m, t))
        };
        match my_tail {
            // Only the same number of segments, each covered.
            Tail::End => {
                their_tail == Tail::End && mine.len() == theirs.len() && prefix_covers(mine.len())
            }
            // Any path at least as deep whose first segments are covered.
            Tail::Any => mine.len() <= theirs.len() && prefix_covers(mine.len()),
            Tail::One => unreachable!("shape() spells `*` as a parameter"),
        }
    }

    /// The pattern as segments and a tail of `End` or `Any` (a trailing `*` is one more
    /// parameter segment: exactly one non-empty segment).
    fn shape(&self) -> (Vec<Segment>, Tail) {
        let literals = |path: &str| -> Vec<Segment> {
            path.split('/')
                .map(|segment| Segment::Literal(segment.into()))
                .collect()
        };
        match &self.kind {
            PathKind::Asterisk => unreachable!("covers() decides `*` before asking its shape"),
            PathKind::Exact => (literals(&self.source[1..]), Tail::End),
            PathKind::Prefix(prefix) if prefix.is_empty() => (Vec::new(), Tail::Any),
            PathKind::Prefix(prefix) => (literals(&prefix[1..]), Tail::Any),
            PathKind::Segments { segments, tail } => {
                let mut segments = segments.to_vec();
                let tail = match tail {
                    Tail::One => {
                        segments.push(Segment::Param);
                        Tail::End
                    }
                    other => *other,
                };
                (segments, tail)
            }
        }
    }
}

/// Whether segment `mine` matches every path segment `theirs` matches.
fn segment_covers(mine: &Segment, theirs: &Segment) -> bool {
    match (mine, theirs) {
        (Segment::Literal(m), Segment::Literal(t)) => m == t,
        (Segment::Param, Segment::Literal(t)) => !t.is_empty(),
        (Segment::Param, Segment::Param) => true,
        (Segment::Literal(_), Segment::Param) => false,
    }
}

impl HostPattern {
    /// Whether every host `other` matches is matched here.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (&self.kind, &other.kind) {
            (HostKind::Exact(mine), HostKind::Exact(theirs)) => mine == theirs,
            (HostKind::Suffix(_), HostKind::Exact(theirs)) => self.matches(theirs),
            // `*.example.com` covers `*.api.example.com`.
            (HostKind::Suffix(mine), HostKind::Suffix(theirs)) => theirs.ends_with(&**mine),
            (HostKind::Exact(_), HostKind::Suffix(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn m(names: &[&str]) -> MethodSet {
        MethodSet::parse(names.iter().copied()).unwrap()
    }

    #[test]
    fn paths() {
        for (a, b) in [
            ("/**", "/"),
            ("/**", "/v1/{id}/*"),
            ("/v1/**", "/v1"),
            ("/v1/**", "/v1/"),
            ("/v1/**", "/v1/messages"),
            ("/v1/**", "/v1/{id}/**"),
            ("/v1/*", "/v1/{id}"),
            ("/v1/{x}", "/v1/messages"),
            ("/{a}/{b}/**", "/v1/users/*"),
            ("/v1/messages", "/v1/messages"),
        ] {
            assert!(p(a).covers(&p(b)), "{a} covers {b}");
        }
        for (a, b) in [
            ("/v1/messages", "/v1/**"),
            ("/v1/*", "/v1/"),
            ("/v1/*", "/v1/a/b"),
            ("/v1/{id}", "/v1/{id}/**"),
            ("/v1/**", "/v2/x"),
            ("/v1/x/**", "/v1/**"),
            ("/v1/messages", "/v1/messages/"),
            ("/{a}", "/"),
            ("/v1", "/v1/**"),
        ] {
            assert!(!p(a).covers(&p(b)), "{a} does not cover {b}");
        }
    }

    #[test]
    fn methods_and_hosts() {
        assert!(MethodSet::any().covers(&m(&["GET", "PURGE"])));
        assert!(m(&["GET", "HEAD", "PURGE"]).covers(&m(&["head", "PURGE"])));
        assert!(!m(&["GET"]).covers(&m(&["GET", "HEAD"])));
        assert!(!m(&["GET"]).covers(&MethodSet::any()));
        assert!(!m(&["GET"]).covers(&m(&["PURGE"])));
        let h = |s: &str| HostPattern::parse(s).unwrap();
        assert!(h("*.example.com").covers(&h("api.example.com")));
        assert!(h("*.example.com").covers(&h("*.eu.example.com")));
        assert!(!h("*.example.com").covers(&h("example.com")));
        assert!(!h("api.example.com").covers(&h("*.example.com")));
        assert!(h("API.example.com").covers(&h("api.example.com.")));
    }

    fn pattern() -> impl Strategy<Value = String> {
        let segment = prop_oneof![Just("a"), Just("b"), Just(""), Just("{p}")];
        (
            prop::collection::vec(segment, 0..4),
            prop_oneof![Just(""), Just("*"), Just("**")],
        )
            .prop_map(|(segments, tail)| {
                let mut out = String::new();
                for (i, s) in segments.iter().enumerate() {
                    // Only the last segment may be empty, and parameters need distinct names.
                    let s = match *s {
                        "{p}" => format!("{{p{i}}}"),
                        "" if i + 1 < segments.len() || !tail.is_empty() => "a".into(),
                        other => other.into(),
                    };
                    out.push('/');
                    out.push_str(&s);
                }
                if !tail.is_empty() || out.is_empty() {
                    out.push('/');
                    out.push_str(tail);
                }
                out
            })
    }

    /// Every path of up to 5 segments over `a`, `b`, `c` and the empty segment: deeper than
    /// any generated pattern, with a segment no pattern names.
    fn every_path() -> Vec<String> {
        let mut all = vec![Vec::<&str>::new()];
        let mut frontier = all.clone();
        for _ in 0..5 {
            frontier = frontier
                .iter()
                .flat_map(|p| {
                    ["a", "b", "c", ""].map(|s| {
                        let mut p = p.clone();
                        p.push(s);
                        p
                    })
                })
                .collect();
            all.extend(frontier.iter().cloned());
        }
        all.iter().map(|p| format!("/{}", p.join("/"))).collect()
    }

    proptest! {
        /// A pattern covers another exactly when it matches every path the other matches.
        #[test]
        fn covers_is_exactly_matching_everything_the_other_matches(a in pattern(), b in pattern()) {
            let (a, b) = (p(&a), p(&b));
            let paths = every_path();
            let superset = paths.iter().all(|path| !b.matches(path) || a.matches(path));
            prop_assert_eq!(a.covers(&b), superset, "{} over {}", a, b);
        }
    }
}

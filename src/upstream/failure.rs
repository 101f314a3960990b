//! Who failed, counted and logged: an upstream failure by its kind in
//! `sluice_upstream_errors_total`, with a WARN line per kind at most once a second that says
//! how many it stands for. A client that broke off its own upload is not one of them: it has
//! its own counter and a DEBUG line, so an alert on upstream errors pages the API's owners
//! only for the API.

use std::fmt::Display;

use crate::limiter::clock::{Nanos, SECOND};
use crate::telemetry::{self, LogGate};

/// What went wrong with the upstream: the `kind` label of `sluice_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, unreachable, or the name did not resolve.
    Connect = 0,
    /// No connection within `upstream.connect_timeout` (504).
    ConnectTimeout = 1,
    /// Connected, but no response head within `upstream.timeout` (504).
    Timeout = 2,
    /// The connection was closed or reset before the response head was whole (502).
    Reset = 3,
    /// The response head was not valid HTTP/1.1 (502).
    Protocol = 4,
    /// The response body broke off after its head had been passed on: reset, closed
    /// before its end, or malformed chunks. The client sees a truncated response.
    ResetBody = 5,
}

impl Failure {
    /// Every kind, pre-registered at zero so alerts and dashboards see each series.
    pub const ALL: [Failure; 6] = [
        Failure::Connect,
        Failure::ConnectTimeout,
        Failure::Timeout,
        Failure::Reset,
        Failure::Protocol,
        Failure::ResetBody,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Protocol => "protocol",
            Failure::ResetBody => "reset_body",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts an upstream failure and logs it, unless a line of the same kind went out less
/// than a second ago: a failing upstream fails every request, and a line each wrote 143 MB
/// of log in two minutes. The line that goes out carries the request id of its own request
/// and `suppressed`, the lines of that kind held back since the one before.
pub fn report(kind: Failure, error: &dyn Display, request_id: Option<&str>) {
    static GATES: [LogGate; Failure::ALL.len()] = [const { LogGate::new() }; Failure::ALL.len()];
    telemetry::upstream_error(kind.as_str());
    if let Some(suppressed) = GATES[kind as usize].admit(now()) {
        tracing::warn!(
            kind = kind.as_str(),
            request_id = request_id.unwrap_or(""),
            suppressed,
            "upstream failed: {error}"
        );
    }
}

/// Counts a client that broke off its request body while sluice forwarded it (closed or
/// reset its connection, or broke the body's framing): the client's doing, logged at DEBUG.
pub fn client_aborted(error: &dyn Display, request_id: &str) {
    telemetry::client_aborted();
    tracing::debug!(
        request_id,
        "client's request body failed while it was forwarded: {error}"
    );
}

/// Any monotonic time serves the gates, which only compare it with itself; read here
/// rather than passed in, since response bodies fail where no clock is at hand.
fn now() -> Nanos {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as Nanos * SECOND + now.tv_nsec as Nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_label_and_gate_slot() {
        for (i, kind) in Failure::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
        }
        let labels: std::collections::HashSet<_> =
            Failure::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), Failure::ALL.len());
    }
}

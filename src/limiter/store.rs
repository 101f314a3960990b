//! Where counters live: the `Store` trait and its backends.
//!
//! A store takes all checks of one request and answers all-or-nothing: either every
//! non-shadow limit allowed and all were counted, or nothing was taken from any of them.
//! A local store answers at once (`Checking::Ready`, no allocation); a remote one returns
//! a future. The store owns no policy: which limits apply is decided before it is called.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use super::clock::Nanos;
use super::{Check, Outcomes};

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within the store's timeout.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store is unreachable or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
        }
    }
}

/// What a request gets when the store fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Let it through (fail open).
    Allow,
    /// Answer 503 (`responses.unavailable`).
    Deny,
    /// Enforce this replica's share of each limit locally (the store answers it).
    Local,
}

impl OnError {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
            OnError::Local => "local",
        }
    }
}

/// Future of a remote store's answer.
pub type PendingCheck = Pin<Box<dyn Future<Output = Result<Outcomes, StoreError>> + Send>>;

/// A store's answer: at once, or later.
pub enum Checking {
    /// A local store answered without waiting.
    Ready(Result<Outcomes, StoreError>),
    /// A remote store's answer in flight.
    Pending(PendingCheck),
}

impl Checking {
    /// Waits for the answer.
    pub async fn resolve(self) -> Result<Outcomes, StoreError> {
        match self {
            Checking::Ready(result) => result,
            Checking::Pending(future) => future.await,
        }
    }
}

/// Counter storage shared by every request.
pub trait Store: Send + Sync + 'static {
    /// Counts the request against every check if all non-shadow checks allow it;
    /// otherwise counts nothing. Outcomes come back in check order.
    fn check(&self, checks: &[Check], now: Nanos) -> Checking;

    /// The current outcome of each check, counting nothing (for usage reports).
    fn peek(&self, checks: &[Check], now: Nanos) -> Checking;

    /// Drops entries that are as good as new. Called periodically.
    fn sweep(&self, now: Nanos);

    /// Entries held right now.
    fn tracked_entries(&self) -> usize;

    /// Backend name for logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// What a request gets when `check` fails (`Local` never fails).
    fn on_error(&self) -> OnError {
        OnError::Allow
    }

    /// One line on the store's health for `/readyz`.
    fn status(&self) -> String {
        "ok".to_string()
    }
}

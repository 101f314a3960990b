//! Connection deadlines, kept by one sweeper per listener instead of timers inside every
//! connection or request:
//! - `header_read_timeout`: a connection waiting for a request (no request in flight: none
//!   started, or every response sent) closes once it has waited this long. That bounds the
//!   TLS handshake plus the first request, every later request head on HTTP/1.1 (a
//!   slowloris), and keep-alive idleness on HTTP/1.1. An HTTP/2 connection only has to
//!   start its first request in time.
//! - `idle_timeout`: no byte moved either way for this long: finish and close.
//! - shutdown: finish and close.
//!
//! A request counts as in flight from the moment hyper hands it over until its response
//! body is done with ([`Tracked`]). A connection's task reads one flag when it wakes; the
//! sweeper looks at every open connection eight times per (shorter) timeout, so a deadline
//! is enforced within 1/8 of it. Timers instead (hyper's header timer, a new one per
//! request; an idle interval and a shutdown wait polled at every wake-up, the wait taking
//! a lock on a waiter list shared by all connections) cost 6% of the throughput of proxied
//! requests and 4% of rejected ones (BENCHMARKS.md).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::io::Activity;

/// How many looks per timeout.
const CHECKS: u32 = 8;

/// Least length of the list at which adding a connection first drops the closed ones.
const MIN_PRUNE: usize = 1024;

/// Why a connection is told to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Nothing moved for `idle_timeout`: finish what is in flight, then close.
    Idle,
    /// The listener is shutting down: finish what is in flight, then close.
    Shutdown,
    /// Waited `header_read_timeout` for a request: close now.
    Silent,
}

impl Close {
    fn code(self) -> u8 {
        match self {
            Close::Idle => 1,
            Close::Shutdown => 2,
            Close::Silent => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Close::Idle),
            2 => Some(Close::Shutdown),
            3 => Some(Close::Silent),
            _ => None,
        }
    }
}

/// One connection as the sweeper sees it, and how it tells the connection's task to close.
#[derive(Default)]
pub struct Watch {
    /// Reads and writes that moved bytes.
    pub activity: Activity,
    started: AtomicU64,
    finished: AtomicU64,
    http2: AtomicBool,
    close: AtomicU8,
    waker: AtomicWaker,
}

impl Watch {
    /// A request has started on this connection; it is in flight until the guard drops.
    pub fn request(self: &Arc<Self>, http2: bool) -> InFlight {
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.started.fetch_add(1, Ordering::Release);
        InFlight(self.clone())
    }

    /// Why the connection must close, if it must; wakes the task in `cx` when that changes.
    pub fn poll_close(&self, cx: &Context<'_>) -> Option<Close> {
        self.waker.register(cx.waker());
        self.closing()
    }

    /// Why the connection must close, if it must (without waiting for it).
    pub fn closing(&self) -> Option<Close> {
        Close::from_code(self.close.load(Ordering::Acquire))
    }

    /// The first reason given stands.
    fn close(&self, why: Close) {
        let set = self
            .close
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
        if set.is_ok() {
            self.waker.wake();
        }
    }
}

/// A request in flight on a watched connection.
pub struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is done with.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: InFlight,
    }
}

impl<B> Tracked<B> {
    /// `body`, keeping `in_flight` until it is dropped.
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self { body, in_flight }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The open connections of one listener.
pub struct Watches {
    open: Mutex<Vec<Entry>>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

struct Entry {
    watch: Weak<Watch>,
    activity: u64,
    quiet_since: Instant,
    /// Requests started and finished when last seen to change.
    requests: (u64, u64),
    requests_since: Instant,
}

impl Watches {
    /// No connections yet.
    pub fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            open: Mutex::new(Vec::new()),
            header_read_timeout,
            idle_timeout,
        }
    }

    /// How often to `sweep`.
    pub fn period(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / CHECKS).max(Duration::from_millis(1))
    }

    /// Starts watching a connection accepted `now`.
    pub fn watch(&self, now: Instant) -> Arc<Watch> {
        let watch = Arc::new(Watch::default());
        let mut open = self.lock();
        // Closed connections are forgotten at the next sweep, or, under heavy churn, here
        // when the list is about to grow: it stays within twice the open connections.
        if open.len() >= MIN_PRUNE && open.len() == open.capacity() {
            open.retain(|entry| entry.watch.strong_count() > 0);
        }
        open.push(Entry {
            watch: Arc::downgrade(&watch),
            activity: 0,
            quiet_since: now,
            requests: (0, 0),
            requests_since: now,
        });
        watch
    }

    /// Tells the connections whose deadline passed by `now` to close, and forgets the
    /// closed ones.
    pub fn sweep(&self, now: Instant) {
        self.lock().retain_mut(|entry| {
            let Some(watch) = entry.watch.upgrade() else {
                return false;
            };
            let activity = watch.activity.get();
            if activity != entry.activity {
                (entry.activity, entry.quiet_since) = (activity, now);
            }
            // Finished first (and no later read moved before it): a request that starts in
            // between is then seen in flight.
            let finished = watch.finished.load(Ordering::Acquire);
            let started = watch.started.load(Ordering::Acquire);
            if (started, finished) != entry.requests {
                (entry.requests, entry.requests_since) = ((started, finished), now);
            }
            let waiting =
                started == finished && (started == 0 || !watch.http2.load(Ordering::Relaxed));
            if waiting && now.duration_since(entry.requests_since) >= self.header_read_timeout {
                watch.close(Close::Silent);
            } else if now.duration_since(entry.quiet_since) >= self.idle_timeout {
                watch.close(Close::Idle);
            }
            true
        });
    }

    /// Tells every open connection to finish and close.
    pub fn shutdown(&self) {
        for entry in self.lock().iter() {
            if let Some(watch) = entry.watch.upgrade() {
                watch.close(Close::Shutdown);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic elsewhere while holding it leaves a usable list.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn verdict(watch: &Watch) -> Option<Close> {
        watch.poll_close(&Context::from_waker(Waker::noop()))
    }

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_connection_waiting_for_a_request_is_closed_at_once_after_the_header_timeout() {
        let watches = Watches::new(Duration::from_secs(2), Duration::from_secs(60));
        let start = Instant::now();
        let silent = watches.watch(start);
        let busy = watches.watch(start);
        let in_flight = busy.request(false);
        watches.sweep(at(start, 1999));
        assert_eq!(verdict(&silent), None);
        watches.sweep(at(start, 2000));
        assert_eq!(verdict(&silent), Some(Close::Silent));
        watches.sweep(at(start, 9000));
        assert_eq!(verdict(&busy), None, "a request in flight for 9 s");
        // HTTP/1.1: the wait for the next head counts from the end of the response.
        drop(in_flight);
        watches.sweep(at(start, 9500));
        watches.sweep(at(start, 11_499));
        assert_eq!(verdict(&busy), None);
        watches.sweep(at(start, 11_500));
        assert_eq!(verdict(&busy), Some(Close::Silent));
    }

    #[test]
    fn an_http2_connection_only_has_to_start_its_first_request_in_time() {
        let watches = Watches::new(Duration::from_secs(2), Duration::from_secs(60));
        let start = Instant::now();
        let watch = watches.watch(start);
        drop(watch.request(true));
        watches.sweep(at(start, 100));
        watches.sweep(at(start, 30_000));
        assert_eq!(verdict(&watch), None);
    }

    #[test]
    fn idleness_counts_from_the_last_byte_moved() {
        let watches = Watches::new(Duration::from_secs(1), Duration::from_secs(10));
        let start = Instant::now();
        let watch = watches.watch(start);
        let _in_flight = watch.request(false);
        watch.activity.bump();
        watches.sweep(start + Duration::from_secs(5));
        watches.sweep(start + Duration::from_secs(14));
        assert_eq!(verdict(&watch), None, "bytes moved at 5 s");
        watches.sweep(start + Duration::from_secs(15));
        assert_eq!(verdict(&watch), Some(Close::Idle));
        assert_eq!(watches.period(), Duration::from_millis(125));
    }

    #[test]
    fn closed_connections_do_not_pile_up_between_sweeps() {
        let watches = Watches::new(Duration::from_secs(30), Duration::from_secs(60));
        let now = Instant::now();
        let open: Vec<_> = (0..100).map(|_| watches.watch(now)).collect();
        for _ in 0..10_000 {
            drop(watches.watch(now));
        }
        assert!(watches.lock().len() <= MIN_PRUNE + open.len());
        watches.sweep(now);
        assert_eq!(watches.lock().len(), open.len());
    }

    #[test]
    fn shutdown_reaches_every_open_connection_and_closed_ones_are_forgotten() {
        let watches = Watches::new(Duration::from_secs(1), Duration::from_secs(1));
        let now = Instant::now();
        let open = watches.watch(now);
        drop(watches.watch(now));
        watches.sweep(now);
        assert_eq!(watches.lock().len(), 1);
        watches.shutdown();
        assert_eq!(verdict(&open), Some(Close::Shutdown));
        watches.sweep(now + Duration::from_secs(5));
        assert_eq!(
            verdict(&open),
            Some(Close::Shutdown),
            "the first reason stands"
        );
    }
}

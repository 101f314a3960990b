//! Connection deadlines, kept by one sweeper per listener instead of timers inside every
//! connection: no request within `header_read_timeout` of the accept (the TLS handshake
//! included), no byte moved for `idle_timeout`, and shutdown.
//!
//! A connection's task only reads one flag when it wakes; the sweeper looks at every open
//! connection eight times per (shorter) timeout, so a deadline is enforced within 1/8 of
//! it. Timers in each connection's task were polled at every wake-up of every request (and
//! the shutdown signal took a lock on its waiter list each time): ~3% of a proxied request.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::io::Activity;

/// How many looks per timeout.
const CHECKS: u32 = 8;

/// Why a connection is told to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Nothing moved for `idle_timeout`: finish what is in flight, then close.
    Idle,
    /// The listener is shutting down: finish what is in flight, then close.
    Shutdown,
    /// No request within `header_read_timeout` of the accept: close now.
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
    served: AtomicBool,
    close: AtomicU8,
    waker: AtomicWaker,
}

impl Watch {
    /// A request has started on this connection.
    pub fn served(&self) {
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
    }

    /// Why the connection must close, if it must; wakes the task in `cx` when that changes.
    pub fn poll_close(&self, cx: &Context<'_>) -> Option<Close> {
        self.waker.register(cx.waker());
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

/// The open connections of one listener.
pub struct Watches {
    open: Mutex<Vec<Entry>>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

struct Entry {
    watch: Weak<Watch>,
    accepted: Instant,
    activity: u64,
    quiet_since: Instant,
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
        self.lock().push(Entry {
            watch: Arc::downgrade(&watch),
            accepted: now,
            activity: 0,
            quiet_since: now,
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
            if !watch.served.load(Ordering::Relaxed)
                && now.duration_since(entry.accepted) >= self.header_read_timeout
            {
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

    #[test]
    fn a_connection_without_a_request_is_closed_at_once_after_the_header_timeout() {
        let watches = Watches::new(Duration::from_secs(2), Duration::from_secs(60));
        let start = Instant::now();
        let silent = watches.watch(start);
        let served = watches.watch(start);
        served.served();
        watches.sweep(start + Duration::from_millis(1999));
        assert_eq!(verdict(&silent), None);
        watches.sweep(start + Duration::from_secs(2));
        assert_eq!(verdict(&silent), Some(Close::Silent));
        assert_eq!(verdict(&served), None);
    }

    #[test]
    fn idleness_counts_from_the_last_byte_moved() {
        let watches = Watches::new(Duration::from_secs(1), Duration::from_secs(10));
        let start = Instant::now();
        let watch = watches.watch(start);
        watch.served();
        watch.activity.bump();
        watches.sweep(start + Duration::from_secs(5));
        watches.sweep(start + Duration::from_secs(14));
        assert_eq!(verdict(&watch), None, "bytes moved at 5 s");
        watches.sweep(start + Duration::from_secs(15));
        assert_eq!(verdict(&watch), Some(Close::Idle));
        assert_eq!(watches.period(), Duration::from_millis(125));
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

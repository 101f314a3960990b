//! Request heads that become ready in one turn of the event loop go upstream in one system
//! call (an `io_uring` submission of one `send` per head) instead of one `writev` each.
//!
//! Why: an upstream on the same CPU (the sidecar case) sleeps in its event loop between
//! requests, and the first byte written to any of its connections wakes it. The scheduler
//! often hands it the CPU when that write returns, so with one system call per head the
//! proxy and the upstream take turns a request at a time, each turn two context switches
//! (BENCHMARKS.md: in a trace of the peer benchmark, 517 of 533 wake-ups of the upstream
//! answered one request). Heads sent in one submission are all in the upstream's sockets
//! before the proxy can be switched out, and it answers them in one wake-up.
//!
//! Only for the single-threaded runtime (one CPU: where proxy and upstream share it), with
//! the state in a thread local and a flusher task that runs after the requests woken
//! before it. Every `send` is non-blocking (`MSG_DONTWAIT`, which io_uring completes inline
//! and never parks), so the submission returns with every result in the completion queue;
//! a head the socket did not take whole is finished by the caller's ordinary write path.
//! Where io_uring is unavailable (a seccomp profile, an old kernel, `io_uring_disabled`),
//! each head is written on its own as before.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};
use tokio::net::TcpStream;

/// Submission queue size; a longer batch goes in several submissions.
const RING_ENTRIES: u32 = 256;
/// A slot keeps a head buffer up to this size for the next head; a larger one is freed.
const KEPT_BUFFER: usize = 16 * 1024;

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State::Unprobed) };
}

enum State {
    Unprobed,
    Off,
    On(Box<Batcher>),
}

/// Whether this thread batches upstream writes (decided on first use).
pub fn available() -> bool {
    STATE.with_borrow_mut(|state| {
        if matches!(state, State::Unprobed) {
            *state = probe();
        }
        matches!(state, State::On(batcher) if !batcher.broken)
    })
}

fn probe() -> State {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if !matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)) {
        return State::Off;
    }
    let ring = IoUring::builder()
        .setup_submit_all()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::new(RING_ENTRIES))
        .and_then(|ring| {
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe)?;
            if probe.is_supported(opcode::Send::CODE) {
                Ok(ring)
            } else {
                Err(io::Error::from(io::ErrorKind::Unsupported))
            }
        });
    match ring {
        Ok(ring) => {
            tokio::spawn(flusher());
            State::On(Box::new(Batcher {
                ring,
                slots: Vec::new(),
                free: Vec::new(),
                queued: Vec::new(),
                flusher: None,
                broken: false,
                #[cfg(test)]
                submissions: 0,
            }))
        }
        Err(error) => {
            tracing::info!(%error, "io_uring unavailable: upstream request heads are written one system call each");
            State::Off
        }
    }
}

/// Queues `bytes` for `stream`; the future gives how many bytes went out. `None` when this
/// thread does not batch (the caller writes them itself).
pub fn send(stream: &TcpStream, bytes: &[u8]) -> Option<Sending> {
    STATE.with_borrow_mut(|state| match state {
        State::On(batcher) if !batcher.broken => Some(batcher.queue(stream.as_raw_fd(), bytes)),
        _ => None,
    })
}

struct Batcher {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots to submit, in the order they were queued.
    queued: Vec<u32>,
    /// The flusher, while it waits for work.
    flusher: Option<Waker>,
    /// A submission failed: no more heads are queued, and those in slots get their results.
    broken: bool,
    #[cfg(test)]
    submissions: u64,
}

#[derive(Default)]
struct Slot {
    fd: RawFd,
    /// A copy of the head: the writer may be dropped (its client left) before the flush.
    bytes: Vec<u8>,
    stage: Stage,
    /// Distinguishes this use of the slot from earlier ones, for a `Sending` dropped late.
    generation: u32,
    waker: Option<Waker>,
}

#[derive(Default, PartialEq)]
enum Stage {
    #[default]
    Free,
    Queued,
    /// Submitted, result not yet reaped.
    InFlight,
    /// Its writer left while it was in flight: freed when the result comes.
    Orphaned,
    /// `send`'s result (bytes or -errno).
    Done(i32),
}

impl Batcher {
    fn queue(&mut self, fd: RawFd, bytes: &[u8]) -> Sending {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.fd = fd;
        slot.bytes.clear();
        slot.bytes.extend_from_slice(bytes);
        slot.stage = Stage::Queued;
        slot.generation = slot.generation.wrapping_add(1);
        self.queued.push(index);
        if let Some(flusher) = self.flusher.take() {
            flusher.wake();
        }
        Sending {
            index,
            generation: slot.generation,
            finished: false,
        }
    }

    fn release(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.stage = Stage::Free;
        slot.waker = None;
        if slot.bytes.capacity() > KEPT_BUFFER {
            slot.bytes = Vec::new();
        }
        self.free.push(index);
    }

    /// Submits everything queued and hands out the results.
    fn flush(&mut self) -> io::Result<()> {
        while !self.queued.is_empty() {
            let take = self.queued.len().min(RING_ENTRIES as usize);
            let mut heads = 0;
            {
                let mut submission = self.ring.submission();
                for &index in &self.queued[..take] {
                    let slot = &mut self.slots[index as usize];
                    if slot.stage != Stage::Queued {
                        continue;
                    }
                    let send = opcode::Send::new(
                        types::Fd(slot.fd),
                        slot.bytes.as_ptr(),
                        slot.bytes.len() as u32,
                    )
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(u64::from(index));
                    // SAFETY: the buffer and the fd stay valid until the result is reaped:
                    // the slot keeps the bytes until then (orphaned if its writer leaves),
                    // and the writer, which owns the socket, is alive while its slot is
                    // queued (dropping it frees the slot, which is then skipped here).
                    unsafe { submission.push(&send) }.expect("the queue has room for a batch");
                    slot.stage = Stage::InFlight;
                    heads += 1;
                }
            }
            self.queued.drain(..take);
            let submitted = self.submit();
            self.reap();
            submitted?;
            if heads > 0 {
                crate::telemetry::upstream_write_batch(heads);
                #[cfg(test)]
                {
                    self.submissions += 1;
                }
            }
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        // With `SUBMIT_ALL` one call takes the whole queue; looping covers a kernel that
        // stops at an entry it refused (that entry's own result says why).
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(0) => return Err(io::Error::other("the kernel took none of the queue")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn reap(&mut self) {
        let Batcher {
            ring, slots, free, ..
        } = self;
        for entry in ring.completion() {
            let index = entry.user_data() as u32;
            let slot = &mut slots[index as usize];
            match slot.stage {
                Stage::Orphaned => {
                    slot.stage = Stage::Free;
                    free.push(index);
                }
                Stage::InFlight => {
                    slot.stage = Stage::Done(entry.result());
                    if let Some(waker) = slot.waker.take() {
                        waker.wake();
                    }
                }
                _ => {}
            }
        }
    }

    /// After a failed submission, with every result that came reaped: a head never
    /// submitted is written by its writer (`EAGAIN`: nothing sent); one submitted without
    /// a result may or may not have gone, so its connection fails (`EIO`) and is not used
    /// again (a bodiless idempotent request is then resent on a fresh one).
    fn break_off(&mut self) {
        self.broken = true;
        for index in 0..self.slots.len() as u32 {
            let slot = &mut self.slots[index as usize];
            let result = match slot.stage {
                Stage::Queued => -libc::EAGAIN,
                Stage::InFlight => -libc::EIO,
                Stage::Orphaned => {
                    self.release(index);
                    continue;
                }
                Stage::Free | Stage::Done(_) => continue,
            };
            slot.stage = Stage::Done(result);
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
        self.queued.clear();
    }
}

/// Runs after the tasks queued before it were polled, so their heads are in the batch.
async fn flusher() {
    // Dropped with its runtime: a later runtime on this thread probes afresh.
    struct Ended;
    impl Drop for Ended {
        fn drop(&mut self) {
            let _ = STATE.try_with(|state| {
                if let Ok(mut state) = state.try_borrow_mut() {
                    // A broken batcher stays, for the writers holding its slots.
                    if matches!(&*state, State::On(batcher) if !batcher.broken) {
                        *state = State::Unprobed;
                    }
                }
            });
        }
    }
    let _ended = Ended;
    std::future::poll_fn(|cx| {
        STATE.with_borrow_mut(|state| {
            let State::On(batcher) = state else {
                return Poll::Ready(());
            };
            if let Err(error) = batcher.flush() {
                tracing::warn!(%error, "io_uring submission failed: upstream request heads are written one system call each from now on");
                batcher.break_off();
                return Poll::Ready(());
            }
            if !batcher
                .flusher
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                batcher.flusher = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    })
    .await;
}

/// Submissions made on this thread so far (probing first).
#[cfg(test)]
pub fn submissions() -> u64 {
    assert!(available(), "io_uring is needed by this test");
    STATE.with_borrow(|state| match state {
        State::On(batcher) => batcher.submissions,
        _ => unreachable!(),
    })
}

/// A queued head's write; gives the bytes sent, or `WouldBlock` for none.
pub struct Sending {
    index: u32,
    generation: u32,
    finished: bool,
}

impl Future for Sending {
    type Output = io::Result<usize>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (index, generation) = (self.index, self.generation);
        let result = STATE.with_borrow_mut(|state| {
            let State::On(batcher) = state else {
                // Its runtime ended (see `flusher`) and took the batcher: nothing was sent.
                return Some(Err(io::ErrorKind::WouldBlock.into()));
            };
            let slot = &mut batcher.slots[index as usize];
            debug_assert_eq!(slot.generation, generation);
            match slot.stage {
                Stage::Done(result) => {
                    batcher.release(index);
                    Some(if result >= 0 {
                        Ok(result as usize)
                    } else {
                        Err(io::Error::from_raw_os_error(-result))
                    })
                }
                _ => {
                    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        slot.waker = Some(cx.waker().clone());
                    }
                    None
                }
            }
        });
        match result {
            Some(result) => {
                self.finished = true;
                Poll::Ready(result)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (index, generation) = (self.index, self.generation);
        let _ = STATE.try_with(|state| {
            let Ok(mut state) = state.try_borrow_mut() else {
                return;
            };
            let State::On(batcher) = &mut *state else {
                return;
            };
            let slot = &mut batcher.slots[index as usize];
            if slot.generation != generation {
                return;
            }
            match slot.stage {
                // Not submitted: skipped by the flush, which also forgets the socket.
                Stage::Queued | Stage::Done(_) => batcher.release(index),
                Stage::InFlight => slot.stage = Stage::Orphaned,
                Stage::Free | Stage::Orphaned => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// `n` connected loopback pairs: (the side written, the side read).
    async fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            pairs.push((client, server));
        }
        pairs
    }

    async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; n];
        stream.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn heads_queued_in_one_turn_leave_in_one_submission_each_to_its_own_socket() {
        assert!(available(), "io_uring is needed by these tests");
        let mut pairs = pairs(40).await;
        let before = super::submissions();
        let heads: Vec<Vec<u8>> = (0..pairs.len())
            .map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n").into_bytes())
            .collect();
        let sending: Vec<Sending> = pairs
            .iter()
            .zip(&heads)
            .map(|((client, _), head)| send(client, head).unwrap())
            .collect();
        for (sent, head) in futures_util::future::join_all(sending)
            .await
            .into_iter()
            .zip(&heads)
        {
            assert_eq!(sent.unwrap(), head.len());
        }
        assert_eq!(super::submissions() - before, 1);
        for ((_, server), head) in pairs.iter_mut().zip(&heads) {
            assert_eq!(&read_exactly(server, head.len()).await, head);
        }
    }

    #[tokio::test]
    async fn a_head_dropped_before_the_flush_is_never_sent() {
        assert!(available());
        let mut pairs = pairs(2).await;
        drop(send(&pairs[0].0, b"dropped").unwrap());
        let kept = send(&pairs[1].0, b"kept").unwrap();
        assert_eq!(kept.await.unwrap(), 4);
        assert_eq!(read_exactly(&mut pairs[1].1, 4).await, b"kept");
        // The slot the dropped head had is reused without sending it.
        assert_eq!(send(&pairs[1].0, b"again").unwrap().await.unwrap(), 5);
        assert_eq!(read_exactly(&mut pairs[1].1, 5).await, b"again");
        let mut byte = [0u8; 1];
        let nothing = pairs[0].1.try_read(&mut byte);
        assert!(
            matches!(&nothing, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{nothing:?}"
        );
    }

    /// A socket whose peer reads nothing fills up: its head is not taken, or only in part,
    /// and the caller is told how much went out.
    #[tokio::test]
    async fn a_full_socket_takes_less_than_the_head() {
        assert!(available());
        let pairs = pairs(1).await;
        let client = &pairs[0].0;
        let filler = vec![b'x'; 1 << 16];
        while client.try_write(&filler).is_ok() {}
        let head = vec![b'h'; 1 << 16];
        let sent = send(client, &head).unwrap().await;
        assert!(
            matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                || matches!(sent, Ok(n) if n < head.len()),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_peer_gives_its_error() {
        assert!(available());
        let mut pairs = pairs(1).await;
        let (client, server) = pairs.pop().unwrap();
        drop(server);
        // The first write after the peer closed draws its reset; a later one fails.
        let mut result = Ok(0);
        for _ in 0..10 {
            result = send(&client, b"GET / HTTP/1.1\r\n\r\n").unwrap().await;
            if result.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let error = result.unwrap_err();
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{error:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_multi_threaded_runtime_writes_each_head_itself() {
        assert!(!available());
        let pairs = pairs(1).await;
        assert!(send(&pairs[0].0, b"x").is_none());
    }
}

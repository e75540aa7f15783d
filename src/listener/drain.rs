//! Drain: a listener's open connections, and how they are told to stop at shutdown.
//!
//! Each connection registers its task's waker once, when it is first polled, and from then on
//! checks one atomic per poll. hyper-util's graceful watcher plus a cancellation `select!`
//! polled two futures on every wake of every connection, taking a lock each time: about 1,100
//! instructions per proxied request (callgrind, bench/RESULTS.md).
//!
//! Shutdown has two steps: [`Drain::drain`] asks every connection to finish what it is serving
//! and close; [`Drain::abort`] (after the grace period) drops the ones still open.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::sync::Notify;

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const ABORT: u8 = 2;

/// What a connection is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    /// Finish the requests in flight, then close.
    Drain,
    /// Stop now.
    Abort,
}

/// The open connections of one listener.
#[derive(Default)]
pub struct Drain {
    phase: AtomicU8,
    open: Mutex<Open>,
    /// Signalled when the last connection closes after shutdown began.
    closed: Notify,
}

#[derive(Default)]
struct Open {
    /// Waker per registered connection (slot = its id; `None` = free).
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    /// Connections tracked, registered or not.
    count: usize,
}

impl Drain {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Tracks one more connection until the returned guard drops.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.lock().count += 1;
        Tracked {
            drain: self.clone(),
            slot: None,
        }
    }

    /// Asks every connection to finish and close, then waits up to `grace` for them;
    /// connections still open after that are dropped. Returns whether all closed in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.set(DRAIN);
        let all_closed = async {
            loop {
                let closed = self.closed.notified();
                if self.lock().count == 0 {
                    return;
                }
                closed.await;
            }
        };
        let in_time = tokio::time::timeout(grace, all_closed).await.is_ok();
        if !in_time {
            self.set(ABORT);
        }
        in_time
    }

    fn set(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
        // Wakers are taken under the lock: a connection registering after this sees the phase.
        let wakers: Vec<Waker> = self.lock().wakers.iter().flatten().cloned().collect();
        for w in wakers {
            w.wake();
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            RUN => Phase::Run,
            DRAIN => Phase::Drain,
            _ => Phase::Abort,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One tracked connection. Lives as long as the connection's task.
pub struct Tracked {
    drain: Arc<Drain>,
    slot: Option<usize>,
}

impl Tracked {
    /// The phase, registering this task to be woken when it changes (once: a connection is
    /// polled only by its own task, whose waker does not change).
    pub fn poll_phase(&mut self, cx: &mut Context<'_>) -> Phase {
        if self.slot.is_none() {
            let mut open = self.drain.lock();
            let waker = Some(cx.waker().clone());
            let slot = match open.free.pop() {
                Some(i) => {
                    open.wakers[i] = waker;
                    i
                }
                None => {
                    open.wakers.push(waker);
                    open.wakers.len() - 1
                }
            };
            self.slot = Some(slot);
        }
        self.drain.phase()
    }

    /// Runs `fut` until it ends, or until shutdown aborts (`None`). At a drain, `on_drain` is
    /// called once (e.g. hyper's `graceful_shutdown`), and `fut` goes on.
    pub async fn run<F: Future>(
        &mut self,
        fut: F,
        mut on_drain: impl FnMut(Pin<&mut F>),
    ) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut drained = false;
        std::future::poll_fn(|cx| {
            match self.poll_phase(cx) {
                Phase::Abort => return Poll::Ready(None),
                Phase::Drain if !drained => {
                    drained = true;
                    on_drain(fut.as_mut());
                }
                _ => {}
            }
            fut.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut open = self.drain.lock();
        if let Some(i) = self.slot {
            open.wakers[i] = None;
            open.free.push(i);
        }
        open.count -= 1;
        let last = open.count == 0;
        drop(open);
        if last && self.drain.phase() != Phase::Run {
            self.drain.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_drains_then_aborts_what_outlives_the_grace() {
        let drain = Drain::new();
        // A well-behaved connection: closes as soon as it is asked to drain.
        let polite = {
            let mut tracked = drain.track();
            tokio::spawn(async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let mut tx = Some(tx);
                let out = tracked
                    .run(rx, |_| {
                        tx.take();
                    })
                    .await;
                out.map(|r| r.is_err())
            })
        };
        // A stubborn one: ignores the drain, so only the abort ends it.
        let stubborn = {
            let mut tracked = drain.track();
            tokio::spawn(async move { tracked.run(std::future::pending::<()>(), |_| {}).await })
        };
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        assert!(
            !drain.shutdown(Duration::from_millis(200)).await,
            "one connection outlived the grace"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            polite.await.ok(),
            Some(Some(true)),
            "drained: its on_drain ran and it ended by itself"
        );
        assert_eq!(stubborn.await.ok(), Some(None), "aborted");
        assert_eq!(drain.lock().count, 0);
    }

    #[tokio::test]
    async fn shutdown_returns_at_once_when_every_connection_closes() {
        let drain = Drain::new();
        let mut tracked = drain.track();
        let conn = tokio::spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let mut tx = Some(tx);
            tracked.run(rx, |_| drop(tx.take())).await
        });
        tokio::task::yield_now().await;
        assert!(drain.shutdown(Duration::from_secs(30)).await);
        assert!(conn.await.is_ok());
        // A connection tracked after shutdown sees the phase on its first poll.
        let mut late = drain.track();
        let phase = std::future::poll_fn(|cx| Poll::Ready(late.poll_phase(cx))).await;
        assert_eq!(phase, Phase::Drain);
    }
}

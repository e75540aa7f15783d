//! Deadline: a timer that many deadlines in a row can share, each re-arm costing a store.
//!
//! Both HTTP/1 sides of the proxy keep one timer per connection and move it later before each
//! request: the server's header-read timeout (`listener/head_timer.rs`) and the upstream's
//! response-head deadline (`upstream/h1.rs`). With a bare `tokio::time::Sleep` each move converts
//! the deadline to a wheel tick and each poll re-registers the task's waker, a few hundred
//! instructions a request for timers that almost never fire. A [`Deadline`] only records a later
//! deadline. Its tokio timer stays armed at the earlier one; when that comes round the deadline
//! re-arms itself at the recorded one, so it fires late by nothing and goes back to the timer
//! wheel once per timeout period rather than once per request. A poll by the task it is already
//! registered with returns at once.
//!
//! A new connection's first-bytes deadline (`listener/first_bytes.rs`) is one too, set once.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

/// A sleep whose deadline can move later for the price of a store (see the module doc).
pub struct Deadline {
    /// When this sleep completes.
    deadline: Instant,
    /// Armed at `deadline` or earlier, never later.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The waker `timer` was last registered with (by a poll with coop budget left); cleared
    /// when it fires, is re-armed earlier, or [`Deadline::forget_waker`] is called.
    polled_by: Option<Waker>,
}

impl Deadline {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            polled_by: None,
        }
    }

    /// Completes at `deadline` instead. A later deadline (every request's) is only recorded; an
    /// earlier one re-arms the tokio timer so that it is not missed.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.timer.deadline().into_std() {
            self.timer.as_mut().reset(deadline.into());
            self.polled_by = None;
        }
    }

    /// Lets go of the last poller's waker, which keeps that task's memory allocated: for a
    /// deadline that outlives its poller (an upstream connection going back to the pool after
    /// a request's task). tokio's timer holds its own copy only until it fires. The next poll
    /// takes the slow path once.
    pub fn forget_waker(&mut self) {
        self.polled_by = None;
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Armed, and registered with this very task: it will be woken when the timer fires.
        if this
            .polled_by
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
            && !this.timer.is_elapsed()
        {
            return Poll::Pending;
        }
        loop {
            // Out of budget, tokio's poll returns Pending without registering the waker (the task
            // is woken to yield instead): only a poll made with budget left is remembered.
            let budget = tokio::task::coop::has_budget_remaining();
            match this.timer.as_mut().poll(cx) {
                Poll::Pending => {
                    this.polled_by = budget.then(|| cx.waker().clone());
                    return Poll::Pending;
                }
                // Fired at an earlier deadline: re-armed at the one recorded since.
                Poll::Ready(()) if this.timer.deadline().into_std() < this.deadline => {
                    this.timer.as_mut().reset(this.deadline.into());
                }
                Poll::Ready(()) => {
                    this.polled_by = None;
                    return Poll::Ready(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use std::{task::Wake, time::Duration};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A wake counter and its waker.
    fn counted() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (count, waker)
    }

    /// A deadline `secs` after now (paused time), polled once.
    fn armed(secs: u64, waker: &Waker) -> (Instant, Deadline) {
        let start = now();
        let mut sleep = Deadline::new(start + Duration::from_secs(secs));
        assert!(poll(&mut sleep, waker).is_pending());
        (start, sleep)
    }

    /// tokio's (paused) clock, the one the deadlines are measured on.
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn poll(sleep: &mut Deadline, waker: &Waker) -> Poll<()> {
        Pin::new(sleep).poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_and_reached_after_the_first_passes() {
        let (count, waker) = counted();
        let (start, mut sleep) = armed(1, &waker);
        sleep.reset(start + Duration::from_secs(3));
        assert!(poll(&mut sleep, &waker).is_pending());

        // The first deadline passes: the task is woken, the sleep re-arms and is still pending.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(count.wakes(), 1, "woken at the old deadline");
        assert!(poll(&mut sleep, &waker).is_pending(), "not done before 3 s");

        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(poll(&mut sleep, &waker).is_pending(), "not done at 2.5 s");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(count.wakes(), 2, "woken at the new deadline");
        assert!(poll(&mut sleep, &waker).is_ready(), "done after 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_rearms_the_timer() {
        let (count, waker) = counted();
        let (start, mut sleep) = armed(10, &waker);
        sleep.reset(start + Duration::from_secs(1));
        assert!(poll(&mut sleep, &waker).is_pending());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(count.wakes(), 1, "woken at the earlier deadline");
        assert!(poll(&mut sleep, &waker).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_fired_can_be_moved_later_and_fires_again() {
        let (count, waker) = counted();
        let (start, mut sleep) = armed(1, &waker);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(poll(&mut sleep, &waker).is_ready());
        sleep.reset(start + Duration::from_secs(3));
        assert!(
            poll(&mut sleep, &waker).is_pending(),
            "re-armed at the later deadline"
        );
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(count.wakes(), 2, "woken again at 3 s");
        assert!(poll(&mut sleep, &waker).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_out_of_coop_budget_is_not_taken_for_a_registration() {
        let (count, waker) = counted();
        let mut sleep = Deadline::new(now() + Duration::from_secs(1));
        // Spend this task's budget: tokio's timer then answers Pending without registering.
        let mut spent = 0;
        while tokio::task::coop::has_budget_remaining() && spent < 10_000 {
            std::future::poll_fn(|cx| {
                tokio::task::coop::poll_proceed(cx).map(|restore| restore.made_progress())
            })
            .await;
            spent += 1;
        }
        assert!(!tokio::task::coop::has_budget_remaining(), "budget spent");
        assert!(poll(&mut sleep, &waker).is_pending());
        // The same waker again, with budget back: this poll must register it.
        tokio::task::yield_now().await;
        assert!(tokio::task::coop::has_budget_remaining());
        let before = count.wakes(); // the out-of-budget poll's own wake-to-yield
        assert!(poll(&mut sleep, &waker).is_pending());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            count.wakes(),
            before + 1,
            "the timer woke the task at its deadline"
        );
        assert!(poll(&mut sleep, &waker).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn another_task_polling_is_registered_too() {
        let (_, first) = counted();
        let (second_count, second) = counted();
        let (_, mut sleep) = armed(1, &first);
        assert!(poll(&mut sleep, &second).is_pending());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(second_count.wakes(), 1, "the last poller is woken");
        assert!(poll(&mut sleep, &second).is_ready());
    }
}

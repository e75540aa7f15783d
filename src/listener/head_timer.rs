//! Head timer: the [`hyper::rt::Timer`] behind HTTP/1's `header_read_timeout`, cheap to re-arm.
//!
//! hyper (patched, vendor/hyper/PATCHED.md) keeps one header-read timer per connection and resets
//! it to a later deadline before each request head, then polls it whenever the socket has nothing
//! to read. With tokio's timer each reset converts the deadline to a wheel tick and each poll
//! re-registers the task's waker: ~550 instructions a request (callgrind) for a timer that almost
//! never fires. [`HeadSleep`] instead only records a reset's deadline. Its tokio timer stays
//! armed at the earlier deadline; when that comes round the sleep re-arms itself at the recorded
//! one, so it fires late by nothing and re-registers once per timeout period rather than once per
//! request. A poll by the same task while the tokio timer is armed returns at once.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// The HTTP/1 server's timer (`http1().timer(HeadTimer)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadTimer;

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep::new(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(head) => head.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A sleep whose deadline can move for the price of a store (see the module doc).
pub struct HeadSleep {
    /// When this sleep completes.
    deadline: Instant,
    /// Armed at `deadline` or earlier, never later.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The waker `timer` was last polled with, while it is armed.
    polled_by: Option<Waker>,
}

impl HeadSleep {
    fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            polled_by: None,
        }
    }

    /// Completes at `deadline` instead. A later deadline (every request's) is only recorded; an
    /// earlier one re-arms the tokio timer so that it is not missed.
    fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.timer.deadline().into_std() {
            self.timer.as_mut().reset(deadline.into());
            self.polled_by = None;
        }
    }
}

impl Future for HeadSleep {
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

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use std::task::Wake;

    use hyper::rt::Timer;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, waker: &Waker) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_and_reached_after_the_first_passes() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let start = Instant::now();
        let mut sleep = HeadTimer.sleep_until(start + Duration::from_secs(1));
        assert!(poll(&mut sleep, &waker).is_pending());
        HeadTimer.reset(&mut sleep, start + Duration::from_secs(3));
        assert!(poll(&mut sleep, &waker).is_pending());

        // The first deadline passes: the task is woken, the sleep re-arms and is still pending.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken at the old deadline"
        );
        assert!(poll(&mut sleep, &waker).is_pending(), "not done before 3 s");

        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(poll(&mut sleep, &waker).is_pending(), "not done at 2.5 s");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            2,
            "woken at the new deadline"
        );
        assert!(poll(&mut sleep, &waker).is_ready(), "done after 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_rearms_the_timer() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let start = Instant::now();
        let mut sleep = HeadTimer.sleep_until(start + Duration::from_secs(10));
        assert!(poll(&mut sleep, &waker).is_pending());
        HeadTimer.reset(&mut sleep, start + Duration::from_secs(1));
        assert!(poll(&mut sleep, &waker).is_pending());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken at the earlier deadline"
        );
        assert!(poll(&mut sleep, &waker).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn another_task_polling_is_registered_too() {
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        let start = Instant::now();
        let mut sleep = HeadTimer.sleep_until(start + Duration::from_secs(1));
        assert!(poll(&mut sleep, &Waker::from(first.clone())).is_pending());
        assert!(poll(&mut sleep, &Waker::from(second.clone())).is_pending());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the last poller is woken"
        );
        assert!(poll(&mut sleep, &Waker::from(second.clone())).is_ready());
    }
}

//! Head timer: the [`hyper::rt::Timer`] behind HTTP/1's `header_read_timeout`, cheap to re-arm.
//!
//! hyper (patched, vendor/hyper/PATCHED.md) keeps one header-read timer per connection, resets it
//! to a later deadline and polls it once when the connection goes idle after a response, then
//! polls it while it waits for the next head.
//! With tokio's timer (hyper-util's `TokioTimer`) that reset and poll cost about 150 more
//! instructions a request (callgrind, 40–220 between runs) than this timer, which hands hyper a
//! [`Deadline`], whose later re-arm is a store.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use crate::deadline::Deadline;

/// The HTTP/1 server's timer (`http1().timer(HeadTimer)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadTimer;

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, as hyper-util's `TokioTimer` (the same instant, except under tokio's
    /// paused test time).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::new(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(head) => head.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use hyper::rt::Timer;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hyper_gets_a_deadline_that_it_can_move() {
        let start = HeadTimer.now();
        let mut sleep = HeadTimer.sleep_until(start + Duration::from_secs(1));
        HeadTimer.reset(&mut sleep, start + Duration::from_secs(2));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(sleep.as_mut().poll(&mut cx).is_pending(), "moved to 2 s");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
    }
}

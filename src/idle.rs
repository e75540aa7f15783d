//! Idle: ends an upstream response body that goes silent mid-stream (`idle_stream_timeout_ms`).
//!
//! Owns [`IdleGuard`], the response body the app receives from an upstream. It returns every
//! frame unchanged; when the upstream sends nothing for longer than the limit it tells the tap
//! (the span becomes `error` with `error.type = "upstream_idle_timeout"`), drops the upstream
//! body (closing that connection) and ends the app's body:
//! - an event stream (`text/event-stream`) ends **cleanly** after one last event,
//!   `event: error` + `data: {"type":"error","error":{…,"code":"upstream_idle_timeout"}}`. The
//!   OpenAI SDKs raise an `APIError` for a `data` object with an `error` key, and the Anthropic
//!   SDK for an `event: error`, so the app gets a typed error rather than a silently short answer;
//! - any other body cannot end cleanly without looking complete (a cut JSON body would parse as a
//!   different answer), so it fails: HTTP/1.1 closes the connection, h2 resets the stream.
//!
//! Hot path: no clock read per frame. A silence starts at the first poll that finds nothing
//! after a frame (microseconds after it, or later if the app reads slowly and hyper polls late:
//! then the upstream is not the one holding things up). The timer is armed lazily, at the first
//! silence, and re-armed only when it fires early. A body that is already complete when first
//! polled (most JSON answers) never reads the clock.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::tap::TapBody;

/// `error.type` of a span whose upstream went silent, and the code in the error event.
pub const IDLE_TIMEOUT_KIND: &str = "upstream_idle_timeout";

/// The error an app's non-stream body fails with when the upstream went silent.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} mid-body (idle_stream_timeout_ms)")]
pub struct IdleTimeout(pub Duration);

/// Boxed so the proxy's body can carry both hyper's errors and [`IdleTimeout`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tapped upstream body with an idle limit.
pub struct IdleGuard<B: 'static> {
    inner: TapBody<B>,
    /// `None`: no limit (`idle_stream_timeout_ms = 0`).
    limit: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the current silence began; `None` right after a frame.
    silent_since: Option<Instant>,
    /// The body is an event stream: end it with an error event instead of failing it.
    sse: bool,
    state: State,
}

enum State {
    Open,
    /// Timed out (after the error event, for a stream): only the end is left.
    Done,
}

impl<B> IdleGuard<B>
where
    B: Body<Data = Bytes> + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    pub fn new(inner: TapBody<B>, limit: Option<Duration>, sse: bool) -> Self {
        Self {
            inner,
            limit,
            sleep: None,
            silent_since: None,
            sse,
            state: State::Open,
        }
    }

    /// The limit passed with nothing from the upstream: records it and ends the app's body.
    fn time_out(&mut self, limit: Duration) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let ms = limit.as_millis();
        let message = format!(
            "upstream sent nothing for {ms} ms mid-stream; the proxy ended the response \
             (idle_stream_timeout_ms = {ms})"
        );
        self.inner.fail(IDLE_TIMEOUT_KIND, message.clone());
        self.sleep = None;
        self.state = State::Done;
        if self.sse {
            return Poll::Ready(Some(Ok(Frame::data(error_event(&message)))));
        }
        Poll::Ready(Some(Err(Box::new(IdleTimeout(limit)))))
    }
}

/// The last event of a stream the proxy ended: one shape that both the OpenAI SDKs (a `data`
/// object with an `error` key) and the Anthropic SDK (`event: error`) raise as an error.
pub fn error_event(message: &str) -> Bytes {
    let data = serde_json::json!({
        "type": "error",
        "error": {
            "type": "api_error",
            "code": IDLE_TIMEOUT_KIND,
            "message": message,
            "param": null,
        }
    });
    Bytes::from(format!("\n\nevent: error\ndata: {data}\n\n"))
}

impl<B> Body for IdleGuard<B>
where
    B: Body<Data = Bytes> + Unpin + 'static,
    B::Error: std::fmt::Display + Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let State::Done = this.state {
            return Poll::Ready(None);
        }
        if let Poll::Ready(polled) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.silent_since = None;
            return Poll::Ready(polled.map(|r| r.map_err(Into::into)));
        }
        let Some(limit) = this.limit else {
            return Poll::Pending;
        };
        let deadline = *this.silent_since.get_or_insert_with(Instant::now) + limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        // At most twice: a timer armed for an older deadline fires early once, is moved to the
        // current one, and is then pending (or due).
        for _ in 0..2 {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return this.time_out(limit);
            }
            sleep.as_mut().reset(deadline.into());
        }
        // Not reached in practice; poll again rather than wait without a wake-up.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Open => self.inner.is_end_stream(),
            State::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Open => self.inner.size_hint(),
            State::Done => SizeHint::with_exact(0),
        }
    }
}

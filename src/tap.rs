//! Tap: observe body frames on their way through, without delaying them.
//!
//! Owns [`TapBody`], [`Captured`] and [`CallRecord`] (the hand-off to the cold path). Must not
//! parse, await, or touch the store: anything costlier than a refcount bump belongs in `span`.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::propagate::TraceContext;

/// How a body's life ended, as the tap saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Complete,
    /// The body failed (upstream reset, client reset while uploading).
    Error,
    /// Dropped before its end: the client went away, or the request was abandoned.
    Cancelled,
}

/// Most chunk arrival marks kept per body; beyond it only the count grows.
const MAX_MARKS: usize = 100_000;

/// What the tap kept of one body. Chunks are `Bytes` clones (refcounts), never copies.
#[derive(Debug, Default)]
pub struct Captured {
    pub chunks: Vec<Bytes>,
    /// Bytes kept in `chunks` (≤ the cap).
    pub kept: usize,
    /// Bytes that passed through in total.
    pub seen: u64,
    /// Data frames that passed through.
    pub frames: u32,
    pub truncated: bool,
    pub first_byte_at: Option<Instant>,
    /// For each data frame: (total bytes seen after it, when it arrived). Lets the span builder
    /// say when a given SSE event reached the proxy (TTFT, per-chunk timing).
    pub marks: Vec<(u64, Instant)>,
    pub end: Option<End>,
    /// The body error's text when `end == Some(End::Error)`.
    pub error: Option<String>,
}

impl Captured {
    /// The kept bytes as one buffer.
    pub fn bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut buf = Vec::with_capacity(self.kept);
                for c in many {
                    buf.extend_from_slice(c);
                }
                Bytes::from(buf)
            }
        }
    }
}

/// A body wrapper that returns every frame unchanged and reports what it saw exactly once:
/// at the end, on error, or when dropped early.
pub struct TapBody<B> {
    /// Always `Some` until drop (an `Option` only so `Drop` can hand it to `salvage`).
    inner: Option<B>,
    limit: usize,
    captured: Captured,
    report: Option<oneshot::Sender<Captured>>,
    /// When set, a body dropped before its end hands its unread rest here, so the recorder can
    /// still capture a request the upstream never read (e.g. connection refused).
    salvage: Option<oneshot::Sender<B>>,
}

impl<B: Body<Data = Bytes> + Unpin> TapBody<B>
where
    B::Error: std::fmt::Display,
{
    /// Wraps `inner`, keeping at most `limit` bytes; the receiver gets the capture once.
    pub fn new(inner: B, limit: usize) -> (Self, oneshot::Receiver<Captured>) {
        let (tx, rx) = oneshot::channel();
        let mut tap = Self {
            inner: Some(inner),
            limit,
            captured: Captured::default(),
            report: Some(tx),
            salvage: None,
        };
        // NB: hyper may never poll an empty body, so report it now or it would look cancelled.
        if tap.inner.as_ref().is_some_and(Body::is_end_stream) {
            tap.finish(End::Complete);
        }
        (tap, rx)
    }

    /// Like [`TapBody::new`], and if the body is dropped before its end, its unread rest is sent
    /// to the second receiver.
    pub fn salvageable(
        inner: B,
        limit: usize,
    ) -> (Self, oneshot::Receiver<Captured>, oneshot::Receiver<B>) {
        let (mut tap, report) = Self::new(inner, limit);
        let (tx, rx) = oneshot::channel();
        if tap.report.is_some() {
            tap.salvage = Some(tx);
        }
        (tap, report, rx)
    }

    /// Wraps `inner` without observing it (capture off): one type for both modes.
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner: Some(inner),
            limit: 0,
            captured: Captured::default(),
            report: None,
            salvage: None,
        }
    }
}

impl<B> TapBody<B> {
    /// Called once per data frame, on the connection's task; must return without awaiting.
    fn observe(&mut self, data: &Bytes) {
        let now = Instant::now();
        let c = &mut self.captured;
        c.first_byte_at.get_or_insert(now);
        c.seen += data.len() as u64;
        c.frames = c.frames.saturating_add(1);
        if c.marks.len() < MAX_MARKS {
            c.marks.push((c.seen, now));
        }
        let room = self.limit.saturating_sub(c.kept);
        if room > 0 && !data.is_empty() {
            let keep = data.slice(..room.min(data.len())); // O(1): shares the buffer
            c.kept += keep.len();
            c.chunks.push(keep);
        }
        c.truncated |= data.len() > room;
    }

    fn finish(&mut self, end: End) {
        self.salvage = None;
        if let Some(tx) = self.report.take() {
            let mut captured = std::mem::take(&mut self.captured);
            captured.end = Some(end);
            // Receiver gone = nobody records this call; never the app's problem.
            let _ = tx.send(captured);
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(inner).poll_frame(cx));
        if self.report.is_some() {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.observe(data);
                    }
                    if self.inner.as_ref().is_some_and(Body::is_end_stream) {
                        self.finish(End::Complete);
                    }
                }
                Some(Err(e)) => {
                    self.captured.error = Some(e.to_string());
                    self.finish(End::Error);
                }
                None => self.finish(End::Complete),
            }
        }
        Poll::Ready(polled) // the frame goes out exactly as it came in
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // Keeps Content-Length intact.
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

// === impl Drop ===

impl<B> Drop for TapBody<B> {
    /// The client hung up (or hyper dropped the body) before the end: the span says "cancelled".
    fn drop(&mut self) {
        if self.report.is_some() {
            if let (Some(tx), Some(inner)) = (self.salvage.take(), self.inner.take()) {
                let _ = tx.send(inner);
            }
        }
        self.finish(End::Cancelled);
    }
}

/// Everything the cold path needs to build one span. Built by `forward`, assembled by `span`.
#[derive(Debug)]
pub struct CallRecord {
    pub ctx: TraceContext,
    pub method: String,
    /// Path and query as the app sent them.
    pub path: String,
    /// Path (no query) as forwarded upstream, after `strip_prefix`: what identifies the operation.
    pub upstream_path: String,
    /// Upstream base URL of the route.
    pub upstream: String,
    /// The route's provider, if the config named one (e.g. `anthropic`).
    pub provider_hint: Option<String>,
    pub request_content_type: Option<String>,
    pub request_content_encoding: Option<String>,
    pub response_content_type: Option<String>,
    pub response_content_encoding: Option<String>,
    /// Upstream status; `None` when no response head arrived.
    pub status: Option<u16>,
    pub started: SystemTime,
    pub started_at: Instant,
    /// When the response head arrived (or the proxy gave up).
    pub head_at: Option<Instant>,
    /// When the record was finalised (both bodies reported).
    pub ended_at: Instant,
    pub request: Option<Captured>,
    pub response: Option<Captured>,
    /// A failure the proxy itself saw (connect, TLS, timeout): (type, message).
    pub proxy_error: Option<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

    fn stream(parts: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn frames_pass_through_unchanged_and_are_reported_once() {
        let (tap, rx) = TapBody::new(stream(&["data: a\n\n", "data: b\n\n"]), 1024);
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(
            &out[..],
            b"data: a\n\ndata: b\n\n",
            "the client sees the bytes as they came"
        );
        let c = rx.await.unwrap();
        assert_eq!(c.end, Some(End::Complete));
        assert_eq!(c.frames, 2);
        assert_eq!(c.marks.len(), 2, "each frame's arrival is marked");
        assert_eq!(&c.bytes()[..], &out[..]);
        assert!(!c.truncated);
    }

    #[tokio::test]
    async fn the_cap_truncates_the_copy_but_not_the_stream() {
        let (tap, rx) = TapBody::new(stream(&["12345", "67890"]), 7);
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(
            &out[..],
            b"1234567890",
            "capping the copy never shortens what the client gets"
        );
        let c = rx.await.unwrap();
        assert_eq!(&c.bytes()[..], b"1234567");
        assert!(c.truncated, "a capped copy says so");
        assert_eq!(c.seen, 10);
    }

    #[tokio::test]
    async fn dropping_early_reports_cancelled_with_the_partial_copy() {
        let (mut tap, rx) = TapBody::new(stream(&["first", "second"]), 1024);
        let _ = tap.frame().await;
        drop(tap);
        let c = rx.await.unwrap();
        assert_eq!(
            c.end,
            Some(End::Cancelled),
            "a body dropped before its end is cancelled"
        );
        assert_eq!(&c.bytes()[..], b"first");
    }

    #[tokio::test]
    async fn an_unread_salvageable_body_hands_over_its_rest() {
        let (tap, rx, salvage) = TapBody::salvageable(stream(&["never", "read"]), 1024);
        drop(tap);
        assert_eq!(rx.await.unwrap().end, Some(End::Cancelled));
        let rest = salvage.await.expect("the unread body is handed over");
        let bytes = rest.collect().await.unwrap().to_bytes();
        assert_eq!(
            &bytes[..],
            b"neverread",
            "nothing of the unread body is lost"
        );
    }

    #[tokio::test]
    async fn an_empty_body_reports_complete_when_built() {
        let (_tap, rx) = TapBody::new(Full::new(Bytes::new()), 1024);
        let c = rx.await.unwrap();
        assert_eq!(
            c.end,
            Some(End::Complete),
            "an empty body hyper never polls is still complete"
        );
    }
}

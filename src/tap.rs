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
    inner: B,
    limit: usize,
    captured: Captured,
    report: Option<oneshot::Sender<Captured>>,
}

impl<B: Body<Data = Bytes> + Unpin> TapBody<B>
where
    B::Error: std::fmt::Display,
{
    /// Wraps `inner`, keeping at most `limit` bytes; the receiver gets the capture once.
    pub fn new(inner: B, limit: usize) -> (Self, oneshot::Receiver<Captured>) {
        let (tx, rx) = oneshot::channel();
        let mut tap = Self {
            inner,
            limit,
            captured: Captured::default(),
            report: Some(tx),
        };
        // NB: hyper may never poll an empty body, so report it now or it would look cancelled.
        if tap.inner.is_end_stream() {
            tap.finish(End::Complete);
        }
        (tap, rx)
    }

    /// Wraps `inner` without observing it (capture off): one type for both modes.
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner,
            limit: 0,
            captured: Captured::default(),
            report: None,
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
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if self.report.is_some() {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.observe(data);
                    }
                    if self.inner.is_end_stream() {
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint() // keeps Content-Length intact
    }
}

// === impl Drop ===

impl<B> Drop for TapBody<B> {
    /// The client hung up (or hyper dropped the body) before the end: the span says "cancelled".
    fn drop(&mut self) {
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

    fn stream(parts: &[&'static str]) -> StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>> {
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
        assert_eq!(&out[..], b"data: a\n\ndata: b\n\n", "the client sees the bytes as they came");
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
        assert_eq!(&out[..], b"1234567890", "capping the copy never shortens what the client gets");
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
        assert_eq!(c.end, Some(End::Cancelled), "a body dropped before its end is cancelled");
        assert_eq!(&c.bytes()[..], b"first");
    }

    #[tokio::test]
    async fn an_empty_body_reports_complete_when_built() {
        let (_tap, rx) = TapBody::new(Full::new(Bytes::new()), 1024);
        let c = rx.await.unwrap();
        assert_eq!(c.end, Some(End::Complete), "an empty body hyper never polls is still complete");
    }
}

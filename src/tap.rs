//! Tap: observe body frames on their way through, without delaying them.
//!
//! Owns [`TapBody`], [`Captured`] (charged to the global [`CaptureBudget`] while it lives), and
//! [`CallRecord`] (the hand-off to the cold path). Must not parse, await, or touch the store: anything costlier than a refcount
//! bump belongs in `span`.

use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::{Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

pub use crate::metrics::CaptureBudget;
use crate::{propagate::TraceContext, route::Route};

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

/// What a frame's arrival mark costs the [`CaptureBudget`].
const MARK_COST: usize = std::mem::size_of::<(u64, Instant)>();

/// First block of a body's copy when its length is not known.
const MIN_COPY: usize = 512;
/// Largest block: blocks double from `MIN_COPY` up to this, then stay this size.
const BLOCK: usize = 16 * 1024;

/// What the tap kept of one body.
///
/// The kept bytes are *copied* (a memcpy per frame) into blocks, not held as `Bytes` slices of
/// the connection's read buffer: a slice keeps that whole buffer (8 KiB and more, for a frame of
/// a few hundred bytes) alive until the span is assembled, so memory would grow with the number
/// of frames rather than their size. A body of known length gets one block of exactly that size;
/// a stream gets blocks doubling from 512 bytes to 16 KiB, never reallocated (uniform sizes that
/// the allocator reuses, where one ever-doubling buffer fragments the heap).
#[derive(Debug, Default)]
pub struct Captured {
    /// The kept bytes; one buffer once the tap has reported.
    pub chunks: Vec<Bytes>,
    /// Bytes kept in `chunks` (≤ the cap).
    pub kept: usize,
    /// Bytes that passed through in total.
    pub seen: u64,
    /// Data frames that passed through.
    pub frames: u32,
    /// The copy is incomplete: over the per-body cap, or the global capture budget ran out.
    pub truncated: bool,
    pub first_byte_at: Option<Instant>,
    /// For each data frame: (total bytes seen after it, when it arrived). Lets the span builder
    /// say when a given SSE event reached the proxy (TTFT, per-chunk timing).
    pub marks: Vec<(u64, Instant)>,
    pub end: Option<End>,
    /// The body error's text when `end == Some(End::Error)`.
    pub error: Option<String>,
    /// The span's `error.type` for that error when the proxy itself ended the body (e.g.
    /// `upstream_idle_timeout`); `None` = the body failed on its own (`upstream_body_error`).
    pub error_kind: Option<&'static str>,
    /// What this copy holds of the global capture budget; given back when it is dropped.
    pub charge: Charge,
    /// The block being filled; moved into `chunks` when full or when the tap reports.
    buf: BytesMut,
    /// `buf`'s capacity (charged to the budget).
    block: usize,
}

impl Captured {
    /// Nothing captured; the body ended this way (e.g. no response ever came: cancelled).
    pub fn ended(end: End) -> Self {
        Self {
            end: Some(end),
            ..Self::default()
        }
    }

    /// The kept bytes as one buffer.
    pub fn bytes(&self) -> Bytes {
        match (self.chunks.as_slice(), self.buf.is_empty()) {
            ([], true) => Bytes::new(),
            ([one], true) => one.clone(),
            (many, _) => {
                let mut buf = Vec::with_capacity(self.kept);
                for c in many {
                    buf.extend_from_slice(c);
                }
                buf.extend_from_slice(&self.buf);
                Bytes::from(buf)
            }
        }
    }

    /// Keeps one frame of data (as much of it as `limit` and the budget allow) and marks its
    /// arrival. `total` is the body's exact length when known (sizes the copy once). Called once
    /// per data frame, on the connection's task; never awaits.
    fn observe(
        &mut self,
        data: &Bytes,
        limit: usize,
        total: Option<u64>,
        budget: Option<&Arc<CaptureBudget>>,
    ) {
        let now = Instant::now();
        self.first_byte_at.get_or_insert(now);
        self.seen += data.len() as u64;
        self.frames = self.frames.saturating_add(1);
        if self.marks.len() < MAX_MARKS {
            if let Some(budget) = budget {
                if self.marks.len() == self.marks.capacity() {
                    // Marks grow by doubling too; charge the growth, never refuse it (timing
                    // is small and needed for TTFT).
                    let grow = self.marks.capacity().max(4) * MARK_COST;
                    self.charge.force(budget, grow);
                }
            }
            self.marks.push((self.seen, now));
        }
        let room = limit.saturating_sub(self.kept);
        if room == 0 || data.is_empty() {
            self.truncated |= !data.is_empty();
            return;
        }
        let keep = room.min(data.len());
        let mut rest = &data[..keep];
        while !rest.is_empty() {
            if self.buf.len() == self.block {
                // A new block: the body's exact size for the first one when known, else
                // doubling from MIN_COPY up to BLOCK. Never beyond the per-body cap.
                let first = self.buf.is_empty() && self.chunks.is_empty();
                let size = match total {
                    Some(t) if first => usize::try_from(t).unwrap_or(usize::MAX),
                    _ => (self.block * 2).clamp(MIN_COPY, BLOCK),
                };
                let size = size.min(limit - self.kept).max(rest.len().min(BLOCK));
                if let Some(budget) = budget {
                    if !self.charge.take(budget, size) {
                        // Over the global budget: forward everything, keep nothing more.
                        self.truncated = true;
                        return;
                    }
                }
                if !self.buf.is_empty() {
                    self.chunks.push(std::mem::take(&mut self.buf).freeze());
                }
                self.buf = BytesMut::with_capacity(size);
                self.block = size;
            }
            let n = (self.block - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            self.kept += n;
            rest = &rest[n..];
        }
        self.truncated |= data.len() > room;
    }

    /// Moves the last block into `chunks`.
    fn seal(&mut self) {
        if !self.buf.is_empty() {
            self.chunks.push(std::mem::take(&mut self.buf).freeze());
        }
        self.block = 0;
    }
}

// === impl Charge ===

/// The part of a [`CaptureBudget`] one capture holds. Released on drop.
#[derive(Debug, Default)]
pub struct Charge {
    held: Option<(Arc<CaptureBudget>, usize)>,
}

impl Charge {
    fn take(&mut self, budget: &Arc<CaptureBudget>, n: usize) -> bool {
        if !budget.try_charge(n) {
            return false;
        }
        match &mut self.held {
            Some((_, held)) => *held += n,
            None => self.held = Some((budget.clone(), n)),
        }
        true
    }

    /// Charges `n` bytes whether or not they fit (small bookkeeping the tap cannot refuse).
    fn force(&mut self, budget: &Arc<CaptureBudget>, n: usize) {
        budget.force_charge(n);
        match &mut self.held {
            Some((_, held)) => *held += n,
            None => self.held = Some((budget.clone(), n)),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |(_, n)| *n)
    }

    /// Adds `other`'s hold to this one (both from the same budget).
    pub fn absorb(&mut self, mut other: Charge) {
        if let Some((budget, n)) = other.held.take() {
            match &mut self.held {
                Some((_, held)) => *held += n,
                None => self.held = Some((budget, n)),
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((budget, n)) = self.held.take() {
            budget.release(n);
        }
    }
}

// === Observer ===

/// Which body of a call a tap watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// Receives a tap's one report. Called on the task that polled or dropped the body, so it must
/// return without awaiting.
pub trait Observer<B>: Send + Sync + 'static {
    fn report(&self, side: Side, captured: Captured);

    /// The body was dropped before its end and the tap was built with `salvage`: `rest` is the
    /// unread remainder (e.g. an upload the upstream never read). By default it is dropped.
    fn abandoned(&self, side: Side, captured: Captured, rest: B) {
        drop(rest);
        self.report(side, captured);
    }

    /// The global capture budget, if any.
    fn budget(&self) -> Option<&Arc<CaptureBudget>> {
        None
    }
}

// === impl TapBody ===

/// A body wrapper that returns every frame unchanged and reports what it saw exactly once:
/// at the end, on error, or when dropped early.
pub struct TapBody<B: 'static> {
    /// Always `Some` until drop (an `Option` only so `Drop` can hand the rest to `abandoned`).
    inner: Option<B>,
    limit: usize,
    captured: Captured,
    /// `None` when passing through (capture off) or once reported.
    observer: Option<(Arc<dyn Observer<B>>, Side)>,
    salvage: bool,
}

impl<B: Body<Data = Bytes> + Unpin + 'static> TapBody<B>
where
    B::Error: std::fmt::Display,
{
    /// Wraps `inner`, keeping at most `limit` bytes; `observer` gets the capture once. With
    /// `salvage`, a body dropped before its end hands its unread rest to
    /// [`Observer::abandoned`].
    pub fn new(
        inner: B,
        limit: usize,
        observer: Arc<dyn Observer<B>>,
        side: Side,
        salvage: bool,
    ) -> Self {
        let mut tap = Self {
            inner: Some(inner),
            limit,
            captured: Captured::default(),
            observer: Some((observer, side)),
            salvage,
        };
        // NB: hyper may never poll an empty body, so report it now or it would look cancelled.
        if tap.inner.as_ref().is_some_and(Body::is_end_stream) {
            tap.finish(End::Complete);
        }
        tap
    }

    /// Wraps `inner` without observing it (capture off): one type for both modes.
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner: Some(inner),
            limit: 0,
            captured: Captured::default(),
            observer: None,
            salvage: false,
        }
    }
}

impl<B: 'static> TapBody<B> {
    /// The proxy ends this body itself (e.g. the upstream went silent): reports it as an error
    /// of `kind` and drops the inner body (closing its connection). Later polls give the end.
    pub fn fail(&mut self, kind: &'static str, message: String) {
        self.captured.error = Some(message);
        self.captured.error_kind = Some(kind);
        self.finish(End::Error);
        self.inner = None;
    }

    fn finish(&mut self, end: End) {
        if let Some((observer, side)) = self.observer.take() {
            let mut captured = std::mem::take(&mut self.captured);
            captured.seal();
            captured.end = Some(end);
            observer.report(side, captured);
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(inner).poll_frame(cx));
        if let Some((observer, _)) = &this.observer {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        // The body's exact length when known (Content-Length): sizes the copy once.
                        let total = this.inner.as_ref().and_then(|b| b.size_hint().exact());
                        let total = total.map(|rest| rest + this.captured.seen + data.len() as u64);
                        this.captured
                            .observe(data, this.limit, total, observer.budget());
                    }
                    if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                        this.finish(End::Complete);
                    }
                }
                Some(Err(e)) => {
                    this.captured.error = Some(e.to_string());
                    this.finish(End::Error);
                }
                None => this.finish(End::Complete),
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

impl<B: 'static> Drop for TapBody<B> {
    /// The client hung up (or hyper dropped the body) before the end: the span says "cancelled".
    fn drop(&mut self) {
        if self.salvage {
            if let (Some((observer, side)), Some(inner)) = (self.observer.take(), self.inner.take())
            {
                let mut captured = std::mem::take(&mut self.captured);
                captured.seal();
                captured.end = Some(End::Cancelled);
                observer.abandoned(side, captured, inner);
                return;
            }
        }
        self.finish(End::Cancelled);
    }
}

/// Reads the rest of an abandoned body into `captured` (off the hot path, on a task of its own),
/// bounded by the per-body `limit` and the budget, and seals the copy. Returns whether the body
/// reached its end.
pub async fn drain_into<B>(
    captured: &mut Captured,
    mut rest: B,
    limit: usize,
    budget: Option<&Arc<CaptureBudget>>,
) -> bool
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let ended = loop {
        match rest.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    captured.observe(data, limit, None, budget);
                }
            }
            Some(Err(_)) => break false,
            None => break true,
        }
    };
    captured.seal();
    ended
}

/// One finished call as the hot path hands it over: cheap handles only (refcounted URI and
/// header values, the route's `Arc`), so that finishing a call allocates nothing. The writer
/// turns it into a [`CallRecord`] on a blocking thread.
#[derive(Debug)]
pub struct RawCall {
    pub ctx: TraceContext,
    pub method: http::Method,
    /// Path and query as the app sent them (copied: see [`detach`]).
    pub path_and_query: String,
    /// `None` when no route matched.
    pub route: Option<Arc<Route>>,
    pub request_content_type: Option<http::HeaderValue>,
    pub request_content_encoding: Option<http::HeaderValue>,
    pub response_content_type: Option<http::HeaderValue>,
    pub response_content_encoding: Option<http::HeaderValue>,
    pub status: Option<http::StatusCode>,
    pub started: SystemTime,
    pub started_at: Instant,
    pub head_at: Option<Instant>,
    pub ended_at: Instant,
    pub request: Option<Captured>,
    pub response: Option<Captured>,
    pub proxy_error: Option<(String, String)>,
}

impl RawCall {
    /// The owned form `span::assemble` takes. Cold path.
    pub fn into_record(self) -> CallRecord {
        let text =
            |v: Option<http::HeaderValue>| v.and_then(|v| v.to_str().ok().map(str::to_string));
        let path = self
            .path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(path, _)| path);
        let upstream_path = match &self.route {
            Some(r) => r.upstream_path(path),
            None => path.to_string(),
        };
        let app_path = self.path_and_query;
        CallRecord {
            method: self.method.to_string(),
            path: app_path,
            upstream_path,
            upstream: self
                .route
                .as_ref()
                .map(|r| r.upstream_base.clone())
                .unwrap_or_default(),
            provider_hint: self.route.as_ref().and_then(|r| r.config.provider.clone()),
            request_content_type: text(self.request_content_type),
            request_content_encoding: text(self.request_content_encoding),
            response_content_type: text(self.response_content_type),
            response_content_encoding: text(self.response_content_encoding),
            status: self.status.map(|s| s.as_u16()),
            ctx: self.ctx,
            started: self.started,
            started_at: self.started_at,
            head_at: self.head_at,
            ended_at: self.ended_at,
            request: self.request,
            response: self.response,
            proxy_error: self.proxy_error,
        }
    }
}

/// A header value the call keeps until its span is built, detached from the connection: hyper's
/// header values (and URIs) are slices of the connection's read buffer, and keeping one would
/// keep that whole buffer (8 KiB or more) alive while the call waits in the queue. Common values
/// become static ones (no allocation); others are copied.
pub fn detach(v: &http::HeaderValue) -> http::HeaderValue {
    const COMMON: [&str; 8] = [
        "application/json",
        "application/json; charset=utf-8",
        "text/event-stream",
        "text/event-stream; charset=utf-8",
        "text/plain; charset=utf-8",
        "gzip",
        "br",
        "deflate",
    ];
    let bytes = v.as_bytes();
    for c in COMMON {
        if bytes.eq_ignore_ascii_case(c.as_bytes()) {
            return http::HeaderValue::from_static(c);
        }
    }
    http::HeaderValue::from_bytes(bytes).unwrap_or_else(|_| v.clone())
}

/// Everything the cold path needs to build one span, owned. Made from a [`RawCall`] by the
/// writer (off the runtime threads), assembled by `span`.
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
    use std::{convert::Infallible, sync::Mutex};

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

    fn stream(parts: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// Collects what the tap reports, and the rest of an abandoned body.
    #[derive(Default)]
    struct Seen<B> {
        reports: Mutex<Vec<(Side, Captured)>>,
        rest: Mutex<Option<B>>,
        budget: Option<Arc<CaptureBudget>>,
    }

    impl<B: Send + 'static> Observer<B> for Seen<B> {
        fn report(&self, side: Side, captured: Captured) {
            self.reports.lock().unwrap().push((side, captured));
        }
        fn abandoned(&self, side: Side, captured: Captured, rest: B) {
            *self.rest.lock().unwrap() = Some(rest);
            self.report(side, captured);
        }
        fn budget(&self) -> Option<&Arc<CaptureBudget>> {
            self.budget.as_ref()
        }
    }

    impl<B> Seen<B> {
        fn only(&self) -> Captured {
            let mut reports = self.reports.lock().unwrap();
            assert_eq!(reports.len(), 1, "a tap reports exactly once");
            reports.pop().unwrap().1
        }
    }

    fn seen<B: Send + 'static>() -> Arc<Seen<B>> {
        Arc::new(Seen {
            reports: Mutex::new(Vec::new()),
            rest: Mutex::new(None),
            budget: None,
        })
    }

    #[tokio::test]
    async fn frames_pass_through_unchanged_and_are_reported_once() {
        let obs = seen();
        let tap = TapBody::new(
            stream(&["data: a\n\n", "data: b\n\n"]),
            1024,
            obs.clone(),
            Side::Response,
            false,
        );
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(
            &out[..],
            b"data: a\n\ndata: b\n\n",
            "the client sees the bytes as they came"
        );
        let c = obs.only();
        assert_eq!(c.end, Some(End::Complete));
        assert_eq!(c.frames, 2);
        assert_eq!(c.marks.len(), 2, "each frame's arrival is marked");
        assert_eq!(&c.bytes()[..], &out[..]);
        assert!(!c.truncated);
    }

    #[tokio::test]
    async fn the_cap_truncates_the_copy_but_not_the_stream() {
        let obs = seen();
        let tap = TapBody::new(
            stream(&["12345", "67890"]),
            7,
            obs.clone(),
            Side::Response,
            false,
        );
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(
            &out[..],
            b"1234567890",
            "capping the copy never shortens what the client gets"
        );
        let c = obs.only();
        assert_eq!(&c.bytes()[..], b"1234567");
        assert!(c.truncated, "a capped copy says so");
        assert_eq!(c.seen, 10);
    }

    #[tokio::test]
    async fn dropping_early_reports_cancelled_with_the_partial_copy() {
        let obs = seen();
        let mut tap = TapBody::new(
            stream(&["first", "second"]),
            1024,
            obs.clone(),
            Side::Response,
            false,
        );
        let _ = tap.frame().await;
        drop(tap);
        let c = obs.only();
        assert_eq!(
            c.end,
            Some(End::Cancelled),
            "a body dropped before its end is cancelled"
        );
        assert_eq!(&c.bytes()[..], b"first");
    }

    #[tokio::test]
    async fn an_unread_salvageable_body_hands_over_its_rest() {
        let obs = seen();
        let tap = TapBody::new(
            stream(&["never", "read"]),
            1024,
            obs.clone(),
            Side::Request,
            true,
        );
        drop(tap);
        let c = obs.only();
        assert_eq!(c.end, Some(End::Cancelled));
        let rest = obs.rest.lock().unwrap().take();
        let rest = rest.expect("the unread body is handed over");
        let mut more = Captured::default();
        assert!(drain_into(&mut more, rest, 1024, None).await);
        assert_eq!(
            &more.bytes()[..],
            b"neverread",
            "nothing of the unread body is lost"
        );
    }

    #[tokio::test]
    async fn an_empty_body_reports_complete_when_built() {
        let obs = seen();
        let _tap = TapBody::new(
            Full::new(Bytes::new()),
            1024,
            obs.clone(),
            Side::Response,
            false,
        );
        let c = obs.only();
        assert_eq!(
            c.end,
            Some(End::Complete),
            "an empty body hyper never polls is still complete"
        );
    }

    fn stream_owned(parts: Vec<Vec<u8>>) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .into_iter()
            .map(|p| Ok(Frame::data(Bytes::from(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_global_budget_truncates_copies_and_is_given_back_when_they_are_dropped() {
        // Room for the first block (512 bytes) and the marks, not for a second block.
        let first = MIN_COPY + 4 * MARK_COST;
        let budget = Arc::new(CaptureBudget::new(first + 100));
        let obs = Arc::new(Seen {
            reports: Mutex::new(Vec::new()),
            rest: Mutex::new(None),
            budget: Some(budget.clone()),
        });
        let parts = vec![vec![b'a'; 300], vec![b'b'; 300], vec![b'c'; 300]];
        let tap = TapBody::new(
            stream_owned(parts),
            1 << 20,
            obs.clone(),
            Side::Response,
            false,
        );
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(
            out.len(),
            900,
            "a spent budget never shortens what the client gets"
        );
        let c = obs.only();
        let mut kept = vec![b'a'; 300];
        kept.extend_from_slice(&[b'b'; 212]);
        assert_eq!(
            &c.bytes()[..],
            &kept[..],
            "the copy fills the blocks the budget paid for"
        );
        assert!(c.truncated, "a copy cut by the budget says so");
        assert_eq!(c.marks.len(), 3, "every frame is still marked");
        assert_eq!(budget.used(), first);
        assert!(budget.refused() > 0, "refusals are counted");
        drop(c);
        assert_eq!(budget.used(), 0, "a dropped capture gives its budget back");
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_copied_into_one_block_of_that_size() {
        let budget = Arc::new(CaptureBudget::new(1 << 20));
        let obs = Arc::new(Seen {
            reports: Mutex::new(Vec::new()),
            rest: Mutex::new(None),
            budget: Some(budget.clone()),
        });
        let body = Bytes::from(vec![b'x'; 3000]);
        let tap = TapBody::new(
            Full::new(body.clone()),
            1 << 20,
            obs.clone(),
            Side::Request,
            false,
        );
        let _ = tap.collect().await.unwrap();
        let c = obs.only();
        assert_eq!(c.chunks.len(), 1, "the copy is one block");
        assert_eq!(c.bytes(), body);
        assert_eq!(
            c.charge.bytes(),
            3000 + 4 * MARK_COST,
            "the budget is charged the body's size, not a guess"
        );
    }
}

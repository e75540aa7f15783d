//! Forward: the proxy handler. Builds the upstream request (hop-by-hop hygiene, trace headers),
//! sends it on the pooled upstream client, wraps both bodies in [`TapBody`], maps failures to
//! [`ProxyError`], and spawns the per-call recorder that hands a [`CallRecord`] to the queue.
//!
//! Hot path: never parses bodies, never awaits storage. The only crossing to the cold path is
//! [`SpanQueue::offer`]. Requests go upstream through [`crate::upstream::Client`].

use std::{
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio_util::task::TaskTracker;

use crate::{
    config::Config,
    error::{ProxyError, StartError},
    hop,
    idle::{BoxError, IdleGuard},
    metrics::{CaptureBudget, Metrics},
    propagate::TraceContext,
    queue::SpanQueue,
    route::{Route, Table, Target},
    tap::{detach, drain_into, Captured, End, Observer, RawCall, Side, TapBody},
    upstream::{Client, SendError, UpstreamBody},
};

/// After the response side of a call is settled, how long its record waits for the request
/// body's report (an upstream that answered without reading the whole upload never finishes
/// it), and how long an unread upload is drained for the span.
const REQUEST_REPORT_GRACE: Duration = Duration::from_secs(2);

/// Shared state of the proxy listener.
pub struct Proxy {
    table: Table,
    /// One pooled client per route (index = route index in `table`).
    clients: Vec<Client>,
    /// `None` when capture is off.
    queue: Option<SpanQueue>,
    recorders: TaskTracker,
    metrics: Arc<Metrics>,
    max_capture: usize,
    header_timeout: Duration,
    /// `None`: an upstream may stay silent mid-body forever.
    idle_timeout: Option<Duration>,
}

/// The response body the app receives: the upstream's, tapped, or one the proxy made.
// One per response, never collected: boxing the common variant would cost an allocation per call
// to save bytes only on the rare error path.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Upstream(IdleGuard<UpstreamBody>),
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}

/// Everything known about a call when its request arrived. Cheap handles only: the app's
/// URI and header values are refcounted, the route is an `Arc`.
struct CallStart {
    ctx: TraceContext,
    method: Method,
    /// As the app sent them; copied (a URI shares the connection's read buffer).
    path_and_query: String,
    route: Option<Arc<Route>>,
    request_content_type: Option<HeaderValue>,
    request_content_encoding: Option<HeaderValue>,
    started: SystemTime,
    started_at: Instant,
}

impl Proxy {
    pub fn new(
        config: &Config,
        queue: Option<SpanQueue>,
        recorders: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let table = Table::new(config.routes.clone());
        let clients = table
            .routes()
            .iter()
            .enumerate()
            .map(|(i, r)| Client::new(i, &r.config, config.connect_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            table,
            clients,
            queue,
            recorders,
            metrics,
            max_capture: config.max_capture_bytes,
            header_timeout: config.response_header_timeout,
            idle_timeout: config.idle_stream_timeout,
        })
    }

    /// Handles one app request. Called once per request on the connection's task.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = SystemTime::now();
        let started_at = Instant::now();
        self.metrics.requests.fetch_add(1, Relaxed);
        self.metrics.in_flight.fetch_add(1, Relaxed);

        let (parts, body) = req.into_parts();
        let ctx = TraceContext::extract(&parts.headers);
        let target = self.table.resolve_uri(parts.uri.path_and_query());
        let route = target
            .as_ref()
            .and_then(|t| self.table.routes().get(t.route).cloned());
        let method = parts.method;
        // What only a span needs (the body's type and encoding) is copied only when capturing.
        let capturing = self.queue.is_some();
        let span_header = |name: header::HeaderName| {
            capturing
                .then(|| parts.headers.get(name).map(detach))
                .flatten()
        };
        let start = CallStart {
            method: method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string(),
            route,
            request_content_type: span_header(header::CONTENT_TYPE),
            request_content_encoding: span_header(header::CONTENT_ENCODING),
            ctx,
            started,
            started_at,
        };
        let mut headers = parts.headers;
        hop::strip(&mut headers);
        start.ctx.apply_to_upstream(&mut headers);

        // From here on, if the app goes away (hyper drops this future), the guard records the
        // call as cancelled.
        let (pending, request_body) = match &self.queue {
            Some(_) => {
                let state = CallState::new(self.clone(), start);
                let tap = TapBody::new(body, self.max_capture, state.clone(), Side::Request, true);
                (Pending::capturing(self.clone(), state), tap)
            }
            None => (
                Pending::forwarding(self.clone(), start),
                TapBody::passthrough(body),
            ),
        };
        let Some(Target { route, uri }) = target else {
            drop(request_body); // unread: its rest is salvaged for the span
            let path = pending.with_start(|s| app_path(&s.path_and_query).to_string());
            return pending.fail(ProxyError::NoRoute { path });
        };
        let Some(client) = self.clients.get(route) else {
            return pending.fail(ProxyError::BadRequest {
                message: "route has no client".into(),
            });
        };
        headers.remove(header::HOST);
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            // Plain-http upstreams speak HTTP/1.1, where the client would format `Host` per
            // request; the route's value is computed once.
            if let Some(host) = self.table.routes().get(route).and_then(|r| r.host.clone()) {
                headers.insert(header::HOST, host);
            }
        }
        let mut upstream_req = Request::new(request_body);
        *upstream_req.method_mut() = method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11; // the pooled client picks h2 by ALPN
        *upstream_req.headers_mut() = headers;

        let sent_at = Instant::now();
        // The config bounds the timeout to an hour, so this cannot overflow.
        let deadline = sent_at.checked_add(self.header_timeout).unwrap_or(sent_at);
        let rsp = match client.send(upstream_req, deadline).await {
            Ok(rsp) => rsp,
            Err(SendError::Failed(message)) => {
                let upstream = pending.upstream();
                return pending.fail(ProxyError::UpstreamConnect { upstream, message });
            }
            Err(SendError::TimedOut) => {
                let upstream = pending.upstream();
                return pending.fail(ProxyError::UpstreamTimeout {
                    upstream,
                    after: self.header_timeout,
                });
            }
        };

        let head_at = Instant::now();
        let (mut rsp_parts, rsp_body) = rsp.into_parts();
        if !matches!(rsp_body, UpstreamBody::Plain(_)) {
            // The plain-http client's heads come without hop-by-hop headers.
            hop::strip(&mut rsp_parts.headers);
        }
        if rsp_parts.status.as_u16() >= 400 {
            self.metrics.upstream_error_responses.fetch_add(1, Relaxed);
        }
        let body = match pending.answered() {
            Answered::Capturing(state) => {
                state.respond(&mut rsp_parts.headers, rsp_parts.status, head_at);
                TapBody::new(rsp_body, self.max_capture, state, Side::Response, false)
            }
            Answered::Forwarding(start) => {
                start.ctx.stamp_response(&mut rsp_parts.headers);
                self.metrics.in_flight.fetch_sub(1, Relaxed);
                TapBody::passthrough(rsp_body)
            }
        };
        let sse = rsp_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.as_bytes().get(..17))
            .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"));
        let body = IdleGuard::new(body, self.idle_timeout, sse);
        let rsp = Response::from_parts(rsp_parts, ProxyBody::Upstream(body));
        // The proxy's own share of the call: before the upstream send, and after its head.
        self.metrics
            .observe_overhead((sent_at - started_at) + head_at.elapsed());
        rsp
    }
}

// === CallState ===

/// One call's record in the making, shared by its two body taps and the handler. Each of the
/// two sides (the request body; the response: its body, or the failure) reports once; whichever
/// reports last offers the finished call to the queue, on its own task and without awaiting.
/// Nothing is spawned except on rare paths (an unread upload to salvage, a request body still
/// open after the response ended).
struct CallState {
    proxy: Arc<Proxy>,
    /// Itself, for the rare paths that spawn (observers are called with `&self`).
    me: Weak<CallState>,
    slots: Mutex<Slots>,
}

struct Slots {
    /// Taken when the call is offered.
    start: Option<CallStart>,
    head: Option<ResponseHead>,
    proxy_error: Option<(String, String)>,
    request: Option<Captured>,
    response: Option<Captured>,
    request_open: bool,
    response_open: bool,
    /// An unread upload is being drained; it reports when done (bounded).
    salvaging: bool,
    /// The grace timer for a late request report is running.
    waiting: bool,
}

struct ResponseHead {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    content_encoding: Option<HeaderValue>,
    head_at: Instant,
}

impl CallState {
    fn new(proxy: Arc<Proxy>, start: CallStart) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            proxy,
            me: me.clone(),
            slots: Mutex::new(Slots {
                start: Some(start),
                head: None,
                proxy_error: None,
                request: None,
                response: None,
                request_open: true,
                response_open: true,
                salvaging: false,
                waiting: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Slots are plain data: a panic elsewhere cannot leave them inconsistent.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_start<T>(&self, f: impl FnOnce(&CallStart) -> T) -> Option<T> {
        self.lock().start.as_ref().map(f)
    }

    /// The upstream's head arrived: stamps the trace headers on it and notes what the span
    /// needs of it, under one lock.
    fn respond(&self, headers: &mut HeaderMap, status: StatusCode, head_at: Instant) {
        let mut slots = self.lock();
        if let Some(start) = &slots.start {
            start.ctx.stamp_response(headers);
        }
        slots.head = Some(ResponseHead {
            status,
            content_type: headers.get(header::CONTENT_TYPE).map(detach),
            content_encoding: headers.get(header::CONTENT_ENCODING).map(detach),
            head_at,
        });
    }

    /// Applies one report, then offers the call if it was the last one missing.
    fn settle(&self, f: impl FnOnce(&mut Slots)) {
        let mut slots = self.lock();
        f(&mut slots);
        if slots.start.is_none() {
            return; // already offered (a late report after the grace period)
        }
        if !slots.response_open && slots.request_open {
            // Rare: the response side is done but the upload is not. Wait a bounded time for
            // it, off this task.
            if !slots.salvaging && !slots.waiting {
                slots.waiting = true;
                drop(slots);
                self.wait_for_request();
            }
            return;
        }
        if slots.request_open || slots.response_open {
            return;
        }
        let taken = take(&mut slots);
        drop(slots);
        if let Some(taken) = taken {
            self.offer(taken);
        }
    }

    fn wait_for_request(&self) {
        let (Some(state), Ok(_)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            self.force_offer();
            return;
        };
        self.proxy.recorders.spawn(async move {
            tokio::time::sleep(REQUEST_REPORT_GRACE).await;
            state.force_offer();
        });
    }

    /// Offers whatever has arrived (the request capture is missing).
    fn force_offer(&self) {
        let taken = take(&mut self.lock());
        if let Some(taken) = taken {
            self.offer(taken);
        }
    }

    fn offer(&self, t: Taken) {
        let proxy = &self.proxy;
        let ended_at = Instant::now();
        proxy.metrics.observe_latency(ended_at - t.start.started_at);
        proxy.metrics.in_flight.fetch_sub(1, Relaxed);
        if t.response
            .as_ref()
            .is_some_and(|c| c.end == Some(End::Error))
        {
            proxy.metrics.upstream_errors.fetch_add(1, Relaxed);
        }
        let Some(queue) = &proxy.queue else {
            return;
        };
        let (status, content_type, content_encoding, head_at) = match t.head {
            Some(h) => (
                Some(h.status),
                h.content_type,
                h.content_encoding,
                Some(h.head_at),
            ),
            None => (None, None, None, None),
        };
        let s = t.start;
        queue.offer(RawCall {
            ctx: s.ctx,
            method: s.method,
            path_and_query: s.path_and_query,
            route: s.route,
            request_content_type: s.request_content_type,
            request_content_encoding: s.request_content_encoding,
            response_content_type: content_type,
            response_content_encoding: content_encoding,
            status,
            started: s.started,
            started_at: s.started_at,
            head_at,
            ended_at,
            request: t.request,
            response: t.response,
            proxy_error: t.proxy_error,
        });
    }
}

/// What a finished call hands to [`CallState::offer`].
struct Taken {
    start: CallStart,
    head: Option<ResponseHead>,
    proxy_error: Option<(String, String)>,
    request: Option<Captured>,
    response: Option<Captured>,
}

fn take(slots: &mut Slots) -> Option<Taken> {
    Some(Taken {
        start: slots.start.take()?,
        head: slots.head.take(),
        proxy_error: slots.proxy_error.take(),
        request: slots.request.take(),
        response: slots.response.take(),
    })
}

/// The response side's tap: the same reports as the request side's.
impl Observer<UpstreamBody> for CallState {
    fn report(&self, side: Side, captured: Captured) {
        self.side_reported(side, captured);
    }

    fn budget(&self) -> Option<&Arc<CaptureBudget>> {
        Some(&self.proxy.metrics.capture_budget)
    }
}

impl CallState {
    /// One side's tap reported (or its salvage finished).
    fn side_reported(&self, side: Side, captured: Captured) {
        self.settle(|s| match side {
            Side::Request => {
                s.request = Some(captured);
                s.request_open = false;
                s.salvaging = false;
            }
            Side::Response => {
                s.response = Some(captured);
                s.response_open = false;
            }
        });
    }
}

impl Observer<Incoming> for CallState {
    fn report(&self, side: Side, captured: Captured) {
        self.side_reported(side, captured);
    }

    /// An upload dropped before its end (connection refused, an early answer, no route): read
    /// its rest off the hot path, bounded, so the span still shows what the app sent.
    fn abandoned(&self, side: Side, captured: Captured, rest: Incoming) {
        let (Some(this), Ok(_)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            self.side_reported(side, captured);
            return;
        };
        self.lock().salvaging = true;
        let limit = self.proxy.max_capture;
        self.proxy.recorders.spawn(async move {
            let mut captured = captured;
            let budget = this.proxy.metrics.capture_budget.clone();
            let drained = tokio::time::timeout(
                REQUEST_REPORT_GRACE,
                drain_into(&mut captured, rest, limit, Some(&budget)),
            )
            .await;
            if matches!(drained, Ok(true)) {
                captured.end = Some(End::Complete);
            }
            this.side_reported(side, captured);
        });
    }

    fn budget(&self) -> Option<&Arc<CaptureBudget>> {
        Some(&self.proxy.metrics.capture_budget)
    }
}

impl Drop for CallState {
    /// A call whose sides never both reported (a bug, or a runtime torn down mid-call) is still
    /// offered, so nothing stays counted as in flight.
    fn drop(&mut self) {
        let taken = take(self.slots.get_mut().unwrap_or_else(PoisonError::into_inner));
        if let Some(taken) = taken {
            self.offer(taken);
        }
    }
}

// === Pending ===

/// A call between "request read" and "response head". If it is dropped while armed (the app
/// hung up, hyper dropped the handler future), it settles the response side as cancelled, so
/// no call is ever lost from the store or left counted as in flight.
struct Pending {
    proxy: Arc<Proxy>,
    armed: Option<Armed>,
}

// Held once per call, in the handler's future; boxing the start would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Armed {
    /// Capture on: the call's shared state.
    Capturing(Arc<CallState>),
    /// Capture off: only the start, for the response headers.
    Forwarding(CallStart),
}

/// What the handler keeps once the upstream answered.
#[allow(clippy::large_enum_variant)]
enum Answered {
    Capturing(Arc<CallState>),
    Forwarding(CallStart),
}

impl Pending {
    fn capturing(proxy: Arc<Proxy>, state: Arc<CallState>) -> Self {
        Self {
            proxy,
            armed: Some(Armed::Capturing(state)),
        }
    }

    fn forwarding(proxy: Arc<Proxy>, start: CallStart) -> Self {
        Self {
            proxy,
            armed: Some(Armed::Forwarding(start)),
        }
    }

    fn with_start<T: Default>(&self, f: impl FnOnce(&CallStart) -> T) -> T {
        match &self.armed {
            Some(Armed::Capturing(state)) => state.with_start(f).unwrap_or_default(),
            Some(Armed::Forwarding(start)) => f(start),
            None => T::default(),
        }
    }

    /// The route's upstream, for error messages.
    fn upstream(&self) -> String {
        self.with_start(|s| {
            s.route
                .as_ref()
                .map(|r| r.upstream_base.clone())
                .unwrap_or_default()
        })
    }

    /// The upstream answered: the response side now belongs to the response body's tap.
    fn answered(mut self) -> Answered {
        match self.armed.take() {
            Some(Armed::Capturing(state)) => Answered::Capturing(state),
            Some(Armed::Forwarding(start)) => Answered::Forwarding(start),
            // Unreachable by construction: `armed` is only taken here, in `fail` and in Drop.
            None => unreachable!("a pending call is answered once"),
        }
    }

    /// Answers with a proxy-made error and records the failed call.
    fn fail(mut self, err: ProxyError) -> Response<ProxyBody> {
        let proxy = self.proxy.clone();
        if !matches!(
            err,
            ProxyError::NoRoute { .. } | ProxyError::BadRequest { .. }
        ) {
            proxy.metrics.upstream_errors.fetch_add(1, Relaxed);
        }
        // Rate-limited: an upstream outage must not turn into a log flood on the runtime threads.
        let failures = proxy.metrics.proxy_errors_logged.fetch_add(1, Relaxed) + 1;
        if failures.is_power_of_two() {
            // The path only, never the query: it may carry credentials.
            let path = self.with_start(|s| app_path(&s.path_and_query).to_string());
            tracing::warn!(error = %err, path = %path, failures, "proxy error");
        }
        let (mut parts, bytes) = err.to_response().into_parts();
        match self.armed.take() {
            Some(Armed::Capturing(state)) => {
                state.with_start(|s| s.ctx.stamp_response(&mut parts.headers));
                let failure = (err.code().to_string(), err.to_string());
                state.settle(|s| {
                    s.proxy_error = Some(failure);
                    s.response_open = false;
                });
            }
            Some(Armed::Forwarding(start)) => {
                start.ctx.stamp_response(&mut parts.headers);
                proxy.metrics.in_flight.fetch_sub(1, Relaxed);
            }
            None => {}
        }
        Response::from_parts(parts, ProxyBody::Local(Full::new(bytes)))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        match self.armed.take() {
            Some(Armed::Capturing(state)) => state.settle(|s| {
                s.response = Some(Captured::ended(End::Cancelled));
                s.response_open = false;
            }),
            Some(Armed::Forwarding(_)) => {
                self.proxy.metrics.in_flight.fetch_sub(1, Relaxed);
            }
            None => {}
        }
    }
}

/// The path of a `path?query`.
fn app_path(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

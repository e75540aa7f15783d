//! Forward: the proxy handler. Builds the upstream request (hop-by-hop hygiene, trace headers),
//! sends it on the pooled upstream client, wraps both bodies in [`TapBody`], maps failures to
//! [`ProxyError`], and spawns the per-call recorder that hands a [`CallRecord`] to the queue.
//!
//! Hot path: never parses bodies, never awaits storage. The only crossing to the cold path is
//! [`SpanQueue::offer`]. The only module that imports the upstream client (hyper-util, hyper-rustls).

use std::{
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::{
    config::{Config, RouteConfig},
    error::{ProxyError, StartError},
    metrics::Metrics,
    propagate::TraceContext,
    queue::SpanQueue,
    route::{Table, Target},
    tap::{CallRecord, Captured, End, TapBody},
};

type UpstreamClient = Client<HttpsConnector<HttpConnector>, TapBody<Incoming>>;

/// After the response body ends, how long the recorder waits for the request body's report
/// (an upstream that answered without reading the whole upload never finishes it).
const REQUEST_REPORT_GRACE: Duration = Duration::from_secs(2);

/// Shared state of the proxy listener.
pub struct Proxy {
    table: Table,
    /// One pooled client per route (index = route index in `table`).
    clients: Vec<UpstreamClient>,
    /// Each route's upstream as spans show it, computed once.
    upstream_bases: Vec<Arc<str>>,
    /// `None` when capture is off.
    queue: Option<SpanQueue>,
    recorders: TaskTracker,
    metrics: Arc<Metrics>,
    max_capture: usize,
    header_timeout: Duration,
}

/// The response body the app receives: the upstream's, tapped, or one the proxy made.
pub enum ProxyBody {
    Upstream(TapBody<Incoming>),
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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

/// Everything known about a call when its response head goes back to the app.
struct CallStart {
    ctx: TraceContext,
    method: Method,
    path: String,
    upstream_path: String,
    upstream: Arc<str>,
    provider_hint: Option<String>,
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
            .map(|(i, r)| build_client(i, r, config.connect_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let upstream_bases = table
            .routes()
            .iter()
            .map(|r| Arc::from(upstream_base(&r.upstream)))
            .collect();
        Ok(Self {
            table,
            clients,
            upstream_bases,
            queue,
            recorders,
            metrics,
            max_capture: config.max_capture_bytes,
            header_timeout: config.response_header_timeout,
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
        let path = parts.uri.path().to_string();
        let query = parts.uri.query();
        let app_path = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let target = self.table.resolve(&path, query);
        let route = target.as_ref().map(|t| t.route);
        let mut start = CallStart {
            method: parts.method.clone(),
            path: app_path,
            upstream_path: String::new(),
            upstream: route
                .and_then(|r| self.upstream_bases.get(r).cloned())
                .unwrap_or_else(|| Arc::from("")),
            provider_hint: route
                .and_then(|r| self.table.routes().get(r))
                .and_then(|r| r.provider.clone()),
            request_content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            request_content_encoding: parts.headers.get(header::CONTENT_ENCODING).cloned(),
            ctx,
            started,
            started_at,
        };
        let (request_body, request_report) = if self.queue.is_some() {
            let (tap, report, salvage) = TapBody::salvageable(body, self.max_capture);
            (tap, Some(RequestReport { report, salvage }))
        } else {
            (TapBody::passthrough(body), None)
        };
        let Some(Target {
            route,
            uri,
            upstream_path,
        }) = target
        else {
            start.upstream_path = path.clone();
            drop(request_body); // unread: its rest is salvaged for the span
            let pending = Pending::new(self.clone(), start, request_report);
            return pending.fail(ProxyError::NoRoute { path });
        };
        start.upstream_path = upstream_path;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        start.ctx.apply_to_upstream(&mut headers);
        let mut upstream_req = Request::new(request_body);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11; // the pooled client picks h2 by ALPN
        *upstream_req.headers_mut() = headers;

        // From here on, if the app goes away (hyper drops this future), the guard records the
        // call as cancelled.
        let pending = Pending::new(self.clone(), start, request_report);
        let Some(client) = self.clients.get(route) else {
            return pending.fail(ProxyError::BadRequest {
                message: "route has no client".into(),
            });
        };
        let sent = tokio::time::timeout(self.header_timeout, client.request(upstream_req)).await;
        let rsp = match sent {
            Ok(Ok(rsp)) => rsp,
            Ok(Err(e)) => {
                let upstream = pending.upstream().to_string();
                return pending.fail(ProxyError::UpstreamConnect {
                    upstream,
                    message: error_chain(&e),
                });
            }
            Err(_) => {
                let upstream = pending.upstream().to_string();
                return pending.fail(ProxyError::UpstreamTimeout {
                    upstream,
                    after: self.header_timeout,
                });
            }
        };

        let (mut rsp_parts, rsp_body) = rsp.into_parts();
        let head_at = Instant::now();
        strip_hop_by_hop(&mut rsp_parts.headers);
        let (start, request_report) = pending.disarm();
        start.ctx.stamp_response(&mut rsp_parts.headers);
        if rsp_parts.status.as_u16() >= 400 {
            self.metrics.upstream_error_responses.fetch_add(1, Relaxed);
        }
        let body = match &self.queue {
            Some(_) => {
                let (tap, response_report) = TapBody::new(rsp_body, self.max_capture);
                let head = ResponseHead {
                    status: rsp_parts.status,
                    content_type: rsp_parts.headers.get(header::CONTENT_TYPE).cloned(),
                    content_encoding: rsp_parts.headers.get(header::CONTENT_ENCODING).cloned(),
                    head_at,
                };
                self.spawn_recorder(
                    start,
                    request_report,
                    Outcome::Response(head, response_report),
                );
                tap
            }
            None => {
                self.metrics.in_flight.fetch_sub(1, Relaxed);
                TapBody::passthrough(rsp_body)
            }
        };
        Response::from_parts(rsp_parts, ProxyBody::Upstream(body))
    }

    /// Waits (off the hot path) for both bodies to report, then offers the record to the queue.
    fn spawn_recorder(
        &self,
        start: CallStart,
        request_report: Option<RequestReport>,
        outcome: Outcome,
    ) {
        let Some(queue) = self.queue.clone() else {
            self.metrics.in_flight.fetch_sub(1, Relaxed);
            return;
        };
        let metrics = self.metrics.clone();
        let max_capture = self.max_capture;
        self.recorders.spawn(async move {
            let (head, response, proxy_error) = match outcome {
                Outcome::Response(head, rx) => (Some(head), rx.await.ok(), None),
                Outcome::Failed(code, message) => (None, None, Some((code, message))),
                Outcome::ClientGone => {
                    let gone = Captured {
                        end: Some(End::Cancelled),
                        ..Captured::default()
                    };
                    (None, Some(gone), None)
                }
            };
            let request = match request_report {
                Some(r) => r.finish(max_capture).await,
                None => None,
            };
            let ended_at = Instant::now();
            metrics.observe_latency(ended_at - start.started_at);
            metrics.in_flight.fetch_sub(1, Relaxed);
            if let Some(c) = &response {
                if c.end == Some(End::Error) {
                    metrics.upstream_errors.fetch_add(1, Relaxed);
                }
            }
            let text =
                |v: Option<&HeaderValue>| v.and_then(|v| v.to_str().ok()).map(str::to_string);
            queue.offer(CallRecord {
                ctx: start.ctx,
                method: start.method.to_string(),
                path: start.path,
                upstream_path: start.upstream_path,
                upstream: start.upstream.to_string(),
                provider_hint: start.provider_hint,
                request_content_type: text(start.request_content_type.as_ref()),
                request_content_encoding: text(start.request_content_encoding.as_ref()),
                response_content_type: text(head.as_ref().and_then(|h| h.content_type.as_ref())),
                response_content_encoding: text(
                    head.as_ref().and_then(|h| h.content_encoding.as_ref()),
                ),
                status: head.as_ref().map(|h| h.status.as_u16()),
                started: start.started,
                started_at: start.started_at,
                head_at: head.as_ref().map(|h| h.head_at),
                ended_at,
                request,
                response,
                proxy_error,
            });
        });
    }
}

/// How a call ended, as far as the response goes.
enum Outcome {
    /// The upstream answered; the response body reports on the receiver.
    Response(ResponseHead, oneshot::Receiver<Captured>),
    /// The proxy failed the call: (code, message).
    Failed(String, String),
    /// The app went away before the response head arrived.
    ClientGone,
}

/// A call between "request read" and "response head": if it is dropped while armed (the app
/// hung up, hyper dropped the handler future), it records the call as cancelled, so no call is
/// ever lost from the store or left counted as in flight.
struct Pending {
    proxy: Arc<Proxy>,
    armed: Option<(CallStart, Option<RequestReport>)>,
}

impl Pending {
    fn new(proxy: Arc<Proxy>, start: CallStart, request: Option<RequestReport>) -> Self {
        Self {
            proxy,
            armed: Some((start, request)),
        }
    }

    fn upstream(&self) -> &str {
        self.armed.as_ref().map(|(s, _)| &*s.upstream).unwrap_or("")
    }

    fn disarm(mut self) -> (CallStart, Option<RequestReport>) {
        match self.armed.take() {
            Some(armed) => armed,
            // Unreachable by construction: `armed` is only taken here and in Drop.
            None => unreachable!("a pending call is disarmed once"),
        }
    }

    /// Answers with a proxy-made error and records the failed call.
    fn fail(self, err: ProxyError) -> Response<ProxyBody> {
        let proxy = self.proxy.clone();
        let (start, request_report) = self.disarm();
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
            tracing::warn!(error = %err, path = %start.path.split('?').next().unwrap_or(""), failures, "proxy error");
        }
        let (mut parts, bytes) = err.to_response().into_parts();
        start.ctx.stamp_response(&mut parts.headers);
        proxy.spawn_recorder(
            start,
            request_report,
            Outcome::Failed(err.code().to_string(), err.to_string()),
        );
        Response::from_parts(parts, ProxyBody::Local(Full::new(bytes)))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((start, request)) = self.armed.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.proxy
                    .spawn_recorder(start, request, Outcome::ClientGone);
            } else {
                self.proxy.metrics.in_flight.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// The request body's report, plus its unread rest if the upstream never read it.
struct RequestReport {
    report: oneshot::Receiver<Captured>,
    salvage: oneshot::Receiver<Incoming>,
}

impl RequestReport {
    /// Waits (bounded) for the request capture. A body the upstream never finished reading
    /// (connection refused, early answer) is read to its end here, off the hot path, so the
    /// span still shows what the app sent.
    async fn finish(self, limit: usize) -> Option<Captured> {
        let mut captured = tokio::time::timeout(REQUEST_REPORT_GRACE, self.report)
            .await
            .ok()?
            .ok()?;
        if captured.end != Some(End::Cancelled) {
            return Some(captured);
        }
        let Ok(rest) = self.salvage.await else {
            return Some(captured);
        };
        let (tap, report) = TapBody::new(rest, limit.saturating_sub(captured.kept));
        let drained = tokio::time::timeout(REQUEST_REPORT_GRACE, tap.collect()).await;
        let ended = matches!(drained, Ok(Ok(_)));
        if let Ok(more) = report.await {
            captured.kept += more.kept;
            captured.seen += more.seen;
            captured.frames = captured.frames.saturating_add(more.frames);
            captured.truncated |= more.truncated;
            captured.chunks.extend(more.chunks);
            if ended {
                captured.end = Some(End::Complete);
            }
        }
        Some(captured)
    }
}

struct ResponseHead {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    content_encoding: Option<HeaderValue>,
    head_at: Instant,
}

/// One pooled client per route: rustls (webpki roots + the route's `ca_file`), ALPN h2/http1.1,
/// plain http for local upstreams, TCP_NODELAY.
fn build_client(
    index: usize,
    route: &RouteConfig,
    connect_timeout: Duration,
) -> Result<UpstreamClient, StartError> {
    let key = if route.prefix == "/" {
        "ca_file".to_string()
    } else {
        format!("route[{index}].ca_file")
    };
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &route.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| StartError::Tls {
                key: key.clone(),
                message: format!("{}: {e}", path.display()),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StartError::Tls {
                key: key.clone(),
                message: format!("{}: {e}", path.display()),
            })?;
        if certs.is_empty() {
            return Err(StartError::Tls {
                key,
                message: format!("{}: no PEM certificates found", path.display()),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| StartError::Tls {
                key: key.clone(),
                message: format!("{}: {e}", path.display()),
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls {
        key: key.clone(),
        message: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

/// `scheme://authority[/base]`, as spans show the upstream.
fn upstream_base(uri: &http::Uri) -> String {
    let s = uri.to_string();
    s.trim_end_matches('/').to_string()
}

/// The error and its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Names a proxy must not forward (RFC 9110 §7.6.1), built once. `Trailer` is end-to-end and
/// kept: hyper only sends trailer fields that `Trailer` declares.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers, including any listed in `Connection` itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in &listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn removes_headers_named_in_connection_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer sk-test"));
        strip_hop_by_hop(&mut h);
        assert!(
            !h.contains_key("x-secret-hop"),
            "headers listed in Connection are hop-by-hop"
        );
        assert!(!h.contains_key("keep-alive") && !h.contains_key("transfer-encoding"));
        assert!(
            h.contains_key("authorization"),
            "end-to-end credentials are forwarded"
        );
    }

    #[test]
    fn error_chain_includes_causes_once() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "Connection refused");
    }
}

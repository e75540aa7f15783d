//! API: the admin listener. `/api/*` (traces, spans, stats, ingest), `/healthz`, `/metrics` and
//! the web UI at `/`. Parses and validates query params (400 naming the param), calls the store
//! through [`Backend`], and maps [`ApiError`] to `{"error":{"code","message"}}` in one place.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use crate::backend::Backend;
use crate::{
    config::AdminToken,
    error::ApiError,
    metrics::Metrics,
    otlp::{self, ExportSink},
    queue::SpanQueue,
    span::{self, redact::Redactor, Kind, Span, Status, Timestamp},
    store::{
        Cursor, Series, SessionQuery, StatsQuery, TraceQuery, MAX_BUCKETS, MAX_SESSION_TRACES,
    },
};

/// `POST /api/flush` waits at most this long for the ClickHouse writer to drain.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest `POST /api/spans` body.
const MAX_INGEST_BYTES: usize = 16 * 1024 * 1024;
/// Most spans in one `POST /api/spans`.
const MAX_INGEST_SPANS: usize = 10_000;
/// Longest free-text filter value.
const MAX_FILTER_LEN: usize = 1024;

/// Longest `bucket=` width: a year.
const MAX_BUCKET_SECONDS: u64 = 366 * 86_400;

/// One file of the web UI, built into the binary: hand-written ES modules and CSS, no build step.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        name: "lib.js",
        content_type: JS,
        body: include_bytes!("ui/lib.js"),
    },
    Asset {
        name: "traces.js",
        content_type: JS,
        body: include_bytes!("ui/traces.js"),
    },
    Asset {
        name: "trace.js",
        content_type: JS,
        body: include_bytes!("ui/trace.js"),
    },
    Asset {
        name: "detail.js",
        content_type: JS,
        body: include_bytes!("ui/detail.js"),
    },
    Asset {
        name: "sessions.js",
        content_type: JS,
        body: include_bytes!("ui/sessions.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: JS,
        body: include_bytes!("ui/dashboard.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/favicon.svg"),
    },
];

/// The UI's only sources are this listener: no inline script, no other origin. (Inline
/// `style` attributes are allowed: the timeline positions bars with them.)
const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Shared state of the admin listener.
pub struct Admin {
    backend: Backend,
    metrics: Arc<Metrics>,
    queue: Option<SpanQueue>,
    queue_capacity: usize,
    /// Bound to a loopback address: only loopback Host names are answered (DNS rebinding).
    loopback_only: bool,
    /// When set, every route but `/healthz` and the static UI files needs `Bearer <token>`.
    admin_token: Option<AdminToken>,
    /// `[[redact]]` rules, applied to ingested spans.
    redactor: Arc<Redactor>,
    /// Ingested spans go on to the OTLP exporter too.
    export: ExportSink,
}

type Rsp = Response<Full<Bytes>>;

impl Admin {
    pub fn new(
        backend: Backend,
        metrics: Arc<Metrics>,
        queue: Option<SpanQueue>,
        queue_capacity: usize,
        loopback_only: bool,
        admin_token: Option<AdminToken>,
        redactor: Arc<Redactor>,
    ) -> Self {
        Self {
            backend,
            metrics,
            queue,
            queue_capacity,
            loopback_only,
            admin_token,
            redactor,
            export: ExportSink::default(),
        }
    }

    /// Sends spans ingested here (`POST /api/spans`, `POST /v1/traces`) to the OTLP exporter.
    pub fn with_export(mut self, export: ExportSink) -> Self {
        self.export = export;
        self
    }

    /// Handles one admin request; never fails (errors become JSON responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Rsp {
        match self.dispatch(req).await {
            Ok(rsp) => rsp,
            Err(e) => e.to_response().map(Full::new),
        }
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Rsp, ApiError> {
        if self.loopback_only {
            check_host(&req)?;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::UriTooLong {
                limit: MAX_QUERY_BYTES,
            });
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let Some(token) = &self.admin_token {
            if !is_public(&segments) {
                check_bearer(&req, token)?;
            }
        }
        let not_allowed = || ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.clone(),
        };
        match segments.as_slice() {
            [""] | ["index.html"] => match method {
                Method::GET | Method::HEAD => Ok(asset(&req, "index.html")),
                _ => Err(not_allowed()),
            },
            ["favicon.ico"] => match method {
                Method::GET | Method::HEAD => Ok(asset(&req, "favicon.svg")),
                _ => Err(not_allowed()),
            },
            ["ui", name] if ASSETS.iter().any(|a| a.name == *name) => match method {
                Method::GET | Method::HEAD => Ok(asset(&req, name)),
                _ => Err(not_allowed()),
            },
            ["healthz"] => match method {
                Method::GET | Method::HEAD => Ok(self.healthz().await),
                _ => Err(not_allowed()),
            },
            ["metrics"] => match method {
                Method::GET => Ok(self.metrics_text().await),
                _ => Err(not_allowed()),
            },
            ["api", "traces"] => match method {
                Method::GET => self.list_traces(&query).await,
                _ => Err(not_allowed()),
            },
            ["api", "traces", id] => {
                let id = path_id("trace_id", id)?;
                match method {
                    Method::GET => self.get_trace(id).await,
                    Method::DELETE => self.delete_trace(id).await,
                    _ => Err(not_allowed()),
                }
            }
            ["api", "spans"] => match method {
                Method::POST => self.ingest(req).await,
                _ => Err(not_allowed()),
            },
            ["api", "spans", id] => {
                let id = path_id("span_id", id)?;
                match method {
                    Method::GET => self.get_span(id).await,
                    _ => Err(not_allowed()),
                }
            }
            ["api", "sessions"] => match method {
                Method::GET => self.list_sessions(&query).await,
                _ => Err(not_allowed()),
            },
            ["api", "sessions", id] => {
                let id = percent_decode(id)
                    .filter(|v| !v.is_empty() && v.len() <= MAX_FILTER_LEN)
                    .ok_or_else(|| {
                        ApiError::bad_param(
                            "session_id",
                            format!("must be 1-{MAX_FILTER_LEN} bytes of percent-encoded UTF-8"),
                        )
                    })?;
                match method {
                    Method::GET => self.get_session(id, &query).await,
                    _ => Err(not_allowed()),
                }
            }
            ["v1", "traces"] => match method {
                Method::POST => Ok(otlp::ingest::handle(
                    req,
                    otlp::ingest::IngestContext {
                        backend: &self.backend,
                        redactor: &self.redactor,
                        metrics: &self.metrics,
                        export: &self.export,
                    },
                )
                .await),
                _ => Err(not_allowed()),
            },
            ["api", "flush"] => match method {
                Method::POST => self.flush().await,
                _ => Err(not_allowed()),
            },
            ["api", "stats"] => match method {
                Method::GET => self.stats(&query).await,
                _ => Err(not_allowed()),
            },
            _ => Err(ApiError::NoSuchRoute {
                method: method.to_string(),
                path,
            }),
        }
    }

    async fn healthz(&self) -> Rsp {
        let store_ok = self.metrics.store_ok.load(Relaxed) && self.backend.healthy();
        let mut store = json!({
            "backend": self.backend.name(),
            "state": self.backend.state().as_str(),
            "ok": store_ok,
            "size_bytes": self.backend.size().await,
        });
        if let Some(w) = self.backend.writer_stats() {
            store["writer"] = json!({
                "healthy": w.healthy,
                "buffered": w.buffered,
                "written": w.written,
                "dropped": w.dropped,
                "failures": w.failures,
            });
        }
        let body = json!({
            "status": if store_ok { "ok" } else { "degraded" },
            "store": store,
            "capture": self.queue.is_some(),
            "queue": {
                "length": self.queue.as_ref().map(SpanQueue::len).unwrap_or(0),
                "capacity": self.queue_capacity,
                "spooled_bytes": self.metrics.spool_bytes.load(std::sync::atomic::Ordering::Relaxed),
            },
            "captures_dropped": self.metrics.captures_dropped(),
            "retention": { "deleted_traces": self.backend.retention_deleted() },
        });
        json_response(StatusCode::OK, &body)
    }

    async fn metrics_text(&self) -> Rsp {
        let mut text = self.metrics.render(
            self.backend.size().await.unwrap_or(0),
            self.queue.as_ref().map(SpanQueue::len).unwrap_or(0),
        );
        crate::metrics::render_retention(&mut text, self.backend.retention_deleted());
        if let Some(w) = self.backend.writer_stats() {
            crate::metrics::render_clickhouse_writer(&mut text, &w);
        }
        let mut rsp = Response::new(Full::new(Bytes::from(text)));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        rsp
    }

    async fn list_traces(&self, query: &str) -> Result<Rsp, ApiError> {
        let q = parse_trace_query(query)?;
        let page = self.backend.list_traces(q).await?;
        Ok(json_response(StatusCode::OK, &page))
    }

    async fn get_trace(&self, id: String) -> Result<Rsp, ApiError> {
        match self.backend.get_trace(id.clone()).await? {
            Some((trace, spans)) => Ok(json_response(
                StatusCode::OK,
                &json!({ "trace": trace, "spans": spans }),
            )),
            None => Err(ApiError::NotFound { what: "trace", id }),
        }
    }

    /// `POST /api/flush`: fsyncs the store. Every trace readable through the API before the call
    /// survives a crash or power loss once it returns (for backups, and a deterministic
    /// "acknowledged" point in the kill -9 test instead of waiting out `flush_every_ms`).
    /// ClickHouse: waits (bounded) until the writer has inserted everything it buffers; 503 if
    /// it could not.
    async fn flush(&self) -> Result<Rsp, ApiError> {
        self.backend.flush(FLUSH_WAIT).await?;
        Ok(json_response(StatusCode::OK, &json!({ "flushed": true })))
    }

    async fn delete_trace(&self, id: String) -> Result<Rsp, ApiError> {
        if self.backend.delete_trace(id.clone()).await? {
            let mut rsp = Response::new(Full::new(Bytes::new()));
            *rsp.status_mut() = StatusCode::NO_CONTENT;
            Ok(rsp)
        } else {
            Err(ApiError::NotFound { what: "trace", id })
        }
    }

    async fn get_span(&self, id: String) -> Result<Rsp, ApiError> {
        match self.backend.get_span(id.clone()).await? {
            Some(span) => Ok(json_response(StatusCode::OK, &span)),
            None => Err(ApiError::NotFound { what: "span", id }),
        }
    }

    async fn stats(&self, query: &str) -> Result<Rsp, ApiError> {
        let params = Params::parse(query)?;
        let since = params.time("since")?;
        let until = params.time("until")?;
        check_window(since, until)?;
        let group_by_model = match params.get("group_by")? {
            None | Some("") => false,
            Some("model") => true,
            Some(other) => {
                return Err(ApiError::bad_param(
                    "group_by",
                    format!("{other:?} is not supported; use group_by=model"),
                ))
            }
        };
        let series = match params.get("bucket")? {
            None | Some("") => None,
            Some(v) => {
                let width_us = parse_bucket(v)? * 1_000_000;
                let bounds = self.backend.call_bounds(since, until).await?;
                // The instants the series must cover: the window, or the calls in it.
                let hi = until
                    .map(|u| u.micros().saturating_sub(1))
                    .or(bounds.map(|b| b.1));
                let lo = since.map(Timestamp::micros).or(bounds.map(|b| b.0)).or(hi);
                Some(match (lo, hi.or(lo)) {
                    (Some(lo), Some(hi)) => {
                        Series::covering(lo, hi.max(lo), width_us).map_err(|count| {
                            ApiError::bad_param(
                                "bucket",
                                format!(
                                    "{v:?} gives {count} buckets over this window, more than \
                                     {MAX_BUCKETS}; use a wider bucket or a narrower since/until"
                                ),
                            )
                        })?
                    }
                    _ => Series {
                        first_us: 0,
                        width_us,
                        count: 0,
                    },
                })
            }
        };
        let q = StatsQuery {
            since,
            until,
            group_by_model,
            series,
        };
        let stats = self.backend.stats(q).await?;
        Ok(json_response(StatusCode::OK, &stats))
    }

    async fn list_sessions(&self, query: &str) -> Result<Rsp, ApiError> {
        let p = Params::parse(query)?;
        let q = SessionQuery {
            limit: p.limit("limit", 50, 200)?,
            cursor: p.cursor()?,
            since: p.time("since")?,
            until: p.time("until")?,
            q: p.text("q")?,
        };
        check_window(q.since, q.until)?;
        let page = self.backend.list_sessions(q).await?;
        Ok(json_response(StatusCode::OK, &page))
    }

    async fn get_session(&self, id: String, query: &str) -> Result<Rsp, ApiError> {
        let p = Params::parse(query)?;
        let limit = p.limit("limit", MAX_SESSION_TRACES, MAX_SESSION_TRACES)?;
        match self.backend.get_session(id.clone(), limit).await? {
            Some((session, traces)) => Ok(json_response(
                StatusCode::OK,
                &json!({ "session": session, "traces": traces }),
            )),
            None => Err(ApiError::NotFound {
                what: "session",
                id,
            }),
        }
    }

    async fn ingest(&self, req: Request<Incoming>) -> Result<Rsp, ApiError> {
        // A JSON content type forces a CORS preflight, so a web page cannot post spans here.
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Limited::new(req.into_body(), MAX_INGEST_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::TooLarge {
                        limit: MAX_INGEST_BYTES,
                    }
                } else {
                    ApiError::BadBody(format!("body: could not be read: {e}"))
                }
            })?
            .to_bytes();
        let mut spans = parse_ingest(&body)?;
        let count = spans.len();
        // App spans carry prompts too: the same `[[redact]]` rules as captured calls (CPU work
        // on up to MAX_INGEST_BYTES: off the runtime's threads).
        let redactor = self.redactor.clone();
        let spans = tokio::task::spawn_blocking(move || {
            for span in &mut spans {
                redactor.apply(span);
            }
            spans
        })
        .await
        .map_err(|e| ApiError::Internal(format!("redaction task failed: {e}")))?;
        let spans = self.backend.put_spans(spans).await?;
        self.export.offer(&spans);
        self.metrics.spans_ingested.fetch_add(count as u64, Relaxed);
        Ok(json_response(StatusCode::OK, &json!({ "stored": count })))
    }
}

/// Accepts only loopback names in Host / :authority, so a web page that rebinds its own DNS
/// name to 127.0.0.1 cannot read or change the store through the victim's browser.
fn check_host<B>(req: &Request<B>) -> Result<(), ApiError> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => match req.headers().get(header::HOST) {
            Some(v) => v
                .to_str()
                .map_err(|_| ApiError::ForbiddenHost("<non-ASCII>".into()))?
                .to_string(),
            None => return Ok(()), // HTTP/1.0 without Host: not a browser
        },
    };
    let host = raw
        .parse::<http::uri::Authority>()
        .map(|a| a.host().to_ascii_lowercase())
        .map_err(|_| ApiError::ForbiddenHost(raw.clone()))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ApiError::ForbiddenHost(raw))
    }
}

/// Routes open without the admin token: liveness, and the UI's static files (compiled into the
/// binary, they hold no data; a browser cannot send a bearer header when it loads a page). The
/// UI then sends the token with every API call.
fn is_public(segments: &[&str]) -> bool {
    matches!(
        segments,
        [""] | ["index.html"] | ["favicon.ico"] | ["healthz"]
    ) || matches!(segments, ["ui", name] if ASSETS.iter().any(|a| a.name == *name))
}

/// Checks `Authorization: Bearer <token>`. The token is never logged or echoed.
fn check_bearer<B>(req: &Request<B>, token: &AdminToken) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        });
    match presented {
        Some(p) if constant_time_eq(token.as_bytes(), p) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("the bearer token is wrong")),
        None => Err(ApiError::Unauthorized(
            "this admin listener requires `Authorization: Bearer <admin_token>`",
        )),
    }
}

/// Compares without an early exit: the time taken depends only on the expected token's length,
/// never on how many leading bytes of the presented one are right.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != presented.len());
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!*e);
        diff |= e ^ p;
    }
    std::hint::black_box(diff) == 0
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Rsp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"serialisation failed: {e}\"}}}}")
            .into_bytes()
    });
    let mut rsp = Response::new(Full::new(Bytes::from(bytes)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

/// Serves one embedded UI file. Caching: `no-cache` plus a strong ETag (a hash of the bytes),
/// so the browser revalidates each load with a cheap 304 and a new binary's UI is never stale.
fn asset<B>(req: &Request<B>, name: &str) -> Rsp {
    static ETAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:016x}\"", fnv1a(a.body)))
            .collect()
    });
    let Some((i, a)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return ApiError::NoSuchRoute {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
        }
        .to_response()
        .map(Full::new);
    };
    let etag = etags.get(i).map(String::as_str).unwrap_or("\"0\"");
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut rsp = if fresh {
        let mut rsp = Response::new(Full::new(Bytes::new()));
        *rsp.status_mut() = StatusCode::NOT_MODIFIED;
        rsp
    } else {
        let body = if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from_static(a.body)
        };
        let mut rsp = Response::new(Full::new(body));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        rsp
    };
    let h = rsp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if a.name.ends_with(".html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(UI_CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    rsp
}

/// FNV-1a, 64 bit: the assets' ETags.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `bucket=`: whole seconds, plain (`300`) or with a unit (`30s`, `5m`, `1h`, `1d`).
fn parse_bucket(v: &str) -> Result<u64, ApiError> {
    let v = v.trim();
    let bad = || {
        ApiError::bad_param(
            "bucket",
            format!(
                "{v:?} is not a bucket width: whole seconds (300) or a number with s, m, h or d \
                 (30s, 5m, 1h, 1d), from 1s to 366d"
            ),
        )
    };
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|s| (1..=MAX_BUCKET_SECONDS).contains(s))
        .ok_or_else(bad)
}

/// A path segment naming an ID: percent-decoded, then held to the ID alphabet.
fn path_id(param: &str, raw: &str) -> Result<String, ApiError> {
    let decoded = percent_decode(raw)
        .ok_or_else(|| ApiError::bad_param(param, "is not valid percent-encoded UTF-8"))?;
    if span::is_valid_id(&decoded) {
        Ok(decoded)
    } else {
        Err(ApiError::bad_param(
            param,
            "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Longest admin query string. Every real query is far shorter; a longer one is refused with a
/// 414 JSON error before any parsing. (Heads over the listener's 64 KiB read buffer are refused
/// by hyper itself: 414 for the URI, 431 for the headers, without a body.)
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Query params, each allowed once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::bad_param(&k, "given more than once"));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        Ok(self
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()))
    }

    /// A free-text filter: empty means absent; too long is an error.
    fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) if v.len() > MAX_FILTER_LEN => Err(ApiError::bad_param(
                name,
                format!("longer than {MAX_FILTER_LEN} bytes"),
            )),
            Some(v) => Ok(Some(v.to_string())),
        }
    }

    /// An integer in `1..=max`, `default` when absent.
    fn limit(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(name)? {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_param(
                    name,
                    format!("{v:?} is not an integer in 1..={max}"),
                )),
            },
        }
    }

    /// `cursor`: opaque, from a previous page's `next_cursor`.
    fn cursor(&self) -> Result<Option<Cursor>, ApiError> {
        match self.get("cursor")? {
            None | Some("") => Ok(None),
            Some(v) => Cursor::decode(v).map(Some).ok_or_else(|| {
                ApiError::bad_param(
                    "cursor",
                    "malformed cursor; use next_cursor from a previous page",
                )
            }),
        }
    }

    /// RFC 3339, or unix milliseconds.
    fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        let Some(v) = self.get(name)? else {
            return Ok(None);
        };
        let v = v.trim();
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            return v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= 253_402_300_799_999) // year 9999
                .map(|ms| Some(Timestamp::from_unix_millis(ms)))
                .ok_or_else(|| ApiError::bad_param(name, format!("{v:?} is out of range")));
        }
        Timestamp::parse_rfc3339(v).map(Some).ok_or_else(|| {
            ApiError::bad_param(
                name,
                format!("{v:?} is neither RFC 3339 nor unix milliseconds"),
            )
        })
    }
}

fn check_window(since: Option<Timestamp>, until: Option<Timestamp>) -> Result<(), ApiError> {
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(ApiError::bad_param("until", "must not be before since"));
        }
    }
    Ok(())
}

fn parse_trace_query(query: &str) -> Result<TraceQuery, ApiError> {
    let p = Params::parse(query)?;
    let limit = p.limit("limit", 50, 1000)?;
    let cursor = p.cursor()?;
    let status = match p.get("status")? {
        None | Some("") => None,
        Some(v) => Some(Status::parse(v).ok_or_else(|| {
            ApiError::bad_param(
                "status",
                format!("{v:?} is not one of ok, error, cancelled"),
            )
        })?),
    };
    let since = p.time("since")?;
    let until = p.time("until")?;
    check_window(since, until)?;
    Ok(TraceQuery {
        limit,
        cursor,
        since,
        until,
        status,
        model: p.text("model")?,
        session_id: p.text("session_id")?,
        user_id: p.text("user_id")?,
        tag: p.text("tag")?,
        q: p.text("q")?,
    })
}

/// Validates an ingest body: a JSON array of spans. Every problem is reported, each naming its
/// field (`[2].start_time: …`).
fn parse_ingest(body: &[u8]) -> Result<Vec<Span>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadBody(format!("body: not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ApiError::BadBody(
            "body: expected a JSON array of spans".into(),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::BadBody("body: the array is empty".into()));
    }
    if items.len() > MAX_INGEST_SPANS {
        return Err(ApiError::BadBody(format!(
            "body: more than {MAX_INGEST_SPANS} spans in one request"
        )));
    }
    let mut problems: Vec<String> = Vec::new();
    let mut spans = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match validate_span(item) {
            Ok(span) => spans.push(span),
            Err(mut errs) => {
                for e in errs.drain(..) {
                    if problems.len() < 100 {
                        problems.push(format!("[{i}].{e}"));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(spans)
    } else {
        Err(ApiError::BadBody(problems.join("; ")))
    }
}

fn validate_span(item: Value) -> Result<Span, Vec<String>> {
    let Value::Object(mut obj) = item else {
        return Err(vec!["span: expected a JSON object".into()]);
    };
    let mut errs = Vec::new();
    let mut id = |field: &str, required: bool, obj: &Map<String, Value>| match obj.get(field) {
        None | Some(Value::Null) if required => errs.push(format!("{field}: required")),
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if span::is_valid_id(s) => {}
        Some(_) => errs.push(format!(
            "{field}: must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        )),
    };
    id("trace_id", true, &obj);
    id("span_id", true, &obj);
    id("parent_span_id", false, &obj);
    match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 1024 => {}
        None | Some(Value::Null) => errs.push("name: required".into()),
        Some(_) => errs.push("name: must be a non-empty string of at most 1024 bytes".into()),
    }
    match obj.get("kind") {
        None | Some(Value::Null) => errs.push("kind: required".into()),
        Some(k) if serde_json::from_value::<Kind>(k.clone()).is_ok() => {}
        Some(_) => errs.push(
            "kind: must be one of llm, chain, agent, tool, retriever, embedding, http".into(),
        ),
    }
    let mut time = |field: &str| match obj.get(field) {
        None | Some(Value::Null) => {
            errs.push(format!("{field}: required"));
            None
        }
        Some(Value::String(s)) => match Timestamp::parse_rfc3339(s) {
            Some(t) => Some(t),
            None => {
                errs.push(format!("{field}: {s:?} is not an RFC 3339 timestamp"));
                None
            }
        },
        Some(_) => {
            errs.push(format!("{field}: must be an RFC 3339 timestamp string"));
            None
        }
    };
    let start = time("start_time");
    let end = time("end_time");
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            errs.push("end_time: must not be before start_time".into());
        }
    }
    if let Some(v) = obj.get("status") {
        if !v.is_null() && serde_json::from_value::<Status>(v.clone()).is_err() {
            errs.push("status: must be one of ok, error, cancelled".into());
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    // Derived, never trusted from the app.
    obj.remove("duration_ms");
    if obj.get("status").is_some_and(Value::is_null) {
        obj.remove("status");
    }
    match serde_json::from_value::<Span>(Value::Object(obj)) {
        Ok(mut span) => {
            span.duration_ms = span.start_time.ms_until(span.end_time);
            if span.error.is_some() && span.status == Status::Ok {
                span.status = Status::Error;
            }
            Ok(span)
        }
        Err(e) => Err(vec![format!("span: {e}")]),
    }
}

/// Entry points for the fuzz targets in `fuzz/`: the admin API's pure parsers, no I/O. Each
/// returns whether the input was accepted; an `Err` must always be a 400 naming the problem.
#[doc(hidden)]
pub mod fuzz {
    use super::*;

    /// `GET /api/traces?…` (and the shared `limit`, `cursor`, `since`, `until` rules).
    pub fn trace_query(query: &str) -> Result<(), String> {
        parse_trace_query(query)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `GET /api/stats?bucket=…`.
    pub fn bucket(value: &str) -> Result<u64, String> {
        parse_bucket(value).map_err(|e| e.to_string())
    }

    /// `POST /api/spans` bodies: the number of spans accepted.
    pub fn ingest(body: &[u8]) -> Result<usize, String> {
        parse_ingest(body)
            .map(|s| s.len())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_names_each_bad_field() {
        let body = br#"[
            {"trace_id":"t1","span_id":"s1","name":"chain","kind":"chain",
             "start_time":"2026-11-27T00:00:00Z","end_time":"2026-11-27T00:00:01.5Z"},
            {"trace_id":"bad id","span_id":"s2","kind":"robot",
             "start_time":"yesterday","end_time":"2026-11-27T00:00:00Z"}
        ]"#;
        let err = parse_ingest(body).unwrap_err().to_string();
        for needle in [
            "[1].trace_id",
            "[1].name: required",
            "[1].kind",
            "[1].start_time",
        ] {
            assert!(err.contains(needle), "the error names {needle}: {err}");
        }
        assert!(!err.contains("[0]"), "the valid span is not blamed: {err}");
    }

    #[test]
    fn ingest_derives_duration_and_defaults_status() {
        let body =
            br#"[{"trace_id":"t1","span_id":"s1","name":"chain","kind":"chain","duration_ms":99999,
             "start_time":"2026-11-27T00:00:00Z","end_time":"2026-11-27T00:00:01.5Z"}]"#;
        let spans = parse_ingest(body).unwrap();
        assert_eq!(
            spans[0].duration_ms, 1500.0,
            "duration_ms is derived from the times"
        );
        assert_eq!(spans[0].status, Status::Ok, "status defaults to ok");
    }

    #[test]
    fn trace_query_params_are_checked() {
        assert_eq!(parse_trace_query("").unwrap().limit, 50);
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=abc", "limit"),
            ("status=fine", "status"),
            ("since=tomorrow", "since"),
            ("cursor=zz", "cursor"),
            ("limit=5&limit=6", "limit"),
            (
                "since=2026-11-27T00:00:00Z&until=2026-11-26T00:00:00Z",
                "until",
            ),
        ] {
            let e = parse_trace_query(q).unwrap_err();
            assert!(
                matches!(&e, ApiError::BadParam { param: p, .. } if p == param),
                "{q} must be rejected naming {param}: {e}"
            );
        }
        let q = parse_trace_query("since=1764201600000&model=gpt-4o&q=").unwrap();
        assert_eq!(
            q.since,
            Some(Timestamp(1_764_201_600_000_000)),
            "unix milliseconds are accepted"
        );
        assert_eq!(q.model.as_deref(), Some("gpt-4o"));
        assert_eq!(q.q, None, "an empty free-text filter means no filter");
    }

    #[test]
    fn the_admin_token_is_checked_as_a_bearer_token() {
        let token = crate::config::load(
            None,
            &crate::config::Flags {
                admin_token: Some("s3cret-token-0123456789".into()),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap()
        .admin_token
        .unwrap();
        let req = |auth: Option<&str>| {
            let mut b = Request::builder().uri("/api/traces");
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(()).unwrap()
        };
        assert!(check_bearer(&req(Some("Bearer s3cret-token-0123456789")), &token).is_ok());
        assert!(
            check_bearer(&req(Some("bearer s3cret-token-0123456789")), &token).is_ok(),
            "the scheme is case-insensitive"
        );
        for bad in [
            None,
            Some("Bearer s3cret-token-012345678"),
            Some("Bearer s3cret-token-01234567890"),
            Some("Bearer S3cret-token-0123456789"),
            Some("Basic s3cret-token-0123456789"),
            Some("s3cret-token-0123456789"),
            Some("Bearer "),
            Some(""),
        ] {
            let e = check_bearer(&req(bad), &token).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{bad:?} is refused");
            assert!(
                !e.to_string().contains("s3cret"),
                "the error never echoes the token"
            );
        }
        assert!(is_public(&["healthz"]) && is_public(&["ui", "app.js"]) && is_public(&[""]));
        assert!(!is_public(&["api", "traces"]) && !is_public(&["metrics"]));
        assert!(
            !is_public(&["ui", "secret"]),
            "only known UI files are public"
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
        assert!(
            !constant_time_eq(b"\xff", b""),
            "a missing byte never compares equal, even to 0xff"
        );
    }

    #[test]
    fn only_loopback_hosts_are_answered() {
        let req = |host: &str| {
            Request::builder()
                .uri("/api/traces")
                .header("host", host)
                .body(())
                .unwrap()
        };
        for ok in [
            "127.0.0.1:8081",
            "localhost:8081",
            "localhost",
            "[::1]:8081",
            "app.localhost:1",
        ] {
            assert!(check_host(&req(ok)).is_ok(), "{ok} is a loopback name");
        }
        for bad in [
            "evil.example:8081",
            "10.0.0.1:8081",
            "127.0.0.1.evil.example",
        ] {
            assert!(check_host(&req(bad)).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn path_ids_are_decoded_and_checked() {
        assert_eq!(path_id("trace_id", "run%3A42").unwrap(), "run:42");
        assert!(path_id("trace_id", "a%20b").is_err());
        assert!(path_id("trace_id", "%zz").is_err());
    }
}

//! The exporter: a bounded buffer fed after spans are stored, and one task that sends it to the
//! collector in batches, retrying with exponential backoff.
//!
//! Nothing here can slow a call or the store: [`ExportSink::offer`] takes a short lock and never
//! waits on the network; when the buffer is full (collector down or slow for long) new spans are
//! dropped and counted in `llm_tracer_otlp_dropped_spans_total{reason="buffer_full"}`. A batch
//! in flight stays counted against the bound until the collector accepts it, so "nothing lost
//! within the bound" holds across a collector restart.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use prost::Message;
use tokio::{sync::watch, sync::Notify, task::JoinHandle};

use super::{encode, OtlpConfig, Protocol};
use crate::{metrics::Metrics, span::Span};

/// First retry delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At shutdown the buffer gets this long to reach the collector; the rest is counted dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Largest collector answer read (a partial-success message).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub(crate) type ExportClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where stored spans are handed to the exporter. Cheap to clone; a disabled sink (no `[otlp]`)
/// does nothing.
#[derive(Clone, Default)]
pub struct ExportSink {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    state: Mutex<State>,
    max: usize,
    batch_size: usize,
    wake: Notify,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Span>,
    /// Spans taken by the task and not yet accepted by the collector.
    in_flight: usize,
    closed: bool,
}

impl std::fmt::Debug for ExportSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportSink")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl ExportSink {
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Hands stored spans to the exporter. Never waits on the network; spans beyond the buffer
    /// bound are dropped and counted.
    pub fn offer(&self, spans: &[Span]) {
        let Some(shared) = &self.shared else {
            return;
        };
        if spans.is_empty() {
            return;
        }
        let (taken, reason, len) = {
            let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.closed {
                (0, "shutdown", st.queue.len())
            } else {
                let room = shared.max.saturating_sub(st.queue.len() + st.in_flight);
                let taken = room.min(spans.len());
                st.queue.extend(spans[..taken].iter().cloned());
                (taken, "buffer_full", st.queue.len())
            }
        };
        let m = &shared.metrics.otlp;
        m.buffered.store(len as u64, Relaxed);
        let dropped = (spans.len() - taken) as u64;
        if dropped > 0 {
            let counter = if reason == "shutdown" {
                &m.dropped_shutdown
            } else {
                &m.dropped_buffer_full
            };
            let before = counter.fetch_add(dropped, Relaxed);
            if (before + dropped).next_power_of_two() != before.next_power_of_two() || before == 0 {
                tracing::warn!(
                    reason,
                    dropped = before + dropped,
                    "OTLP export: spans dropped; traffic and the local store are unaffected"
                );
            }
        }
        if len >= shared.batch_size {
            shared.wake.notify_one();
        }
    }
}

/// The running exporter task.
pub struct Exporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts the task. `Err` names the problem with the TLS set-up.
    pub fn start(cfg: OtlpConfig, metrics: Arc<Metrics>) -> Result<(ExportSink, Exporter), String> {
        let client = client(cfg.timeout)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            max: cfg.max_buffer_spans.max(1),
            batch_size: cfg.batch_size.max(1),
            wake: Notify::new(),
            metrics,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(cfg, client, shared.clone(), stop_rx));
        Ok((
            ExportSink {
                shared: Some(shared),
            },
            Exporter { stop, task },
        ))
    }

    /// Sends what is buffered (for up to a few seconds), then stops. Call after the writer has
    /// drained, so the last stored spans are included.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "OTLP exporter task failed");
        }
    }
}

async fn run(
    cfg: OtlpConfig,
    client: ExportClient,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let m = &shared.metrics.otlp;
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u64 = 0;
    let mut stopping = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if !stopping {
            // Wait for a full batch, the interval, or shutdown.
            let ready = {
                let st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.queue.len() >= shared.batch_size
            };
            if !ready {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(cfg.interval) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
            if *stop.borrow() {
                stopping = true;
                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
        }
        // Send batches until the buffer is empty or the collector fails.
        loop {
            let batch: Vec<Span> = {
                let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                let n = st.queue.len().min(shared.batch_size);
                st.in_flight = n;
                st.queue.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let body = encode_batch(&batch, &cfg);
            loop {
                let attempt = send(&client, &cfg, body.clone());
                let outcome = match deadline {
                    Some(d) => tokio::time::timeout_at(d, attempt)
                        .await
                        .unwrap_or(Outcome::Retry("shutdown deadline passed".into())),
                    None => attempt.await,
                };
                match outcome {
                    Outcome::Accepted { rejected } => {
                        let ok = (batch.len() as u64).saturating_sub(rejected);
                        m.exported.fetch_add(ok, Relaxed);
                        m.dropped_rejected.fetch_add(rejected, Relaxed);
                        if failures > 0 {
                            tracing::info!(
                                after_failures = failures,
                                "OTLP export: collector reachable again"
                            );
                        }
                        failures = 0;
                        backoff = FIRST_BACKOFF;
                        break;
                    }
                    Outcome::Rejected(why) => {
                        m.failed_attempts.fetch_add(1, Relaxed);
                        m.dropped_rejected.fetch_add(batch.len() as u64, Relaxed);
                        tracing::error!(spans = batch.len(), error = %why, "OTLP export: the collector refused a batch; dropped");
                        break;
                    }
                    Outcome::Retry(why) => {
                        m.failed_attempts.fetch_add(1, Relaxed);
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!(failures, error = %why, retry_in_ms = backoff.as_millis() as u64,
                                "OTLP export failed; retrying (traffic and the local store are unaffected)");
                        }
                        let past_deadline =
                            deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                        if past_deadline {
                            m.dropped_shutdown.fetch_add(batch.len() as u64, Relaxed);
                            break;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s), if !stopping => {
                                stopping = true;
                                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                            }
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            let len = {
                let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.in_flight = 0;
                st.queue.len()
            };
            m.buffered.store(len as u64, Relaxed);
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            if !stopping && len < shared.batch_size {
                break; // a partial batch waits for the interval
            }
        }
        if stopping {
            let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.closed = true;
            let left = st.queue.len() as u64;
            st.queue.clear();
            if left > 0 {
                m.dropped_shutdown.fetch_add(left, Relaxed);
                tracing::warn!(spans = left, "OTLP export: spans left unsent at shutdown");
            }
            m.buffered.store(0, Relaxed);
            return;
        }
    }
}

fn encode_batch(batch: &[Span], cfg: &OtlpConfig) -> Bytes {
    let req = encode::request(batch, &cfg.service_name);
    match cfg.protocol {
        Protocol::Protobuf => Bytes::from(req.encode_to_vec()),
        Protocol::Json => Bytes::from(serde_json::to_vec(&req).unwrap_or_default()),
    }
}

enum Outcome {
    Accepted {
        rejected: u64,
    },
    /// Not worth retrying (the collector said the data is bad).
    Rejected(String),
    Retry(String),
}

async fn send(client: &ExportClient, cfg: &OtlpConfig, body: Bytes) -> Outcome {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = cfg.traces_url.clone();
    let headers = req.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(cfg.protocol.content_type()),
    );
    headers.insert(
        header::USER_AGENT,
        header::HeaderValue::from_static(concat!("llm-tracer/", env!("CARGO_PKG_VERSION"))),
    );
    for (k, v) in &cfg.headers {
        headers.insert(k.clone(), v.clone());
    }
    let rsp = match tokio::time::timeout(cfg.timeout, client.request(req)).await {
        Err(_) => {
            return Outcome::Retry(format!("no answer within {} ms", cfg.timeout.as_millis()))
        }
        Ok(Err(e)) => return Outcome::Retry(error_chain(&e)),
        Ok(Ok(rsp)) => rsp,
    };
    let status = rsp.status();
    let body = tokio::time::timeout(
        cfg.timeout,
        http_body_util::Limited::new(rsp.into_body(), MAX_RESPONSE_BYTES).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    if status.is_success() {
        return Outcome::Accepted {
            rejected: rejected_spans(&body, cfg.protocol),
        };
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    // OTLP/HTTP: 429, 502, 503, 504 are retryable; other 4xx/5xx are not.
    match status {
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::REQUEST_TIMEOUT => Outcome::Retry(format!("HTTP {status}: {text}")),
        _ => Outcome::Rejected(format!("HTTP {status}: {text}")),
    }
}

/// `partial_success.rejected_spans` of a collector's answer (0 when absent or unreadable).
fn rejected_spans(body: &[u8], protocol: Protocol) -> u64 {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    if body.is_empty() {
        return 0;
    }
    match protocol {
        Protocol::Protobuf => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)),
        // proto3 JSON: int64 as a string (some collectors send a number).
        Protocol::Json => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let n = v.get("partialSuccess")?.get("rejectedSpans")?.clone();
                n.as_u64().or_else(|| n.as_str()?.parse().ok())
            })
            .unwrap_or(0),
    }
}

/// An HTTP(S) client (webpki roots, ring), also used by the export/import CLI.
pub(crate) fn client(timeout: Duration) -> Result<ExportClient, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(https))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

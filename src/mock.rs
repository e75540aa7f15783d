//! A scripted mock of an OpenAI-compatible (and Anthropic Messages) upstream, for
//! `llm-tracer demo` and the tests.
//!
//! [`MockUpstream::start`] serves HTTP/1.1 and h2 (auto-detected) on `127.0.0.1:0`;
//! [`MockUpstream::start_tls`] does the same over TLS (ALPN `h2`, `http/1.1`). Dropping the
//! [`MockUpstream`] stops the server and every connection it accepted. The mock records every request
//! ([`MockUpstream::requests`]) and the exact bytes of every response body it sent
//! ([`MockUpstream::responses`]), index for index, so tests can compare what a proxy passed through
//! byte for byte.
//!
//! # What it answers
//! Each endpoint answers in its provider's real wire format (taken from the providers' API
//! references), matched on the path's last segments, so any prefix works (`/v1`, `/openai/v1`,
//! Azure's `/openai/deployments/{deployment}/…?api-version=…`, whose deployment answers as the
//! model when the body names none). Replies are deterministic: the text is
//! `"Mock reply to: <text of the last user turn>"`, and usage counts whitespace-separated words
//! (prompt: every prompt text; completion: the reply).
//!
//! - `POST …/chat/completions`: a `chat.completion` (`n` choices; choice k > 0 says
//!   `(choice k)`), or with `"stream": true` a `text/event-stream` of `chat.completion.chunk`
//!   events, one per body frame — `delta.role` per choice, one content delta per word, an empty
//!   delta with `finish_reason` per choice, then (if `stream_options.include_usage`) a usage chunk
//!   with empty `choices`, then `data: [DONE]`.
//! - `POST …/completions` (legacy): a `text_completion`; streamed, one `text_completion` chunk per
//!   word, a `finish_reason: "stop"` chunk, the usage chunk if asked for, `[DONE]`.
//! - `POST …/responses`: a `response` object (`output_text` message item, `usage` with
//!   `input_tokens`/`output_tokens` and their details). Streamed: typed events with `event:`
//!   lines and `sequence_number`s — `response.created`, `response.in_progress`,
//!   `response.output_item.added`, `response.content_part.added`, one
//!   `response.output_text.delta` per word, `response.output_text.done`,
//!   `response.content_part.done`, `response.output_item.done`, `response.completed` (with
//!   usage) — and no `[DONE]`.
//! - `POST …/embeddings`: a `list` of `embedding` objects, one deterministic unit vector per input
//!   (`dimensions` if given, else the model's real size: 1536, 3072 for `*-3-large`, 16 for
//!   unknown models), as floats or, with `encoding_format: "base64"` (the OpenAI SDKs' default),
//!   base64 of little-endian f32s; `usage` has `prompt_tokens` and `total_tokens`.
//! - `POST …/messages` (Anthropic): a `message` with a `text` block, `stop_reason: "end_turn"` and
//!   `usage` (`input_tokens`, cache fields, `output_tokens`). Streamed: `event: message_start`
//!   (usage with `output_tokens: 1`), `content_block_start`, `ping`, one `content_block_delta`
//!   (`text_delta`) per word, `content_block_stop`, `message_delta` (`stop_reason`, cumulative
//!   `usage.output_tokens`), `message_stop`. Errors use Anthropic's shape
//!   `{"type":"error","error":{"type","message"}}`.
//! - Tool calls: a request with a non-empty `tools` array whose last user turn starts with
//!   `"call tool"` (or with header `x-mock-tool-call: 1`) is answered with one call of the first
//!   tool, arguments `{"input":"<last user text>"}`: chat `tool_calls` (streamed: split across
//!   three deltas at index 0, `finish_reason: "tool_calls"`), a Responses `function_call` item
//!   (streamed: `response.function_call_arguments.delta` ×3 and `.done`), an Anthropic
//!   `tool_use` block (streamed: `input_json_delta` pieces, `stop_reason: "tool_use"`).
//! - Model `"mock-error"` → 500 with the provider's error JSON (the demo's failing call).
//! - Anything else (`GET /v1/models`, `POST /v1/files`, …) → 200
//!   `{"object":"mock","method":…,"path":<path and query>,"body_bytes":N}`.
//! - A body that is not a JSON object, or a malformed `x-mock-*` header → 400 with an error JSON
//!   (`invalid_request_error`). The mock never panics on input.
//!
//! Every response carries `x-request-id: mock-req-<index>`, where `<index>` is the request's position
//! in [`MockUpstream::requests`].
//!
//! # Request headers that script the reply
//! A proxy forwards these untouched, so tests that go through the proxy choose behaviour with them.
//!
//! | header | effect |
//! | --- | --- |
//! | `x-mock-status: N` | N ≥ 400: that status with `{"error":{"message":"Mock upstream failure (status N)","type":…,"param":null,"code":null}}` (`type`: 401 `authentication_error`, 403 `permission_error`, 429 `rate_limit_error`, 5xx `server_error`, other 4xx `invalid_request_error`). 200–399: the normal reply with status N. Overrides everything else. |
//! | `x-mock-gap-ms: N` | sleep N ms between stream events |
//! | `x-mock-abort-after: K` | send K body frames, then fail the body: HTTP/1.1 closes the connection, h2 resets the stream, so the client sees a body error, not a clean end. Non-stream bodies are one frame, so `0` aborts right after the head. |
//! | `x-mock-hold: 1` | hold back the last events of a stream (from the finish chunk / `output_text.done` / `content_block_stop` on) until [`MockUpstream::release`] is called; a non-stream body is held whole (the head is sent) |
//! | `x-mock-delay-ms: N` | wait N ms before sending the response head |
//! | `x-mock-tool-call: 1` | answer a request that has `tools` with a tool call |
//! | `x-mock-no-usage: 1` | report no usage anywhere (no `usage` key, no usage chunk, `usage: null` in a Responses body, no `usage` in Anthropic messages) — how a server that omits usage looks |
//! | `x-mock-stream-error: 1` | a stream fails mid-way after its content: chat and completions send an `{"error":…}` chunk, Responses a `response.failed` event, Messages an `event: error` (`overloaded_error`); no clean ending follows |
//!
//! Boolean headers take `1`/`true`/`0`/`false`; numbers are decimal.

use std::{
    convert::Infallible,
    fmt, io,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

/// The response body type: frames produced one by one, each recorded as it is handed to hyper.
type MockBody = UnsyncBoxBody<Bytes, io::Error>;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// The request target's path and query, e.g. `/v1/chat/completions?x=1`.
    pub path_and_query: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The whole request body, exactly as received.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running mock upstream. Dropping it stops the server and aborts its connections.
pub struct MockUpstream {
    /// The bound address (always on 127.0.0.1).
    pub addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// State shared by the accept loop, every connection and the test that owns the mock.
struct Shared {
    hits: AtomicUsize,
    log: Mutex<Log>,
    /// One permit per [`MockUpstream::release`]; a held body takes one. Closed on drop.
    released: Semaphore,
}

/// `requests[i]` was answered with `responses[i]`.
#[derive(Default)]
struct Log {
    requests: Vec<RecordedRequest>,
    responses: Vec<BytesMut>,
}

/// What the `x-mock-*` headers asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Knobs {
    status: Option<StatusCode>,
    gap: Duration,
    abort_after: Option<usize>,
    hold: bool,
    delay: Duration,
    tool_call: bool,
    no_usage: bool,
    stream_error: bool,
}

/// A response decided in full before the head is sent.
struct Plan {
    status: StatusCode,
    content_type: &'static str,
    stream: bool,
    frames: Vec<Bytes>,
    /// Index of the first frame that waits for [`MockUpstream::release`].
    hold_from: Option<usize>,
}

/// The body generator's state, one per response.
struct Sender {
    shared: Arc<Shared>,
    slot: usize,
    frames: Vec<Bytes>,
    next: usize,
    gap: Duration,
    hold_from: Option<usize>,
    abort_at: Option<usize>,
    done: bool,
}

// === impl MockUpstream ===

impl MockUpstream {
    /// Starts a plain-HTTP mock (HTTP/1.1 and h2 prior knowledge) on `127.0.0.1:0`.
    pub async fn start() -> io::Result<MockUpstream> {
        Self::serve(None).await
    }

    /// Starts an HTTPS mock on `127.0.0.1:0` with the given PEM certificate chain (leaf first) and
    /// private key (PKCS#8, PKCS#1 or SEC1). The certificate needs the SAN `localhost` for
    /// [`url`](Self::url) to verify (`certs/server.pem` has `localhost`, `127.0.0.1` and `::1`).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> io::Result<MockUpstream> {
        let acceptor = tls_acceptor(cert_pem, key_pem)?;
        Self::serve(Some(acceptor)).await
    }

    async fn serve(tls: Option<TlsAcceptor>) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            hits: AtomicUsize::new(0),
            log: Mutex::new(Log::default()),
            released: Semaphore::new(0),
        });
        let is_tls = tls.is_some();
        let server = tokio::spawn(accept_loop(listener, tls, Arc::clone(&shared)));
        Ok(MockUpstream {
            addr,
            tls: is_tls,
            shared,
            server,
        })
    }

    /// The base URL: `http://127.0.0.1:PORT`, or `https://localhost:PORT` for a TLS mock (so that a
    /// certificate for `localhost` verifies).
    pub fn url(&self) -> String {
        let port = self.addr.port();
        if self.tls {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log().requests.clone()
    }

    /// The body bytes sent for each request, index for index with [`requests`](Self::requests).
    /// A body still being sent shows what has been handed to the connection so far; an aborted body
    /// shows what was sent before the abort.
    pub fn responses(&self) -> Vec<Bytes> {
        let log = self.shared.log();
        log.responses
            .iter()
            .map(|body| Bytes::copy_from_slice(body))
            .collect()
    }

    /// Lets one held body (`x-mock-hold: 1`) continue. A release that comes before the body reaches
    /// its hold point is kept and used then.
    pub fn release(&self) {
        self.shared.released.add_permits(1);
    }

    /// How many requests have arrived (counted on arrival, before the body is read).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task; closing
        // the semaphore fails bodies still held (h2 streams run in tasks of their own).
        self.server.abort();
        self.shared.released.close();
    }
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("url", &self.url())
            .field("hits", &self.hits())
            .finish()
    }
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log inconsistent (pushes and appends only).
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the request and opens its response slot; returns the slot index.
    fn record(&self, request: RecordedRequest) -> usize {
        let mut log = self.log();
        log.requests.push(request);
        log.responses.push(BytesMut::new());
        log.responses.len() - 1
    }

    fn append(&self, slot: usize, data: &[u8]) {
        if let Some(body) = self.log().responses.get_mut(slot) {
            body.extend_from_slice(data);
        }
    }
}

// === serving ===

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    // EMFILE and friends: back off a little and keep accepting.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // NB: without TCP_NODELAY every multi-write response stalls ~40 ms (Nagle + delayed ACK).
                let _ = tcp.set_nodelay(true);
                connections.spawn(serve_connection(tcp, tls.clone(), Arc::clone(&shared)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(tcp: TcpStream, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
    let http = auto::Builder::new(TokioExecutor::new());
    let result = match tls {
        None => http.serve_connection(TokioIo::new(tcp), service).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
            Err(error) => {
                tracing::debug!(%error, "mock upstream: TLS handshake failed");
                return;
            }
        },
    };
    if let Err(error) = result {
        tracing::debug!(%error, "mock upstream: connection ended with an error");
    }
}

/// Called once per request, on the connection's task.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let (body, body_ok) = match body.collect().await {
        Ok(collected) => (collected.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let slot = shared.record(RecordedRequest {
        method: parts.method.clone(),
        path_and_query: path_and_query.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });

    let api = Api::detect(&parts.method, parts.uri.path());
    let style = api.map_or(ErrorStyle::OpenAi, Api::error_style);
    let (plan, knobs) = match knobs(&parts.headers) {
        Err(message) => (
            error_plan(StatusCode::BAD_REQUEST, &message, ErrorStyle::OpenAi),
            Knobs::default(),
        ),
        Ok(knobs) if !body_ok => (
            error_plan(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
                style,
            ),
            knobs,
        ),
        Ok(knobs) => {
            let plan = match (knobs.status, api) {
                (Some(status), _) if status.as_u16() >= 400 => error_plan(
                    status,
                    &format!("Mock upstream failure (status {})", status.as_u16()),
                    style,
                ),
                (_, Some(api)) => api_plan(api, slot, parts.uri.path(), &body, &knobs),
                (_, None) => echo_plan(&parts.method, &path_and_query, body.len()),
            };
            (plan, knobs)
        }
    };

    if !knobs.delay.is_zero() {
        tokio::time::sleep(knobs.delay).await;
    }
    Ok(respond(shared, slot, plan, knobs))
}

fn respond(shared: Arc<Shared>, slot: usize, plan: Plan, knobs: Knobs) -> Response<MockBody> {
    let status = match knobs.status {
        Some(status) if plan.status.is_success() => status,
        _ => plan.status,
    };
    let length: usize = plan.frames.iter().map(Bytes::len).sum();
    let sender = Sender {
        shared,
        slot,
        next: 0,
        gap: if plan.stream {
            knobs.gap
        } else {
            Duration::ZERO
        },
        hold_from: if knobs.hold { plan.hold_from } else { None },
        abort_at: knobs.abort_after.map(|k| k.min(plan.frames.len())),
        frames: plan.frames,
        done: false,
    };
    let body = StreamBody::new(futures_util::stream::unfold(sender, Sender::next_frame));

    let mut rsp = Response::new(UnsyncBoxBody::new(body));
    *rsp.status_mut() = status;
    let headers = rsp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(plan.content_type),
    );
    if plan.stream {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Ok(id) = HeaderValue::from_str(&format!("mock-req-{slot}")) {
        headers.insert("x-request-id", id);
    }
    rsp
}

// === impl Sender ===

impl Sender {
    /// Produces the next body frame: gap, then hold, then abort, then the frame (recorded as it is
    /// handed to hyper). Polled by the connection (or h2 stream) task.
    async fn next_frame(mut self) -> Option<(Result<Frame<Bytes>, io::Error>, Sender)> {
        let i = self.next;
        let ends_here = i >= self.frames.len() && self.abort_at != Some(i);
        if self.done || ends_here {
            return None;
        }
        if i > 0 && !self.gap.is_zero() {
            tokio::time::sleep(self.gap).await;
        }
        if self.hold_from == Some(i) {
            let acquired = self
                .shared
                .released
                .acquire()
                .await
                .map(|permit| permit.forget());
            if acquired.is_err() {
                return Some(self.fail("mock upstream stopped while holding"));
            }
        }
        if self.abort_at == Some(i) {
            // NB: hyper's HTTP/1 writer drops buffered bytes when a body fails; one Pending first
            // makes it flush the head and the frames before it, so the client sees them.
            tokio::task::yield_now().await;
            return Some(self.fail("x-mock-abort-after: mock upstream aborted the body"));
        }
        let data = self.frames[i].clone();
        self.shared.append(self.slot, &data);
        self.next += 1;
        Some((Ok(Frame::data(data)), self))
    }

    fn fail(mut self, message: &'static str) -> (Result<Frame<Bytes>, io::Error>, Sender) {
        self.done = true;
        let error = io::Error::new(io::ErrorKind::ConnectionAborted, message);
        (Err(error), self)
    }
}

// === plans ===

fn knobs(headers: &HeaderMap) -> Result<Knobs, String> {
    let status = match number::<u16>(headers, "x-mock-status")? {
        None => None,
        Some(code) => match StatusCode::from_u16(code) {
            Ok(status) if (200..=599).contains(&code) => Some(status),
            _ => {
                return Err(format!(
                    "invalid x-mock-status header: {code} is not in 200-599"
                ))
            }
        },
    };
    Ok(Knobs {
        status,
        gap: Duration::from_millis(number(headers, "x-mock-gap-ms")?.unwrap_or(0)),
        abort_after: number(headers, "x-mock-abort-after")?,
        hold: flag(headers, "x-mock-hold")?,
        delay: Duration::from_millis(number(headers, "x-mock-delay-ms")?.unwrap_or(0)),
        tool_call: flag(headers, "x-mock-tool-call")?,
        no_usage: flag(headers, "x-mock-no-usage")?,
        stream_error: flag(headers, "x-mock-stream-error")?,
    })
}

fn number<T: FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| format!("invalid {name} header: expected a non-negative integer"))
}

fn flag(headers: &HeaderMap, name: &str) -> Result<bool, String> {
    let Some(value) = headers.get(name) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok("1" | "true") => Ok(true),
        Ok("0" | "false") => Ok(false),
        _ => Err(format!(
            "invalid {name} header: expected 1, true, 0 or false"
        )),
    }
}

/// Which provider's error shape a reply uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorStyle {
    /// `{"error":{"message","type","param","code"}}`
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`
    Anthropic,
}

/// An error reply in the provider's shape.
fn error_plan(status: StatusCode, message: &str, style: ErrorStyle) -> Plan {
    let body = match style {
        ErrorStyle::OpenAi => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                500..=599 => "server_error",
                _ => "invalid_request_error",
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        ErrorStyle::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    json_plan(status, &body)
}

fn echo_plan(method: &Method, path_and_query: &str, body_bytes: usize) -> Plan {
    let body = json!({
        "object": "mock",
        "method": method.as_str(),
        "path": path_and_query,
        "body_bytes": body_bytes,
    });
    json_plan(StatusCode::OK, &body)
}

fn json_plan(status: StatusCode, body: &Value) -> Plan {
    Plan {
        status,
        content_type: "application/json",
        stream: false,
        frames: vec![Bytes::from(body.to_string())],
        hold_from: Some(0),
    }
}

/// The endpoint a request is for, by its path (any prefix: `/v1`, an Azure deployment, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
    Responses,
    Embeddings,
    Messages,
}

impl Api {
    fn detect(method: &Method, path: &str) -> Option<Api> {
        if *method != Method::POST {
            return None;
        }
        let path = path.trim_end_matches('/');
        let ends = |suffix: &str| {
            path.strip_suffix(suffix)
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('/'))
        };
        if ends("chat/completions") {
            Some(Api::Chat)
        } else if ends("completions") {
            Some(Api::Completion)
        } else if ends("responses") {
            Some(Api::Responses)
        } else if ends("embeddings") {
            Some(Api::Embeddings)
        } else if ends("messages") {
            Some(Api::Messages)
        } else {
            None
        }
    }

    fn error_style(self) -> ErrorStyle {
        match self {
            Api::Messages => ErrorStyle::Anthropic,
            _ => ErrorStyle::OpenAi,
        }
    }
}

/// What a request asked for, read leniently (missing fields take defaults).
struct Ask {
    model: String,
    /// The text of the last user turn (chat/messages/responses), the prompt (completions).
    user_text: String,
    /// Whitespace-separated words in every prompt text (system, messages, instructions, …).
    prompt_words: usize,
    stream: bool,
    include_usage: bool,
    /// `Some(tool name)` when the reply is a tool call.
    tool: Option<String>,
    /// Chat `n`: how many choices (1..=8).
    n: usize,
    body: Value,
}

impl Ask {
    fn parse(api: Api, path: &str, body: &[u8], knobs: &Knobs) -> Result<Ask, String> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Mock upstream: the request body is not valid JSON ({e})"))?;
        if !request.is_object() {
            return Err("Mock upstream: the request body must be a JSON object".to_owned());
        }
        // Turns as (role, text), in order.
        let mut turns: Vec<(String, String)> = Vec::new();
        let mut extra_words = 0;
        match api {
            Api::Chat | Api::Messages => {
                for m in request["messages"].as_array().into_iter().flatten() {
                    let role = m["role"].as_str().unwrap_or_default().to_owned();
                    turns.push((role, content_text(&m["content"])));
                }
                extra_words += words(&content_text(&request["system"]));
            }
            Api::Responses => {
                extra_words += words(&content_text(&request["instructions"]));
                match &request["input"] {
                    Value::String(text) => turns.push(("user".to_owned(), text.clone())),
                    Value::Array(items) => {
                        for item in items {
                            let role = item["role"].as_str().unwrap_or_default().to_owned();
                            turns.push((role, content_text(&item["content"])));
                        }
                    }
                    _ => {}
                }
            }
            Api::Completion | Api::Embeddings => {
                let key = if api == Api::Completion {
                    "prompt"
                } else {
                    "input"
                };
                let text = match &request[key] {
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => content_text(other),
                };
                turns.push(("user".to_owned(), text));
            }
        }
        let user_text = turns
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        let last_is_call = turns
            .last()
            .is_some_and(|(role, text)| role == "user" && text.starts_with("call tool"));
        let tools = request["tools"].as_array().filter(|t| !t.is_empty());
        let tool = tools
            .filter(|_| knobs.tool_call || last_is_call)
            .map(|tools| {
                let first = &tools[0];
                first["function"]["name"]
                    .as_str()
                    .or_else(|| first["name"].as_str())
                    .unwrap_or("mock_tool")
                    .to_owned()
            });
        // Azure-style paths name the deployment; it answers as the model.
        let deployment = azure_deployment(path);
        let model = request["model"]
            .as_str()
            .filter(|m| !m.is_empty())
            .or(deployment)
            .unwrap_or("mock-model")
            .to_owned();
        Ok(Ask {
            model,
            prompt_words: extra_words + turns.iter().map(|(_, t)| words(t)).sum::<usize>(),
            user_text,
            stream: request["stream"] == true,
            include_usage: request["stream_options"]["include_usage"] == true,
            tool,
            n: request["n"].as_u64().unwrap_or(1).clamp(1, 8) as usize,
            body: request,
        })
    }

    fn reply(&self) -> String {
        format!("Mock reply to: {}", self.user_text)
    }

    fn arguments(&self) -> String {
        json!({ "input": self.user_text }).to_string()
    }

    /// Words in the answer: the reply, or the tool-call arguments.
    fn completion_words(&self) -> usize {
        match self.tool {
            Some(_) => words(&self.arguments()),
            None => words(&self.reply()),
        }
    }
}

/// `…/openai/deployments/{deployment}/…` → the deployment.
fn azure_deployment(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    segments.find(|s| *s == "deployments")?;
    segments.next().filter(|d| !d.is_empty())
}

fn api_plan(api: Api, slot: usize, path: &str, body: &[u8], knobs: &Knobs) -> Plan {
    let ask = match Ask::parse(api, path, body, knobs) {
        Ok(ask) => ask,
        Err(message) => return error_plan(StatusCode::BAD_REQUEST, &message, api.error_style()),
    };
    if ask.model == "mock-error" {
        return error_plan(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Mock upstream failure (status 500)",
            api.error_style(),
        );
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match api {
        Api::Chat => chat_plan(slot, created, &ask, knobs),
        Api::Completion => completion_plan(slot, created, &ask, knobs),
        Api::Responses => responses_plan(slot, created, &ask, knobs),
        Api::Embeddings => embeddings_plan(&ask, knobs),
        Api::Messages => messages_plan(slot, &ask, knobs),
    }
}

/// A streamed body: `frames`, of which those from `hold_from` on wait for a release.
fn stream_plan(content_type: &'static str, frames: Vec<Bytes>, hold_from: usize) -> Plan {
    Plan {
        status: StatusCode::OK,
        content_type,
        stream: true,
        frames,
        hold_from: Some(hold_from),
    }
}

/// OpenAI's usage block (chat and legacy completions).
fn openai_usage(ask: &Ask) -> Value {
    let completion = ask.completion_words() * ask.n;
    json!({
        "prompt_tokens": ask.prompt_words,
        "completion_tokens": completion,
        "total_tokens": ask.prompt_words + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

/// The in-band error chunk OpenAI-style streams end with when they fail mid-way.
fn openai_stream_error() -> Bytes {
    sse_event(
        &json!({"error": {"message": "Mock stream failure", "type": "server_error",
                           "param": null, "code": null}})
        .to_string(),
    )
}

fn chat_plan(slot: usize, created: u64, ask: &Ask, knobs: &Knobs) -> Plan {
    let id = format!("chatcmpl-mock-{slot}");
    let call_id = format!("call_mock_{slot}");
    let arguments = ask.arguments();
    // Choice k > 0 says which it is, so n > 1 answers differ.
    let reply_of = |k: usize| match k {
        0 => ask.reply(),
        k => format!("{} (choice {k})", ask.reply()),
    };
    let usage = openai_usage(ask);

    if !ask.stream {
        let choices: Vec<Value> = (0..ask.n)
            .map(|k| {
                let (message, finish) = match &ask.tool {
                    Some(name) => (
                        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                            {"id": call_id, "type": "function",
                             "function": {"name": name, "arguments": arguments}}]}),
                        "tool_calls",
                    ),
                    None => (
                        json!({"role": "assistant", "content": reply_of(k), "refusal": null}),
                        "stop",
                    ),
                };
                json!({"index": k, "message": message, "logprobs": null, "finish_reason": finish})
            })
            .collect();
        let mut body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": ask.model,
            "choices": choices, "system_fingerprint": "fp_mock",
        });
        if !knobs.no_usage {
            body["usage"] = usage;
        }
        return json_plan(StatusCode::OK, &body);
    }

    let send_usage = ask.include_usage && !knobs.no_usage;
    let chunk = |k: usize, delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": ask.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": k, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if send_usage {
            chunk["usage"] = Value::Null;
        }
        sse_event(&chunk.to_string())
    };
    let mut frames = Vec::new();
    let finish = match &ask.tool {
        Some(name) => {
            frames.push(chunk(
                0,
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function",
                     "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in split_even(&arguments, 3) {
                frames.push(chunk(
                    0,
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
        None => {
            for k in 0..ask.n {
                frames.push(chunk(
                    k,
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                ));
            }
            let replies: Vec<String> = (0..ask.n).map(reply_of).collect();
            let pieces: Vec<Vec<&str>> = replies.iter().map(|r| word_pieces(r)).collect();
            let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
            for i in 0..longest {
                for (k, choice) in pieces.iter().enumerate() {
                    if let Some(piece) = choice.get(i) {
                        frames.push(chunk(k, json!({ "content": piece }), Value::Null));
                    }
                }
            }
            "stop"
        }
    };
    if knobs.stream_error {
        frames.push(openai_stream_error());
        let hold_from = frames.len() - 1;
        return stream_plan("text/event-stream", frames, hold_from);
    }
    let hold_from = frames.len();
    for k in 0..ask.n {
        frames.push(chunk(k, json!({}), json!(finish)));
    }
    if send_usage {
        let last = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": ask.model,
            "system_fingerprint": "fp_mock", "choices": [], "usage": usage,
        });
        frames.push(sse_event(&last.to_string()));
    }
    frames.push(sse_event("[DONE]"));
    stream_plan("text/event-stream", frames, hold_from)
}

fn completion_plan(slot: usize, created: u64, ask: &Ask, knobs: &Knobs) -> Plan {
    let id = format!("cmpl-mock-{slot}");
    let reply = ask.reply();
    let usage = json!({
        "prompt_tokens": ask.prompt_words,
        "completion_tokens": words(&reply),
        "total_tokens": ask.prompt_words + words(&reply),
    });
    if !ask.stream {
        let mut body = json!({
            "id": id, "object": "text_completion", "created": created, "model": ask.model,
            "choices": [{"text": reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
        });
        if !knobs.no_usage {
            body["usage"] = usage;
        }
        return json_plan(StatusCode::OK, &body);
    }
    let chunk = |text: &str, finish: Value| {
        sse_event(
            &json!({
                "id": id, "object": "text_completion", "created": created, "model": ask.model,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
            })
            .to_string(),
        )
    };
    let mut frames: Vec<Bytes> = word_pieces(&reply)
        .into_iter()
        .map(|piece| chunk(piece, Value::Null))
        .collect();
    if knobs.stream_error {
        frames.push(openai_stream_error());
        let hold_from = frames.len() - 1;
        return stream_plan("text/event-stream", frames, hold_from);
    }
    let hold_from = frames.len();
    frames.push(chunk("", json!("stop")));
    if ask.include_usage && !knobs.no_usage {
        let last = json!({
            "id": id, "object": "text_completion", "created": created, "model": ask.model,
            "choices": [], "usage": usage,
        });
        frames.push(sse_event(&last.to_string()));
    }
    frames.push(sse_event("[DONE]"));
    stream_plan("text/event-stream", frames, hold_from)
}

/// Default vector length per embedding model (the real ones, so SDK code that checks works).
fn default_dimensions(model: &str) -> usize {
    if model.contains("3-large") {
        3072
    } else if model.contains("embedding") || model.contains("ada") {
        1536
    } else {
        16
    }
}

/// A deterministic unit vector for `text` (the same text always embeds the same).
fn mock_vector(text: &str, dims: usize) -> Vec<f32> {
    // FNV-1a seed, then xorshift.
    let mut state = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
        .max(1);
    let raw: Vec<f32> = (0..dims)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

fn embeddings_plan(ask: &Ask, knobs: &Knobs) -> Plan {
    use base64::Engine;
    let bad = |message: &str| error_plan(StatusCode::BAD_REQUEST, message, ErrorStyle::OpenAi);
    // Each input as text: strings as they are, token arrays as their IDs.
    let texts: Vec<String> = match &ask.body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => return bad("Mock upstream: `input` must be a string or an array"),
    };
    if texts.is_empty() || texts.len() > 2048 {
        return bad("Mock upstream: `input` must hold 1 to 2048 items");
    }
    let dims = match ask.body["dimensions"].as_u64() {
        Some(d) if (1..=4096).contains(&d) => d as usize,
        Some(_) => return bad("Mock upstream: `dimensions` must be in 1..=4096"),
        None => default_dimensions(&ask.model),
    };
    let base64 = match ask.body["encoding_format"].as_str() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return bad("Mock upstream: `encoding_format` must be float or base64"),
    };
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = mock_vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = texts.iter().map(|t| words(t)).sum();
    let mut body = json!({"object": "list", "data": data, "model": ask.model});
    if !knobs.no_usage {
        body["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    json_plan(StatusCode::OK, &body)
}

/// `event: <name>` + `data: <json>`: the framing of the Responses and Messages APIs.
fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn responses_plan(slot: usize, created: u64, ask: &Ask, knobs: &Knobs) -> Plan {
    let id = format!("resp_mock_{slot}");
    let output_words = ask.completion_words();
    let usage = json!({
        "input_tokens": ask.prompt_words,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_words,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": ask.prompt_words + output_words,
    });
    let item_id = match &ask.tool {
        Some(_) => format!("fc_mock_{slot}"),
        None => format!("msg_mock_{slot}"),
    };
    let final_item = match &ask.tool {
        Some(name) => json!({
            "type": "function_call", "id": item_id, "call_id": format!("call_mock_{slot}"),
            "name": name, "arguments": ask.arguments(), "status": "completed",
        }),
        None => json!({
            "type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": ask.reply(), "annotations": [], "logprobs": []}],
        }),
    };
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": created, "status": status,
            "background": false, "error": null, "incomplete_details": null,
            "instructions": ask.body.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": ask.body.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": ask.model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
            "store": true, "temperature": ask.body.get("temperature").cloned().unwrap_or(json!(1.0)),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": ask.body.get("tools").cloned().unwrap_or(json!([])),
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": null, "metadata": {},
        })
    };
    let final_usage = if knobs.no_usage { Value::Null } else { usage };
    if !ask.stream {
        let body = response("completed", vec![final_item], final_usage);
        return json_plan(StatusCode::OK, &body);
    }

    let mut seq = 0u64;
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        named_event(name, &data)
    };
    let mut frames = vec![
        event(
            "response.created",
            json!({"response": response("in_progress", vec![], Value::Null)}),
        ),
        event(
            "response.in_progress",
            json!({"response": response("in_progress", vec![], Value::Null)}),
        ),
    ];
    let hold_from;
    match &ask.tool {
        Some(name) => {
            let arguments = ask.arguments();
            frames.push(event(
                "response.output_item.added",
                json!({"output_index": 0, "item": {
                    "type": "function_call", "id": item_id, "call_id": format!("call_mock_{slot}"),
                    "name": name, "arguments": "", "status": "in_progress"}}),
            ));
            for piece in split_even(&arguments, 3) {
                frames.push(event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": piece}),
                ));
            }
            hold_from = frames.len();
            frames.push(event(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "arguments": arguments}),
            ));
        }
        None => {
            let reply = ask.reply();
            frames.push(event(
                "response.output_item.added",
                json!({"output_index": 0, "item": {
                    "type": "message", "id": item_id, "status": "in_progress",
                    "role": "assistant", "content": []}}),
            ));
            frames.push(event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            ));
            for piece in word_pieces(&reply) {
                frames.push(event(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                           "delta": piece, "logprobs": []}),
                ));
            }
            hold_from = frames.len();
            frames.push(event(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "text": reply, "logprobs": []}),
            ));
            frames.push(event(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": reply, "annotations": [], "logprobs": []}}),
            ));
        }
    }
    if knobs.stream_error {
        let mut failed = response("failed", vec![], Value::Null);
        failed["error"] = json!({"code": "server_error", "message": "Mock stream failure"});
        frames.truncate(hold_from);
        frames.push(event("response.failed", json!({ "response": failed })));
        let hold_from = frames.len() - 1;
        return stream_plan("text/event-stream", frames, hold_from);
    }
    frames.push(event(
        "response.output_item.done",
        json!({"output_index": 0, "item": final_item}),
    ));
    frames.push(event(
        "response.completed",
        json!({"response": response("completed", vec![final_item.clone()], final_usage)}),
    ));
    stream_plan("text/event-stream", frames, hold_from)
}

fn messages_plan(slot: usize, ask: &Ask, knobs: &Knobs) -> Plan {
    let id = format!("msg_mock_{slot}");
    let tool_id = format!("toolu_mock_{slot}");
    let output_words = ask.completion_words();
    let usage = |output: usize| {
        json!({
            "input_tokens": ask.prompt_words, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "output_tokens": output, "service_tier": "standard",
        })
    };
    let (stop_reason, block) = match &ask.tool {
        Some(name) => (
            "tool_use",
            json!({"type": "tool_use", "id": tool_id, "name": name,
                   "input": {"input": ask.user_text}}),
        ),
        None => ("end_turn", json!({"type": "text", "text": ask.reply()})),
    };
    if !ask.stream {
        let mut body = json!({
            "id": id, "type": "message", "role": "assistant", "model": ask.model,
            "content": [block], "stop_reason": stop_reason, "stop_sequence": null,
        });
        if !knobs.no_usage {
            body["usage"] = usage(output_words);
        }
        return json_plan(StatusCode::OK, &body);
    }

    let event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        named_event(name, &data)
    };
    let mut start = json!({
        "id": id, "type": "message", "role": "assistant", "model": ask.model, "content": [],
        "stop_reason": null, "stop_sequence": null,
    });
    if !knobs.no_usage {
        start["usage"] = usage(1);
    }
    let mut frames = vec![event("message_start", json!({ "message": start }))];
    match &ask.tool {
        Some(name) => {
            frames.push(event(
                "content_block_start",
                json!({"index": 0, "content_block": {
                    "type": "tool_use", "id": tool_id, "name": name, "input": {}}}),
            ));
            frames.push(event("ping", json!({})));
            let arguments = ask.arguments();
            let pieces = std::iter::once("").chain(split_even(&arguments, 3));
            for piece in pieces {
                frames.push(event(
                    "content_block_delta",
                    json!({"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
        }
        None => {
            frames.push(event(
                "content_block_start",
                json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            frames.push(event("ping", json!({})));
            for piece in word_pieces(&ask.reply()) {
                frames.push(event(
                    "content_block_delta",
                    json!({"index": 0, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
        }
    }
    if knobs.stream_error {
        frames.push(event(
            "error",
            json!({"error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        let hold_from = frames.len() - 1;
        return stream_plan("text/event-stream; charset=utf-8", frames, hold_from);
    }
    let hold_from = frames.len();
    frames.push(event("content_block_stop", json!({"index": 0})));
    let mut delta = json!({"delta": {"stop_reason": stop_reason, "stop_sequence": null}});
    if !knobs.no_usage {
        // Cumulative: the final count, not an increment.
        delta["usage"] = json!({ "output_tokens": output_words });
    }
    frames.push(event("message_delta", delta));
    frames.push(event("message_stop", json!({})));
    stream_plan("text/event-stream; charset=utf-8", frames, hold_from)
}

// === helpers ===

fn sse_event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The text of a message `content`: a string, or the `text` of each part of a parts array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Splits `text` before each space, so `"a b c"` → `["a", " b", " c"]`; the pieces concatenate to
/// `text`.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Splits `text` into at most `n` non-empty pieces of about equal length, on char boundaries.
fn split_even(text: &str, n: usize) -> Vec<&str> {
    let chars = text.chars().count();
    let size = chars.div_ceil(n.max(1)).max(1);
    let mut pieces = Vec::new();
    let mut start = 0;
    for (count, (i, _)) in text.char_indices().enumerate() {
        if count > 0 && count % size == 0 {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, e: &dyn fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mock upstream {what}: {e}"),
        )
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate PEM", &e))?;
    if certs.is_empty() {
        return Err(invalid("certificate PEM", &"no CERTIFICATE block found"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| invalid("private key PEM", &e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("TLS config", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn tls_client(ca_pem: &str) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .build()
            .unwrap()
    }

    fn chat(stream: bool, user: &str) -> Value {
        json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": user},
            ],
        })
    }

    fn with_tools(mut body: Value) -> Value {
        body["tools"] = json!([{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object"}}}]);
        body
    }

    /// Reads the body frame by frame until it ends; `Err` carries the frames read before a body
    /// error.
    async fn frames(mut rsp: reqwest::Response) -> Result<Vec<Bytes>, Vec<Bytes>> {
        let mut frames = Vec::new();
        loop {
            match rsp.chunk().await {
                // h2 ends a stream with an empty DATA frame; it carries no event.
                Ok(Some(frame)) if frame.is_empty() => {}
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return Ok(frames),
                Err(_) => return Err(frames),
            }
        }
    }

    fn event_json(frame: &[u8]) -> Value {
        let text = std::str::from_utf8(frame).unwrap();
        let data = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[tokio::test]
    async fn non_stream_chat_is_an_openai_chat_completion() {
        let upstream = MockUpstream::start().await.unwrap();
        let rsp = client()
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .json(&chat(false, "hello there"))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["content-type"], "application/json");
        assert_eq!(rsp.headers()["x-request-id"], "mock-req-0");
        let body: Value = rsp.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["id"], "chatcmpl-mock-0");
        assert_eq!(body["model"], "gpt-4o-mini", "the model echoes the request");
        assert!(body["created"].as_u64().is_some());
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Mock reply to: hello there");
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(
            (
                &body["usage"]["prompt_tokens"],
                &body["usage"]["completion_tokens"],
                &body["usage"]["total_tokens"]
            ),
            (&json!(4), &json!(5), &json!(9)),
            "usage counts words: prompt over all messages, completion over the reply"
        );
        assert_eq!(upstream.hits(), 1);
    }

    #[tokio::test]
    async fn stream_sends_one_event_per_frame_and_ends_with_done() {
        let upstream = MockUpstream::start().await.unwrap();
        let rsp = client()
            .post(format!("{}/openai/v1/chat/completions", upstream.url()))
            .header("x-mock-gap-ms", "2")
            .json(&chat(true, "stream me"))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["content-type"], "text/event-stream");
        let frames = frames(rsp).await.unwrap();

        // role, 5 words ("Mock", " reply", " to:", " stream", " me"), finish, usage, [DONE]
        assert_eq!(frames.len(), 1 + 5 + 1 + 1 + 1, "one frame per SSE event");
        assert_eq!(frames.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        let events: Vec<Value> = frames[..frames.len() - 1]
            .iter()
            .map(|f| event_json(f))
            .collect();
        assert!(events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"));
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            text, "Mock reply to: stream me",
            "deltas reassemble the reply"
        );
        assert_eq!(events[6]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            events[7]["choices"],
            json!([]),
            "the usage chunk has no choices"
        );
        assert_eq!(events[7]["usage"]["completion_tokens"], 5);
        assert_eq!(
            frames.concat(),
            upstream.responses()[0],
            "responses() holds the exact bytes"
        );
    }

    #[tokio::test]
    async fn stream_without_include_usage_has_no_usage_chunk() {
        let upstream = MockUpstream::start().await.unwrap();
        let mut body = chat(true, "hi");
        body.as_object_mut().unwrap().remove("stream_options");
        let rsp = client()
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let frames = frames(rsp).await.unwrap();
        let text = String::from_utf8(frames.concat()).unwrap();
        assert!(
            !text.contains("\"usage\""),
            "usage only when include_usage is set"
        );
        assert_eq!(frames.len(), 1 + 4 + 1 + 1, "role, 4 words, finish, [DONE]");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn tool_call_non_stream_and_stream() {
        let upstream = MockUpstream::start().await.unwrap();
        let url = format!("{}/v1/chat/completions", upstream.url());

        let body: Value = client()
            .post(&url)
            .json(&with_tools(chat(false, "call tool weather in Paris")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"input": "call tool weather in Paris"}));

        // The header forces a tool call even when the text does not ask for one.
        let rsp = client()
            .post(&url)
            .header("x-mock-tool-call", "1")
            .json(&with_tools(chat(true, "what is the weather")))
            .send()
            .await
            .unwrap();
        let frames = frames(rsp).await.unwrap();
        let events: Vec<Value> = frames[..frames.len() - 1]
            .iter()
            .map(|f| event_json(f))
            .collect();
        let deltas: Vec<&Value> = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(deltas[0]["function"]["name"], "get_weather");
        assert_eq!(deltas[0]["id"], "call_mock_1");
        let arguments: String = deltas
            .iter()
            .filter_map(|d| d["function"]["arguments"].as_str())
            .collect();
        assert_eq!(arguments, r#"{"input":"what is the weather"}"#);
        assert!(
            deltas.len() >= 4,
            "arguments are split across several chunks"
        );
        assert!(deltas.iter().all(|d| d["index"] == 0));
        let finish = events
            .iter()
            .find_map(|e| e["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"));

        // Tools without the trigger: a normal reply.
        let body: Value = client()
            .post(&url)
            .json(&with_tools(chat(false, "just talk")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Mock reply to: just talk"
        );
    }

    #[tokio::test]
    async fn status_header_model_and_bad_input_give_openai_errors() {
        let upstream = MockUpstream::start().await.unwrap();
        let url = format!("{}/v1/chat/completions", upstream.url());
        let cases: [(reqwest::RequestBuilder, u16, &str, &str); 5] = [
            (
                client()
                    .post(&url)
                    .header("x-mock-status", "500")
                    .json(&chat(true, "x")),
                500,
                "server_error",
                "Mock upstream failure (status 500)",
            ),
            (
                client()
                    .get(format!("{}/v1/models", upstream.url()))
                    .header("x-mock-status", "429"),
                429,
                "rate_limit_error",
                "Mock upstream failure (status 429)",
            ),
            (
                client()
                    .post(&url)
                    .json(&json!({"model": "mock-error", "messages": []})),
                500,
                "server_error",
                "Mock upstream failure (status 500)",
            ),
            (
                client().post(&url).body("not json {"),
                400,
                "invalid_request_error",
                "",
            ),
            (
                client()
                    .post(&url)
                    .header("x-mock-gap-ms", "soon")
                    .json(&chat(false, "x")),
                400,
                "invalid_request_error",
                "invalid x-mock-gap-ms header: expected a non-negative integer",
            ),
        ];
        for (request, status, kind, message) in cases {
            let rsp = request.send().await.unwrap();
            assert_eq!(rsp.status(), status);
            assert_eq!(rsp.headers()["content-type"], "application/json");
            let body: Value = rsp.json().await.unwrap();
            assert_eq!(body["error"]["type"], kind);
            assert_eq!(body["error"]["param"], Value::Null);
            assert_eq!(body["error"]["code"], Value::Null);
            if !message.is_empty() {
                assert_eq!(body["error"]["message"], message);
            }
        }

        let rsp = client()
            .post(&url)
            .header("x-mock-status", "201")
            .json(&chat(false, "created"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            rsp.status(),
            201,
            "a status below 400 keeps the normal reply"
        );
        let body: Value = rsp.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
    }

    #[tokio::test]
    async fn other_paths_echo_method_path_and_body_size() {
        let upstream = MockUpstream::start().await.unwrap();
        let body: Value = client()
            .post(format!("{}/v1/files?dims=3", upstream.url()))
            .body("12345")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body,
            json!({"object": "mock", "method": "POST", "path": "/v1/files?dims=3", "body_bytes": 5})
        );
    }

    #[tokio::test]
    async fn requests_and_responses_are_recorded_exactly() {
        let upstream = MockUpstream::start().await.unwrap();
        let sent = br#"{"model":"m","messages":[{"role":"user","content":"exact  bytes"}]}"#;
        let rsp = client()
            .post(format!("{}/v1/chat/completions?trace=1", upstream.url()))
            .header("x-custom", "kept")
            .header("content-type", "application/json")
            .body(&sent[..])
            .send()
            .await
            .unwrap();
        let received = rsp.bytes().await.unwrap();
        let _ = client()
            .get(format!("{}/v1/models", upstream.url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();

        let requests = upstream.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, Method::POST);
        assert_eq!(requests[0].path_and_query, "/v1/chat/completions?trace=1");
        assert_eq!(requests[0].headers["x-custom"], "kept");
        assert_eq!(
            requests[0].body.as_ref(),
            &sent[..],
            "the request body is kept byte for byte"
        );
        assert_eq!(requests[0].body_json().unwrap()["model"], "m");
        assert_eq!(requests[1].path_and_query, "/v1/models");
        let responses = upstream.responses();
        assert_eq!(
            responses.len(),
            2,
            "one response per request, index for index"
        );
        assert_eq!(
            responses[0], received,
            "the response body is recorded byte for byte"
        );
        assert_eq!(upstream.hits(), 2);
    }

    #[tokio::test]
    async fn hold_keeps_the_last_events_until_release() {
        let upstream = MockUpstream::start().await.unwrap();
        let mut rsp = client()
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .header("x-mock-hold", "1")
            .json(&chat(true, "wait"))
            .send()
            .await
            .unwrap();
        // role + "Mock", " reply", " to:", " wait"
        for _ in 0..5 {
            let frame = rsp.chunk().await.unwrap().unwrap();
            assert!(!frame.ends_with(b"[DONE]\n\n"));
        }
        let early = tokio::time::timeout(Duration::from_millis(150), rsp.chunk()).await;
        assert!(early.is_err(), "the finish chunk is held until release()");

        upstream.release();
        let rest = frames(rsp).await.unwrap();
        assert_eq!(rest.len(), 3, "finish, usage and [DONE] follow the release");
        assert_eq!(event_json(&rest[0])["choices"][0]["finish_reason"], "stop");
        assert_eq!(rest[2].as_ref(), b"data: [DONE]\n\n");
    }

    #[tokio::test]
    async fn a_release_before_the_hold_point_is_kept() {
        let upstream = MockUpstream::start().await.unwrap();
        upstream.release();
        let rsp = client()
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .header("x-mock-hold", "true")
            .json(&chat(true, "early"))
            .send()
            .await
            .unwrap();
        let frames = tokio::time::timeout(Duration::from_secs(5), frames(rsp))
            .await
            .expect("an earlier release() lets the held stream finish")
            .unwrap();
        assert_eq!(frames.last().unwrap().as_ref(), b"data: [DONE]\n\n");
    }

    #[tokio::test]
    async fn abort_after_fails_the_body_mid_stream() {
        let upstream = MockUpstream::start().await.unwrap();
        let rsp = client()
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .header("x-mock-abort-after", "2")
            .json(&chat(true, "cut me off"))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "the head is sent before the abort");
        let received = frames(rsp)
            .await
            .expect_err("the client sees a body error, not a clean end");
        assert_eq!(received.len(), 2);
        assert_eq!(
            upstream.responses()[0],
            received.concat(),
            "responses() shows what was sent"
        );

        // Over h2 (prior knowledge on plain HTTP) the abort is a stream reset.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let rsp = h2
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .header("x-mock-abort-after", "3")
            .json(&chat(true, "cut me off"))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.version(), reqwest::Version::HTTP_2);
        let received = frames(rsp)
            .await
            .expect_err("an h2 client sees a reset, not a clean end");
        assert_eq!(received.len(), 3);

        // A non-stream body is one frame: 0 aborts right after the head.
        let rsp = client()
            .get(format!("{}/v1/models", upstream.url()))
            .header("x-mock-abort-after", "0")
            .send()
            .await
            .unwrap();
        assert!(
            rsp.bytes().await.is_err(),
            "a truncated non-stream body is an error"
        );
    }

    #[tokio::test]
    async fn delay_holds_the_response_head() {
        let upstream = MockUpstream::start().await.unwrap();
        let started = Instant::now();
        let rsp = client()
            .get(format!("{}/v1/models", upstream.url()))
            .header("x-mock-delay-ms", "120")
            .send()
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(120),
            "the head waits for the delay"
        );
        assert_eq!(rsp.status(), 200);
    }

    #[tokio::test]
    async fn tls_serves_h2_with_a_runtime_certificate() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = key.cert.pem();
        let upstream = MockUpstream::start_tls(&cert_pem, &key.signing_key.serialize_pem())
            .await
            .unwrap();
        assert!(upstream.url().starts_with("https://localhost:"));
        let rsp = tls_client(&cert_pem)
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .header("x-mock-gap-ms", "1")
            .json(&chat(true, "secure"))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.version(), reqwest::Version::HTTP_2, "ALPN offers h2");
        let frames = frames(rsp).await.unwrap();
        assert_eq!(frames.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        assert_eq!(frames.concat(), upstream.responses()[0]);
        assert_eq!(upstream.requests()[0].version, Version::HTTP_2);
    }

    #[tokio::test]
    async fn committed_dev_certs_verify_for_localhost() {
        let upstream = MockUpstream::start_tls(
            include_str!("../certs/server.pem"),
            include_str!("../certs/server.key"),
        )
        .await
        .unwrap();
        let rsp = tls_client(include_str!("../certs/ca.pem"))
            .get(format!("{}/v1/models", upstream.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            rsp.status(),
            200,
            "certs/server.pem verifies against certs/ca.pem"
        );
    }

    #[tokio::test]
    async fn bad_pem_is_an_error_not_a_panic() {
        let err = MockUpstream::start_tls("no pem here", "nor here")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn dropping_the_mock_stops_the_server() {
        let upstream = MockUpstream::start().await.unwrap();
        let addr = upstream.addr;
        drop(upstream);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the listener closes after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Splits an SSE body into (event name, data JSON) pairs; a `data: [DONE]` is `("", null)`.
    fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(body).unwrap();
        text.split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).unwrap_or(Value::Null);
                    }
                }
                (name, data)
            })
            .collect()
    }

    async fn post(upstream: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", upstream.url()))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn responses_api_answers_a_response_object_or_typed_events_without_done() {
        let upstream = MockUpstream::start().await.unwrap();
        let ask =
            json!({"model": "gpt-4.1", "instructions": "Be brief.", "input": "hello responses"});
        let body: Value = post(&upstream, "/v1/responses", &ask)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["object"], "response");
        assert_eq!(body["status"], "completed");
        assert_eq!(body["model"], "gpt-4.1");
        assert_eq!(
            body["output"][0]["content"][0]["text"],
            "Mock reply to: hello responses"
        );
        assert_eq!(
            body["usage"]["input_tokens"], 4,
            "instructions and input words count"
        );
        assert_eq!(body["usage"]["output_tokens"], 5);
        assert_eq!(body["usage"]["input_tokens_details"]["cached_tokens"], 0);

        let mut streamed = ask.clone();
        streamed["stream"] = json!(true);
        let rsp = post(&upstream, "/v1/responses", &streamed).await;
        assert_eq!(rsp.headers()["content-type"], "text/event-stream");
        let events = sse_events(&rsp.bytes().await.unwrap());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"response.created"));
        assert_eq!(
            names.last(),
            Some(&"response.completed"),
            "a Responses stream ends with its terminal event, no [DONE]"
        );
        assert!(
            events.iter().all(|(n, d)| d["type"] == n.as_str()),
            "data.type repeats the event name"
        );
        let seq: Vec<u64> = events
            .iter()
            .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Mock reply to: hello responses");
        let last = &events.last().unwrap().1;
        assert_eq!(last["response"]["usage"]["output_tokens"], 5);

        // Tool call, streamed.
        let tools =
            json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]);
        let call = json!({"model": "gpt-4.1", "stream": true, "tools": tools,
                          "input": [{"role": "user", "content": [{"type": "input_text", "text": "call tool now"}]}]});
        let events = sse_events(
            &post(&upstream, "/v1/responses", &call)
                .await
                .bytes()
                .await
                .unwrap(),
        );
        let args: String = events
            .iter()
            .filter(|(n, _)| n == "response.function_call_arguments.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(args, r#"{"input":"call tool now"}"#);
        let done = &events.last().unwrap().1["response"]["output"][0];
        assert_eq!(done["type"], "function_call");
        assert_eq!(done["name"], "lookup");
    }

    #[tokio::test]
    async fn anthropic_messages_answer_a_message_or_named_events() {
        let upstream = MockUpstream::start().await.unwrap();
        let ask = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "system": "Be brief.",
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}]});
        let body: Value = post(&upstream, "/v1/messages", &ask)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["type"], "message");
        assert_eq!(
            body["content"][0],
            json!({"type": "text", "text": "Mock reply to: hello claude"})
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["usage"]["input_tokens"], 4);
        assert_eq!(body["usage"]["output_tokens"], 5);

        let mut streamed = ask.clone();
        streamed["stream"] = json!(true);
        let events = sse_events(
            &post(&upstream, "/v1/messages", &streamed)
                .await
                .bytes()
                .await
                .unwrap(),
        );
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["message_start", "content_block_start", "ping"]
                .into_iter()
                .chain(std::iter::repeat_n("content_block_delta", 5))
                .chain(["content_block_stop", "message_delta", "message_stop"])
                .collect::<Vec<_>>(),
            "the Messages stream names every event"
        );
        assert_eq!(events[0].1["message"]["usage"]["output_tokens"], 1);
        let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(
            delta.1["usage"]["output_tokens"], 5,
            "message_delta carries the final count"
        );

        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let mut call = streamed.clone();
        call["tools"] = tools;
        call["messages"] = json!([{"role": "user", "content": "call tool weather"}]);
        let events = sse_events(
            &post(&upstream, "/v1/messages", &call)
                .await
                .bytes()
                .await
                .unwrap(),
        );
        let json: String = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(json, r#"{"input":"call tool weather"}"#);
        assert_eq!(events[1].1["content_block"]["type"], "tool_use");

        let rsp = post(
            &upstream,
            "/v1/messages",
            &json!({"model": "mock-error", "messages": []}),
        )
        .await;
        assert_eq!(rsp.status(), 500);
        let body: Value = rsp.json().await.unwrap();
        assert_eq!(
            body["type"], "error",
            "Anthropic errors use Anthropic's shape"
        );
        assert_eq!(body["error"]["type"], "api_error");
    }

    #[tokio::test]
    async fn embeddings_come_as_floats_or_base64_of_the_same_vectors() {
        use base64::Engine;
        let upstream = MockUpstream::start().await.unwrap();
        let ask =
            json!({"model": "text-embedding-3-small", "input": ["a b", "c"], "dimensions": 8});
        let floats: Value = post(&upstream, "/v1/embeddings", &ask)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(floats["object"], "list");
        assert_eq!(
            floats["data"].as_array().unwrap().len(),
            2,
            "one vector per input"
        );
        let vector: Vec<f64> = floats["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(vector.len(), 8, "`dimensions` sets the length");
        let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "vectors are unit length");
        assert_eq!(
            floats["usage"],
            json!({"prompt_tokens": 3, "total_tokens": 3})
        );

        let mut b64 = ask.clone();
        b64["encoding_format"] = json!("base64");
        let body: Value = post(&upstream, "/v1/embeddings", &b64)
            .await
            .json()
            .await
            .unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let as_f32: Vec<f32> = vector.iter().map(|x| *x as f32).collect();
        assert_eq!(
            decoded, as_f32,
            "base64 holds the same little-endian f32 vector"
        );

        let big: Value = post(
            &upstream,
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-large", "input": "x"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(big["data"][0]["embedding"].as_array().unwrap().len(), 3072);
        let rsp = post(
            &upstream,
            "/v1/embeddings",
            &json!({"model": "m", "input": 5}),
        )
        .await;
        assert_eq!(rsp.status(), 400, "a bad input is a 400, not a panic");
    }

    #[tokio::test]
    async fn legacy_completions_and_azure_deployments() {
        let upstream = MockUpstream::start().await.unwrap();
        let body: Value = post(
            &upstream,
            "/v1/completions",
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "Mock reply to: Say this");
        let events = sse_events(
            &post(
                &upstream,
                "/v1/completions",
                &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "stream": true,
                        "stream_options": {"include_usage": true}}),
            )
            .await
            .bytes()
            .await
            .unwrap(),
        );
        let text: String = events
            .iter()
            .filter_map(|(_, d)| d["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "Mock reply to: Say this");
        assert_eq!(events[events.len() - 2].1["usage"]["completion_tokens"], 5);
        assert_eq!(events.last().unwrap().1, Value::Null, "ends with [DONE]");

        let body: Value = post(
            &upstream,
            "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(
            body["model"], "prod-gpt4o",
            "the deployment answers as the model"
        );
    }

    #[tokio::test]
    async fn no_usage_and_stream_error_knobs_apply_to_every_format() {
        let upstream = MockUpstream::start().await.unwrap();
        let chat_body = chat(true, "x");
        let rsp = client()
            .post(format!("{}/v1/chat/completions", upstream.url()))
            .header("x-mock-no-usage", "1")
            .json(&chat_body)
            .send()
            .await
            .unwrap();
        let text = String::from_utf8(rsp.bytes().await.unwrap().to_vec()).unwrap();
        assert!(
            !text.contains("\"usage\""),
            "no usage chunk even with include_usage"
        );

        for (path, body, marker) in [
            ("/v1/chat/completions", chat(true, "boom"), "\"error\""),
            (
                "/v1/responses",
                json!({"model": "m", "input": "boom", "stream": true}),
                "event: response.failed",
            ),
            (
                "/v1/messages",
                json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "boom"}]}),
                "event: error",
            ),
        ] {
            let rsp = client()
                .post(format!("{}{path}", upstream.url()))
                .header("x-mock-stream-error", "1")
                .json(&body)
                .send()
                .await
                .unwrap();
            let text = String::from_utf8(rsp.bytes().await.unwrap().to_vec()).unwrap();
            assert!(
                text.contains(marker),
                "{path}: the stream fails in its own format: {text}"
            );
            assert!(
                !text.contains("[DONE]")
                    && !text.contains("message_stop")
                    && !text.contains("response.completed"),
                "{path}: no clean ending follows the error"
            );
        }

        let rsp = client()
            .post(format!("{}/v1/responses", upstream.url()))
            .header("x-mock-no-usage", "1")
            .json(&json!({"model": "m", "input": "x"}))
            .send()
            .await
            .unwrap();
        let body: Value = rsp.json().await.unwrap();
        assert_eq!(body["usage"], Value::Null);
    }

    #[test]
    fn pieces_concatenate_to_the_input() {
        assert_eq!(
            word_pieces("Mock reply to: hi"),
            ["Mock", " reply", " to:", " hi"]
        );
        assert_eq!(word_pieces(""), Vec::<&str>::new());
        let text = r#"{"input":"héllo wörld"}"#;
        let pieces = split_even(text, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), text);
        assert_eq!(split_even("ab", 3), ["a", "b"]);
    }
}

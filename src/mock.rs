//! A scripted mock of an OpenAI-compatible upstream, for `llm-tracer demo` and the tests.
//!
//! [`MockUpstream::start`] serves HTTP/1.1 and h2 (auto-detected) on `127.0.0.1:0`;
//! [`MockUpstream::start_tls`] does the same over TLS (ALPN `h2`, `http/1.1`). Dropping the
//! [`MockUpstream`] stops the server and every connection it accepted. The mock records every request
//! ([`MockUpstream::requests`]) and the exact bytes of every response body it sent
//! ([`MockUpstream::responses`]), index for index, so tests can compare what a proxy passed through
//! byte for byte.
//!
//! # What it answers
//! - `POST …/chat/completions` (any prefix): the reply text is `"Mock reply to: <text of the last user
//!   message>"`. Without `stream` it is an OpenAI `chat.completion` JSON (`content-type:
//!   application/json`, with `content-length`); `usage` counts whitespace-separated words (prompt: all
//!   message texts; completion: the reply). With `"stream": true` it is `text/event-stream`: one
//!   `chat.completion.chunk` event per body frame — first `delta.role`, then one content delta per word,
//!   then an empty delta with `finish_reason: "stop"`, then (if `stream_options.include_usage`) a usage
//!   chunk with empty `choices`, then `data: [DONE]`.
//! - The same request with a non-empty `tools` array whose last message is a user message starting
//!   with `"call tool"` (or with header `x-mock-tool-call: 1`) answers with one call of the first tool,
//!   arguments `{"input":"<last user text>"}` and `finish_reason: "tool_calls"`; streamed, the
//!   arguments are split across three `tool_calls` deltas (index 0).
//! - Model `"mock-error"` → 500 with an OpenAI error JSON (the demo's failing call).
//! - Anything else (`GET /v1/models`, `POST /v1/embeddings`, …) → 200
//!   `{"object":"mock","method":…,"path":<path and query>,"body_bytes":N}`.
//! - A chat body that is not a JSON object, or a malformed `x-mock-*` header → 400 with an OpenAI error
//!   JSON (`invalid_request_error`). The mock never panics on input.
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
//! | `x-mock-hold: 1` | hold back the last events of a stream (finish chunk, usage, `[DONE]`) until [`MockUpstream::release`] is called; a non-stream body is held whole (the head is sent) |
//! | `x-mock-delay-ms: N` | wait N ms before sending the response head |
//! | `x-mock-tool-call: 1` | answer a chat request that has `tools` with a tool call |
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

    let (plan, knobs) = match knobs(&parts.headers) {
        Err(message) => (
            error_plan(StatusCode::BAD_REQUEST, &message),
            Knobs::default(),
        ),
        Ok(knobs) if !body_ok => (
            error_plan(StatusCode::BAD_REQUEST, "could not read the request body"),
            knobs,
        ),
        Ok(knobs) => {
            let is_chat =
                parts.method == Method::POST && parts.uri.path().ends_with("/chat/completions");
            let plan = match knobs.status {
                Some(status) if status.as_u16() >= 400 => error_plan(
                    status,
                    &format!("Mock upstream failure (status {})", status.as_u16()),
                ),
                _ if is_chat => chat_plan(slot, &body, &knobs),
                _ => echo_plan(&parts.method, &path_and_query, body.len()),
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

/// An OpenAI-shaped error reply.
fn error_plan(status: StatusCode, message: &str) -> Plan {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
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

/// What a chat request asked for, read leniently (missing fields take defaults).
struct ChatRequest {
    model: String,
    user_text: String,
    prompt_words: usize,
    stream: bool,
    include_usage: bool,
    /// `Some(tool name)` when the reply is a tool call.
    tool: Option<String>,
}

impl ChatRequest {
    fn parse(body: &[u8], knobs: &Knobs) -> Result<ChatRequest, String> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Mock upstream: the request body is not valid JSON ({e})"))?;
        if !request.is_object() {
            return Err("Mock upstream: the request body must be a JSON object".to_owned());
        }
        let messages = request["messages"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let user_text = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| content_text(&m["content"]))
            .unwrap_or_default();
        let last_is_call = messages.last().is_some_and(|m| {
            m["role"] == "user" && content_text(&m["content"]).starts_with("call tool")
        });
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
        Ok(ChatRequest {
            model: request["model"].as_str().unwrap_or("mock-model").to_owned(),
            prompt_words: messages
                .iter()
                .map(|m| words(&content_text(&m["content"])))
                .sum(),
            user_text,
            stream: request["stream"] == true,
            include_usage: request["stream_options"]["include_usage"] == true,
            tool,
        })
    }
}

fn chat_plan(slot: usize, body: &[u8], knobs: &Knobs) -> Plan {
    let chat = match ChatRequest::parse(body, knobs) {
        Ok(chat) => chat,
        Err(message) => return error_plan(StatusCode::BAD_REQUEST, &message),
    };
    if chat.model == "mock-error" {
        return error_plan(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Mock upstream failure (status 500)",
        );
    }
    let id = format!("chatcmpl-mock-{slot}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let reply = format!("Mock reply to: {}", chat.user_text);
    let arguments = json!({ "input": chat.user_text }).to_string();
    let completion_words = match chat.tool {
        Some(_) => words(&arguments),
        None => words(&reply),
    };
    let usage = json!({
        "prompt_tokens": chat.prompt_words,
        "completion_tokens": completion_words,
        "total_tokens": chat.prompt_words + completion_words,
    });
    let call_id = format!("call_mock_{slot}");

    if !chat.stream {
        let (message, finish) = match &chat.tool {
            Some(name) => (
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": name, "arguments": arguments}}]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": reply, "refusal": null}),
                "stop",
            ),
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": chat.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        });
        return json_plan(StatusCode::OK, &body);
    }

    let chunk = |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if chat.include_usage {
            chunk["usage"] = Value::Null;
        }
        sse_event(&chunk.to_string())
    };
    let mut frames = Vec::new();
    let finish = match &chat.tool {
        Some(name) => {
            frames.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function",
                     "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in split_even(&arguments, 3) {
                frames.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
        None => {
            frames.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            for piece in word_pieces(&reply) {
                frames.push(chunk(json!({ "content": piece }), Value::Null));
            }
            "stop"
        }
    };
    let hold_from = frames.len();
    frames.push(chunk(json!({}), json!(finish)));
    if chat.include_usage {
        let last = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
            "choices": [], "usage": usage,
        });
        frames.push(sse_event(&last.to_string()));
    }
    frames.push(sse_event("[DONE]"));
    Plan {
        status: StatusCode::OK,
        content_type: "text/event-stream",
        stream: true,
        frames,
        hold_from: Some(hold_from),
    }
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
            body["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}),
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
            .post(format!("{}/v1/embeddings?dims=3", upstream.url()))
            .body("12345")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body,
            json!({"object": "mock", "method": "POST", "path": "/v1/embeddings?dims=3", "body_bytes": 5})
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

//! `assemble`: turns one captured exchange (`CallRecord`) into a `Span`.
//!
//! Owns what every call shares: times and IDs, capture counters, the redacted HTTP summary, body
//! decoding, the choice of operation by path, the span's status and error (proxy failure,
//! upstream 4xx/5xx, a body that failed or was abandoned), token estimation when the upstream
//! reported no usage, and cost. What a body *means* belongs to the operation modules (`openai`
//! for chat and legacy completions, `embeddings`, `responses`, `anthropic`), chosen by
//! [`Operation::detect`].
//!
//! Pure and total: no I/O, no panics on any input. What cannot be parsed is kept raw.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::Value;

use super::{
    anthropic, decode, embeddings,
    estimate::{self, Encoding, Estimate},
    openai,
    pricing::PriceTable,
    redact, responses, CaptureInfo, HttpInfo, Kind, LlmInfo, Span, SpanError, Status, Timestamp,
};
use crate::tap::{CallRecord, Captured, End};

/// Knobs for assembly.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    /// Most bytes a compressed body may inflate to; past it the decoded copy is cut, so a
    /// zip bomb costs at most this much memory.
    pub max_decoded_bytes: usize,
    /// Longest error message kept, in chars.
    pub max_error_message_chars: usize,
    /// Keep embedding vectors in `output` (config `capture_embeddings`; off by default: they
    /// are large and rarely worth reading).
    pub capture_embeddings: bool,
    /// Model prices for `cost_usd` (empty: every cost is `null`).
    pub pricing: Arc<PriceTable>,
    /// The user's `[[redact]]` rules, applied to the assembled span before it is stored.
    pub redactor: Arc<redact::Redactor>,
}

impl Default for AssembleOptions {
    fn default() -> Self {
        Self {
            max_decoded_bytes: 64 << 20,
            max_error_message_chars: 2000,
            capture_embeddings: false,
            pricing: Arc::new(PriceTable::new()),
            redactor: Arc::new(redact::Redactor::default()),
        }
    }
}

/// Metadata key under which assembly leaves notes (an undecodable body, skipped stream events).
pub const NOTES_KEY: &str = "tracer.notes";

/// The API operation a call is, by the path it was forwarded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// `…/chat/completions`: OpenAI and every server that copies its API.
    Chat,
    /// `…/completions`: the legacy text completions API.
    Completion,
    /// `…/responses`: OpenAI's Responses API.
    Responses,
    /// `…/embeddings`.
    Embeddings,
    /// `…/messages`: Anthropic's Messages API.
    Messages,
}

impl Operation {
    /// Matches on the upstream path (query already gone), ignoring a trailing slash. Only the
    /// last segments count, so any prefix (`/v1`, `/openai/deployments/{d}`, a gateway's own
    /// base path) works.
    fn detect(upstream_path: &str) -> Option<Self> {
        let path = upstream_path.trim_end_matches('/');
        let ends = |suffix: &str| {
            path.strip_suffix(suffix)
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('/'))
        };
        if ends("chat/completions") {
            Some(Operation::Chat)
        } else if ends("completions") {
            Some(Operation::Completion)
        } else if ends("responses") {
            Some(Operation::Responses)
        } else if ends("embeddings") {
            Some(Operation::Embeddings)
        } else if ends("messages") && !path.contains("/threads/") {
            // `/threads/{id}/messages` is OpenAI's Assistants API, not a model call.
            Some(Operation::Messages)
        } else {
            None
        }
    }

    fn assemble(self, x: &Exchange<'_>) -> Outcome {
        match self {
            Operation::Chat => openai::chat(x),
            Operation::Completion => openai::completion(x),
            Operation::Responses => responses::responses(x),
            Operation::Embeddings => embeddings::embeddings(x),
            Operation::Messages => anthropic::messages(x),
        }
    }
}

/// The deployment named by an Azure-style path, `…/openai/deployments/{deployment}/…`.
fn azure_deployment(upstream_path: &str) -> Option<&str> {
    let mut segments = upstream_path.split('/');
    segments.find(|s| *s == "deployments")?;
    segments.next().filter(|d| !d.is_empty())
}

/// One captured body, decoded once.
#[derive(Debug)]
pub(super) struct BodyView {
    pub bytes: Bytes,
    /// JSON when it parses, else text; `null` when empty.
    pub value: Value,
    pub json: bool,
    /// The capture cap cut the copy.
    pub truncated: bool,
    /// `bytes` are the wire bytes, so offsets in them map to `Captured::marks`.
    pub wire: bool,
}

/// How a response body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// Upstream status ≥ 400: the body is an error report, kept as is.
    Failed,
    Sse,
    Json,
    /// Text, binary or nothing.
    Other,
}

/// What an operation reads: the call, with both bodies decoded.
#[derive(Debug)]
pub(super) struct Exchange<'a> {
    pub provider_hint: Option<&'a str>,
    /// The Azure deployment the path names; the model when the body names none.
    pub deployment: Option<&'a str>,
    pub capture_embeddings: bool,
    pub status: Option<u16>,
    pub response_content_type: Option<&'a str>,
    pub request: &'a BodyView,
    pub response: &'a BodyView,
}

impl Exchange<'_> {
    /// The provider for the span: the route's `provider`, else `azure` for a deployment path,
    /// else the operation's own (`openai`, `anthropic`).
    pub fn provider(&self, default: &str) -> String {
        match (self.provider_hint, self.deployment) {
            (Some(hint), _) => hint.to_string(),
            (None, Some(_)) => "azure".to_string(),
            (None, None) => default.to_string(),
        }
    }

    /// The request's `model`, else the Azure deployment.
    pub fn request_model(&self) -> Option<String> {
        self.request
            .value
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .or(self.deployment)
            .map(str::to_owned)
    }

    /// Picks how to read the response. `expect_stream`: the request asked for a stream, so a body
    /// that is neither labelled SSE nor JSON is tried as SSE.
    pub fn form(&self, expect_stream: bool) -> Form {
        let content_type = self
            .response_content_type
            .unwrap_or_default()
            .to_ascii_lowercase();
        if self.status.is_some_and(|s| s >= 400) {
            Form::Failed
        } else if content_type.contains("text/event-stream") {
            Form::Sse
        } else if self.response.json {
            Form::Json
        } else if expect_stream && !self.response.bytes.is_empty() {
            Form::Sse
        } else {
            Form::Other
        }
    }
}

/// What an operation made of an exchange; `assemble` adds times, status and errors.
#[derive(Debug)]
pub(super) struct Outcome {
    pub kind: Kind,
    /// The name when the app gave none.
    pub name: String,
    pub llm: Option<LlmInfo>,
    pub output: Value,
    /// An error the body itself reported (a mid-stream error event or chunk).
    pub body_error: Option<SpanError>,
    /// The body reached its logical end (`[DONE]`, a whole JSON document): a client that hung
    /// up after that missed nothing, so the call is not "cancelled".
    pub finished: bool,
    /// The response was read as a stream (TTFT applies).
    pub streamed: bool,
    /// Offset in the response body just past the first event that carried generated output.
    pub first_token_end: Option<u64>,
    pub notes: Vec<String>,
    /// The text to count when the upstream reported no usage (set only then).
    pub estimate: Option<Estimate>,
}

impl Outcome {
    pub fn new(kind: Kind, name: String) -> Self {
        Self {
            kind,
            name,
            llm: None,
            output: Value::Null,
            body_error: None,
            finished: false,
            streamed: false,
            first_token_end: None,
            notes: Vec::new(),
            estimate: None,
        }
    }
}

/// Builds the span for one proxied call. Never fails: what cannot be parsed is kept raw.
pub fn assemble(record: CallRecord, opts: &AssembleOptions) -> Span {
    let CallRecord {
        ctx,
        method,
        path,
        upstream_path,
        upstream,
        provider_hint,
        request_content_type: _,
        request_content_encoding,
        response_content_type,
        response_content_encoding,
        status,
        started,
        started_at,
        head_at: _,
        ended_at,
        request,
        response,
        proxy_error,
    } = record;

    let start_time = Timestamp::from_system(started);
    let elapsed = micros(ended_at.saturating_duration_since(started_at));
    let end_time = Timestamp(start_time.micros().saturating_add(elapsed));

    let mut notes = Vec::new();
    let mut req = view(
        request.as_ref(),
        request_content_encoding.as_deref(),
        opts,
        "request",
        &mut notes,
    );
    // Credentials some gateways accept in the body (`api_key`, …) never reach `input`/`params`.
    redact::redact_body_credentials(&mut req.value);
    let rsp = view(
        response.as_ref(),
        response_content_encoding.as_deref(),
        opts,
        "response",
        &mut notes,
    );
    let exchange = Exchange {
        provider_hint: provider_hint.as_deref(),
        deployment: azure_deployment(&upstream_path),
        capture_embeddings: opts.capture_embeddings,
        status,
        response_content_type: response_content_type.as_deref(),
        request: &req,
        response: &rsp,
    };
    let app_path = path.split(['?', '#']).next().unwrap_or_default();
    // Only a POST creates something; a GET on the same path lists or fetches stored objects.
    let operation = Operation::detect(&upstream_path).filter(|_| method == "POST");
    let mut outcome = match operation {
        Some(op) => op.assemble(&exchange),
        None => raw_http(&exchange, &method, app_path),
    };
    notes.append(&mut outcome.notes);

    let failed_before_model = proxy_error.is_some() || status.is_some_and(|s| s >= 400);
    // Status and error, most telling cause first.
    let mut output = outcome.output;
    let (status_out, error) = if let Some((kind, message)) = proxy_error {
        output = Value::Null;
        (Status::Error, Some(SpanError { kind, message }))
    } else if let Some(code) = status.filter(|s| *s >= 400) {
        output = rsp.value.clone();
        (Status::Error, Some(upstream_error(code, &rsp.value)))
    } else if let Some(e) = outcome.body_error {
        (Status::Error, Some(e))
    } else {
        ending(
            status,
            request.as_ref(),
            response.as_ref(),
            outcome.finished,
        )
    };
    let error = error.map(|e| SpanError {
        kind: e.kind,
        message: truncate_chars(&e.message, opts.max_error_message_chars),
    });

    let mut llm = outcome.llm;
    if let Some(llm) = llm.as_mut() {
        // Tokens the upstream did not report are counted, unless the call failed before any
        // model ran (an upstream 4xx/5xx or a proxy error bills nothing).
        if llm.usage_source.is_none() && !failed_before_model {
            if let Some(estimate) = outcome.estimate.as_ref() {
                apply_estimate(llm, estimate, &mut notes);
            }
        }
        let models: Vec<&str> = [llm.response_model.as_deref(), llm.request_model.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        llm.cost_usd = opts.pricing.cost(&models, llm);
    }
    if let (Some(llm), true) = (llm.as_mut(), outcome.streamed) {
        llm.ttft_ms = response.as_ref().and_then(|c| {
            let first_token = outcome
                .first_token_end
                .filter(|_| rsp.wire)
                .and_then(|end| arrival(&c.marks, end));
            first_token
                .or(c.first_byte_at)
                .map(|at| ms(micros(at.saturating_duration_since(started_at))))
        });
    }

    let mut metadata = ctx.metadata;
    if !notes.is_empty() {
        metadata.insert(NOTES_KEY.to_string(), Value::String(notes.join("; ")));
    }
    let seen = |c: &Option<Captured>| c.as_ref().map_or(0, |c| c.seen);

    let mut span = Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        name: ctx.span_name.unwrap_or(outcome.name),
        kind: outcome.kind,
        start_time,
        end_time,
        duration_ms: ms(elapsed),
        status: status_out,
        error,
        session_id: ctx.session_id,
        user_id: ctx.user_id,
        tags: ctx.tags,
        metadata,
        http: Some(HttpInfo {
            method,
            path: redact::redact_path(&path),
            status,
            upstream: redact::redact_url(&upstream),
        }),
        llm,
        input: req.value,
        output,
        capture: Some(CaptureInfo {
            truncated: req.truncated || rsp.truncated,
            bytes_in: seen(&request),
            bytes_out: seen(&response),
            chunks: response.as_ref().map_or(0, |c| c.frames),
        }),
    };
    // Last, on the finished span: the rules see the reassembled stream output and the error
    // message, and the store gets nothing else.
    opts.redactor.apply(&mut span);
    span
}

/// Counts the tokens of `estimate` with the model's encoding and marks them "estimated".
fn apply_estimate(llm: &mut LlmInfo, estimate: &Estimate, notes: &mut Vec<String>) {
    if estimate.input.is_empty() && estimate.output.is_empty() {
        return;
    }
    let model = llm
        .response_model
        .as_deref()
        .or(llm.request_model.as_deref());
    let anthropic = llm.provider.as_deref() == Some("anthropic")
        || model.is_some_and(|m| m.to_ascii_lowercase().contains("claude"));
    let encoding = Encoding::for_model(model);
    let Some((input, output)) = estimate::count(estimate, encoding) else {
        notes.push("token estimation unavailable: the tokenizer failed to load".to_string());
        return;
    };
    llm.input_tokens = Some(input);
    llm.output_tokens = Some(output);
    llm.total_tokens = Some(input.saturating_add(output));
    llm.usage_source = Some("estimated".to_string());
    if anthropic {
        notes.push(format!(
            "usage estimated with {} (an approximation of Claude's tokenizer)",
            encoding.name()
        ));
    }
}

/// A call on a path no operation claims: the raw exchange.
fn raw_http(x: &Exchange<'_>, method: &str, app_path: &str) -> Outcome {
    let mut outcome = Outcome::new(Kind::Http, format!("{method} {app_path}"));
    outcome.output = x.response.value.clone();
    outcome.finished = x.response.json && !x.response.truncated;
    outcome
}

fn view(
    captured: Option<&Captured>,
    encoding: Option<&str>,
    opts: &AssembleOptions,
    side: &str,
    notes: &mut Vec<String>,
) -> BodyView {
    let (raw, truncated) = captured.map_or((Bytes::new(), false), |c| (c.bytes(), c.truncated));
    let decoded = decode::decode(raw, encoding, truncated, opts.max_decoded_bytes);
    if let Some(note) = &decoded.note {
        notes.push(format!("{side} body: {note}"));
    }
    let (value, json) = decode::to_value(&decoded.bytes, decoded.undecoded.as_deref());
    if !json && !truncated && decoded.undecoded.is_none() {
        // A body that opens like JSON but does not parse: say where, so the span explains why
        // `input`/`output` is a string. (Streams start with `data:`/`event:`; the SSE parser
        // notes their events.)
        let opens_like_json = decoded
            .bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[');
        if opens_like_json {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&decoded.bytes) {
                notes.push(format!("{side} body is not valid JSON: {e}"));
            }
        }
    }
    BodyView {
        bytes: decoded.bytes,
        value,
        json,
        truncated,
        wire: decoded.wire,
    }
}

/// Status when neither the proxy, the upstream status nor the body reported an error: how the
/// bodies ended decides.
fn ending(
    status: Option<u16>,
    request: Option<&Captured>,
    response: Option<&Captured>,
    finished: bool,
) -> (Status, Option<SpanError>) {
    match response.and_then(|c| c.end) {
        Some(End::Error) => {
            let message = response
                .and_then(|c| c.error.clone())
                .unwrap_or_else(|| "the upstream response body failed".to_string());
            let kind = response
                .and_then(|c| c.error_kind)
                .unwrap_or("upstream_body_error");
            // An upstream that sent the logical end (`[DONE]`, a terminal event) and then kept
            // the body open until the idle limit cut it off lost nothing.
            if !(finished && kind == crate::idle::IDLE_TIMEOUT_KIND) {
                return (Status::Error, Some(err(kind, message)));
            }
        }
        Some(End::Cancelled) if !finished => return (Status::Cancelled, Some(cancelled())),
        _ => {}
    }
    if status.is_some() {
        return (Status::Ok, None);
    }
    // No response head and no proxy error: the request side tells what happened.
    match request.and_then(|c| c.end) {
        Some(End::Cancelled) => (Status::Cancelled, Some(cancelled())),
        Some(End::Error) => {
            let message = request
                .and_then(|c| c.error.clone())
                .unwrap_or_else(|| "the request body failed".to_string());
            (Status::Error, Some(err("request_body_error", message)))
        }
        _ => (
            Status::Error,
            Some(err("no_response", "the upstream sent no response head")),
        ),
    }
}

fn cancelled() -> SpanError {
    err(
        "cancelled",
        "client disconnected before the response completed",
    )
}

fn err(kind: &str, message: impl Into<String>) -> SpanError {
    SpanError {
        kind: kind.to_string(),
        message: message.into(),
    }
}

/// The error an upstream 4xx/5xx body reports, in any of the shapes upstreams use.
fn upstream_error(status: u16, body: &Value) -> SpanError {
    let (kind, message) = describe_error(body);
    SpanError {
        kind: kind.unwrap_or_else(|| format!("http_{status}")),
        message: message.unwrap_or_else(|| format!("upstream returned HTTP {status}")),
    }
}

/// Reads (type, message) from an error body: OpenAI's `{"error":{"message","type","code"}}`,
/// `{"error":"…"}`, `{"message":…}`, `{"detail":…}` (FastAPI), or plain text.
pub(super) fn describe_error(body: &Value) -> (Option<String>, Option<String>) {
    match body {
        Value::Object(obj) => {
            let kind_of = |o: &serde_json::Map<String, Value>| {
                text(o.get("type")).or_else(|| text(o.get("code")))
            };
            match obj.get("error") {
                Some(Value::Object(inner)) => (
                    kind_of(inner).or_else(|| kind_of(obj).filter(|k| k != "error")),
                    text(inner.get("message")).or_else(|| text(obj.get("message"))),
                ),
                Some(Value::String(s)) if !s.is_empty() => {
                    (kind_of(obj).filter(|k| k != "error"), Some(s.clone()))
                }
                _ => (
                    kind_of(obj).filter(|k| k != "error"),
                    text(obj.get("message"))
                        .or_else(|| text(obj.get("detail")))
                        .or_else(|| obj.get("detail").map(Value::to_string)),
                ),
            }
        }
        Value::String(s) if !s.trim().is_empty() => (None, Some(s.trim().to_string())),
        _ => (None, None),
    }
}

/// A non-empty string or a number, as text.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// When the frame that completed byte `end` of the body arrived: the first mark whose
/// cumulative byte count reaches it.
fn arrival(marks: &[(u64, Instant)], end: u64) -> Option<Instant> {
    let i = marks.partition_point(|(seen, _)| *seen < end);
    marks.get(i).map(|(_, at)| *at)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests;

//! `assemble` end to end on captured exchanges: chat (plain, streamed, tool calls, n>1, gzip),
//! errors and endings, truncation, raw HTTP, redaction and hostile bodies.

use std::io::Write;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use serde_json::{json, Value};

use super::*;
use crate::propagate::TraceContext;

const CHAT_JSON: &str = include_str!("../../../tests/fixtures/openai_chat.json");
const CHAT_STREAM: &str = include_str!("../../../tests/fixtures/openai_chat_stream.sse");

/// Start of every test call: 2025-11-27T02:21:28.123456Z.
const START_MICROS: u64 = 1_764_210_088_123_456;

/// A call record under construction; `span()` assembles it.
struct Call(CallRecord);

impl Call {
    /// A call to `path` (as the app sent it); the upstream path is the same, less the query.
    fn new(method: &str, path: &str) -> Self {
        let started_at = Instant::now();
        let upstream_path = path.split('?').next().unwrap_or_default().to_string();
        Call(CallRecord {
            ctx: TraceContext {
                trace_id: "trace-1".into(),
                span_id: "00f067aa0ba902b7".into(),
                ..TraceContext::default()
            },
            method: method.into(),
            path: path.into(),
            upstream_path,
            upstream: "https://api.openai.com".into(),
            provider_hint: None,
            request_content_type: None,
            request_content_encoding: None,
            response_content_type: None,
            response_content_encoding: None,
            status: Some(200),
            started: UNIX_EPOCH + Duration::from_micros(START_MICROS),
            started_at,
            head_at: Some(started_at + Duration::from_millis(50)),
            ended_at: started_at + Duration::from_micros(1_234_567),
            request: None,
            response: None,
            proxy_error: None,
        })
    }

    fn chat(request: &Value) -> Self {
        Call::new("POST", "/v1/chat/completions").request(request.to_string().as_bytes())
    }

    fn request(mut self, body: &[u8]) -> Self {
        self.0.request_content_type = Some("application/json".into());
        self.0.request = Some(captured(self.0.started_at, &[(body, 0)]));
        self
    }

    /// The response body as frames, each with its arrival in ms after the start.
    fn response(mut self, content_type: &str, frames: &[(&[u8], u64)]) -> Self {
        self.0.response_content_type = Some(content_type.into());
        self.0.response = Some(captured(self.0.started_at, frames));
        self
    }

    /// The response body in one frame, 100 ms after the start.
    fn response_body(self, content_type: &str, body: &[u8]) -> Self {
        self.response(content_type, &[(body, 100)])
    }

    fn status(mut self, status: Option<u16>) -> Self {
        self.0.status = status;
        self
    }

    fn with(mut self, f: impl FnOnce(&mut CallRecord)) -> Self {
        f(&mut self.0);
        self
    }

    fn response_capture(mut self, f: impl FnOnce(&mut Captured)) -> Self {
        if let Some(c) = self.0.response.as_mut() {
            f(c);
        }
        self
    }

    fn span(self) -> Span {
        assemble(self.0, &AssembleOptions::default())
    }
}

/// A body as the tap would report it, complete, with a mark per frame.
fn captured(start: Instant, frames: &[(&[u8], u64)]) -> Captured {
    let mut c = Captured::default();
    for (data, at_ms) in frames {
        let at = start + Duration::from_millis(*at_ms);
        c.first_byte_at.get_or_insert(at);
        c.seen += data.len() as u64;
        c.frames += 1;
        c.marks.push((c.seen, at));
        c.kept += data.len();
        c.chunks.push(Bytes::copy_from_slice(data));
    }
    c.end = Some(End::Complete);
    c
}

/// `body` cut into frames at `cuts`, frame k arriving at `(k + 1) * 100` ms.
fn frames_at<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<(&'a [u8], u64)> {
    let mut frames = Vec::new();
    let mut from = 0;
    for (k, &cut) in cuts.iter().chain(std::iter::once(&body.len())).enumerate() {
        frames.push((&body[from..cut], (k as u64 + 1) * 100));
        from = cut;
    }
    frames
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn chat_request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
        "temperature": 0.2,
        "max_tokens": 64,
        "stream_options": {"include_usage": true},
    })
}

fn llm(span: &Span) -> &LlmInfo {
    span.llm.as_ref().expect("a chat call has llm info")
}

fn content(span: &Span, choice: usize) -> &Value {
    &span.output["choices"][choice]["message"]["content"]
}

#[test]
fn times_ids_labels_and_capture_counts_come_from_the_record() {
    let span = Call::chat(&chat_request(false))
        .response_body("application/json", CHAT_JSON.as_bytes())
        .with(|r| {
            r.ctx.parent_span_id = Some("parent-1".into());
            r.ctx.session_id = Some("s1".into());
            r.ctx.user_id = Some("u1".into());
            r.ctx.tags = vec!["a".into()];
            r.ctx.metadata.insert("env".into(), json!("prod"));
        })
        .span();
    assert_eq!(
        span.start_time,
        Timestamp(START_MICROS),
        "start is the wall clock at start"
    );
    assert_eq!(
        span.end_time,
        Timestamp(START_MICROS + 1_234_567),
        "end is start plus the monotonic elapsed time"
    );
    assert_eq!(
        span.duration_ms, 1234.567,
        "duration keeps microsecond precision"
    );
    assert_eq!(span.trace_id, "trace-1");
    assert_eq!(span.span_id, "00f067aa0ba902b7");
    assert_eq!(span.parent_span_id.as_deref(), Some("parent-1"));
    assert_eq!(span.session_id.as_deref(), Some("s1"));
    assert_eq!(span.user_id.as_deref(), Some("u1"));
    assert_eq!(span.tags, vec!["a"]);
    assert_eq!(
        span.metadata.get("env"),
        Some(&json!("prod")),
        "app metadata is kept"
    );
    let capture = span
        .capture
        .as_ref()
        .expect("a proxied call has capture info");
    assert_eq!(
        capture.bytes_in,
        chat_request(false).to_string().len() as u64
    );
    assert_eq!(
        capture.bytes_out,
        CHAT_JSON.len() as u64,
        "bytes_out is what the response sent"
    );
    assert_eq!(capture.chunks, 1, "chunks counts response frames");
    assert!(!capture.truncated);
    let http = span.http.as_ref().expect("a proxied call has http info");
    assert_eq!(
        (
            http.method.as_str(),
            http.path.as_str(),
            http.status,
            http.upstream.as_str()
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(200),
            "https://api.openai.com"
        )
    );
}

#[test]
fn non_streamed_chat_reads_model_usage_and_finish_reason() {
    let span = Call::chat(&chat_request(false))
        .response_body("application/json", CHAT_JSON.as_bytes())
        .span();
    assert_eq!(span.kind, Kind::Llm, "a chat completion is an llm span");
    assert_eq!(span.status, Status::Ok);
    assert_eq!(span.error, None);
    assert_eq!(
        span.name, "chat gpt-4o-mini",
        "the default name is `chat <model>`"
    );
    let llm = llm(&span);
    assert_eq!(
        llm.provider.as_deref(),
        Some("openai"),
        "provider defaults to openai"
    );
    assert_eq!(llm.operation.as_deref(), Some("chat"));
    assert_eq!(llm.request_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        llm.response_model.as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert!(!llm.stream);
    assert_eq!(
        (llm.input_tokens, llm.output_tokens, llm.total_tokens),
        (Some(12), Some(4), Some(16)),
        "usage maps prompt/completion/total tokens"
    );
    assert_eq!(llm.usage_source.as_deref(), Some("reported"));
    assert_eq!(llm.finish_reason.as_deref(), Some("stop"));
    assert_eq!(llm.ttft_ms, None, "a non-streamed call has no TTFT");
    let expected: Value = serde_json::from_str(CHAT_JSON).unwrap();
    assert_eq!(
        span.output, expected,
        "a non-streamed response is stored as is"
    );
    assert_eq!(
        span.input,
        chat_request(false),
        "the request body is the input"
    );
}

#[test]
fn params_are_every_request_key_but_model_messages_and_stream() {
    let request = json!({
        "model": "m", "messages": [], "stream": true, "temperature": 0.7, "top_p": 0.9,
        "max_tokens": 10, "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "n": 2,
        "stream_options": {"include_usage": true}, "seed": 7,
    });
    let span = Call::chat(&request).span();
    let llm = llm(&span);
    let mut keys: Vec<&str> = llm.params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "max_tokens",
            "n",
            "response_format",
            "seed",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_p"
        ],
        "params hold every top-level key except model, messages and stream"
    );
    assert_eq!(
        llm.params["tools"], request["tools"],
        "params are kept as sent"
    );
    assert!(llm.stream, "stream: true marks the call as streamed");
}

#[test]
fn span_name_header_wins_and_a_missing_model_names_it_chat() {
    let span = Call::chat(&chat_request(false))
        .with(|r| r.ctx.span_name = Some("summarise".into()))
        .span();
    assert_eq!(
        span.name, "summarise",
        "x-tracer-span-name overrides the default name"
    );
    let span = Call::chat(&json!({"messages": []})).span();
    assert_eq!(
        span.name, "chat",
        "without a model the name is just the operation"
    );
}

#[test]
fn streamed_chat_is_reassembled_with_usage_and_ttft_from_marks() {
    let body = CHAT_STREAM.as_bytes();
    let hel = CHAT_STREAM.find("\"Hel\"").unwrap();
    let hel_end = CHAT_STREAM[hel..].find("\n\n").unwrap() + hel + 1;
    // Frame 1 ends inside the first content event; frame 2 completes it (and cuts "wörld" mid-char).
    let o_umlaut = CHAT_STREAM.find("ö").unwrap() + 1;
    let frames = frames_at(body, &[hel, o_umlaut, body.len() - 5]);
    assert!(hel_end > hel && hel_end <= o_umlaut);
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream; charset=utf-8", &frames)
        .span();
    assert_eq!(
        span.status,
        Status::Ok,
        "a stream that reached [DONE] is ok"
    );
    assert_eq!(
        content(&span, 0),
        "Hello, wörld! 👋",
        "content deltas are concatenated across events and frame boundaries"
    );
    assert_eq!(
        span.output["object"], "chat.completion",
        "a stream is stored as a chat.completion"
    );
    assert_eq!(span.output["id"], "chatcmpl-1");
    assert_eq!(span.output["created"], 1_764_210_088);
    assert_eq!(span.output["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(span.output["choices"][0]["message"]["role"], "assistant");
    assert_eq!(span.output["choices"][0]["finish_reason"], "stop");
    assert!(
        span.output["choices"][0]["message"]
            .get("tool_calls")
            .is_none()
            && span.output["choices"][0]["message"]
                .get("refusal")
                .is_none(),
        "tool_calls and refusal appear only when the stream had them"
    );
    assert_eq!(
        span.output["usage"]["total_tokens"], 17,
        "the usage chunk is kept in the output"
    );
    let llm = llm(&span);
    assert!(llm.stream);
    assert_eq!(
        llm.response_model.as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(
        (llm.input_tokens, llm.output_tokens, llm.total_tokens),
        (Some(12), Some(5), Some(17))
    );
    assert_eq!(
        llm.usage_source.as_deref(),
        Some("reported"),
        "usage from include_usage is reported"
    );
    assert_eq!(llm.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        llm.ttft_ms,
        Some(200.0),
        "TTFT is the arrival of the frame completing the first content event, not the first byte"
    );
    assert_eq!(span.capture.as_ref().unwrap().chunks, 4);
}

#[test]
fn stream_reassembly_is_the_same_however_the_frames_were_cut() {
    let body = CHAT_STREAM.as_bytes();
    let whole = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(body, 100)])
        .span();
    for cut in 1..body.len() {
        let span = Call::chat(&chat_request(true))
            .response("text/event-stream", &frames_at(body, &[cut]))
            .span();
        assert_eq!(
            span.output, whole.output,
            "cutting the stream at byte {cut} must not change the output"
        );
        assert_eq!(llm(&span).total_tokens, Some(17));
    }
}

#[test]
fn ttft_falls_back_to_the_first_byte_when_no_event_carries_content() {
    let body = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: [DONE]\n\n";
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &frames_at(body.as_bytes(), &[10]))
        .span();
    assert_eq!(
        llm(&span).ttft_ms,
        Some(100.0),
        "without content TTFT is the first response byte"
    );
}

const TOOL_STREAM: &str = r##"data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":""}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"tz\":"}},{"index":1,"function":{"arguments":"\"CET\"}"}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]

"##;

#[test]
fn streamed_tool_calls_are_accumulated_by_index() {
    let span = Call::chat(&chat_request(true))
        .response(
            "text/event-stream",
            &frames_at(TOOL_STREAM.as_bytes(), &[50, 400, 401, 777]),
        )
        .span();
    let message = &span.output["choices"][0]["message"];
    assert_eq!(
        message["tool_calls"],
        json!([
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}},
        ]),
        "parallel tool calls are keyed by index; id, type and name are set once and arguments concatenated"
    );
    assert_eq!(
        message["content"],
        Value::Null,
        "a tool-call answer without text has null content"
    );
    assert_eq!(llm(&span).finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        llm(&span).ttft_ms,
        Some(200.0),
        "a tool-call delta counts as the first token"
    );
}

#[test]
fn n_choices_are_reassembled_separately() {
    let chunk = |index: u32, delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 2, "model": "m",
                   "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})
        )
    };
    let body = [
        chunk(0, json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(1, json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(1, json!({"content": "Bon"}), Value::Null),
        chunk(0, json!({"content": "Hel"}), Value::Null),
        chunk(0, json!({"content": "lo"}), Value::Null),
        chunk(1, json!({"content": "jour"}), Value::Null),
        chunk(1, json!({}), json!("length")),
        chunk(0, json!({}), json!("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    let span = Call::chat(&json!({"model": "m", "stream": true, "n": 2}))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(
        content(&span, 0),
        "Hello",
        "choice 0 collects only its own deltas"
    );
    assert_eq!(
        content(&span, 1),
        "Bonjour",
        "choice 1 collects only its own deltas"
    );
    assert_eq!(span.output["choices"][1]["index"], 1);
    assert_eq!(
        span.output["choices"][1]["finish_reason"], "length",
        "finish_reason is per choice"
    );
    assert_eq!(
        llm(&span).finish_reason.as_deref(),
        Some("stop"),
        "the span's finish_reason is choice 0's"
    );
}

#[test]
fn refusal_and_logprobs_are_reassembled() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"refusal\":\"I can't \"},\"logprobs\":{\"content\":null,\"refusal\":[{\"token\":\"I\"}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"help.\"},\"logprobs\":{\"content\":null,\"refusal\":[{\"token\":\" can't\"}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    let choice = &span.output["choices"][0];
    assert_eq!(
        choice["message"]["refusal"], "I can't help.",
        "refusal deltas are concatenated"
    );
    assert_eq!(
        choice["logprobs"]["refusal"],
        json!([{"token": "I"}, {"token": " can't"}]),
        "logprobs are appended across chunks"
    );
    assert_eq!(choice["message"]["content"], Value::Null);
}

#[test]
fn gzip_encoded_response_is_decoded() {
    let zipped = gzip(CHAT_JSON.as_bytes());
    let (a, b) = zipped.split_at(zipped.len() / 2);
    let span = Call::chat(&chat_request(false))
        .response("application/json", &[(a, 100), (b, 120)])
        .with(|r| r.response_content_encoding = Some("gzip".into()))
        .span();
    assert_eq!(
        span.output["choices"][0]["message"]["content"], "Hello, world!",
        "gzip bodies are decoded before parsing"
    );
    assert_eq!(llm(&span).total_tokens, Some(16));
    assert_eq!(
        span.capture.as_ref().unwrap().bytes_out,
        zipped.len() as u64,
        "bytes_out counts wire bytes"
    );
    assert!(span.metadata.is_empty(), "a clean decode leaves no note");
}

#[test]
fn gzip_encoded_stream_is_decoded_and_timed_by_first_byte() {
    let zipped = gzip(CHAT_STREAM.as_bytes());
    let (a, b) = zipped.split_at(10);
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(a, 70), (b, 300)])
        .with(|r| r.response_content_encoding = Some("gzip".into()))
        .span();
    assert_eq!(content(&span, 0), "Hello, wörld! 👋");
    assert_eq!(
        llm(&span).ttft_ms,
        Some(70.0),
        "decoded offsets do not map to wire marks, so TTFT falls back to the first byte"
    );
}

#[test]
fn unsupported_encoding_is_kept_raw_with_a_note() {
    let span = Call::chat(&chat_request(false))
        .response_body("application/json", b"\x1b\x8f\x00\xff\xfe")
        .with(|r| r.response_content_encoding = Some("br".into()))
        .span();
    assert_eq!(
        span.status,
        Status::Ok,
        "an undecodable body does not fail the span"
    );
    assert_eq!(
        span.output,
        json!("[5 bytes of br-encoded body, not decoded]")
    );
    assert!(
        span.metadata[NOTES_KEY].as_str().unwrap().contains("br"),
        "the span notes which encoding was not decoded"
    );
}

#[test]
fn upstream_500_with_openai_error_json_is_an_error_span() {
    let body = json!({"error": {"message": "The server had an error while processing your request.",
                                "type": "server_error", "param": null, "code": null}});
    let span = Call::chat(&chat_request(true))
        .status(Some(500))
        .response_body("application/json", body.to_string().as_bytes())
        .span();
    assert_eq!(span.status, Status::Error, "an upstream 5xx is an error");
    let error = span.error.as_ref().unwrap();
    assert_eq!(
        error.kind, "server_error",
        "the error type comes from the upstream's error.type"
    );
    assert_eq!(
        error.message,
        "The server had an error while processing your request."
    );
    assert_eq!(span.output, body, "the error body is the output");
    assert_eq!(span.http.as_ref().unwrap().status, Some(500));
    assert_eq!(
        llm(&span).request_model.as_deref(),
        Some("gpt-4o-mini"),
        "request facts survive an error"
    );
    assert_eq!(
        serde_json::to_value(&span).unwrap()["error"],
        json!({"type": "server_error", "message": "The server had an error while processing your request."}),
        "the error serialises as {{type, message}}"
    );
}

#[test]
fn upstream_errors_in_other_shapes_are_read() {
    let long = "x".repeat(5000);
    let cases: Vec<(u16, String, &str, String)> = vec![
        (429, json!({"error": {"message": "slow down", "type": null, "code": "rate_limit_exceeded"}}).to_string(), "rate_limit_exceeded", "slow down".into()),
        (400, json!({"message": "bad model"}).to_string(), "http_400", "bad model".into()),
        (422, json!({"detail": "field required"}).to_string(), "http_422", "field required".into()),
        (422, json!({"detail": [{"loc": ["body"], "msg": "x"}]}).to_string(), "http_422", r#"[{"loc":["body"],"msg":"x"}]"#.into()),
        (404, json!({"error": "model not found"}).to_string(), "http_404", "model not found".into()),
        (529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string(), "overloaded_error", "Overloaded".into()),
        (502, "<html>Bad Gateway</html>".into(), "http_502", "<html>Bad Gateway</html>".into()),
        (503, String::new(), "http_503", "upstream returned HTTP 503".into()),
        (500, long, "http_500", format!("{}…", "x".repeat(2000))),
    ];
    for (status, body, kind, message) in cases {
        let span = Call::chat(&chat_request(false))
            .status(Some(status))
            .response_body("application/json", body.as_bytes())
            .span();
        let error = span.error.clone().unwrap();
        assert_eq!(span.status, Status::Error);
        assert_eq!(
            error.kind, kind,
            "HTTP {status}: the type is error.type, else error.code, else http_<status>"
        );
        assert_eq!(
            error.message, message,
            "HTTP {status}: the message is read from any common error shape, cut at 2000 chars"
        );
    }
}

#[test]
fn proxy_error_is_an_error_span_without_output() {
    let span = Call::chat(&chat_request(false))
        .status(None)
        .with(|r| {
            r.proxy_error = Some(("upstream_unreachable".into(), "connection refused".into()))
        })
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "a failure the proxy saw is an error"
    );
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "upstream_unreachable".into(),
            message: "connection refused".into()
        }),
        "the proxy's error type and message are kept"
    );
    assert_eq!(span.output, Value::Null, "no response, no output");
    assert_eq!(
        span.http.as_ref().unwrap().status,
        None,
        "no response head, no status"
    );
    assert_eq!(
        span.input,
        chat_request(false),
        "the request is still recorded"
    );
}

#[test]
fn no_response_head_without_a_proxy_error_is_still_explained() {
    let span = Call::chat(&chat_request(false)).status(None).span();
    assert_eq!(
        span.status,
        Status::Error,
        "a call with no response head is not ok"
    );
    assert_eq!(span.error.unwrap().kind, "no_response");

    let span = Call::chat(&chat_request(false))
        .status(None)
        .with(|r| r.request.as_mut().unwrap().end = Some(End::Cancelled))
        .span();
    assert_eq!(
        span.status,
        Status::Cancelled,
        "a client that left before the head cancelled the call"
    );
}

/// The stream fixture up to and including the "lo, " event, as a client that left would leave it.
fn partial_stream() -> &'static str {
    let lo = CHAT_STREAM.find("\"lo, \"").unwrap();
    let end = CHAT_STREAM[lo..].find("\n\n").unwrap() + lo + 2;
    &CHAT_STREAM[..end + 20] // and a few bytes of the next event
}

#[test]
fn cancelled_mid_stream_keeps_the_partial_text() {
    let span = Call::chat(&chat_request(true))
        .response(
            "text/event-stream",
            &frames_at(partial_stream().as_bytes(), &[300]),
        )
        .response_capture(|c| c.end = Some(End::Cancelled))
        .span();
    assert_eq!(
        span.status,
        Status::Cancelled,
        "a client that hung up mid-stream cancelled the call"
    );
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "cancelled".into(),
            message: "client disconnected before the response completed".into()
        })
    );
    assert_eq!(
        content(&span, 0),
        "Hello, ",
        "the partial answer is reassembled and kept"
    );
    assert_eq!(
        span.output["choices"][0]["finish_reason"],
        Value::Null,
        "an unfinished choice has no finish_reason"
    );
    assert!(
        span.metadata.is_empty(),
        "a cut-off last event is not counted as bad data"
    );
}

#[test]
fn a_client_leaving_after_done_did_not_cancel() {
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(CHAT_STREAM.as_bytes(), 100)])
        .response_capture(|c| c.end = Some(End::Cancelled))
        .span();
    assert_eq!(
        span.status,
        Status::Ok,
        "a stream that reached [DONE] is complete even if the client then left"
    );
    assert_eq!(span.error, None);
}

#[test]
fn a_failed_response_body_is_an_error_with_partial_output() {
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(partial_stream().as_bytes(), 100)])
        .response_capture(|c| {
            c.end = Some(End::Error);
            c.error = Some("connection reset by peer".into());
        })
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "a body that failed mid-way is an error"
    );
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "upstream_body_error".into(),
            message: "connection reset by peer".into()
        })
    );
    assert_eq!(content(&span, 0), "Hello, ", "the partial answer is kept");
}

#[test]
fn an_idle_cut_is_an_error_unless_the_stream_had_already_ended() {
    let idle = |c: &mut Captured| {
        c.end = Some(End::Error);
        c.error = Some("upstream sent nothing for 300000 ms mid-stream".into());
        c.error_kind = Some(crate::idle::IDLE_TIMEOUT_KIND);
    };
    let cut = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(partial_stream().as_bytes(), 100)])
        .response_capture(idle)
        .span();
    assert_eq!(
        cut.status,
        Status::Error,
        "a stream cut off mid-way is an error"
    );
    assert_eq!(
        cut.error.as_ref().map(|e| e.kind.as_str()),
        Some("upstream_idle_timeout"),
        "named after the idle limit"
    );
    assert_eq!(content(&cut, 0), "Hello, ", "the partial answer is kept");
    let after_done = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(CHAT_STREAM.as_bytes(), 100)])
        .response_capture(idle)
        .span();
    assert_eq!(
        after_done.status,
        Status::Ok,
        "an upstream that sent [DONE] and then idled lost nothing"
    );
}

#[test]
fn a_mid_stream_error_makes_an_error_span() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"The model is overloaded\",\"type\":\"server_error\"}}\n\n",
        "data: [DONE]\n\n",
    );
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "an error chunk inside a 200 stream is an error"
    );
    assert_eq!(
        span.error.as_ref().unwrap().message,
        "The model is overloaded"
    );
    assert_eq!(
        content(&span, 0),
        "Hi",
        "what came before the error is kept"
    );

    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\nevent: error\ndata: upstream went away\n\n";
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "an SSE `error` event is an error"
    );
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "stream_error".into(),
            message: "upstream went away".into()
        })
    );
}

#[test]
fn truncated_stream_capture_keeps_what_parses() {
    let partial = partial_stream();
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(partial.as_bytes(), 100)])
        .response_capture(|c| {
            c.truncated = true;
            c.seen = CHAT_STREAM.len() as u64;
        })
        .span();
    assert_eq!(
        span.status,
        Status::Ok,
        "a capture cut by the cap does not fail the call"
    );
    assert!(
        span.capture.as_ref().unwrap().truncated,
        "the span says its capture was cut"
    );
    assert_eq!(
        span.capture.as_ref().unwrap().bytes_out,
        CHAT_STREAM.len() as u64,
        "bytes_out counts all bytes seen"
    );
    assert_eq!(
        content(&span, 0),
        "Hello, ",
        "the part of the stream we kept is reassembled"
    );
}

#[test]
fn truncated_json_capture_is_kept_as_text() {
    let cut = &CHAT_JSON[..200];
    let span = Call::chat(&chat_request(false))
        .response_body("application/json", cut.as_bytes())
        .response_capture(|c| {
            c.truncated = true;
            c.seen = CHAT_JSON.len() as u64;
        })
        .span();
    assert_eq!(span.status, Status::Ok);
    assert_eq!(
        span.output,
        Value::String(cut.into()),
        "a cut JSON body is kept as the text we have"
    );
    assert!(span.capture.as_ref().unwrap().truncated);
}

#[test]
fn truncated_request_capture_is_flagged() {
    let request = chat_request(false).to_string();
    let span = Call::new("POST", "/v1/chat/completions")
        .request(&request.as_bytes()[..30])
        .with(|r| r.request.as_mut().unwrap().truncated = true)
        .span();
    assert!(
        span.capture.unwrap().truncated,
        "a cut request capture marks the span truncated"
    );
    assert!(span.input.is_string(), "a cut request body is kept as text");
}

#[test]
fn a_stream_without_json_is_kept_as_raw_text() {
    let body = "data: hello\n\ndata: world\n\n";
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(
        span.output,
        Value::String(body.into()),
        "when nothing parses the raw text is the output"
    );
    assert!(
        span.metadata[NOTES_KEY]
            .as_str()
            .unwrap()
            .contains("skipped 2"),
        "skipped non-JSON events are counted"
    );
}

#[test]
fn azure_style_prompt_filter_chunks_are_harmless() {
    let body = concat!(
        "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":null}],\"created\":5,\"id\":\"c9\",\"model\":\"gpt-4o-2024-08-06\"}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"created\":5,\"id\":\"c9\",\"model\":\"gpt-4o-2024-08-06\"}\n\n",
        "data: [DONE]\n\n",
    );
    let span = Call::chat(&chat_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(
        span.output["model"], "gpt-4o-2024-08-06",
        "an empty model in a filter chunk does not win"
    );
    assert_eq!(span.output["id"], "c9");
    assert_eq!(content(&span, 0), "ok");
    assert_eq!(
        llm(&span).usage_source.as_deref(),
        Some("estimated"),
        "no usage chunk: the tokens are estimated, and said to be"
    );
    assert_eq!(
        llm(&span).output_tokens,
        Some(1),
        "\"ok\" is one o200k token"
    );
}

#[test]
fn a_streamed_request_answered_with_json_is_read_as_json() {
    let span = Call::chat(&chat_request(true))
        .response_body("application/json", CHAT_JSON.as_bytes())
        .span();
    assert_eq!(span.output["object"], "chat.completion");
    assert_eq!(
        llm(&span).total_tokens,
        Some(16),
        "a JSON answer is read as JSON whatever was asked"
    );
    assert_eq!(llm(&span).ttft_ms, None);
}

#[test]
fn provider_hint_and_trailing_slash_are_honoured() {
    let span = Call::new("POST", "/ollama/v1/chat/completions/")
        .request(chat_request(false).to_string().as_bytes())
        .with(|r| {
            r.upstream_path = "/v1/chat/completions/".into();
            r.provider_hint = Some("ollama".into());
        })
        .span();
    assert_eq!(
        span.kind,
        Kind::Llm,
        "a trailing slash does not hide the operation"
    );
    assert_eq!(
        llm(&span).provider.as_deref(),
        Some("ollama"),
        "the route's provider wins"
    );
}

#[test]
fn a_non_chat_path_is_an_http_span_with_the_raw_exchange() {
    let models = json!({"object": "list", "data": [{"id": "gpt-4o"}]});
    let span = Call::new("GET", "/v1/models?limit=5")
        .response_body("application/json", models.to_string().as_bytes())
        .span();
    assert_eq!(
        span.kind,
        Kind::Http,
        "a path no operation claims is a plain http span"
    );
    assert_eq!(
        span.name, "GET /v1/models",
        "the default name is method and path without query"
    );
    assert_eq!(span.llm, None, "an http span has no llm info");
    assert_eq!(span.input, Value::Null, "an empty request body is null");
    assert_eq!(span.output, models, "a JSON response is kept as JSON");
    assert_eq!(span.status, Status::Ok);

    let span = Call::new("POST", "/v1/files")
        .request(b"plain text upload")
        .response_body("text/plain", b"stored")
        .span();
    assert_eq!(
        span.input,
        json!("plain text upload"),
        "a non-JSON request is kept as text"
    );
    assert_eq!(
        span.output,
        json!("stored"),
        "a non-JSON response is kept as text"
    );
}

#[test]
fn credential_query_params_and_upstream_userinfo_are_redacted() {
    let span = Call::chat(&chat_request(false))
        .with(|r| {
            r.path = "/openai/deployments/d/chat/completions?api-version=2024-06-01&API-KEY=sk-secret&token=t0k".into();
            r.upstream = "https://user:pw@gw.example.com?key=k3y".into();
        })
        .response_body("application/json", CHAT_JSON.as_bytes())
        .span();
    let http = span.http.as_ref().unwrap();
    assert_eq!(
        http.path,
        "/openai/deployments/d/chat/completions?api-version=2024-06-01&API-KEY=REDACTED&token=REDACTED",
        "credential-like query values are replaced, everything else kept"
    );
    assert_eq!(
        http.upstream,
        "https://REDACTED@gw.example.com?key=REDACTED"
    );
    let stored = serde_json::to_string(&span).unwrap();
    for secret in ["sk-secret", "t0k", "k3y", "user:pw"] {
        assert!(
            !stored.contains(secret),
            "the stored span must not contain the credential {secret:?}"
        );
    }
}

#[test]
fn hostile_bodies_never_panic() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = || {
        (0..300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                match seed % 10 {
                    0 => b'\n',
                    1 => b':',
                    2 => b'{',
                    3 => b'"',
                    _ => (seed >> 16) as u8,
                }
            })
            .collect::<Vec<u8>>()
    };
    let deep = "[".repeat(10_000);
    let bodies: Vec<Vec<u8>> = vec![
        noise(),
        noise(),
        b"\x1f\x8b\x08\x00garbage".to_vec(),
        deep.into_bytes(),
        b"data: {\"choices\":[{\"index\":18446744073709551615,\"delta\":{\"tool_calls\":[{\"index\":18446744073709551615},{\"id\":\"x\"},{}]}}]}\n\n".to_vec(),
        b"data: {\"choices\":\"nope\",\"usage\":{\"prompt_tokens\":-1,\"total_tokens\":1e400}}\n\n".to_vec(),
        b"data: [1,2]\n\ndata: null\n\ndata: {\"error\":null}\n\n".to_vec(),
    ];
    for path in ["/v1/chat/completions", "/v1/other"] {
        for body in &bodies {
            for (ct, enc, status) in [
                ("text/event-stream", None, Some(200)),
                ("application/json", Some("gzip"), Some(200)),
                ("application/octet-stream", Some("deflate, br"), Some(500)),
                ("text/event-stream", Some("zstd"), None),
            ] {
                let span = Call::new("POST", path)
                    .request(body)
                    .response_body(ct, body)
                    .status(status)
                    .with(|r| {
                        r.response_content_encoding = enc.map(str::to_string);
                        r.request_content_encoding = enc.map(str::to_string);
                    })
                    .span();
                assert!(
                    serde_json::to_string(&span).is_ok(),
                    "any body on {path} gives a span that serialises"
                );
            }
        }
    }
}

#[test]
fn a_zip_bomb_is_cut_at_the_cap() {
    let bomb = gzip(&vec![b' '; 8 << 20]);
    let mut record = Call::new("POST", "/v1/other")
        .response_body("application/json", &bomb)
        .with(|r| r.response_content_encoding = Some("gzip".into()))
        .0;
    record.ended_at = record.started_at;
    let opts = AssembleOptions {
        max_decoded_bytes: 1 << 20,
        ..AssembleOptions::default()
    };
    let span = assemble(record, &opts);
    assert_eq!(
        span.output.as_str().map(str::len),
        Some(1 << 20),
        "decoding stops at max_decoded_bytes"
    );
    assert!(
        span.metadata[NOTES_KEY]
            .as_str()
            .unwrap()
            .contains("exceeded"),
        "the cut is noted"
    );
    assert_eq!(span.duration_ms, 0.0);
}

#[test]
fn operation_detection_is_by_upstream_path() {
    let cases = [
        ("/v1/chat/completions", Some(Operation::Chat)),
        ("/chat/completions", Some(Operation::Chat)),
        (
            "/openai/deployments/gpt/chat/completions/",
            Some(Operation::Chat),
        ),
        ("/v1/completions", Some(Operation::Completion)),
        (
            "/openai/deployments/davinci/completions",
            Some(Operation::Completion),
        ),
        ("/v1/responses", Some(Operation::Responses)),
        ("/openai/v1/responses/", Some(Operation::Responses)),
        ("/v1/responses/resp_123", None),
        ("/v1/embeddings", Some(Operation::Embeddings)),
        (
            "/openai/deployments/ada/embeddings",
            Some(Operation::Embeddings),
        ),
        ("/v1/messages", Some(Operation::Messages)),
        ("/v1/messages/count_tokens", None),
        ("/v1/threads/thread_1/messages", None),
        ("/v1/chat/completions/extra", None),
        ("/v1/textcompletions", None),
        ("/v1/chat", None),
        ("", None),
    ];
    for (path, want) in cases {
        assert_eq!(
            Operation::detect(path),
            want,
            "{path:?} is detected by its last segments"
        );
    }
}

#[test]
fn arrival_maps_an_offset_to_the_first_mark_covering_it() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let marks = [(10, at(1)), (20, at(2)), (30, at(3))];
    assert_eq!(arrival(&marks, 1), Some(at(1)));
    assert_eq!(
        arrival(&marks, 10),
        Some(at(1)),
        "a mark covers the byte count it reached"
    );
    assert_eq!(arrival(&marks, 11), Some(at(2)));
    assert_eq!(
        arrival(&marks, 31),
        None,
        "an offset past every mark has no arrival"
    );
    assert_eq!(arrival(&[], 0), None);
}

mod formats;

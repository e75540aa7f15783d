//! `assemble` on every other wire format: the Responses API, legacy completions, embeddings,
//! Anthropic Messages and Azure-style paths; token estimation and cost. Fixtures under
//! `tests/fixtures/` are real-looking wire captures; each stream is also cut at every byte.

use std::sync::Arc;

use super::*;
use crate::span::pricing::{Price, PriceTable};

const RESPONSES_JSON: &str = include_str!("../../../../tests/fixtures/openai_responses.json");
const RESPONSES_STREAM: &str =
    include_str!("../../../../tests/fixtures/openai_responses_stream.sse");
const MESSAGES_JSON: &str = include_str!("../../../../tests/fixtures/anthropic_messages.json");
const MESSAGES_STREAM: &str =
    include_str!("../../../../tests/fixtures/anthropic_messages_stream.sse");
const COMPLETIONS_STREAM: &str =
    include_str!("../../../../tests/fixtures/openai_completions_stream.sse");
const EMBEDDINGS_JSON: &str = include_str!("../../../../tests/fixtures/openai_embeddings.json");

fn post(path: &str, request: &Value) -> Call {
    Call::new("POST", path).request(request.to_string().as_bytes())
}

fn prices() -> AssembleOptions {
    let mut table = PriceTable::new();
    for (pattern, input, output, cached, write) in [
        ("gpt-4.1", 2.0, 8.0, Some(0.5), None),
        ("gpt-5-mini", 0.25, 2.0, Some(0.025), None),
        ("gpt-4o-mini", 0.15, 0.6, Some(0.075), None),
        ("gpt-3.5-turbo-instruct", 1.5, 2.0, None, None),
        ("text-embedding-3-small", 0.02, 0.0, None, None),
        ("claude-sonnet-4*", 3.0, 15.0, Some(0.3), Some(3.75)),
    ] {
        table.insert(
            pattern,
            Price {
                input,
                output,
                cached_input: cached,
                cache_write_input: write,
            },
        );
    }
    AssembleOptions {
        pricing: Arc::new(table),
        ..AssembleOptions::default()
    }
}

fn span_with(call: Call, opts: &AssembleOptions) -> Span {
    assemble(call.0, opts)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

// === Responses API ===

fn responses_request(stream: bool) -> Value {
    json!({
        "model": "gpt-5-mini",
        "instructions": "You are terse.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "reasoning": {"effort": "low", "summary": "auto"},
        "stream": stream,
    })
}

#[test]
fn non_streamed_responses_read_model_usage_status_and_cost() {
    let request = json!({"model": "gpt-4.1", "input": "Tell me a story", "temperature": 0.7});
    let span = span_with(
        post("/v1/responses", &request)
            .response_body("application/json", RESPONSES_JSON.as_bytes()),
        &prices(),
    );
    let llm = llm(&span);
    assert_eq!(span.kind, Kind::Llm);
    assert_eq!(
        span.name, "responses gpt-4.1",
        "the default name is `responses <model>`"
    );
    assert_eq!(
        (llm.provider.as_deref(), llm.operation.as_deref()),
        (Some("openai"), Some("responses"))
    );
    assert_eq!(llm.request_model.as_deref(), Some("gpt-4.1"));
    assert_eq!(llm.response_model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(
        (llm.input_tokens, llm.output_tokens, llm.total_tokens),
        (Some(36), Some(87), Some(123)),
        "input_tokens/output_tokens are read from the Responses usage"
    );
    assert_eq!(llm.usage_source.as_deref(), Some("reported"));
    assert_eq!(llm.finish_reason.as_deref(), Some("completed"));
    assert_eq!(
        llm.params,
        json!({"temperature": 0.7}).as_object().unwrap().clone(),
        "params leave out model, input, instructions and stream"
    );
    assert_eq!(
        span.output,
        serde_json::from_str::<Value>(RESPONSES_JSON).unwrap()
    );
    assert!(
        close(llm.cost_usd, (36.0 * 2.0 + 87.0 * 8.0) / 1e6),
        "the snapshot is priced as gpt-4.1: {:?}",
        llm.cost_usd
    );
    assert_eq!(span.status, Status::Ok);
}

#[test]
fn streamed_responses_are_reassembled_with_usage_details_and_ttft() {
    let body = RESPONSES_STREAM.as_bytes();
    let first_delta = RESPONSES_STREAM
        .find("response.reasoning_summary_text.delta")
        .unwrap();
    let span = span_with(
        post("/v1/responses", &responses_request(true)).response(
            "text/event-stream",
            &frames_at(body, &[first_delta, first_delta + 400]),
        ),
        &prices(),
    );
    let llm = llm(&span);
    assert!(llm.stream);
    assert_eq!(llm.response_model.as_deref(), Some("gpt-5-mini-2025-08-07"));
    assert_eq!(
        (llm.input_tokens, llm.output_tokens, llm.total_tokens),
        (Some(2048), Some(96), Some(2144)),
        "usage comes from response.completed"
    );
    assert_eq!(
        llm.cached_input_tokens,
        Some(1536),
        "cached input tokens are kept"
    );
    assert_eq!(llm.reasoning_tokens, Some(64), "reasoning tokens are kept");
    let want = (512.0 * 0.25 + 1536.0 * 0.025 + 96.0 * 2.0) / 1e6;
    assert!(
        close(llm.cost_usd, want),
        "cached input is priced at cached_input: {:?} vs {want}",
        llm.cost_usd
    );
    let output = &span.output["output"];
    assert_eq!(
        output[1]["content"][0]["text"],
        "Checking Paris — one moment ☀️"
    );
    assert_eq!(output[2]["type"], "function_call");
    assert_eq!(output[2]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(span.output["status"], "completed");
    assert_eq!(
        llm.ttft_ms,
        Some(200.0),
        "the first reasoning delta arrived in the second frame"
    );
    assert_eq!(span.status, Status::Ok);
}

#[test]
fn a_responses_stream_without_a_terminal_event_is_rebuilt_from_deltas() {
    let cut = RESPONSES_STREAM.find("event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"sequence_number\":19").unwrap();
    let partial = &RESPONSES_STREAM[..cut];
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(partial.as_bytes(), 50)])
        .response_capture(|c| c.end = Some(End::Cancelled))
        .span();
    let output = &span.output["output"];
    assert_eq!(
        output[0]["summary"][0]["text"], "Need the weather; call the tool.",
        "reasoning summary items are kept"
    );
    assert_eq!(
        output[1]["content"][0]["text"], "Checking Paris — one moment ☀️",
        "text deltas are concatenated into their content part"
    );
    assert_eq!(
        output[2]["arguments"], "{\"city\":\"Paris\"}",
        "function-call argument deltas are concatenated"
    );
    assert_eq!(output[2]["name"], "get_weather");
    assert_eq!(
        span.status,
        Status::Cancelled,
        "no terminal event: the client left early"
    );
    assert_eq!(
        llm(&span).usage_source.as_deref(),
        Some("estimated"),
        "no terminal event, no usage: the tokens are estimated"
    );
    assert!(llm(&span).output_tokens.unwrap() > 0);

    // Only deltas, no item or part events at all.
    let bare = concat!(
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi \"}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"there\"}\n\n",
    );
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(bare.as_bytes(), 50)])
        .span();
    assert_eq!(span.output["output"][0]["content"][0]["text"], "Hi there");
}

#[test]
fn failed_incomplete_and_error_responses_are_error_spans() {
    let failed = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\",\"output\":[]}}\n\n\
        event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"Par\"}\n\n\
        event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"r\",\"status\":\"failed\",\"output\":[],\"error\":{\"code\":\"server_error\",\"message\":\"The model crashed\"}}}\n\n";
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(failed.as_bytes(), 50)])
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "response.failed is an error span"
    );
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "server_error".into(),
            message: "The model crashed".into()
        })
    );
    assert_eq!(
        span.output["output"][0]["content"][0]["text"], "Par",
        "the partial output is kept"
    );

    let incomplete = "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"id\":\"r\",\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"output\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":16}}}\n\n";
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(incomplete.as_bytes(), 50)])
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "response.incomplete is an error span"
    );
    assert_eq!(span.error.as_ref().unwrap().kind, "response_incomplete");
    assert!(span
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("max_output_tokens"));
    assert_eq!(
        llm(&span).finish_reason.as_deref(),
        Some("max_output_tokens")
    );
    assert_eq!(
        llm(&span).output_tokens,
        Some(16),
        "an incomplete response still reports usage"
    );

    let error = "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Slow down\",\"param\":null,\"sequence_number\":3}\n\n";
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(error.as_bytes(), 50)])
        .span();
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "rate_limit_exceeded".into(),
            message: "Slow down".into()
        }),
        "an `error` event is an error span with its code and message"
    );

    let body = json!({"id": "r", "object": "response", "status": "failed", "output": [],
                      "error": {"code": "server_error", "message": "boom"}});
    let span = post("/v1/responses", &json!({"model": "gpt-4.1", "input": "x"}))
        .response_body("application/json", body.to_string().as_bytes())
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "a non-streamed failed response is an error span"
    );
}

#[test]
fn responses_stream_reassembly_survives_a_cut_at_every_byte() {
    let body = RESPONSES_STREAM.as_bytes();
    let whole = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(body, 100)])
        .span();
    for cut in 1..body.len() {
        let span = post("/v1/responses", &responses_request(true))
            .response("text/event-stream", &frames_at(body, &[cut]))
            .span();
        assert_eq!(
            span.output, whole.output,
            "cutting the Responses stream at byte {cut} must not change the output"
        );
        assert_eq!(llm(&span).total_tokens, Some(2144));
    }
    let crlf = RESPONSES_STREAM.replace('\n', "\r\n");
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &frames_at(crlf.as_bytes(), &[7, 1000]))
        .span();
    assert_eq!(span.output, whole.output, "CRLF line endings read the same");
}

// === Anthropic Messages ===

fn messages_request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a weather bot.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Weather in Zürich?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "stream": stream,
    })
}

#[test]
fn non_streamed_messages_count_cache_tokens_as_input() {
    let span = span_with(
        post("/v1/messages", &messages_request(false))
            .response_body("application/json", MESSAGES_JSON.as_bytes()),
        &prices(),
    );
    let llm = llm(&span);
    assert_eq!(span.kind, Kind::Llm);
    assert_eq!(span.name, "messages claude-sonnet-4-5");
    assert_eq!(
        (llm.provider.as_deref(), llm.operation.as_deref()),
        (Some("anthropic"), Some("messages")),
        "a Messages call is provider anthropic, operation messages"
    );
    assert_eq!(
        llm.response_model.as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(
        llm.input_tokens,
        Some(472 + 1000 + 2000),
        "input tokens include cache-creation and cache-read tokens"
    );
    assert_eq!(llm.cached_input_tokens, Some(2000));
    assert_eq!(llm.cache_write_tokens, Some(1000));
    assert_eq!(llm.output_tokens, Some(89));
    assert_eq!(llm.total_tokens, Some(3472 + 89));
    assert_eq!(llm.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        llm.params,
        json!({"max_tokens": 1024, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]})
            .as_object()
            .unwrap()
            .clone(),
        "params leave out model, messages, system and stream"
    );
    let want = (472.0 * 3.0 + 2000.0 * 0.3 + 1000.0 * 3.75 + 89.0 * 15.0) / 1e6;
    assert!(
        close(llm.cost_usd, want),
        "cache reads and writes have their own prices: {:?} vs {want}",
        llm.cost_usd
    );
    assert_eq!(
        span.output["content"][1]["input"]["location"],
        "San Francisco, CA"
    );
}

#[test]
fn streamed_messages_are_reassembled_and_message_delta_usage_replaces() {
    let body = MESSAGES_STREAM.as_bytes();
    let span = post("/v1/messages", &messages_request(true))
        .response("text/event-stream", &frames_at(body, &[700, 1500]))
        .span();
    let llm = llm(&span);
    assert!(llm.stream);
    assert_eq!(span.status, Status::Ok);
    let content = &span.output["content"];
    assert_eq!(content[0]["type"], "thinking");
    assert_eq!(content[0]["thinking"], "The user wants the weather. ");
    assert_eq!(
        content[0]["signature"], "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        "signature deltas are kept on the thinking block"
    );
    assert_eq!(
        content[1],
        json!({"type": "text", "text": "Okay, let's check the weather in Zürich 🌦"})
    );
    assert_eq!(
        content[2]["input"],
        json!({"location": "Zürich", "unit": "celsius"}),
        "input_json_delta pieces are concatenated and parsed into the tool input"
    );
    assert_eq!(content[2]["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(span.output["stop_reason"], "tool_use");
    assert_eq!(span.output["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
    assert_eq!(llm.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        llm.output_tokens,
        Some(89),
        "message_delta usage is cumulative: the last count replaces, never adds (2 + 40 + 89 would be wrong)"
    );
    assert_eq!(
        llm.input_tokens,
        Some(472 + 2048),
        "cache reads count as input"
    );
    assert_eq!(llm.cached_input_tokens, Some(2048));
    assert_eq!(span.output["usage"]["output_tokens"], 89);
    assert_eq!(
        llm.ttft_ms,
        Some(100.0),
        "the first thinking delta is in the first frame"
    );
}

#[test]
fn messages_stream_reassembly_survives_a_cut_at_every_byte() {
    let body = MESSAGES_STREAM.as_bytes();
    let whole = post("/v1/messages", &messages_request(true))
        .response("text/event-stream", &[(body, 100)])
        .span();
    assert_eq!(whole.status, Status::Ok);
    for cut in 1..body.len() {
        let span = post("/v1/messages", &messages_request(true))
            .response("text/event-stream", &frames_at(body, &[cut]))
            .span();
        assert_eq!(
            span.output, whole.output,
            "cutting the Messages stream at byte {cut} must not change the output"
        );
        assert_eq!(llm(&span).output_tokens, Some(89));
    }
}

#[test]
fn a_mid_stream_anthropic_error_keeps_the_partial_message() {
    let body = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-3-5-haiku-20241022\",\"content\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Half an ans\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let span = post("/v1/messages", &messages_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(
        span.status,
        Status::Error,
        "an `error` event is an error span"
    );
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "overloaded_error".into(),
            message: "Overloaded".into()
        })
    );
    assert_eq!(
        span.output["content"][0]["text"], "Half an ans",
        "what came before is kept"
    );
    assert_eq!(llm(&span).input_tokens, Some(10));
}

#[test]
fn unknown_anthropic_events_and_deltas_are_kept() {
    let body = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"future_block\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"future_delta\",\"note\":\"ab\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"future_delta\",\"note\":\"cd\"}}\n\n",
        "event: brand_new_event\ndata: {\"type\":\"brand_new_event\",\"x\":1}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let span = post("/v1/messages", &messages_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    assert_eq!(span.status, Status::Ok);
    assert_eq!(
        span.output["content"][0],
        json!({"type": "future_block", "note": "abcd"}),
        "an unknown delta's text fields are appended to its block"
    );
    assert!(
        span.metadata[NOTES_KEY]
            .as_str()
            .unwrap()
            .contains("brand_new_event×1"),
        "an unknown event type is noted: {:?}",
        span.metadata
    );
}

#[test]
fn the_routes_provider_and_an_anthropic_error_body_are_honoured() {
    let span = post("/anthropic/v1/messages", &messages_request(false))
        .with(|r| {
            r.upstream_path = "/v1/messages".into();
            r.provider_hint = Some("bedrock-proxy".into());
        })
        .response_body("application/json", MESSAGES_JSON.as_bytes())
        .span();
    assert_eq!(llm(&span).provider.as_deref(), Some("bedrock-proxy"));

    let error =
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Too many"}});
    let span = post("/v1/messages", &messages_request(false))
        .response_body("application/json", error.to_string().as_bytes())
        .status(Some(429))
        .span();
    assert_eq!(
        span.error,
        Some(SpanError {
            kind: "rate_limit_error".into(),
            message: "Too many".into()
        }),
        "Anthropic's error shape is read"
    );
    assert_eq!(
        llm(&span).usage_source,
        None,
        "a refused call bills nothing: no estimate"
    );
}

// === legacy completions ===

#[test]
fn legacy_completions_stream_and_json() {
    let request = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test",
                         "max_tokens": 7, "stream": true, "stream_options": {"include_usage": true}});
    let span = span_with(
        post("/v1/completions", &request).response(
            "text/event-stream",
            &frames_at(COMPLETIONS_STREAM.as_bytes(), &[120]),
        ),
        &prices(),
    );
    let llm = llm(&span);
    assert_eq!(
        (llm.operation.as_deref(), span.name.as_str()),
        (Some("completion"), "completion gpt-3.5-turbo-instruct")
    );
    assert_eq!(span.output["object"], "text_completion");
    assert_eq!(span.output["choices"][0]["text"], "\n\nThis is a test.");
    assert_eq!(span.output["choices"][0]["finish_reason"], "length");
    assert_eq!((llm.input_tokens, llm.output_tokens), (Some(5), Some(7)));
    assert_eq!(llm.finish_reason.as_deref(), Some("length"));
    assert!(close(llm.cost_usd, (5.0 * 1.5 + 7.0 * 2.0) / 1e6));
    assert!(
        !llm.params.contains_key("prompt"),
        "the prompt is input, not a param"
    );

    let body = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                      "choices": [{"text": "ok", "index": 0, "logprobs": null, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    let span = post(
        "/v1/completions",
        &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "x"}),
    )
    .response_body("application/json", body.to_string().as_bytes())
    .span();
    assert_eq!(span.output, body);
    assert_eq!(self::llm(&span).total_tokens, Some(4));
}

// === embeddings ===

#[test]
fn embeddings_keep_counts_and_dimensions_but_not_vectors_by_default() {
    let request = json!({"model": "text-embedding-3-small", "input": ["hello world", "bonjour"]});
    let call = || {
        post("/v1/embeddings", &request)
            .response_body("application/json", EMBEDDINGS_JSON.as_bytes())
    };
    let span = span_with(call(), &prices());
    assert_eq!(
        span.kind,
        Kind::Embedding,
        "an embeddings call is an embedding span"
    );
    assert_eq!(span.name, "embeddings text-embedding-3-small");
    let llm = llm(&span);
    assert_eq!(llm.operation.as_deref(), Some("embeddings"));
    assert_eq!(llm.input_tokens, Some(8));
    assert_eq!(llm.output_tokens, None, "embeddings generate no tokens");
    assert!(close(llm.cost_usd, 8.0 * 0.02 / 1e6));
    assert_eq!(span.output["inputs"], 2, "the number of inputs is kept");
    assert_eq!(
        span.output["dimensions"], 4,
        "the vectors' dimensions are kept"
    );
    assert_eq!(
        span.output["data"][1],
        json!({"object": "embedding", "index": 1, "dimensions": 4})
    );
    assert!(
        !serde_json::to_string(&span)
            .unwrap()
            .contains("0.0023064255"),
        "vectors are not stored by default"
    );
    assert_eq!(span.output["usage"]["prompt_tokens"], 8);

    let keep = AssembleOptions {
        capture_embeddings: true,
        ..prices()
    };
    let span = span_with(call(), &keep);
    assert_eq!(
        span.output["data"][0]["embedding"][0], 0.0023064255,
        "capture_embeddings keeps the vectors"
    );
}

#[test]
fn base64_embeddings_are_measured_and_decoded_when_kept() {
    use base64::Engine;
    let bytes: Vec<u8> = [0.25f32, -0.5, 1.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let body = json!({"object": "list", "model": "text-embedding-3-small",
                      "data": [{"object": "embedding", "index": 0, "embedding": b64}],
                      "usage": {"prompt_tokens": 2, "total_tokens": 2}});
    let request = json!({"model": "text-embedding-3-small", "input": "hi there", "encoding_format": "base64"});
    let span = post("/v1/embeddings", &request)
        .response_body("application/json", body.to_string().as_bytes())
        .span();
    assert_eq!(
        span.output["dimensions"], 3,
        "a base64 vector's length is measured"
    );
    assert_eq!(span.output["encoding_format"], "base64");
    assert_eq!(span.output["inputs"], 1);
    let keep = AssembleOptions {
        capture_embeddings: true,
        ..AssembleOptions::default()
    };
    let span = span_with(
        post("/v1/embeddings", &request)
            .response_body("application/json", body.to_string().as_bytes()),
        &keep,
    );
    assert_eq!(
        span.output["data"][0]["embedding"],
        json!([0.25, -0.5, 1.0])
    );

    let span = post(
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": ["hello world", [1, 2, 3]]}),
    )
    .response_body(
        "application/json",
        json!({"object": "list", "model": "m", "data": []})
            .to_string()
            .as_bytes(),
    )
    .span();
    assert_eq!(
        self::llm(&span).input_tokens,
        Some(2 + 3),
        "without usage, text is tokenized and token arrays count one per ID"
    );
    assert_eq!(self::llm(&span).usage_source.as_deref(), Some("estimated"));
}

// === Azure-style paths ===

#[test]
fn azure_deployments_name_the_model_when_the_body_does_not() {
    let path = "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21";
    let span = post(
        path,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .response_body("application/json", CHAT_JSON.as_bytes())
    .span();
    let llm = llm(&span);
    assert_eq!(span.kind, Kind::Llm);
    assert_eq!(
        llm.request_model.as_deref(),
        Some("prod-gpt4o"),
        "the deployment is the model"
    );
    assert_eq!(span.name, "chat prod-gpt4o");
    assert_eq!(llm.provider.as_deref(), Some("azure"));
    assert_eq!(
        llm.response_model.as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );

    let span = post(path, &json!({"model": "explicit", "messages": []}))
        .response_body("application/json", CHAT_JSON.as_bytes())
        .span();
    assert_eq!(
        self::llm(&span).request_model.as_deref(),
        Some("explicit"),
        "a model in the body wins"
    );

    for (path, kind, op) in [
        (
            "/openai/deployments/emb/embeddings?api-version=2024-10-21",
            Kind::Embedding,
            "embeddings",
        ),
        (
            "/openai/deployments/instruct/completions?api-version=2024-10-21",
            Kind::Llm,
            "completion",
        ),
    ] {
        let span = post(path, &json!({"input": "x", "prompt": "x"})).span();
        assert_eq!(span.kind, kind, "{path}");
        assert_eq!(self::llm(&span).operation.as_deref(), Some(op));
        assert_eq!(self::llm(&span).provider.as_deref(), Some("azure"));
    }
}

// === provider hint ===

#[test]
fn the_routes_provider_applies_to_every_operation() {
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/messages",
    ] {
        let span = post(path, &json!({"model": "m"}))
            .with(|r| r.provider_hint = Some("my-gateway".into()))
            .span();
        assert_eq!(
            llm(&span).provider.as_deref(),
            Some("my-gateway"),
            "{path}: the route's provider names the span's provider"
        );
    }
}

#[test]
fn only_a_post_is_an_llm_call() {
    let span = Call::new("GET", "/v1/chat/completions?limit=2")
        .response_body("application/json", b"{\"object\":\"list\",\"data\":[]}")
        .span();
    assert_eq!(
        span.kind,
        Kind::Http,
        "listing stored completions is not a model call"
    );
}

// === estimation and cost ===

#[test]
fn a_stream_without_usage_is_counted_with_the_models_tokenizer() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hello\"}}],\"model\":\"gpt-4o-mini\"}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}],\"model\":\"gpt-4o-mini\"}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"model\":\"gpt-4o-mini\"}\n\n",
        "data: [DONE]\n\n",
    );
    let request = json!({"model": "gpt-4o-mini", "stream": true,
                         "messages": [{"role": "user", "content": "hello world"}]});
    let span = span_with(
        Call::chat(&request).response("text/event-stream", &[(body.as_bytes(), 10)]),
        &prices(),
    );
    let llm = llm(&span);
    assert_eq!(llm.usage_source.as_deref(), Some("estimated"));
    assert_eq!(
        llm.input_tokens,
        Some(3 + 2 + 3),
        "one message: 3 framing tokens, \"hello world\" (2), 3 to prime the reply"
    );
    assert_eq!(llm.output_tokens, Some(2), "\"hello world\" is 2 tokens");
    assert_eq!(llm.total_tokens, Some(10));
    assert!(
        close(llm.cost_usd, (8.0 * 0.15 + 2.0 * 0.6) / 1e6),
        "estimated tokens are priced too"
    );
}

#[test]
fn estimates_cover_responses_and_messages_and_say_when_approximate() {
    let body = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"hello world\"}\n\n";
    let span = post(
        "/v1/responses",
        &json!({"model": "gpt-4.1", "input": "hello world", "stream": true}),
    )
    .response("text/event-stream", &[(body.as_bytes(), 10)])
    .span();
    assert_eq!(
        (llm(&span).input_tokens, llm(&span).output_tokens),
        (Some(2), Some(2)),
        "Responses input and output text are counted"
    );

    let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                      "content": [{"type": "text", "text": "hello world"}], "stop_reason": "end_turn"});
    let span = post("/v1/messages", &json!({"model": "claude-sonnet-4-5", "max_tokens": 5,
                                             "messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]}))
        .response_body("application/json", body.to_string().as_bytes())
        .span();
    assert_eq!(llm(&span).usage_source.as_deref(), Some("estimated"));
    assert_eq!(
        (llm(&span).input_tokens, llm(&span).output_tokens),
        (Some(2), Some(2))
    );
    assert!(
        span.metadata[NOTES_KEY]
            .as_str()
            .unwrap()
            .contains("approximation"),
        "a Claude estimate says it is an approximation"
    );
}

#[test]
fn failed_calls_are_not_estimated_and_unknown_models_have_no_cost() {
    let span = span_with(
        Call::chat(&chat_request(false))
            .response_body(
                "application/json",
                b"{\"error\":{\"message\":\"no\",\"type\":\"server_error\"}}",
            )
            .status(Some(500)),
        &prices(),
    );
    let llm = llm(&span);
    assert_eq!(
        (llm.input_tokens, llm.usage_source.as_deref(), llm.cost_usd),
        (None, None, None),
        "an upstream error bills nothing: no estimate, no cost"
    );

    let mut body: Value = serde_json::from_str(CHAT_JSON).unwrap();
    body["model"] = json!("mystery-model-7b");
    let span = span_with(
        Call::chat(&json!({"model": "mystery-model-7b", "messages": []}))
            .response_body("application/json", body.to_string().as_bytes()),
        &prices(),
    );
    assert_eq!(self::llm(&span).input_tokens, Some(12));
    assert_eq!(
        self::llm(&span).cost_usd,
        None,
        "an unknown model's cost is null, never 0"
    );
}

// === robustness ===

#[test]
fn garbage_in_new_formats_is_noted_and_never_panics() {
    let body = "event: response.output_text.delta\ndata: {not json\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":18446744073709551615,\"content_index\":18446744073709551615,\"delta\":\"x\"}\n\n";
    let span = post("/v1/responses", &responses_request(true))
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    let notes = span.metadata[NOTES_KEY].as_str().unwrap();
    assert!(
        notes.contains("skipped 1") && notes.contains("key must be a string"),
        "the parse error is recorded: {notes}"
    );
    assert_eq!(
        span.output["output"][0]["content"][0]["text"], "x",
        "a huge index appends instead of allocating"
    );

    let hostile: Vec<&[u8]> = vec![
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":[]}\n\n",
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":-1,\"delta\":{\"type\":\"text_delta\",\"text\":5}}\n\n",
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{oops\"}}\n\n",
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"many\"}}\n\n",
        b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":\"nope\",\"usage\":{\"input_tokens\":-5}}}\n\n",
        b"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":7}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"y\"}\n\n",
        b"\xff\xfe\x00garbage",
    ];
    for body in hostile {
        for path in [
            "/v1/messages",
            "/v1/responses",
            "/v1/completions",
            "/v1/embeddings",
        ] {
            for ct in ["text/event-stream", "application/json"] {
                let span = post(path, &json!({"model": "m", "stream": true}))
                    .response(ct, &[(body, 10)])
                    .span();
                assert!(
                    serde_json::to_string(&span).is_ok(),
                    "any body on {path} gives a span that serialises"
                );
            }
        }
    }

    let broken_tool = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\": 1\"}}\n\n";
    let span = post("/v1/messages", &messages_request(true))
        .response("text/event-stream", &[(broken_tool.as_bytes(), 10)])
        .span();
    assert_eq!(
        span.output["content"][0]["input"], "{\"a\": 1",
        "tool input that is not valid JSON (a cut stream) is kept as text"
    );
}

#[test]
fn a_huge_prompt_is_estimated_within_bounds() {
    // 6 MiB of prose: 1 MiB is tokenized, the rest extrapolated (see `estimate`).
    let prose = "The quick brown fox jumps over the lazy dog. ".repeat(140_000);
    let request = json!({"model": "gpt-4o", "stream": true,
                         "messages": [{"role": "user", "content": prose}]});
    let body =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\ndata: [DONE]\n\n";
    let span = Call::chat(&request)
        .response("text/event-stream", &[(body.as_bytes(), 10)])
        .span();
    let input = llm(&span).input_tokens.unwrap();
    // Each sentence is 10 o200k tokens.
    let sentences = 140_000u64;
    assert!(
        input >= sentences * 10 * 95 / 100 && input <= sentences * 10 * 105 / 100,
        "a 6 MiB prompt is estimated near its true size ({input} vs {})",
        sentences * 10
    );
    assert_eq!(llm(&span).usage_source.as_deref(), Some("estimated"));
}

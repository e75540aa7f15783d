//! Our span → OTLP → our span, through both wire formats, and foreign conventions → our span.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value as Av, AnyValue, KeyValue},
    trace::v1::{status::StatusCode, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status},
};
use prost::Message;
use serde_json::{json, Map, Value};

use super::{decode, encode};
use crate::span::{
    CaptureInfo, HttpInfo, Kind, LlmInfo, Span, SpanError, Status as Our, Timestamp,
};

fn llm_span() -> Span {
    let start = Timestamp(1_764_000_000_123_456);
    let end = Timestamp(1_764_000_001_654_321);
    let mut params = Map::new();
    params.insert("temperature".into(), json!(0.2));
    params.insert("max_completion_tokens".into(), json!(64));
    params.insert("stop".into(), json!("END"));
    params.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "f"}}]),
    );
    let mut metadata = Map::new();
    metadata.insert("team".into(), json!("search"));
    metadata.insert("attempt".into(), json!(2));
    metadata.insert("nothing".into(), Value::Null);
    metadata.insert("nested".into(), json!({"a": [1, "b", true, 2.5]}));
    Span {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        parent_span_id: Some("b7ad6b7169203331".into()),
        name: "chat gpt-4o-mini".into(),
        kind: Kind::Llm,
        start_time: start,
        end_time: end,
        duration_ms: start.ms_until(end),
        status: Our::Error,
        error: Some(SpanError {
            kind: "upstream_error".into(),
            message: "HTTP 500".into(),
        }),
        session_id: Some("s-1".into()),
        user_id: Some("u-1".into()),
        tags: vec!["a".into(), "b".into()],
        metadata,
        http: Some(HttpInfo {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(500),
            upstream: "http://127.0.0.1:9/".into(),
        }),
        llm: Some(LlmInfo {
            provider: Some("openai".into()),
            operation: Some("chat".into()),
            request_model: Some("gpt-4o-mini".into()),
            response_model: Some("gpt-4o-mini-2024-07-18".into()),
            stream: true,
            params,
            input_tokens: Some(12),
            output_tokens: Some(5),
            total_tokens: Some(17),
            cached_input_tokens: Some(3),
            cache_write_tokens: None,
            reasoning_tokens: Some(1),
            usage_source: Some("reported".into()),
            ttft_ms: Some(12.5),
            finish_reason: Some("stop".into()),
            cost_usd: Some(0.000123),
        }),
        input: json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        output: json!("plain text"),
        capture: Some(CaptureInfo {
            truncated: false,
            bytes_in: 80,
            bytes_out: 120,
            chunks: 4,
        }),
    }
}

fn app_span() -> Span {
    let start = Timestamp(1_764_000_000_000_000);
    Span {
        trace_id: "checkout-42".into(),
        span_id: "agent-1".into(),
        parent_span_id: Some("root".into()),
        name: "plan".into(),
        kind: Kind::Agent,
        start_time: start,
        end_time: start,
        duration_ms: 0.0,
        status: Our::Cancelled,
        error: None,
        session_id: None,
        user_id: None,
        tags: vec![],
        metadata: Map::new(),
        http: None,
        llm: None,
        input: Value::Null,
        output: json!({"plan": ["a", "b"]}),
        capture: None,
    }
}

#[test]
fn spans_survive_a_protobuf_round_trip_exactly() {
    let spans = vec![llm_span(), app_span()];
    let bytes = encode::request(&spans, "llm-tracer").encode_to_vec();
    let back = decode::request(ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap());
    assert_eq!(back.rejected, 0);
    assert_eq!(
        back.spans, spans,
        "every field comes back, free-form ids included"
    );
}

#[test]
fn spans_survive_an_otlp_json_round_trip_and_the_json_follows_the_spec() {
    let spans = vec![llm_span(), app_span()];
    let text = serde_json::to_string(&encode::request(&spans, "llm-tracer")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(
        s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "ids are hex in OTLP/JSON"
    );
    assert_eq!(s["spanId"], "00f067aa0ba902b7");
    assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(s["kind"], 3, "enums are integers (SPAN_KIND_CLIENT)");
    assert!(
        s["startTimeUnixNano"].is_string(),
        "64-bit integers are strings"
    );
    let attrs = s["attributes"].as_array().unwrap();
    let tokens = attrs
        .iter()
        .find(|a| a["key"] == "gen_ai.usage.input_tokens")
        .unwrap();
    assert_eq!(tokens["value"]["intValue"], "12");
    let back = decode::request(serde_json::from_str(&text).unwrap());
    assert_eq!(back.spans, spans);
}

#[test]
fn gen_ai_attributes_are_set_on_export() {
    let o = encode::span_to_otlp(&llm_span());
    let get = |k: &str| {
        o.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    let s = |k: &str| match get(k) {
        Some(Av::StringValue(s)) => s,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("gen_ai.operation.name"), "chat");
    assert_eq!(s("gen_ai.provider.name"), "openai");
    assert_eq!(s("gen_ai.system"), "openai");
    assert_eq!(s("gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(s("gen_ai.response.model"), "gpt-4o-mini-2024-07-18");
    assert_eq!(get("gen_ai.usage.output_tokens"), Some(Av::IntValue(5)));
    assert_eq!(
        get("gen_ai.request.temperature"),
        Some(Av::DoubleValue(0.2))
    );
    assert_eq!(get("gen_ai.request.max_tokens"), Some(Av::IntValue(64)));
    assert!(matches!(
        get("gen_ai.request.stop_sequences"),
        Some(Av::ArrayValue(_))
    ));
    assert!(
        matches!(get("gen_ai.response.finish_reasons"), Some(Av::ArrayValue(a)) if a.values.len() == 1)
    );
    assert_eq!(s("error.type"), "upstream_error");
    assert_eq!(o.status.unwrap().code, StatusCode::Error as i32);
    assert!(
        get("llm_tracer.trace_id").is_none(),
        "a hex trace id needs no original"
    );
    let app = encode::span_to_otlp(&app_span());
    assert_eq!(app.trace_id.len(), 16);
    assert!(
        app.attributes
            .iter()
            .any(|a| a.key == "llm_tracer.trace_id"),
        "the original id is kept"
    );
}

fn kv(k: &str, v: Av) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Av {
    Av::StringValue(v.into())
}

fn foreign(name: &str, span_id: u8, attributes: Vec<KeyValue>) -> OtlpSpan {
    OtlpSpan {
        trace_id: vec![0xab; 16],
        span_id: vec![span_id; 8],
        name: name.into(),
        start_time_unix_nano: 1_764_000_000_000_000_000,
        end_time_unix_nano: 1_764_000_000_500_000_000,
        attributes,
        ..Default::default()
    }
}

#[test]
fn openinference_openllmetry_and_gen_ai_spans_map_to_our_kinds_and_fields() {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", s("shop"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    foreign(
                        "ChatOpenAI",
                        1,
                        vec![
                            kv("openinference.span.kind", s("LLM")),
                            kv("llm.model_name", s("gpt-4o")),
                            kv("llm.token_count.prompt", Av::IntValue(7)),
                            kv("llm.token_count.completion", Av::IntValue(3)),
                            kv("llm.input_messages.0.message.role", s("user")),
                            kv("llm.input_messages.0.message.content", s("hi")),
                            kv("output.value", s("hello")),
                            kv("session.id", s("sess")),
                        ],
                    ),
                    foreign(
                        "checkout.workflow",
                        2,
                        vec![
                            kv("traceloop.span.kind", s("workflow")),
                            kv("traceloop.entity.input", s("{\"cart\":3}")),
                        ],
                    ),
                    foreign(
                        "search",
                        3,
                        vec![
                            kv("gen_ai.operation.name", s("execute_tool")),
                            kv("gen_ai.tool.name", s("search")),
                        ],
                    ),
                    foreign(
                        "openai.chat",
                        4,
                        vec![
                            kv("gen_ai.system", s("openai")),
                            kv("gen_ai.request.model", s("gpt-4o-mini")),
                            kv("gen_ai.usage.prompt_tokens", Av::IntValue(9)),
                            kv("gen_ai.prompt.0.role", s("user")),
                            kv("gen_ai.prompt.0.content", s("q")),
                            kv("gen_ai.request.temperature", Av::DoubleValue(0.5)),
                        ],
                    ),
                    OtlpSpan {
                        status: Some(Status {
                            code: StatusCode::Error as i32,
                            message: "boom".into(),
                        }),
                        ..foreign("failing", 5, vec![])
                    },
                    OtlpSpan {
                        trace_id: vec![0; 16],
                        ..foreign("bad", 6, vec![])
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let d = decode::request(req);
    assert_eq!(d.rejected, 1, "an all-zero trace id is refused");
    assert!(d.errors[0].contains("trace_id"), "{:?}", d.errors);
    let by = |n: &str| d.spans.iter().find(|s| s.name == n).unwrap();
    let oi = by("ChatOpenAI");
    assert_eq!(oi.kind, Kind::Llm);
    assert_eq!(
        oi.trace_id,
        "ab".repeat(16),
        "trace ids become lowercase hex"
    );
    let llm = oi.llm.as_ref().unwrap();
    assert_eq!(llm.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (llm.input_tokens, llm.output_tokens, llm.total_tokens),
        (Some(7), Some(3), Some(10))
    );
    assert_eq!(
        oi.input,
        json!({"messages": [{"role": "user", "content": "hi"}]})
    );
    assert_eq!(oi.output, json!("hello"));
    assert_eq!(oi.session_id.as_deref(), Some("sess"));
    assert_eq!(
        oi.metadata["service.name"], "shop",
        "the app's service is kept"
    );
    let wf = by("checkout.workflow");
    assert_eq!(wf.kind, Kind::Chain);
    assert_eq!(wf.input, json!({"cart": 3}));
    let tool = by("search");
    assert_eq!(tool.kind, Kind::Tool);
    assert_eq!(
        tool.metadata["gen_ai.tool.name"], "search",
        "unmapped attributes stay as metadata"
    );
    let chat = by("openai.chat");
    assert_eq!(chat.kind, Kind::Llm, "a span with a model is an LLM span");
    let llm = chat.llm.as_ref().unwrap();
    assert_eq!(llm.provider.as_deref(), Some("openai"));
    assert_eq!(llm.input_tokens, Some(9));
    assert_eq!(llm.params["temperature"], json!(0.5));
    assert_eq!(
        chat.input,
        json!({"messages": [{"role": "user", "content": "q"}]})
    );
    let failing = by("failing");
    assert_eq!(failing.status, Our::Error);
    assert_eq!(failing.error.as_ref().unwrap().message, "boom");
    assert_eq!(
        failing.kind,
        Kind::Chain,
        "a span with no convention is a chain step"
    );
}

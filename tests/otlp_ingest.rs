//! OTLP ingest (`POST /v1/traces` on the admin listener): app spans in protobuf or JSON (gzip
//! too) join the proxy's LLM spans in one trace; answers follow the OTLP/HTTP spec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::{chat_body, client, metric_value, test_config, MockUpstream, TestProxy};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{any_value::Value as Av, AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;
use serde_json::{json, Value};

const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
const CHAIN: &str = "10f067aa0ba902b7";

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Av::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn chain_span(now_ns: u64) -> Span {
    Span {
        trace_id: hex::decode(TRACE).unwrap(),
        span_id: hex::decode(CHAIN).unwrap(),
        name: "answer question".into(),
        kind: 1,
        start_time_unix_nano: now_ns,
        end_time_unix_nano: now_ns + 2_000_000_000,
        attributes: vec![
            kv("openinference.span.kind", "CHAIN"),
            kv("input.value", "what is 2+2?"),
        ],
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        - 1_000_000_000
}

#[tokio::test]
async fn protobuf_app_spans_and_the_proxy_llm_span_form_one_nested_trace() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .post(proxy.api("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(vec![chain_span(now_ns())]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "application/x-protobuf");
    let answer = ExportTraceServiceResponse::decode(rsp.bytes().await.unwrap()).unwrap();
    assert!(answer.partial_success.is_none(), "everything was accepted");

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE}-{CHAIN}-01"))
        .json(&chat_body("gpt-4o-mini", "what is 2+2?", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let llm_id = rsp.headers()["x-tracer-span-id"]
        .to_str()
        .unwrap()
        .to_string();
    rsp.bytes().await.unwrap();

    let trace = proxy.wait_for_trace(TRACE, 2).await;
    let spans = trace["spans"].as_array().unwrap();
    let chain = spans
        .iter()
        .find(|s| s["span_id"] == CHAIN)
        .expect("the app span is stored");
    assert_eq!(chain["kind"], "chain");
    assert_eq!(chain["parent_span_id"], Value::Null);
    assert_eq!(chain["input"], "what is 2+2?");
    assert_eq!(chain["metadata"]["service.name"], "shop");
    let llm = spans
        .iter()
        .find(|s| s["span_id"] == llm_id.as_str())
        .unwrap();
    assert_eq!(llm["kind"], "llm");
    assert_eq!(
        llm["parent_span_id"], CHAIN,
        "the LLM span nests under the app's chain span"
    );
    let metrics = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "llm_tracer_otlp_spans_ingested_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn gzipped_otlp_json_is_accepted_and_bad_spans_are_reported_as_partial_success() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let now = now_ns();
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent-app"}}]},
        "scopeSpans": [{"scope": {"name": "openinference.instrumentation.langchain"}, "spans": [
            {"traceId": TRACE, "spanId": "20f067aa0ba902b7", "name": "lookup", "kind": 1,
             "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1000).to_string(),
             "attributes": [{"key": "openinference.span.kind", "value": {"stringValue": "TOOL"}},
                            {"key": "tool.name", "value": {"stringValue": "search"}}]},
            {"traceId": TRACE, "spanId": "21f067aa0ba902b7", "parentSpanId": "20f067aa0ba902b7",
             "name": "ChatOpenAI", "kind": 3,
             "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1000).to_string(),
             "attributes": [{"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
                            {"key": "llm.model_name", "value": {"stringValue": "gpt-4o"}},
                            {"key": "llm.token_count.prompt", "value": {"intValue": "11"}},
                            {"key": "llm.token_count.completion", "value": {"intValue": 4}}],
             "status": {"code": 2, "message": "rate limited"}},
            {"traceId": "", "spanId": "22f067aa0ba902b7", "name": "no trace",
             "startTimeUnixNano": now.to_string(), "endTimeUnixNano": now.to_string()}
        ]}]
    }]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).unwrap();
    let rsp = client()
        .post(proxy.api("/v1/traces"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let answer: Value = rsp.json().await.unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedSpans"], "1",
        "one span had no trace id: {answer}"
    );
    assert!(answer["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("trace_id"));

    let trace = proxy.wait_for_trace(TRACE, 2).await;
    let spans = trace["spans"].as_array().unwrap();
    let tool = spans.iter().find(|s| s["name"] == "lookup").unwrap();
    assert_eq!(tool["kind"], "tool");
    assert_eq!(tool["metadata"]["tool.name"], "search");
    assert_eq!(tool["metadata"]["service.name"], "agent-app");
    let llm = spans.iter().find(|s| s["name"] == "ChatOpenAI").unwrap();
    assert_eq!(llm["kind"], "llm");
    assert_eq!(llm["parent_span_id"], "20f067aa0ba902b7");
    assert_eq!(llm["status"], "error");
    assert_eq!(llm["error"]["message"], "rate limited");
    assert_eq!(llm["llm"]["request_model"], "gpt-4o");
    assert_eq!(llm["llm"]["input_tokens"], 11);
    assert_eq!(llm["llm"]["output_tokens"], 4);
    let summary = &trace["trace"];
    assert_eq!(
        summary["input_tokens"], 11,
        "ingested LLM spans count in the trace summary"
    );
}

#[tokio::test]
async fn bad_bodies_get_clear_4xx_answers_and_the_admin_token_applies() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let post = |ct: &'static str, body: Vec<u8>| {
        client()
            .post(proxy.api("/v1/traces"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let rsp = post("application/json", b"{\"resourceSpans\": 7}".to_vec())
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400);
    let v: Value = rsp.json().await.unwrap();
    assert_eq!(v["code"], 3, "google.rpc.Status INVALID_ARGUMENT");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("ExportTraceServiceRequest"),
        "{v}"
    );

    let rsp = post("application/x-protobuf", vec![0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400);
    assert_eq!(rsp.headers()["content-type"], "application/x-protobuf");
    let bytes = rsp.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&bytes).contains("not an OTLP"),
        "the Status message says why"
    );

    let rsp = post("text/plain", b"hello".to_vec()).await.unwrap();
    assert_eq!(rsp.status(), 415);
    let v: Value = rsp.json().await.unwrap();
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("application/x-protobuf"));

    let rsp = client()
        .post(proxy.api("/v1/traces"))
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 415, "unsupported content-encoding");

    let rsp = client().get(proxy.api("/v1/traces")).send().await.unwrap();
    assert_eq!(rsp.status(), 405);

    let rsp = post(
        "application/x-protobuf",
        vec![0u8; llm_tracer::otlp::ingest::MAX_BODY_BYTES + 1],
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 413, "the body size is bounded");
    let bytes = rsp.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("larger than"));

    // With an admin token, ingest needs it like every data route.
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.admin_token = Some(
        llm_tracer::config::load(
            None,
            &llm_tracer::config::Flags {
                admin_token: Some("a-very-long-admin-token-1234".into()),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap()
        .admin_token
        .unwrap(),
    );
    let guarded = TestProxy::start_with(config).await;
    let body = request(vec![chain_span(now_ns())]).encode_to_vec();
    let rsp = client()
        .post(guarded.api("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 401);
    let rsp = client()
        .post(guarded.api("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("authorization", "Bearer a-very-long-admin-token-1234")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
}

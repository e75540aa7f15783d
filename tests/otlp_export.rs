//! OTLP export: every stored span reaches a collector (decoded with the official
//! opentelemetry-proto definitions) with its ids and GenAI attributes; a collector that stops and
//! restarts loses nothing within the buffer bound, drops beyond it are counted, and traffic never
//! notices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::time::{Duration, Instant};

use common::{chat_body, client, metric_value, test_config, MockUpstream, TestProxy};
use llm_tracer::otlp::{self, OtlpConfig, Protocol};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use otlp_receiver::{attr, attr_int, attr_str, OtlpReceiver};
use serde_json::{json, Value};

fn otlp(endpoint: &str, protocol: Protocol, max_buffer_spans: usize) -> OtlpConfig {
    OtlpConfig {
        traces_url: otlp::traces_url(endpoint).unwrap(),
        protocol,
        headers: vec![otlp::header_pair("x-collector-key", "k-123").unwrap()],
        batch_size: 5,
        interval: Duration::from_millis(20),
        max_buffer_spans,
        timeout: Duration::from_secs(2),
        service_name: "llm-tracer".into(),
    }
}

async fn start_proxy(upstream: &MockUpstream, cfg: OtlpConfig) -> (TestProxy, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.otlp = Some(cfg);
    (TestProxy::start_with(config).await, tmp)
}

async fn metric(proxy: &TestProxy, name: &str) -> f64 {
    metric_value(&proxy.metrics_text().await, name).unwrap_or(0.0)
}

/// Waits (bounded) until `name` reaches `want`.
async fn wait_metric(proxy: &TestProxy, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(proxy, name).await;
        if v >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn exports_every_span_with_ids_and_gen_ai_attributes(protocol: Protocol) {
    let upstream = MockUpstream::start().await.unwrap();
    let receiver = OtlpReceiver::start().await;
    let (proxy, _tmp) = start_proxy(&upstream, otlp(&receiver.endpoint(), protocol, 100)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_parent = "00f067aa0ba902b7";

    // An app span through the JSON ingest API, then two calls under it (one streamed), and one
    // call in a trace with a free-form id.
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&json!([{
            "trace_id": trace, "span_id": app_parent, "name": "answer question",
            "kind": "chain", "start_time": "2026-11-27T06:00:00Z", "end_time": "2026-11-27T06:00:02Z",
            "metadata": {"team": "search"}
        }]))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let mut call_ids = Vec::new();
    for stream in [false, true] {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("traceparent", format!("00-{trace}-{app_parent}-01"))
            .json(&json!({"model": "gpt-4o-mini", "stream": stream, "temperature": 0.3, "max_tokens": 50,
                          "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        call_ids.push(
            rsp.headers()["x-tracer-span-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        rsp.bytes().await.unwrap();
    }
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "checkout-42")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.bytes().await.unwrap();

    let got = receiver.wait_for(4).await;
    assert_eq!(got.len(), 4, "each stored span is exported once");
    let ct = match protocol {
        Protocol::Protobuf => "application/x-protobuf",
        Protocol::Json => "application/json",
    };
    assert!(got.iter().all(|r| r.content_type == ct));
    assert!(got.iter().all(|r| r.service == "llm-tracer"));
    assert!(
        got.iter()
            .all(|r| r.collector_key.as_deref() == Some("k-123")),
        "the configured [otlp.headers] are sent with every request"
    );

    let stored = proxy.wait_for_trace(trace, 3).await;
    let stored_spans = stored["spans"].as_array().unwrap();
    for r in got
        .iter()
        .filter(|r| hex::encode(&r.span.trace_id) == trace)
    {
        let s = &r.span;
        let span_id = hex::encode(&s.span_id);
        let ours: &Value = stored_spans
            .iter()
            .find(|x| x["span_id"] == span_id.as_str())
            .unwrap_or_else(|| panic!("exported span {span_id} is a stored span"));
        let parent = ours["parent_span_id"].as_str().map(str::to_string);
        assert_eq!(
            (!s.parent_span_id.is_empty()).then(|| hex::encode(&s.parent_span_id)),
            parent,
            "the parent id is preserved"
        );
        assert_eq!(s.name, ours["name"].as_str().unwrap());
        if ours["kind"] == "chain" {
            assert_eq!(attr_str(s, "llm_tracer.kind").as_deref(), Some("chain"));
            assert_eq!(
                attr_str(s, "llm_tracer.metadata.team").as_deref(),
                Some("search")
            );
            assert!(
                attr(s, "gen_ai.operation.name").is_none(),
                "a chain step is no GenAI operation"
            );
            continue;
        }
        assert!(call_ids.contains(&span_id));
        assert_eq!(
            parent.as_deref(),
            Some(app_parent),
            "calls nest under the app span"
        );
        let llm = &ours["llm"];
        assert_eq!(
            attr_str(s, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            attr_str(s, "gen_ai.provider.name").as_deref(),
            llm["provider"].as_str()
        );
        assert_eq!(
            attr_str(s, "gen_ai.system").as_deref(),
            llm["provider"].as_str()
        );
        assert_eq!(
            attr_str(s, "gen_ai.request.model").as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            attr_str(s, "gen_ai.response.model").as_deref(),
            llm["response_model"].as_str()
        );
        assert!(llm["response_model"].is_string());
        assert_eq!(
            attr_int(s, "gen_ai.usage.input_tokens"),
            llm["input_tokens"].as_i64()
        );
        assert_eq!(
            attr_int(s, "gen_ai.usage.output_tokens"),
            llm["output_tokens"].as_i64()
        );
        assert!(llm["output_tokens"].as_i64().unwrap() > 0);
        assert_eq!(attr_int(s, "gen_ai.request.max_tokens"), Some(50));
        assert_eq!(
            attr(s, "gen_ai.request.temperature"),
            Some(&Av::DoubleValue(0.3))
        );
        match attr(s, "gen_ai.response.finish_reasons") {
            Some(Av::ArrayValue(a)) => assert_eq!(
                a.values[0].value,
                Some(Av::StringValue(
                    llm["finish_reason"].as_str().unwrap().into()
                ))
            ),
            other => panic!("finish_reasons is a string array, got {other:?}"),
        }
        assert_eq!(
            attr(s, "llm_tracer.stream"),
            Some(&Av::BoolValue(llm["stream"].as_bool().unwrap()))
        );
        assert_eq!(attr_str(s, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(attr_int(s, "http.response.status_code"), Some(200));
        assert_eq!(s.kind, 3, "a call through the proxy is a CLIENT span");
        assert_eq!(
            s.start_time_unix_nano / 1000,
            llm_tracer::span::Timestamp::parse_rfc3339(ours["start_time"].as_str().unwrap())
                .unwrap()
                .0,
            "start time is preserved (microseconds)"
        );
    }
    let free = got
        .iter()
        .find(|r| attr_str(&r.span, "llm_tracer.trace_id").as_deref() == Some("checkout-42"))
        .expect("a free-form trace id travels in llm_tracer.trace_id");
    assert_eq!(
        free.span.trace_id,
        llm_tracer::otlp::ids::trace_id_bytes("checkout-42")
            .0
            .to_vec(),
        "and maps to its deterministic 16-byte hash"
    );
    wait_metric(&proxy, "llm_tracer_otlp_exported_spans_total", 4.0).await;
    assert_eq!(
        metric(&proxy, "llm_tracer_otlp_exported_spans_total").await,
        4.0
    );
}

#[tokio::test]
async fn every_stored_span_is_exported_as_protobuf_with_ids_and_gen_ai_attributes() {
    exports_every_span_with_ids_and_gen_ai_attributes(Protocol::Protobuf).await;
}

#[tokio::test]
async fn every_stored_span_is_exported_as_otlp_json_with_ids_and_gen_ai_attributes() {
    exports_every_span_with_ids_and_gen_ai_attributes(Protocol::Json).await;
}

#[tokio::test]
async fn a_collector_restart_loses_nothing_within_the_buffer_and_counts_drops_beyond_it() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut receiver = OtlpReceiver::start().await;
    let addr = receiver.addr;
    let bound = 5;
    let (proxy, _tmp) = start_proxy(
        &upstream,
        otlp(&receiver.endpoint(), Protocol::Protobuf, bound),
    )
    .await;
    let call = |trace: String| {
        let url = proxy.url("/v1/chat/completions");
        async move {
            let rsp = client()
                .post(url)
                .header("x-tracer-trace-id", trace)
                .json(&chat_body("gpt-4o-mini", "hi", false))
                .send()
                .await
                .unwrap();
            assert_eq!(
                rsp.status(),
                200,
                "a collector outage never touches traffic"
            );
            rsp.bytes().await.unwrap();
        }
    };
    call("before".into()).await;
    receiver.wait_for(1).await;

    receiver.stop().await;
    let during = 8;
    // Every call is stored locally whatever the collector does. Each is waited for before the
    // next: a call that finds the writer busy goes through the spool and can be stored after a
    // later one, and the exporter buffers spans in the order they are stored.
    for i in 0..during {
        call(format!("during-{i}")).await;
        proxy.wait_for_trace(&format!("during-{i}"), 1).await;
    }
    wait_metric(
        &proxy,
        "llm_tracer_spans_captured_total",
        (1 + during) as f64,
    )
    .await;
    wait_metric(&proxy, "llm_tracer_otlp_failed_attempts_total", 1.0).await;
    let text = proxy.metrics_text().await;
    assert!(
        text.contains(&format!(
            "llm_tracer_otlp_dropped_spans_total{{reason=\"buffer_full\"}} {}",
            during - bound
        )),
        "spans beyond the buffer bound are dropped and counted:\n{text}"
    );

    let receiver = OtlpReceiver::start_on(addr).await;
    let got = receiver.wait_for(bound).await;
    // Give a stray duplicate or extra batch the chance to show up before counting.
    wait_metric(
        &proxy,
        "llm_tracer_otlp_exported_spans_total",
        (1 + bound) as f64,
    )
    .await;
    let got_ids: std::collections::BTreeSet<String> = receiver
        .spans()
        .iter()
        .map(|r| attr_str(&r.span, "llm_tracer.trace_id").unwrap())
        .collect();
    assert_eq!(got.len(), bound);
    assert_eq!(
        got_ids,
        (0..bound).map(|i| format!("during-{i}")).collect(),
        "the buffered spans (the first {bound}) all arrive after the restart"
    );
    assert_eq!(
        metric(&proxy, "llm_tracer_otlp_exported_spans_total").await,
        (1 + bound) as f64
    );
    assert_eq!(metric(&proxy, "llm_tracer_otlp_buffered_spans").await, 0.0);
}

#[tokio::test]
async fn retryable_answers_are_retried_and_refusals_are_dropped_and_counted() {
    let upstream = MockUpstream::start().await.unwrap();
    let receiver = OtlpReceiver::start().await;
    let (proxy, _tmp) = start_proxy(
        &upstream,
        otlp(&receiver.endpoint(), Protocol::Protobuf, 100),
    )
    .await;
    let call = |trace: &'static str| {
        let url = proxy.url("/v1/chat/completions");
        async move {
            let rsp = client()
                .post(url)
                .header("x-tracer-trace-id", trace)
                .json(&chat_body("gpt-4o-mini", "hi", false))
                .send()
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
            rsp.bytes().await.unwrap();
        }
    };

    // 503 is retryable (OTLP/HTTP): the batch stays buffered and arrives once the collector is back.
    receiver.answer_with(503);
    call("busy").await;
    wait_metric(&proxy, "llm_tracer_otlp_failed_attempts_total", 2.0).await;
    assert!(receiver.spans().is_empty());
    receiver.answer_with(200);
    let got = receiver.wait_for(1).await;
    assert_eq!(
        attr_str(&got[0].span, "llm_tracer.trace_id").as_deref(),
        Some("busy")
    );
    wait_metric(&proxy, "llm_tracer_otlp_exported_spans_total", 1.0).await;

    // 400 means the collector refuses the data: dropped and counted, not retried forever.
    receiver.answer_with(400);
    let before = receiver.requests();
    call("refused").await;
    let text_has =
        |t: &str| t.contains("llm_tracer_otlp_dropped_spans_total{reason=\"rejected\"} 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text_has(&proxy.metrics_text().await) {
        assert!(
            Instant::now() < deadline,
            "a refused batch is counted as rejected"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Another batch goes through normally, so the refused one was not retried ahead of it.
    receiver.answer_with(200);
    call("after").await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        attr_str(&got[1].span, "llm_tracer.trace_id").as_deref(),
        Some("after")
    );
    assert_eq!(
        receiver.requests() - before,
        2,
        "one refused request, one accepted: a refusal is not retried"
    );
    assert_eq!(metric(&proxy, "llm_tracer_otlp_buffered_spans").await, 0.0);
}

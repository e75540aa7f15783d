//! Upstream faults the other files do not cover: an upstream slow to send its head (504), one
//! that goes silent mid-stream or mid-body (`idle_stream_timeout_ms`), a malformed JSON body, and
//! a capture queue that is full. (Refused upstreams, resets mid-body and client hang-ups are in
//! `failures.rs`; malformed SSE in `operations.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat_body, client, metric_value, test_config, MockUpstream, TestProxy};
use serde_json::Value;

#[tokio::test]
async fn an_upstream_slow_to_send_its_head_gives_an_openai_style_504_and_an_error_span() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.response_header_timeout = Duration::from_millis(200);
    let proxy = TestProxy::start_with(config).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fault-slow-head")
        .header("x-mock-delay-ms", "5000")
        .json(&chat_body("gpt-4o-mini", "slow head", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 504, "no head within the timeout is a 504");
    assert_eq!(rsp.headers()["x-tracer-error"], "upstream_timeout");
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "upstream_timeout",
        "OpenAI's error shape"
    );
    assert_eq!(body["error"]["type"], "api_error");

    let trace = proxy.wait_for_trace("fault-slow-head", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "error");
    assert_eq!(span["error"]["type"], "upstream_timeout");
    assert!(span["http"]["status"].is_null(), "no upstream status came");
}

#[tokio::test]
async fn a_stream_whose_upstream_goes_silent_ends_cleanly_with_an_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.idle_stream_timeout = Some(Duration::from_millis(300));
    let proxy = TestProxy::start_with(config).await;

    // x-mock-hold: the upstream sends the content, then nothing (until released, never here).
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fault-idle-sse")
        .header("x-mock-hold", "1")
        .json(&chat_body("gpt-4o", "then silence", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp
        .bytes()
        .await
        .expect("the client's stream ends cleanly, not with a transport error");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("\"content\":\"Mock\""),
        "what the upstream sent was forwarded: {text}"
    );
    let tail = text.rsplit("event: error\n").next().unwrap();
    assert!(
        text.contains("event: error\ndata: "),
        "the stream ends with an error event: {text}"
    );
    let data: Value =
        serde_json::from_str(tail.trim().strip_prefix("data: ").unwrap().trim()).unwrap();
    assert_eq!(
        data["error"]["code"], "upstream_idle_timeout",
        "the error event names the cause in a shape SDKs raise: {data}"
    );
    assert!(
        !text.contains("[DONE]"),
        "no [DONE]: the answer is not complete"
    );

    let trace = proxy.wait_for_trace("fault-idle-sse", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "error");
    assert_eq!(span["error"]["type"], "upstream_idle_timeout");
    let partial = span["output"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        partial.starts_with("Mock reply to"),
        "the partial output is kept: {span}"
    );
    let metrics = proxy.metrics_text().await;
    assert!(
        metric_value(&metrics, "llm_tracer_upstream_errors_total").unwrap() >= 1.0,
        "an idle timeout counts as an upstream error"
    );
}

#[tokio::test]
async fn a_json_body_whose_upstream_goes_silent_fails_for_the_client_and_the_span_says_why() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.idle_stream_timeout = Some(Duration::from_millis(300));
    let proxy = TestProxy::start_with(config).await;

    // A non-stream body held whole after its head.
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fault-idle-json")
        .header("x-mock-hold", "1")
        .json(&chat_body("gpt-4o", "head then silence", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(
        rsp.bytes().await.is_err(),
        "a JSON body cannot end cleanly half-way: the client sees a failed body"
    );
    let trace = proxy.wait_for_trace("fault-idle-json", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "error");
    assert_eq!(span["error"]["type"], "upstream_idle_timeout");
    assert!(
        span["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idle_stream_timeout_ms"),
        "the message names the setting: {span}"
    );
}

#[tokio::test]
async fn the_idle_limit_applies_to_each_silence_not_to_the_whole_stream() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.idle_stream_timeout = Some(Duration::from_millis(1000));
    let proxy = TestProxy::start_with(config).await;
    // ~20 events 100 ms apart: each gap is far below the limit, the whole stream above it.
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fault-idle-ok")
        .header("x-mock-gap-ms", "100")
        .json(&chat_body("gpt-4o", "a b c d e f g h i j k l m n o", true))
        .send()
        .await
        .unwrap();
    let text = rsp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "the stream completes: {text}");
    assert!(!text.contains("upstream_idle_timeout"));
    let trace = proxy.wait_for_trace("fault-idle-ok", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");
}

#[tokio::test]
async fn malformed_json_from_the_upstream_is_forwarded_byte_for_byte_and_the_parse_error_recorded()
{
    const BROKEN: &[u8] =
        b"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"message\":{\"content\":\"hal";
    let upstream = common::raw_upstream("application/json", BROKEN).await;
    let proxy = TestProxy::start(&upstream).await;
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fault-bad-json")
        .json(&chat_body("gpt-4o", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        BROKEN,
        "the broken body reaches the app unchanged"
    );

    let trace = proxy.wait_for_trace("fault-bad-json", 1).await;
    let span = &trace["spans"][0];
    let notes = span["metadata"]["tracer.notes"]
        .as_str()
        .unwrap_or_default();
    assert!(
        notes.contains("response body is not valid JSON") && notes.contains("EOF"),
        "the span records the parse error: {span}"
    );
    assert_eq!(
        span["output"],
        String::from_utf8_lossy(BROKEN).as_ref(),
        "the body is kept as text"
    );
}

#[tokio::test]
async fn a_full_capture_queue_never_touches_traffic_and_every_drop_is_counted() {
    const CALLS: usize = 8;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.queue_capacity = 1;
    config.batch_size = 1;
    config.spool_max_bytes = 0; // in memory only: the queue is the bound (see tests/spool.rs)
    let proxy = TestProxy::start_with(config).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    faults.stall_writes(); // the writer holds its first batch: the one-slot queue fills

    for i in 0..CALLS {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_body("gpt-4o-mini", &format!("call {i}"), false))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "a full queue never fails a call");
        let v: Value = rsp.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("Mock reply to: call {i}"),
            "the answer is the upstream's"
        );
    }
    let text = proxy.metrics_text().await;
    let full = metric_value(
        &text,
        "llm_tracer_captures_dropped_total{reason=\"queue_full\"}",
    )
    .unwrap();
    assert!(
        full >= 1.0,
        "captures that found the queue full are counted:\n{text}"
    );

    faults.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = proxy.metrics_text().await;
        let captured = metric_value(&text, "llm_tracer_spans_captured_total").unwrap();
        let dropped = common::metric_family_sum(&text, "llm_tracer_captures_dropped_total");
        if captured + dropped >= CALLS as f64 {
            assert_eq!(
                captured + dropped,
                CALLS as f64,
                "every call is stored or counted as dropped, exactly once"
            );
            assert!(
                captured >= 1.0,
                "the held batch is written once the writer is free"
            );
            break;
        }
        assert!(Instant::now() < deadline, "captures never settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

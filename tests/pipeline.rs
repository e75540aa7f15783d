//! Capture pipeline: a tiny queue never costs the app a call and every capture is accounted for;
//! graceful shutdown lets a live stream finish and stores its span; capture off forwards only;
//! the capture cap truncates what is stored, never what is forwarded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    chat_body, client, metric_family_sum, metric_value, test_config, MockUpstream, TestProxy,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// Guards every wait in this file against a hang; never a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// The index the mock gave a request, from its `x-request-id: mock-req-<index>` header.
fn mock_index(headers: &reqwest::header::HeaderMap) -> usize {
    headers["x-request-id"]
        .to_str()
        .unwrap()
        .strip_prefix("mock-req-")
        .expect("the mock's request id is passed through")
        .parse()
        .unwrap()
}

/// Trace ids listed by `/api/traces?limit=1000`.
async fn listed_trace_ids(proxy: &TestProxy) -> Vec<String> {
    let (status, page) = proxy.get_json("/api/traces?limit=1000").await;
    assert_eq!(status, 200, "the trace list answers");
    page["traces"]
        .as_array()
        .expect("the trace list has a traces array")
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_one_slot_queue_never_fails_a_call_and_every_capture_is_accounted_for() {
    const CALLS: usize = 40;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.queue_capacity = 1;
    config.batch_size = 1;
    config.batch_interval = Duration::from_millis(5);
    let proxy = TestProxy::start_with(config).await;

    let http = client();
    let mut calls = JoinSet::new();
    for i in 0..CALLS {
        let request = http
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", format!("acct-{i}"))
            .json(&chat_body(
                "gpt-4o-mini",
                &format!("call number {i}"),
                false,
            ));
        calls.spawn(async move {
            let rsp = request.send().await.unwrap();
            let status = rsp.status();
            let index = mock_index(rsp.headers());
            let body = rsp.bytes().await.unwrap();
            (i, status, index, body)
        });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        let (i, status, index, body) = done.unwrap();
        assert_eq!(status, 200, "call {i} succeeds whatever the queue does");
        assert_eq!(
            &body[..],
            &upstream.responses()[index][..],
            "call {i} receives the whole upstream body"
        );
        let reply: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            format!("Mock reply to: call number {i}"),
            "call {i} receives its own answer"
        );
        answered += 1;
    }
    assert_eq!(answered, CALLS, "every call is answered");
    assert_eq!(
        upstream.hits(),
        CALLS,
        "every call reaches the upstream once"
    );

    // Every call ends as exactly one stored span or one counted drop.
    let deadline = Instant::now() + HANG_GUARD;
    let (captured, dropped) = loop {
        let text = proxy.metrics_text().await;
        let captured = metric_value(&text, "llm_tracer_spans_captured_total")
            .expect("the metrics list spans_captured");
        let dropped = metric_family_sum(&text, "llm_tracer_captures_dropped_total");
        let in_flight = metric_value(&text, "llm_tracer_in_flight_requests").unwrap();
        if captured + dropped >= CALLS as f64 && in_flight == 0.0 {
            break (captured, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "captured ({captured}) plus dropped ({dropped}) never reached {CALLS}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        captured + dropped,
        CALLS as f64,
        "each call is either captured or counted as dropped, never both and never neither"
    );
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&text, "llm_tracer_spans_captured_total"),
        Some(captured),
        "the captured count is stable once every call is accounted for"
    );
    assert_eq!(
        metric_value(
            &text,
            "llm_tracer_captures_dropped_total{reason=\"store_error\"}"
        ),
        Some(0.0),
        "no capture is lost to the store"
    );

    let ids = listed_trace_ids(&proxy).await;
    assert_eq!(
        ids.len() as f64,
        captured,
        "the store lists exactly as many traces as the metrics say were captured"
    );
    assert!(
        ids.iter().all(|id| id.starts_with("acct-")),
        "only the calls of this test are stored: {ids:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_refuses_new_connections_lets_a_live_stream_finish_and_stores_it() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut proxy = TestProxy::start_with(test_config(&data, &upstream.url())).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "shutdown-stream")
        .header("x-mock-hold", "1")
        .json(&chat_body("gpt-4o", "outlive the shutdown", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let mut stream = rsp.bytes_stream();
    let first = tokio::time::timeout(HANG_GUARD, stream.next())
        .await
        .expect("the first chunk arrives while the upstream holds the rest")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with("data: "),
        "the first chunk is an SSE event"
    );

    let proxy_url = proxy.proxy.clone();
    let stopping = proxy.begin_stop();

    // A fresh client (no pooled connection) must be refused once the listener is closed.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let fresh = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        match fresh.get(format!("{proxy_url}/v1/models")).send().await {
            Err(e) if e.is_connect() => break,
            // Accepted before the listener closed (or closed by the graceful shutdown): retry.
            Ok(_) | Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted while shutting down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the stream still in flight"
    );

    upstream.release();
    let mut received = first.to_vec();
    let rest = tokio::time::timeout(HANG_GUARD, async {
        while let Some(chunk) = stream.next().await {
            received.extend_from_slice(&chunk.expect("the stream ends cleanly"));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream completes after release");
    assert!(
        String::from_utf8_lossy(&received).ends_with("data: [DONE]\n\n"),
        "the client's stream ends with [DONE]"
    );
    assert_eq!(
        &received[..],
        &upstream.responses()[0][..],
        "the stream that outlived the shutdown signal passed through unchanged"
    );
    tokio::time::timeout(HANG_GUARD, stopping)
        .await
        .expect("shutdown returns once the stream is done")
        .unwrap();

    let reopened = TestProxy::start_with(test_config(&data, &upstream.url())).await;
    let trace = reopened.wait_for_trace("shutdown-stream", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(
        span["status"], "ok",
        "the stream finished during shutdown is a complete span"
    );
    assert_eq!(span["llm"]["stream"], true);
    assert_eq!(
        span["output"]["choices"][0]["message"]["content"], "Mock reply to: outlive the shutdown",
        "the whole stream was captured, including what came after the shutdown signal"
    );
}

#[tokio::test]
async fn with_capture_off_calls_are_forwarded_and_nothing_is_stored() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.capture = false;
    let proxy = TestProxy::start_with(config).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "off-chat")
        .json(&chat_body("gpt-4o-mini", "no capture", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()["x-tracer-trace-id"],
        "off-chat",
        "the trace id is still echoed with capture off"
    );
    let body = rsp.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &upstream.responses()[0][..],
        "a non-streamed answer passes through unchanged with capture off"
    );

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-gap-ms", "2")
        .json(&chat_body("gpt-4o-mini", "no capture stream", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let trace_id = rsp.headers()["x-tracer-trace-id"].to_str().unwrap();
    assert!(
        !trace_id.is_empty(),
        "a fresh trace id is still returned with capture off"
    );
    assert!(
        rsp.headers().contains_key("x-tracer-span-id"),
        "a span id is still returned with capture off"
    );
    let streamed = rsp.bytes().await.unwrap();
    assert_eq!(
        &streamed[..],
        &upstream.responses()[1][..],
        "a stream passes through unchanged with capture off"
    );
    assert!(String::from_utf8_lossy(&streamed).ends_with("data: [DONE]\n\n"));

    assert!(
        listed_trace_ids(&proxy).await.is_empty(),
        "nothing is stored with capture off"
    );
    let (status, _) = proxy.get_json("/api/traces/off-chat").await;
    assert_eq!(status, 404, "the uncaptured call has no trace");
    let (status, health) = proxy.get_json("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["capture"], false, "/healthz reports capture off");
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&text, "llm_tracer_spans_captured_total"),
        Some(0.0),
        "no span is captured with capture off"
    );
    assert_eq!(
        metric_value(&text, "llm_tracer_requests_total"),
        Some(2.0),
        "requests are still counted with capture off"
    );
}

#[tokio::test]
async fn the_capture_cap_truncates_the_stored_body_but_never_the_forwarded_one() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.max_capture_bytes = 64;
    let proxy = TestProxy::start_with(config).await;

    // A request that fits under the cap, so only the response can be truncated.
    let request = serde_json::to_vec(&json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    assert!(request.len() <= 64, "the request fits under the cap");
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "cap-64")
        .header("content-type", "application/json")
        .body(request.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.bytes().await.unwrap();
    let sent = upstream.responses()[0].clone();
    assert!(
        sent.len() > 64,
        "the upstream answer is longer than the cap"
    );
    assert_eq!(
        &body[..],
        &sent[..],
        "the client receives the whole body whatever the capture cap"
    );

    let trace = proxy.wait_for_trace("cap-64", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(
        span["capture"]["truncated"], true,
        "a body over the cap is marked truncated"
    );
    assert_eq!(
        span["capture"]["bytes_out"],
        sent.len() as u64,
        "bytes_out counts the whole response, not the kept part"
    );
    assert_eq!(
        span["capture"]["bytes_in"],
        request.len() as u64,
        "bytes_in counts the whole request"
    );
    assert_eq!(span["http"]["status"], 200);
    assert_eq!(
        span["input"]["messages"][0]["content"], "hi",
        "a request under the cap is kept whole"
    );
}

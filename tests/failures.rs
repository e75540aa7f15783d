//! Failures: upstream errors pass through and become error spans; unreachable upstreams give an
//! OpenAI-style 502; a client that hangs up mid-stream leaves a cancelled span with partial text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, client, MockUpstream, TestProxy};
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::test]
async fn an_upstream_500_passes_through_unchanged_and_becomes_an_error_span() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fail-500")
        .header("x-mock-status", "500")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 500, "the upstream status reaches the client");
    assert!(
        rsp.headers().get("x-tracer-error").is_none(),
        "an upstream error is not a proxy error"
    );
    let body = rsp.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &upstream.responses()[0][..],
        "the upstream error body is passed through"
    );
    let upstream_message = serde_json::from_slice::<Value>(&body).unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();

    let trace = proxy.wait_for_trace("fail-500", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "error");
    assert_eq!(
        span["error"]["message"],
        upstream_message.as_str(),
        "the span carries the upstream's message"
    );
    assert_eq!(span["http"]["status"], 500);
    assert_eq!(trace["trace"]["status"], "error");
    assert_eq!(trace["trace"]["error"], upstream_message.as_str());
}

#[tokio::test]
async fn a_refused_upstream_gives_an_openai_style_502_and_an_error_span() {
    // Bind then drop a listener: nothing listens on that port now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = TestProxy::start(&format!("http://127.0.0.1:{port}")).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fail-refused")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 502);
    assert_eq!(
        rsp.headers()["x-tracer-error"],
        "upstream_unreachable",
        "a proxy-made error is marked"
    );
    assert_eq!(rsp.headers()["x-tracer-trace-id"], "fail-refused");
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "upstream_unreachable",
        "the body has OpenAI's error shape"
    );
    assert_eq!(body["error"]["type"], "api_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&port.to_string()));

    let trace = proxy.wait_for_trace("fail-refused", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "error");
    assert_eq!(span["error"]["type"], "upstream_unreachable");
    assert!(
        span["http"]["status"].is_null(),
        "no upstream status was received"
    );
    assert_eq!(
        span["llm"]["request_model"], "gpt-4o-mini",
        "the request is still described"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_leaves_a_cancelled_span_with_partial_text() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fail-cancel")
        .header("x-mock-hold", "1")
        .json(&chat_body("gpt-4o", "a long answer please", true))
        .send()
        .await
        .unwrap();
    let mut stream = rsp.bytes_stream();
    let mut got = Vec::new();
    // Read until some content has arrived, then hang up while the upstream still holds the end.
    while !String::from_utf8_lossy(&got).contains("\"content\":\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("chunks arrive")
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    drop(stream);

    let trace = proxy.wait_for_trace("fail-cancel", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(
        span["status"], "cancelled",
        "a client hang-up mid-stream is cancelled"
    );
    let partial = span["output"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(!partial.is_empty(), "the partial output is kept: {span}");
    assert!(
        span["llm"]["finish_reason"].is_null(),
        "the stream never finished"
    );
    upstream.release();
}

#[tokio::test]
async fn an_upstream_that_breaks_mid_stream_gives_an_error_span() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fail-abort")
        .header("x-mock-abort-after", "3")
        .json(&chat_body("gpt-4o", "hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(
        rsp.bytes().await.is_err(),
        "the client sees the broken stream as an error, not a clean end"
    );
    let trace = proxy.wait_for_trace("fail-abort", 1).await;
    assert_eq!(trace["spans"][0]["status"], "error");
}

#[tokio::test]
async fn a_client_that_gives_up_before_the_response_head_leaves_a_cancelled_span() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let result = impatient
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fail-gone-early")
        .header("x-mock-delay-ms", "1500")
        .json(&chat_body("gpt-4o-mini", "slow please", false))
        .send()
        .await;
    assert!(result.is_err(), "the client timed out before the head");
    let trace = proxy.wait_for_trace("fail-gone-early", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(
        span["status"], "cancelled",
        "a call the app abandoned is recorded as cancelled"
    );
    assert_eq!(
        span["input"]["messages"][1]["content"], "slow please",
        "its request is kept"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = proxy.metrics_text().await;
        if common::metric_value(&text, "llm_tracer_in_flight_requests") == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "in_flight returns to 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_is_bounded_and_a_stream_cut_at_the_deadline_is_stored_as_cancelled() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path(), &upstream.url());
    config.shutdown_timeout = Duration::from_millis(300);
    let mut proxy = TestProxy::start_with(config.clone()).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fail-cut-at-shutdown")
        .header("x-mock-hold", "1")
        .json(&chat_body("gpt-4o", "never finishes", true))
        .send()
        .await
        .unwrap();
    let mut stream = rsp.bytes_stream();
    let _first = stream.next().await.unwrap().unwrap();
    // The upstream never releases: shutdown must still finish (the hang guard is generous).
    tokio::time::timeout(Duration::from_secs(20), proxy.begin_stop())
        .await
        .expect("shutdown finishes after its grace period even with a stream still open")
        .unwrap();
    let mut ended = false;
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(None) | Ok(Some(Err(_))) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert!(ended, "the cut stream ends for the client");

    let reopened = TestProxy::start_with(config).await;
    let trace = reopened.wait_for_trace("fail-cut-at-shutdown", 1).await;
    assert_eq!(
        trace["spans"][0]["status"], "cancelled",
        "a stream cut at the deadline is kept as cancelled"
    );
}

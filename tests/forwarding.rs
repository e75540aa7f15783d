//! Forwarding: bytes pass through untouched, streams stay live, and each call becomes a span.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, client, MockUpstream, TestProxy};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The concatenated `delta.content` of an OpenAI SSE body.
fn sse_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
            out.push_str(s);
        }
    }
    out
}

#[tokio::test]
async fn non_streamed_chat_is_forwarded_byte_for_byte_and_recorded() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions?trace=1"))
        .header("authorization", "Bearer sk-test-nonstream")
        .header("x-tracer-trace-id", "fwd-nonstream")
        .json(&chat_body("gpt-4o-mini", "hello there", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()["x-tracer-trace-id"],
        "fwd-nonstream",
        "the trace id is echoed to the app"
    );
    let span_id = rsp.headers()["x-tracer-span-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(span_id.len(), 16, "the proxy span id is 16 hex chars");
    assert_eq!(
        rsp.headers()["content-type"],
        "application/json",
        "upstream headers are returned"
    );
    let body = rsp.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &upstream.responses()[0][..],
        "the client receives exactly what the upstream sent"
    );

    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path_and_query, "/v1/chat/completions?trace=1",
        "path and query are forwarded"
    );
    assert_eq!(
        seen.headers["authorization"], "Bearer sk-test-nonstream",
        "credentials reach the upstream"
    );
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        sent,
        chat_body("gpt-4o-mini", "hello there", false),
        "the request body is forwarded untouched"
    );

    let trace = proxy.wait_for_trace("fwd-nonstream", 1).await;
    let span = &trace["spans"][0];
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(span["span_id"], span_id.as_str());
    assert_eq!(span["kind"], "llm");
    assert_eq!(span["status"], "ok");
    assert_eq!(
        span["name"], "chat gpt-4o-mini",
        "the default name is '<operation> <model>'"
    );
    assert_eq!(span["llm"]["operation"], "chat");
    assert_eq!(span["llm"]["request_model"], "gpt-4o-mini");
    assert_eq!(span["llm"]["stream"], false);
    assert_eq!(
        span["llm"]["params"]["temperature"], 0.3,
        "params are kept as sent"
    );
    assert_eq!(
        span["llm"]["input_tokens"], reply["usage"]["prompt_tokens"],
        "usage comes from the body"
    );
    assert_eq!(
        span["llm"]["output_tokens"],
        reply["usage"]["completion_tokens"]
    );
    assert_eq!(span["llm"]["usage_source"], "reported");
    assert_eq!(span["input"]["messages"][1]["content"], "hello there");
    assert_eq!(
        span["output"], reply,
        "a non-streamed output is the response body"
    );
    assert_eq!(span["http"]["status"], 200);
    assert_eq!(trace["trace"]["llm_calls"], 1);
}

#[tokio::test]
async fn streamed_chat_is_forwarded_byte_for_byte_and_reassembled() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let mut body = chat_body("gpt-4o", "tell me a story", true);
    body["stream_options"] = json!({"include_usage": true});
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fwd-stream")
        .header("x-mock-gap-ms", "5")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "text/event-stream");
    let received = rsp.bytes().await.unwrap();
    let sent = upstream.responses()[0].clone();
    assert_eq!(
        &received[..],
        &sent[..],
        "the stream passes through unchanged"
    );
    let expected_text = sse_text(&sent);
    assert!(!expected_text.is_empty());

    let trace = proxy.wait_for_trace("fwd-stream", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["llm"]["stream"], true);
    assert_eq!(span["status"], "ok");
    assert_eq!(
        span["output"]["choices"][0]["message"]["content"],
        expected_text.as_str(),
        "SSE deltas are reassembled into the final message"
    );
    assert_eq!(span["llm"]["finish_reason"], "stop");
    assert!(
        span["llm"]["ttft_ms"].as_f64().is_some(),
        "TTFT is recorded for streams"
    );
    assert!(
        span["llm"]["input_tokens"].as_u64().unwrap() > 0,
        "usage comes from the final usage chunk"
    );
    assert!(
        span["capture"]["chunks"].as_u64().unwrap() > 3,
        "chunks are counted"
    );
}

#[tokio::test]
async fn streaming_is_live_the_first_chunk_arrives_before_the_upstream_finishes() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fwd-live")
        .header("x-mock-hold", "1")
        .json(&chat_body("gpt-4o", "stream please", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let mut stream = rsp.bytes_stream();
    // The upstream holds back its last events until released: if the proxy buffered or
    // coalesced, this first read would never complete. The timeout only guards against a hang.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the first chunk reaches the client while the upstream still holds the rest")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with("data: "),
        "the first chunk is an SSE event"
    );
    upstream.release();
    let mut rest = first.to_vec();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("[DONE]"),
        "the held-back end arrives after release"
    );
    let trace = proxy.wait_for_trace("fwd-live", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");
}

#[tokio::test]
async fn other_paths_become_http_spans_with_the_raw_exchange() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .get(proxy.url("/v1/models?limit=2"))
        .header("x-tracer-trace-id", "fwd-http")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(upstream.requests()[0].path_and_query, "/v1/models?limit=2");

    let trace = proxy.wait_for_trace("fwd-http", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["kind"], "http");
    assert_eq!(span["http"]["method"], "GET");
    assert_eq!(span["http"]["path"], "/v1/models?limit=2");
    assert_eq!(span["output"], body, "the raw response is kept");
    assert!(span["llm"].is_null(), "an http span has no llm section");
}

#[tokio::test]
async fn hop_by_hop_and_tracer_headers_never_reach_the_upstream() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "fwd-hygiene")
        .header("x-tracer-session-id", "s1")
        .header("x-tracer-meta-team", "search")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("x-keep-me", "1")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    let seen = &upstream.requests()[0];
    assert!(
        seen.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-tracer-")),
        "no x-tracer-* header is forwarded: {:?}",
        seen.headers
    );
    assert!(
        !seen.headers.contains_key("x-drop-me"),
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(
        seen.headers["x-keep-me"], "1",
        "end-to-end headers are forwarded"
    );
    let host = seen.headers["host"].to_str().unwrap();
    assert!(
        upstream.url().ends_with(host),
        "Host names the upstream, not the proxy: {host}"
    );
}

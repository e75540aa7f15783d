//! Routing and transport: h2c clients, prefix routes with `strip_prefix`, keep-alive reuse, and
//! large streamed uploads and responses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use llm_tracer::config::RouteConfig;
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
async fn an_h2c_client_gets_http2_answers_and_its_calls_are_recorded() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    common::install_crypto();
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let rsp = h2
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "h2-chat")
        .json(&chat_body("gpt-4o-mini", "over h2", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.version(),
        reqwest::Version::HTTP_2,
        "the proxy speaks h2c to a prior-knowledge client"
    );
    assert_eq!(rsp.headers()["x-tracer-trace-id"], "h2-chat");
    let body = rsp.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &upstream.responses()[0][..],
        "an h2 client receives the upstream body unchanged"
    );

    let rsp = h2
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "h2-stream")
        .header("x-mock-gap-ms", "2")
        .json(&chat_body("gpt-4o-mini", "stream over h2", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.version(),
        reqwest::Version::HTTP_2,
        "a stream is served over h2 too"
    );
    let streamed = rsp.bytes().await.unwrap();
    assert_eq!(
        &streamed[..],
        &upstream.responses()[1][..],
        "an h2 stream passes through unchanged"
    );

    let trace = proxy.wait_for_trace("h2-chat", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "ok");
    assert_eq!(span["llm"]["stream"], false);
    assert_eq!(
        span["output"],
        serde_json::from_slice::<Value>(&body).unwrap(),
        "the h2 call's answer is recorded"
    );

    let trace = proxy.wait_for_trace("h2-stream", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "ok");
    assert_eq!(span["llm"]["stream"], true);
    assert_eq!(
        span["output"]["choices"][0]["message"]["content"], "Mock reply to: stream over h2",
        "the h2 stream is reassembled"
    );
}

/// A proxy whose `/` route goes to `openai` and whose `/anthropic` route (prefix stripped,
/// provider `anthropic`) goes to `anthropic`. Keep the temp dir alive as long as the proxy.
async fn with_anthropic_route(
    openai: &MockUpstream,
    anthropic: &MockUpstream,
) -> (TestProxy, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &openai.url());
    config.routes.push(RouteConfig {
        prefix: "/anthropic".into(),
        upstream: anthropic.url().parse().unwrap(),
        strip_prefix: true,
        provider: Some("anthropic".into()),
        ca_file: None,
        insecure_skip_verify: false,
    });
    // The route table relies on longest-prefix-first order, as config::load leaves it.
    config
        .routes
        .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    (TestProxy::start_with(config).await, tmp)
}

#[tokio::test]
async fn a_prefix_route_with_strip_prefix_reaches_its_own_upstream() {
    let openai = MockUpstream::start().await.unwrap();
    let anthropic = MockUpstream::start().await.unwrap();
    let (proxy, _tmp) = with_anthropic_route(&openai, &anthropic).await;

    let messages = json!({
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello claude"}]
    });
    let rsp = client()
        .post(proxy.url("/anthropic/v1/messages?x=1"))
        .header("x-tracer-trace-id", "route-anthropic")
        .header("x-api-key", "sk-ant-test")
        .json(&messages)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(
        body["type"], "message",
        "the second upstream answered (an Anthropic message)"
    );

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "route-openai")
        .json(&chat_body("gpt-4o-mini", "hello gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.bytes().await.unwrap();

    let rsp = client()
        .post(proxy.url("/anthropic/v1/chat/completions"))
        .header("x-tracer-trace-id", "route-anthropic-chat")
        .json(&chat_body("claude-3-5-haiku-latest", "hello compat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.bytes().await.unwrap();

    let seen = anthropic.requests();
    assert_eq!(
        seen.len(),
        2,
        "only the prefixed calls reach the second upstream"
    );
    assert_eq!(
        seen[1].path_and_query, "/v1/chat/completions",
        "a chat call under the prefix is stripped too"
    );
    assert_eq!(
        seen[0].path_and_query, "/v1/messages?x=1",
        "the prefix is stripped and the query kept"
    );
    assert_eq!(
        seen[0].body_json().unwrap(),
        messages,
        "the body reaches the second upstream untouched"
    );
    let seen = openai.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the unprefixed call reaches the default upstream"
    );
    assert_eq!(seen[0].path_and_query, "/v1/chat/completions");

    let trace = proxy.wait_for_trace("route-anthropic", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(
        span["http"]["path"], "/anthropic/v1/messages?x=1",
        "the span shows the path the app sent"
    );
    assert_eq!(
        span["http"]["upstream"],
        anthropic.url(),
        "the span names the upstream the route chose"
    );

    let trace = proxy.wait_for_trace("route-anthropic-chat", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["http"]["path"], "/anthropic/v1/chat/completions");
    assert_eq!(
        span["llm"]["provider"], "anthropic",
        "the route's provider names the span's provider"
    );

    let trace = proxy.wait_for_trace("route-openai", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["http"]["path"], "/v1/chat/completions");
    assert_eq!(
        span["http"]["upstream"],
        openai.url(),
        "the default route's upstream is named"
    );
    assert_eq!(
        span["llm"]["provider"], "openai",
        "a route without a provider is detected as openai"
    );
}

#[tokio::test]
async fn twenty_sequential_calls_on_one_client_all_succeed() {
    const CALLS: usize = 20;
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let http = client();

    for i in 0..CALLS {
        let rsp = http
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", format!("keepalive-{i}"))
            .json(&chat_body("gpt-4o-mini", &format!("call {i}"), false))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "call {i} on the reused client succeeds");
        let body: Value = rsp.json().await.unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("Mock reply to: call {i}"),
            "call {i} gets its own answer"
        );
    }
    assert_eq!(
        upstream.hits(),
        CALLS,
        "the upstream saw every call exactly once"
    );
    let want: BTreeSet<String> = (0..CALLS).map(|i| format!("keepalive-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = proxy.get_json("/api/traces?limit=1000").await;
        assert_eq!(status, 200, "the trace list answers");
        let got: BTreeSet<String> = page["traces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["trace_id"].as_str().unwrap().to_string())
            .collect();
        if got == want {
            break;
        }
        assert!(
            got.is_subset(&want),
            "only this test's calls are stored: {got:?}"
        );
        assert!(
            Instant::now() < deadline,
            "only {} of {CALLS} calls were recorded",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_two_mib_streamed_upload_and_its_streamed_answer_pass_through_and_are_captured() {
    const SIZE: usize = 2 * 1024 * 1024;
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    // Pad the user message so that the serialized request is exactly 2 MiB.
    let overhead = serde_json::to_vec(&chat_body("gpt-4o-mini", "", true))
        .unwrap()
        .len();
    let word = format!("{} ", "w".repeat(16 * 1024 - 1));
    let mut text: String = word.chars().cycle().take(SIZE - overhead - 1).collect();
    text.push('z');
    let request = chat_body("gpt-4o-mini", &text, true);
    let sent = Bytes::from(serde_json::to_vec(&request).unwrap());
    assert_eq!(sent.len(), SIZE, "the request body is 2 MiB");

    // Upload in 64 KiB pieces with no content-length (chunked).
    let pieces: Vec<Result<Bytes, std::io::Error>> = sent
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "big-upload")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let received = rsp.bytes().await.unwrap();

    let seen = &upstream.requests()[0];
    assert_eq!(
        seen.body.len(),
        SIZE,
        "the upstream receives the whole upload"
    );
    assert!(
        seen.body == sent,
        "the upstream receives exactly the bytes the app uploaded"
    );
    let answer = upstream.responses()[0].clone();
    assert!(
        answer.len() > SIZE,
        "the streamed answer is larger than the upload"
    );
    assert!(
        received == answer,
        "the client receives exactly the streamed answer ({} of {} bytes)",
        received.len(),
        answer.len()
    );
    let expected_reply = format!("Mock reply to: {text}");
    assert!(
        sse_text(&received) == expected_reply,
        "the streamed answer carries the whole reply"
    );

    let trace = proxy.wait_for_trace("big-upload", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "ok");
    assert_eq!(
        span["capture"]["truncated"], false,
        "bodies under the default 10 MiB cap are kept whole"
    );
    assert_eq!(span["capture"]["bytes_in"], SIZE as u64);
    assert_eq!(span["capture"]["bytes_out"], answer.len() as u64);
    assert!(
        span["input"] == request,
        "the span's input is the whole 2 MiB request"
    );
    assert!(
        span["output"]["choices"][0]["message"]["content"].as_str() == Some(&expected_reply),
        "the span's output is the whole reassembled reply"
    );
}

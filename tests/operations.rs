//! Every wire format through real sockets: the proxy on port 0 in front of the scripted mock
//! upstream, driven by reqwest. Each call must come out byte for byte and become a span with the
//! right kind, operation, model, reassembled output, tool calls, tokens and cost: chat (tool
//! calls streamed, n > 1, usage estimated when none is reported), the Responses API, legacy
//! completions, embeddings, Azure-style deployment paths, and Anthropic Messages behind an
//! `/anthropic` prefix route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{client, test_config, MockUpstream, TestProxy};
use llm_tracer::config::RouteConfig;
use serde_json::{json, Value};

/// POSTs `body` to the proxy with a trace ID and extra headers; returns the status and the exact
/// body bytes received.
async fn call(
    proxy: &TestProxy,
    path: &str,
    trace: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Bytes) {
    let mut req = client()
        .post(proxy.url(path))
        .header("x-tracer-trace-id", trace)
        .header("authorization", "Bearer sk-ops-test-key")
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = req.send().await.unwrap();
    let status = rsp.status().as_u16();
    (status, rsp.bytes().await.unwrap())
}

/// The one span of a trace.
async fn only_span(proxy: &TestProxy, trace: &str) -> Value {
    let trace = proxy.wait_for_trace(trace, 1).await;
    trace["spans"][0].clone()
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
    config
        .routes
        .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    (TestProxy::start_with(config).await, tmp)
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}}])
}

#[tokio::test]
async fn streamed_chat_tool_calls_and_n_choices_are_reassembled() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let body = json!({"model": "gpt-4o-mini", "stream": true, "tools": tools(),
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "call tool weather in Paris"}]});
    let (status, received) = call(&proxy, "/v1/chat/completions", "ops-tools", &[], &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        received,
        upstream.responses()[0],
        "the stream reaches the client byte for byte"
    );
    let span = only_span(&proxy, "ops-tools").await;
    let message = &span["output"]["choices"][0]["message"];
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "call_mock_0", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"input\":\"call tool weather in Paris\"}"}}]),
        "the streamed tool call is accumulated, its arguments concatenated"
    );
    assert_eq!(span["llm"]["finish_reason"], "tool_calls");
    assert_eq!(span["llm"]["usage_source"], "reported");
    assert!(
        span["llm"]["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "gpt-4o-mini is priced by the built-in list: {}",
        span["llm"]
    );

    let body = json!({"model": "gpt-4o", "stream": true, "n": 2,
                      "messages": [{"role": "user", "content": "two please"}]});
    call(&proxy, "/v1/chat/completions", "ops-n", &[], &body).await;
    let span = only_span(&proxy, "ops-n").await;
    let choices = span["output"]["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "n > 1 choices are kept apart");
    assert_eq!(
        choices[0]["message"]["content"],
        "Mock reply to: two please"
    );
    assert_eq!(
        choices[1]["message"]["content"],
        "Mock reply to: two please (choice 1)"
    );
    assert_eq!(
        span["llm"]["usage_source"], "estimated",
        "no include_usage: the tokens are estimated"
    );
    assert!(span["llm"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(span["llm"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn responses_api_calls_stream_and_not_become_responses_spans() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let body = json!({"model": "gpt-4.1", "instructions": "Be brief.", "input": "What is a span?"});
    let (status, _) = call(&proxy, "/v1/responses", "ops-resp", &[], &body).await;
    assert_eq!(status, 200);
    let span = only_span(&proxy, "ops-resp").await;
    assert_eq!(span["kind"], "llm");
    assert_eq!(span["name"], "responses gpt-4.1");
    assert_eq!(span["llm"]["operation"], "responses");
    assert_eq!(span["llm"]["request_model"], "gpt-4.1");
    assert_eq!(
        span["output"]["output"][0]["content"][0]["text"],
        "Mock reply to: What is a span?"
    );
    assert_eq!(
        (&span["llm"]["input_tokens"], &span["llm"]["output_tokens"]),
        (&json!(6), &json!(7)),
        "usage is read from input_tokens/output_tokens"
    );
    assert!(span["llm"]["cost_usd"].as_f64().is_some_and(|c| c > 0.0));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, received) = call(&proxy, "/v1/responses", "ops-resp-stream", &[], &streamed).await;
    assert_eq!(received, upstream.responses()[1], "byte for byte");
    let span = only_span(&proxy, "ops-resp-stream").await;
    assert_eq!(
        span["status"], "ok",
        "a stream that ends without [DONE] is complete"
    );
    assert_eq!(span["llm"]["stream"], true);
    assert_eq!(span["output"]["status"], "completed");
    assert_eq!(
        span["output"]["output"][0]["content"][0]["text"],
        "Mock reply to: What is a span?"
    );
    assert_eq!(span["llm"]["output_tokens"], 7);
    assert!(span["llm"]["ttft_ms"].as_f64().is_some());

    let call_body = json!({"model": "gpt-4.1", "stream": true,
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        "input": "call tool: find the docs"});
    call(&proxy, "/v1/responses", "ops-resp-tool", &[], &call_body).await;
    let span = only_span(&proxy, "ops-resp-tool").await;
    let item = &span["output"]["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], "lookup");
    assert_eq!(
        item["arguments"],
        "{\"input\":\"call tool: find the docs\"}"
    );

    call(
        &proxy,
        "/v1/responses",
        "ops-resp-fail",
        &[("x-mock-stream-error", "1")],
        &streamed,
    )
    .await;
    let span = only_span(&proxy, "ops-resp-fail").await;
    assert_eq!(
        span["status"], "error",
        "response.failed makes an error span"
    );
    assert_eq!(span["error"]["type"], "server_error");
    assert_eq!(span["error"]["message"], "Mock stream failure");

    call(
        &proxy,
        "/v1/responses",
        "ops-resp-nousage",
        &[("x-mock-no-usage", "1")],
        &streamed,
    )
    .await;
    let span = only_span(&proxy, "ops-resp-nousage").await;
    assert_eq!(span["llm"]["usage_source"], "estimated");
    assert!(span["llm"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn legacy_completions_stream_and_not() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "max_tokens": 16});
    call(&proxy, "/v1/completions", "ops-cmpl", &[], &body).await;
    let span = only_span(&proxy, "ops-cmpl").await;
    assert_eq!(span["llm"]["operation"], "completion");
    assert_eq!(
        span["output"]["choices"][0]["text"],
        "Mock reply to: Say this"
    );
    assert_eq!(span["llm"]["params"], json!({"max_tokens": 16}));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    call(&proxy, "/v1/completions", "ops-cmpl-stream", &[], &streamed).await;
    let span = only_span(&proxy, "ops-cmpl-stream").await;
    assert_eq!(span["output"]["object"], "text_completion");
    assert_eq!(
        span["output"]["choices"][0]["text"],
        "Mock reply to: Say this"
    );
    assert_eq!(span["llm"]["output_tokens"], 5);
    assert_eq!(span["llm"]["usage_source"], "reported");
}

#[tokio::test]
async fn embeddings_are_embedding_spans_without_vectors_unless_asked() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let body = json!({"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"],
                      "encoding_format": "base64"});
    let (status, received) = call(&proxy, "/v1/embeddings", "ops-emb", &[], &body).await;
    assert_eq!(status, 200);
    let sent: Value = serde_json::from_slice(&received).unwrap();
    let vector = sent["data"][0]["embedding"].as_str().unwrap().to_string();
    let span = only_span(&proxy, "ops-emb").await;
    assert_eq!(span["kind"], "embedding");
    assert_eq!(span["llm"]["operation"], "embeddings");
    assert_eq!(span["llm"]["request_model"], "text-embedding-3-small");
    assert_eq!(span["output"]["inputs"], 2);
    assert_eq!(span["output"]["dimensions"], 1536);
    assert_eq!(span["llm"]["input_tokens"], 3);
    assert!(span["llm"]["cost_usd"].as_f64().is_some_and(|c| c > 0.0));
    assert!(
        !span.to_string().contains(&vector[..40]),
        "the vectors are not stored by default"
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.capture_embeddings = true;
    let keeping = TestProxy::start_with(config).await;
    let body = json!({"model": "text-embedding-3-small", "input": "one", "dimensions": 4});
    call(&keeping, "/v1/embeddings", "ops-emb-keep", &[], &body).await;
    let span = only_span(&keeping, "ops-emb-keep").await;
    assert_eq!(
        span["output"]["data"][0]["embedding"]
            .as_array()
            .map(Vec::len),
        Some(4),
        "capture_embeddings keeps the vectors"
    );
}

#[tokio::test]
async fn azure_deployment_paths_name_the_model() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let path = "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21";
    let body = json!({"messages": [{"role": "user", "content": "hi azure"}]});
    call(
        &proxy,
        path,
        "ops-azure",
        &[("api-key", "azure-secret-key")],
        &body,
    )
    .await;
    let span = only_span(&proxy, "ops-azure").await;
    assert_eq!(span["kind"], "llm");
    assert_eq!(
        span["llm"]["request_model"], "prod-4o",
        "the deployment is the model"
    );
    assert_eq!(span["llm"]["provider"], "azure");
    assert_eq!(span["name"], "chat prod-4o");
    assert_eq!(
        span["output"]["choices"][0]["message"]["content"],
        "Mock reply to: hi azure"
    );
    assert!(
        !span.to_string().contains("azure-secret-key"),
        "the api-key header is never stored"
    );

    let path = "/openai/deployments/emb-small/embeddings?api-version=2024-10-21";
    call(&proxy, path, "ops-azure-emb", &[], &json!({"input": "x"})).await;
    let span = only_span(&proxy, "ops-azure-emb").await;
    assert_eq!(span["kind"], "embedding");
    assert_eq!(span["llm"]["request_model"], "emb-small");
}

#[tokio::test]
async fn an_anthropic_messages_call_is_an_llm_span_of_the_routes_provider() {
    let openai = MockUpstream::start().await.unwrap();
    let anthropic = MockUpstream::start().await.unwrap();
    let (proxy, _tmp) = with_anthropic_route(&openai, &anthropic).await;

    let rsp = client()
        .post(proxy.url("/anthropic/v1/messages"))
        .header("x-tracer-trace-id", "messages-op")
        .header("x-api-key", "sk-ant-never-stored")
        .json(&json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hello claude"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(body["type"], "message", "the Anthropic upstream answered");
    assert_eq!(
        anthropic.requests()[0].path_and_query,
        "/v1/messages",
        "the prefix is stripped"
    );

    let trace = proxy.wait_for_trace("messages-op", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(
        span["kind"], "llm",
        "a Messages API call is an llm span: {span}"
    );
    assert_eq!(span["llm"]["operation"], "messages");
    assert_eq!(
        span["llm"]["provider"], "anthropic",
        "the route's provider names the span's provider"
    );
    assert_eq!(span["llm"]["request_model"], "claude-3-5-haiku-latest");
    assert_eq!(
        span["llm"]["params"]["max_tokens"], 64,
        "params are kept as sent"
    );
    assert_eq!(
        span["output"]["content"][0]["text"],
        "Mock reply to: hello claude"
    );
    assert_eq!(span["llm"]["input_tokens"], 2);
    assert_eq!(span["llm"]["output_tokens"], 5);
    assert_eq!(span["llm"]["finish_reason"], "end_turn");
    assert!(
        span["llm"]["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "claude-3-5-haiku-latest is priced"
    );
    assert!(!trace.to_string().contains("sk-ant-never-stored"));
}

#[tokio::test]
async fn streamed_anthropic_messages_and_tool_use_are_reassembled() {
    let openai = MockUpstream::start().await.unwrap();
    let anthropic = MockUpstream::start().await.unwrap();
    let (proxy, _tmp) = with_anthropic_route(&openai, &anthropic).await;

    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                      "system": "Be brief.",
                      "messages": [{"role": "user", "content": "stream to me"}]});
    let (_, received) = call(&proxy, "/anthropic/v1/messages", "msg-stream", &[], &body).await;
    assert_eq!(received, anthropic.responses()[0], "byte for byte");
    let span = only_span(&proxy, "msg-stream").await;
    assert_eq!(span["status"], "ok");
    assert_eq!(span["llm"]["stream"], true);
    assert_eq!(span["output"]["type"], "message");
    assert_eq!(
        span["output"]["content"][0]["text"],
        "Mock reply to: stream to me"
    );
    assert_eq!(
        span["llm"]["output_tokens"], 6,
        "message_delta's cumulative count replaces message_start's"
    );
    assert_eq!(span["llm"]["input_tokens"], 5);
    assert!(span["llm"]["ttft_ms"].as_f64().is_some());

    let tool_body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "call tool: weather in Oslo"}]});
    call(
        &proxy,
        "/anthropic/v1/messages",
        "msg-tool",
        &[],
        &tool_body,
    )
    .await;
    let span = only_span(&proxy, "msg-tool").await;
    let block = &span["output"]["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert_eq!(
        block["input"],
        json!({"input": "call tool: weather in Oslo"}),
        "input_json_delta pieces are parsed into the tool input"
    );
    assert_eq!(span["llm"]["finish_reason"], "tool_use");

    call(
        &proxy,
        "/anthropic/v1/messages",
        "msg-error",
        &[("x-mock-stream-error", "1")],
        &body,
    )
    .await;
    let span = only_span(&proxy, "msg-error").await;
    assert_eq!(
        span["status"], "error",
        "a mid-stream error event is an error span"
    );
    assert_eq!(span["error"]["type"], "overloaded_error");
    assert_eq!(
        span["output"]["content"][0]["text"], "Mock reply to: stream to me",
        "the text before the error is kept"
    );
}

/// An upstream that answers every request with `body` as an event stream, then closes.
async fn raw_upstream(body: &'static [u8]) -> String {
    common::raw_upstream("text/event-stream", body).await
}

#[tokio::test]
async fn an_unparseable_stream_is_forwarded_byte_for_byte_and_the_error_is_recorded() {
    const GARBAGE: &[u8] = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\r\n\r\nevent: content_block_delta\ndata: {this is not json\n\n\xff\xfe\x00 binary \x80 junk\n\n: comment\nevent: brand_new\ndata: {\"type\":\"brand_new\"}\n\n";
    let upstream = raw_upstream(GARBAGE).await;
    let proxy = TestProxy::start(&upstream).await;
    let body = json!({"model": "claude-x", "stream": true, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (status, received) = call(&proxy, "/v1/messages", "ops-garbage", &[], &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        &received[..],
        GARBAGE,
        "whatever the upstream sends reaches the client unchanged"
    );
    let span = only_span(&proxy, "ops-garbage").await;
    let notes = span["metadata"]["tracer.notes"].as_str().unwrap();
    assert!(
        notes.contains("not JSON") && notes.contains("key must be a string"),
        "the span records the parse error: {notes}"
    );
    assert!(
        notes.contains("brand_new"),
        "an unknown event type is kept in the notes: {notes}"
    );
    assert_eq!(span["llm"]["input_tokens"], 3, "what did parse is used");
}

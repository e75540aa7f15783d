//! Demo: the server plus the built-in mock upstream and a burst of sample traffic, so a new user
//! sees a full UI with no API key and no network. Used by `llm-tracer demo`.
//!
//! The `/` route and an `/anthropic` route (prefix stripped, provider `anthropic`) both point at
//! the mock, which speaks OpenAI's APIs and Anthropic's Messages API.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};

use crate::{
    app::{self, Running},
    config::{Config, RouteConfig},
    error::StartError,
    mock::MockUpstream,
    propagate::{new_span_id, new_trace_id},
    span::Timestamp,
};

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// The demo's Anthropic route: `/anthropic/v1/messages` → the mock's `/v1/messages`.
pub const ANTHROPIC_PREFIX: &str = "/anthropic";

/// Starts the mock upstream, points the `/` route at it, starts the server and sends sample
/// traffic in the background. The mock lives as long as the returned server.
pub async fn start(mut config: Config) -> Result<Running, StartError> {
    let mock = MockUpstream::start()
        .await
        .map_err(|e| StartError::Internal(format!("demo mock upstream: {e}")))?;
    let upstream: http::Uri = mock
        .url()
        .parse()
        .map_err(|e| StartError::Internal(format!("demo mock upstream url: {e}")))?;
    // Every call stays on this machine: `/` and `/anthropic` go to the mock.
    for route in &mut config.routes {
        if route.prefix == "/" || route.prefix == ANTHROPIC_PREFIX {
            route.upstream = upstream.clone();
        }
    }
    if !config.routes.iter().any(|r| r.prefix == ANTHROPIC_PREFIX) {
        config.routes.push(RouteConfig {
            prefix: ANTHROPIC_PREFIX.to_string(),
            upstream: upstream.clone(),
            strip_prefix: true,
            provider: Some("anthropic".to_string()),
            ca_file: None,
            insecure_skip_verify: false,
        });
        // The route table relies on longest-prefix-first order.
        config
            .routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    }
    let running = app::start(config).await?;
    let proxy = format!("http://{}", running.proxy_addr);
    let admin = format!("http://{}", running.admin_addr);
    tokio::spawn(async move {
        let _mock = mock; // keep the upstream alive for the whole demo
        match send_sample_traffic(&proxy, &admin).await {
            Ok(n) => {
                #[allow(clippy::print_stdout)]
                {
                    println!("demo: sent {n} sample calls; open {admin}/ to see the traces");
                }
            }
            Err(e) => tracing::error!(error = %e, "demo traffic failed"),
        }
        // Keep the mock serving for calls the user makes by hand.
        std::future::pending::<()>().await;
    });
    Ok(running)
}

/// Sends the sample traffic; returns how many proxied calls were made.
pub async fn send_sample_traffic(proxy: &str, admin: &str) -> Result<usize, String> {
    let client: DemoClient = Client::builder(TokioExecutor::new()).build_http();
    let mut calls = 0;

    // 1. An agent run: chain → (LLM plan, tool search, LLM streamed answer).
    // The trace id's random tail: span ids count up, so their first digits repeat.
    let trace_id = format!("demo-{}", &new_trace_id()[24..]);
    let chain_id = new_span_id();
    let chain_start = Timestamp::now();
    let common = |name: &str| {
        vec![
            ("x-tracer-trace-id".to_string(), trace_id.clone()),
            ("x-tracer-parent-span-id".to_string(), chain_id.clone()),
            ("x-tracer-span-name".to_string(), name.to_string()),
            (
                "x-tracer-session-id".to_string(),
                "demo-session-1".to_string(),
            ),
            ("x-tracer-user-id".to_string(), "ada".to_string()),
            ("x-tracer-tags".to_string(), "demo,agent".to_string()),
        ]
    };
    let tools = json!([{ "type": "function", "function": {
        "name": "search_docs", "description": "Search the product docs",
        "parameters": { "type": "object", "properties": { "query": { "type": "string" } }, "required": ["query"] } } }]);
    chat(&client, proxy, common("plan"), json!({
        "model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 256, "tools": tools,
        "messages": [
            { "role": "system", "content": "You are a helpful support agent. Use tools when needed." },
            { "role": "user", "content": "call tool: how do I rotate my API key?" }
        ]
    })).await?;
    calls += 1;

    let tool_start = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let tool_id = new_span_id();
    let tool_span = json!({
        "trace_id": trace_id, "span_id": tool_id, "parent_span_id": chain_id,
        "name": "search_docs", "kind": "tool",
        "start_time": tool_start, "end_time": Timestamp::now(),
        "input": { "query": "rotate API key" },
        "output": [{ "title": "Rotating keys", "url": "https://docs.example/keys#rotate" }],
        "session_id": "demo-session-1", "user_id": "ada",
    });

    chat(&client, proxy, common("answer"), json!({
        "model": "gpt-4o", "temperature": 0.7, "stream": true, "stream_options": { "include_usage": true },
        "messages": [
            { "role": "system", "content": "Answer using the search results." },
            { "role": "user", "content": "How do I rotate my API key? Results: Rotating keys (docs)." }
        ]
    })).await?;
    calls += 1;

    let chain_span = json!({
        "trace_id": trace_id, "span_id": chain_id, "name": "support-agent", "kind": "chain",
        "start_time": chain_start, "end_time": Timestamp::now(),
        "input": "How do I rotate my API key?",
        "output": "Go to Settings → API keys, create a new key, switch your app over, then revoke the old one.",
        "session_id": "demo-session-1", "user_id": "ada", "tags": ["demo", "agent"],
        "metadata": { "app": "support-bot", "version": "1.4.2" },
    });
    post_json(
        &client,
        &format!("{admin}/api/spans"),
        &json!([chain_span, tool_span]),
    )
    .await?;

    // 2. A failing call (the mock answers 500 for model "mock-error").
    chat(&client, proxy, vec![
        ("x-tracer-span-name".to_string(), "classify".to_string()),
        ("x-tracer-session-id".to_string(), "demo-session-1".to_string()),
        ("x-tracer-tags".to_string(), "demo".to_string()),
    ], json!({ "model": "mock-error", "messages": [{ "role": "user", "content": "classify this ticket" }] })).await?;
    calls += 1;

    // 3. A few plain calls from other users, so the table and filters have something to show.
    for (i, user) in ["grace", "alan", "ada"].iter().enumerate() {
        chat(&client, proxy, vec![
            ("x-tracer-user-id".to_string(), user.to_string()),
            ("x-tracer-session-id".to_string(), format!("demo-session-{}", i + 2)),
        ], json!({
            "model": if i % 2 == 0 { "gpt-4o-mini" } else { "gpt-4o" },
            "messages": [{ "role": "user", "content": format!("Write a haiku about tracing, take {}", i + 1) }]
        })).await?;
        calls += 1;
    }

    // 4. The other wire formats: Anthropic Messages (streamed, through `/anthropic`), the
    //    Responses API, and embeddings.
    let headers = |user: &str| {
        vec![
            ("x-tracer-user-id".to_string(), user.to_string()),
            ("x-tracer-tags".to_string(), "demo,formats".to_string()),
        ]
    };
    call(&client, &format!("{proxy}{ANTHROPIC_PREFIX}/v1/messages"), headers("grace"), json!({
        "model": "claude-sonnet-4-5", "max_tokens": 256, "stream": true,
        "system": "You are a concise assistant.",
        "messages": [{ "role": "user", "content": "Explain distributed tracing in one sentence." }]
    })).await?;
    calls += 1;
    call(
        &client,
        &format!("{proxy}/v1/responses"),
        headers("alan"),
        json!({
            "model": "gpt-4.1-mini", "instructions": "Answer briefly.",
            "input": "What is a span in a trace?"
        }),
    )
    .await?;
    calls += 1;
    call(
        &client,
        &format!("{proxy}/v1/embeddings"),
        headers("ada"),
        json!({
            "model": "text-embedding-3-small",
            "input": ["rotate an API key", "revoke an API key"]
        }),
    )
    .await?;
    calls += 1;
    Ok(calls)
}

async fn chat(
    client: &DemoClient,
    proxy: &str,
    headers: Vec<(String, String)>,
    body: Value,
) -> Result<(), String> {
    call(
        client,
        &format!("{proxy}/v1/chat/completions"),
        headers,
        body,
    )
    .await
}

/// POSTs `body` to `url` with a fake key and reads the whole answer.
async fn call(
    client: &DemoClient,
    url: &str,
    headers: Vec<(String, String)>,
    body: Value,
) -> Result<(), String> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-demo-not-a-real-key");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let rsp = client
        .request(req)
        .await
        .map_err(|e| format!("demo call failed: {e}"))?;
    // Read the whole body (streams included) so the call completes normally.
    rsp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn post_json(client: &DemoClient, url: &str, body: &Value) -> Result<(), String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let rsp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status();
    let text = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "POST {url}: {status}: {}",
            String::from_utf8_lossy(&text)
        ))
    }
}

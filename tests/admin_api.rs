//! The admin API: filters, pagination, ingest, delete, stats, health, metrics, 4xx, restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use serde_json::{json, Value};

/// Sends one chat call in its own trace with the given labels.
async fn call(
    proxy: &TestProxy,
    trace: &str,
    model: &str,
    user: &str,
    session: &str,
    tags: &str,
    status: Option<&str>,
) {
    let mut req = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", trace)
        .header("x-tracer-user-id", user)
        .header("x-tracer-session-id", session)
        .header("x-tracer-tags", tags)
        .json(&chat_body(model, &format!("question for {trace}"), false));
    if let Some(s) = status {
        req = req.header("x-mock-status", s);
    }
    req.send().await.unwrap().bytes().await.unwrap();
}

fn ids(page: &Value) -> Vec<String> {
    page["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn filters_pagination_and_bad_params() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    call(&proxy, "f-1", "gpt-4o", "ada", "s-a", "prod,search", None).await;
    call(&proxy, "f-2", "gpt-4o-mini", "ada", "s-a", "prod", None).await;
    call(
        &proxy,
        "f-3",
        "gpt-4o-mini",
        "alan",
        "s-b",
        "dev",
        Some("500"),
    )
    .await;
    call(&proxy, "f-4", "gpt-4o", "grace", "s-c", "dev,search", None).await;
    for t in ["f-1", "f-2", "f-3", "f-4"] {
        proxy.wait_for_trace(t, 1).await;
    }

    let (status, page) = proxy.get_json("/api/traces").await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&page),
        vec!["f-4", "f-3", "f-2", "f-1"],
        "traces are listed newest first"
    );
    let t = &page["traces"][0];
    for field in [
        "trace_id",
        "name",
        "start_time",
        "duration_ms",
        "status",
        "span_count",
        "llm_calls",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "models",
        "session_id",
        "user_id",
        "input_preview",
        "output_preview",
    ] {
        assert!(t.get(field).is_some(), "the summary has {field}: {t}");
    }
    assert!(t["input_preview"]
        .as_str()
        .unwrap()
        .contains("question for f-4"));

    let cases: &[(&str, &[&str])] = &[
        ("model=gpt-4o", &["f-4", "f-1"]),
        ("user_id=ada", &["f-2", "f-1"]),
        ("session_id=s-b", &["f-3"]),
        ("tag=search", &["f-4", "f-1"]),
        ("status=error", &["f-3"]),
        ("status=ok&model=gpt-4o-mini", &["f-2"]),
        ("q=QUESTION%20FOR%20F-2", &["f-2"]),
        ("user_id=nobody", &[]),
    ];
    for (query, expected) in cases {
        let (status, page) = proxy.get_json(&format!("/api/traces?{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(ids(&page), *expected, "filter {query}");
    }

    // Pagination: limit 1 walks all four exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/traces?limit=1&cursor={c}"),
            None => "/api/traces?limit=1".to_string(),
        };
        let (status, page) = proxy.get_json(&path).await;
        assert_eq!(status, 200);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["f-4", "f-3", "f-2", "f-1"],
        "cursor pagination returns every trace once"
    );

    // Time range: everything is after the epoch and before now + 1 day.
    let (_, page) = proxy
        .get_json("/api/traces?since=0&until=2100-01-01T00:00:00Z")
        .await;
    assert_eq!(ids(&page).len(), 4);
    let (_, page) = proxy
        .get_json("/api/traces?until=2000-01-01T00:00:00Z")
        .await;
    assert!(ids(&page).is_empty(), "until excludes later traces");

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=ten", "limit"),
        ("status=maybe", "status"),
        ("since=yesterday", "since"),
        ("until=99999999999999999999", "until"),
        ("cursor=not-a-cursor", "cursor"),
    ] {
        let (status, body) = proxy.get_json(&format!("/api/traces?{query}")).await;
        assert_eq!(status, 400, "{query} is rejected");
        assert_eq!(body["error"]["code"], "bad_param");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(param),
            "the error names {param}: {body}"
        );
    }
}

#[tokio::test]
async fn ingest_get_delete_stats_health_and_metrics() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    // An app-side chain span with the proxy's LLM call nested under it.
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "ing-1")
        .header("x-tracer-parent-span-id", "chain0000000001")
        .json(&chat_body("gpt-4o-mini", "inside a chain", false))
        .send()
        .await
        .unwrap();
    let llm_span = rsp.headers()["x-tracer-span-id"]
        .to_str()
        .unwrap()
        .to_string();
    rsp.bytes().await.unwrap();
    proxy.wait_for_trace("ing-1", 1).await;

    let chain = json!([{
        "trace_id": "ing-1", "span_id": "chain0000000001", "name": "agent run", "kind": "chain",
        "start_time": "2020-01-01T00:00:00Z", "end_time": "2099-01-01T00:00:00Z",
        "input": "what is up", "output": "all good", "tags": ["app"]
    }]);
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&chain)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "a valid span is ingested");
    let trace = proxy.wait_for_trace("ing-1", 2).await;
    assert_eq!(
        trace["spans"][0]["kind"], "chain",
        "the chain span starts first"
    );
    assert_eq!(
        trace["spans"][1]["parent_span_id"], "chain0000000001",
        "the LLM span nests under the chain"
    );
    assert_eq!(
        trace["trace"]["name"], "agent run",
        "the app's root span names the trace"
    );
    assert_eq!(trace["trace"]["span_count"], 2);

    let (status, span) = proxy.get_json(&format!("/api/spans/{llm_span}")).await;
    assert_eq!(status, 200);
    assert_eq!(span["trace_id"], "ing-1");

    // Bad ingest: each bad field named.
    let bad = json!([{ "trace_id": "ing-2", "span_id": "x", "kind": "wizard", "start_time": "nope", "end_time": "2026-01-01T00:00:00Z" }]);
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400);
    let body: Value = rsp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    for field in ["[0].name", "[0].kind", "[0].start_time"] {
        assert!(msg.contains(field), "the 400 names {field}: {msg}");
    }
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400, "malformed JSON is a 400");
    // A "simple" cross-site form post (no preflight) cannot inject spans.
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .header("content-type", "text/plain")
        .body(chain.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 415, "ingest requires a JSON content type");
    // A DNS-rebinding page reaches 127.0.0.1 under its own name: refused.
    let rsp = client()
        .get(proxy.api("/api/traces"))
        .header("host", "evil.example:8081")
        .send()
        .await
        .unwrap();
    assert_eq!(
        rsp.status(),
        403,
        "the admin listener answers only to loopback host names"
    );

    // Stats.
    let (status, stats) = proxy.get_json("/api/stats?group_by=model").await;
    assert_eq!(status, 200);
    assert_eq!(stats["calls"], 1, "one proxied call: {stats}");
    assert_eq!(stats["errors"], 0);
    assert!(stats["latency_ms"]["p50"].as_f64().is_some());
    assert_eq!(stats["groups"][0]["model"], "gpt-4o-mini");
    let (status, _) = proxy.get_json("/api/stats?group_by=colour").await;
    assert_eq!(status, 400);

    // Health and metrics.
    let (status, health) = proxy.get_json("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let metrics = client()
        .get(proxy.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "llm_tracer_requests_total 1",
        "llm_tracer_spans_captured_total 1",
        "llm_tracer_captures_dropped_total{reason=\"queue_full\"} 0",
        "llm_tracer_request_duration_seconds_count 1",
        "llm_tracer_store_size_bytes",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}:\n{metrics}");
    }

    // Unknown things are JSON 404s; wrong methods 405.
    let (status, body) = proxy.get_json("/api/traces/does-not-exist").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = proxy.get_json("/api/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "no_such_route");
    let rsp = client().put(proxy.api("/api/traces")).send().await.unwrap();
    assert_eq!(rsp.status(), 405);

    // Delete.
    let rsp = client()
        .delete(proxy.api("/api/traces/ing-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 204);
    let (status, _) = proxy.get_json("/api/traces/ing-1").await;
    assert_eq!(status, 404, "a deleted trace is gone");
    let (status, _) = proxy.get_json(&format!("/api/spans/{llm_span}")).await;
    assert_eq!(status, 404, "its spans are gone too");

    // The UI is served at /.
    let rsp = client().get(proxy.api("/")).send().await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(rsp.text().await.unwrap().contains("llm-tracer"));

    // The proxy listener never exposes admin routes: /api/traces there goes upstream.
    let rsp = client().get(proxy.url("/api/traces")).send().await.unwrap();
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(
        body["object"], "mock",
        "the proxy forwarded /api/traces to the upstream"
    );
}

#[tokio::test]
async fn traces_survive_a_restart_on_the_same_data_dir() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut first = TestProxy::start_with(test_config(&data, &upstream.url())).await;
    for i in 0..5 {
        call(&first, &format!("r-{i}"), "gpt-4o", "u", "s", "t", None).await;
    }
    for i in 0..5 {
        first.wait_for_trace(&format!("r-{i}"), 1).await;
    }
    first.stop().await;

    let second = TestProxy::start_with(test_config(&data, &upstream.url())).await;
    let (status, page) = second.get_json("/api/traces").await;
    assert_eq!(status, 200);
    let got: HashSet<String> = ids(&page).into_iter().collect();
    let want: HashSet<String> = (0..5).map(|i| format!("r-{i}")).collect();
    assert_eq!(got, want, "every trace is still there after a restart");
    let trace = second.wait_for_trace("r-3", 1).await;
    assert_eq!(trace["spans"][0]["llm"]["request_model"], "gpt-4o");
}

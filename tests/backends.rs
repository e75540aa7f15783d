//! The server on both store backends, end to end: the same real traffic (proxied calls through
//! the mock upstream, app spans through `POST /api/spans`) into a sled instance and a ClickHouse
//! instance gives equal admin API answers; two instances sharing one ClickHouse show one whole
//! trace; ClickHouse down at start and stopped mid-traffic never fails a call, degrades
//! `/healthz` and recovers by itself, losing nothing within the writer's bound.
//!
//! Each test starts its own private clickhouse-server (`common/clickhouse.rs`): nextest runs
//! every test in its own process, so a server cannot be shared between tests of one file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/clickhouse.rs"]
mod clickhouse_server;
mod common;
#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::time::{Duration, Instant};

use clickhouse_server::ClickHouseServer;
use common::{
    chat_body, clickhouse_config, client, metric_value, test_config, MockUpstream, TestProxy,
};
use llm_tracer::otlp::{self, OtlpConfig, Protocol};
use otlp_receiver::OtlpReceiver;
use serde_json::{json, Value};

/// One app request, sent to both instances in turn.
struct Call {
    path: &'static str,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

fn chat(trace: &str, model: &str, user: &str, session: &str, tags: &str) -> Call {
    Call {
        path: "/v1/chat/completions",
        body: chat_body(model, &format!("question for {trace}"), false),
        headers: vec![
            ("x-tracer-trace-id", trace.to_string()),
            ("x-tracer-user-id", user.to_string()),
            ("x-tracer-session-id", session.to_string()),
            ("x-tracer-tags", tags.to_string()),
        ],
    }
}

/// Sends `call` through `proxy`; returns the span id the proxy minted. Every call must succeed
/// as the upstream answered it (the proxy never breaks the app).
async fn send(proxy: &TestProxy, call: &Call) -> String {
    let mut req = client().post(proxy.url(call.path)).json(&call.body);
    for (k, v) in &call.headers {
        req = req.header(*k, v);
    }
    let rsp = req.send().await.unwrap();
    let span = rsp.headers()["x-tracer-span-id"]
        .to_str()
        .unwrap()
        .to_string();
    let wanted = call
        .headers
        .iter()
        .find(|(k, _)| *k == "x-mock-status")
        .map_or(200, |(_, v)| v.parse::<u16>().unwrap());
    assert_eq!(
        rsp.status().as_u16(),
        wanted,
        "the app gets the upstream's answer"
    );
    rsp.bytes().await.unwrap();
    span
}

async fn ingest(proxy: &TestProxy, spans: &Value) {
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(spans)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "ingest is accepted: {spans}");
}

async fn get(proxy: &TestProxy, path: &str) -> (u16, Value) {
    proxy.get_json(path).await
}

/// The traffic of the equality test: every filter dimension, streaming, an upstream error,
/// embeddings, and app chains nesting proxied calls.
fn traffic() -> Vec<Call> {
    let mut calls = vec![
        chat("f-1", "gpt-4o", "ada", "s-a", "prod,search"),
        chat("f-2", "gpt-4o-mini", "ada", "s-a", "prod"),
        chat("f-3", "gpt-4o-mini", "alan", "s-b", "dev"),
        chat("f-4", "gpt-4o", "grace", "s-c", "dev,search"),
    ];
    calls[2].headers.push(("x-mock-status", "500".into()));
    let mut stream = chat("f-5", "gpt-4o", "ada", "s-a", "stream");
    stream.body = chat_body("gpt-4o", "a streamed question about tides", true);
    calls.push(stream);
    calls.push(Call {
        path: "/v1/embeddings",
        body: json!({"model": "text-embedding-3-small", "input": ["one", "two"]}),
        headers: vec![("x-tracer-trace-id", "emb-1".into())],
    });
    let mut nested = chat("chain-1", "gpt-4o-mini", "ada", "s-a", "app");
    nested
        .headers
        .push(("x-tracer-parent-span-id", "chain0000000001".into()));
    calls.push(nested);
    calls
}

fn app_spans() -> Value {
    json!([
        {"trace_id": "chain-1", "span_id": "chain0000000001", "name": "agent run", "kind": "chain",
         "start_time": "2020-01-01T00:00:00Z", "end_time": "2099-01-01T00:00:00Z",
         "input": "what is up", "output": "all good", "tags": ["app"], "session_id": "s-a"},
        {"trace_id": "app-only", "span_id": "app0000000000001", "name": "planner", "kind": "agent",
         "start_time": "2021-06-01T10:00:00Z", "end_time": "2021-06-01T10:00:05Z",
         "user_id": "zoe", "session_id": "s-z", "input": {"messages": [{"role": "user", "content": "plan a trip"}]}},
        {"trace_id": "app-only", "span_id": "app0000000000002", "parent_span_id": "app0000000000001",
         "name": "chat claude", "kind": "llm", "start_time": "2021-06-01T10:00:01Z",
         "end_time": "2021-06-01T10:00:03Z",
         "llm": {"request_model": "claude-3-5-haiku", "input_tokens": 40, "output_tokens": 9,
                 "cost_usd": 0.00002, "ttft_ms": 120.0},
         "output": {"choices": [{"message": {"content": "Lisbon in May"}}]}},
        {"trace_id": "app-only", "span_id": "app0000000000003", "parent_span_id": "app0000000000001",
         "name": "tool book", "kind": "tool", "start_time": "2021-06-01T10:00:03Z",
         "end_time": "2021-06-01T10:00:04Z", "status": "error",
         "error": {"type": "http", "message": "booking API said no"}}
    ])
}

/// Values that legitimately differ between two instances fed the same traffic a few
/// milliseconds apart: wall-clock times and everything derived from them (durations, TTFT,
/// latency quantiles, bucket bounds), and cursors (they encode a start time). Replaced by a
/// marker saying whether a value was there.
const VARYING: &[&str] = &[
    "start_time",
    "end_time",
    "duration_ms",
    "ttft_ms",
    "latency_ms",
    "next_cursor",
    "created",
    "start",
    "end",
];

fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if VARYING.contains(&k.as_str()) {
                    *val = Value::String(if val.is_null() { "<none>" } else { "<varies>" }.into());
                } else {
                    normalise(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// The ClickHouse instance's answer, with its minted span ids and its mock's URL replaced by the
/// sled instance's (the only other legitimate differences), then normalised.
fn comparable(v: &Value, renames: &[(String, String)]) -> Value {
    let mut text = v.to_string();
    for (from, to) in renames {
        text = text.replace(from.as_str(), to.as_str());
    }
    let mut v: Value = serde_json::from_str(&text).unwrap();
    normalise(&mut v);
    v
}

/// Asks both instances and expects equal answers; returns the (sled) answer.
async fn same(
    sled: &TestProxy,
    ch: &TestProxy,
    sled_path: &str,
    ch_path: &str,
    renames: &[(String, String)],
) -> (u16, Value) {
    let (s_status, s_body) = get(sled, sled_path).await;
    let (c_status, c_body) = get(ch, ch_path).await;
    assert_eq!(
        (s_status, comparable(&s_body, &[])),
        (c_status, comparable(&c_body, renames)),
        "GET {sled_path}: the ClickHouse backend answers as the sled backend does"
    );
    (s_status, s_body)
}

/// Walks a listing with `limit=1` through its cursors; returns each page, normalised.
async fn walk(proxy: &TestProxy, path: &str, key: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit=1&cursor={c}"),
            None => format!("{path}{sep}limit=1"),
        };
        let (status, page) = get(proxy, &url).await;
        assert_eq!(status, 200, "{url}");
        assert!(page[key].is_array(), "{url} lists {key}: {page}");
        cursor = page["next_cursor"].as_str().map(str::to_string);
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
    }
    panic!("{path}: more than 50 pages of one");
}

#[tokio::test]
async fn the_admin_api_answers_the_same_on_sled_and_clickhouse() {
    let server = ClickHouseServer::start().await;
    // One mock each: its answers depend on how many calls it has seen.
    let sled_mock = MockUpstream::start().await.unwrap();
    let ch_mock = MockUpstream::start().await.unwrap();
    let sled = TestProxy::start(&sled_mock.url()).await;
    let tmp = tempfile::tempdir().unwrap();
    let ch = TestProxy::start_with(clickhouse_config(
        tmp.path(),
        &ch_mock.url(),
        &server.url(),
        "api_equal",
        100_000,
    ))
    .await;

    let mut renames = vec![(ch_mock.url(), sled_mock.url())];
    ingest(&sled, &app_spans()).await;
    ingest(&ch, &app_spans()).await;
    for call in traffic() {
        let s = send(&sled, &call).await;
        let c = send(&ch, &call).await;
        renames.push((c, s));
    }
    for (trace, spans) in [
        ("f-1", 1),
        ("f-2", 1),
        ("f-3", 1),
        ("f-4", 1),
        ("f-5", 1),
        ("emb-1", 1),
        ("chain-1", 2),
        ("app-only", 3),
    ] {
        sled.wait_for_trace(trace, spans).await;
        ch.wait_for_trace(trace, spans).await;
    }

    let (_, all) = same(&sled, &ch, "/api/traces", "/api/traces", &renames).await;
    assert_eq!(
        all["traces"].as_array().unwrap().len(),
        8,
        "every trace is listed: {all}"
    );
    for query in [
        "model=gpt-4o",
        "model=claude-3-5-haiku",
        "user_id=ada",
        "user_id=nobody",
        "session_id=s-a",
        "tag=search",
        "tag=app",
        "status=error",
        "status=ok&model=gpt-4o-mini",
        "q=question%20for%20f-2",
        "q=tides",
        "q=booking%20api",
        "q=nothing-matches-this",
        "since=0&until=2100-01-01T00:00:00Z",
        "until=2022-01-01T00:00:00Z",
        "since=2021-01-01T00:00:00Z&until=2021-12-31T00:00:00Z",
        "limit=3",
        "model=gpt-4o&user_id=ada&tag=search&status=ok",
        // Hostile values: quotes, backslashes, FORMAT, comments change nothing but the result.
        "model=gpt-4o%27%20OR%201%3D1%20--",
        "user_id=ada%5C%27",
        "tag=search%27)%20OR%20(1%3D1",
        "session_id=s-a%22%20FORMAT%20TSV%20%2F*",
        // (q= words only: sled also indexes span bodies, where "1" or "or" may occur.)
        "q=zebra%27%20OR%20%271%27%3D%271",
        "q=tides%27%20--%20%5C",
        "q=%27%5C%22%3B",
    ] {
        let path = format!("/api/traces?{query}");
        same(&sled, &ch, &path, &path, &renames).await;
    }
    // The hostile values above matched as plain text on both backends.
    for (query, want) in [
        ("model=gpt-4o%27%20OR%201%3D1%20--", vec![]),
        ("tag=search%27)%20OR%20(1%3D1", vec![]),
        ("q=zebra%27%20OR%20%271%27%3D%271", vec![]),
        ("q=tides%27%20--%20%5C", vec!["f-5"]),
    ] {
        for proxy in [&sled, &ch] {
            let (_, page) = get(proxy, &format!("/api/traces?{query}")).await;
            let ids: Vec<&str> = page["traces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["trace_id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, want, "{query} is text, not SQL");
        }
    }
    // Cursor pagination: the same pages in the same order.
    for path in ["/api/traces", "/api/traces?user_id=ada", "/api/sessions"] {
        let key = if path.starts_with("/api/sessions") {
            "sessions"
        } else {
            "traces"
        };
        let s_pages = walk(&sled, path, key).await;
        let c_pages = walk(&ch, path, key).await;
        let c_pages: Vec<Value> = c_pages.iter().map(|p| comparable(p, &renames)).collect();
        let s_pages: Vec<Value> = s_pages.iter().map(|p| comparable(p, &[])).collect();
        assert_eq!(s_pages, c_pages, "{path}: cursor pages are equal");
        assert!(s_pages.len() > 1, "{path} needed more than one page");
    }
    // Every trace and every span.
    for t in all["traces"].as_array().unwrap() {
        let id = t["trace_id"].as_str().unwrap();
        let path = format!("/api/traces/{id}");
        let (status, trace) = same(&sled, &ch, &path, &path, &renames).await;
        assert_eq!(status, 200);
        for span in trace["spans"].as_array().unwrap() {
            let s_id = span["span_id"].as_str().unwrap();
            let c_id = renames
                .iter()
                .find(|(_, s)| s == s_id)
                .map_or(s_id, |(c, _)| c.as_str());
            same(
                &sled,
                &ch,
                &format!("/api/spans/{s_id}"),
                &format!("/api/spans/{c_id}"),
                &renames,
            )
            .await;
        }
    }
    // Sessions and stats.
    for path in [
        "/api/sessions",
        "/api/sessions?q=trip",
        "/api/sessions?since=2021-01-01T00:00:00Z&until=2021-12-31T00:00:00Z",
        "/api/sessions/s-a",
        "/api/sessions/s-a?limit=2",
        "/api/sessions/s-z",
        "/api/stats",
        "/api/stats?group_by=model",
        "/api/stats?since=2021-01-01T00:00:00Z&until=2021-12-31T00:00:00Z",
        "/api/stats?since=2021-06-01T00:00:00Z&until=2021-06-02T00:00:00Z&bucket=6h",
    ] {
        let (status, _) = same(&sled, &ch, path, path, &renames).await;
        assert_eq!(status, 200, "{path}");
    }
    // Errors: the same status and the same JSON.
    for path in [
        "/api/traces?limit=0",
        "/api/traces?status=maybe",
        "/api/traces?since=yesterday",
        "/api/traces?cursor=not-a-cursor",
        "/api/traces?limit=1&limit=2",
        "/api/traces/bad%20id",
        "/api/traces/no-such-trace",
        "/api/spans/no-such-span",
        "/api/sessions/no-such-session",
        "/api/stats?group_by=colour",
        "/api/stats?bucket=0s",
    ] {
        let (status, body) = same(&sled, &ch, path, path, &renames).await;
        assert!(
            (400..500).contains(&status),
            "{path} is a 4xx, not {status}"
        );
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    // Delete, then the listing, the trace and its span agree again.
    for proxy in [&sled, &ch] {
        let rsp = client()
            .delete(proxy.api("/api/traces/f-2"))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 204, "f-2 is deleted");
    }
    for path in [
        "/api/traces",
        "/api/traces/f-2",
        "/api/sessions/s-a",
        "/api/stats",
    ] {
        same(&sled, &ch, path, path, &renames).await;
    }

    // Health names the backend; /metrics carries the writer's counters.
    let (_, health) = get(&ch, "/healthz").await;
    assert_eq!(health["store"]["backend"], "clickhouse", "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    let (_, health) = get(&sled, "/healthz").await;
    assert_eq!(health["store"]["backend"], "sled", "{health}");
    let metrics = client()
        .get(ch.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(&metrics, "llm_tracer_clickhouse_spans_inserted_total"),
        Some(7.0),
        "the seven proxied calls went through the writer:\n{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "llm_tracer_clickhouse_spans_dropped_total"),
        Some(0.0)
    );
}

/// `traceparent` for trace `t` and parent span `p`.
fn traceparent(t: &str, p: &str) -> String {
    format!("00-{t}-{p}-01")
}

#[tokio::test]
async fn two_instances_sharing_one_clickhouse_show_the_whole_trace() {
    let server = ClickHouseServer::start().await;
    let upstream = MockUpstream::start().await.unwrap();
    // Both instances also export to one collector: the OTLP hook fires on the ClickHouse path.
    let collector = OtlpReceiver::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path| {
        let mut c = clickhouse_config(dir, &upstream.url(), &server.url(), "shared", 100_000);
        c.otlp = Some(OtlpConfig {
            traces_url: otlp::traces_url(&collector.endpoint()).unwrap(),
            protocol: Protocol::Protobuf,
            headers: Vec::new(),
            batch_size: 5,
            interval: Duration::from_millis(20),
            max_buffer_spans: 100,
            timeout: Duration::from_secs(2),
            service_name: "llm-tracer".into(),
        });
        c
    };
    let a = TestProxy::start_with(config(dir_a.path())).await;
    let b = TestProxy::start_with(config(dir_b.path())).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let root = "00f067aa0ba902b7";
    // The app's root span, ingested through B; its first call goes through A (W3C header), the
    // second through B (x-tracer headers, nested under the first) and fails upstream.
    ingest(
        &b,
        &json!([{"trace_id": trace, "span_id": root, "name": "support agent", "kind": "agent",
                 "start_time": "2026-01-01T00:00:00Z", "end_time": "2099-01-01T00:00:00Z",
                 "session_id": "conv-9"}]),
    )
    .await;
    let first = send(
        &a,
        &Call {
            path: "/v1/chat/completions",
            body: chat_body("gpt-4o-mini", "first step", false),
            headers: vec![("traceparent", traceparent(trace, root))],
        },
    )
    .await;
    let second = send(
        &b,
        &Call {
            path: "/v1/chat/completions",
            body: chat_body("gpt-4o", "second step", false),
            headers: vec![
                ("x-tracer-trace-id", trace.to_string()),
                ("x-tracer-parent-span-id", first.clone()),
                ("x-mock-status", "500".to_string()),
            ],
        },
    )
    .await;

    a.wait_for_trace(trace, 3).await;
    b.wait_for_trace(trace, 3).await;
    // The spans can be readable a moment before the summary row that counts them (ClickHouse
    // is eventually consistent): wait (bounded) until both instances' summaries count all three.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (via_a, via_b) = loop {
        let (_, via_a) = a.get_json(&format!("/api/traces/{trace}")).await;
        let (_, via_b) = b.get_json(&format!("/api/traces/{trace}")).await;
        let counted = |v: &Value| v["trace"]["span_count"] == 3;
        if (counted(&via_a) && counted(&via_b)) || Instant::now() > deadline {
            break (via_a, via_b);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        via_a, via_b,
        "both instances give the same answer for the shared trace"
    );
    let summary = &via_a["trace"];
    let spans = via_a["spans"].as_array().unwrap();
    let ids: Vec<&str> = spans
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![root, first.as_str(), second.as_str()], "{via_a}");
    assert_eq!(spans[1]["parent_span_id"], root);
    assert_eq!(spans[2]["parent_span_id"], first.as_str());
    let sum = |field: &str| -> u64 { spans.iter().filter_map(|s| s["llm"][field].as_u64()).sum() };
    assert_eq!(summary["span_count"], 3, "{summary}");
    assert_eq!(summary["llm_calls"], 2, "{summary}");
    assert_eq!(summary["name"], "support agent");
    assert_eq!(summary["session_id"], "conv-9");
    assert_eq!(
        summary["status"], "error",
        "the failed call marks the trace"
    );
    assert_eq!(summary["input_tokens"].as_u64(), Some(sum("input_tokens")));
    assert_eq!(
        summary["output_tokens"].as_u64(),
        Some(sum("output_tokens"))
    );
    assert!(
        sum("input_tokens") > 0,
        "the calls reported tokens: {via_a}"
    );
    let cost: f64 = spans
        .iter()
        .filter_map(|s| s["llm"]["cost_usd"].as_f64())
        .sum();
    let got = summary["cost_usd"].as_f64().unwrap_or(0.0);
    assert!(
        (got - cost).abs() < 1e-9 && cost > 0.0,
        "the trace costs the sum of its calls: {got} vs {cost}"
    );
    let models: Vec<&str> = summary["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.iter().any(|m| m.starts_with("gpt-4o-mini"))
            && models.iter().any(|m| !m.starts_with("gpt-4o-mini")),
        "both models are on the trace: {models:?}"
    );

    // Each instance exported what it stored: the ingested root (B) and each captured call.
    let exported: std::collections::BTreeSet<String> = collector
        .wait_for(3)
        .await
        .iter()
        .map(|r| r.span.span_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let want: std::collections::BTreeSet<String> = [root, first.as_str(), second.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        exported, want,
        "every span of the trace reached the collector"
    );
}

async fn metrics(proxy: &TestProxy) -> String {
    client()
        .get(proxy.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn clickhouse_down_at_start_and_mid_traffic_never_fails_a_call_and_recovers() {
    let mut server = ClickHouseServer::start().await;
    server.stop();
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    const BOUND: usize = 6;
    // Start-up does not wait for ClickHouse: a proxy must come up and carry traffic.
    let proxy = TestProxy::start_with(clickhouse_config(
        tmp.path(),
        &upstream.url(),
        &server.url(),
        "outage",
        BOUND,
    ))
    .await;
    let health = proxy.wait_health("degraded").await;
    assert_eq!(health["store"]["backend"], "clickhouse");
    send(&proxy, &chat("before-1", "gpt-4o", "u", "s", "t")).await;
    server.restart().await;
    proxy.wait_health("ok").await;
    proxy.wait_for_trace("before-1", 1).await;

    // Stopped mid-traffic: every call still succeeds; what fits the bound is kept.
    send(&proxy, &chat("before-2", "gpt-4o", "u", "s", "t")).await;
    proxy.wait_for_trace("before-2", 1).await;
    server.stop();
    proxy.wait_health("degraded").await;
    let total = BOUND + 4;
    // Every capture reaches the writer: accepted up to the bound, the rest dropped and counted.
    // Each is waited for before the next call: a call that finds the writer busy goes through
    // the spool and can reach it after a later one.
    let reached = |text: &str| {
        let value = |name| metric_value(text, name).unwrap();
        value("llm_tracer_clickhouse_buffered_spans")
            + value("llm_tracer_clickhouse_spans_dropped_total")
    };
    let mut text = String::new();
    for i in 0..total {
        send(&proxy, &chat(&format!("down-{i}"), "gpt-4o", "u", "s", "t")).await;
        text = proxy
            .wait_metrics("the capture reached the writer", |t| {
                reached(t) >= (i + 1) as f64
            })
            .await;
    }
    let buffered = metric_value(&text, "llm_tracer_clickhouse_buffered_spans").unwrap();
    let dropped = metric_value(&text, "llm_tracer_clickhouse_spans_dropped_total").unwrap();
    assert_eq!(buffered, BOUND as f64, "the buffer holds exactly its bound");
    assert_eq!(
        dropped,
        (total - BOUND) as f64,
        "spans beyond the bound are dropped and counted"
    );

    server.restart().await;
    proxy.wait_health("ok").await;
    let (status, _) = {
        let rsp = client().post(proxy.api("/api/flush")).send().await.unwrap();
        (rsp.status(), ())
    };
    assert_eq!(status, 200, "flush waits for the writer to drain");
    let (_, page) = get(&proxy, "/api/traces?limit=100").await;
    let listed: Vec<&str> = page["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    let kept = listed.iter().filter(|t| t.starts_with("down-")).count();
    assert_eq!(
        kept, BOUND,
        "every span acknowledged within the bound was written after the restart: {listed:?}"
    );
    for t in ["before-1", "before-2"] {
        assert!(listed.contains(&t), "{t} survived the outage: {listed:?}");
    }
    // The first BOUND calls were accepted (the buffer filled in order).
    for i in 0..BOUND {
        let id = format!("down-{i}");
        assert!(listed.contains(&id.as_str()), "{id} was kept: {listed:?}");
    }
    let text = metrics(&proxy).await;
    assert_eq!(
        metric_value(&text, "llm_tracer_clickhouse_buffered_spans"),
        Some(0.0)
    );
    assert!(
        metric_value(&text, "llm_tracer_clickhouse_insert_failures_total").unwrap() > 0.0,
        "the failed attempts are counted:\n{text}"
    );
    assert_eq!(
        metric_value(&text, "llm_tracer_clickhouse_healthy"),
        Some(1.0)
    );
}

#[tokio::test]
async fn migrate_copies_a_real_proxy_store_into_clickhouse() {
    let server = ClickHouseServer::start().await;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut sled = TestProxy::start_with(test_config(&data, &upstream.url())).await;
    ingest(&sled, &app_spans()).await;
    for call in traffic() {
        send(&sled, &call).await;
    }
    sled.wait_for_trace("chain-1", 2).await;
    sled.wait_for_trace("emb-1", 1).await;
    for t in ["f-1", "f-2", "f-3", "f-4", "f-5"] {
        sled.wait_for_trace(t, 1).await;
    }

    // While `serve` holds the sled lock, migrate says so.
    let migrate = |extra: &[&str]| {
        let mut cmd = common::bin();
        cmd.args([
            "migrate",
            "--from",
            "sled",
            "--to",
            "clickhouse",
            "--data-dir",
        ])
        .arg(&data)
        .args(["--clickhouse-url", &server.url()])
        .args(["--clickhouse-database", "migrated"])
        .args(extra);
        cmd
    };
    let out = migrate(&[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("locked") && stderr.contains("serve"),
        "the lock error names the running server: {stderr}"
    );
    sled.stop().await;

    let out = migrate(&[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "migrate succeeds: {stderr}");
    assert!(
        stderr.contains("migrated 11 spans in 8 traces"),
        "a summary line counts what was copied: {stderr}"
    );
    // Again: nothing doubles.
    let out = migrate(&[]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));

    // The same store, served by sled and by ClickHouse: identical answers (same spans, same
    // times, so nothing to normalise but cursors, which are opaque).
    let sled = TestProxy::start_with(test_config(&data, &upstream.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let ch = TestProxy::start_with(clickhouse_config(
        dir.path(),
        &upstream.url(),
        &server.url(),
        "migrated",
        100,
    ))
    .await;
    let (_, all) = get(&sled, "/api/traces").await;
    let mut paths = vec![
        "/api/traces".to_string(),
        "/api/traces?user_id=ada".to_string(),
        "/api/sessions".to_string(),
        "/api/stats?group_by=model".to_string(),
    ];
    for t in all["traces"].as_array().unwrap() {
        paths.push(format!("/api/traces/{}", t["trace_id"].as_str().unwrap()));
    }
    assert_eq!(paths.len(), 4 + 8);
    for path in &paths {
        let (s_status, mut s_body) = get(&sled, path).await;
        let (c_status, mut c_body) = get(&ch, path).await;
        for body in [&mut s_body, &mut c_body] {
            if let Some(c) = body.get_mut("next_cursor") {
                *c = json!(!c.is_null());
            }
        }
        assert_eq!(
            (s_status, s_body),
            (c_status, c_body),
            "{path}: the migrated data answers as the sled store did"
        );
    }

    // `check` on a ClickHouse config explains itself instead of checking the wrong store.
    let cfg = dir.path().join("ch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nbackend = \"clickhouse\"\nclickhouse_url = \"{}\"\n",
            server.url()
        ),
    )
    .unwrap();
    // So do `export` without --admin (it reads sled data dirs) and `compact` (ClickHouse
    // manages its own files): each exits 2 saying what to do instead.
    for (command, says) in [
        ("check", ["clickhouse", "CHECK TABLE"]),
        ("export", ["store.backend", "--admin"]),
        ("compact", ["store.backend", "OPTIMIZE TABLE"]),
    ] {
        let out = common::bin()
            .args([command, "--config"])
            .arg(&cfg)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            says.iter().all(|s| stderr.contains(s)),
            "{command} says {says:?}: {stderr}"
        );
    }
    // Through --admin it reads the ClickHouse instance: every migrated span comes out.
    let out = common::bin()
        .args(["export", "--admin", &ch.admin])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 11, "export --admin on ClickHouse writes every span");
}

#[tokio::test]
async fn otlp_ingest_and_retention_by_age_work_on_clickhouse() {
    let server = ClickHouseServer::start().await;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = clickhouse_config(
        tmp.path(),
        &upstream.url(),
        &server.url(),
        "retention",
        1000,
    );
    config.retention = Some(Duration::from_secs(86_400));
    config.retention_interval = Duration::from_millis(100);
    let proxy = TestProxy::start_with(config).await;

    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let old_ns: u64 = 1_600_000_000_000_000_000; // 2020-09-13
    let span = |trace: &str, id: &str, ns: u64| {
        json!({"traceId": trace, "spanId": id, "name": "ChatOpenAI", "kind": 3,
               "startTimeUnixNano": ns.to_string(), "endTimeUnixNano": (ns + 1_000_000).to_string(),
               "attributes": [{"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
                              {"key": "llm.model_name", "value": {"stringValue": "gpt-4o"}},
                              {"key": "llm.token_count.prompt", "value": {"intValue": "11"}}]})
    };
    let recent = "5bf92f3577b34da6a3ce929d0e0e4736";
    let old = "6bf92f3577b34da6a3ce929d0e0e4736";
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        span(recent, "10f067aa0ba902b7", now_ns),
        span(old, "11f067aa0ba902b7", old_ns),
    ]}]}]});
    let rsp = client()
        .post(proxy.api("/v1/traces"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "OTLP ingest writes into ClickHouse");
    let trace = proxy.wait_for_trace(recent, 1).await;
    assert_eq!(trace["trace"]["input_tokens"], 11, "{trace}");

    // The retention task deletes the old trace (and only it), by itself, and counts it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let (_, health) = get(&proxy, "/healthz").await;
        if health["retention"]["deleted_traces"] != 0 {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "retention never deleted the 2020 trace: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["retention"]["deleted_traces"], 1, "{health}");
    let (status, _) = get(&proxy, &format!("/api/traces/{old}")).await;
    assert_eq!(status, 404, "the 2020 trace is gone");
    let (status, _) = get(&proxy, &format!("/api/traces/{recent}")).await;
    assert_eq!(status, 200, "a trace younger than retention_days stays");
    assert!(
        health["store"]["size_bytes"].as_u64().is_some(),
        "ClickHouse reports its size on disk: {health}"
    );
}

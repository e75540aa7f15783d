//! What the web UI relies on: the embedded assets (content types, caching, CSP, every module
//! import resolvable), `/api/stats?bucket=` time series, and the sessions endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, MockUpstream, TestProxy};
use serde_json::{json, Value};

async fn proxy() -> (MockUpstream, TestProxy) {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    (upstream, proxy)
}

async fn ingest(proxy: &TestProxy, spans: Value) {
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&spans)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "{}", rsp.text().await.unwrap());
}

/// An LLM call reported by the app at `start` (RFC 3339), lasting `ms`.
fn call(trace: &str, span: &str, start: &str, end: &str, model: &str, session: &str) -> Value {
    json!({
        "trace_id": trace, "span_id": span, "name": format!("chat {model}"), "kind": "llm",
        "start_time": start, "end_time": end, "session_id": session, "user_id": "ada",
        "llm": { "request_model": model, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5 },
        "input": { "messages": [{ "role": "user", "content": format!("question in {trace}") }] },
        "output": { "choices": [{ "message": { "role": "assistant", "content": format!("answer in {trace}") } }] },
    })
}

async fn error_param(proxy: &TestProxy, path: &str) -> String {
    let (status, body) = proxy.get_json(path).await;
    assert_eq!(status, 400, "{path} is refused: {body}");
    assert_eq!(body["error"]["code"], "bad_param", "{path}: {body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn ui_assets_are_embedded_with_types_caching_and_csp() {
    let (_up, proxy) = proxy().await;
    let rsp = client().get(proxy.api("/")).send().await.unwrap();
    assert_eq!(rsp.status(), 200);
    let h = rsp.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "no inline or foreign scripts: {csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let etag = h["etag"].to_str().unwrap().to_string();
    let html = rsp.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/app.js">"#));
    assert!(html.contains(r#"href="/ui/style.css""#));
    assert!(
        !html.contains("<script>") && !html.contains("http://") && !html.contains("https://"),
        "no inline script, nothing loaded from another origin"
    );

    // Revalidation: the same ETag gives 304 with no body.
    let rsp = client()
        .get(proxy.api("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 304);
    assert!(rsp.bytes().await.unwrap().is_empty());
    let rsp = client()
        .get(proxy.api("/"))
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "a stale ETag gets the file");

    // Every module app.js imports (transitively) is served as JavaScript.
    let mut todo = vec!["app.js".to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let rsp = client()
            .get(proxy.api(&format!("/ui/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "/ui/{name} is served");
        assert_eq!(
            rsp.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert!(rsp.headers().contains_key("etag"));
        let src = rsp.text().await.unwrap();
        for line in src.lines().filter(|l| l.contains(" from './")) {
            let start = line.find(" from './").unwrap() + " from './".len();
            let end = start + line[start..].find('\'').unwrap();
            todo.push(line[start..end].to_string());
        }
    }
    for module in [
        "lib.js",
        "traces.js",
        "trace.js",
        "detail.js",
        "sessions.js",
        "dashboard.js",
    ] {
        assert!(seen.contains(module), "app.js reaches {module}: {seen:?}");
    }

    let css = client()
        .get(proxy.api("/ui/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let svg = client()
        .get(proxy.api("/ui/favicon.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let head = client().head(proxy.api("/ui/app.js")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");

    let (status, body) = proxy.get_json("/ui/nope.js").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_such_route"))
    );
    let rsp = client().post(proxy.api("/ui/app.js")).send().await.unwrap();
    assert_eq!(rsp.status(), 405);
}

#[tokio::test]
async fn stats_bucket_gives_a_dense_clock_aligned_series() {
    let (_up, proxy) = proxy().await;
    // Calls at 10:00:30, 10:01:10, 10:01:50 (gpt-4o) and 10:03:05 (claude); a chain span too.
    ingest(
        &proxy,
        json!([
            call("b1", "c1", "2026-01-05T10:00:30Z", "2026-01-05T10:00:30.100Z", "gpt-4o", "s"),
            call("b2", "c2", "2026-01-05T10:01:10Z", "2026-01-05T10:01:10.200Z", "gpt-4o", "s"),
            call("b3", "c3", "2026-01-05T10:01:50Z", "2026-01-05T10:01:50.300Z", "gpt-4o", "s"),
            call("b4", "c4", "2026-01-05T10:03:05Z", "2026-01-05T10:03:05.400Z", "claude", "s"),
            { "trace_id": "b1", "span_id": "chain1", "name": "run", "kind": "chain",
              "start_time": "2026-01-05T10:00:00Z", "end_time": "2026-01-05T10:05:00Z" },
        ]),
    )
    .await;

    let (status, st) = proxy.get_json("/api/stats?bucket=1m&group_by=model").await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["calls"], 4, "totals stay as they were");
    assert_eq!(st["bucket_seconds"], 60);
    let series = st["series"].as_array().unwrap();
    let starts: Vec<&str> = series
        .iter()
        .map(|r| r["start"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        [
            "2026-01-05T10:00:00.000000Z",
            "2026-01-05T10:01:00.000000Z",
            "2026-01-05T10:02:00.000000Z",
            "2026-01-05T10:03:00.000000Z"
        ],
        "without since/until the series spans the calls, on whole minutes, empty ones included"
    );
    assert_eq!(series[0]["end"], "2026-01-05T10:01:00.000000Z");
    let calls: Vec<u64> = series
        .iter()
        .map(|r| r["calls"].as_u64().unwrap())
        .collect();
    assert_eq!(calls, [1, 2, 0, 1]);
    assert_eq!(series[1]["input_tokens"], 20);
    assert_eq!(series[1]["cost_usd"], 1.0);
    assert_eq!(series[1]["latency_ms"]["p50"], 200.0);
    assert_eq!(series[1]["latency_ms"]["p99"], 300.0);
    assert_eq!(
        series[2]["latency_ms"]["p50"],
        Value::Null,
        "an empty bucket has no quantiles"
    );
    assert_eq!(series[3]["models"][0]["model"], "claude");
    assert_eq!(series[1]["models"][0]["calls"], 2);

    // With a window: the buckets cover [since, until) exactly; no `models` without group_by.
    let (_, st) = proxy
        .get_json("/api/stats?since=2026-01-05T10:00:00Z&until=2026-01-05T10:10:00Z&bucket=300")
        .await;
    let series = st["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "10 minutes in 5-minute buckets: {st}");
    assert_eq!(series[0]["calls"], 4);
    assert_eq!(series[1]["calls"], 0);
    assert!(series[0].get("models").is_none());
    assert!(st.get("groups").is_none());

    // No calls in the window: an empty bucket per step of the window.
    let (_, st) = proxy
        .get_json("/api/stats?since=2030-01-01T00:00:00Z&until=2030-01-01T01:00:00Z&bucket=1h")
        .await;
    assert_eq!(st["calls"], 0);
    assert_eq!(st["series"].as_array().unwrap().len(), 1);
    // Unix milliseconds work as elsewhere, and no bucket means no series.
    let (_, st) = proxy.get_json("/api/stats?since=1767607200000").await;
    assert!(st.get("series").is_none() && st.get("bucket_seconds").is_none());
}

#[tokio::test]
async fn stats_bucket_is_validated_and_the_number_of_buckets_capped() {
    let (_up, proxy) = proxy().await;
    for bad in [
        "0",
        "abc",
        "5x",
        "-60",
        "1.5m",
        "m",
        "367d",
        "99999999999999999999",
    ] {
        let msg = error_param(&proxy, &format!("/api/stats?bucket={bad}")).await;
        assert!(msg.starts_with("bucket:"), "bucket={bad}: {msg}");
    }
    let msg = error_param(
        &proxy,
        "/api/stats?since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z&bucket=1s",
    )
    .await;
    assert!(
        msg.starts_with("bucket:") && msg.contains("86400 buckets") && msg.contains("1000"),
        "the cap is named: {msg}"
    );
    let (status, st) = proxy
        .get_json("/api/stats?since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z&bucket=2m")
        .await;
    assert_eq!(status, 200, "720 buckets are allowed: {st}");
    assert_eq!(st["series"].as_array().unwrap().len(), 720);
    for ok in ["30s", "5m", "1h", "1d", "1D", "3600"] {
        let (status, body) = proxy.get_json(&format!("/api/stats?bucket={ok}")).await;
        assert_eq!(status, 200, "bucket={ok}: {body}");
        assert_eq!(body["series"], json!([]), "no calls: an empty series");
    }
    let msg = error_param(&proxy, "/api/stats?bucket=1m&bucket=5m").await;
    assert!(msg.starts_with("bucket:"));
}

#[tokio::test]
async fn sessions_are_listed_with_totals_and_read_in_order() {
    let (_up, proxy) = proxy().await;
    ingest(
        &proxy,
        json!([
            call("t1", "s1", "2026-01-05T10:00:00Z", "2026-01-05T10:00:01Z", "gpt-4o", "chat/α 1"),
            call("t2", "s2", "2026-01-05T10:05:00Z", "2026-01-05T10:05:01Z", "gpt-4o", "other"),
            call("t3", "s3", "2026-01-05T10:10:00Z", "2026-01-05T10:10:02Z", "claude", "chat/α 1"),
            { "trace_id": "t4", "span_id": "s4", "name": "no session", "kind": "chain",
              "start_time": "2026-01-05T10:20:00Z", "end_time": "2026-01-05T10:20:01Z" },
        ]),
    )
    .await;

    let (status, page) = proxy.get_json("/api/sessions").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat/α 1", "other"], "latest activity first");
    let s = &page["sessions"][0];
    assert_eq!(s["trace_count"], 2);
    assert_eq!(s["complete"], true);
    assert_eq!(s["llm_calls"], 2);
    assert_eq!(
        (s["input_tokens"].as_u64(), s["output_tokens"].as_u64()),
        (Some(20), Some(10))
    );
    assert_eq!(s["cost_usd"], 1.0);
    assert_eq!(s["start_time"], "2026-01-05T10:00:00.000000Z");
    assert_eq!(s["end_time"], "2026-01-05T10:10:02.000000Z");
    assert_eq!(s["models"], json!(["claude", "gpt-4o"]));
    assert_eq!(s["user_ids"], json!(["ada"]));
    assert_eq!(s["first_input_preview"], "question in t1");
    assert_eq!(s["last_output_preview"], "answer in t3");
    assert_eq!(s["last_trace_id"], "t3");
    assert_eq!(page["next_cursor"], Value::Null);

    // Pages of one, by cursor.
    let (_, first) = proxy.get_json("/api/sessions?limit=1").await;
    assert_eq!(first["sessions"][0]["session_id"], "chat/α 1");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = proxy
        .get_json(&format!("/api/sessions?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(second["sessions"][0]["session_id"], "other");

    // Filters: q on the id, and a window on the latest activity.
    let (_, found) = proxy.get_json("/api/sessions?q=OTH").await;
    assert_eq!(found["sessions"].as_array().unwrap().len(), 1);
    let (_, window) = proxy
        .get_json("/api/sessions?until=2026-01-05T10:06:00Z")
        .await;
    let ids: Vec<&str> = window["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["other", "chat/α 1"],
        "ranked by activity before until"
    );

    // One session, by its percent-encoded id: its traces oldest first.
    let (status, one) = proxy.get_json("/api/sessions/chat%2F%CE%B1%201").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["session"]["trace_count"], 2);
    let order: Vec<&str> = one["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["t1", "t3"]);
    let (_, capped) = proxy
        .get_json("/api/sessions/chat%2F%CE%B1%201?limit=1")
        .await;
    assert_eq!(capped["session"]["complete"], false);
    assert_eq!(capped["traces"][0]["trace_id"], "t3", "the newest are kept");

    let (status, body) = proxy.get_json("/api/sessions/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    for (path, param) in [
        ("/api/sessions?limit=0", "limit"),
        ("/api/sessions?limit=201", "limit"),
        ("/api/sessions?cursor=zz", "cursor"),
        ("/api/sessions?since=yesterday", "since"),
        ("/api/sessions/x?limit=1001", "limit"),
        ("/api/sessions/%ZZ", "session_id"),
    ] {
        let msg = error_param(&proxy, path).await;
        assert!(msg.starts_with(&format!("{param}:")), "{path}: {msg}");
    }
}

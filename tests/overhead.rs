//! The proxy's own overhead is visible to users: `llm_tracer_proxy_overhead_seconds` counts
//! every call the upstream answered (capture on or off), and the capture byte budget is exposed
//! and given back once spans are stored. No timing thresholds: only presence and counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat_body, client, metric_value, test_config, MockUpstream, TestProxy};

const HANG_GUARD: Duration = Duration::from_secs(20);

/// Every `le` bucket of the overhead histogram, in order, with its cumulative count.
fn overhead_buckets(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("llm_tracer_proxy_overhead_seconds_bucket{le=\"")?;
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn calls(proxy: &TestProxy, plain: usize, streamed: usize) {
    let http = client();
    for i in 0..plain + streamed {
        let rsp = http
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_body("gpt-4o-mini", &format!("call {i}"), i >= plain))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "call {i} is answered");
        rsp.bytes().await.unwrap();
    }
}

#[tokio::test]
async fn the_overhead_histogram_is_exposed_and_counts_every_answered_call() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let before = proxy.metrics_text().await;
    assert!(
        before.contains("# TYPE llm_tracer_proxy_overhead_seconds histogram"),
        "the overhead histogram is declared before any call"
    );
    assert_eq!(
        metric_value(&before, "llm_tracer_proxy_overhead_seconds_count"),
        Some(0.0)
    );

    calls(&proxy, 3, 2).await;
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&text, "llm_tracer_proxy_overhead_seconds_count"),
        Some(5.0),
        "each answered call is observed once, streamed or not"
    );
    let buckets = overhead_buckets(&text);
    assert!(
        buckets.len() > 5,
        "the histogram has microsecond-to-millisecond buckets"
    );
    assert_eq!(
        buckets.last().map(|(le, v)| (le.as_str(), *v)),
        Some(("+Inf", 5.0)),
        "+Inf counts every observation"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets are cumulative"
    );
    let sum = metric_value(&text, "llm_tracer_proxy_overhead_seconds_sum").unwrap();
    assert!(sum.is_finite() && sum >= 0.0, "the sum is a duration");
}

#[tokio::test]
async fn calls_the_upstream_never_answered_are_not_overhead_and_capture_off_still_counts() {
    // Nothing listens on the upstream: every call fails with a proxy-made 502.
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let proxy = TestProxy::start(&unreachable).await;
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("gpt-4o-mini", "hello", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 502);
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&text, "llm_tracer_proxy_overhead_seconds_count"),
        Some(0.0),
        "a call without an upstream answer has no 'proxy share' to measure"
    );

    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.capture = false;
    let off = TestProxy::start_with(config).await;
    calls(&off, 2, 1).await;
    assert_eq!(
        metric_value(
            &off.metrics_text().await,
            "llm_tracer_proxy_overhead_seconds_count"
        ),
        Some(3.0),
        "with capture off the overhead is measured all the same"
    );
}

#[tokio::test]
async fn the_capture_budget_is_exposed_and_given_back_once_spans_are_stored() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let text = proxy.metrics_text().await;
    assert!(
        metric_value(&text, "llm_tracer_capture_budget_bytes").is_some_and(|v| v > 0.0),
        "the budget is exposed"
    );
    calls(&proxy, 4, 4).await;
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let text = proxy.metrics_text().await;
        let stored = metric_value(&text, "llm_tracer_spans_captured_total").unwrap();
        let in_use = metric_value(&text, "llm_tracer_capture_bytes_in_use").unwrap();
        if stored >= 8.0 && in_use == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "captured bytes are given back once their spans are stored (stored {stored}, in use {in_use})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_capture_budget_is_the_configured_capture_budget_bytes() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.capture_budget_bytes = 1_048_576;
    let proxy = TestProxy::start_with(config).await;
    calls(&proxy, 1, 1).await;
    assert_eq!(
        metric_value(
            &proxy.metrics_text().await,
            "llm_tracer_capture_budget_bytes"
        ),
        Some(1_048_576.0),
        "the capture budget is the configured capture_budget_bytes"
    );
}

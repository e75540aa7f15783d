//! Memory: once a burst of traffic is over (nothing in flight, every capture written), the proxy
//! hands freed heap memory back to the kernel (glibc `malloc_trim`), and says so on `/metrics`.
//! The RSS figures themselves are measured by `bench/bench.py run --only memory`, not here (no
//! timing or size thresholds in tests on a shared machine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat_body, client, metric_value, MockUpstream, TestProxy};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn freed_memory_is_handed_back_once_idle_after_traffic() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let trims = |text: &str| metric_value(text, "llm_tracer_malloc_trims_total");
    let before = trims(&proxy.metrics_text().await).expect("the trim counter is on /metrics");
    assert_eq!(before, 0.0, "no traffic yet: nothing trimmed");

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "memory-trim-1")
        .json(&chat_body("gpt-4o-mini", "one two three four five", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.bytes().await.unwrap();
    assert!(
        common::contains(&body, b"[DONE]"),
        "the stream is forwarded whole"
    );
    proxy.wait_for_trace("memory-trim-1", 1).await;

    // Bounded: the trimmer looks every 100 ms; give it up to 10 s on a busy machine.
    let mut after = 0.0;
    for _ in 0..200 {
        after = trims(&proxy.metrics_text().await).unwrap_or(0.0);
        if after >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        after >= 1.0,
        "idle after a call whose span is stored, the proxy trims the heap (trims: {after})"
    );
}

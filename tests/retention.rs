//! Retention through a running server: the background task deletes traces older than
//! `retention_days` (counted in `/healthz`), keeps newer ones, and leaves the store consistent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, MockUpstream, TestProxy};
use llm_tracer::config::{self, Flags};
use serde_json::json;

#[tokio::test]
async fn the_retention_task_deletes_traces_older_than_retention_days() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let flags = Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(tmp.path().display().to_string()),
        upstream: Some(upstream.url()),
        retention_days: Some("1".into()),
        retention_interval_ms: Some("20".into()),
        ..Flags::default()
    };
    let cfg = config::load(None, &flags, &|_| None).unwrap();
    assert_eq!(cfg.retention, Some(Duration::from_secs(86_400)));
    let mut proxy = TestProxy::start_with(cfg).await;

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let at = |ms: u64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let two_days = 2 * 86_400_000;
    let spans = json!([
        { "trace_id": "ancient", "span_id": "a1", "name": "old run", "kind": "chain",
          "start_time": at(now_ms - two_days), "end_time": at(now_ms - two_days + 5) },
        { "trace_id": "recent", "span_id": "r1", "name": "new run", "kind": "chain",
          "start_time": at(now_ms - 60_000), "end_time": at(now_ms - 59_000) },
    ]);
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&spans)
        .send()
        .await
        .unwrap();
    assert!(rsp.status().is_success(), "the spans are ingested");

    // The task runs every 20 ms; the deadline only guards against a hang.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = proxy.get_json("/api/traces/ancient").await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the expired trace is deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = proxy.get_json("/api/traces/recent").await;
    assert_eq!(status, 200, "a trace younger than retention_days is kept");
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(
        health["retention"]["deleted_traces"], 1,
        "/healthz counts the traces retention deleted"
    );
    let metrics = proxy.metrics_text().await;
    assert_eq!(
        common::metric_value(&metrics, "llm_tracer_retention_deleted_traces_total"),
        Some(1.0),
        "/metrics counts them too:\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE llm_tracer_retention_deleted_traces_total counter"),
        "it is a counter"
    );
    proxy.stop().await;
    let report = llm_tracer::store::Store::open(tmp.path(), &Default::default())
        .unwrap()
        .check()
        .unwrap();
    assert!(
        report.is_clean(),
        "retention keeps the store consistent: {report:?}"
    );
}

//! The capture spool: calls that find the writer busy wait on disk (`<data_dir>/spool`) instead
//! of in memory, and are all stored once the writer has time — after a burst, across a
//! shutdown, across a restart. Only a full spool falls back to the in-memory queue's bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use common::{
    chat_body, client, metric_family_sum, metric_value, test_config, MockUpstream, TestProxy,
};
use llm_tracer::{
    metrics::Metrics,
    propagate::TraceContext,
    spool::Spool,
    tap::{CallRecord, Captured, End},
};
use serde_json::Value;

fn value(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

fn segment_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("spool"))
        .map(|dir| {
            dir.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn calls_that_find_the_writer_busy_are_spooled_and_all_stored_later() {
    const CALLS: usize = 12;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.queue_capacity = 2; // without the spool, most of these would be dropped
    config.batch_size = 1;
    let proxy = TestProxy::start_with(config).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    faults.stall_writes(); // the writer holds its first batch, the next waits in its slot

    for i in 0..CALLS {
        proxy.call_traced(&format!("spooled-{i}"), i % 2 == 1).await;
    }
    let text = proxy
        .wait_metrics("calls spooled", |t| {
            metric_value(t, "llm_tracer_spooled_calls_total") >= Some((CALLS - 3) as f64)
        })
        .await;
    assert!(value(&text, "llm_tracer_spool_bytes") > 0.0, "{text}");
    assert_eq!(
        metric_family_sum(&text, "llm_tracer_captures_dropped_total"),
        0.0,
        "nothing dropped while the writer is stuck:\n{text}"
    );
    assert!(segment_files(tmp.path()) >= 1, "the calls are on disk");
    let (_, health) = proxy.get_json("/healthz").await;
    assert!(
        health["queue"]["spooled_bytes"].as_u64() > Some(0),
        "healthz shows the backlog: {health}"
    );

    faults.heal();
    for i in 0..CALLS {
        let trace = proxy.wait_for_trace(&format!("spooled-{i}"), 1).await;
        let span = &trace["spans"][0];
        assert_eq!(span["status"], "ok", "{span}");
        let output = span["output"].to_string();
        assert!(
            output.contains(&format!("Mock reply to: spooled-{i}")),
            "the answer is reassembled from the spooled bytes: {span}"
        );
        if i % 2 == 1 {
            assert_eq!(span["llm"]["stream"], true, "{span}");
            assert!(
                span["llm"]["ttft_ms"].as_f64().is_some(),
                "TTFT survives the spool (chunk marks kept): {span}"
            );
        }
        assert!(span["llm"]["input_tokens"].as_u64() > Some(0), "{span}");
    }
    let text = proxy
        .wait_metrics("the spool drained", |t| {
            metric_value(t, "llm_tracer_spool_bytes") == Some(0.0)
        })
        .await;
    assert_eq!(
        value(&text, "llm_tracer_spans_captured_total"),
        CALLS as f64
    );
    assert_eq!(
        metric_family_sum(&text, "llm_tracer_captures_dropped_total"),
        0.0
    );
    assert_eq!(segment_files(tmp.path()), 0, "stored segments are deleted");
}

#[tokio::test]
async fn a_burst_beyond_the_writer_loses_no_capture() {
    const CALLS: usize = 1500;
    const CONCURRENCY: usize = 32;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.queue_capacity = 256;
    config.batch_size = 64;
    let proxy = TestProxy::start_with(config).await;
    let url = proxy.url("/v1/chat/completions");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..CONCURRENCY {
        let url = url.clone();
        tasks.spawn(async move {
            let http = client();
            for i in (w..CALLS).step_by(CONCURRENCY) {
                let rsp = http
                    .post(&url)
                    .json(&chat_body("gpt-4o-mini", &format!("burst {i}"), i % 3 == 0))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(rsp.status(), 200);
                rsp.bytes().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let served = started.elapsed();
    let text = proxy
        .wait_metrics("every call stored or counted", |t| {
            metric_value(t, "llm_tracer_spans_captured_total").unwrap_or(0.0)
                + metric_family_sum(t, "llm_tracer_captures_dropped_total")
                >= CALLS as f64
        })
        .await;
    eprintln!(
        "burst: {CALLS} calls served in {served:?}; spooled {}, refusals {}, dropped {}",
        value(&text, "llm_tracer_spooled_calls_total"),
        value(&text, "llm_tracer_spool_refusals_total"),
        metric_family_sum(&text, "llm_tracer_captures_dropped_total"),
    );
    assert_eq!(
        value(&text, "llm_tracer_spans_captured_total"),
        CALLS as f64,
        "every call of the burst is stored:\n{text}"
    );
    let (status, stats) = proxy.get_json("/api/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["calls"], CALLS, "{stats}");
}

#[tokio::test]
async fn shutdown_stores_what_is_spooled() {
    const CALLS: usize = 8;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.batch_size = 1;
    let mut proxy = TestProxy::start_with(config.clone()).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    faults.stall_writes();
    for i in 0..CALLS {
        proxy.call_traced(&format!("at-stop-{i}"), false).await;
    }
    proxy
        .wait_metrics("calls spooled", |t| {
            metric_value(t, "llm_tracer_spooled_calls_total") >= Some(1.0)
        })
        .await;
    let stopping = proxy.begin_stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.heal(); // the stuck write finishes while shutdown waits for the writer
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert_eq!(segment_files(tmp.path()), 0, "nothing left in the spool");

    let proxy = TestProxy::start_with(config).await;
    for i in 0..CALLS {
        proxy.wait_for_trace(&format!("at-stop-{i}"), 1).await;
    }
}

/// A call as a previous run left it in the spool.
fn left_over(trace: &str, span: &str) -> CallRecord {
    let started_at = Instant::now();
    let request = serde_json::to_vec(&chat_body("gpt-4o-mini", "left over", false)).unwrap();
    let response = serde_json::to_vec(&serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": format!("stored after restart {span}")}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    }))
    .unwrap();
    let body = |bytes: Vec<u8>| {
        let mut c = Captured::default();
        c.kept = bytes.len();
        c.seen = bytes.len() as u64;
        c.frames = 1;
        c.first_byte_at = Some(started_at + Duration::from_millis(3));
        c.marks = vec![(bytes.len() as u64, started_at + Duration::from_millis(3))];
        c.chunks = vec![Bytes::from(bytes)];
        c.end = Some(End::Complete);
        c
    };
    CallRecord {
        ctx: TraceContext {
            trace_id: trace.into(),
            span_id: span.into(),
            ..TraceContext::default()
        },
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        upstream_path: "/v1/chat/completions".into(),
        upstream: "http://127.0.0.1:9".into(),
        provider_hint: None,
        request_content_type: Some("application/json".into()),
        request_content_encoding: None,
        response_content_type: Some("application/json".into()),
        response_content_encoding: None,
        status: Some(200),
        started: SystemTime::now(),
        started_at,
        head_at: Some(started_at + Duration::from_millis(2)),
        ended_at: started_at + Duration::from_millis(4),
        request: Some(body(request)),
        response: Some(body(response)),
        proxy_error: None,
    }
}

#[tokio::test]
async fn calls_a_previous_run_left_in_the_spool_are_stored_at_start_and_a_torn_one_is_counted() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(
            &tmp.path().join("spool"),
            1 << 30,
            std::sync::Arc::new(Metrics::default()),
        )
        .unwrap();
        let calls = (0..3)
            .map(|i| left_over(&format!("left-over-{i}"), &format!("{:016x}", i + 1)))
            .collect();
        spool.append(calls).map_err(|(e, _)| e).unwrap();
        spool
            .append(vec![left_over("torn", "00000000000000ff")])
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // A crash cut the last append short.
    let seg = std::fs::read_dir(tmp.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let proxy = TestProxy::start_with(test_config(tmp.path(), &upstream.url())).await;
    for i in 0..3 {
        let trace: Value = proxy.wait_for_trace(&format!("left-over-{i}"), 1).await;
        let span = &trace["spans"][0];
        assert_eq!(span["span_id"], format!("{:016x}", i + 1));
        assert_eq!(
            span["output"]["choices"][0]["message"]["content"],
            format!("stored after restart {:016x}", i + 1)
        );
        assert_eq!(span["llm"]["input_tokens"], 9, "{span}");
    }
    let text = proxy
        // The drop is counted a moment before the spool's byte gauge reaches 0: wait for both.
        .wait_metrics("the torn call is counted and the spool emptied", |t| {
            metric_value(
                t,
                "llm_tracer_captures_dropped_total{reason=\"spool_corrupt\"}",
            ) == Some(1.0)
                && metric_value(t, "llm_tracer_spool_bytes") == Some(0.0)
        })
        .await;
    assert_eq!(value(&text, "llm_tracer_spool_bytes"), 0.0);
    let (status, _) = proxy.get_json("/api/traces/torn").await;
    assert_eq!(status, 404, "a torn call is never half-stored");
    assert_eq!(segment_files(tmp.path()), 0);
}

#[tokio::test]
async fn a_full_spool_falls_back_to_the_queue_and_every_call_is_accounted_for() {
    const CALLS: usize = 14;
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.queue_capacity = 1;
    config.batch_size = 1;
    config.spool_max_bytes = 1 << 20; // the smallest spool
    let proxy = TestProxy::start_with(config).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    faults.stall_writes();
    // ~300 KiB per call: the 1 MiB spool is full after a few.
    let big = "x".repeat(300 << 10);
    for i in 0..CALLS {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", format!("big-{i}"))
            .json(&chat_body("gpt-4o-mini", &big, false))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "a full spool never fails a call");
        rsp.bytes().await.unwrap();
    }
    let text = proxy
        .wait_metrics("the spool refused a batch", |t| {
            metric_value(t, "llm_tracer_spool_refusals_total") >= Some(1.0)
                && metric_value(
                    t,
                    "llm_tracer_captures_dropped_total{reason=\"queue_full\"}",
                ) >= Some(1.0)
        })
        .await;
    let spooled = value(&text, "llm_tracer_spooled_calls_total");
    assert!(spooled >= 1.0, "{text}");
    faults.heal();
    let text = proxy
        .wait_metrics("every call stored or counted", |t| {
            metric_value(t, "llm_tracer_spans_captured_total").unwrap_or(0.0)
                + metric_family_sum(t, "llm_tracer_captures_dropped_total")
                >= CALLS as f64
                && metric_value(t, "llm_tracer_spool_bytes") == Some(0.0)
        })
        .await;
    assert_eq!(
        value(&text, "llm_tracer_spans_captured_total")
            + metric_family_sum(&text, "llm_tracer_captures_dropped_total"),
        CALLS as f64,
        "every call is stored or counted as dropped, exactly once:\n{text}"
    );
}

//! The store cannot write: traffic keeps flowing, `/healthz` says degraded, `/metrics` counts
//! the retries and the dropped spans, and everything recovers by itself once writes work again.
//!
//! Most failures are injected (`Running::faults`, a hook only the library API reaches): mounting
//! a small tmpfs for a real full disk needs privileges CI may not have (that test runs where it
//! can). The hook makes the writer's batch write return an error, the same path a disk error
//! takes, either opaque or as the I/O error sled reports, which makes the writer reopen sled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat_body, client, metric_value, MockUpstream, TestProxy};
use serde_json::Value;

#[tokio::test]
async fn a_store_that_cannot_write_degrades_health_drops_counted_spans_and_recovers() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");

    faults.fail_writes(u64::MAX);
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        proxy.call_traced(&format!("store-down-{i}"), stream).await;
    }
    let text = proxy
        .wait_metrics("three spans dropped for store errors", |t| {
            metric_value(
                t,
                "llm_tracer_captures_dropped_total{reason=\"store_error\"}",
            ) == Some(3.0)
        })
        .await;
    assert!(
        metric_value(&text, "llm_tracer_store_write_retries_total").unwrap() >= 2.0,
        "each failed batch was retried before being dropped:\n{text}"
    );
    assert!(metric_value(&text, "llm_tracer_store_errors_total").unwrap() >= 1.0);
    assert_eq!(
        metric_value(&text, "llm_tracer_store_healthy"),
        Some(0.0),
        "the store is reported unhealthy"
    );
    let (status, health) = proxy.get_json("/healthz").await;
    assert_eq!(status, 200, "healthz still answers");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["ok"], false);
    assert_eq!(health["captures_dropped"], 3);
    let (status, _) = proxy.get_json("/api/traces/store-down-0").await;
    assert_eq!(status, 404, "a dropped span is counted, not half-stored");

    // Writes work again: the next span is stored and health recovers without a restart.
    faults.heal();
    proxy.call_traced("store-back", true).await;
    let trace = proxy.wait_for_trace("store-back", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(
        health["status"], "ok",
        "health recovers by itself: {health}"
    );
    let text = proxy.metrics_text().await;
    assert_eq!(metric_value(&text, "llm_tracer_store_healthy"), Some(1.0));
    assert_eq!(
        metric_value(&text, "llm_tracer_spans_captured_total"),
        Some(1.0),
        "every call is stored or counted as dropped, exactly once"
    );
}

/// sled, after an I/O error (a full disk), fails every later write until the store is reopened.
/// The writer reopens it (at most every 2 s, once the disk has room) and stored data survives.
/// The error is injected as sled reports it; the store on disk is healthy, so the reopen works.
#[tokio::test]
async fn after_store_io_errors_the_writer_reopens_the_store_and_nothing_stored_is_lost() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    proxy.call_traced("before-io-errors", false).await;
    proxy.wait_for_trace("before-io-errors", 1).await;

    faults.fail_writes_with_io_errors(u64::MAX);
    let mut n = 0;
    let text = loop {
        n += 1;
        proxy
            .call_traced(&format!("io-error-{n}"), n % 2 == 0)
            .await;
        let text = proxy.metrics_text().await;
        if metric_value(&text, "llm_tracer_store_reopens_total") >= Some(1.0) {
            break text;
        }
        assert!(n < 200, "the writer never reopened the store:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric_value(&text, "llm_tracer_store_reopen_failures_total"),
        Some(0.0)
    );
    assert_eq!(metric_value(&text, "llm_tracer_store_healthy"), Some(0.0));
    let (status, trace) = proxy.get_json("/api/traces/before-io-errors").await;
    assert_eq!(status, 200, "reads work on the reopened store: {trace}");

    faults.heal();
    proxy.call_traced("after-reopen", true).await;
    let trace = proxy.wait_for_trace("after-reopen", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(health["status"], "ok", "{health}");
    let (status, _) = proxy.get_json("/api/traces/before-io-errors").await;
    assert_eq!(
        status, 200,
        "what was stored before the errors is still there"
    );
    // Calls spooled while the store failed are replayed after the heal, possibly after
    // "after-reopen" was written: the count is read once the spool and the queue are empty.
    let text = proxy
        .wait_metrics("the spool and the queue drained", |t| {
            metric_value(t, "llm_tracer_spool_bytes") == Some(0.0)
                && metric_value(t, "llm_tracer_queue_length") == Some(0.0)
        })
        .await;
    let dropped = metric_value(
        &text,
        "llm_tracer_captures_dropped_total{reason=\"store_error\"}",
    )
    .unwrap_or(0.0);
    let captured = metric_value(&text, "llm_tracer_spans_captured_total").unwrap_or(0.0);
    assert_eq!(
        dropped + captured,
        n as f64 + 2.0,
        "every call is stored or counted as dropped, exactly once:\n{text}"
    );
}

#[tokio::test]
async fn a_write_that_fails_once_is_retried_and_nothing_is_lost() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    faults.fail_writes(1);
    proxy.call_traced("store-blip", false).await;
    let trace: Value = proxy.wait_for_trace("store-blip", 1).await;
    assert_eq!(
        trace["spans"][0]["status"], "ok",
        "the retry stored the span"
    );
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&text, "llm_tracer_store_write_retries_total"),
        Some(1.0),
        "one retry was needed:\n{text}"
    );
    assert_eq!(
        common::metric_family_sum(&text, "llm_tracer_captures_dropped_total"),
        0.0,
        "nothing was dropped"
    );
    // A stored retry leaves the store healthy. The writer says so once its whole batch is done,
    // a moment after the span is readable (longer when the low-priority writer waits for a CPU).
    proxy.wait_health("ok").await;
}

/// `POST /api/spans` of one app-side span in trace `trace_id`.
async fn ingest_one_span(proxy: &TestProxy, trace_id: &str) -> reqwest::Result<reqwest::Response> {
    client()
        .post(proxy.api("/api/spans"))
        .json(&serde_json::json!([{
            "trace_id": trace_id, "span_id": "00000000000000ab", "name": "step",
            "kind": "chain", "start_time": "2026-11-27T10:00:00Z", "end_time": "2026-11-27T10:00:01Z"
        }]))
        .send()
        .await
}

/// Ingest while writes are paused: `507 store_disk_full`, and the message names the key.
async fn ingest_is_refused_for_disk_space(proxy: &TestProxy, trace_id: &str) {
    let rsp = ingest_one_span(proxy, trace_id).await.unwrap();
    assert_refused_for_disk_space(rsp).await;
}

async fn assert_refused_for_disk_space(rsp: reqwest::Response) {
    assert_eq!(rsp.status(), 507);
    let body: Value = rsp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_disk_full", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("store_min_free_bytes"),
        "the message names the key: {message}"
    );
}

/// The free-space guard through the API, on any machine: a threshold above what any disk has
/// free refuses every write. Traffic is untouched, the writer's refused batch is counted (not
/// retried), ingest answers 507 `store_disk_full` naming the key, `/healthz` says why, and
/// queries still answer from what is stored.
#[tokio::test]
async fn below_store_min_free_bytes_writes_pause_ingest_is_507_and_traffic_flows() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&tmp.path().join("data"), &upstream.url());
    config.store_min_free_bytes = 1 << 50;
    let proxy = TestProxy::start_with(config).await;

    proxy.call_traced("while-paused", true).await;
    let text = proxy
        .wait_metrics("the refused batch is counted", |t| {
            metric_value(t, "llm_tracer_store_errors_total") >= Some(1.0)
        })
        .await;
    assert_eq!(
        metric_value(&text, "llm_tracer_store_write_retries_total"),
        Some(0.0),
        "a full disk is not retried:\n{text}"
    );
    assert_eq!(metric_value(&text, "llm_tracer_store_healthy"), Some(0.0));
    assert!(common::metric_family_sum(&text, "llm_tracer_captures_dropped_total") >= 1.0);
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["state"], "disk_full", "{health}");

    ingest_is_refused_for_disk_space(&proxy, "ingest-paused").await;
    let (status, page) = proxy.get_json("/api/traces").await;
    assert_eq!(status, 200, "queries still answer: {page}");
    assert_eq!(page["traces"].as_array().map(Vec::len), Some(0), "{page}");
}

/// A real, small disk, where the machine allows mounting a tmpfs (root with CAP_SYS_ADMIN;
/// otherwise the test says so on stderr and checks nothing). The store fills it until less than
/// `store_min_free_bytes` is free: writes pause (sled never meets ENOSPC, where it can fail for
/// good or hang), traffic keeps flowing, health says degraded with `store.state` `disk_full`,
/// the lost spans are counted, ingest answers 507; once space is freed (a ballast file written
/// before the store filled the disk is deleted) writes resume by themselves, health is ok again
/// and new spans are stored and readable, with no restart; shutdown still finishes.
#[test]
fn a_nearly_full_disk_pauses_writes_never_touches_traffic_and_resumes_when_space_is_freed() {
    // Its own runtime, shut down with a bound (as the binary bounds its own): a store call stuck
    // in the blocking pool must not hold the test forever. A failed assertion must not skip
    // that bound either: catch it, shut down, then re-raise.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(nearly_full_disk())
    }));
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn nearly_full_disk() {
    const MIN_FREE: u64 = 16 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_mount) = common::mount(&["-t", "tmpfs", "-o", "size=40m", "tmpfs"], &mnt) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let mut config = common::test_config(&mnt.join("data"), &upstream.url());
    config.queue_capacity = 16;
    config.store_min_free_bytes = MIN_FREE;
    let mut proxy = TestProxy::start_with(config).await;

    // Calls in small bursts, each followed by a wait for the writer to catch up (it runs at
    // idle priority and may be slow on a loaded machine), until the writes pause. Bounded in
    // calls and time.
    let big = "a".repeat(60_000);
    let mut health = serde_json::Value::Null;
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(150);
    'fill: for i in 0..600 {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_body("gpt-4o-mini", &big, i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(
            rsp.status(),
            200,
            "call {i}: a full disk never fails a call"
        );
        let body = rsp.text().await.unwrap();
        assert!(body.contains("Mock"), "call {i}: the answer arrives");
        if i % 4 != 3 {
            continue;
        }
        loop {
            health = proxy.get_json("/healthz").await.1;
            if health["store"]["state"] == "disk_full" {
                // sled frees space by itself too (a superseded blob file is deleted once its log
                // segment closes), so the pause can lift before the next look: then fill on.
                let rsp = ingest_one_span(&proxy, "ingest-while-full").await.unwrap();
                if rsp.status() == 507 {
                    refused = Some(rsp);
                    break 'fill;
                }
                break;
            }
            if health["queue"]["length"] == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(Instant::now() < deadline, "writes never paused: {health}");
    }
    let text = proxy.metrics_text().await;
    assert_eq!(health["status"], "degraded", "{health}\n{text}");
    assert_eq!(health["store"]["state"], "disk_full", "{health}");
    assert_eq!(metric_value(&text, "llm_tracer_store_healthy"), Some(0.0));
    let dropped = common::metric_family_sum(&text, "llm_tracer_captures_dropped_total");
    assert!(
        dropped > 0.0,
        "the captures not stored are counted:\n{text}"
    );
    let free = rustix::fs::statvfs(&mnt)
        .map(|st| st.f_bavail * st.f_frsize)
        .unwrap();
    eprintln!("writes paused with {free} bytes free (store_min_free_bytes {MIN_FREE})");
    assert!(
        free > 0,
        "the pause came before the disk was full (sled never met ENOSPC)"
    );

    // Ingest said why nothing is written, with a 507; a call made now is still forwarded.
    assert_refused_for_disk_space(refused.expect("ingest was refused while writes paused")).await;
    proxy.call_traced("while-full", false).await;

    // Free space: the ballast goes and the filesystem grows (an operator cleaning up and
    // resizing). Writes resume by themselves, no restart.
    std::fs::remove_file(&ballast).unwrap();
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(grown, "remount the tmpfs larger");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    let stored = loop {
        n += 1;
        let trace = format!("after-space-{n}");
        proxy.call_traced(&trace, n % 2 == 0).await;
        let (status, _) = proxy.get_json(&format!("/api/traces/{trace}")).await;
        let (_, health) = proxy.get_json("/healthz").await;
        if status == 200 && health["status"] == "ok" {
            assert_eq!(health["store"]["state"], "open", "{health}");
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed after space was freed: {health}\n{}",
            proxy.metrics_text().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let text = proxy.metrics_text().await;
    assert_eq!(metric_value(&text, "llm_tracer_store_healthy"), Some(1.0));
    // sled never met the full disk: no write failed inside it, so nothing was retried or
    // reopened (a refused write is neither).
    assert_eq!(
        metric_value(&text, "llm_tracer_store_write_retries_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "llm_tracer_store_reopens_total"),
        Some(0.0),
        "{text}"
    );
    let (status, trace) = proxy.get_json(&format!("/api/traces/{stored}")).await;
    assert_eq!(status, 200);
    assert_eq!(trace["spans"].as_array().map(Vec::len), Some(1), "{trace}");

    tokio::time::timeout(Duration::from_secs(90), proxy.stop())
        .await
        .expect("shutdown finishes after a nearly full disk");
}

#[tokio::test]
async fn a_store_write_that_hangs_degrades_health_until_it_finishes() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let faults = proxy.running.as_ref().unwrap().faults.clone();
    faults.stall_writes(); // the write blocks, as sled does on a full disk
    proxy.call_traced("store-hung", false).await;
    let text = proxy
        .wait_metrics("the stalled write is noticed", |t| {
            metric_value(t, "llm_tracer_store_stalls_total") == Some(1.0)
        })
        .await;
    assert_eq!(metric_value(&text, "llm_tracer_store_healthy"), Some(0.0));
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(
        health["status"], "degraded",
        "a hung write is not healthy: {health}"
    );
    faults.heal();
    let trace = proxy.wait_for_trace("store-hung", 1).await;
    assert_eq!(
        trace["spans"][0]["status"], "ok",
        "the write finished and stored the span"
    );
    // The span is readable as soon as sled has it; the writer marks the store healthy just
    // after (it runs at idle priority, so on a loaded machine that can take a moment).
    proxy.wait_health("ok").await;
}

#[tokio::test]
async fn a_store_still_opening_holds_up_neither_start_up_nor_traffic_and_loses_no_capture() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path(), &upstream.url());
    // What recovering a large store's log does to the first open.
    let delay = Duration::from_secs(5);
    config.store_open_delay = delay;
    let started = Instant::now();
    let proxy = TestProxy::start_with(config).await;
    assert!(
        started.elapsed() < delay,
        "start-up returned before the store was open"
    );

    proxy.call_traced("while-opening", false).await;
    proxy.call_traced("while-opening-stream", true).await;
    let (status, health) = proxy.get_json("/healthz").await;
    assert_eq!(status, 200, "alive while the store opens");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["store"]["state"], "opening");
    assert!(
        started.elapsed() < delay,
        "all of the above before the store opened"
    );
    // An ingest call and a query made meanwhile wait for the open (up to 30 s; then 503
    // store_opening, see `backend`'s unit test) and are answered.
    let ingest = ingest_one_span(&proxy, "ingested-while-opening");
    let (ingested, (status, body)) = tokio::join!(ingest, proxy.get_json("/api/traces"));
    assert_eq!(status, 200, "{body}");
    let ingested = ingested.unwrap();
    assert!(
        ingested.status().is_success(),
        "ingest waits for the open: {}",
        ingested.status()
    );
    assert!(
        started.elapsed() >= delay,
        "answered once the store was open"
    );
    proxy.wait_for_trace("ingested-while-opening", 1).await;

    // Once open, the calls made meanwhile are stored: none was lost waiting.
    for trace in ["while-opening", "while-opening-stream"] {
        let stored = proxy.wait_for_trace(trace, 1).await;
        assert_eq!(stored["spans"][0]["status"], "ok");
    }
    let (_, health) = proxy.get_json("/healthz").await;
    assert_eq!(health["store"]["state"], "open");
    assert_eq!(health["status"], "ok");
    let text = proxy.metrics_text().await;
    assert_eq!(
        common::metric_family_sum(&text, "llm_tracer_captures_dropped_total"),
        0.0
    );
}

#[tokio::test]
async fn a_data_dir_another_server_holds_is_still_a_start_up_error() {
    let upstream = MockUpstream::start().await.unwrap();
    let first = TestProxy::start(&upstream.url()).await;
    let config = common::test_config(&first.dir, &upstream.url());
    common::install_crypto();
    let started = Instant::now();
    let Err(e) = llm_tracer::app::start(config).await else {
        panic!("a second server on the same data_dir must not start");
    };
    let message = e.to_string();
    assert!(
        message.contains("data_dir") && message.contains("lock"),
        "the error names the key and the cause: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "reported, not hung"
    );
    // The first server is untouched.
    first.call_traced("first-still-serving", false).await;
    first.wait_for_trace("first-still-serving", 1).await;
}

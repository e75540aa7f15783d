//! The real binary: start-up errors name the key; `serve` prints its addresses and exits 0 on
//! SIGTERM after storing what it captured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{process::Stdio, time::Duration};

use common::{bin, chat_body, client, spawn_served, MockUpstream};

#[tokio::test]
async fn a_typo_in_the_config_stops_start_up_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, "lissten = \"127.0.0.1:0\"\n").unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad config exits with status 2"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lissten"),
        "stderr names the unknown key: {stderr}"
    );

    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("LLM_TRACER_MAX_CAPTURE_BYTES", "a lot")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_capture_bytes") && stderr.contains("LLM_TRACER_MAX_CAPTURE_BYTES"),
        "a bad env value names the key and the variable: {stderr}"
    );
}

/// `serve` on 127.0.0.1:0 (both listeners) with its store in `data`, routed to `upstream` if
/// given; stderr discarded.
async fn serve(upstream: Option<&str>, data: &std::path::Path) -> common::Served {
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    if let Some(upstream) = upstream {
        cmd.arg("--upstream").arg(upstream);
    }
    cmd.arg("--data-dir").arg(data).stderr(Stdio::null());
    spawn_served(cmd).await
}

#[tokio::test]
async fn serve_prints_its_addresses_and_exits_cleanly_on_sigterm() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut served = serve(Some(&upstream.url()), &tmp.path().join("data")).await;
    assert!(
        served.proxy.starts_with("http://") && served.admin.starts_with("http://"),
        "plain listeners print http:// URLs"
    );
    let rsp = client()
        .post(format!("{}/v1/chat/completions", served.proxy))
        .header("x-tracer-trace-id", "cli-1")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.bytes().await.unwrap();

    let status = served.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");

    // Reopen the store with a second process: the call made before SIGTERM was stored.
    let mut reopened = serve(None, &tmp.path().join("data")).await;
    let rsp = client()
        .get(format!("{}/api/traces/cli-1", reopened.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rsp.status(),
        200,
        "the span captured before SIGTERM was flushed to the store"
    );
    reopened.child.kill().await.unwrap();
}

/// Span ids count up within a process; a restarted proxy must not count from where the last one
/// started, or its spans would reuse ids already in the store (and a re-sent id moves the span).
#[tokio::test]
async fn a_restarted_proxy_mints_span_ids_far_from_the_last_runs() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut minted = Vec::new();
    for run in ["restart-a", "restart-b"] {
        let mut served = serve(Some(&upstream.url()), &tmp.path().join("data")).await;
        let rsp = client()
            .post(format!("{}/v1/chat/completions", served.proxy))
            .header("x-tracer-trace-id", run)
            .json(&chat_body("gpt-4o-mini", "hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let span_id = rsp.headers()["x-tracer-span-id"]
            .to_str()
            .unwrap()
            .to_string();
        rsp.bytes().await.unwrap();
        let status = served.terminate().await;
        assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
        minted.push(u64::from_str_radix(&span_id, 16).unwrap());
    }
    let gap = minted[0]
        .wrapping_sub(minted[1])
        .min(minted[1].wrapping_sub(minted[0]));
    assert!(
        gap > 1 << 32,
        "the second run's sequence starts elsewhere: {:016x} then {:016x}",
        minted[0],
        minted[1]
    );
    // Both spans are in the store, each in its own trace.
    let mut reopened = serve(None, &tmp.path().join("data")).await;
    for (run, span_id) in ["restart-a", "restart-b"].iter().zip(&minted) {
        let trace: serde_json::Value = client()
            .get(format!("{}/api/traces/{run}", reopened.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            trace["spans"][0]["span_id"],
            format!("{span_id:016x}").as_str(),
            "{run}: {trace}"
        );
    }
    reopened.child.kill().await.unwrap();
}

#[tokio::test]
async fn demo_serves_a_full_sample_trace_with_no_network() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(tmp.path().join("data"))
    .stderr(Stdio::null());
    let mut served = spawn_served(cmd).await;
    for _ in 0..1000 {
        let line = tokio::time::timeout(Duration::from_secs(30), served.lines.next_line())
            .await
            .expect("the demo reports its traffic")
            .unwrap()
            .expect("stdout stays open");
        if line.starts_with("demo: sent") {
            break;
        }
    }
    let admin = served.admin.clone();
    // "demo: sent" means sent, not stored: wait (bounded) until the agent trace is complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let trace: serde_json::Value = loop {
        let page: serde_json::Value = client()
            .get(format!("{admin}/api/traces?tag=agent"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(trace_id) = page["traces"][0]["trace_id"].as_str() {
            let trace: serde_json::Value = client()
                .get(format!("{admin}/api/traces/{trace_id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if trace["spans"].as_array().map_or(0, Vec::len) >= 4 {
                break trace;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent trace is listed with its four spans"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: Vec<&str> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["chain", "llm", "tool", "llm"],
        "the agent trace nests LLM and tool spans under a chain"
    );
    let root = trace["spans"][0]["span_id"].clone();
    for span in &trace["spans"].as_array().unwrap()[1..] {
        assert_eq!(
            span["parent_span_id"], root,
            "every child hangs off the chain span"
        );
    }
    assert_eq!(
        trace["spans"][3]["llm"]["stream"], true,
        "one LLM call is streamed"
    );
    assert!(trace["spans"][3]["llm"]["ttft_ms"].as_f64().is_some());
    let errors = loop {
        let errors: serde_json::Value = client()
            .get(format!("{admin}/api/traces?status=error"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = errors["traces"].as_array().map_or(0, Vec::len);
        if n >= 1 || std::time::Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(errors, 1, "the demo includes one failing call");
    served.child.kill().await.unwrap();
}

#[tokio::test]
async fn a_misspelt_llm_tracer_variable_stops_start_up() {
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("LLM_TRACER_MAX_CAPTURE_BYTE", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown LLM_TRACER_* variable is a start-up error"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LLM_TRACER_MAX_CAPTURE_BYTE"),
        "stderr names the variable: {stderr}"
    );
}

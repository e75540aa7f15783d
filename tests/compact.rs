//! `llm-tracer compact` through the real binary: a store that served traffic and lost most of
//! it to deletes is rewritten smaller, passes `check`, and serves the same answers; a running
//! server's store, a missing one and every interrupted state are handled as documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use serde_json::{json, Value};
use tokio::process::Command;

fn llm_tracer(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-tracer"));
    c.env_remove("RUST_LOG")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .kill_on_drop(true);
    c
}

async fn compact(dir: &Path) -> (Option<i32>, String) {
    let out = llm_tracer(&["compact"], dir).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                dir_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Every kept trace, as the API answers it, keyed by trace id.
async fn traces(proxy: &TestProxy, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let (status, body) = proxy.get_json(&format!("/api/traces/{id}")).await;
        assert_eq!(status, 200, "trace {id}: {body}");
        out.push(body);
    }
    out
}

/// A store with 3 proxied calls and 300 app-side spans of ~4 kB, of which 270 deleted.
async fn served_store(dir: &Path) -> (Vec<String>, Vec<Value>) {
    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start_with(test_config(dir, &upstream.url())).await;
    let mut kept = Vec::new();
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let id = format!("call-{i}");
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", &id)
            .json(&chat_body("gpt-4o-mini", "compact me", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        rsp.bytes().await.unwrap();
        proxy.wait_for_trace(&id, 1).await;
        kept.push(id);
    }
    for chunk in 0..10 {
        let spans: Vec<Value> = (0..30)
            .map(|j| {
                let i = chunk * 30 + j;
                json!({
                    "trace_id": format!("bulk-{i}"),
                    "span_id": format!("{:016x}", 0xb000 + i),
                    "name": "retrieve",
                    "kind": "retriever",
                    "start_time": format!("2026-11-28T04:{:02}:00.{:06}Z", chunk, j),
                    "end_time": format!("2026-11-28T04:{:02}:01.{:06}Z", chunk, j),
                    "input": format!("document {i} ").repeat(400),
                })
            })
            .collect();
        let rsp = client()
            .post(proxy.api("/api/spans"))
            .json(&spans)
            .send()
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "{}", rsp.text().await.unwrap());
    }
    proxy.wait_for_trace("bulk-299", 1).await;
    for i in 0..300 {
        let id = format!("bulk-{i}");
        if i % 10 == 0 {
            kept.push(id);
            continue;
        }
        let rsp = client()
            .delete(proxy.api(&format!("/api/traces/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 204, "delete {id}");
    }
    let answers = traces(&proxy, &kept).await;
    proxy.stop().await;
    (kept, answers)
}

#[tokio::test]
async fn compact_shrinks_a_store_that_serves_the_same_answers_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (kept, before_answers) = served_store(&dir).await;
    let before = dir_bytes(&dir);

    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("compacted") && stderr.contains("MiB on disk before"),
        "the sizes are reported: {stderr}"
    );
    let after = dir_bytes(&dir);
    assert!(
        after < before,
        "the files shrink: {before} bytes before, {after} after"
    );
    assert!(!sibling(&dir, ".compacting").exists());
    assert!(!sibling(&dir, ".pre-compact").exists());

    let out = llm_tracer(&["check"], &dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the copy is consistent: {stdout}"
    );
    assert!(
        stdout.contains(&format!("{} traces", kept.len())),
        "only the kept traces: {stdout}"
    );

    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start_with(test_config(&dir, &upstream.url())).await;
    assert_eq!(
        traces(&proxy, &kept).await,
        before_answers,
        "every kept trace reads back the same"
    );
    let (status, _) = proxy.get_json("/api/traces/bulk-1").await;
    assert_eq!(status, 404, "a deleted trace stays deleted");
    let (_, list) = proxy.get_json("/api/traces?limit=1000&q=document").await;
    assert_eq!(
        list["traces"].as_array().map(Vec::len),
        Some(30),
        "the full-text index came along: {list}"
    );
    // The compacted store takes writes.
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "after-compact")
        .json(&chat_body("gpt-4o-mini", "still here", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    proxy.wait_for_trace("after-compact", 1).await;

    // While the server runs, the store is locked: refused, untouched.
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is locked") && stderr.contains("Stop the server first"),
        "{stderr}"
    );
    assert!(!sibling(&dir, ".compacting").exists());
    proxy.stop().await;
}

#[tokio::test]
async fn compact_finishes_or_undoes_what_an_interrupted_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (kept, answers) = served_store(&dir).await;
    let (copy, previous) = (sibling(&dir, ".compacting"), sibling(&dir, ".pre-compact"));
    let reopen_same = |dir: PathBuf, kept: Vec<String>, answers: Vec<Value>| async move {
        let upstream = MockUpstream::start().await.unwrap();
        let mut proxy = TestProxy::start_with(test_config(&dir, &upstream.url())).await;
        assert_eq!(traces(&proxy, &kept).await, answers);
        proxy.stop().await;
    };

    // An unfinished copy (the store untouched): removed, then the run goes on.
    std::fs::create_dir_all(copy.join("blobs")).unwrap();
    std::fs::write(copy.join("db"), b"half a copy").unwrap();
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!copy.exists());
    reopen_same(dir.clone(), kept.clone(), answers.clone()).await;

    // Stopped after moving the store aside, before the copy was complete: the server refuses
    // to start (it would create an empty store), and compact puts the store back.
    std::fs::rename(&dir, &previous).unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let err = llm_tracer_app_error(&dir, &upstream.url()).await;
    assert!(
        err.contains("data_dir") && err.contains("compact` was interrupted"),
        "{err}"
    );
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("restored"), "{stderr}");
    assert!(!previous.exists());
    reopen_same(dir.clone(), kept.clone(), answers.clone()).await;

    // Stopped between the renames with a complete copy: compact puts the copy in place.
    copy_dir(&dir, &copy);
    std::fs::write(copy.join("llm-tracer-compact-complete"), b"").unwrap();
    std::fs::rename(&dir, &previous).unwrap();
    let (code, stderr) = compact(&dir).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("finished an interrupted compaction"),
        "{stderr}"
    );
    assert!(!previous.exists() && !copy.exists());
    assert!(!dir.join("llm-tracer-compact-complete").exists());
    reopen_same(dir.clone(), kept, answers).await;

    // Nothing to compact.
    let (code, stderr) = compact(&tmp.path().join("nothing-here")).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("data_dir") && stderr.contains("not a directory"),
        "{stderr}"
    );
}

/// The start-up error of a server on `dir`.
async fn llm_tracer_app_error(dir: &Path, upstream: &str) -> String {
    common::install_crypto();
    match llm_tracer::app::start(test_config(dir, upstream)).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("the server started")
        }
        Err(e) => e.to_string(),
    }
}

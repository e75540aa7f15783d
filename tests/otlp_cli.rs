//! `llm-tracer export` / `import`: a round trip through a file (jsonl and OTLP/JSON) gives the
//! same traces in another store; a data dir in use by a running server is refused naming the
//! lock; `--admin` goes through the running server instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use serde_json::{json, Value};
use tokio::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-tracer"));
    c.env_remove("RUST_LOG")
        .env_remove("LLM_TRACER_ADMIN_TOKEN")
        .kill_on_drop(true);
    c
}

const TRACES: [&str; 2] = ["rt-1", "6bf92f3577b34da6a3ce929d0e0e4736"];

/// Two traces: one with a free-form id holding an app span and a call under it, one started by
/// a `traceparent` holding a streamed call.
async fn make_traffic(proxy: &TestProxy) {
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&json!([{
            "trace_id": "rt-1", "span_id": "step-1", "name": "plan", "kind": "agent",
            "start_time": "2026-11-27T06:00:00.123456Z", "end_time": "2026-11-27T06:00:01Z",
            "tags": ["x"], "metadata": {"k": "v", "n": 3}, "output": {"plan": [1, 2]}
        }]))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "rt-1")
        .header("x-tracer-parent-span-id", "step-1")
        .header("x-tracer-session-id", "sess-1")
        .header("x-tracer-meta-team", "search")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.bytes().await.unwrap();
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", TRACES[1]),
        )
        .json(&chat_body("gpt-4o-mini", "stream please", true))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.bytes().await.unwrap();
}

async fn traces_of(proxy: &TestProxy) -> Vec<Value> {
    let mut out = Vec::new();
    for (t, n) in TRACES.iter().zip([2, 1]) {
        let trace = proxy.wait_for_trace(t, n).await;
        out.push(trace["spans"].clone());
    }
    out
}

async fn run(args: &[&str], dir: Option<&Path>) -> (i32, String) {
    let mut c = bin();
    c.args(args);
    if let Some(d) = dir {
        c.arg("--data-dir").arg(d);
    }
    let out = c.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn export_then_import_gives_the_same_traces_in_another_store() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut source = TestProxy::start(&upstream.url()).await;
    make_traffic(&source).await;
    let want = traces_of(&source).await;
    source.stop().await; // the store is opened exclusively by export

    let tmp = tempfile::tempdir().unwrap();
    for format in ["jsonl", "otlp-json"] {
        let file = tmp.path().join(format!("spans.{format}"));
        let (code, stderr) = run(
            &[
                "export",
                "--format",
                format,
                "--out",
                file.to_str().unwrap(),
            ],
            Some(&source.dir),
        )
        .await;
        assert_eq!(code, 0, "export succeeds: {stderr}");
        assert!(
            stderr.contains("exported 3 spans in 2 traces"),
            "a non-terminal stderr gets the counts: {stderr}"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        if format == "otlp-json" {
            let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert!(
                first["resourceSpans"].is_array(),
                "one OTLP/JSON request per line"
            );
        }

        let target = tmp.path().join(format!("store-{format}"));
        let (code, stderr) = run(&["import", file.to_str().unwrap()], Some(&target)).await;
        assert_eq!(code, 0, "import succeeds: {stderr}");
        assert!(stderr.contains("imported 3 spans in 2 traces"), "{stderr}");

        let mut copy = TestProxy::start_with(test_config(&target, &upstream.url())).await;
        let got = traces_of(&copy).await;
        assert_eq!(
            got, want,
            "{format}: the imported traces equal the exported ones"
        );
        copy.stop().await;
    }

    // --since filters by trace start: nothing started in the future.
    let file = tmp.path().join("none.jsonl");
    let (code, stderr) = run(
        &[
            "export",
            "--since",
            "2999-01-01T00:00:00Z",
            "--out",
            file.to_str().unwrap(),
        ],
        Some(&source.dir),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "");

    let (code, stderr) = run(&["export", "--since", "yesterday"], Some(&source.dir)).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--since"),
        "a bad time names the flag: {stderr}"
    );

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"not\": \"a span\"}\n").unwrap();
    let (code, stderr) = run(
        &["import", bad.to_str().unwrap()],
        Some(&tmp.path().join("s3")),
    )
    .await;
    assert_eq!(code, 1, "refused lines make import exit 1: {stderr}");
    assert!(stderr.contains("line 1"), "the bad line is named: {stderr}");
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused_naming_the_lock_and_admin_goes_through_the_server() {
    let upstream = MockUpstream::start().await.unwrap();
    let source = TestProxy::start(&upstream.url()).await;
    make_traffic(&source).await;
    let want = traces_of(&source).await;

    let (code, stderr) = run(&["export"], Some(&source.dir)).await;
    assert_eq!(code, 2, "the store is locked by the running server");
    assert!(
        stderr.contains("locked") && stderr.contains("--admin"),
        "the error names the lock and the way out: {stderr}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("spans.jsonl");
    let (code, stderr) = run(
        &[
            "export",
            "--admin",
            &source.admin,
            "--out",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("exported 3 spans in 2 traces"), "{stderr}");

    let target = TestProxy::start(&upstream.url()).await;
    let (code, stderr) = run(
        &["import", file.to_str().unwrap(), "--admin", &target.admin],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let got = traces_of(&target).await;
    assert_eq!(
        got, want,
        "import through the admin API gives the same traces"
    );
}

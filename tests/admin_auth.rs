//! Admin access control through the real binary: a non-loopback admin listener without
//! `admin_token` refuses to start; with one, every route but `/healthz` and the static UI needs
//! `Authorization: Bearer <token>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{process::Stdio, time::Duration};

use common::{chat_body, client, MockUpstream};
use tokio::process::Command;

const TOKEN: &str = "test-admin-token-6f1d2c9a8b7e";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-tracer"));
    c.env_remove("RUST_LOG")
        .env_remove("LLM_TRACER_ADMIN_TOKEN")
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn a_non_loopback_admin_listener_without_a_token_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an exposed admin listener without a token is a start-up error"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin_listen") && stderr.contains("admin_token"),
        "stderr names admin_listen and admin_token: {stderr}"
    );
}

#[tokio::test]
async fn with_a_token_the_admin_api_needs_the_bearer_token_except_healthz() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "0.0.0.0:0",
        "--batch-interval-ms",
        "5",
        "--upstream",
    ])
    .arg(upstream.url())
    .arg("--data-dir")
    .arg(tmp.path().join("data"))
    .env("LLM_TRACER_ADMIN_TOKEN", TOKEN)
    .stderr(Stdio::piped());
    let served = common::spawn_served(cmd).await;
    let admin_port = served.admin.rsplit(':').next().unwrap().to_string();
    let (proxy, admin) = (
        served.proxy.clone(),
        format!("http://127.0.0.1:{admin_port}"),
    );
    let child = served.child;

    let rsp = client()
        .post(format!("{proxy}/v1/chat/completions"))
        .header("x-tracer-trace-id", "auth-1")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "the proxy listener needs no admin token");
    rsp.bytes().await.unwrap();

    let health = client()
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "/healthz stays open for probes");
    let ui = client().get(format!("{admin}/")).send().await.unwrap();
    assert_eq!(
        ui.status(),
        200,
        "the static UI page loads, then asks for the token"
    );

    for path in [
        "/api/traces",
        "/api/traces/auth-1",
        "/metrics",
        "/api/stats",
    ] {
        let rsp = client().get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(rsp.status(), 401, "{path} without a token is refused");
        let body: serde_json::Value = rsp.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "unauthorized",
            "the refusal is the API's JSON error shape"
        );
        let rsp = client()
            .get(format!("{admin}{path}"))
            .bearer_auth("test-admin-token-6f1d2c9a8b7f")
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 401, "{path} with a wrong token is refused");
    }
    let delete = client()
        .delete(format!("{admin}/api/traces/auth-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        delete.status(),
        401,
        "a delete without the token is refused"
    );

    // The trace is written within batch_interval_ms; the deadline only guards against a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rsp = client()
            .get(format!("{admin}/api/traces/auth-1"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if rsp.status() == 200 {
            break;
        }
        assert_eq!(rsp.status(), 404, "the right token is accepted");
        assert!(
            std::time::Instant::now() < deadline,
            "the trace was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = client()
        .get(format!("{admin}/api/traces"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200, "the right token opens the API");

    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the binary exits after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(TOKEN),
        "the token never appears in the logs: {stderr}"
    );
}

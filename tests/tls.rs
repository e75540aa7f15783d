//! https upstreams: a private CA trusted through `ca_file` works; without it the call is refused
//! (verification is on by default) with a clear error span; `insecure_skip_verify` on a route
//! accepts a self-signed upstream, and says so loudly at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat_body, client, make_certs, test_config, MockUpstream, TestProxy};

#[tokio::test]
async fn an_https_upstream_signed_by_a_private_ca_is_trusted_through_ca_file() {
    common::install_crypto();
    let (ca, leaf, key) = make_certs();
    let upstream = MockUpstream::start_tls(&leaf, &key).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca_path = tmp.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let mut config = test_config(&tmp.path().join("data"), &upstream.url());
    config.routes[0].ca_file = Some(ca_path);
    let proxy = TestProxy::start_with(config).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "tls-ok")
        .json(&chat_body("gpt-4o-mini", "over tls", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "the private CA in ca_file is trusted");
    let body = rsp.bytes().await.unwrap();
    assert_eq!(&body[..], &upstream.responses()[0][..]);
    let trace = proxy.wait_for_trace("tls-ok", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");
    assert!(trace["spans"][0]["http"]["upstream"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
}

#[tokio::test]
async fn without_ca_file_the_same_upstream_is_refused_with_a_clear_error_span() {
    common::install_crypto();
    let (_ca, leaf, key) = make_certs();
    let upstream = MockUpstream::start_tls(&leaf, &key).await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "tls-refused")
        .json(&chat_body("gpt-4o-mini", "over tls", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 502, "an untrusted certificate is refused");
    assert_eq!(
        upstream.hits(),
        0,
        "no request reached the untrusted upstream"
    );
    let trace = proxy.wait_for_trace("tls-refused", 1).await;
    let span = &trace["spans"][0];
    assert_eq!(span["status"], "error");
    let message = span["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("certificate"),
        "the error says the certificate was the problem: {message}"
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_upstream_and_warns_at_start_up() {
    common::install_crypto();
    let (_ca, leaf, key) = make_certs();
    let upstream = MockUpstream::start_tls(&leaf, &key).await.unwrap();

    // In-process: the same untrusted upstream works once the route opts out of verification.
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(&tmp.path().join("data"), &upstream.url());
    assert!(
        !config.routes[0].insecure_skip_verify,
        "verification is on by default"
    );
    config.routes[0].insecure_skip_verify = true;
    let proxy = TestProxy::start_with(config).await;
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "tls-insecure")
        .json(&chat_body("gpt-4o-mini", "no verification", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rsp.status(),
        200,
        "insecure_skip_verify accepts any certificate"
    );
    let trace = proxy.wait_for_trace("tls-insecure", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");

    // The binary warns once per route at start-up.
    let mut cmd = common::bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--insecure-skip-verify",
        "--upstream",
    ])
    .arg(upstream.url())
    .arg("--data-dir")
    .arg(tmp.path().join("data2"))
    .stderr(std::process::Stdio::piped());
    let mut served = common::spawn_served(cmd).await;
    let rsp = client()
        .post(format!("{}/v1/chat/completions", served.proxy))
        .json(&chat_body("gpt-4o-mini", "no verification", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(served.terminate().await.code(), Some(0));
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    served
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(
        stderr
            .matches("TLS certificate verification is OFF")
            .count(),
        1,
        "one loud warning for the one insecure route: {stderr}"
    );
    assert!(stderr.contains("WARN"), "at warn level: {stderr}");
}

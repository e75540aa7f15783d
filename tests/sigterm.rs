//! SIGTERM with 50 streams in flight, through the real binary: every stream completes for its
//! client, the process exits 0, and all 50 spans are in the store afterwards (reopened, and
//! `llm-tracer check` finds it clean).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{bin, chat_body, client, spawn_served, test_config, MockUpstream, TestProxy};
use futures_util::StreamExt;

const STREAMS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_fifty_streams_in_flight_completes_them_all_and_stores_every_span() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
    ])
    .arg(upstream.url())
    .arg("--data-dir")
    .arg(&data)
    .stderr(Stdio::null());
    let mut served = spawn_served(cmd).await;

    // 50 streams, each held by the upstream before its end (x-mock-hold) until SIGTERM has
    // been sent, so all 50 are surely in flight when it arrives.
    let started = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        let url = format!("{}/v1/chat/completions", served.proxy);
        let started = started.clone();
        clients.push(tokio::spawn(async move {
            let rsp = client()
                .post(url)
                .header("x-tracer-trace-id", format!("sigterm-{i}"))
                .header("x-mock-hold", "1")
                .json(&chat_body(
                    "gpt-4o-mini",
                    "one two three four five six seven eight",
                    true,
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
            let mut stream = rsp.bytes_stream();
            let mut body = Vec::new();
            let first = stream.next().await.unwrap().unwrap();
            body.extend_from_slice(&first);
            started.fetch_add(1, Ordering::SeqCst);
            for _ in 0..10_000 {
                match stream.next().await {
                    Some(chunk) => body.extend_from_slice(&chunk.expect("the stream is not cut")),
                    None => break,
                }
            }
            String::from_utf8(body).unwrap()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) < STREAMS {
        assert!(Instant::now() < deadline, "all 50 streams start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    served.sigterm().await;
    // Shutdown has begun once the proxy stops accepting connections; then the upstream lets
    // the streams finish.
    let proxy_addr = served.proxy.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&proxy_addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy stops accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        clients.iter().all(|c| !c.is_finished()),
        "every stream was still in flight when shutdown began"
    );
    for _ in 0..STREAMS {
        upstream.release(); // one held stream each
    }
    let status = served.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM with streams in flight exits 0"
    );
    for (i, c) in clients.into_iter().enumerate() {
        let body = c.await.unwrap();
        assert!(
            body.matches("\"content\":").count() >= 8,
            "stream {i} carried its content"
        );
        assert!(
            body.trim_end().ends_with("data: [DONE]"),
            "stream {i} completed for its client: {body}"
        );
    }

    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-tracer"))
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "the store left by SIGTERM is clean: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let reopened = TestProxy::start_with(test_config(&data, &upstream.url())).await;
    for i in 0..STREAMS {
        let (status, trace) = reopened.get_json(&format!("/api/traces/sigterm-{i}")).await;
        assert_eq!(status, 200, "span {i} was stored before exit");
        assert_eq!(
            trace["spans"][0]["status"], "ok",
            "stream {i} is not cancelled"
        );
    }
}

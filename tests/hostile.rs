//! Hostile clients: connection limits, header floods, slow clients, absurd admin query params.
//! Each gets a clear 4xx (JSON where the proxy answers itself) or a closed connection, never a
//! panic, hang or unbounded memory. (Invalid `traceparent`/`x-tracer-*` values: `propagation.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends `request` on a fresh connection and returns what came back until the server closed
/// the connection or 64 KiB arrived (bounded; the timeout is a hang guard).
async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything: ignore write errors.
    let _ = sock.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_secs(20), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server neither answered nor closed the connection"),
        }
        if out.len() > 65_536 || out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    out
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn header_floods_and_huge_headers_are_refused_and_the_proxy_keeps_serving() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    let mut many = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("x-flood-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let got = raw(addr, &many).await;
    assert_eq!(
        status_of(&got),
        Some(431),
        "500 headers are refused with 431: {}",
        String::from_utf8_lossy(&got)
    );

    let mut huge = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let got = raw(addr, &huge).await;
    assert!(
        got.is_empty() || status_of(&got) == Some(431),
        "a 1 MiB header value is refused (431) or the connection closed: {}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );

    let mut non_utf8 = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-tracer-trace-id: \xff\xfe\r\ntraceparent: 00-\xff-zz\r\nx-tracer-meta-k: \x80\r\nconnection: close\r\n\r\n".to_vec();
    non_utf8.extend_from_slice(b"");
    let got = raw(addr, &non_utf8).await;
    assert_eq!(
        status_of(&got),
        Some(200),
        "non-UTF-8 trace headers are ignored, the call goes through: {}",
        String::from_utf8_lossy(&got)
    );

    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("gpt-4o-mini", "after the flood", false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "the proxy still serves normal clients");
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_head_is_disconnected() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.header_read_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start_with(config).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    // Half a head, then nothing: the server must give up on it.
    let got = raw(addr, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await;
    assert!(
        got.is_empty() || status_of(&got) == Some(408),
        "a slow head is closed (or answered 408): {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(upstream.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn beyond_max_connections_new_clients_wait_for_a_free_slot() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.max_connections = 1;
    let proxy = TestProxy::start_with(config).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    // The one slot is taken by a keep-alive connection that has been served once (so it was
    // surely accepted) and stays open.
    let mut hog = TcpStream::connect(addr).await.unwrap();
    hog.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), hog.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&buf[..n]), Some(200));
    let url = proxy.url("/v1/chat/completions");
    let waiting = tokio::spawn(async move {
        client()
            .post(url)
            .json(&chat_body("gpt-4o-mini", "waiting", false))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection beyond max_connections is not served while the slot is taken"
    );
    drop(hog);
    let status = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting client is served once the slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "it waited; it was not refused");
}

#[tokio::test]
async fn absurd_admin_query_params_get_json_errors_naming_the_param() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;

    for (query, param) in [
        ("limit=1e99", "limit"),
        ("limit=99999999999999999999999999", "limit"),
        ("limit=-1", "limit"),
        ("since=99999999999999999999", "since"),
        ("until=not-a-time", "until"),
        ("status=%ff%fe", "status"),
        ("limit=1&limit=2", "limit"),
    ] {
        let (status, body) = proxy.get_json(&format!("/api/traces?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_param");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(param),
            "{query}: the message names {param}: {body}"
        );
    }

    let huge_cursor = "A".repeat(12_000);
    let (status, body) = proxy
        .get_json(&format!("/api/traces?cursor={huge_cursor}"))
        .await;
    assert_eq!(status, 400, "a huge cursor is malformed: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("cursor"));

    let long = format!("q={}", "x".repeat(40_000));
    let (status, body) = proxy.get_json(&format!("/api/traces?{long}")).await;
    assert_eq!(status, 414, "a 40 KB query string is refused: {body}");
    assert_eq!(body["error"]["code"], "uri_too_long", "as JSON: {body}");

    // 1 MB: over the listener's head limit, refused by the HTTP layer before any handler.
    let admin = proxy.running.as_ref().unwrap().admin_addr;
    let mut req = b"GET /api/traces?q=".to_vec();
    req.extend(std::iter::repeat_n(b'x', 1 << 20));
    req.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n");
    let got = raw(admin, &req).await;
    assert!(
        got.is_empty() || matches!(status_of(&got), Some(414 | 431)),
        "a 1 MB query string gets 414/431 or a closed connection: {}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );

    let (status, health): (u16, Value) = proxy.get_json("/healthz").await;
    assert_eq!(status, 200, "the admin listener still answers: {health}");
}

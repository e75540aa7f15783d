//! Hostile clients: connection limits, header floods (HTTP/1 and, frame by frame, HTTP/2: oversized
//! header lists, CONTINUATION floods, rapid resets), slow clients, absurd admin query params.
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

/// After an attack: a normal client's call still gets its 200.
async fn still_serves(proxy: &TestProxy, prompt: &str) {
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("gpt-4o-mini", prompt, false))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "the proxy still serves normal clients");
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

    still_serves(&proxy, "after the flood").await;
}

/// A proxy whose clients get `ms` to send a request head, its mock upstream and its data dir.
async fn proxy_with_head_timeout(ms: u64) -> (MockUpstream, tempfile::TempDir, TestProxy) {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.header_read_timeout = Duration::from_millis(ms);
    let proxy = TestProxy::start_with(config).await;
    (upstream, tmp, proxy)
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_head_is_disconnected() {
    let (upstream, _tmp, proxy) = proxy_with_head_timeout(300).await;
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

/// A client that connects and sends nothing, or only the start of the HTTP/2 preface, is
/// disconnected by the head timeout too (before it, hyper-util waited for the bytes that tell
/// HTTP/1 from HTTP/2 with no timer, and the connection held its slot until shutdown).
#[tokio::test]
async fn a_client_that_sends_nothing_or_half_a_preface_is_disconnected() {
    let (upstream, _tmp, proxy) = proxy_with_head_timeout(300).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;
    let silent_then_closed = |first: &'static [u8]| async move {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(first).await.unwrap();
        let what = format!("a connection that sent {first:?} (header_read_timeout 300 ms)");
        read_until_closed(&mut sock, &what).await;
    };
    tokio::join!(
        silent_then_closed(b""),
        silent_then_closed(b"PRI * HTTP/2"),
        silent_then_closed(b"P"),
    );
    still_serves(&proxy, "after the silent clients").await;
    assert_eq!(upstream.hits(), 1, "only still_serves' call went upstream");
}

/// The first-bytes deadline steps aside once an HTTP/2 client has sent its preface: a call that
/// takes longer than the head timeout, and a second one on the same connection, are served.
#[tokio::test]
async fn an_http2_connection_outlives_the_head_timeout_once_its_preface_is_in() {
    let (upstream, _tmp, proxy) = proxy_with_head_timeout(300).await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for delay_ms in ["1000", "0"] {
        let rsp = h2c
            .post(proxy.url("/v1/chat/completions"))
            .header("x-mock-delay-ms", delay_ms)
            .json(&chat_body("gpt-4o-mini", "h2 after the deadline", false))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.version(), reqwest::Version::HTTP_2);
        assert_eq!(rsp.status(), 200, "delay {delay_ms} ms");
        rsp.bytes().await.unwrap();
    }
    assert_eq!(upstream.hits(), 2);
}

/// A raw HTTP/1.1 chat completion request whose mock answer comes after `delay_ms`.
fn delayed_chat(delay_ms: u64, prompt: &str) -> String {
    let body = chat_body("gpt-4o-mini", prompt, false).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-mock-delay-ms: {delay_ms}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until the server closes `sock` (bounded: a hang guard, not a timing assertion) and
/// returns what came; `what` names the connection in the failure message.
async fn read_until_closed(sock: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "{what} was still open after 20 s");
    rest
}

/// Reads one `content-length` response from a kept-alive connection: (status, body).
async fn read_response(sock: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a response with a content-length");
            if got.len() >= end + 4 + length {
                let status = status_of(&got).expect("an HTTP/1.1 status line");
                return (status, got[end + 4..end + 4 + length].to_vec());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), sock.read(&mut buf))
            .await
            .expect("the server neither answered nor closed the connection")
            .unwrap();
        assert!(n > 0, "the server closed the connection mid-response");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The head timer is reset for each request of a keep-alive connection (vendor/hyper/PATCHED.md):
/// one that went off while a long request was served must not cut the next head short, and it
/// must still go off for a later head that never completes.
#[tokio::test]
async fn the_head_timeout_holds_on_every_request_of_a_keep_alive_connection() {
    // 1 s: room for the test to read one answer and send the next request on a busy machine.
    let (upstream, _tmp, proxy) = proxy_with_head_timeout(1000).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;
    let mut sock = TcpStream::connect(addr).await.unwrap();

    // 1. Served for 2.5 times the head timeout: the stopped head timer goes off meanwhile.
    sock.write_all(delayed_chat(2500, "slow").as_bytes())
        .await
        .unwrap();
    let (status, body) = read_response(&mut sock).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // 2. The next head on the same connection is read, not refused by that old deadline.
    sock.write_all(delayed_chat(0, "next").as_bytes())
        .await
        .unwrap();
    let (status, body) = read_response(&mut sock).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(answer["choices"].is_array(), "a chat answer: {answer}");
    // 3. Half a head, then nothing: the re-armed timer still closes the connection.
    sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let rest = read_until_closed(
        &mut sock,
        "a connection with half a head (header_read_timeout 1 s)",
    )
    .await;
    assert!(
        rest.is_empty() || status_of(&rest) == Some(408),
        "a slow head is closed (or answered 408): {}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(
        upstream.hits(),
        2,
        "only the two complete requests went upstream"
    );
}

/// A keep-alive connection left idle after its answer is closed by the head timeout: the timer
/// starts when the connection goes idle (vendor/hyper/PATCHED.md), also after a request that
/// outlasted the timeout, during which the stopped timer went off.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_by_the_head_timeout() {
    // 2 s: room for the test to send its second call after reading an answer on a busy machine.
    let (upstream, _tmp, proxy) = proxy_with_head_timeout(2000).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;
    let served_then_idle = |delay_ms: u64| async move {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(delayed_chat(delay_ms, "then idle").as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(&mut sock).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        // Going idle does not close the connection: the next call is served.
        sock.write_all(delayed_chat(0, "then idle").as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(&mut sock).await;
        assert_eq!(
            status,
            200,
            "a connection that just went idle is kept: {}",
            String::from_utf8_lossy(&body)
        );
        // Nothing more is sent: the server must close the connection by itself.
        let what =
            format!("an idle connection (first request {delay_ms} ms, header_read_timeout 2 s)");
        let rest = read_until_closed(&mut sock, &what).await;
        assert!(
            rest.is_empty() || status_of(&rest) == Some(408),
            "an idle connection is closed (or answered 408): {}",
            String::from_utf8_lossy(&rest)
        );
    };
    // 2.5 s: longer than the timeout, so the stopped timer goes off during the first call.
    tokio::join!(served_then_idle(0), served_then_idle(2500));
    assert_eq!(upstream.hits(), 4);
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

/// HTTP/2 over cleartext, by hand: the client preface, an empty SETTINGS frame, then `frames`.
mod h2raw {
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// `block` as one HEADERS frame (ending the stream) and CONTINUATION frames of at most
    /// 16,000 bytes (under the default max frame size), the last one ending the header block.
    pub fn header_frames(stream: u32, block: &[u8]) -> Vec<u8> {
        let pieces: Vec<&[u8]> = block.chunks(16_000).collect();
        let mut out = Vec::new();
        for (n, piece) in pieces.iter().enumerate() {
            let last = n + 1 == pieces.len();
            let flags = (END_STREAM * u8::from(n == 0)) | (END_HEADERS * u8::from(last));
            let kind = if n == 0 { HEADERS } else { CONTINUATION };
            out.extend(frame(kind, flags, stream, piece));
        }
        out
    }

    pub fn preface() -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    /// HPACK for `GET http://x/v1/models`: indexed :method GET (2) and :scheme http (6), then
    /// :path and :authority as literals with indexed names (4, 1), never Huffman-coded.
    pub fn request_head() -> Vec<u8> {
        let mut out = vec![0x82, 0x86];
        literal_indexed_name(&mut out, 4, b"/v1/models");
        literal_indexed_name(&mut out, 1, b"x");
        out
    }

    fn literal_indexed_name(out: &mut Vec<u8>, index: u8, value: &[u8]) {
        assert!(index < 15 && value.len() < 127);
        out.push(index);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }

    /// A literal header field, new name, without indexing, strings not Huffman-coded.
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        for s in [name, value] {
            length(out, s.len());
            out.extend_from_slice(s);
        }
    }

    /// An HPACK string length: a 7-bit prefix integer (RFC 7541 5.1), Huffman bit clear.
    fn length(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }

    /// The frames the server sent, as (type, flags, stream id), read until it closes the
    /// connection, `until` returns true, or 20 s pass with nothing (a hang guard, not a timing
    /// check). Writes `request` first, ignoring a write error (the server may close early).
    pub async fn exchange(
        addr: std::net::SocketAddr,
        request: &[u8],
        until: impl Fn(&[(u8, u8, u32)]) -> bool,
    ) -> Vec<(u8, u8, u32)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = sock.write_all(request).await;
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut chunk = [0u8; 16384];
        for _ in 0..1024 {
            match tokio::time::timeout(std::time::Duration::from_secs(20), sock.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("the server neither answered nor closed: {frames:?}"),
            }
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                frames.push((buf[3], buf[4], stream));
                buf.drain(..9 + len);
            }
            if until(&frames) {
                break;
            }
        }
        frames
    }
}

#[tokio::test]
async fn an_http2_header_list_over_the_head_bound_is_refused_without_reaching_upstream() {
    use h2raw::*;
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    // 1,200 headers of ~100 bytes: about 120 KiB of header list (the bound is 64 KiB), sent as
    // one HEADERS frame and CONTINUATION frames of at most 16 KiB (the default max frame size).
    let mut block = request_head();
    for i in 0..1200 {
        literal(
            &mut block,
            format!("x-flood-{i:04}").as_bytes(),
            &[b'v'; 80],
        );
    }
    let mut request = preface();
    request.extend(header_frames(1, &block));
    let frames = exchange(addr, &request, |f| {
        f.iter()
            .any(|&(kind, _, stream)| stream == 1 && (kind == HEADERS || kind == RST_STREAM))
            || f.iter().any(|&(kind, _, _)| kind == GOAWAY)
    })
    .await;
    assert!(
        frames
            .iter()
            .any(|&(kind, _, stream)| (stream == 1 && (kind == HEADERS || kind == RST_STREAM))
                || kind == GOAWAY),
        "the oversized header list is answered (431 / reset / GOAWAY), not left hanging: {frames:?}"
    );
    assert_eq!(
        upstream.hits(),
        0,
        "the refused request never reached upstream"
    );

    // A 40 KiB header list (under our 64 KiB bound, over hyper's 16 KiB h2 default) on a fresh
    // connection goes through: 10 headers of 4 KiB (few, so the mock's HTTP/1 header count
    // limit of 100 is not what is tested).
    let mut ok_block = request_head();
    for i in 0..10 {
        literal(
            &mut ok_block,
            format!("x-fine-{i:03}").as_bytes(),
            &[b'v'; 4096],
        );
    }
    let mut request = preface();
    request.extend(header_frames(1, &ok_block));
    let frames = exchange(addr, &request, |f| {
        f.iter()
            .any(|&(kind, _, stream)| stream == 1 && kind == HEADERS)
    })
    .await;
    assert!(
        frames
            .iter()
            .any(|&(kind, _, stream)| stream == 1 && kind == HEADERS),
        "a 40 KiB header list is served over HTTP/2: {frames:?}"
    );
    assert_eq!(upstream.hits(), 1, "and reaches upstream");
}

#[tokio::test]
async fn an_http2_continuation_flood_is_cut_off_and_the_proxy_keeps_serving() {
    use h2raw::*;
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block: up to
    // 8 MiB of them (CVE-2024-27316-style). The server must stop reading and close, not buffer.
    let mut request = preface();
    request.extend(frame(HEADERS, END_STREAM, 1, &request_head()));
    let mut filler = Vec::new();
    for i in 0..150 {
        literal(&mut filler, format!("x-c-{i:03}").as_bytes(), &[b'c'; 100]);
    }
    let sent_blocks = (8 << 20) / filler.len();
    for _ in 0..sent_blocks {
        request.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let frames = exchange(addr, &request, |f| {
        f.iter().any(|&(kind, _, _)| kind == GOAWAY)
            || f.iter()
                .any(|&(kind, _, stream)| stream == 1 && kind == HEADERS)
    })
    .await;
    assert!(
        frames.iter().any(|&(kind, _, _)| kind == GOAWAY)
            || frames
                .iter()
                .any(|&(kind, _, stream)| stream == 1 && kind == HEADERS),
        "the flood ends with a GOAWAY or a refusal: {frames:?}"
    );
    assert_eq!(upstream.hits(), 0, "nothing of the flood reached upstream");

    still_serves(&proxy, "after the h2 flood").await;
}

#[tokio::test]
async fn http2_rapid_resets_end_the_connection_or_stay_bounded() {
    use h2raw::*;
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr;

    // 5,000 streams each opened and reset at once (CVE-2023-44487). Either h2 sends GOAWAY, or
    // every stream is accounted for; the proxy must not wedge and must keep serving others.
    let mut request = preface();
    for n in 0..5000u32 {
        let stream = 1 + 2 * n;
        request.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &request_head(),
        ));
        request.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    let frames = exchange(addr, &request, |f| {
        f.iter().any(|&(kind, _, _)| kind == GOAWAY)
    })
    .await;
    assert!(
        frames.iter().any(|&(kind, _, _)| kind == GOAWAY),
        "h2 answers a rapid-reset flood with GOAWAY: {} frames, none a GOAWAY",
        frames.len()
    );
    assert!(
        upstream.hits() < 5000,
        "the flood was cut off before every reset stream went upstream ({} did)",
        upstream.hits()
    );

    still_serves(&proxy, "after the reset flood").await;
}

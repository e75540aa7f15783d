//! The plain-http upstream client (src/upstream/h1.rs) against a scripted raw-TCP upstream:
//! every way an HTTP/1.1 server may frame, close or refuse an exchange, through the proxy on
//! real sockets, checked from the app's side, the upstream's side and the stored span.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_imports)] // tests/common re-exports what other test files use

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{chat_body, client, test_config, TestProxy};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const CHAT: &str = r#"{"id":"chatcmpl-wire","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"wire ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

/// A request as the scripted upstream read it.
struct Seen {
    method: String,
    /// Its `x-script` header: which answer it got.
    script: String,
    head: String,
    body: Vec<u8>,
}

/// A raw HTTP/1.1 upstream answering by the request's `x-script` header (see `answer`); counts
/// connections accepted.
struct Upstream {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let (count, log) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, log.clone()));
            }
        });
        Self {
            url,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.requests
            .lock()
            .unwrap()
            .pop()
            .expect("a request arrived")
    }
}

/// Reads requests off one connection and answers each, until the script closes it.
async fn serve(mut socket: TcpStream, log: Arc<std::sync::Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut socket, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let lower = head.to_ascii_lowercase();
        let script = header(&lower, "x-script").unwrap_or("keep").to_string();
        if script == "early" {
            // Refuses the upload without reading it, and closes.
            let _ = socket
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 27\r\nconnection: close\r\n\r\n{\"error\":\"too large here\"}")
                .await;
            let _ = socket.shutdown().await;
            return;
        }
        let body = if let Some(n) = header(&lower, "content-length") {
            let n: usize = n.parse().unwrap();
            while buf.len() < n {
                if !read_more(&mut socket, &mut buf).await {
                    return;
                }
            }
            buf.drain(..n).collect()
        } else if header(&lower, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let Some(end) = read_until(&mut socket, &mut buf, b"\r\n").await else {
                    return;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[..end])
                        .split(';')
                        .next()
                        .unwrap()
                        .trim(),
                    16,
                )
                .unwrap();
                buf.drain(..end + 2);
                while buf.len() < size + 2 {
                    if !read_more(&mut socket, &mut buf).await {
                        return;
                    }
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            Vec::new()
        };
        let answer = answer(&script, &method, body.len());
        log.lock().unwrap().push(Seen {
            method: method.clone(),
            script: script.clone(),
            head,
            body,
        });
        if script == "slow" {
            // Answers late: after any reasonable response-head timeout in these tests.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if socket.write_all(&answer).await.is_err() {
            return;
        }
        if matches!(
            script.as_str(),
            "close" | "eof" | "upgrade" | "garbage" | "idle-close"
        ) {
            if script == "idle-close" {
                // A keep-alive response, then the upstream's idle timeout closes the connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = socket.shutdown().await;
            return;
        }
    }
}

/// The scripted response for `script`.
fn answer(script: &str, method: &str, body_len: usize) -> Vec<u8> {
    let json = |extra: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{}",
            CHAT.len(), // a HEAD answer gives the length a GET would get
            if method == "HEAD" { "" } else { CHAT }
        )
        .into_bytes()
    };
    match script {
        "keep" | "idle-close" | "slow" => json(""),
        "hop" => json(
            "connection: keep-alive, x-hop-secret\r\nx-hop-secret: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nx-end-to-end: kept\r\n",
        ),
        "close" => json("connection: close\r\n"),
        "chunked" => {
            // Uneven chunks, a chunk extension and a trailer.
            let (a, b) = CHAT.split_at(40);
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nx-trailer: yes\r\n\r\n",
                a.len(),
                b.len()
            )
            .into_bytes()
        }
        "eof" => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{CHAT}"
        )
        .into_bytes(),
        "continue" => {
            let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            out.extend(json(""));
            out
        }
        "upgrade" => {
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                .to_vec()
        }
        "garbage" => b"SPDY/9 what\r\n\r\n".to_vec(),
        "echo-length" => {
            let text = body_len.to_string();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            )
            .into_bytes()
        }
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
    }
}

fn header<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

async fn read_until(socket: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(i);
        }
        if !read_more(socket, buf).await {
            return None;
        }
    }
}

/// A chat call the upstream answers with `script`.
async fn post(proxy: &TestProxy, script: &str, trace: &str) -> reqwest::Response {
    client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-script", script)
        .header("x-tracer-trace-id", trace)
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap()
}

/// A chat call answered with `script` that must come back whole: 200 and the scripted body.
async fn chat_ok(proxy: &TestProxy, script: &str, trace: &str) {
    let rsp = post(proxy, script, trace).await;
    assert_eq!(rsp.status(), 200, "{script}");
    assert_eq!(
        rsp.text().await.unwrap(),
        CHAT,
        "{script}: the body arrives whole"
    );
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_close_means_close() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    for i in 0..3 {
        chat_ok(&proxy, "keep", &format!("wire-keep-{i}")).await;
    }
    assert_eq!(
        upstream.connections(),
        1,
        "three calls, one kept-alive connection"
    );
    let seen = upstream.last();
    assert_eq!(
        (seen.method.as_str(), seen.script.as_str()),
        ("POST", "keep")
    );
    assert!(
        seen.head
            .starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "origin-form request line: {}",
        seen.head
    );
    assert!(
        seen.head.contains("\r\nx-script: keep\r\n") && seen.head.contains("\r\nhost: 127.0.0.1:"),
        "headers reach the upstream: {}",
        seen.head
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen.body).unwrap()["model"],
        "gpt-4o-mini",
        "the body reaches the upstream intact"
    );

    for i in 0..2 {
        chat_ok(&proxy, "close", &format!("wire-close-{i}")).await;
    }
    // The first `close` call reused the kept connection; the second needed a new one.
    assert_eq!(
        upstream.connections(),
        2,
        "a `connection: close` answer is not reused"
    );

    // HEAD: no body is read, and the connection is reused.
    let before = upstream.connections();
    let head = client()
        .head(proxy.url("/v1/models"))
        .header("x-script", "keep")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], CHAT.len().to_string());
    chat_ok(&proxy, "keep", "wire-after-head").await;
    assert_eq!(
        upstream.connections(),
        before + 1,
        "HEAD took one connection, reused after"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    chat_ok(&proxy, "idle-close", "wire-idle-1").await;
    // The upstream closes its side 50 ms after answering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rsp = post(&proxy, "keep", "wire-idle-2").await;
    assert_eq!(
        rsp.status(),
        200,
        "the closed pooled connection was skipped"
    );
    assert_eq!(rsp.text().await.unwrap(), CHAT);
    assert_eq!(upstream.connections(), 2);
    let trace = proxy.wait_for_trace("wire-idle-2", 1).await;
    assert_eq!(trace["spans"][0]["status"], "ok");
}

#[tokio::test]
async fn chunked_eof_delimited_and_interim_responses_arrive_whole_and_are_captured() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    for (path, trace) in [
        ("chunked", "wire-chunked"),
        ("eof", "wire-eof"),
        ("continue", "wire-continue"),
    ] {
        chat_ok(&proxy, path, trace).await;
        let trace = proxy.wait_for_trace(trace, 1).await;
        let span = &trace["spans"][0];
        assert_eq!(span["status"], "ok", "{path}: {span}");
        assert_eq!(
            span["output"]["choices"][0]["message"]["content"], "wire ok",
            "{path}: the response is captured"
        );
        assert_eq!(span["llm"]["total_tokens"], 5, "{path}: {span}");
    }
}

#[tokio::test]
async fn an_upload_of_unknown_length_goes_upstream_chunked() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = (0..64)
        .map(|i| Ok(vec![b'a' + (i % 26) as u8; 1000]))
        .collect();
    let rsp = client()
        .post(proxy.url("/v1/files"))
        .header("x-script", "echo-length")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.text().await.unwrap(), "64000", "every byte arrived");
    let seen = upstream.last();
    assert!(
        seen.head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{}",
        seen.head
    );
    assert_eq!(seen.body.len(), 64_000);
    assert_eq!(&seen.body[..3], b"aaa");
}

#[tokio::test]
async fn upgrades_and_garbage_are_502s_naming_the_problem() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    for (path, words) in [
        ("upgrade", "upgrade"),
        ("garbage", "invalid upstream response"),
    ] {
        let rsp = post(&proxy, path, &format!("wire-{path}")).await;
        assert_eq!(rsp.status(), 502, "{path}");
        let body: serde_json::Value = rsp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.to_ascii_lowercase().contains(words),
            "{path}: {message}"
        );
    }
    // The proxy keeps serving.
    chat_ok(&proxy, "keep", "wire-after-garbage").await;
}

#[tokio::test]
async fn an_upstream_that_refuses_an_upload_early_is_answered_not_hung() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    // 4 MiB, more than the socket buffers hold: the upstream answers after the head and stops
    // reading.
    let big = vec![b'x'; 4 << 20];
    let rsp = tokio::time::timeout(
        Duration::from_secs(30),
        client()
            .post(proxy.url("/v1/files"))
            .header("x-script", "early")
            .header("content-type", "application/octet-stream")
            .body(big)
            .send(),
    )
    .await
    .expect("the proxy answers instead of waiting forever");
    // The early answer, or a proxy error if the upstream's reset came first; never a hang.
    match rsp {
        Ok(rsp) => assert!(
            rsp.status() == 413 || rsp.status() == 502,
            "status {}",
            rsp.status()
        ),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    chat_ok(&proxy, "keep", "wire-after-early").await; // the proxy keeps serving
}

#[tokio::test]
async fn the_response_head_deadline_is_each_calls_own_on_a_reused_connection() {
    let upstream = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url);
    config.response_header_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start_with(config).await;

    chat_ok(&proxy, "keep", "wire-deadline-0").await;
    // The first call's deadline passes while its connection waits in the pool.
    tokio::time::sleep(Duration::from_millis(600)).await;
    chat_ok(&proxy, "keep", "wire-deadline-1").await;
    assert_eq!(
        upstream.connections(),
        1,
        "the second call reused the connection and was not held to the first call's deadline"
    );

    let started = Instant::now();
    let rsp = post(&proxy, "slow", "wire-deadline-slow").await;
    let waited = started.elapsed();
    assert_eq!(
        rsp.status(),
        504,
        "no head within 300 ms on a reused connection"
    );
    assert_eq!(rsp.headers()["x-tracer-error"], "upstream_timeout");
    assert!(
        waited >= Duration::from_millis(300),
        "not before its own deadline: {waited:?}"
    );
    let trace = proxy.wait_for_trace("wire-deadline-slow", 1).await;
    assert_eq!(trace["spans"][0]["error"]["type"], "upstream_timeout");

    // The timed-out connection was closed (its late answer must not reach another call).
    chat_ok(&proxy, "keep", "wire-deadline-2").await;
    assert_eq!(
        upstream.connections(),
        2,
        "a new connection after the timeout"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_never_reach_the_app() {
    let upstream = Upstream::start().await;
    let proxy = TestProxy::start(&upstream.url).await;
    for i in 0..2 {
        let rsp = post(&proxy, "hop", &format!("wire-hop-{i}")).await;
        assert_eq!(rsp.status(), 200);
        let h = rsp.headers().clone();
        for name in ["x-hop-secret", "keep-alive", "proxy-connection"] {
            assert!(!h.contains_key(name), "{name} is hop-by-hop: {h:?}");
        }
        assert_eq!(
            h["x-end-to-end"], "kept",
            "end-to-end headers are forwarded"
        );
        assert_eq!(h["x-tracer-trace-id"], format!("wire-hop-{i}").as_str());
        assert_eq!(rsp.text().await.unwrap(), CHAT);
    }
    assert_eq!(
        upstream.connections(),
        1,
        "`Connection: keep-alive, x-hop-secret` still keeps the connection"
    );
}

//! Every call becomes exactly one record, whichever of its two bodies finishes last: the rare
//! orders (an upstream that answers before it has read the upload) are recorded too, and the
//! upload is captured as far as it went.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_imports)] // tests/common re-exports what other test files use

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{client, metric_value, TestProxy};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// An upstream that answers as soon as it has the request head, without reading the body.
async fn early_answering_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
                    )
                    .await;
                // Keep reading (and discarding) whatever else arrives, until the peer closes.
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_upload_still_yields_one_span() {
    let (upstream, server) = early_answering_upstream().await;
    let proxy = TestProxy::start(&upstream).await;

    // The upload is still being sent when the answer has already arrived.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let sender = tokio::spawn(async move {
        tx.send(Ok(Bytes::from_static(b"{\"model\":\"gpt-4o-mini\",")))
            .await
            .ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(Ok(Bytes::from_static(b"\"messages\":[]}")))
            .await
            .ok();
    });
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "early-answer")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "the early answer reaches the app");
    assert_eq!(&rsp.bytes().await.unwrap()[..], b"{\"ok\":true}");
    sender.await.unwrap();

    let trace = proxy.wait_for_trace("early-answer", 1).await;
    assert_eq!(
        trace["spans"].as_array().unwrap().len(),
        1,
        "the call is recorded exactly once"
    );
    assert_eq!(trace["spans"][0]["http"]["status"], 200);
    let text = proxy.metrics_text().await;
    assert_eq!(
        metric_value(&text, "llm_tracer_in_flight_requests"),
        Some(0.0),
        "nothing stays counted as in flight"
    );
    server.abort();
}

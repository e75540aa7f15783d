//! A mock OpenTelemetry collector for tests: `POST /v1/traces` decoded with the official
//! opentelemetry-proto definitions (protobuf or OTLP/JSON), every span kept with its resource's
//! `service.name`. It can be stopped (listener and every open connection closed) and restarted
//! on the same port.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value as Av,
    trace::v1::Span,
};
use prost::Message;
use tokio::{net::TcpListener, task::JoinSet};

#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
    pub content_type: String,
    /// The `x-collector-key` request header, if any (the exporter's configured headers).
    pub collector_key: Option<String>,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    /// The status every request is answered with (200 keeps the spans; others drop them).
    answer: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Binds `addr` (retrying for a while: the port of a receiver just stopped).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot bind {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = spans.clone();
        let answer = Arc::new(AtomicU16::new(200));
        let requests = Arc::new(AtomicUsize::new(0));
        let (task_answer, task_requests) = (answer.clone(), requests.clone());
        let task = tokio::spawn(async move {
            // Dropping the JoinSet (when this task is aborted) aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let kept = kept.clone();
                let (answer, requests) = (task_answer.clone(), task_requests.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        handle(req, kept.clone(), answer.load(Ordering::SeqCst))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            spans,
            answer,
            requests,
            task: Some(task),
        }
    }

    /// Answers every request with `status` from now on.
    pub fn answer_with(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    /// Requests received so far (any answer).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the listener and every connection.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` spans arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.spans();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the collector received {} spans, expected {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    kept: Arc<Mutex<Vec<Received>>>,
    answer: u16,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if answer != 200 {
        let _ = req.into_body().collect().await;
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"{\"code\":14,\"message\":\"scripted\"}",
        )));
        *r.status_mut() = hyper::StatusCode::from_u16(answer).unwrap();
        return Ok(r);
    }
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req.uri().path().to_string();
    let collector_key = req
        .headers()
        .get("x-collector-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        path, "/v1/traces",
        "the exporter posts to {{endpoint}}/v1/traces"
    );
    let decoded = if ct == "application/x-protobuf" {
        ExportTraceServiceRequest::decode(body.as_ref()).expect("valid OTLP protobuf")
    } else {
        assert_eq!(ct, "application/json");
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).expect("valid OTLP/JSON")
    };
    let mut kept = kept.lock().unwrap();
    for rs in decoded.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Av::StringValue(s)) => Some(s.clone()),
                    _ => None,
                },
            )
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                kept.push(Received {
                    service: service.clone(),
                    span,
                    content_type: ct.clone(),
                    collector_key: collector_key.clone(),
                });
            }
        }
    }
    let rsp = ExportTraceServiceResponse::default().encode_to_vec();
    let mut r = Response::new(Full::new(Bytes::from(rsp)));
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    Ok(r)
}

/// An attribute of a received span.
pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Av> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn attr_str(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(Av::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

pub fn attr_int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Av::IntValue(i)) => Some(*i),
        _ => None,
    }
}

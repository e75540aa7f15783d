//! `POST /v1/traces` on the admin listener: OTLP/HTTP ingest (protobuf or JSON, optionally
//! gzip). Answers per the OTLP/HTTP spec: 200 with an `ExportTraceServiceResponse` (and
//! `partial_success` naming refused spans), 400 with a `google.rpc.Status` for a body that does
//! not decode, 415 for other content types or encodings, 413 over the size bound, 503 (retryable)
//! when the store cannot write. Accepted spans take the same path as `POST /api/spans`:
//! `[[redact]]` rules, one store batch, then the exporter.

use std::{io::Read, sync::atomic::Ordering::Relaxed, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::{decode, ExportSink};
use crate::{backend::Backend, metrics::Metrics, span::redact::Redactor};

/// Largest request body as sent (compressed or not).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest body after gzip is undone.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;
/// Most spans in one request.
pub const MAX_SPANS: usize = 50_000;

type Rsp = Response<Full<Bytes>>;

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC codes used in `RpcStatus.code`.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

/// Body format of an OTLP/HTTP request.
#[derive(Clone, Copy, PartialEq)]
pub enum Format {
    Protobuf,
    Json,
}

/// What the handler needs from the admin listener.
pub struct IngestContext<'a> {
    pub backend: &'a Backend,
    pub redactor: &'a Arc<Redactor>,
    pub metrics: &'a Arc<Metrics>,
    pub export: &'a ExportSink,
}

pub async fn handle(req: Request<Incoming>, ctx: IngestContext<'_>) -> Rsp {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let format = match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
        "application/json" => Format::Json,
        other => {
            let shown = if other.is_empty() { "none" } else { other };
            return status_response(
                Format::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                format!(
                    "content-type {shown} is not supported; send application/x-protobuf or application/json"
                ),
            );
        }
    };
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return status_response(
                format,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                format!("content-encoding {other} is not supported; send gzip or none"),
            )
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return status_response(
                format,
                StatusCode::PAYLOAD_TOO_LARGE,
                RESOURCE_EXHAUSTED,
                format!("body: larger than {MAX_BODY_BYTES} bytes; send smaller batches"),
            )
        }
        Err(e) => {
            return status_response(
                format,
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("body: could not be read: {e}"),
            )
        }
    };
    let body = if gzip {
        match gunzip(&body) {
            Ok(b) => Bytes::from(b),
            Err((status, code, message)) => return status_response(format, status, code, message),
        }
    } else {
        body
    };
    let request = match parse(&body, format) {
        Ok(r) => r,
        Err(message) => {
            return status_response(format, StatusCode::BAD_REQUEST, INVALID_ARGUMENT, message)
        }
    };
    let total: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    if total > MAX_SPANS {
        return status_response(
            format,
            StatusCode::PAYLOAD_TOO_LARGE,
            RESOURCE_EXHAUSTED,
            format!("body: {total} spans in one request; at most {MAX_SPANS}"),
        );
    }
    let decoded = decode::request(request);
    let rejected = decoded.rejected;
    let errors = decoded.errors;
    let mut spans = decoded.spans;
    let count = spans.len() as u64;
    if !spans.is_empty() {
        // Redaction is CPU work on up to MAX_DECODED_BYTES: off the runtime's threads.
        let redactor = ctx.redactor.clone();
        let redacted = tokio::task::spawn_blocking(move || {
            for span in &mut spans {
                redactor.apply(span);
            }
            spans
        })
        .await;
        let spans = match redacted {
            Ok(spans) => spans,
            Err(e) => {
                return status_response(
                    format,
                    StatusCode::SERVICE_UNAVAILABLE,
                    UNAVAILABLE,
                    format!("redaction task failed: {e}"),
                )
            }
        };
        match ctx.backend.put_spans(spans).await {
            Ok(spans) => ctx.export.offer(&spans),
            Err(e) => {
                if e.is_store_state() {
                    tracing::debug!(error = %e, spans = count, "OTLP ingest: spans not stored");
                } else {
                    tracing::error!(error = %e, spans = count, "OTLP ingest: spans not stored");
                }
                return status_response(
                    format,
                    StatusCode::SERVICE_UNAVAILABLE,
                    UNAVAILABLE,
                    format!("the store could not write the spans: {e}"),
                );
            }
        }
    }
    ctx.metrics.spans_ingested.fetch_add(count, Relaxed);
    ctx.metrics.otlp.ingested.fetch_add(count, Relaxed);
    ctx.metrics
        .otlp
        .ingest_rejected
        .fetch_add(rejected, Relaxed);
    if rejected > 0 {
        tracing::warn!(rejected, first = ?errors.first(), "OTLP ingest: spans refused");
    }
    let rsp = ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: errors.join("; "),
        }),
    };
    let (bytes, ct) = match format {
        Format::Protobuf => (rsp.encode_to_vec(), "application/x-protobuf"),
        // By hand: proto3 JSON writes int64 as a string, which the generated serde does not.
        Format::Json => (
            serde_json::to_vec(&match &rsp.partial_success {
                Some(p) => serde_json::json!({ "partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }}),
                None => serde_json::json!({}),
            })
            .unwrap_or_else(|_| b"{}".to_vec()),
            "application/json",
        ),
    };
    response(StatusCode::OK, ct, bytes)
}

/// Decodes an `ExportTraceServiceRequest`; the error names what is wrong.
pub fn parse(body: &[u8], format: Format) -> Result<ExportTraceServiceRequest, String> {
    match format {
        Format::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| format!("body: not an OTLP ExportTraceServiceRequest (protobuf): {e}")),
        Format::Json => serde_json::from_slice::<ExportTraceServiceRequest>(body)
            .map_err(|e| format!("body: not an OTLP ExportTraceServiceRequest (JSON): {e}")),
    }
}

/// OTLP/JSON text → request (used by `llm-tracer import`).
pub fn parse_json(body: &[u8]) -> Result<ExportTraceServiceRequest, String> {
    parse(body, Format::Json)
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, (StatusCode, i32, String)> {
    let mut out = Vec::new();
    let limit = u64::try_from(MAX_DECODED_BYTES).unwrap_or(u64::MAX) + 1;
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("body: content-encoding gzip, but it does not decompress: {e}"),
            )
        })?;
    if out.len() > MAX_DECODED_BYTES {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            RESOURCE_EXHAUSTED,
            format!("body: more than {MAX_DECODED_BYTES} bytes once decompressed"),
        ));
    }
    Ok(out)
}

fn status_response(format: Format, http: StatusCode, code: i32, message: String) -> Rsp {
    match format {
        Format::Protobuf => response(
            http,
            "application/x-protobuf",
            RpcStatus { code, message }.encode_to_vec(),
        ),
        Format::Json => response(
            http,
            "application/json",
            serde_json::to_vec(&serde_json::json!({ "code": code, "message": message }))
                .unwrap_or_default(),
        ),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Rsp {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

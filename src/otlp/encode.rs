//! Our span → an OTLP span, with attributes following the OpenTelemetry GenAI semantic
//! conventions where one exists and `llm_tracer.*` for the rest (see README "OpenTelemetry").
//! Pure: no I/O.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{
        any_value::Value as Av, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    },
    resource::v1::Resource,
    trace::v1::{
        span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
    },
};
use serde_json::Value;

use super::{ids, semconv as sc};
use crate::span::{Kind, Span, Status as OurStatus};

/// Groups spans into one request: one resource per `service.name` (an ingested app span keeps
/// its own, from its metadata; the proxy's spans use `service_name`).
pub fn request(spans: &[Span], service_name: &str) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<OtlpSpan>> = BTreeMap::new();
    for span in spans {
        let service = span
            .metadata
            .get(sc::SERVICE_NAME)
            .and_then(Value::as_str)
            .unwrap_or(service_name);
        by_service
            .entry(service)
            .or_default()
            .push(span_to_otlp(span));
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(sc::SERVICE_NAME, string(service))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: super::decode::OUR_SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// One span.
pub fn span_to_otlp(span: &Span) -> OtlpSpan {
    let mut a: Vec<KeyValue> = Vec::with_capacity(32);
    let (trace_id, trace_direct) = ids::trace_id_bytes(&span.trace_id);
    let (span_id, span_direct) = ids::span_id_bytes(&span.span_id);
    if !trace_direct {
        a.push(kv(sc::LT_TRACE_ID, string(&span.trace_id)));
    }
    if !span_direct {
        a.push(kv(sc::LT_SPAN_ID, string(&span.span_id)));
    }
    let parent_span_id = match &span.parent_span_id {
        Some(p) => {
            let (bytes, direct) = ids::span_id_bytes(p);
            if !direct {
                a.push(kv(sc::LT_PARENT_SPAN_ID, string(p)));
            }
            bytes.to_vec()
        }
        None => Vec::new(),
    };
    a.push(kv(sc::LT_KIND, string(span.kind.as_str())));
    let llm = span.llm.as_ref();
    if let Some(op) = sc::operation_name(span.kind, llm.and_then(|l| l.operation.as_deref())) {
        a.push(kv(sc::GEN_AI_OPERATION_NAME, string(op)));
    }
    if let Some(l) = llm {
        if let Some(p) = &l.provider {
            a.push(kv(sc::GEN_AI_PROVIDER_NAME, string(p)));
            a.push(kv(sc::GEN_AI_SYSTEM, string(p)));
        }
        if let Some(op) = &l.operation {
            a.push(kv(sc::LT_OPERATION, string(op)));
        }
        opt_str(&mut a, sc::GEN_AI_REQUEST_MODEL, &l.request_model);
        opt_str(&mut a, sc::GEN_AI_RESPONSE_MODEL, &l.response_model);
        opt_int(&mut a, sc::GEN_AI_USAGE_INPUT_TOKENS, l.input_tokens);
        opt_int(&mut a, sc::GEN_AI_USAGE_OUTPUT_TOKENS, l.output_tokens);
        opt_int(&mut a, sc::GEN_AI_USAGE_CACHE_READ, l.cached_input_tokens);
        opt_int(
            &mut a,
            sc::GEN_AI_USAGE_CACHE_CREATION,
            l.cache_write_tokens,
        );
        opt_int(&mut a, sc::LT_TOTAL_TOKENS, l.total_tokens);
        opt_int(&mut a, sc::LT_REASONING_TOKENS, l.reasoning_tokens);
        if let Some(f) = &l.finish_reason {
            a.push(kv(
                sc::GEN_AI_RESPONSE_FINISH_REASONS,
                AnyValue {
                    value: Some(Av::ArrayValue(ArrayValue {
                        values: vec![string(f)],
                    })),
                },
            ));
            a.push(kv(sc::LT_FINISH_REASON, string(f)));
        }
        for (ours, theirs) in sc::GEN_AI_REQUEST_PARAMS {
            if let Some(v) = l.params.get(*ours) {
                if !v.is_null() {
                    let v = match (theirs, v) {
                        // stop_sequences is a string array in the conventions
                        (&"stop_sequences", Value::String(s)) => {
                            Value::Array(vec![Value::String(s.clone())])
                        }
                        _ => v.clone(),
                    };
                    a.push(kv(
                        &format!("{}{theirs}", sc::GEN_AI_REQUEST_PREFIX),
                        json_to_any(&v),
                    ));
                }
            }
        }
        if !l.params.is_empty() {
            a.push(kv(
                sc::LT_PARAMS,
                string(&Value::Object(l.params.clone()).to_string()),
            ));
        }
        a.push(kv(sc::LT_STREAM, boolean(l.stream)));
        opt_str(&mut a, sc::LT_USAGE_SOURCE, &l.usage_source);
        opt_f64(&mut a, sc::LT_TTFT_MS, l.ttft_ms);
        opt_f64(&mut a, sc::LT_COST_USD, l.cost_usd);
    }
    a.push(kv(sc::LT_STATUS, string(span.status.as_str())));
    opt_f64(&mut a, sc::LT_DURATION_MS, Some(span.duration_ms));
    if let Some(e) = &span.error {
        a.push(kv(sc::ERROR_TYPE, string(&e.kind)));
        a.push(kv(sc::LT_ERROR_TYPE, string(&e.kind)));
        a.push(kv(sc::LT_ERROR_MESSAGE, string(&e.message)));
    }
    if let Some(s) = &span.session_id {
        a.push(kv(sc::SESSION_ID, string(s)));
        a.push(kv(sc::LT_SESSION_ID, string(s)));
    }
    if let Some(u) = &span.user_id {
        a.push(kv(sc::USER_ID, string(u)));
        a.push(kv(sc::LT_USER_ID, string(u)));
    }
    if !span.tags.is_empty() {
        let tags = AnyValue {
            value: Some(Av::ArrayValue(ArrayValue {
                values: span.tags.iter().map(|t| string(t)).collect(),
            })),
        };
        a.push(kv(sc::LT_TAGS, tags));
    }
    for (k, v) in &span.metadata {
        a.push(kv(
            &format!("{}{k}", sc::LT_METADATA_PREFIX),
            json_to_any(v),
        ));
    }
    if let Some(h) = &span.http {
        a.push(kv(sc::HTTP_REQUEST_METHOD, string(&h.method)));
        a.push(kv(sc::URL_PATH, string(&h.path)));
        opt_int(
            &mut a,
            sc::HTTP_RESPONSE_STATUS_CODE,
            h.status.map(u64::from),
        );
        a.push(kv(sc::LT_UPSTREAM, string(&h.upstream)));
        if let Some(host) = h
            .upstream
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
        {
            a.push(kv(sc::SERVER_ADDRESS, string(&host)));
        }
    }
    content(&mut a, sc::INPUT_VALUE, sc::INPUT_MIME_TYPE, &span.input);
    content(&mut a, sc::OUTPUT_VALUE, sc::OUTPUT_MIME_TYPE, &span.output);
    if let Some(c) = &span.capture {
        a.push(kv(sc::LT_CAPTURE_TRUNCATED, boolean(c.truncated)));
        opt_int(&mut a, sc::LT_CAPTURE_BYTES_IN, Some(c.bytes_in));
        opt_int(&mut a, sc::LT_CAPTURE_BYTES_OUT, Some(c.bytes_out));
        opt_int(&mut a, sc::LT_CAPTURE_CHUNKS, Some(u64::from(c.chunks)));
    }
    let kind = match span.kind {
        Kind::Llm | Kind::Embedding | Kind::Http => SpanKind::Client,
        _ => SpanKind::Internal,
    };
    let status = match span.status {
        OurStatus::Error => Status {
            code: StatusCode::Error as i32,
            message: span
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        },
        // `Unset` is what instrumentations send for a span that did not fail; a cancelled
        // call is not an error of the call (the app went away): see llm_tracer.status.
        OurStatus::Ok | OurStatus::Cancelled => Status::default(),
    };
    OtlpSpan {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id,
        name: span.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: span.start_time.micros().saturating_mul(1000),
        end_time_unix_nano: span.end_time.micros().saturating_mul(1000),
        attributes: a,
        status: Some(status),
        ..Default::default()
    }
}

/// `input.value` / `output.value` (OpenInference; read by Phoenix and Langfuse): JSON as text
/// with the JSON mime type, a plain string as is.
fn content(a: &mut Vec<KeyValue>, key: &str, mime_key: &str, v: &Value) {
    match v {
        Value::Null => {}
        Value::String(s) => a.push(kv(key, string(s))),
        other => {
            a.push(kv(key, string(&other.to_string())));
            a.push(kv(mime_key, string(sc::JSON_MIME)));
        }
    }
}

pub fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

pub fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Av::StringValue(s.to_string())),
    }
}

fn boolean(b: bool) -> AnyValue {
    AnyValue {
        value: Some(Av::BoolValue(b)),
    }
}

fn opt_str(a: &mut Vec<KeyValue>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        a.push(kv(key, string(v)));
    }
}

fn opt_int(a: &mut Vec<KeyValue>, key: &str, v: Option<u64>) {
    if let Some(v) = v {
        a.push(kv(
            key,
            AnyValue {
                value: Some(Av::IntValue(i64::try_from(v).unwrap_or(i64::MAX))),
            },
        ));
    }
}

fn opt_f64(a: &mut Vec<KeyValue>, key: &str, v: Option<f64>) {
    if let Some(v) = v.filter(|v| v.is_finite()) {
        a.push(kv(
            key,
            AnyValue {
                value: Some(Av::DoubleValue(v)),
            },
        ));
    }
}

/// A JSON value as an attribute value (objects become key-value lists).
pub fn json_to_any(v: &Value) -> AnyValue {
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(Av::BoolValue(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Av::IntValue(i)),
            None => Some(Av::DoubleValue(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => Some(Av::StringValue(s.clone())),
        Value::Array(items) => Some(Av::ArrayValue(ArrayValue {
            values: items.iter().map(json_to_any).collect(),
        })),
        Value::Object(map) => Some(Av::KvlistValue(KeyValueList {
            values: map.iter().map(|(k, v)| kv(k, json_to_any(v))).collect(),
        })),
    };
    AnyValue { value }
}

//! An OTLP request → our spans. Reads, in this order of precedence, our own `llm_tracer.*`
//! attributes (a round trip through export/import), OpenInference, OpenLLMetry and the GenAI
//! semantic conventions; attributes not mapped to a field are kept in `metadata` (bounded).
//! Pure: no I/O.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value as Av, AnyValue, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode, Span as OtlpSpan},
};
use serde_json::{Map, Value};

use super::{ids, semconv as sc};
use crate::span::{CaptureInfo, HttpInfo, Kind, LlmInfo, Span, SpanError, Status, Timestamp};

/// The instrumentation scope of spans we export.
pub const OUR_SCOPE: &str = "llm-tracer";
/// Most attributes of one span kept in its metadata.
const MAX_METADATA_ENTRIES: usize = 128;
/// Longest span name kept (the store's limit for app spans).
const MAX_NAME_BYTES: usize = 1024;

/// What a request decoded to: the spans to store, and those refused (with why).
#[derive(Debug, Default)]
pub struct Decoded {
    pub spans: Vec<Span>,
    pub rejected: u64,
    /// The first few reasons, for `partial_success.error_message`.
    pub errors: Vec<String>,
}

pub fn request(req: ExportTraceServiceRequest) -> Decoded {
    let mut out = Decoded::default();
    for rs in req.resource_spans {
        let resource: Vec<KeyValue> = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let service = resource
            .iter()
            .find(|kv| kv.key == sc::SERVICE_NAME)
            .and_then(|kv| {
                kv.value.as_ref().and_then(|v| match &v.value {
                    Some(Av::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
            });
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).filter(|n| !n.is_empty());
            for s in ss.spans {
                match span(s, service.as_deref(), scope.as_deref()) {
                    Ok(span) => out.spans.push(span),
                    Err(e) => {
                        out.rejected += 1;
                        if out.errors.len() < 5 {
                            out.errors.push(e);
                        }
                    }
                }
            }
        }
    }
    out
}

/// One span; `Err` names why it cannot be stored.
pub fn span(s: OtlpSpan, service: Option<&str>, scope: Option<&str>) -> Result<Span, String> {
    let mut attrs: BTreeMap<String, Value> = BTreeMap::new();
    for kv in s.attributes {
        attrs.insert(kv.key, kv.value.map(any_to_json).unwrap_or(Value::Null));
    }
    let mut a = Attrs(attrs);

    let label = if s.name.is_empty() {
        "<unnamed>".to_string()
    } else {
        s.name.clone()
    };
    let trace_hex = ids::hex_id(&s.trace_id, 16)
        .ok_or_else(|| format!("span {label:?}: trace_id must be 16 bytes, not all zero"))?;
    let span_hex = ids::hex_id(&s.span_id, 8)
        .ok_or_else(|| format!("span {label:?}: span_id must be 8 bytes, not all zero"))?;
    let parent_hex = if s.parent_span_id.is_empty() {
        None
    } else {
        Some(ids::hex_id(&s.parent_span_id, 8).ok_or_else(|| {
            format!("span {label:?}: parent_span_id must be empty or 8 bytes, not all zero")
        })?)
    };
    if s.start_time_unix_nano == 0 {
        return Err(format!("span {label:?}: start_time_unix_nano is required"));
    }
    let trace_id = ids::restore_trace_id(trace_hex, a.str(sc::LT_TRACE_ID).as_deref());
    let span_id = ids::restore_span_id(span_hex, a.str(sc::LT_SPAN_ID).as_deref());
    let parent_original = a.str(sc::LT_PARENT_SPAN_ID);
    let parent_span_id = parent_hex.map(|p| ids::restore_span_id(p, parent_original.as_deref()));

    let start = Timestamp(s.start_time_unix_nano / 1000);
    let duration_ms_attr = a.f64(sc::LT_DURATION_MS).filter(|d| *d >= 0.0);
    let end = Timestamp((s.end_time_unix_nano / 1000).max(start.micros()));

    // --- kind ---
    let oi_kind = a.str(sc::OPENINFERENCE_SPAN_KIND);
    let tl_kind = a.str(sc::TRACELOOP_SPAN_KIND);
    let gen_op = a.str(sc::GEN_AI_OPERATION_NAME);
    let req_type = a.str(sc::LLM_REQUEST_TYPE);
    let kind = a
        .str(sc::LT_KIND)
        .and_then(|k| serde_json::from_value::<Kind>(Value::String(k)).ok())
        .or_else(|| oi_kind.as_deref().and_then(sc::kind_from_openinference))
        .or_else(|| tl_kind.as_deref().and_then(sc::kind_from_traceloop))
        .or_else(|| gen_op.as_deref().and_then(sc::kind_from_gen_ai_operation))
        .or_else(|| req_type.as_deref().and_then(sc::kind_from_llm_request_type));

    // --- llm ---
    let provider = a.first_str(&[
        sc::GEN_AI_PROVIDER_NAME,
        sc::GEN_AI_SYSTEM,
        sc::LLM_PROVIDER,
        sc::LLM_SYSTEM,
    ]);
    let request_model = a.first_str(&[sc::GEN_AI_REQUEST_MODEL, sc::LLM_MODEL_NAME]);
    let response_model = a.str(sc::GEN_AI_RESPONSE_MODEL);
    let input_tokens = a.first_u64(&[
        sc::GEN_AI_USAGE_INPUT_TOKENS,
        sc::GEN_AI_USAGE_PROMPT_TOKENS,
        sc::LLM_TOKEN_COUNT_PROMPT,
    ]);
    let output_tokens = a.first_u64(&[
        sc::GEN_AI_USAGE_OUTPUT_TOKENS,
        sc::GEN_AI_USAGE_COMPLETION_TOKENS,
        sc::LLM_TOKEN_COUNT_COMPLETION,
    ]);
    let total_tokens = a
        .first_u64(&[
            sc::LT_TOTAL_TOKENS,
            sc::LLM_USAGE_TOTAL_TOKENS,
            sc::LLM_TOKEN_COUNT_TOTAL,
        ])
        .or(match (input_tokens, output_tokens) {
            (Some(i), Some(o)) => Some(i.saturating_add(o)),
            _ => None,
        });
    let finish_reasons = a.take(sc::GEN_AI_RESPONSE_FINISH_REASONS);
    let finish_reason = a
        .str(sc::LT_FINISH_REASON)
        .or_else(|| match finish_reasons {
            Some(Value::Array(v)) => v.first().and_then(|f| f.as_str().map(str::to_string)),
            Some(Value::String(s)) => Some(s),
            _ => None,
        });
    let ours_params = a.take(sc::LT_PARAMS);
    let exact_params = ours_params.is_some();
    let mut params = match ours_params {
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    if let Some(Value::String(s)) = a.take(sc::LLM_INVOCATION_PARAMETERS) {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&s) {
            for (k, v) in m {
                params.entry(k).or_insert(v);
            }
        }
    }
    let request_keys: Vec<String> =
        a.0.keys()
            .filter(|k| {
                k.starts_with(sc::GEN_AI_REQUEST_PREFIX) && k.as_str() != sc::GEN_AI_REQUEST_MODEL
            })
            .cloned()
            .collect();
    for key in request_keys {
        if let Some(v) = a.take(&key) {
            let name = key.trim_start_matches(sc::GEN_AI_REQUEST_PREFIX);
            let ours = sc::GEN_AI_REQUEST_PARAMS
                .iter()
                .find(|(_, theirs)| *theirs == name)
                .map_or(name, |(ours, _)| *ours);
            if exact_params || params.contains_key(ours) {
                continue; // our own export carries the exact params in llm_tracer.params
            }
            // stop_sequences travels as an array; a single stop string came from us as one.
            params.insert(ours.to_string(), v);
        }
    }
    let operation = a
        .str(sc::LT_OPERATION)
        .or_else(|| {
            gen_op
                .as_deref()
                .and_then(sc::our_operation)
                .map(str::to_string)
        })
        .or_else(|| {
            req_type
                .as_deref()
                .and_then(sc::our_operation)
                .map(str::to_string)
        });
    let stream = a.bool(sc::LT_STREAM);
    let usage_source = a.str(sc::LT_USAGE_SOURCE).or_else(|| {
        (input_tokens.is_some() || output_tokens.is_some()).then(|| "reported".to_string())
    });
    let llm = LlmInfo {
        provider,
        operation,
        request_model,
        response_model,
        stream: stream.unwrap_or(false),
        params,
        input_tokens,
        output_tokens,
        total_tokens,
        cached_input_tokens: a.u64(sc::GEN_AI_USAGE_CACHE_READ),
        cache_write_tokens: a.u64(sc::GEN_AI_USAGE_CACHE_CREATION),
        reasoning_tokens: a.u64(sc::LT_REASONING_TOKENS),
        usage_source,
        ttft_ms: a.f64(sc::LT_TTFT_MS),
        finish_reason,
        cost_usd: a.f64(sc::LT_COST_USD),
    };
    let has_llm = llm != LlmInfo::default();

    // --- http ---
    let method = a.first_str(&[sc::HTTP_REQUEST_METHOD, sc::HTTP_METHOD_OLD]);
    let path = a.first_str(&[sc::URL_PATH, sc::HTTP_TARGET_OLD]);
    let status_code = a
        .first_u64(&[sc::HTTP_RESPONSE_STATUS_CODE, sc::HTTP_STATUS_CODE_OLD])
        .and_then(|c| u16::try_from(c).ok());
    let upstream = a.str(sc::LT_UPSTREAM);
    let server = a.str(sc::SERVER_ADDRESS);
    let http = method.map(|method| HttpInfo {
        method,
        path: path.unwrap_or_default(),
        status: status_code,
        upstream: upstream.or(server).unwrap_or_default(),
    });

    let kind = kind.unwrap_or(
        if has_llm && (llm.request_model.is_some() || llm.input_tokens.is_some()) {
            if llm.operation.as_deref() == Some("embeddings") {
                Kind::Embedding
            } else {
                Kind::Llm
            }
        } else if http.is_some() && s.kind == SpanKind::Client as i32 {
            // An outgoing HTTP call is a call; an app's HTTP server span is a step of its work.
            Kind::Http
        } else {
            Kind::Chain
        },
    );

    // --- status and error ---
    let otlp_status = s.status.unwrap_or_default();
    let exception = s.events.iter().find(|e| e.name == "exception").map(|e| {
        let get = |k: &str| {
            e.attributes.iter().find(|kv| kv.key == k).and_then(|kv| {
                kv.value.as_ref().and_then(|v| match &v.value {
                    Some(Av::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
            })
        };
        (get("exception.type"), get("exception.message"))
    });
    let lt_status = a.str(sc::LT_STATUS).and_then(|s| Status::parse(&s));
    let status = lt_status.unwrap_or(if otlp_status.code == StatusCode::Error as i32 {
        Status::Error
    } else {
        Status::Ok
    });
    let err_type = a
        .first_str(&[sc::LT_ERROR_TYPE, sc::ERROR_TYPE])
        .or_else(|| exception.as_ref().and_then(|e| e.0.clone()));
    let err_message = a
        .str(sc::LT_ERROR_MESSAGE)
        .or_else(|| (!otlp_status.message.is_empty()).then(|| otlp_status.message.clone()))
        .or_else(|| exception.as_ref().and_then(|e| e.1.clone()));
    let error = (status == Status::Error || err_type.is_some() || err_message.is_some())
        .then(|| SpanError {
            kind: err_type.unwrap_or_else(|| "error".into()),
            message: err_message.unwrap_or_default(),
        })
        .filter(|_| status != Status::Ok);

    // --- session, user, tags ---
    let session_id = a.first_str(&[
        sc::LT_SESSION_ID,
        sc::SESSION_ID,
        sc::GEN_AI_CONVERSATION_ID,
        sc::TRACELOOP_SESSION,
    ]);
    let user_id = a.first_str(&[
        sc::LT_USER_ID,
        sc::USER_ID,
        sc::ENDUSER_ID,
        sc::TRACELOOP_USER,
    ]);
    let tags: Vec<String> = match a.take(sc::LT_TAGS).or_else(|| a.take(sc::TAG_TAGS)) {
        Some(Value::Array(v)) => v
            .into_iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    };

    // --- input / output ---
    let input = a
        .content(sc::INPUT_VALUE, sc::INPUT_MIME_TYPE)
        .or_else(|| a.json_text(sc::GEN_AI_INPUT_MESSAGES).map(wrap_messages))
        .or_else(|| a.flattened(sc::GEN_AI_PROMPT_PREFIX).map(wrap_messages))
        .or_else(|| {
            a.flattened(sc::LLM_INPUT_MESSAGES_PREFIX)
                .map(wrap_messages)
        })
        .or_else(|| a.json_text(sc::TRACELOOP_ENTITY_INPUT))
        .unwrap_or(Value::Null);
    let output = a
        .content(sc::OUTPUT_VALUE, sc::OUTPUT_MIME_TYPE)
        .or_else(|| a.json_text(sc::GEN_AI_OUTPUT_MESSAGES).map(wrap_messages))
        .or_else(|| a.flattened(sc::GEN_AI_COMPLETION_PREFIX).map(wrap_messages))
        .or_else(|| {
            a.flattened(sc::LLM_OUTPUT_MESSAGES_PREFIX)
                .map(wrap_messages)
        })
        .or_else(|| a.json_text(sc::TRACELOOP_ENTITY_OUTPUT))
        .unwrap_or(Value::Null);

    // --- capture ---
    let truncated = a.bool(sc::LT_CAPTURE_TRUNCATED);
    let bytes_in = a.u64(sc::LT_CAPTURE_BYTES_IN);
    let bytes_out = a.u64(sc::LT_CAPTURE_BYTES_OUT);
    let chunks = a.u64(sc::LT_CAPTURE_CHUNKS);
    let capture = (truncated.is_some() || bytes_in.is_some()).then(|| CaptureInfo {
        truncated: truncated.unwrap_or(false),
        bytes_in: bytes_in.unwrap_or(0),
        bytes_out: bytes_out.unwrap_or(0),
        chunks: chunks.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
    });

    // --- metadata: our own, then whatever is left ---
    let mut metadata = Map::new();
    // A span we exported carries its metadata in llm_tracer.metadata.*; a foreign span keeps
    // where it came from.
    if scope != Some(OUR_SCOPE) {
        if let Some(svc) = service {
            metadata.insert(sc::SERVICE_NAME.into(), Value::String(svc.to_string()));
        }
        if let Some(scope) = scope {
            metadata.insert("otel.scope.name".into(), Value::String(scope.to_string()));
        }
    }
    for (k, v) in std::mem::take(&mut a.0) {
        if metadata.len() >= MAX_METADATA_ENTRIES {
            break;
        }
        if let Some(key) = k.strip_prefix(sc::LT_METADATA_PREFIX) {
            metadata.insert(key.to_string(), v);
        } else if !k.starts_with(sc::P) {
            metadata.insert(k, v);
        }
    }

    let duration_ms = duration_ms_attr.unwrap_or_else(|| start.ms_until(end));
    let name = truncate(
        if s.name.trim().is_empty() {
            "unnamed".to_string()
        } else {
            s.name
        },
        MAX_NAME_BYTES,
    );
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        name,
        kind,
        start_time: start,
        end_time: end,
        duration_ms,
        status,
        error,
        session_id,
        user_id,
        tags,
        metadata,
        http,
        llm: has_llm.then_some(llm),
        input,
        output,
        capture,
    })
}

fn wrap_messages(m: Value) -> Value {
    match m {
        Value::Array(_) => serde_json::json!({ "messages": m }),
        other => other,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// An attribute value as JSON (bytes as lowercase hex; a non-finite double as null).
pub fn any_to_json(v: AnyValue) -> Value {
    match v.value {
        None => Value::Null,
        Some(Av::StringValue(s)) => Value::String(s),
        Some(Av::BoolValue(b)) => Value::Bool(b),
        Some(Av::IntValue(i)) => Value::from(i),
        Some(Av::DoubleValue(d)) => {
            serde_json::Number::from_f64(d).map_or(Value::Null, Value::Number)
        }
        Some(Av::ArrayValue(a)) => Value::Array(a.values.into_iter().map(any_to_json).collect()),
        Some(Av::KvlistValue(l)) => Value::Object(
            l.values
                .into_iter()
                .map(|kv| (kv.key, kv.value.map(any_to_json).unwrap_or(Value::Null)))
                .collect(),
        ),
        Some(Av::BytesValue(b)) => Value::String(hex::encode(b)),
        Some(Av::StringValueStrindex(_)) => Value::Null,
    }
}

/// The attributes, consumed as they are mapped (what is left becomes metadata).
struct Attrs(BTreeMap<String, Value>);

impl Attrs {
    fn take(&mut self, k: &str) -> Option<Value> {
        self.0.remove(k).filter(|v| !v.is_null())
    }

    /// Takes every key (so none is left for metadata) and returns the first present value.
    fn first_str(&mut self, keys: &[&str]) -> Option<String> {
        let mut found = None;
        for k in keys {
            let v = self.str(k);
            found = found.or(v);
        }
        found
    }

    fn first_u64(&mut self, keys: &[&str]) -> Option<u64> {
        let mut found = None;
        for k in keys {
            let v = self.u64(k);
            found = found.or(v);
        }
        found
    }

    fn str(&mut self, k: &str) -> Option<String> {
        match self.take(k)? {
            Value::String(s) if !s.is_empty() => Some(s),
            Value::String(_) => None,
            other => Some(other.to_string()),
        }
    }

    fn u64(&mut self, k: &str) -> Option<u64> {
        match self.take(k)? {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn f64(&mut self, k: &str) -> Option<f64> {
        match self.take(k)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn bool(&mut self, k: &str) -> Option<bool> {
        match self.take(k)? {
            Value::Bool(b) => Some(b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A value that may be JSON text: parsed when it is, else kept as the string.
    fn json_text(&mut self, k: &str) -> Option<Value> {
        match self.take(k)? {
            Value::String(s) => Some(serde_json::from_str(&s).unwrap_or(Value::String(s))),
            other => Some(other),
        }
    }

    /// OpenInference `input.value` with `input.mime_type`: JSON parsed when the type says so.
    fn content(&mut self, k: &str, mime_key: &str) -> Option<Value> {
        let mime = self.str(mime_key);
        match self.take(k)? {
            Value::String(s) if mime.as_deref() == Some(sc::JSON_MIME) => {
                Some(serde_json::from_str(&s).unwrap_or(Value::String(s)))
            }
            other => Some(other),
        }
    }

    /// Flattened lists (`gen_ai.prompt.0.role`, `llm.input_messages.0.message.content`) → an
    /// array of objects, in index order.
    fn flattened(&mut self, prefix: &str) -> Option<Value> {
        let keys: Vec<String> = self
            .0
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut items: BTreeMap<u64, Map<String, Value>> = BTreeMap::new();
        for key in keys {
            let rest = &key[prefix.len()..];
            let Some((idx, field)) = rest.split_once('.') else {
                continue;
            };
            let Ok(idx) = idx.parse::<u64>() else {
                continue;
            };
            if items.len() >= 1000 && !items.contains_key(&idx) {
                continue;
            }
            let field = field.strip_prefix("message.").unwrap_or(field).to_string();
            if let Some(v) = self.0.remove(&key) {
                items.entry(idx).or_default().insert(field, v);
            }
        }
        Some(Value::Array(
            items.into_values().map(Value::Object).collect(),
        ))
    }
}

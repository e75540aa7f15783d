//! Measures the OTLP codec: spans/s and bytes/span for encoding proxy LLM spans to protobuf and
//! OTLP/JSON (what the exporter does per batch) and decoding them back (what ingest and import do).
//!
//!   cargo run --release --example otlp_codec -- [SPANS]        (default 20000)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use llm_tracer::{
    otlp::{decode, encode},
    span::{HttpInfo, Kind, LlmInfo, Span, Status, Timestamp},
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

fn span(i: u64) -> Span {
    let start = Timestamp(1_764_000_000_000_000 + i * 1000);
    let end = Timestamp(start.0 + 850_000);
    let mut params = serde_json::Map::new();
    params.insert("temperature".into(), json!(0.2));
    params.insert("max_tokens".into(), json!(256));
    Span {
        trace_id: format!("{:032x}", i / 4 + 1),
        span_id: format!("{:016x}", i + 1),
        parent_span_id: Some(format!("{:016x}", i / 4 + 1_000_000)),
        name: "chat gpt-4o-mini".into(),
        kind: Kind::Llm,
        start_time: start,
        end_time: end,
        duration_ms: start.ms_until(end),
        status: Status::Ok,
        error: None,
        session_id: Some("session-1".into()),
        user_id: Some("user-1".into()),
        tags: vec!["prod".into()],
        metadata: Default::default(),
        http: Some(HttpInfo {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(200),
            upstream: "https://api.openai.com".into(),
        }),
        llm: Some(LlmInfo {
            provider: Some("openai".into()),
            operation: Some("chat".into()),
            request_model: Some("gpt-4o-mini".into()),
            response_model: Some("gpt-4o-mini-2024-07-18".into()),
            params,
            input_tokens: Some(120),
            output_tokens: Some(48),
            total_tokens: Some(168),
            usage_source: Some("reported".into()),
            ttft_ms: Some(210.5),
            finish_reason: Some("stop".into()),
            cost_usd: Some(0.0000468),
            ..LlmInfo::default()
        }),
        input: json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the attached paragraph in two sentences, please."}]}),
        output: json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": "The paragraph explains the product. It closes with the price."}}]}),
        capture: None,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let spans: Vec<Span> = (0..n).map(span).collect();
    let batches: Vec<&[Span]> = spans.chunks(512).collect();

    let t = Instant::now();
    let pb: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| encode::request(b, "llm-tracer").encode_to_vec())
        .collect();
    let pb_encode = t.elapsed();
    let t = Instant::now();
    let js: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| serde_json::to_vec(&encode::request(b, "llm-tracer")).unwrap())
        .collect();
    let js_encode = t.elapsed();

    let t = Instant::now();
    let mut back = 0;
    for b in &pb {
        back += decode::request(ExportTraceServiceRequest::decode(b.as_slice()).unwrap())
            .spans
            .len();
    }
    let pb_decode = t.elapsed();
    assert_eq!(back as u64, n);
    let t = Instant::now();
    let mut back = 0;
    for b in &js {
        back += decode::request(serde_json::from_slice(b).unwrap())
            .spans
            .len();
    }
    let js_decode = t.elapsed();
    assert_eq!(back as u64, n);

    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    let per = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("{n} LLM spans in batches of 512");
    println!(
        "protobuf : encode {:>9.0} spans/s, decode {:>9.0} spans/s, {:>6.0} bytes/span",
        rate(pb_encode),
        rate(pb_decode),
        per(&pb)
    );
    println!(
        "OTLP/JSON: encode {:>9.0} spans/s, decode {:>9.0} spans/s, {:>6.0} bytes/span",
        rate(js_encode),
        rate(js_decode),
        per(&js)
    );
}

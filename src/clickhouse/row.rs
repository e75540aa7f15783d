//! One span as one row of the `spans` table: the span's JSON plus the per-span values a trace
//! summary and the stats are computed from in SQL (so queries never parse span JSON).

use serde::Serialize;

use crate::span::{Kind, Span, Status};
use crate::store::{error_message, input_preview, output_preview, to_pico};

/// Status as a number whose maximum is the trace's worst status (`Status::worst`).
pub fn status_rank(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Cancelled => 1,
        Status::Error => 2,
    }
}

pub fn status_of_rank(rank: u8) -> Status {
    match rank {
        0 => Status::Ok,
        1 => Status::Cancelled,
        _ => Status::Error,
    }
}

/// A `spans` row, serialised as one JSONEachRow line.
#[derive(Debug, Serialize)]
pub struct SpanRow<'a> {
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub start_us: u64,
    /// `max(end, start)`, as the summary counts it.
    pub end_us: u64,
    pub has_parent: u8,
    pub name: &'a str,
    pub kind: &'static str,
    pub status: u8,
    /// `Kind::is_call`: counted by stats.
    pub is_call: u8,
    /// LLM or embedding: counted as `llm_calls`.
    pub is_llm: u8,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_pico: Option<u64>,
    /// The span's model as stats group it (`None` → "unknown"); may be empty.
    pub model: Option<&'a str>,
    pub tags: &'a [String],
    pub session_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub input_preview: Option<String>,
    pub output_preview: Option<String>,
    /// Set on error spans only.
    pub error_message: Option<String>,
    /// Set on LLM spans with an output only: the trace's output preview falls back to the
    /// latest-ending one.
    pub llm_output: Option<String>,
    pub latency_ms: f64,
    /// Streamed calls only.
    pub ttft_ms: Option<f64>,
    /// The span as the API returns it.
    pub span: String,
    /// Insert time (µs): ReplacingMergeTree keeps the highest, so a re-sent span replaces
    /// (and never doubles) the stored one.
    pub version: u64,
}

impl<'a> SpanRow<'a> {
    pub fn of(span: &'a Span, version: u64) -> Result<SpanRow<'a>, serde_json::Error> {
        let start = span.start_time.micros();
        let llm = span.llm.as_ref();
        let output = output_preview(&span.output);
        Ok(SpanRow {
            trace_id: &span.trace_id,
            span_id: &span.span_id,
            start_us: start,
            end_us: span.end_time.micros().max(start),
            has_parent: u8::from(span.parent_span_id.is_some()),
            name: &span.name,
            kind: span.kind.as_str(),
            status: status_rank(span.status),
            is_call: u8::from(span.kind.is_call()),
            is_llm: u8::from(matches!(span.kind, Kind::Llm | Kind::Embedding)),
            input_tokens: llm.and_then(|l| l.input_tokens).unwrap_or(0),
            output_tokens: llm.and_then(|l| l.output_tokens).unwrap_or(0),
            cost_pico: llm.and_then(|l| l.cost_usd).and_then(to_pico),
            model: span.model(),
            tags: &span.tags,
            session_id: span.session_id.as_deref(),
            user_id: span.user_id.as_deref(),
            input_preview: input_preview(&span.input),
            llm_output: (span.kind == Kind::Llm && !span.output.is_null())
                .then(|| output.clone())
                .flatten(),
            output_preview: output,
            error_message: (span.status == Status::Error).then(|| error_message(span)),
            latency_ms: span.start_time.ms_until(span.end_time),
            ttft_ms: llm
                .filter(|l| l.stream)
                .and_then(|l| l.ttft_ms)
                .filter(|t| t.is_finite()),
            span: serde_json::to_string(span)?,
            version,
        })
    }
}

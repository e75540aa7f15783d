//! The span: the schema the store keeps and the API returns (field names fixed by SPEC.md),
//! and `assemble`, which turns a captured exchange into one.
//!
//! Pure: no I/O, no awaiting. Runs on the writer task, after the bytes have reached the client.

mod time;

pub use self::time::Timestamp;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Component kinds, in the order the UI's legend lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Llm,
    Chain,
    Agent,
    Tool,
    Retriever,
    Embedding,
    Http,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Llm => "llm",
            Kind::Chain => "chain",
            Kind::Agent => "agent",
            Kind::Tool => "tool",
            Kind::Retriever => "retriever",
            Kind::Embedding => "embedding",
            Kind::Http => "http",
        }
    }

    /// Kinds that stand for a call through the proxy (or an LLM call reported by the app):
    /// these are what `/api/stats` counts.
    pub fn is_call(self) -> bool {
        matches!(self, Kind::Llm | Kind::Embedding | Kind::Http)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Error,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Status::Ok),
            "error" => Some(Status::Error),
            "cancelled" => Some(Status::Cancelled),
            _ => None,
        }
    }

    /// A trace is as bad as its worst span: error > cancelled > ok.
    pub fn worst(self, other: Status) -> Status {
        fn rank(s: Status) -> u8 {
            match s {
                Status::Ok => 0,
                Status::Cancelled => 1,
                Status::Error => 2,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpInfo {
    pub method: String,
    /// Path and query as the app sent them (credential-like query values redacted).
    pub path: String,
    /// Upstream status; `null` when no response head arrived.
    pub status: Option<u16>,
    /// The upstream base URL the call was routed to.
    pub upstream: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LlmInfo {
    pub provider: Option<String>,
    pub operation: Option<String>,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Every prompt token, cached ones included (Anthropic's cache reads and writes are added
    /// to its `input_tokens`, so all providers read the same).
    pub input_tokens: Option<u64>,
    /// Every generated token, reasoning included.
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    /// Of `input_tokens`, those read from the provider's prompt cache (priced at `cached_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    /// Of `input_tokens`, those written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; priced at `cache_write_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    /// Of `output_tokens`, those spent on hidden reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// `"reported"` by the upstream or `"estimated"` by us.
    pub usage_source: Option<String>,
    pub ttft_ms: Option<f64>,
    pub finish_reason: Option<String>,
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CaptureInfo {
    pub truncated: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub chunks: u32,
}

/// One unit of work in a trace: an LLM call through the proxy, or a span the app reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default)]
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub error: Option<SpanError>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub http: Option<HttpInfo>,
    #[serde(default)]
    pub llm: Option<LlmInfo>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub capture: Option<CaptureInfo>,
}

impl Span {
    /// The model that answered, else the one asked for.
    pub fn model(&self) -> Option<&str> {
        let llm = self.llm.as_ref()?;
        llm.response_model
            .as_deref()
            .or(llm.request_model.as_deref())
    }
}

/// Trace and span IDs the app may choose: 1–128 chars of `[A-Za-z0-9._:-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

mod assemble;
pub use self::assemble::{assemble, AssembleOptions};
mod anthropic;
mod bpe;
mod decode;
mod embeddings;
pub mod estimate;
mod openai;
pub mod pricing;
pub mod redact;
mod responses;
pub mod sse;

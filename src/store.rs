//! Store: everything sled. Spans keyed by trace, trace summaries kept up to date as spans arrive,
//! a newest-first time index, secondary indexes (status, model, session, user, tag), span → trace
//! lookup, cursor pagination and stats. The only module that imports `sled`.
//!
//! All calls block: callers on the runtime use `spawn_blocking`.
//! STUB: interface fixed, implementation in progress.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::span::{Span, Status, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data_dir: cannot open the store at {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record under key {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("store: schema version {found} is newer than this binary understands ({supported})")]
    Schema { found: String, supported: u32 },
}

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache, bytes.
    pub cache_capacity: u64,
    /// sled's background fsync interval; `None` = only on explicit flush.
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { cache_capacity: 64 * 1024 * 1024, flush_every_ms: Some(500) }
    }
}

/// An opaque pagination position: the index position of the last trace returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub start_us: u64,
    pub trace_id: String,
}

impl Cursor {
    /// The wire form (URL-safe, opaque to clients).
    pub fn encode(&self) -> String {
        unimplemented!()
    }
    /// `None` when the text is not a cursor this store produced.
    pub fn decode(_s: &str) -> Option<Cursor> {
        unimplemented!()
    }
}

/// Filters for [`Store::list_traces`]; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub limit: usize,
    pub cursor: Option<Cursor>,
    /// Traces that started at or after this time.
    pub since: Option<Timestamp>,
    /// Traces that started before this time.
    pub until: Option<Timestamp>,
    pub status: Option<Status>,
    pub model: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub tag: Option<String>,
    /// Case-insensitive substring of name, trace id, previews, models, session, user, tags.
    pub q: Option<String>,
}

/// One trace as the table lists it (SPEC field names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub name: String,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub duration_ms: f64,
    pub status: Status,
    pub error: Option<String>,
    pub span_count: u64,
    pub llm_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    pub models: Vec<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub tags: Vec<String>,
    pub input_preview: Option<String>,
    pub output_preview: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracePage {
    pub traces: Vec<TraceSummary>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct StatsQuery {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub group_by_model: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct StatsRow {
    /// Set on `group_by=model` rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    pub latency_ms: Quantiles,
    pub ttft_ms: Quantiles,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    #[serde(flatten)]
    pub total: StatsRow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<StatsRow>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    pub fn open(dir: &Path, _opts: &StoreOptions) -> Result<Store, StoreError> {
        let db = sled::open(dir).map_err(|source| StoreError::Open { dir: dir.to_owned(), source })?;
        Ok(Store { db })
    }
    pub fn put_spans(&self, _spans: &[Span]) -> Result<(), StoreError> {
        unimplemented!()
    }
    pub fn list_traces(&self, _q: &TraceQuery) -> Result<TracePage, StoreError> {
        unimplemented!()
    }
    pub fn get_trace(&self, _trace_id: &str) -> Result<Option<(TraceSummary, Vec<Span>)>, StoreError> {
        unimplemented!()
    }
    pub fn get_span(&self, _span_id: &str) -> Result<Option<Span>, StoreError> {
        unimplemented!()
    }
    /// `true` when the trace existed.
    pub fn delete_trace(&self, _trace_id: &str) -> Result<bool, StoreError> {
        unimplemented!()
    }
    pub fn stats(&self, _q: &StatsQuery) -> Result<Stats, StoreError> {
        unimplemented!()
    }
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

//! The public query and answer types of the store API.

use super::*;

/// An opaque pagination position: the index position of the last trace returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub start_us: u64,
    pub trace_id: String,
}

/// First byte of an encoded cursor, so a future layout can reject today's cursors.
pub(super) const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// The wire form (URL-safe, opaque to clients): hex of version ++ start_us(be) ++ trace_id.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(9 + self.trace_id.len());
        raw.push(CURSOR_VERSION);
        raw.extend_from_slice(&self.start_us.to_be_bytes());
        raw.extend_from_slice(self.trace_id.as_bytes());
        hex::encode(raw)
    }
    /// `None` when the text is not a cursor this store produced.
    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = hex::decode(s).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != CURSOR_VERSION || rest.len() < 9 {
            return None;
        }
        let (start, id) = rest.split_at(8);
        let start_us = u64::from_be_bytes(start.try_into().ok()?);
        let trace_id = std::str::from_utf8(id).ok()?;
        is_valid_id(trace_id).then(|| Cursor {
            start_us,
            trace_id: trace_id.to_string(),
        })
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
    /// Also return a time series with these buckets.
    pub series: Option<Series>,
}

/// The buckets of a stats time series: `count` buckets of `width_us`, the first starting at
/// `first_us`. Bucket starts are multiples of the width since the unix epoch (UTC), so a series
/// lines up with the clock whatever `since` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub first_us: u64,
    pub width_us: u64,
    pub count: usize,
}

impl Series {
    /// The buckets of `width_us` covering the instants `lo_us..=hi_us`; `Err(count)` with the
    /// number of buckets needed when that is more than [`MAX_BUCKETS`]. `width_us` must not be 0.
    pub fn covering(lo_us: u64, hi_us: u64, width_us: u64) -> Result<Series, u64> {
        let width_us = width_us.max(1);
        let (lo, hi) = (lo_us.min(hi_us), lo_us.max(hi_us));
        let first = lo / width_us;
        let count = hi / width_us - first + 1;
        if count > MAX_BUCKETS as u64 {
            return Err(count);
        }
        Ok(Series {
            first_us: first * width_us,
            width_us,
            count: usize::try_from(count).unwrap_or(MAX_BUCKETS),
        })
    }
}

/// Filters for [`Store::list_sessions`].
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub limit: usize,
    pub cursor: Option<Cursor>,
    /// Sessions whose newest trace (before `until`) started at or after this time.
    pub since: Option<Timestamp>,
    /// Only traces that started before this time count as a session's newest.
    pub until: Option<Timestamp>,
    /// Case-insensitive substring of the session id or its user id.
    pub q: Option<String>,
}

/// One session: totals over its traces (at most [`MAX_SESSION_TRACES`] of the newest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub session_id: String,
    pub trace_count: u64,
    /// `false` when the session has more traces than were totalled.
    pub complete: bool,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub duration_ms: f64,
    /// The worst trace status.
    pub status: Status,
    /// Traces whose status is `error`.
    pub errors: u64,
    pub span_count: u64,
    pub llm_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    pub models: Vec<String>,
    pub user_ids: Vec<String>,
    /// The oldest trace's input and the newest trace's output.
    pub first_input_preview: Option<String>,
    pub last_output_preview: Option<String>,
    pub last_trace_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionPage {
    pub sessions: Vec<SessionSummary>,
    pub next_cursor: Option<String>,
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
    /// Set with `series`: the width of each bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_seconds: Option<u64>,
    /// One row per bucket, oldest first, empty buckets included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<SeriesRow>>,
}

/// One time bucket `[start, end)` of a stats series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesRow {
    pub start: Timestamp,
    pub end: Timestamp,
    #[serde(flatten)]
    pub stats: StatsRow,
    /// With `group_by=model`: per-model counts in this bucket, by calls desc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<ModelCounts>>,
}

/// Per-model counts inside one series bucket (no quantiles: those are per bucket and per model
/// row only).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ModelCounts {
    pub model: String,
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
}

/// The `model` of the `group_by=model` row that collects calls without a known model.
pub const UNKNOWN_MODEL: &str = "unknown";

//! Store: everything sled. Spans keyed by trace, trace summaries kept up to date as spans arrive,
//! a newest-first time index, secondary indexes (status, model, session, user, tag), span → trace
//! lookup, cursor pagination and stats. The only module that imports `sled`.
//!
//! All calls block: callers on the runtime use `spawn_blocking`.
//!
//! Layout: ONE sled tree (`v1`) whose keys carry a one-byte prefix per logical key space, so every
//! write (`put_spans`, `delete_trace`) is a single atomic `apply_batch` and a crash never leaves an
//! index disagreeing with the spans. Keys are built by hand, never with serde, because their byte
//! order is the query plan (`inv(t)` is `u64::MAX - t`, big-endian, so a forward scan is newest-first):
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `m` | `m` `schema_version` | `"1"` |
//! | `s` | `s` trace_id 0x00 start_us(be) span_id | span JSON |
//! | `i` | `i` span_id | trace_id 0x00 start_us(be) (enough to rebuild the `s` key) |
//! | `u` | `u` trace_id | stored summary JSON (public fields' inputs + merge bookkeeping) |
//! | `t` | `t` inv(trace start) trace_id | empty |
//! | `x` | `x` field escaped(value) 0x00 inv(trace start) trace_id | empty |
//! | `l` | `l` start_us(be) trace_id 0x00 span_id | compact call record (stats), only for `Kind::is_call` spans |
//!
//! `x` fields: `s` status, `m` model, `e` session, `u` user, `g` tag. Values come from users, so
//! they are escaped (0x00 → 01 01, 0x01 → 01 02): an escaped value never contains 0x00, which
//! therefore ends it unambiguously. Trace ids are `span::is_valid_id` (no 0x00), so 0x00 is a safe
//! separator after them too; `put_spans` skips spans whose ids are not valid.
//!
//! A span id is globally unique: it belongs to exactly one trace at a time, the one its `i` record
//! names. Every `s` and `l` key carries both the trace id and the span id, so each (trace, span)
//! pair has keys of its own and `delete_trace` only ever removes keys its trace owns. Re-sending a
//! span id under another trace moves the span: the same batch removes its old `s`/`l` keys and
//! rebuilds the old trace's summary and index keys (or deletes them if no span is left).
//!
//! Sessions ([`Store::list_sessions`], [`Store::get_session`]) are read from the `x` session
//! index and the `t` time index; stats time series ([`StatsQuery::series`]) come from the same
//! single `l` scan as the totals. Neither reads spans.
//!
//! A summary keeps at most [`MAX_SUMMARY_VALUES`] models and as many tags (the lexicographically
//! smallest, so the result still does not depend on arrival order); the others are not indexed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::span::{is_valid_id, Kind, Span, Status, Timestamp};

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
        Self {
            cache_capacity: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }
}

/// An opaque pagination position: the index position of the last trace returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub start_us: u64,
    pub trace_id: String,
}

/// First byte of an encoded cursor, so a future layout can reject today's cursors.
const CURSOR_VERSION: u8 = 1;

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

/// The schema this binary writes and understands.
const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"mschema_version";

/// Upper bound on the summaries one `list_traces` call examines (filters and `q` are checked on
/// summaries, so a rare match could otherwise walk the whole store). When reached, the page is
/// returned as it is, with a `next_cursor` at the last examined position so the client can go on.
const MAX_EXAMINED: usize = 100_000;

/// Length of `input_preview` / `output_preview`, in chars.
const PREVIEW_CHARS: usize = 200;

/// At most this many models and as many tags per trace summary (each one is an index key that
/// every write to the trace may rewrite). The lexicographically smallest are kept; the others are
/// neither shown in the summary nor indexed, so filtering by them does not find the trace.
pub const MAX_SUMMARY_VALUES: usize = 64;

/// `stats` keeps at most this many latencies (and as many TTFTs) for the overall quantiles …
const STATS_SAMPLE: usize = 1_000_000;
/// … and at most this many per `group_by=model` row.
const GROUP_STATS_SAMPLE: usize = 100_000;

/// Most buckets in one stats series.
pub const MAX_BUCKETS: usize = 1000;
/// Quantile sample per series bucket (so a full series holds at most 2 × 2 M values).
const BUCKET_STATS_SAMPLE: usize = 2_000;
/// A series names at most this many models per bucket; calls of later-seen models are counted
/// under [`OTHER_MODELS`].
pub const MAX_SERIES_MODELS: usize = 20;
pub const OTHER_MODELS: &str = "(other)";
/// A session's totals cover at most this many of its newest traces.
pub const MAX_SESSION_TRACES: usize = 1000;

/// How long [`Store::open`] waits for a directory lock still held by a just-dropped handle.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(20);

const P_SPAN: u8 = b's';
const P_SPAN_ID: u8 = b'i';
const P_SUMMARY: u8 = b'u';
const P_TIME: u8 = b't';
const P_INDEX: u8 = b'x';
const P_CALL: u8 = b'l';

const F_STATUS: u8 = b's';
const F_MODEL: u8 = b'm';
const F_SESSION: u8 = b'e';
const F_USER: u8 = b'u';
const F_TAG: u8 = b'g';

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writers (the queue's writer task and `POST /api/spans`): each write reads the
    /// summaries it merges into, so two writers must not interleave. Readers never take it.
    writer: Arc<Mutex<()>>,
    /// Traces deleted by retention since open (reported by `/healthz`).
    retention_deleted: Arc<AtomicU64>,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// sled releases its directory lock asynchronously: dropping a `Db` signals its background
    /// threads, and the lock file is unlocked only when the last of them lets go of it (sled
    /// issue #1289). Reopening right after a drop (a restart in the same process, a test) can
    /// therefore see "could not acquire lock" for a few milliseconds, so `open` retries on that
    /// error only, every 20 ms for up to 2 s, before reporting it. Other errors fail at once.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        Self::open_waiting(dir, opts, LOCK_WAIT)
    }

    /// [`Store::open`] with the lock wait as a parameter.
    fn open_waiting(dir: &Path, opts: &StoreOptions, wait: Duration) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            dir: dir.to_owned(),
            source,
        };
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(opts.flush_every_ms);
        let deadline = Instant::now() + wait;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY_EVERY);
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let tree = db.open_tree("v1").map_err(open_err)?;
        match tree.get(SCHEMA_KEY)? {
            None => {
                tree.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            }
            Some(raw) => {
                let found = String::from_utf8_lossy(&raw).into_owned();
                match found.trim().parse::<u32>() {
                    Ok(v) if v <= SCHEMA_VERSION => {}
                    _ => {
                        return Err(StoreError::Schema {
                            found,
                            supported: SCHEMA_VERSION,
                        })
                    }
                }
            }
        }
        Ok(Store {
            db,
            tree,
            writer: Arc::new(Mutex::new(())),
            retention_deleted: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Writes a batch of spans and brings every touched trace's summary and indexes up to date,
    /// all in one atomic sled batch. Spans with an invalid trace or span id are skipped with a
    /// warning.
    ///
    /// A span id is globally unique: a span whose `span_id` is already stored replaces it
    /// (upsert). If the stored one belongs to another trace, the span moves: its old `s`/`l` keys
    /// are removed and the old trace's summary and index keys are rebuilt from its remaining
    /// spans, or removed when none is left (the trace disappears).
    pub fn put_spans(&self, spans: &[Span]) -> Result<(), StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        let mut works: BTreeMap<String, TraceWork<'_>> = BTreeMap::new();
        // Where each span id lives once this batch is applied (overlays the `i` records).
        let mut located: HashMap<&str, (&str, u64)> = HashMap::new();

        for span in spans {
            let (trace_id, span_id) = (span.trace_id.as_str(), span.span_id.as_str());
            if !is_valid_id(trace_id) || !is_valid_id(span_id) {
                tracing::warn!(
                    trace_id,
                    span_id,
                    "store: span skipped, its trace or span id is not valid"
                );
                continue;
            }
            let start = span.start_time.micros();
            let skey = span_key(trace_id, start, span_id);

            // Is this span id stored already (or written earlier in this batch)? Then the old
            // version goes, from whichever trace holds it.
            let previous = match located.get(span_id) {
                Some(&(t, s)) => Some((t.to_string(), s)),
                None => self.locate_span(span_id)?,
            };
            let mut replaced = false;
            if let Some((prev_trace, prev_start)) = previous {
                let old = span_key(&prev_trace, prev_start, span_id);
                batch.remove(old.clone());
                batch.remove(call_key(prev_start, &prev_trace, span_id));
                let prev_work = self.work(&mut works, &prev_trace)?;
                prev_work.changes.insert(old, None);
                if prev_trace == trace_id {
                    replaced = true;
                } else {
                    // Moved to another trace: the old one loses the span.
                    prev_work.recompute = true;
                }
            }
            let work = self.work(&mut works, trace_id)?;
            if !replaced {
                // Guard: an `s` key the `i` record does not name (never written by this layout).
                replaced = match work.changes.get(&skey) {
                    Some(change) => change.is_some(),
                    None => self.tree.contains_key(&skey)?,
                };
                if replaced {
                    batch.remove(call_key(start, trace_id, span_id));
                }
            }
            if replaced {
                work.recompute = true;
            } else {
                work.agg.merge(span);
            }

            batch.insert(skey.clone(), encode_json(span, &skey)?);
            batch.insert(span_id_key(span_id), span_id_value(trace_id, start));
            if span.kind.is_call() {
                let ckey = call_key(start, trace_id, span_id);
                batch.insert(ckey.clone(), encode_json(&CallRec::of(span), &ckey)?);
            }
            work.changes.insert(skey, Some(span));
            located.insert(span_id, (trace_id, start));
        }

        for (trace_id, work) in works {
            let agg = if work.recompute {
                self.recompute(&trace_id, &work.changes)?
            } else {
                work.agg
            };
            let before = work
                .before
                .as_ref()
                .map(Agg::index_keys)
                .unwrap_or_default();
            let ukey = summary_key(&trace_id);
            if agg.span_count == 0 {
                // Its last span moved to another trace: the trace is gone.
                for gone in before {
                    batch.remove(gone);
                }
                batch.remove(ukey);
                continue;
            }
            let after = agg.index_keys();
            for gone in before.difference(&after) {
                batch.remove(gone.clone());
            }
            for new in after.difference(&before) {
                batch.insert(new.clone(), &[][..]);
            }
            batch.insert(ukey.clone(), encode_json(&agg, &ukey)?);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Newest first by trace start. Uses the most selective index among the filters (session,
    /// user, tag, model, status, else the time index) and checks the others on the summary.
    /// Never reads spans. `limit` is validated 1..=1000 by the caller (0 is treated as 1).
    pub fn list_traces(&self, q: &TraceQuery) -> Result<TracePage, StoreError> {
        let limit = q.limit.max(1);
        let prefix = if let Some(v) = &q.session_id {
            index_prefix(F_SESSION, v)
        } else if let Some(v) = &q.user_id {
            index_prefix(F_USER, v)
        } else if let Some(v) = &q.tag {
            index_prefix(F_TAG, v)
        } else if let Some(v) = &q.model {
            index_prefix(F_MODEL, v)
        } else if let Some(s) = q.status {
            index_prefix(F_STATUS, s.as_str())
        } else {
            vec![P_TIME]
        };
        let empty = TracePage {
            traces: Vec::new(),
            next_cursor: None,
        };

        let Some((lower, upper)) = index_window(&prefix, q.since, q.until, q.cursor.as_ref())
        else {
            return Ok(empty);
        };

        let needle = q.q.as_deref().map(str::to_lowercase);
        let mut traces = Vec::new();
        let mut more = false;
        let mut last_examined: Option<Cursor> = None;
        let mut examined = 0usize;
        for item in self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
        {
            let (key, _) = item?;
            let Some((start, trace_id)) = key.get(prefix.len()..).and_then(parse_position) else {
                return Err(corrupt(&key, "index key has no start and trace id"));
            };
            examined += 1;
            last_examined = Some(Cursor {
                start_us: start,
                trace_id: trace_id.to_string(),
            });
            if let Some(agg) = self.load_agg(trace_id)? {
                // The batch keeps indexes and summaries in step; the start check is a guard only.
                if agg.start == start && agg.matches(q, needle.as_deref()) {
                    if traces.len() == limit {
                        more = true;
                        break;
                    }
                    traces.push(agg.summary());
                }
            }
            if examined >= MAX_EXAMINED {
                more = true;
                break;
            }
        }
        let next_cursor = if !more {
            None
        } else if traces.len() == limit {
            traces.last().map(|t| Cursor {
                start_us: t.start_time.micros(),
                trace_id: t.trace_id.clone(),
            })
        } else {
            last_examined
        };
        Ok(TracePage {
            traces,
            next_cursor: next_cursor.map(|c| c.encode()),
        })
    }

    /// The summary and the spans ordered by start time; `None` for an unknown trace.
    pub fn get_trace(
        &self,
        trace_id: &str,
    ) -> Result<Option<(TraceSummary, Vec<Span>)>, StoreError> {
        if !is_valid_id(trace_id) {
            return Ok(None);
        }
        let Some(agg) = self.load_agg(trace_id)? else {
            return Ok(None);
        };
        let mut spans = Vec::with_capacity(usize::try_from(agg.span_count).unwrap_or(0));
        for item in self.tree.scan_prefix(span_prefix(trace_id)) {
            let (key, value) = item?;
            spans.push(decode_json::<Span>(&key, &value)?);
        }
        Ok(Some((agg.summary(), spans)))
    }

    pub fn get_span(&self, span_id: &str) -> Result<Option<Span>, StoreError> {
        if !is_valid_id(span_id) {
            return Ok(None);
        }
        let Some((trace_id, start)) = self.locate_span(span_id)? else {
            return Ok(None);
        };
        let key = span_key(&trace_id, start, span_id);
        match self.tree.get(&key)? {
            Some(value) => Ok(Some(decode_json(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// Removes the trace's spans, span-id lookups, call records, summary and index entries in one
    /// batch. `true` when the trace existed.
    pub fn delete_trace(&self, trace_id: &str) -> Result<bool, StoreError> {
        Ok(self.delete_trace_measured(trace_id)?.is_some())
    }

    /// [`Store::delete_trace`], returning the bytes (keys + values) it removed when the trace
    /// existed.
    fn delete_trace_measured(&self, trace_id: &str) -> Result<Option<u64>, StoreError> {
        if !is_valid_id(trace_id) {
            return Ok(None);
        }
        let mut freed = 0u64;
        let mut count = |key: &[u8], value_len: usize| {
            freed = freed.saturating_add((key.len() + value_len) as u64);
        };
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        let agg = self.load_agg(trace_id)?;
        let mut existed = agg.is_some();
        let prefix = span_prefix(trace_id);
        for item in self.tree.scan_prefix(&prefix) {
            let (key, value) = item?;
            existed = true;
            count(&key, value.len());
            let Some((start, span_id)) = key.get(prefix.len()..).and_then(parse_start_and_id)
            else {
                return Err(corrupt(&key, "span key has no start and span id"));
            };
            // Only keys this trace owns: the `s` and `l` keys carry its id, and the `i` record
            // is removed only while it still names this trace.
            if self
                .locate_span(span_id)?
                .is_some_and(|(t, _)| t == trace_id)
            {
                let ikey = span_id_key(span_id);
                count(&ikey, trace_id.len() + 9);
                batch.remove(ikey);
            }
            let ckey = call_key(start, trace_id, span_id);
            if let Some(call) = self.tree.get(&ckey)? {
                count(&ckey, call.len());
            }
            batch.remove(ckey);
            batch.remove(key);
        }
        if let Some(agg) = &agg {
            for key in agg.index_keys() {
                count(&key, 0);
                batch.remove(key);
            }
        }
        let ukey = summary_key(trace_id);
        if let Some(summary) = self.tree.get(&ukey)? {
            count(&ukey, summary.len());
        }
        batch.remove(ukey);
        if existed {
            self.tree.apply_batch(batch)?;
            Ok(Some(freed))
        } else {
            Ok(None)
        }
    }

    /// Retention: deletes whole traces, oldest first (by trace start, from the `t` index), with
    /// [`Store::delete_trace`], so indexes stay consistent. First every trace that started before
    /// `older_than`; then, when sled's size on disk exceeds `max_bytes`, the oldest traces until
    /// the live data (keys + values) is at most 90 % of `max_bytes`. sled reclaims disk space
    /// lazily, so the size on disk follows later; measuring live data keeps this from deleting
    /// everything while it does. Returns how many traces were deleted (also added to
    /// [`Store::retention_deleted`]).
    pub fn enforce_retention(
        &self,
        older_than: Option<Timestamp>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        if let Some(cutoff) = older_than {
            loop {
                let oldest = self.oldest_traces(RETENTION_CHUNK)?;
                let expired: Vec<_> = oldest
                    .into_iter()
                    .filter(|(start, _)| *start < cutoff.micros())
                    .collect();
                let mut progress = false;
                for (_, trace_id) in expired {
                    if self.delete_trace_measured(&trace_id)?.is_some() {
                        progress = true;
                        deleted += 1;
                        self.retention_deleted.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                }
                // Nothing expired, or only index entries without a trace (`check` reports those):
                // stop rather than spin on them.
                if !progress {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes.filter(|&m| self.size_on_disk() > m) {
            let target = max / 10 * 9;
            let mut live = self.live_bytes()?;
            'outer: while live > target {
                let oldest = self.oldest_traces(RETENTION_CHUNK)?;
                let mut progress = false;
                for (_, trace_id) in oldest {
                    if live <= target {
                        break 'outer;
                    }
                    if let Some(freed) = self.delete_trace_measured(&trace_id)? {
                        progress = true;
                        live = live.saturating_sub(freed);
                        deleted += 1;
                        self.retention_deleted.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                }
                if !progress {
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "retention: deleted the oldest traces");
        }
        Ok(deleted)
    }

    /// Traces deleted by retention since the store was opened.
    pub fn retention_deleted(&self) -> u64 {
        self.retention_deleted.load(AtomicOrdering::Relaxed)
    }

    /// Up to `n` of the oldest traces (start µs, trace id), oldest first, from the `t` index.
    fn oldest_traces(&self, n: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([P_TIME]).rev().take(n) {
            let (key, _) = item?;
            let Some((start, trace_id)) = key.get(1..).and_then(parse_position) else {
                return Err(corrupt(&key, "time-index key has no start and trace id"));
            };
            out.push((start, trace_id.to_string()));
        }
        Ok(out)
    }

    /// Keys + values of everything stored (one scan).
    fn live_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for item in self.tree.iter() {
            let (key, value) = item?;
            total = total.saturating_add((key.len() + value.len()) as u64);
        }
        Ok(total)
    }

    /// Call statistics over the `l` records with start in `[since, until)`.
    ///
    /// Counts, errors, tokens and cost are exact. Quantiles are exact (nearest rank) while the
    /// window holds at most 1,000,000 calls (100,000 per `group_by=model` row, 2,000 per time
    /// bucket); beyond that they are computed from a uniform reservoir sample of that size
    /// (deterministic seed, so the same data gives the same answer), which bounds memory at a few
    /// MB per row whatever the window. With [`StatsQuery::series`], the same single scan also
    /// fills one row per time bucket (empty buckets included, so the series is dense); calls
    /// outside the series' buckets count in the totals only.
    pub fn stats(&self, q: &StatsQuery) -> Result<Stats, StoreError> {
        let (lower, upper) = call_range(q.since, q.until);
        let mut total = StatsAcc::new(STATS_SAMPLE);
        let mut groups: BTreeMap<String, StatsAcc> = BTreeMap::new();
        let mut series = q.series.map(SeriesAcc::new);
        if lower < upper {
            for item in self
                .tree
                .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
            {
                let (key, value) = item?;
                let rec: CallRec = decode_json(&key, &value)?;
                total.add(&rec);
                if q.group_by_model {
                    groups
                        .entry(rec.model_name().to_string())
                        .or_insert_with(|| StatsAcc::new(GROUP_STATS_SAMPLE))
                        .add(&rec);
                }
                if let Some(series) = &mut series {
                    let Some(start) = key.get(1..9).and_then(|b| b.try_into().ok()) else {
                        return Err(corrupt(&key, "call key has no start time"));
                    };
                    series.add(u64::from_be_bytes(start), &rec, q.group_by_model);
                }
            }
        }
        let groups = q.group_by_model.then(|| {
            let mut rows: Vec<StatsRow> = groups
                .into_iter()
                .map(|(m, acc)| acc.row(Some(m)))
                .collect();
            rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));
            rows
        });
        Ok(Stats {
            total: total.row(None),
            groups,
            bucket_seconds: q.series.map(|s| s.width_us / 1_000_000),
            series: series.map(|s| s.rows(q.group_by_model)),
        })
    }

    /// Start times (µs) of the first and the last call in `[since, until)`, `None` when there is
    /// none: two index seeks, no scan. Lets the API size a bucketed series before asking for it.
    pub fn call_bounds(
        &self,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let (lower, upper) = call_range(since, until);
        if lower >= upper {
            return Ok(None);
        }
        let mut range = self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)));
        let start_of = |key: &[u8]| {
            key.get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(key, "call key has no start time"))
        };
        let Some(first) = range.next() else {
            return Ok(None);
        };
        let first = start_of(&first?.0)?;
        let last = match range.next_back() {
            Some(item) => start_of(&item?.0)?,
            None => first,
        };
        Ok(Some((first, last)))
    }

    /// Sessions, most recently active first. A session is listed at the position of its newest
    /// trace (the newest one that started before `until`), and only if that trace started at or
    /// after `since`; `next_cursor` continues from there. Walks the `t` index like
    /// [`Store::list_traces`] (at most 100,000 entries per page), checks "newest of its session"
    /// with one seek in the session's `x` index, and totals each listed session from at most
    /// [`MAX_SESSION_TRACES`] of its newest summaries. Never reads spans.
    pub fn list_sessions(&self, q: &SessionQuery) -> Result<SessionPage, StoreError> {
        let limit = q.limit.max(1);
        let empty = SessionPage {
            sessions: Vec::new(),
            next_cursor: None,
        };
        let Some((lower, upper)) = index_window(&[P_TIME], q.since, q.until, q.cursor.as_ref())
        else {
            return Ok(empty);
        };
        let needle = q.q.as_deref().map(str::to_lowercase);
        let mut sessions = Vec::new();
        let mut more = false;
        let mut last_examined: Option<Cursor> = None;
        let mut examined = 0usize;
        for item in self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
        {
            let (key, _) = item?;
            let Some((start, trace_id)) = key.get(1..).and_then(parse_position) else {
                return Err(corrupt(&key, "time index key has no start and trace id"));
            };
            examined += 1;
            let position = Cursor {
                start_us: start,
                trace_id: trace_id.to_string(),
            };
            if let Some(agg) = self.load_agg(trace_id)? {
                if let Some(session) = agg.session_id().filter(|_| agg.start == start) {
                    let wanted = needle.as_deref().is_none_or(|n| {
                        session.to_lowercase().contains(n)
                            || agg.user_id().is_some_and(|u| u.to_lowercase().contains(n))
                    });
                    if wanted && self.is_newest_in_session(session, &position, q.until)? {
                        if sessions.len() == limit {
                            more = true;
                            break;
                        }
                        let (summary, _) = self.session_traces(session, MAX_SESSION_TRACES)?;
                        if let Some(summary) = summary {
                            sessions.push((summary, position.clone()));
                        }
                    }
                }
            }
            last_examined = Some(position);
            if examined >= MAX_EXAMINED {
                more = true;
                break;
            }
        }
        let next_cursor = if !more {
            None
        } else if sessions.len() == limit {
            sessions.last().map(|(_, c)| c.clone())
        } else {
            last_examined
        };
        Ok(SessionPage {
            sessions: sessions.into_iter().map(|(s, _)| s).collect(),
            next_cursor: next_cursor.map(|c| c.encode()),
        })
    }

    /// One session: its totals and up to `limit` of its newest traces, returned oldest first
    /// (conversation order). `None` when no trace carries this session id.
    pub fn get_session(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Option<(SessionSummary, Vec<TraceSummary>)>, StoreError> {
        let (summary, mut traces) = self.session_traces(session_id, limit.max(1))?;
        traces.reverse();
        Ok(summary.map(|s| (s, traces)))
    }

    /// Verifies the store's integrity (`llm-tracer check`): every span's `i` record points back
    /// at it, every call span has its `l` record and every `l` record a span, every summary
    /// equals a recomputation from its spans, every `t`/`x` entry belongs to an existing trace's
    /// summary and every trace has all its index entries. Reads only; one pass per key space,
    /// memory bounded by one trace's summary plus the first [`MAX_CHECK_PROBLEMS`] problems.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut r = CheckReport::default();

        // `s`: spans, grouped by trace (keys sort by trace id, then 0x00, so a trace's spans are
        // contiguous).
        let mut current: Option<Agg> = None;
        for item in self.tree.scan_prefix([P_SPAN]) {
            let (key, value) = item?;
            r.spans += 1;
            let tail = key.get(1..).unwrap_or_default();
            let parsed = tail.iter().position(|&b| b == 0).and_then(|sep| {
                let trace_id = std::str::from_utf8(tail.get(..sep)?).ok()?;
                let (start, span_id) = parse_start_and_id(tail.get(sep + 1..)?)?;
                Some((trace_id.to_string(), start, span_id.to_string()))
            });
            let Some((trace_id, start, span_id)) = parsed else {
                r.problem(format!("span key {} is malformed", show_key(&key)));
                continue;
            };
            let span = match decode_json::<Span>(&key, &value) {
                Ok(span) => span,
                Err(e) => {
                    r.problem(format!("span {trace_id}/{span_id} does not decode: {e}"));
                    continue;
                }
            };
            if span.trace_id != trace_id
                || span.span_id != span_id
                || span.start_time.micros() != start
            {
                r.problem(format!(
                    "span {trace_id}/{span_id}: its key does not match its trace id, span id or start"
                ));
            }
            match self.locate_span(&span_id) {
                Ok(Some((t, s))) if t == trace_id && s == start => {}
                Ok(Some((t, _))) => r.problem(format!(
                    "span {trace_id}/{span_id}: its `i` record points elsewhere (trace {t})"
                )),
                Ok(None) => r.problem(format!("span {trace_id}/{span_id} has no `i` record")),
                Err(e) => r.problem(e.to_string()),
            }
            if span.kind.is_call()
                && !self
                    .tree
                    .contains_key(call_key(start, &trace_id, &span_id))?
            {
                r.problem(format!("call span {trace_id}/{span_id} has no `l` record"));
            }
            if current.as_ref().is_some_and(|a| a.trace_id != trace_id) {
                if let Some(agg) = current.take() {
                    self.check_trace(&agg, &mut r)?;
                }
            }
            current
                .get_or_insert_with(|| Agg::new(&trace_id))
                .merge(&span);
        }
        if let Some(agg) = current.take() {
            self.check_trace(&agg, &mut r)?;
        }

        // `u`: every summary has spans (the ones that do were compared above).
        for item in self.tree.scan_prefix([P_SUMMARY]) {
            let (key, _) = item?;
            r.summaries += 1;
            let trace_id = String::from_utf8_lossy(key.get(1..).unwrap_or_default()).into_owned();
            if self
                .tree
                .scan_prefix(span_prefix(&trace_id))
                .next()
                .is_none()
            {
                r.problem(format!("summary of trace {trace_id} has no spans"));
            }
        }

        // `i`: each names a stored span.
        for item in self.tree.scan_prefix([P_SPAN_ID]) {
            let (key, _) = item?;
            r.span_ids += 1;
            let span_id = String::from_utf8_lossy(key.get(1..).unwrap_or_default()).into_owned();
            match self.locate_span(&span_id) {
                Ok(Some((t, s))) => {
                    if !self.tree.contains_key(span_key(&t, s, &span_id))? {
                        r.problem(format!(
                            "`i` record of span {span_id} names trace {t}, which has no such span"
                        ));
                    }
                }
                Ok(None) => {}
                Err(e) => r.problem(e.to_string()),
            }
        }

        // `l`: each belongs to a stored span.
        for item in self.tree.scan_prefix([P_CALL]) {
            let (key, _) = item?;
            r.calls += 1;
            let parsed = key.get(1..).and_then(|tail| {
                let (start, rest) = parse_start_and_id(tail)?;
                let (trace_id, span_id) = rest.split_once('\0')?;
                Some((start, trace_id.to_string(), span_id.to_string()))
            });
            match parsed {
                Some((start, t, sid)) if self.tree.contains_key(span_key(&t, start, &sid))? => {}
                Some((_, t, sid)) => {
                    r.problem(format!("call record {t}/{sid} has no span"));
                }
                None => r.problem(format!("call key {} is malformed", show_key(&key))),
            }
        }

        // `t` and `x`: each is one of its trace's expected index keys.
        for prefix in [P_TIME, P_INDEX] {
            for item in self.tree.scan_prefix([prefix]) {
                let (key, _) = item?;
                let tail = if prefix == P_TIME {
                    r.time_index += 1;
                    key.get(1..)
                } else {
                    r.secondary_index += 1;
                    key.get(2..)
                        .and_then(|t| t.iter().position(|&b| b == 0).and_then(|p| t.get(p + 1..)))
                };
                let Some((_, trace_id)) = tail.and_then(parse_position) else {
                    r.problem(format!("index key {} is malformed", show_key(&key)));
                    continue;
                };
                let expected = match self.load_agg(trace_id) {
                    Ok(Some(agg)) => agg.index_keys().contains(key.as_ref()),
                    Ok(None) => false,
                    Err(e) => {
                        r.problem(e.to_string());
                        continue;
                    }
                };
                if !expected {
                    r.problem(format!(
                        "index entry {} names trace {trace_id}, whose summary does not list it",
                        show_key(&key)
                    ));
                }
            }
        }

        // Anything else is a key this layout never writes.
        for item in self.tree.iter() {
            let (key, _) = item?;
            let known = matches!(
                key.first(),
                Some(&(P_SPAN | P_SPAN_ID | P_SUMMARY | P_TIME | P_INDEX | P_CALL))
            ) || key.as_ref() == SCHEMA_KEY;
            if !known {
                r.problem(format!("unknown key {}", show_key(&key)));
            }
        }
        Ok(r)
    }

    /// One trace's summary against `agg`, recomputed from its spans, and its index entries.
    fn check_trace(&self, agg: &Agg, r: &mut CheckReport) -> Result<(), StoreError> {
        r.traces += 1;
        let id = &agg.trace_id;
        match self.load_agg(id) {
            Ok(Some(stored)) if &stored == agg => {}
            Ok(Some(_)) => r.problem(format!(
                "summary of trace {id} differs from a recomputation from its spans"
            )),
            Ok(None) => r.problem(format!("trace {id} has spans but no summary")),
            Err(e) => r.problem(e.to_string()),
        }
        for key in agg.index_keys() {
            if !self.tree.contains_key(&key)? {
                r.problem(format!(
                    "trace {id} lacks its index entry {}",
                    show_key(&key)
                ));
            }
        }
        Ok(())
    }

    /// Test-only hook: writes `key → value` bypassing every invariant, to corrupt a store on
    /// purpose and see [`Store::check`] report it.
    #[cfg(test)]
    pub(crate) fn insert_raw(&self, key: &[u8], value: &[u8]) {
        self.tree.insert(key, value).expect("raw insert");
    }

    /// Test-only hook: removes one key bypassing every invariant.
    #[cfg(test)]
    pub(crate) fn remove_raw(&self, key: &[u8]) {
        self.tree.remove(key).expect("raw remove");
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    // --- helpers ---

    /// The pending work for `trace_id` in this `put_spans` batch, starting from its stored
    /// summary the first time the trace is touched.
    fn work<'w, 'a>(
        &self,
        works: &'w mut BTreeMap<String, TraceWork<'a>>,
        trace_id: &str,
    ) -> Result<&'w mut TraceWork<'a>, StoreError> {
        Ok(match works.entry(trace_id.to_string()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let before = self.load_agg(trace_id)?;
                let agg = before.clone().unwrap_or_else(|| Agg::new(trace_id));
                e.insert(TraceWork {
                    before,
                    agg,
                    recompute: false,
                    changes: BTreeMap::new(),
                })
            }
        })
    }

    fn load_agg(&self, trace_id: &str) -> Result<Option<Agg>, StoreError> {
        let key = summary_key(trace_id);
        match self.tree.get(&key)? {
            Some(value) => Ok(Some(decode_json(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// Where the `i` record says a span lives: (trace id, start µs).
    fn locate_span(&self, span_id: &str) -> Result<Option<(String, u64)>, StoreError> {
        let key = span_id_key(span_id);
        let Some(value) = self.tree.get(&key)? else {
            return Ok(None);
        };
        let parsed = value.iter().position(|&b| b == 0).and_then(|sep| {
            let trace_id = std::str::from_utf8(&value[..sep]).ok()?;
            let start = u64::from_be_bytes(value.get(sep + 1..)?.try_into().ok()?);
            Some((trace_id.to_string(), start))
        });
        parsed
            .map(Some)
            .ok_or_else(|| corrupt(&key, "span-id record is not trace_id 0x00 start"))
    }

    /// Whether `position` is the newest entry (before `until`) in `session`'s index.
    fn is_newest_in_session(
        &self,
        session: &str,
        position: &Cursor,
        until: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        let prefix = index_prefix(F_SESSION, session);
        let Some((lower, upper)) = index_window(&prefix, None, until, None) else {
            return Ok(false);
        };
        let Some(item) = self
            .tree
            .range::<Vec<u8>, _>((Bound::Included(lower), Bound::Excluded(upper)))
            .next()
        else {
            return Ok(false);
        };
        let (key, _) = item?;
        let Some((start, trace_id)) = key.get(prefix.len()..).and_then(parse_position) else {
            return Err(corrupt(&key, "index key has no start and trace id"));
        };
        Ok(start == position.start_us && trace_id == position.trace_id)
    }

    /// The session's totals and up to `limit` of its newest trace summaries (newest first),
    /// from its `x` index.
    fn session_traces(
        &self,
        session: &str,
        limit: usize,
    ) -> Result<(Option<SessionSummary>, Vec<TraceSummary>), StoreError> {
        let prefix = index_prefix(F_SESSION, session);
        let mut traces = Vec::new();
        let mut complete = true;
        for item in self.tree.scan_prefix(&prefix) {
            let (key, _) = item?;
            if traces.len() == limit {
                complete = false;
                break;
            }
            let Some((start, trace_id)) = key.get(prefix.len()..).and_then(parse_position) else {
                return Err(corrupt(&key, "index key has no start and trace id"));
            };
            if let Some(agg) = self.load_agg(trace_id)? {
                if agg.start == start {
                    traces.push(agg.summary());
                }
            }
        }
        Ok((session_summary(session, &traces, complete), traces))
    }

    /// Slow path: the trace's summary from all its spans as they will be once `changes` (this
    /// batch's removals and writes of `s` keys) is applied.
    fn recompute(
        &self,
        trace_id: &str,
        changes: &BTreeMap<Vec<u8>, Option<&Span>>,
    ) -> Result<Agg, StoreError> {
        let mut agg = Agg::new(trace_id);
        for item in self.tree.scan_prefix(span_prefix(trace_id)) {
            let (key, value) = item?;
            if !changes.contains_key(key.as_ref()) {
                agg.merge(&decode_json::<Span>(&key, &value)?);
            }
        }
        for span in changes.values().flatten() {
            agg.merge(span);
        }
        Ok(agg)
    }
}

/// Traces read from the `t` index per retention step.
const RETENTION_CHUNK: usize = 256;

/// Most problems [`Store::check`] lists (the rest are only counted).
pub const MAX_CHECK_PROBLEMS: usize = 1000;

/// What [`Store::check`] found: how many records of each kind, and what is inconsistent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    pub traces: u64,
    pub spans: u64,
    pub summaries: u64,
    pub span_ids: u64,
    pub calls: u64,
    pub time_index: u64,
    pub secondary_index: u64,
    /// All problems found (`problems` lists the first [`MAX_CHECK_PROBLEMS`]).
    pub problem_count: u64,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, message: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_CHECK_PROBLEMS {
            self.problems.push(message);
        }
    }
}

/// One trace's pending changes inside a `put_spans` batch.
struct TraceWork<'a> {
    /// The summary as stored before this batch (its index keys are what to retract).
    before: Option<Agg>,
    /// Fast path: `before` with this batch's new spans merged in.
    agg: Agg,
    /// A span was replaced: rebuild the summary from all spans instead.
    recompute: bool,
    /// `s` keys this batch removes (`None`) or writes.
    changes: BTreeMap<Vec<u8>, Option<&'a Span>>,
}

// === the stored summary ===

/// What `u` holds: everything the public summary is derived from, kept so that merging one more
/// span is cheap and the result does not depend on the order spans arrive in (every "first"/
/// "latest" pick is by (time, span_id), costs are summed as integers).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Agg {
    trace_id: String,
    start: u64,
    end: u64,
    status: Status,
    span_count: u64,
    llm_calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Sum of the known span costs in picodollars; `None` while no span had a cost.
    cost_pico: Option<u64>,
    models: BTreeSet<String>,
    tags: BTreeSet<String>,
    root: Option<Root>,
    /// Earliest error span's message.
    first_error: Option<Pick>,
    /// Earliest span with a session / user id.
    first_session: Option<Pick>,
    first_user: Option<Pick>,
    /// Output preview of the latest-ending LLM span that has an output (`at` = its end).
    last_llm_output: Option<Pick>,
}

/// The trace's root candidate: spans without a parent first, then earliest start, then span id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Root {
    has_parent: bool,
    start: u64,
    span_id: String,
    name: String,
    session_id: Option<String>,
    user_id: Option<String>,
    input_preview: Option<String>,
    output_preview: Option<String>,
}

/// A value taken from one span, ranked by (`at`, `span_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pick {
    at: u64,
    span_id: String,
    value: String,
}

impl Pick {
    fn rank(&self) -> (u64, &str) {
        (self.at, &self.span_id)
    }
}

/// Keeps the pick with the lowest (`earliest`) or highest rank; `value` is only built if it wins.
fn pick(
    slot: &mut Option<Pick>,
    earliest: bool,
    at: u64,
    span_id: &str,
    value: impl FnOnce() -> Option<String>,
) {
    let wins = match slot {
        None => true,
        Some(cur) if earliest => (at, span_id) < cur.rank(),
        Some(cur) => (at, span_id) > cur.rank(),
    };
    if wins {
        if let Some(value) = value() {
            *slot = Some(Pick {
                at,
                span_id: span_id.to_string(),
                value,
            });
        }
    }
}

impl Agg {
    fn new(trace_id: &str) -> Agg {
        Agg {
            trace_id: trace_id.to_string(),
            ..Agg::default()
        }
    }

    /// Adds one span that is not yet part of the trace. Commutative: any arrival order of the
    /// same spans gives the same `Agg`.
    fn merge(&mut self, span: &Span) {
        let (start, end) = (
            span.start_time.micros(),
            span.end_time.micros().max(span.start_time.micros()),
        );
        if self.span_count == 0 {
            (self.start, self.end) = (start, end);
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.span_count += 1;
        self.status = self.status.worst(span.status);
        if matches!(span.kind, Kind::Llm | Kind::Embedding) {
            self.llm_calls += 1;
        }
        if let Some(llm) = &span.llm {
            self.input_tokens = self
                .input_tokens
                .saturating_add(llm.input_tokens.unwrap_or(0));
            self.output_tokens = self
                .output_tokens
                .saturating_add(llm.output_tokens.unwrap_or(0));
            if let Some(pico) = llm.cost_usd.and_then(to_pico) {
                self.cost_pico = Some(self.cost_pico.unwrap_or(0).saturating_add(pico));
            }
        }
        if let Some(model) = span.model().filter(|m| !m.is_empty()) {
            insert_capped(&mut self.models, model);
        }
        for tag in &span.tags {
            insert_capped(&mut self.tags, tag);
        }

        let sid = span.span_id.as_str();
        if span.status == Status::Error {
            pick(&mut self.first_error, true, start, sid, || {
                Some(error_message(span))
            });
        }
        pick(&mut self.first_session, true, start, sid, || {
            span.session_id.clone()
        });
        pick(&mut self.first_user, true, start, sid, || {
            span.user_id.clone()
        });
        if span.kind == Kind::Llm && !span.output.is_null() {
            pick(&mut self.last_llm_output, false, end, sid, || {
                output_preview(&span.output)
            });
        }

        let has_parent = span.parent_span_id.is_some();
        let wins = match &self.root {
            None => true,
            Some(r) => (has_parent, start, sid) < (r.has_parent, r.start, r.span_id.as_str()),
        };
        if wins {
            self.root = Some(Root {
                has_parent,
                start,
                span_id: sid.to_string(),
                name: span.name.clone(),
                session_id: span.session_id.clone(),
                user_id: span.user_id.clone(),
                input_preview: input_preview(&span.input),
                output_preview: output_preview(&span.output),
            });
        }
    }

    fn session_id(&self) -> Option<&str> {
        let root = self.root.as_ref().and_then(|r| r.session_id.as_deref());
        root.or(self.first_session.as_ref().map(|p| p.value.as_str()))
    }

    fn user_id(&self) -> Option<&str> {
        let root = self.root.as_ref().and_then(|r| r.user_id.as_deref());
        root.or(self.first_user.as_ref().map(|p| p.value.as_str()))
    }

    fn summary(&self) -> TraceSummary {
        let root = self.root.as_ref();
        let start = Timestamp(self.start);
        let end = Timestamp(self.end);
        TraceSummary {
            trace_id: self.trace_id.clone(),
            name: root.map(|r| r.name.clone()).unwrap_or_default(),
            start_time: start,
            end_time: end,
            duration_ms: start.ms_until(end),
            status: self.status,
            error: self.first_error.as_ref().map(|p| p.value.clone()),
            span_count: self.span_count,
            llm_calls: self.llm_calls,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_pico.map(from_pico),
            models: self.models.iter().cloned().collect(),
            session_id: self.session_id().map(str::to_string),
            user_id: self.user_id().map(str::to_string),
            tags: self.tags.iter().cloned().collect(),
            input_preview: root.and_then(|r| r.input_preview.clone()),
            output_preview: root
                .and_then(|r| r.output_preview.clone())
                .or_else(|| self.last_llm_output.as_ref().map(|p| p.value.clone())),
        }
    }

    /// Every `t` and `x` key that should exist for this trace.
    fn index_keys(&self) -> BTreeSet<Vec<u8>> {
        let mut position = inv(self.start).to_be_bytes().to_vec();
        position.extend_from_slice(self.trace_id.as_bytes());
        let with_position = |mut prefix: Vec<u8>| {
            prefix.extend_from_slice(&position);
            prefix
        };
        let mut keys = BTreeSet::new();
        keys.insert(with_position(vec![P_TIME]));
        keys.insert(with_position(index_prefix(F_STATUS, self.status.as_str())));
        for model in &self.models {
            keys.insert(with_position(index_prefix(F_MODEL, model)));
        }
        for tag in &self.tags {
            keys.insert(with_position(index_prefix(F_TAG, tag)));
        }
        if let Some(session) = self.session_id() {
            keys.insert(with_position(index_prefix(F_SESSION, session)));
        }
        if let Some(user) = self.user_id() {
            keys.insert(with_position(index_prefix(F_USER, user)));
        }
        keys
    }

    /// All `list_traces` filters, checked on the summary (the chosen index already implies one).
    fn matches(&self, q: &TraceQuery, needle: Option<&str>) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        q.since.is_none_or(|t| self.start >= t.micros())
            && q.until.is_none_or(|t| self.start < t.micros())
            && q.status.is_none_or(|s| self.status == s)
            && q.model.as_ref().is_none_or(|m| self.models.contains(m))
            && q.tag.as_ref().is_none_or(|t| self.tags.contains(t))
            && eq(&q.session_id, self.session_id())
            && eq(&q.user_id, self.user_id())
            && needle.is_none_or(|n| self.contains_text(n))
    }

    /// Case-insensitive substring search over the summary's text fields; `needle` is lowercase.
    fn contains_text(&self, needle: &str) -> bool {
        let has = |s: &str| s.to_lowercase().contains(needle);
        let root = self.root.as_ref();
        has(&self.trace_id)
            || root.is_some_and(|r| has(&r.name))
            || root
                .and_then(|r| r.input_preview.as_deref())
                .is_some_and(has)
            || root
                .and_then(|r| r.output_preview.as_deref())
                .is_some_and(has)
            || self.last_llm_output.as_ref().is_some_and(|p| has(&p.value))
            || self.first_error.as_ref().is_some_and(|p| has(&p.value))
            || self.session_id().is_some_and(has)
            || self.user_id().is_some_and(has)
            || self.models.iter().any(|m| has(m))
            || self.tags.iter().any(|t| has(t))
    }
}

/// Totals over a session's traces (given newest first); `None` for no traces.
fn session_summary(
    session: &str,
    newest_first: &[TraceSummary],
    complete: bool,
) -> Option<SessionSummary> {
    let newest = newest_first.first()?;
    let oldest = newest_first.last()?;
    let mut s = SessionSummary {
        session_id: session.to_string(),
        trace_count: newest_first.len() as u64,
        complete,
        start_time: oldest.start_time,
        end_time: newest.end_time,
        duration_ms: 0.0,
        status: Status::Ok,
        errors: 0,
        span_count: 0,
        llm_calls: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: None,
        models: Vec::new(),
        user_ids: Vec::new(),
        first_input_preview: oldest.input_preview.clone(),
        last_output_preview: newest.output_preview.clone(),
        last_trace_id: newest.trace_id.clone(),
    };
    let mut cost_pico: Option<u64> = None;
    let mut models = BTreeSet::new();
    let mut users = BTreeSet::new();
    for t in newest_first {
        s.start_time = s.start_time.min(t.start_time);
        s.end_time = s.end_time.max(t.end_time);
        s.status = s.status.worst(t.status);
        s.errors += u64::from(t.status == Status::Error);
        s.span_count += t.span_count;
        s.llm_calls += t.llm_calls;
        s.input_tokens = s.input_tokens.saturating_add(t.input_tokens);
        s.output_tokens = s.output_tokens.saturating_add(t.output_tokens);
        if let Some(pico) = t.cost_usd.and_then(to_pico) {
            cost_pico = Some(cost_pico.unwrap_or(0).saturating_add(pico));
        }
        for m in &t.models {
            insert_capped(&mut models, m);
        }
        if let Some(u) = &t.user_id {
            insert_capped(&mut users, u);
        }
    }
    s.duration_ms = s.start_time.ms_until(s.end_time);
    s.cost_usd = cost_pico.map(from_pico);
    s.models = models.into_iter().collect();
    s.user_ids = users.into_iter().collect();
    Some(s)
}

/// Adds `value`, keeping only the [`MAX_SUMMARY_VALUES`] smallest: the result is the same
/// whatever order the values arrive in.
fn insert_capped(set: &mut BTreeSet<String>, value: &str) {
    if set.len() >= MAX_SUMMARY_VALUES && set.last().is_some_and(|last| value >= last.as_str()) {
        return;
    }
    set.insert(value.to_string());
    while set.len() > MAX_SUMMARY_VALUES {
        set.pop_last();
    }
}

fn error_message(span: &Span) -> String {
    match &span.error {
        Some(e) if !e.message.is_empty() => e.message.clone(),
        Some(e) if !e.kind.is_empty() => e.kind.clone(),
        _ => format!("{} failed", span.name),
    }
}

/// Costs are summed as integer picodollars so the sum does not depend on the order of addition.
/// Negative or non-finite costs count as unknown.
fn to_pico(usd: f64) -> Option<u64> {
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e12).round() as u64)
}

fn from_pico(pico: u64) -> f64 {
    pico as f64 / 1e12
}

// === previews ===

/// The text a user would call "the input": a chat request's last user message, a prompt or input
/// string, else compact JSON.
fn input_preview(v: &Value) -> Option<String> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let from_messages = |msgs: &Vec<Value>| {
                let user = msgs
                    .iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
                user.or_else(|| msgs.last())
                    .and_then(|m| m.get("content"))
                    .and_then(content_text)
            };
            let found = match (o.get("messages"), o.get("input"), o.get("prompt")) {
                (Some(Value::Array(msgs)), _, _) => from_messages(msgs),
                (_, Some(Value::String(s)), _) => Some(s.clone()),
                (_, Some(Value::Array(items)), _)
                    if items.iter().any(|i| i.get("role").is_some()) =>
                {
                    from_messages(items)
                }
                // Embeddings: a batch of strings.
                (_, Some(Value::Array(items)), _)
                    if !items.is_empty() && items.iter().all(Value::is_string) =>
                {
                    Some(
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" · "),
                    )
                }
                (_, _, Some(Value::String(s))) => Some(s.clone()),
                _ => None,
            };
            found.unwrap_or_else(|| compact_json(v))
        }
        _ => compact_json(v),
    };
    clip(&text)
}

/// The text a user would call "the answer": a chat completion's first choice, a completion's
/// text, an Anthropic message's or a Responses output's text blocks, a string, else compact JSON.
fn output_preview(v: &Value) -> Option<String> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let choice = o.get("choices").and_then(|c| c.get(0));
            let message = choice.and_then(|c| c.get("message"));
            let found = message
                .and_then(|m| m.get("content"))
                .and_then(content_text)
                .or_else(|| message.and_then(|m| m.get("tool_calls")).map(compact_json))
                .or_else(|| {
                    choice
                        .and_then(|c| c.get("text"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .or_else(|| o.get("content").and_then(content_text))
                .or_else(|| {
                    o.get("output_text")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .or_else(|| {
                    let items = o.get("output")?.as_array()?;
                    let parts: Vec<String> = items
                        .iter()
                        .filter_map(|i| i.get("content").and_then(content_text))
                        .collect();
                    (!parts.is_empty()).then(|| parts.join(" "))
                })
                .or_else(|| {
                    // Embeddings: say what came back instead of printing vectors.
                    let data = o.get("data")?.as_array()?;
                    let first = data.first()?.get("embedding")?;
                    let dims = first
                        .as_array()
                        .map(|a| format!(" of {} dimensions", a.len()))
                        .unwrap_or_default();
                    let n = data.len();
                    Some(format!(
                        "{n} embedding{}{dims}",
                        if n == 1 { "" } else { "s" }
                    ))
                });
            found.unwrap_or_else(|| compact_json(v))
        }
        _ => compact_json(v),
    };
    clip(&text)
}

/// Message content: a string, or the text of an array of content parts.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join(" "))
        }
        _ => None,
    }
}

/// Compact JSON, but at most a few KB of it (a captured body can be megabytes).
fn compact_json(v: &Value) -> String {
    struct Capped(Vec<u8>);
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = (PREVIEW_CHARS * 8).saturating_sub(self.0.len());
            if room == 0 {
                return Err(std::io::Error::other("preview is long enough"));
            }
            let n = buf.len().min(room);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped(Vec::new());
    let _ = serde_json::to_writer(&mut out, v); // stops early, on purpose, when the cap is hit
    String::from_utf8_lossy(&out.0).into_owned()
}

/// One line of at most `PREVIEW_CHARS` chars (whitespace runs collapsed, `…` when cut).
fn clip(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        for c in (!out.is_empty())
            .then_some(' ')
            .into_iter()
            .chain(word.chars())
        {
            if chars == PREVIEW_CHARS {
                out.pop();
                out.push('…');
                return Some(out);
            }
            out.push(c);
            chars += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

// === call records (stats) ===

/// What `l` holds per call: just what stats need, so they never read span JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CallRec {
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(rename = "e", default)]
    error: bool,
    #[serde(rename = "d")]
    duration_ms: f64,
    #[serde(rename = "i", default)]
    input_tokens: u64,
    #[serde(rename = "o", default)]
    output_tokens: u64,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    /// Only for streamed calls.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<f64>,
}

impl CallRec {
    fn of(span: &Span) -> CallRec {
        let llm = span.llm.as_ref();
        CallRec {
            model: span.model().map(str::to_string),
            error: span.status == Status::Error,
            duration_ms: span.start_time.ms_until(span.end_time),
            input_tokens: llm.and_then(|l| l.input_tokens).unwrap_or(0),
            output_tokens: llm.and_then(|l| l.output_tokens).unwrap_or(0),
            cost_usd: llm.and_then(|l| l.cost_usd),
            ttft_ms: llm
                .filter(|l| l.stream)
                .and_then(|l| l.ttft_ms)
                .filter(|t| t.is_finite()),
        }
    }
}

impl CallRec {
    fn model_name(&self) -> &str {
        self.model.as_deref().unwrap_or(UNKNOWN_MODEL)
    }
}

/// Exact per-model counts (no quantiles) for one series bucket.
#[derive(Default)]
struct Counts {
    calls: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_pico: Option<u64>,
}

impl Counts {
    fn add(&mut self, rec: &CallRec) {
        self.calls += 1;
        self.errors += u64::from(rec.error);
        self.input_tokens = self.input_tokens.saturating_add(rec.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rec.output_tokens);
        if let Some(pico) = rec.cost_usd.and_then(to_pico) {
            self.cost_pico = Some(self.cost_pico.unwrap_or(0).saturating_add(pico));
        }
    }
}

/// The buckets of a series being filled by one scan.
struct SeriesAcc {
    spec: Series,
    buckets: Vec<StatsAcc>,
    models: Vec<BTreeMap<String, Counts>>,
    /// Models named so far (at most [`MAX_SERIES_MODELS`]).
    named: BTreeSet<String>,
}

impl SeriesAcc {
    fn new(spec: Series) -> SeriesAcc {
        SeriesAcc {
            spec,
            buckets: (0..spec.count)
                .map(|_| StatsAcc::new(BUCKET_STATS_SAMPLE))
                .collect(),
            models: Vec::new(),
            named: BTreeSet::new(),
        }
    }

    fn add(&mut self, start_us: u64, rec: &CallRec, by_model: bool) {
        let Some(offset) = start_us.checked_sub(self.spec.first_us) else {
            return;
        };
        let Ok(i) = usize::try_from(offset / self.spec.width_us.max(1)) else {
            return;
        };
        let Some(bucket) = self.buckets.get_mut(i) else {
            return;
        };
        bucket.add(rec);
        if by_model {
            if self.models.is_empty() {
                self.models = (0..self.spec.count).map(|_| BTreeMap::new()).collect();
            }
            let name = rec.model_name();
            let name = if self.named.contains(name) {
                name
            } else if self.named.len() < MAX_SERIES_MODELS {
                self.named.insert(name.to_string());
                name
            } else {
                OTHER_MODELS
            };
            if let Some(models) = self.models.get_mut(i) {
                match models.get_mut(name) {
                    Some(c) => c.add(rec),
                    None => {
                        let mut c = Counts::default();
                        c.add(rec);
                        models.insert(name.to_string(), c);
                    }
                }
            }
        }
    }

    fn rows(self, by_model: bool) -> Vec<SeriesRow> {
        let SeriesAcc {
            spec,
            buckets,
            mut models,
            ..
        } = self;
        let width = spec.width_us;
        buckets
            .into_iter()
            .enumerate()
            .map(|(i, acc)| {
                let start = spec.first_us.saturating_add(width.saturating_mul(i as u64));
                let models = by_model.then(|| {
                    let counts = models.get_mut(i).map(std::mem::take).unwrap_or_default();
                    let mut rows: Vec<ModelCounts> = counts
                        .into_iter()
                        .map(|(model, c)| ModelCounts {
                            model,
                            calls: c.calls,
                            errors: c.errors,
                            input_tokens: c.input_tokens,
                            output_tokens: c.output_tokens,
                            cost_usd: c.cost_pico.map(from_pico),
                        })
                        .collect();
                    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));
                    rows
                });
                SeriesRow {
                    start: Timestamp(start),
                    end: Timestamp(start.saturating_add(width)),
                    stats: acc.row(None),
                    models,
                }
            })
            .collect()
    }
}

struct StatsAcc {
    calls: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_pico: Option<u64>,
    latencies: Reservoir,
    ttfts: Reservoir,
}

impl StatsAcc {
    /// Quantiles from at most `sample` values each.
    fn new(sample: usize) -> StatsAcc {
        StatsAcc {
            calls: 0,
            errors: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_pico: None,
            latencies: Reservoir::new(sample),
            ttfts: Reservoir::new(sample),
        }
    }

    fn add(&mut self, rec: &CallRec) {
        self.calls += 1;
        self.errors += u64::from(rec.error);
        self.input_tokens = self.input_tokens.saturating_add(rec.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rec.output_tokens);
        if let Some(pico) = rec.cost_usd.and_then(to_pico) {
            self.cost_pico = Some(self.cost_pico.unwrap_or(0).saturating_add(pico));
        }
        if rec.duration_ms.is_finite() {
            self.latencies.add(rec.duration_ms);
        }
        if let Some(t) = rec.ttft_ms {
            self.ttfts.add(t);
        }
    }

    fn row(self, model: Option<String>) -> StatsRow {
        StatsRow {
            model,
            calls: self.calls,
            errors: self.errors,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_pico.map(from_pico),
            latency_ms: quantiles(self.latencies.values),
            ttft_ms: quantiles(self.ttfts.values),
        }
    }
}

/// Keeps every value until `cap` is reached, then a uniform random sample of `cap` of them
/// (Vitter's algorithm R) from a fixed-seed generator: bounded memory, reproducible answers.
struct Reservoir {
    cap: usize,
    seen: u64,
    values: Vec<f64>,
    rng: u64,
}

impl Reservoir {
    const SEED: u64 = 0x5EED_11E7_7ACE_0001;

    fn new(cap: usize) -> Reservoir {
        Reservoir {
            cap,
            seen: 0,
            values: Vec::new(),
            rng: Self::SEED,
        }
    }

    fn add(&mut self, value: f64) {
        self.seen += 1;
        if self.values.len() < self.cap {
            self.values.push(value);
            return;
        }
        // Replace a random slot with probability cap / seen.
        let j = self.next_random() % self.seen;
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| self.values.get_mut(j)) {
            *slot = value;
        }
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Nearest-rank p50/p95/p99; all `None` when there are no values.
fn quantiles(mut values: Vec<f64>) -> Quantiles {
    values.sort_by(f64::total_cmp);
    let at = |p: usize| {
        let n = values.len();
        let rank = (p * n).div_ceil(100).max(1);
        values.get(rank - 1).copied()
    };
    Quantiles {
        p50: at(50),
        p95: at(95),
        p99: at(99),
    }
}

// === keys ===

/// The key range of one newest-first index (`t`, or one `x` value given as `prefix`) holding
/// the traces that started in `[since, until)`, strictly after `cursor`; `None` when empty.
fn index_window(
    prefix: &[u8],
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    cursor: Option<&Cursor>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    // start < until  ⇔  inv(start) ≥ inv(until) + 1.
    let mut lower = prefix.to_vec();
    if let Some(until) = until {
        if until.micros() == 0 {
            return None;
        }
        lower.extend_from_slice(&(u64::MAX - until.micros() + 1).to_be_bytes());
    }
    // Strictly after the cursor: the smallest key above it (no trace id contains 0x00).
    if let Some(c) = cursor {
        let mut after = prefix.to_vec();
        after.extend_from_slice(&inv(c.start_us).to_be_bytes());
        after.extend_from_slice(c.trace_id.as_bytes());
        after.push(0);
        lower = lower.max(after);
    }
    // start ≥ since  ⇔  inv(start) ≤ inv(since); trace id bytes are ASCII, below 0xFF.
    let mut upper = prefix.to_vec();
    upper.extend_from_slice(&inv(since.map_or(0, Timestamp::micros)).to_be_bytes());
    upper.push(0xFF);
    (lower < upper).then_some((lower, upper))
}

/// The `l` key range of calls that started in `[since, until)`.
fn call_range(since: Option<Timestamp>, until: Option<Timestamp>) -> (Vec<u8>, Vec<u8>) {
    let mut lower = vec![P_CALL];
    lower.extend_from_slice(&since.map_or(0, Timestamp::micros).to_be_bytes());
    let upper = match until {
        Some(until) => {
            let mut k = vec![P_CALL];
            k.extend_from_slice(&until.micros().to_be_bytes());
            k
        }
        None => vec![P_CALL + 1],
    };
    (lower, upper)
}

fn inv(t: u64) -> u64 {
    u64::MAX - t
}

/// `s` trace_id 0x00 — every span of the trace, in start order.
fn span_prefix(trace_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + trace_id.len());
    key.push(P_SPAN);
    key.extend_from_slice(trace_id.as_bytes());
    key.push(0);
    key
}

fn span_key(trace_id: &str, start_us: u64, span_id: &str) -> Vec<u8> {
    let mut key = span_prefix(trace_id);
    key.extend_from_slice(&start_us.to_be_bytes());
    key.extend_from_slice(span_id.as_bytes());
    key
}

fn span_id_key(span_id: &str) -> Vec<u8> {
    let mut key = vec![P_SPAN_ID];
    key.extend_from_slice(span_id.as_bytes());
    key
}

fn span_id_value(trace_id: &str, start_us: u64) -> Vec<u8> {
    let mut value = trace_id.as_bytes().to_vec();
    value.push(0);
    value.extend_from_slice(&start_us.to_be_bytes());
    value
}

fn summary_key(trace_id: &str) -> Vec<u8> {
    let mut key = vec![P_SUMMARY];
    key.extend_from_slice(trace_id.as_bytes());
    key
}

/// `l` start_us(be) trace_id 0x00 span_id: start first so stats scan a time range; both ids so
/// every (trace, span) pair has its own record.
fn call_key(start_us: u64, trace_id: &str, span_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + trace_id.len() + span_id.len());
    key.push(P_CALL);
    key.extend_from_slice(&start_us.to_be_bytes());
    key.extend_from_slice(trace_id.as_bytes());
    key.push(0);
    key.extend_from_slice(span_id.as_bytes());
    key
}

/// `x` field escaped(value) 0x00: all traces with this value, newest first.
fn index_prefix(field: u8, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + value.len());
    key.push(P_INDEX);
    key.push(field);
    for &b in value.as_bytes() {
        match b {
            0 => key.extend_from_slice(&[1, 1]),
            1 => key.extend_from_slice(&[1, 2]),
            b => key.push(b),
        }
    }
    key.push(0);
    key
}

/// inv(start)(be) ++ trace_id, the tail of every `t` and `x` key → (start, trace_id).
fn parse_position(tail: &[u8]) -> Option<(u64, &str)> {
    let (start, id) = parse_start_and_id(tail)?;
    Some((inv(start), id))
}

/// u64(be) ++ id.
fn parse_start_and_id(tail: &[u8]) -> Option<(u64, &str)> {
    let (n, id) = tail.split_at_checked(8)?;
    let id = std::str::from_utf8(id).ok().filter(|id| !id.is_empty())?;
    Some((u64::from_be_bytes(n.try_into().ok()?), id))
}

// === encoding ===

/// sled's "could not acquire lock on …" (an `Io` error wrapping `WouldBlock`): another handle,
/// possibly one just dropped whose threads have not exited yet, still holds the directory lock.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

fn corrupt(key: &[u8], message: &str) -> StoreError {
    StoreError::Corrupt {
        key: show_key(key),
        message: message.to_string(),
    }
}

fn encode_json<T: Serialize>(value: &T, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: show_key(key),
        message: format!("cannot encode: {e}"),
    })
}

fn decode_json<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: show_key(key),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{LlmInfo, SpanError};
    use serde_json::json;

    const T0: u64 = 1_700_000_000_000_000;

    fn open(dir: &Path) -> Store {
        Store::open(dir, &StoreOptions::default()).expect("a fresh temp dir opens")
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        (dir, store)
    }

    /// A chain span starting `start_ms` after T0 and lasting `dur_ms`.
    fn span(trace: &str, id: &str, start_ms: u64, dur_ms: u64) -> Span {
        let start = Timestamp(T0 + start_ms * 1000);
        let end = Timestamp(T0 + (start_ms + dur_ms) * 1000);
        Span {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: None,
            name: format!("span {id}"),
            kind: Kind::Chain,
            start_time: start,
            end_time: end,
            duration_ms: start.ms_until(end),
            status: Status::Ok,
            error: None,
            session_id: None,
            user_id: None,
            tags: Vec::new(),
            metadata: Default::default(),
            http: None,
            llm: None,
            input: Value::Null,
            output: Value::Null,
            capture: None,
        }
    }

    /// An LLM chat call with a parent, tokens and an optional cost.
    fn llm(
        trace: &str,
        id: &str,
        start_ms: u64,
        dur_ms: u64,
        model: &str,
        tokens: (u64, u64),
        cost: Option<f64>,
    ) -> Span {
        let mut s = span(trace, id, start_ms, dur_ms);
        s.kind = Kind::Llm;
        s.name = format!("chat {model}");
        s.llm = Some(LlmInfo {
            request_model: Some(model.into()),
            input_tokens: Some(tokens.0),
            output_tokens: Some(tokens.1),
            cost_usd: cost,
            ..LlmInfo::default()
        });
        s.input = json!({"model": model, "messages": [{"role": "user", "content": format!("question {id}")}]});
        s.output = json!({"choices": [{"message": {"role": "assistant", "content": format!("answer {id}")}}]});
        s
    }

    trait With: Sized {
        fn with(self, f: impl FnOnce(&mut Span)) -> Span;
    }
    impl With for Span {
        fn with(mut self, f: impl FnOnce(&mut Span)) -> Span {
            f(&mut self);
            self
        }
    }

    fn failed(msg: &str) -> impl FnOnce(&mut Span) + '_ {
        move |s| {
            s.status = Status::Error;
            s.error = Some(SpanError {
                kind: "upstream".into(),
                message: msg.into(),
            });
        }
    }

    fn child_of(p: &str) -> impl FnOnce(&mut Span) + '_ {
        move |s| s.parent_span_id = Some(p.into())
    }

    /// A small agent trace: root chain, two LLM calls (one failing), a tool.
    fn agent_trace(trace: &str) -> Vec<Span> {
        vec![
            span(trace, "root", 0, 1000).with(|s| {
                s.name = "agent run".into();
                s.session_id = Some("sess-1".into());
                s.input = json!("What is the weather?");
                s.tags = vec!["prod".into()];
            }),
            llm(
                trace,
                "call1",
                10,
                200,
                "gpt-4o-mini",
                (100, 20),
                Some(0.001),
            )
            .with(child_of("root"))
            .with(|s| {
                s.user_id = Some("alice".into());
                s.tags = vec!["beta".into(), "prod".into()];
            }),
            span(trace, "tool1", 220, 100)
                .with(child_of("root"))
                .with(|s| s.kind = Kind::Tool),
            llm(trace, "call2", 400, 300, "gpt-4o", (50, 30), Some(0.002)).with(child_of("root")),
            llm(trace, "call3", 750, 100, "gpt-4o", (10, 0), None)
                .with(child_of("root"))
                .with(failed("rate limited"))
                .with(|s| s.output = Value::Null),
        ]
    }

    fn summary(store: &Store, trace: &str) -> TraceSummary {
        store
            .get_trace(trace)
            .expect("get_trace")
            .expect("the trace exists")
            .0
    }

    fn ids(page: &TracePage) -> Vec<&str> {
        page.traces.iter().map(|t| t.trace_id.as_str()).collect()
    }

    fn list(store: &Store, f: impl FnOnce(&mut TraceQuery)) -> Vec<String> {
        let mut q = TraceQuery {
            limit: 1000,
            ..TraceQuery::default()
        };
        f(&mut q);
        ids(&store.list_traces(&q).expect("list"))
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn keys_with_prefix(store: &Store, p: u8) -> Vec<Vec<u8>> {
        store
            .tree
            .scan_prefix([p])
            .map(|kv| kv.expect("scan").0.to_vec())
            .collect()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn put_then_get_trace_round_trips_spans_in_start_order() {
        let (_dir, store) = temp_store();
        let mut spans = agent_trace("t1");
        spans.reverse();
        store.put_spans(&spans).expect("put");
        let (sum, got) = store
            .get_trace("t1")
            .expect("get")
            .expect("the trace was stored");
        let order: Vec<&str> = got.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(
            order,
            ["root", "call1", "tool1", "call2", "call3"],
            "spans come back ordered by start time"
        );
        let mut expected = agent_trace("t1");
        expected.sort_by_key(|s| s.start_time);
        assert_eq!(
            got, expected,
            "spans round-trip unchanged through the store"
        );
        assert_eq!(sum.span_count, 5, "the summary counts every span");
        assert_eq!(
            store.get_span("call2").expect("get_span"),
            Some(expected[3].clone()),
            "a span is found by its id"
        );
        assert_eq!(
            store.get_span("nope").expect("get_span"),
            None,
            "an unknown span id is None"
        );
        assert!(
            store.get_trace("other").expect("get").is_none(),
            "an unknown trace is None"
        );
    }

    #[test]
    fn summary_fields_follow_the_rules() {
        let (_dir, store) = temp_store();
        store.put_spans(&agent_trace("t1")).expect("put");
        let s = summary(&store, "t1");
        assert_eq!(s.name, "agent run", "the name is the root span's name");
        assert_eq!(
            s.start_time,
            Timestamp(T0),
            "start is the earliest span start"
        );
        assert_eq!(
            s.end_time,
            Timestamp(T0 + 1_000_000),
            "end is the latest span end"
        );
        assert_eq!(s.duration_ms, 1000.0, "duration is end minus start in ms");
        assert_eq!(
            s.status,
            Status::Error,
            "the trace is as bad as its worst span"
        );
        assert_eq!(
            s.error.as_deref(),
            Some("rate limited"),
            "error is the earliest error span's message"
        );
        assert_eq!(s.llm_calls, 3, "llm_calls counts LLM spans");
        assert_eq!(
            (s.input_tokens, s.output_tokens),
            (160, 50),
            "tokens are summed, unknown counts as 0"
        );
        let cost = s.cost_usd.expect("known costs are summed");
        assert!(
            (cost - 0.003).abs() < 1e-12,
            "cost is the sum of the known costs, got {cost}"
        );
        assert_eq!(
            s.models,
            ["gpt-4o", "gpt-4o-mini"],
            "models are sorted and unique"
        );
        assert_eq!(
            s.session_id.as_deref(),
            Some("sess-1"),
            "session comes from the root span"
        );
        assert_eq!(
            s.user_id.as_deref(),
            Some("alice"),
            "user falls back to the first span that has one"
        );
        assert_eq!(s.tags, ["beta", "prod"], "tags are the sorted union");
        assert_eq!(
            s.input_preview.as_deref(),
            Some("What is the weather?"),
            "input preview is the root input"
        );
        assert_eq!(
            s.output_preview.as_deref(),
            Some("answer call2"),
            "without root output, the latest-ending LLM output is used"
        );

        store
            .put_spans(&[llm("t2", "a", 0, 10, "m", (1, 1), None)])
            .expect("put");
        let s2 = summary(&store, "t2");
        assert_eq!(
            s2.cost_usd, None,
            "cost is null, never 0, when no span had a cost"
        );
        assert_eq!(s2.status, Status::Ok, "a trace without failures is ok");
        assert_eq!(s2.error, None, "error is null without error spans");
        assert_eq!(
            s2.input_preview.as_deref(),
            Some("question a"),
            "a chat input previews its last user message"
        );
        assert_eq!(
            s2.output_preview.as_deref(),
            Some("answer a"),
            "a chat completion previews choices[0].message.content"
        );
    }

    #[test]
    fn previews_are_short_single_lines() {
        let long = "word\n ".repeat(100);
        let p = clip(&long).expect("text gives a preview");
        assert_eq!(
            p.chars().count(),
            PREVIEW_CHARS,
            "a preview is cut at the char limit"
        );
        assert!(
            p.ends_with('…') && !p.contains('\n'),
            "a cut preview ends with an ellipsis and is one line"
        );
        assert_eq!(clip("  "), None, "blank text gives no preview");
        assert_eq!(
            input_preview(&json!({"a": 1})).as_deref(),
            Some(r#"{"a":1}"#),
            "other JSON previews compactly"
        );
        let anthropic =
            json!({"content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]});
        assert_eq!(
            output_preview(&anthropic).as_deref(),
            Some("hi there"),
            "text blocks are joined"
        );
        let huge = json!({"data": "x".repeat(1_000_000)});
        assert!(
            compact_json(&huge).len() <= PREVIEW_CHARS * 8,
            "compact JSON of a huge body is capped"
        );
    }

    #[test]
    fn arrival_order_does_not_change_the_summary() {
        let spans = agent_trace("t1");
        let (_d1, a) = temp_store();
        a.put_spans(&spans).expect("put");
        let (_d2, b) = temp_store();
        for s in spans.iter().rev() {
            b.put_spans(std::slice::from_ref(s)).expect("put");
        }
        let (_d3, c) = temp_store();
        c.put_spans(&[spans[3].clone(), spans[1].clone()])
            .expect("put");
        c.put_spans(&[spans[4].clone(), spans[0].clone(), spans[2].clone()])
            .expect("put");
        let (sa, sb, sc) = (summary(&a, "t1"), summary(&b, "t1"), summary(&c, "t1"));
        assert_eq!(
            sa, sb,
            "inserting the same spans in reverse order gives the same summary"
        );
        assert_eq!(
            sa, sc,
            "inserting the same spans in shuffled batches gives the same summary"
        );
    }

    #[test]
    fn a_late_earlier_span_moves_the_trace_in_the_time_index() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[span("late", "l1", 30_000, 10).with(child_of("lroot"))])
            .expect("put");
        store
            .put_spans(&[span("mid", "m1", 20_000, 10)])
            .expect("put");
        assert_eq!(
            list(&store, |_| {}),
            ["late", "mid"],
            "newest trace start first"
        );
        assert_eq!(
            list(&store, |q| q.status = Some(Status::Ok)),
            ["late", "mid"],
            "both are ok"
        );

        let root = span("late", "lroot", 10_000, 30_000)
            .with(failed("boom"))
            .with(|s| s.name = "late root".into());
        store.put_spans(&[root]).expect("put");
        assert_eq!(
            list(&store, |_| {}),
            ["mid", "late"],
            "the trace moves to its new, earlier start and appears once"
        );
        assert_eq!(
            list(&store, |q| q.status = Some(Status::Ok)),
            ["mid"],
            "the old status index entry is gone"
        );
        assert_eq!(
            list(&store, |q| q.status = Some(Status::Error)),
            ["late"],
            "the new status index entry exists"
        );
        let s = summary(&store, "late");
        assert_eq!(
            s.name, "late root",
            "a parentless span that arrives late becomes the root"
        );
        assert_eq!(
            s.start_time,
            Timestamp(T0 + 10_000_000),
            "the start moved earlier"
        );

        let late_keys = |p: u8| {
            keys_with_prefix(&store, p)
                .into_iter()
                .filter(|k| contains(k, b"late"))
                .count()
        };
        assert_eq!(
            late_keys(P_TIME),
            1,
            "exactly one time-index key remains for the trace"
        );
        assert_eq!(
            late_keys(P_INDEX),
            1,
            "exactly one secondary-index key (its status) remains for the trace"
        );
        let old = inv(T0 + 30_000_000).to_be_bytes();
        assert!(
            !keys_with_prefix(&store, P_TIME)
                .iter()
                .chain(&keys_with_prefix(&store, P_INDEX))
                .any(|k| contains(k, &old)),
            "no index key still carries the old start"
        );
    }

    #[test]
    fn resending_a_span_id_replaces_the_span() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[
                llm("t", "a", 0, 100, "m1", (10, 10), Some(0.5)),
                span("t", "b", 0, 50),
            ])
            .expect("put");
        let resent = llm("t", "a", 5, 100, "m2", (1, 2), Some(0.25));
        store.put_spans(std::slice::from_ref(&resent)).expect("put");
        let (s, spans) = store.get_trace("t").expect("get").expect("exists");
        assert_eq!(s.span_count, 2, "a re-sent span id is not counted twice");
        assert_eq!(
            (s.input_tokens, s.output_tokens, s.cost_usd),
            (1, 2, Some(0.25)),
            "only the new version counts"
        );
        assert_eq!(s.models, ["m2"], "the replaced span's model is gone");
        assert_eq!(spans.len(), 2, "the old span record is removed");
        assert_eq!(
            store.get_span("a").expect("get"),
            Some(resent),
            "the span id resolves to the new version"
        );
        assert_eq!(
            list(&store, |q| q.model = Some("m1".into())),
            Vec::<String>::new(),
            "the old model index is gone"
        );
        assert_eq!(
            keys_with_prefix(&store, P_CALL).len(),
            1,
            "one call record per call, the old one is removed"
        );

        // Duplicates inside one batch: the last one wins.
        store
            .put_spans(&[
                span("d", "x", 0, 10),
                span("d", "x", 1, 10),
                span("d", "x", 1, 20),
            ])
            .expect("put");
        let (s, spans) = store.get_trace("d").expect("get").expect("exists");
        assert_eq!(
            (s.span_count, spans.len()),
            (1, 1),
            "duplicates in one batch collapse into one span"
        );
        assert_eq!(s.duration_ms, 20.0, "the last duplicate in a batch wins");
        assert_eq!(
            store
                .stats(&StatsQuery::default())
                .expect("stats")
                .total
                .calls,
            1,
            "stats count the call once"
        );
    }

    #[test]
    fn invalid_ids_are_skipped() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[
                span("bad\0id", "a", 0, 1),
                span("ok", "bad id", 0, 1),
                span("ok", "b", 0, 1),
            ])
            .expect("put");
        assert_eq!(
            list(&store, |_| {}),
            ["ok"],
            "spans with invalid ids are not stored"
        );
        assert_eq!(
            summary(&store, "ok").span_count,
            1,
            "only the valid span was counted"
        );
    }

    fn stats_total(store: &Store) -> StatsRow {
        store.stats(&StatsQuery::default()).expect("stats").total
    }

    #[test]
    fn a_span_id_reused_by_another_trace_moves_the_span_out_of_the_old_trace() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[
                llm("a", "same", 0, 10, "m-old", (100, 10), Some(0.5)),
                llm("a", "keep", 1, 10, "m-keep", (1, 1), None),
            ])
            .expect("put");
        store
            .put_spans(&[
                llm("b", "same", 5, 10, "m-new", (7, 3), None),
                span("b", "other", 6, 10),
            ])
            .expect("put");
        assert_eq!(
            store.get_span("same").expect("get").map(|s| s.trace_id),
            Some("b".into()),
            "the span id resolves to the trace that sent it last"
        );
        let (a, a_spans) = store.get_trace("a").expect("get").expect("a still exists");
        assert_eq!(
            a_spans
                .iter()
                .map(|s| s.span_id.as_str())
                .collect::<Vec<_>>(),
            ["keep"],
            "the old trace no longer holds the moved span"
        );
        assert_eq!(
            (a.span_count, a.input_tokens, a.output_tokens, a.cost_usd),
            (1, 1, 1, None),
            "the old trace's summary no longer counts the moved span"
        );
        assert_eq!(
            a.models,
            ["m-keep"],
            "the moved span's model left the old trace"
        );
        assert_eq!(
            list(&store, |q| q.model = Some("m-old".into())),
            Vec::<String>::new(),
            "the old trace's index entry for the moved span's model is gone"
        );
        assert_eq!(
            a.start_time,
            Timestamp(T0 + 1000),
            "the old trace's start is recomputed from its remaining spans"
        );
        let b = summary(&store, "b");
        assert_eq!(
            (b.span_count, b.input_tokens),
            (2, 7),
            "the new trace counts the span"
        );
        let st = stats_total(&store);
        assert_eq!(
            (st.calls, st.input_tokens),
            (2, 8),
            "stats count the moved call once, in its new version, plus the other call"
        );

        // Moving a trace's only span makes that trace disappear.
        store.put_spans(&[span("c", "solo", 0, 10)]).expect("put");
        store.put_spans(&[span("d", "solo", 0, 10)]).expect("put");
        assert!(
            store.get_trace("c").expect("get").is_none(),
            "a trace whose only span moved away is gone"
        );
        assert!(
            !list(&store, |_| {}).contains(&"c".to_string()),
            "a trace whose only span moved away is no longer listed"
        );
        for kv in store.tree.iter() {
            let (k, _) = kv.expect("scan");
            let (prefix, tail) = k.split_first().expect("keys are never empty");
            let gone = match *prefix {
                P_SUMMARY => tail == b"c",
                P_TIME | P_INDEX => tail.ends_with(b"c"),
                P_SPAN => tail.starts_with(b"c\0"),
                P_CALL => contains(tail, b"c\0solo"),
                _ => false,
            };
            assert!(
                !gone,
                "no key is left for the vanished trace: {}",
                show_key(&k)
            );
        }
        assert_eq!(
            summary(&store, "d").span_count,
            1,
            "the span lives in its new trace"
        );
    }

    #[test]
    fn a_span_id_moving_between_traces_inside_one_batch_ends_in_the_last_one() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[
                llm("a", "x", 0, 10, "m", (1, 0), None),
                span("a", "a-root", 0, 10),
                llm("b", "x", 1, 10, "m", (2, 0), None),
                llm("c", "x", 2, 10, "m", (4, 0), None),
            ])
            .expect("put");
        assert_eq!(
            summary(&store, "a").span_count,
            1,
            "the first trace keeps only its other span"
        );
        assert!(
            store.get_trace("b").expect("get").is_none(),
            "a trace that held the span only in passing does not exist"
        );
        assert_eq!(
            summary(&store, "c").input_tokens,
            4,
            "the last trace holds the span"
        );
        let st = stats_total(&store);
        assert_eq!(
            (st.calls, st.input_tokens),
            (1, 4),
            "stats see only the final version of the call"
        );
    }

    #[test]
    fn traces_sharing_a_start_and_span_id_keep_separate_call_records() {
        let (_dir, store) = temp_store();
        // Stored by an older writer or raced: same start, same span id, two traces. Build the
        // keys directly, as put_spans would never leave the id in two traces.
        let a = llm("a", "dup", 0, 10, "m", (1, 0), None);
        let b = llm("b", "dup", 0, 10, "m", (2, 0), None);
        let ka = call_key(a.start_time.micros(), "a", "dup");
        let kb = call_key(b.start_time.micros(), "b", "dup");
        assert_ne!(ka, kb, "the call keys of two traces never collide");
        store.put_spans(std::slice::from_ref(&a)).expect("put");
        // Put `b`'s span key and call record next to `a`'s, as if both owned the id.
        let sb = span_key("b", b.start_time.micros(), "dup");
        store
            .tree
            .insert(&sb, encode_json(&b, &sb).expect("encode"))
            .expect("insert");
        store
            .tree
            .insert(&kb, encode_json(&CallRec::of(&b), &kb).expect("encode"))
            .expect("insert");
        assert_eq!(
            stats_total(&store).calls,
            2,
            "both traces' calls are counted"
        );
        assert!(store.delete_trace("b").expect("delete"), "b existed");
        let st = stats_total(&store);
        assert_eq!(
            (st.calls, st.input_tokens),
            (1, 1),
            "deleting one trace leaves the other trace's call record"
        );
        assert_eq!(
            store.get_span("dup").expect("get").map(|s| s.trace_id),
            Some("a".into()),
            "deleting a trace that does not own the span id keeps the lookup"
        );
    }

    #[test]
    fn deleting_a_trace_keeps_the_stats_of_a_trace_that_took_over_its_span_id() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[
                llm("a", "same", 0, 10, "m", (1, 0), None),
                span("a", "r", 0, 5),
            ])
            .expect("put");
        store
            .put_spans(&[llm("b", "same", 0, 10, "m", (5, 0), None)])
            .expect("put");
        assert!(store.delete_trace("a").expect("delete"), "a still existed");
        let st = stats_total(&store);
        assert_eq!(
            (st.calls, st.input_tokens),
            (1, 5),
            "the other trace's call record survives deleting the first trace"
        );
        assert_eq!(
            store.get_span("same").expect("get").map(|s| s.trace_id),
            Some("b".into()),
            "the span-id lookup still points at the other trace"
        );
        assert!(store.delete_trace("b").expect("delete"), "b existed");
        assert_eq!(
            stats_total(&store).calls,
            0,
            "deleting both leaves no call record"
        );
        assert_eq!(
            store.tree.iter().count(),
            1,
            "only the schema record is left once every trace is deleted"
        );
    }

    #[test]
    fn summaries_keep_at_most_the_smallest_tags_and_models() {
        let (_dir, store) = temp_store();
        let n = MAX_SUMMARY_VALUES + 10;
        let mut spans: Vec<Span> = (0..n)
            .map(|i| {
                llm(
                    "t",
                    &format!("s{i}"),
                    i as u64,
                    1,
                    &format!("model-{i:03}"),
                    (0, 0),
                    None,
                )
                .with(|s| s.tags = vec![format!("tag-{i:03}"), "common".into()])
            })
            .collect();
        spans.reverse(); // the kept values do not depend on arrival order
        store.put_spans(&spans).expect("put");
        let s = summary(&store, "t");
        assert_eq!(
            s.models.len(),
            MAX_SUMMARY_VALUES,
            "a summary holds at most the capped number of models"
        );
        assert_eq!(
            s.tags.len(),
            MAX_SUMMARY_VALUES,
            "a summary holds at most the capped number of tags"
        );
        assert_eq!(
            s.models.first().map(String::as_str),
            Some("model-000"),
            "the smallest models are kept"
        );
        assert!(
            s.tags.contains(&"common".to_string()) && s.tags.contains(&"tag-000".to_string()),
            "the smallest tags are kept"
        );
        let count = |field: u8| {
            keys_with_prefix(&store, P_INDEX)
                .into_iter()
                .filter(|k| k.get(1) == Some(&field))
                .count()
        };
        assert_eq!(
            count(F_MODEL),
            MAX_SUMMARY_VALUES,
            "only kept models are indexed"
        );
        assert_eq!(
            count(F_TAG),
            MAX_SUMMARY_VALUES,
            "only kept tags are indexed"
        );
        let last = format!("tag-{:03}", n - 1);
        assert_eq!(
            list(&store, |q| q.tag = Some(last.clone())),
            Vec::<String>::new(),
            "a tag beyond the cap is not indexed"
        );
        assert_eq!(
            list(&store, |q| q.tag = Some("tag-000".into())),
            ["t"],
            "a kept tag is indexed"
        );

        let (_d2, other) = temp_store();
        for sp in spans.iter().rev() {
            other.put_spans(std::slice::from_ref(sp)).expect("put");
        }
        assert_eq!(
            summary(&other, "t"),
            s,
            "capping gives the same summary whatever the arrival order"
        );
    }

    /// Four traces, 1 s apart, newest = t4.
    fn filter_fixture(store: &Store) {
        let t = |id: &str, at: u64, f: &dyn Fn(&mut Span)| {
            let mut s = llm(
                id,
                &format!("{id}-s"),
                at * 1000,
                10,
                "gpt-4o",
                (1, 1),
                None,
            );
            f(&mut s);
            store.put_spans(&[s]).expect("put");
        };
        t("t1", 1, &|s| {
            s.session_id = Some("S1".into());
            s.user_id = Some("alice".into());
            s.tags = vec!["prod".into()];
        });
        t("t2", 2, &|s| {
            s.session_id = Some("S1".into());
            s.user_id = Some("bob".into());
            s.status = Status::Error;
            s.llm.as_mut().expect("llm").request_model = Some("claude-3".into());
        });
        t("t3", 3, &|s| {
            s.session_id = Some("S2".into());
            s.user_id = Some("alice".into());
            s.tags = vec!["prod".into(), "exp".into()];
            s.name = "Summarize Invoice".into();
        });
        t("t4", 4, &|s| {
            s.user_id = Some("alice".into());
            s.status = Status::Cancelled;
            s.input = json!("Needle in the INPUT");
        });
    }

    #[test]
    fn each_filter_and_their_combinations() {
        let (_dir, store) = temp_store();
        filter_fixture(&store);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            list(&store, |_| {}),
            ["t4", "t3", "t2", "t1"],
            "no filter lists all, newest first"
        );
        assert_eq!(
            list(&store, |q| q.status = Some(Status::Error)),
            ["t2"],
            "status filter"
        );
        assert_eq!(
            list(&store, |q| q.status = Some(Status::Cancelled)),
            ["t4"],
            "status cancelled"
        );
        assert_eq!(
            list(&store, |q| q.model = s("gpt-4o")),
            ["t4", "t3", "t1"],
            "model filter"
        );
        assert_eq!(
            list(&store, |q| q.model = s("gpt")),
            Vec::<String>::new(),
            "model filter is exact"
        );
        assert_eq!(
            list(&store, |q| q.session_id = s("S1")),
            ["t2", "t1"],
            "session filter"
        );
        assert_eq!(
            list(&store, |q| q.user_id = s("alice")),
            ["t4", "t3", "t1"],
            "user filter"
        );
        assert_eq!(
            list(&store, |q| q.tag = s("prod")),
            ["t3", "t1"],
            "tag filter"
        );
        assert_eq!(
            list(&store, |q| q.q = s("invoice")),
            ["t3"],
            "q matches the name case-insensitively"
        );
        assert_eq!(
            list(&store, |q| q.q = s("needle in")),
            ["t4"],
            "q matches the input preview"
        );
        assert_eq!(
            list(&store, |q| q.q = s("CLAUDE")),
            ["t2"],
            "q matches models"
        );
        assert_eq!(
            list(&store, |q| q.q = s("t3")),
            ["t3"],
            "q matches the trace id"
        );
        assert_eq!(list(&store, |q| q.q = s("EXP")), ["t3"], "q matches tags");
        let at = |sec: u64| Some(Timestamp(T0 + sec * 1_000_000));
        assert_eq!(
            list(&store, |q| q.since = at(2)),
            ["t4", "t3", "t2"],
            "since is inclusive"
        );
        assert_eq!(
            list(&store, |q| q.until = at(3)),
            ["t2", "t1"],
            "until is exclusive"
        );
        assert_eq!(
            list(&store, |q| (q.since, q.until) = (at(2), at(4))),
            ["t3", "t2"],
            "since and until together"
        );
        assert_eq!(
            list(&store, |q| (q.since, q.until) = (at(3), at(3))),
            Vec::<String>::new(),
            "an empty window is empty"
        );
        assert_eq!(
            list(&store, |q| q.until = Some(Timestamp(0))),
            Vec::<String>::new(),
            "until 0 is empty"
        );
        assert_eq!(
            list(&store, |q| (q.user_id, q.tag) = (s("alice"), s("prod"))),
            ["t3", "t1"],
            "user and tag"
        );
        assert_eq!(
            list(&store, |q| (q.session_id, q.status) =
                (s("S1"), Some(Status::Ok))),
            ["t1"],
            "session and status"
        );
        assert_eq!(
            list(&store, |q| (q.user_id, q.model, q.since) =
                (s("alice"), s("gpt-4o"), at(3))),
            ["t4", "t3"],
            "user, model and since"
        );
        assert_eq!(
            list(&store, |q| (q.tag, q.q) = (s("prod"), s("summarize"))),
            ["t3"],
            "tag and q"
        );
        assert_eq!(
            list(&store, |q| (q.session_id, q.user_id) = (s("S2"), s("bob"))),
            Vec::<String>::new(),
            "AND, not OR"
        );
    }

    #[test]
    fn index_values_with_nul_bytes_stay_exact() {
        let (_dir, store) = temp_store();
        store
            .put_spans(&[
                llm("a", "a1", 0, 1, "m", (0, 0), None),
                llm("b", "b1", 1, 1, "m\0x", (0, 0), None),
            ])
            .expect("put");
        store
            .put_spans(&[llm("c", "c1", 2, 1, "m\u{1}", (0, 0), None)])
            .expect("put");
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            list(&store, |q| q.model = s("m")),
            ["a"],
            "a value is not matched by a longer one containing 0x00"
        );
        assert_eq!(
            list(&store, |q| q.model = s("m\0x")),
            ["b"],
            "a value containing 0x00 is found exactly"
        );
        assert_eq!(
            list(&store, |q| q.model = s("m\u{1}")),
            ["c"],
            "a value containing 0x01 is found exactly"
        );
    }

    #[test]
    fn cursor_pagination_returns_every_trace_exactly_once() {
        let (_dir, store) = temp_store();
        // Pairs share a start time so the trace id breaks ties.
        let spans: Vec<Span> = (0..25)
            .map(|i| span(&format!("tr{i:02}"), &format!("s{i}"), (i / 2) * 1000, 5))
            .collect();
        store.put_spans(&spans).expect("put");
        for filter in [None, Some(Status::Ok)] {
            let mut seen = Vec::new();
            let mut cursor = None;
            let mut pages = 0;
            loop {
                let q = TraceQuery {
                    limit: 10,
                    cursor: cursor.clone(),
                    status: filter,
                    ..TraceQuery::default()
                };
                let page = store.list_traces(&q).expect("list");
                pages += 1;
                seen.extend(page.traces.iter().map(|t| t.trace_id.clone()));
                match page.next_cursor {
                    Some(c) => cursor = Some(Cursor::decode(&c).expect("next_cursor decodes")),
                    None => break,
                }
            }
            assert_eq!(
                pages, 3,
                "25 traces at limit 10 take three pages, the last without next_cursor"
            );
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                (seen.len(), unique.len()),
                (25, 25),
                "every trace is returned exactly once"
            );
            let starts: Vec<u64> = seen
                .iter()
                .map(|id| summary(&store, id).start_time.micros())
                .collect();
            assert!(
                starts.windows(2).all(|w| w[0] >= w[1]),
                "pages run newest first"
            );
        }
        let q = TraceQuery {
            limit: 25,
            ..TraceQuery::default()
        };
        assert_eq!(
            store.list_traces(&q).expect("list").next_cursor,
            None,
            "an exact last page has no next_cursor"
        );
    }

    #[test]
    fn cursors_round_trip_and_malformed_ones_decode_to_none() {
        let c = Cursor {
            start_us: T0,
            trace_id: "abc-1.2:3_x".into(),
        };
        assert_eq!(
            Cursor::decode(&c.encode()),
            Some(c.clone()),
            "a cursor round-trips"
        );
        assert!(
            c.encode().bytes().all(|b| b.is_ascii_hexdigit()),
            "the wire form is URL-safe"
        );
        let mut bad_id = vec![CURSOR_VERSION];
        bad_id.extend_from_slice(&T0.to_be_bytes());
        bad_id.extend_from_slice(b"a b");
        let mut wrong_version = hex::decode(c.encode()).expect("hex");
        wrong_version[0] = 9;
        for bad in [
            String::new(),
            "zz".into(),
            "abc".into(),
            "01".into(),
            hex::encode([CURSOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 1]),
            hex::encode(bad_id),
            hex::encode(wrong_version),
            hex::encode([CURSOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF]),
        ] {
            assert_eq!(
                Cursor::decode(&bad),
                None,
                "a malformed cursor {bad:?} decodes to None"
            );
        }
    }

    #[test]
    fn delete_removes_everything_about_the_trace() {
        let (_dir, store) = temp_store();
        store.put_spans(&agent_trace("doomed")).expect("put");
        store
            .put_spans(
                &agent_trace("kept")
                    .into_iter()
                    .map(|s| s.with(|s| s.span_id.push_str("-k")))
                    .collect::<Vec<_>>(),
            )
            .expect("put");
        assert!(
            store.delete_trace("doomed").expect("delete"),
            "deleting an existing trace reports it existed"
        );
        assert!(
            !store.delete_trace("doomed").expect("delete"),
            "deleting it again reports it did not exist"
        );
        assert!(
            store.get_trace("doomed").expect("get").is_none(),
            "the trace is gone"
        );
        assert_eq!(
            store.get_span("call1").expect("get"),
            None,
            "its spans are gone"
        );
        assert_eq!(
            list(&store, |_| {}),
            ["kept"],
            "only the other trace is listed"
        );
        for kv in store.tree.iter() {
            let (k, v) = kv.expect("scan");
            assert!(
                !contains(&k, b"doomed") && !contains(&v, b"doomed"),
                "no key or value mentions the deleted trace: {}",
                show_key(&k)
            );
            assert!(
                !contains(&k, b"call1") || contains(&k, b"call1-k"),
                "no key names a deleted span"
            );
        }
        assert_eq!(
            store
                .stats(&StatsQuery::default())
                .expect("stats")
                .total
                .calls,
            3,
            "its call records are gone"
        );
        assert_eq!(
            summary(&store, "kept").span_count,
            5,
            "the other trace is untouched"
        );
    }

    /// A store with moved, replaced, out-of-order and deleted spans: everything `check` looks at.
    fn busy_store() -> (tempfile::TempDir, Store) {
        let (dir, store) = temp_store();
        store.put_spans(&agent_trace("a")).expect("put");
        let mut b = agent_trace("b");
        b.reverse();
        for s in &mut b {
            s.span_id.push_str("-b");
        }
        store.put_spans(&b).expect("put");
        store
            .put_spans(
                &agent_trace("doomed")
                    .into_iter()
                    .map(|s| s.with(|s| s.span_id.push_str("-d")))
                    .collect::<Vec<_>>(),
            )
            .expect("put");
        store.delete_trace("doomed").expect("delete");
        // A span re-sent with changes, and one that moves to another trace.
        let moved = llm("c", "call2-b", 5, 10, "gpt-4o", (1, 1), Some(0.5));
        store.put_spans(&[moved]).expect("put");
        let replaced = span("a", "tool1", 220, 150).with(|s| s.kind = Kind::Tool);
        store.put_spans(&[replaced]).expect("put");
        (dir, store)
    }

    #[test]
    fn check_finds_a_consistent_store_clean_and_counts_its_records() {
        let (_dir, store) = busy_store();
        let report = store.check().expect("check");
        assert!(
            report.is_clean(),
            "a store written through the API is consistent: {report:?}"
        );
        assert_eq!(report.traces, 3, "traces a, b and c are counted");
        assert_eq!(report.summaries, 3, "one summary per trace");
        assert_eq!(report.spans, 10, "5 + 4 + 1 spans remain");
        assert_eq!(report.span_ids, 10, "one `i` record per span");
        assert_eq!(report.calls, 6, "one call record per LLM span");
        assert_eq!(report.time_index, 3, "one time-index entry per trace");
        assert!(
            report.secondary_index > 0,
            "secondary index entries are counted"
        );
    }

    #[test]
    fn check_reports_each_kind_of_corruption() {
        type Corruption = Box<dyn Fn(&Store)>;
        let cases: Vec<(&str, Corruption, &str)> = vec![
            (
                "stray key",
                Box::new(|s: &Store| s.insert_raw(b"zzz", b"1")),
                "unknown key",
            ),
            (
                "missing i",
                Box::new(|s: &Store| s.remove_raw(&span_id_key("call1"))),
                "no `i` record",
            ),
            (
                "i elsewhere",
                Box::new(|s: &Store| s.insert_raw(&span_id_key("call1"), &span_id_value("b", 7))),
                "points elsewhere",
            ),
            (
                "dangling i",
                Box::new(|s: &Store| s.insert_raw(&span_id_key("ghost"), &span_id_value("a", 7))),
                "has no such span",
            ),
            (
                "missing t",
                Box::new(|s: &Store| {
                    let key = s
                        .load_agg("a")
                        .expect("load")
                        .expect("a exists")
                        .index_keys();
                    let t = key
                        .iter()
                        .find(|k| k[0] == P_TIME)
                        .expect("a t key")
                        .clone();
                    s.remove_raw(&t);
                }),
                "lacks its index entry",
            ),
            (
                "stray x",
                Box::new(|s: &Store| {
                    let mut key = index_prefix(F_MODEL, "gpt-4o");
                    key.extend_from_slice(&inv(T0).to_be_bytes());
                    key.extend_from_slice(b"nosuchtrace");
                    s.insert_raw(&key, b"");
                }),
                "whose summary does not list it",
            ),
            (
                "stale summary",
                Box::new(|s: &Store| {
                    let mut agg = s.load_agg("a").expect("load").expect("a exists");
                    agg.input_tokens += 1;
                    let key = summary_key("a");
                    s.insert_raw(&key, &encode_json(&agg, &key).expect("encode"));
                }),
                "differs from a recomputation",
            ),
            (
                "missing summary",
                Box::new(|s: &Store| s.remove_raw(&summary_key("a"))),
                "has spans but no summary",
            ),
            (
                "orphan summary",
                Box::new(|s: &Store| {
                    let key = summary_key("lonely");
                    s.insert_raw(
                        &key,
                        &encode_json(&Agg::new("lonely"), &key).expect("encode"),
                    );
                }),
                "has no spans",
            ),
            (
                "orphan call",
                Box::new(|s: &Store| s.insert_raw(&call_key(T0, "a", "ghost"), b"{}")),
                "has no span",
            ),
            (
                "missing call",
                Box::new(|s: &Store| s.remove_raw(&call_key(T0 + 10_000, "a", "call1"))),
                "has no `l` record",
            ),
            (
                "undecodable span",
                Box::new(|s: &Store| s.insert_raw(&span_key("a", T0, "root"), b"not json")),
                "does not decode",
            ),
        ];
        for (name, corrupt_it, expected) in cases {
            let (_dir, store) = busy_store();
            corrupt_it(&store);
            let report = store.check().expect("check");
            assert!(!report.is_clean(), "{name}: a corrupted store is reported");
            assert!(
                report.problems.iter().any(|p| p.contains(expected)),
                "{name}: the report says {expected:?}: {:?}",
                report.problems
            );
        }
    }

    #[test]
    fn retention_by_age_deletes_only_traces_that_started_before_the_cutoff() {
        let (_dir, store) = temp_store();
        for (i, trace) in ["old-1", "old-2", "new-1"].iter().enumerate() {
            let spans: Vec<Span> = agent_trace(trace)
                .into_iter()
                .map(|s| {
                    s.with(|s| {
                        s.span_id = format!("{}-{i}", s.span_id);
                        s.parent_span_id = s.parent_span_id.take().map(|p| format!("{p}-{i}"));
                        let shift = i as u64 * 3_600_000_000;
                        s.start_time = Timestamp(s.start_time.micros() + shift);
                        s.end_time = Timestamp(s.end_time.micros() + shift);
                    })
                })
                .collect();
            store.put_spans(&spans).expect("put");
        }
        // Cut between old-2 (T0 + 1 h) and new-1 (T0 + 2 h).
        let cutoff = Timestamp(T0 + 90 * 60 * 1_000_000);
        assert_eq!(
            store
                .enforce_retention(Some(cutoff), None)
                .expect("retention"),
            2,
            "both traces that started before the cutoff are deleted"
        );
        assert_eq!(list(&store, |_| {}), ["new-1"], "the newer trace is kept");
        assert_eq!(store.retention_deleted(), 2, "deletions are counted");
        let report = store.check().expect("check");
        assert!(
            report.is_clean(),
            "retention keeps indexes consistent: {report:?}"
        );
        assert_eq!(
            store
                .enforce_retention(Some(cutoff), None)
                .expect("retention"),
            0,
            "a second pass finds nothing to delete"
        );
    }

    #[test]
    fn retention_by_size_deletes_the_oldest_traces_until_the_live_data_fits() {
        let (_dir, store) = temp_store();
        let big = "x".repeat(20_000);
        for i in 0..20u64 {
            let s = span(&format!("t{i:02}"), &format!("s{i:02}"), i * 1000, 10)
                .with(|s| s.input = json!(big.clone()));
            store.put_spans(&[s]).expect("put");
        }
        store.flush().expect("flush");
        let live = store.live_bytes().expect("live");
        assert_eq!(
            store
                .enforce_retention(None, Some(store.size_on_disk() + 1))
                .expect("retention"),
            0,
            "a store under its limit loses nothing"
        );
        let max = live / 2;
        assert!(store.size_on_disk() > max, "the fixture is over the limit");
        let deleted = store.enforce_retention(None, Some(max)).expect("retention");
        assert!(deleted >= 10, "at least half the traces go: {deleted}");
        assert!(
            store.live_bytes().expect("live") <= max / 10 * 9,
            "the live data ends at most at 90 % of the limit"
        );
        let kept = list(&store, |q| q.limit = 100);
        assert_eq!(kept.len() as u64, 20 - deleted, "the rest are kept");
        let newest: Vec<String> = (0..20u64 - deleted)
            .map(|i| format!("t{:02}", 19 - i))
            .collect();
        assert_eq!(kept, newest, "the oldest traces go first");
        let report = store.check().expect("check");
        assert!(
            report.is_clean(),
            "retention keeps indexes consistent: {report:?}"
        );
    }

    #[test]
    fn data_survives_reopening_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let before = {
            let store = open(dir.path());
            store.put_spans(&agent_trace("t1")).expect("put");
            store.flush().expect("flush");
            summary(&store, "t1")
        };
        let store = open(dir.path());
        assert_eq!(
            summary(&store, "t1"),
            before,
            "the summary is still there after reopening"
        );
        assert_eq!(
            store.get_trace("t1").expect("get").expect("exists").1.len(),
            5,
            "the spans are still there"
        );
        assert_eq!(
            list(&store, |q| q.tag = Some("beta".into())),
            ["t1"],
            "the indexes are still there"
        );
    }

    /// `Store::open`, retried (bounded) while the error is still the directory lock, in case a
    /// loaded machine keeps a dropped handle's threads alive past `open`'s own wait.
    fn reopen(dir: &Path) -> Result<Store, StoreError> {
        let mut attempts = 0;
        loop {
            match Store::open(dir, &StoreOptions::default()) {
                Err(StoreError::Open { source, .. }) if is_lock_error(&source) && attempts < 5 => {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        store.tree.insert(SCHEMA_KEY, &b"2"[..]).expect("insert");
        store.flush().expect("flush");
        drop(store);
        let err = reopen(dir.path())
            .err()
            .expect("a newer schema must not open");
        assert!(
            matches!(err, StoreError::Schema { ref found, supported: 1 } if found == "2"),
            "the error names both versions: {err}"
        );
    }

    #[test]
    fn open_waits_for_a_lock_released_shortly_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = open(dir.path());
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = Store::open(dir.path(), &StoreOptions::default());
        holder.join().expect("the holder thread ends");
        assert!(
            second.is_ok(),
            "open waits for a lock that is released within its wait: {:?}",
            second.err()
        );
    }

    #[test]
    fn open_reports_a_lock_that_stays_held() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _held = open(dir.path());
        let began = Instant::now();
        let err = Store::open_waiting(
            dir.path(),
            &StoreOptions::default(),
            Duration::from_millis(100),
        )
        .err()
        .expect("a directory locked by a live handle does not open");
        assert!(
            matches!(&err, StoreError::Open { source, .. } if is_lock_error(source)),
            "the error is the lock error: {err}"
        );
        assert!(
            began.elapsed() >= Duration::from_millis(100),
            "open retried for its whole wait before giving up"
        );
    }

    #[test]
    fn reservoir_keeps_every_value_up_to_its_cap_then_a_bounded_uniform_sample() {
        let mut small = Reservoir::new(10);
        for v in 0..10 {
            small.add(f64::from(v));
        }
        assert_eq!(
            small.values,
            (0..10).map(f64::from).collect::<Vec<_>>(),
            "up to the cap every value is kept, so quantiles are exact"
        );

        let fill = || {
            let mut r = Reservoir::new(1000);
            for v in 1..=100_000 {
                r.add(f64::from(v));
            }
            r
        };
        let (a, b) = (fill(), fill());
        assert_eq!(a.values.len(), 1000, "the sample never grows past its cap");
        assert_eq!(a.seen, 100_000, "every value is seen");
        assert_eq!(
            a.values, b.values,
            "the fixed seed makes sampling reproducible"
        );
        let q = quantiles(a.values);
        let near = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 5_000.0);
        assert!(
            near(q.p50, 50_000.0) && near(q.p95, 95_000.0) && near(q.p99, 99_000.0),
            "sampled quantiles stay close to the true ones: {q:?}"
        );
    }

    #[test]
    fn stats_count_calls_tokens_cost_and_quantiles() {
        let (_dir, store) = temp_store();
        let mut spans = Vec::new();
        for i in 0..10u64 {
            let model = if i < 6 { "gpt-4o" } else { "claude" };
            let cost = (i % 2 == 0).then_some(0.01);
            let mut s = llm(
                "t",
                &format!("c{i}"),
                i * 1000,
                (i + 1) * 10,
                model,
                (i, 2 * i),
                cost,
            );
            if i == 3 || i == 7 {
                s = s.with(failed("boom"));
            }
            if i < 4 {
                let l = s.llm.as_mut().expect("llm");
                l.stream = true;
                l.ttft_ms = Some(i as f64 + 1.0);
            }
            spans.push(s);
        }
        spans.push(span("t", "chain", 0, 20_000)); // not a call: ignored by stats
        spans.push(
            llm("u", "nostream", 0, 5, "x", (0, 0), None)
                .with(|s| s.llm.as_mut().expect("llm").ttft_ms = Some(99.0)),
        );
        store.put_spans(&spans).expect("put");

        let window = StatsQuery {
            since: Some(Timestamp(T0)),
            until: Some(Timestamp(T0 + 10_000_000)),
            group_by_model: true,
            series: None,
        };
        let st = store.stats(&window).expect("stats");
        let t = &st.total;
        assert_eq!(
            t.calls, 11,
            "every call span in the window counts, chain spans do not"
        );
        assert_eq!(t.errors, 2, "errors count error-status calls");
        assert_eq!(
            (t.input_tokens, t.output_tokens),
            (45, 90),
            "tokens are summed"
        );
        let cost = t.cost_usd.expect("some calls had a cost");
        assert!(
            (cost - 0.05).abs() < 1e-12,
            "cost sums the known costs, got {cost}"
        );
        // Latencies: 5, 10, 20, ..., 100 ms → nearest rank p50 = 6th = 50, p95 = p99 = 11th = 100.
        assert_eq!(
            t.latency_ms,
            Quantiles {
                p50: Some(50.0),
                p95: Some(100.0),
                p99: Some(100.0)
            },
            "nearest-rank latency quantiles"
        );
        assert_eq!(
            t.ttft_ms,
            Quantiles {
                p50: Some(2.0),
                p95: Some(4.0),
                p99: Some(4.0)
            },
            "ttft counts streamed calls only"
        );

        let groups = st.groups.expect("group_by_model gives rows");
        let models: Vec<(&str, u64)> = groups
            .iter()
            .map(|g| (g.model.as_deref().unwrap_or("-"), g.calls))
            .collect();
        assert_eq!(
            models,
            [("gpt-4o", 6), ("claude", 4), ("x", 1)],
            "groups are per model, by calls desc"
        );
        assert_eq!(groups[1].errors, 1, "group errors are per model");
        assert_eq!(
            groups[2].cost_usd, None,
            "a group without known cost has cost null"
        );

        let narrow = StatsQuery {
            since: Some(Timestamp(T0 + 2_000_000)),
            until: Some(Timestamp(T0 + 4_000_000)),
            group_by_model: false,
            series: None,
        };
        let st = store.stats(&narrow).expect("stats");
        assert_eq!(st.total.calls, 2, "since is inclusive and until exclusive");
        assert_eq!(st.groups, None, "no groups unless asked");
        let empty = store
            .stats(&StatsQuery {
                since: Some(Timestamp(T0 * 2)),
                ..StatsQuery::default()
            })
            .expect("stats");
        assert_eq!(
            empty.total,
            StatsRow::default(),
            "an empty window has zero counts and null quantiles"
        );
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        assert_eq!(
            quantiles(vec![]),
            Quantiles::default(),
            "no values, no quantiles"
        );
        assert_eq!(
            quantiles(vec![7.0]),
            Quantiles {
                p50: Some(7.0),
                p95: Some(7.0),
                p99: Some(7.0)
            },
            "one value is every quantile"
        );
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(
            quantiles(hundred),
            Quantiles {
                p50: Some(50.0),
                p95: Some(95.0),
                p99: Some(99.0)
            },
            "rank ceil(p·n)"
        );
    }

    #[test]
    fn series_covers_the_window_in_clock_aligned_buckets_and_caps_their_number() {
        let minute = 60_000_000;
        let s = Series::covering(T0 + 30_000_000, T0 + 150_000_000, minute).expect("3 buckets");
        assert_eq!(s.first_us % minute, 0, "buckets start on the minute");
        assert!(s.first_us <= T0 + 30_000_000 && s.first_us + minute > T0 + 30_000_000);
        assert_eq!(s.count, 3, "0:30..=2:30 touches three minutes");
        assert_eq!(
            Series::covering(0, (MAX_BUCKETS as u64) * 1000, 1000),
            Err(MAX_BUCKETS as u64 + 1),
            "one bucket too many is refused with the count needed"
        );
        assert!(Series::covering(0, (MAX_BUCKETS as u64) * 1000 - 1, 1000).is_ok());
    }

    #[test]
    fn stats_series_fills_dense_buckets_from_the_same_scan() {
        let (_dir, store) = temp_store();
        // T0 is a whole second; calls at 0.5 s, 1.2 s, 1.7 s (error) and 3.1 s, two models.
        store
            .put_spans(&[
                llm("a", "c1", 500, 10, "gpt-4o", (1, 2), Some(0.5)),
                llm("a", "c2", 1200, 20, "gpt-4o-mini", (3, 4), None),
                llm("b", "c3", 1700, 40, "gpt-4o", (5, 6), Some(0.25)).with(failed("boom")),
                llm("b", "c4", 3100, 80, "gpt-4o", (7, 8), None),
                span("b", "chain", 0, 4000),
            ])
            .expect("put");
        let q = StatsQuery {
            since: Some(Timestamp(T0)),
            until: Some(Timestamp(T0 + 4_000_000)),
            group_by_model: true,
            series: Some(Series::covering(T0, T0 + 3_999_999, 1_000_000).expect("4 buckets")),
        };
        let st = store.stats(&q).expect("stats");
        assert_eq!(st.bucket_seconds, Some(1));
        let series = st.series.expect("a series was asked for");
        let calls: Vec<u64> = series.iter().map(|r| r.stats.calls).collect();
        assert_eq!(calls, [1, 2, 0, 1], "calls per second, the empty one kept");
        assert_eq!(series[1].stats.errors, 1);
        assert_eq!(
            (series[1].stats.input_tokens, series[1].stats.output_tokens),
            (8, 10)
        );
        assert_eq!(series[1].stats.latency_ms.p95, Some(40.0));
        assert_eq!(
            series[2].stats.latency_ms.p50, None,
            "empty bucket: no quantiles"
        );
        assert_eq!(series[0].start, Timestamp(T0));
        assert_eq!(series[0].end, Timestamp(T0 + 1_000_000));
        assert_eq!(series[3].end, Timestamp(T0 + 4_000_000));
        let models = series[1].models.as_ref().expect("per-model counts");
        let names: Vec<(&str, u64, u64)> = models
            .iter()
            .map(|m| (m.model.as_str(), m.calls, m.errors))
            .collect();
        assert_eq!(names, [("gpt-4o", 1, 1), ("gpt-4o-mini", 1, 0)]);
        assert_eq!(
            series[0].models.as_ref().map(|m| m[0].cost_usd),
            Some(Some(0.5))
        );
        assert_eq!(
            series.iter().map(|r| r.stats.calls).sum::<u64>(),
            st.total.calls,
            "the series adds up to the totals"
        );
    }

    #[test]
    fn series_names_a_bounded_number_of_models() {
        let (_dir, store) = temp_store();
        let spans: Vec<Span> = (0..(MAX_SERIES_MODELS as u64 + 5))
            .map(|i| {
                llm(
                    "t",
                    &format!("c{i}"),
                    i,
                    1,
                    &format!("m{i:02}"),
                    (0, 0),
                    None,
                )
            })
            .collect();
        store.put_spans(&spans).expect("put");
        let q = StatsQuery {
            group_by_model: true,
            series: Some(Series::covering(T0, T0 + 1_000_000, 10_000_000).expect("one bucket")),
            ..StatsQuery::default()
        };
        let st = store.stats(&q).expect("stats");
        let models = st.series.expect("series")[0]
            .models
            .clone()
            .expect("models");
        assert_eq!(
            models.len(),
            MAX_SERIES_MODELS + 1,
            "the named ones plus (other)"
        );
        let other = models
            .iter()
            .find(|m| m.model == OTHER_MODELS)
            .expect("other");
        assert_eq!(other.calls, 5, "later models are folded into (other)");
    }

    #[test]
    fn call_bounds_are_the_first_and_last_call_in_the_window() {
        let (_dir, store) = temp_store();
        assert_eq!(store.call_bounds(None, None).expect("bounds"), None);
        store
            .put_spans(&[
                llm("t", "a", 5, 1, "m", (0, 0), None),
                llm("t", "b", 9, 1, "m", (0, 0), None),
                llm("t", "c", 20, 1, "m", (0, 0), None),
                span("t", "chain", 0, 100),
            ])
            .expect("put");
        assert_eq!(
            store.call_bounds(None, None).expect("bounds"),
            Some((T0 + 5_000, T0 + 20_000)),
            "chain spans are not calls"
        );
        assert_eq!(
            store
                .call_bounds(Some(Timestamp(T0 + 6_000)), Some(Timestamp(T0 + 20_000)))
                .expect("bounds"),
            Some((T0 + 9_000, T0 + 9_000))
        );
    }

    #[test]
    fn sessions_are_listed_by_latest_activity_with_totals_and_traces_in_order() {
        let (_dir, store) = temp_store();
        let turn = |trace: &str, session: &str, start: u64, cost: Option<f64>| {
            llm(
                trace,
                &format!("{trace}-c"),
                start,
                10,
                "gpt-4o",
                (10, 5),
                cost,
            )
            .with(|s| {
                s.session_id = Some(session.into());
                s.user_id = Some("ada".into());
            })
        };
        store
            .put_spans(&[
                turn("a1", "alpha", 0, Some(0.25)),
                turn("b1", "beta", 100, None),
                turn("a2", "alpha", 200, Some(0.5)).with(failed("boom")),
                turn("g1", "gamma", 300, None),
                turn("b2", "beta", 400, None),
                llm("nosession", "n", 500, 1, "m", (0, 0), None),
            ])
            .expect("put");
        let page = store
            .list_sessions(&SessionQuery {
                limit: 10,
                ..SessionQuery::default()
            })
            .expect("sessions");
        let ids: Vec<&str> = page
            .sessions
            .iter()
            .map(|s| s.session_id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["beta", "gamma", "alpha"],
            "newest activity first, each once"
        );
        let alpha = &page.sessions[2];
        assert_eq!(alpha.trace_count, 2);
        assert_eq!(alpha.errors, 1);
        assert_eq!(alpha.status, Status::Error);
        assert_eq!((alpha.input_tokens, alpha.output_tokens), (20, 10));
        assert_eq!(alpha.cost_usd, Some(0.75));
        assert_eq!(alpha.start_time, Timestamp(T0));
        assert_eq!(alpha.end_time, Timestamp(T0 + 210_000));
        assert_eq!(alpha.last_trace_id, "a2");
        assert_eq!(alpha.user_ids, ["ada"]);
        assert!(alpha.complete);

        // Pages: one session per page, each once.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_sessions(&SessionQuery {
                    limit: 1,
                    cursor: cursor.clone(),
                    ..SessionQuery::default()
                })
                .expect("page");
            seen.extend(page.sessions.iter().map(|s| s.session_id.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(Cursor::decode(&c).expect("cursor")),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["beta", "gamma", "alpha"],
            "pagination lists each once"
        );

        // until: beta's newest before 350 ms is b1, so beta sorts after gamma.
        let page = store
            .list_sessions(&SessionQuery {
                limit: 10,
                until: Some(Timestamp(T0 + 350_000)),
                since: Some(Timestamp(T0 + 150_000)),
                ..SessionQuery::default()
            })
            .expect("window");
        let ids: Vec<&str> = page
            .sessions
            .iter()
            .map(|s| s.session_id.as_str())
            .collect();
        assert_eq!(ids, ["gamma", "alpha"], "sessions active in [since, until)");

        let found = store
            .list_sessions(&SessionQuery {
                limit: 10,
                q: Some("ALP".into()),
                ..SessionQuery::default()
            })
            .expect("q");
        assert_eq!(found.sessions.len(), 1);

        let (s, traces) = store
            .get_session("alpha", 1000)
            .expect("get")
            .expect("exists");
        assert_eq!(s.trace_count, 2);
        let order: Vec<&str> = traces.iter().map(|t| t.trace_id.as_str()).collect();
        assert_eq!(order, ["a1", "a2"], "a session's traces come oldest first");
        let (s, traces) = store.get_session("alpha", 1).expect("get").expect("exists");
        assert!(!s.complete, "a capped session says so");
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].trace_id, "a2", "the newest are kept");
        assert!(store.get_session("nope", 10).expect("get").is_none());
    }

    #[test]
    fn embeddings_are_previewed_as_text_not_vectors() {
        assert_eq!(
            input_preview(&json!({"model": "e", "input": ["rotate a key", "revoke it"]}))
                .as_deref(),
            Some("rotate a key · revoke it")
        );
        assert_eq!(
            output_preview(&json!({"object": "list", "data": [
                {"embedding": [0.1, 0.2, 0.3]}, {"embedding": [0.4, 0.5, 0.6]}]}))
            .as_deref(),
            Some("2 embeddings of 3 dimensions")
        );
        assert_eq!(
            output_preview(&json!({"data": [{"embedding": "AAAA"}]})).as_deref(),
            Some("1 embedding"),
            "base64 vectors too"
        );
    }
}

//! The reads: traces (summaries computed from spans at query time), one trace, one span, stats,
//! and trace deletion. Every API value reaches SQL through `sql::string` or as a Rust-formatted
//! number. Results are the sled store's types, computed with the same rules (see `store.rs`'s
//! `Agg`): root = the span without a parent first, then earliest start, then span id; "first"
//! values by (start, span id); the fallback output preview from the latest-ending LLM span;
//! models and tags capped at the 64 smallest; costs summed as integer picodollars.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::row::{status_of_rank, status_rank};
use super::{sql, ClickHouseError, ClickHouseStore};
use crate::span::{is_valid_id, Span, Timestamp};
use crate::store::from_pico;
use crate::store::{
    Cursor, ModelCounts, Quantiles, Series, SeriesRow, Stats, StatsQuery, StatsRow, TracePage,
    TraceQuery, TraceSummary, MAX_SERIES_MODELS, MAX_SUMMARY_VALUES, OTHER_MODELS, UNKNOWN_MODEL,
};

/// Up to this many calls in a stats window, quantiles are exact nearest-rank (as the sled store
/// computes them); above it, ClickHouse's bounded-memory `quantiles` (reservoir sampling).
const EXACT_QUANTILES_UP_TO: u64 = 1_000_000;
/// How long `delete_trace` waits for ClickHouse to finish its delete mutations.
const DELETE_WAIT: Duration = Duration::from_secs(30);
const DELETE_POLL: Duration = Duration::from_millis(50);
/// `get_trace` reads a trace's summary and spans at most this many times while another
/// instance's insert makes them disagree.
const TRACE_READ_ATTEMPTS: u32 = 3;

/// The trace's root candidate, ranked as the sled store ranks it.
const ROOT: &str = "argMin(tuple(name, session_id, user_id, input_preview, output_preview), \
                    tuple(has_parent, start_us, span_id))";

/// The aggregate columns of a trace summary over `spans FINAL` grouped by trace_id.
pub(super) fn summary_columns() -> String {
    let cap = MAX_SUMMARY_VALUES;
    format!(
        "trace_id,
        min(start_us) AS t_start,
        max(end_us) AS t_end,
        max(status) AS t_status,
        count() AS t_spans,
        sum(is_llm) AS t_llm_calls,
        sum(input_tokens) AS t_input_tokens,
        sum(output_tokens) AS t_output_tokens,
        sum(cost_pico) AS t_cost_pico,
        arraySlice(arraySort(groupUniqArrayIf(ifNull(model, ''), ifNull(model, '') != '')), 1, {cap}) AS t_models,
        arraySlice(arraySort(groupUniqArrayArray(tags)), 1, {cap}) AS t_tags,
        tupleElement({ROOT}, 1) AS t_name,
        ifNull(tupleElement({ROOT}, 2), argMin(session_id, tuple(start_us, span_id))) AS t_session,
        ifNull(tupleElement({ROOT}, 3), argMin(user_id, tuple(start_us, span_id))) AS t_user,
        tupleElement({ROOT}, 4) AS t_input_preview,
        tupleElement({ROOT}, 5) AS t_root_output,
        argMax(llm_output, tuple(end_us, span_id)) AS t_llm_output,
        argMin(error_message, tuple(start_us, span_id)) AS t_error"
    )
}

#[derive(Debug, Deserialize)]
struct SummaryRow {
    trace_id: String,
    t_start: u64,
    t_end: u64,
    t_status: u8,
    t_spans: u64,
    t_llm_calls: u64,
    t_input_tokens: u64,
    t_output_tokens: u64,
    t_cost_pico: Option<u64>,
    t_models: Vec<String>,
    t_tags: Vec<String>,
    t_name: String,
    t_session: Option<String>,
    t_user: Option<String>,
    t_input_preview: Option<String>,
    t_root_output: Option<String>,
    t_llm_output: Option<String>,
    t_error: Option<String>,
}

impl SummaryRow {
    fn summary(self) -> TraceSummary {
        let (start, end) = (Timestamp(self.t_start), Timestamp(self.t_end));
        TraceSummary {
            trace_id: self.trace_id,
            name: self.t_name,
            start_time: start,
            end_time: end,
            duration_ms: start.ms_until(end),
            status: status_of_rank(self.t_status),
            error: self.t_error,
            span_count: self.t_spans,
            llm_calls: self.t_llm_calls,
            input_tokens: self.t_input_tokens,
            output_tokens: self.t_output_tokens,
            cost_usd: self.t_cost_pico.map(from_pico),
            models: self.t_models,
            session_id: self.t_session,
            user_id: self.t_user,
            tags: self.t_tags,
            input_preview: self.t_input_preview,
            output_preview: self.t_root_output.or(self.t_llm_output),
        }
    }
}

impl ClickHouseStore {
    /// Newest first by trace start (ties: trace id ascending, as sled's index orders them),
    /// every filter in SQL. `limit` is validated 1..=1000 by the caller (0 is treated as 1).
    pub async fn list_traces(&self, q: &TraceQuery) -> Result<TracePage, ClickHouseError> {
        let limit = q.limit.max(1);
        let db = &self.db;

        // Rows: the traces whose earliest span lies in the time window (a trace's start is its
        // earliest span's start), read from the time-ordered table first.
        let mut time = Vec::new();
        if let Some(s) = q.since {
            time.push(format!("start_us >= {}", s.micros()));
        }
        if let Some(u) = q.until {
            time.push(format!("start_us < {}", u.micros()));
        }
        if let Some(c) = &q.cursor {
            time.push(format!("start_us <= {}", c.start_us));
        }
        let mut where_clause = if time.is_empty() {
            String::new()
        } else {
            format!(
                "WHERE trace_id IN (SELECT trace_id FROM {db}.trace_times WHERE {})",
                time.join(" AND ")
            )
        };

        let mut having = Vec::new();
        if let Some(s) = q.since {
            having.push(format!("t_start >= {}", s.micros()));
        }
        if let Some(u) = q.until {
            having.push(format!("t_start < {}", u.micros()));
        }
        if let Some(c) = &q.cursor {
            having.push(format!(
                "(t_start < {start} OR (t_start = {start} AND trace_id > {id}))",
                start = c.start_us,
                id = sql::string(&c.trace_id)
            ));
        }
        // Without filters on summary fields, the page is decided by trace start alone: pick it
        // from the narrow `trace_times` table first, then summarise just those traces. Its rows
        // may be filtered by `until` and the cursor (the earliest row survives exactly when the
        // trace qualifies) but not by `since` (that would raise a trace's start).
        let by_time_only = q.status.is_none()
            && q.model.is_none()
            && q.tag.is_none()
            && q.session_id.is_none()
            && q.user_id.is_none()
            && q.q.is_none();
        if by_time_only {
            let mut rows = Vec::new();
            if let Some(u) = q.until {
                rows.push(format!("start_us < {}", u.micros()));
            }
            if let Some(c) = &q.cursor {
                rows.push(format!("start_us <= {}", c.start_us));
            }
            let rows = if rows.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", rows.join(" AND "))
            };
            let page_having = if having.is_empty() {
                String::new()
            } else {
                format!("HAVING {}", having.join(" AND "))
            };
            where_clause = format!(
                "WHERE trace_id IN (SELECT trace_id FROM (
                    SELECT trace_id, min(start_us) AS t_start FROM {db}.trace_times {rows}
                    GROUP BY trace_id {page_having}
                    ORDER BY t_start DESC, trace_id ASC LIMIT {fetch}))",
                fetch = limit + 1
            );
        }
        if let Some(s) = q.status {
            having.push(format!("t_status = {}", status_rank(s)));
        }
        if let Some(m) = &q.model {
            having.push(format!("has(t_models, {})", sql::string(m)));
        }
        if let Some(t) = &q.tag {
            having.push(format!("has(t_tags, {})", sql::string(t)));
        }
        if let Some(s) = &q.session_id {
            having.push(format!("ifNull(t_session = {}, 0)", sql::string(s)));
        }
        if let Some(u) = &q.user_id {
            having.push(format!("ifNull(t_user = {}, 0)", sql::string(u)));
        }
        // `q` has the sled store's semantics (`store::query_terms`): whole words, case-insensitive,
        // stop words ignored, every term required; a query with no terms filters nothing. A term
        // is letters and digits only, so it is safe inside a regular expression.
        let terms =
            q.q.as_deref()
                .map(crate::store::query_terms)
                .unwrap_or_default();
        for term in &terms {
            let tail = if term.chars().count() >= crate::store::MAX_TERM_CHARS {
                ""
            } else {
                "([^\\pL\\pN]|$)"
            };
            let re = sql::string(&format!("(^|[^\\pL\\pN]){term}{tail}"));
            let w = |col: &str| format!("match(lowerUTF8(ifNull({col}, '')), {re})");
            let fields = [
                w("trace_id"),
                w("t_name"),
                w("t_input_preview"),
                w("t_root_output"),
                w("t_llm_output"),
                w("t_error"),
                w("t_session"),
                w("t_user"),
                format!("arrayExists(x -> match(lowerUTF8(x), {re}), t_models)"),
                format!("arrayExists(x -> match(lowerUTF8(x), {re}), t_tags)"),
            ];
            having.push(format!("({})", fields.join(" OR ")));
        }
        let having_clause = if having.is_empty() {
            String::new()
        } else {
            format!("HAVING {}", having.join(" AND "))
        };

        let statement = format!(
            "SELECT {cols} FROM {db}.spans FINAL {where_clause}
             GROUP BY trace_id {having_clause}
             ORDER BY t_start DESC, trace_id ASC
             LIMIT {fetch}
             FORMAT JSONEachRow",
            cols = summary_columns(),
            fetch = limit + 1,
        );
        let rows: Vec<SummaryRow> = self.select(&statement).await?;
        let more = rows.len() > limit;
        let traces: Vec<TraceSummary> = rows
            .into_iter()
            .take(limit)
            .map(SummaryRow::summary)
            .collect();
        let next_cursor = more
            .then(|| traces.last())
            .flatten()
            .map(|t| Cursor {
                start_us: t.start_time.micros(),
                trace_id: t.trace_id.clone(),
            })
            .map(|c| c.encode());
        Ok(TracePage {
            traces,
            next_cursor,
        })
    }

    /// The summary and the spans ordered by start time (then span id); `None` for an unknown
    /// trace.
    pub async fn get_trace(
        &self,
        trace_id: &str,
    ) -> Result<Option<(TraceSummary, Vec<Span>)>, ClickHouseError> {
        if !is_valid_id(trace_id) {
            return Ok(None);
        }
        // The summary and the spans are two reads: a span another instance inserts between them
        // would make them disagree (a summary of 1 span beside 2 spans). Read again until they
        // agree; spans arrive in batches, so the second look almost always does.
        let mut attempt = 1;
        loop {
            let Some((summary, spans)) = self.read_trace(trace_id).await? else {
                return Ok(None);
            };
            if summary.span_count == spans.len() as u64 || attempt == TRACE_READ_ATTEMPTS {
                return Ok(Some((summary, spans)));
            }
            attempt += 1;
        }
    }

    /// One look at a trace: its summary, then its spans.
    async fn read_trace(
        &self,
        trace_id: &str,
    ) -> Result<Option<(TraceSummary, Vec<Span>)>, ClickHouseError> {
        let db = &self.db;
        let id = sql::string(trace_id);
        let summary: Vec<SummaryRow> = self
            .select(&format!(
                "SELECT {cols} FROM {db}.spans FINAL WHERE trace_id = {id}
                 GROUP BY trace_id FORMAT JSONEachRow",
                cols = summary_columns()
            ))
            .await?;
        let Some(summary) = summary.into_iter().next() else {
            return Ok(None);
        };
        let spans = self
            .select_spans(&format!(
                "SELECT span FROM {db}.spans FINAL WHERE trace_id = {id}
                 ORDER BY start_us, span_id FORMAT JSONEachRow"
            ))
            .await?;
        Ok(Some((summary.summary(), spans)))
    }

    /// The span with this id (the newest write when the id was sent under several traces).
    pub async fn get_span(&self, span_id: &str) -> Result<Option<Span>, ClickHouseError> {
        if !is_valid_id(span_id) {
            return Ok(None);
        }
        let db = &self.db;
        let id = sql::string(span_id);
        let spans = self
            .select_spans(&format!(
                "SELECT span FROM {db}.spans FINAL
                 WHERE trace_id IN (SELECT trace_id FROM {db}.span_locations WHERE span_id = {id})
                   AND span_id = {id}
                 ORDER BY version DESC LIMIT 1 FORMAT JSONEachRow"
            ))
            .await?;
        Ok(spans.into_iter().next())
    }

    /// Deletes the trace's rows from every table and waits (bounded) until ClickHouse has
    /// applied the deletes, so a read right after no longer sees the trace. `true` when the
    /// trace existed.
    pub async fn delete_trace(&self, trace_id: &str) -> Result<bool, ClickHouseError> {
        if !is_valid_id(trace_id) {
            return Ok(false);
        }
        let db = &self.db;
        let id = sql::string(trace_id);
        #[derive(Deserialize)]
        struct Count {
            n: u64,
        }
        let found: Vec<Count> = self
            .select(&format!(
                "SELECT count() AS n FROM {db}.spans WHERE trace_id = {id} FORMAT JSONEachRow"
            ))
            .await?;
        if found.first().is_none_or(|c| c.n == 0) {
            return Ok(false);
        }
        for table in ["spans", "trace_times", "span_locations"] {
            self.client
                .query(&format!(
                    "ALTER TABLE {db}.{table} DELETE WHERE trace_id = {id}"
                ))
                .await?;
        }
        self.wait_for_mutations().await?;
        Ok(true)
    }

    /// Polls `system.mutations` until this database has none pending (at most `DELETE_WAIT`).
    pub(super) async fn wait_for_mutations(&self) -> Result<(), ClickHouseError> {
        let name = sql::string(self.db.trim_matches('`'));
        let deadline = Instant::now() + DELETE_WAIT;
        #[derive(Deserialize)]
        struct Pending {
            n: u64,
        }
        loop {
            let pending: Vec<Pending> = self
                .select(&format!(
                    "SELECT count() AS n FROM system.mutations
                     WHERE database = {name} AND is_done = 0 FORMAT JSONEachRow"
                ))
                .await?;
            if pending.first().is_none_or(|p| p.n == 0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClickHouseError::Unavailable(format!(
                    "delete mutations still pending after {DELETE_WAIT:?}"
                )));
            }
            tokio::time::sleep(DELETE_POLL).await;
        }
    }

    /// Call statistics over spans of call kinds with start in `[since, until)`: the same rows,
    /// groups and series as the sled store's `stats`, computed by ClickHouse.
    pub async fn stats(&self, q: &StatsQuery) -> Result<Stats, ClickHouseError> {
        let db = &self.db;
        let mut filter = vec!["is_call = 1".to_string()];
        if let Some(s) = q.since {
            filter.push(format!("start_us >= {}", s.micros()));
        }
        if let Some(u) = q.until {
            filter.push(format!("start_us < {}", u.micros()));
        }
        let filter = filter.join(" AND ");

        #[derive(Deserialize)]
        struct Count {
            n: u64,
        }
        let calls: Vec<Count> = self
            .select(&format!(
                "SELECT count() AS n FROM {db}.spans FINAL WHERE {filter} FORMAT JSONEachRow"
            ))
            .await?;
        let exact = calls.first().map_or(0, |c| c.n) <= EXACT_QUANTILES_UP_TO;
        let cols = stat_columns(exact);

        let total: Vec<StatRow> = self
            .select(&format!(
                "SELECT {cols} FROM {db}.spans FINAL WHERE {filter} FORMAT JSONEachRow"
            ))
            .await?;
        let total = total
            .into_iter()
            .next()
            .map_or_else(StatsRow::default, |r| r.row(None));

        let groups = if q.group_by_model {
            let rows: Vec<ModelStatRow> = self
                .select(&format!(
                    "SELECT ifNull(model, {unknown}) AS m, {cols} FROM {db}.spans FINAL
                     WHERE {filter} GROUP BY m FORMAT JSONEachRow",
                    unknown = sql::string(UNKNOWN_MODEL)
                ))
                .await?;
            let mut rows: Vec<StatsRow> =
                rows.into_iter().map(|r| r.stats.row(Some(r.m))).collect();
            rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));
            Some(rows)
        } else {
            None
        };

        let series = match q.series {
            Some(spec) => Some(self.series(&filter, &cols, spec, q.group_by_model).await?),
            None => None,
        };
        Ok(Stats {
            total,
            groups,
            bucket_seconds: q.series.map(|s| s.width_us / 1_000_000),
            series,
        })
    }

    /// One row per bucket (empty ones included); with `by_model`, per-model counts per bucket,
    /// naming the first [`MAX_SERIES_MODELS`] models seen in (start, trace id, span id) order
    /// and counting the rest as [`OTHER_MODELS`], as the sled store does.
    async fn series(
        &self,
        filter: &str,
        cols: &str,
        spec: Series,
        by_model: bool,
    ) -> Result<Vec<SeriesRow>, ClickHouseError> {
        let db = &self.db;
        let width = spec.width_us.max(1);
        let first = spec.first_us;
        let end = first.saturating_add(width.saturating_mul(spec.count as u64));
        let in_series = format!("{filter} AND start_us >= {first} AND start_us < {end}");
        let bucket = format!("intDiv(start_us - {first}, {width})");

        #[derive(Deserialize)]
        struct BucketRow {
            b: u64,
            #[serde(flatten)]
            stats: StatRow,
        }
        let rows: Vec<BucketRow> = self
            .select(&format!(
                "SELECT {bucket} AS b, {cols} FROM {db}.spans FINAL
                 WHERE {in_series} GROUP BY b FORMAT JSONEachRow"
            ))
            .await?;
        let mut buckets: BTreeMap<u64, StatsRow> =
            rows.into_iter().map(|r| (r.b, r.stats.row(None))).collect();

        // Per bucket, per model: counts and the cost in picodollars (converted once, at the end).
        let mut models: BTreeMap<u64, BTreeMap<String, (ModelCounts, Option<u64>)>> =
            BTreeMap::new();
        if by_model {
            #[derive(Deserialize)]
            struct Named {
                m: String,
            }
            let model = format!("ifNull(model, {})", sql::string(UNKNOWN_MODEL));
            let named: Vec<Named> = self
                .select(&format!(
                    "SELECT {model} AS m FROM {db}.spans FINAL WHERE {in_series}
                     GROUP BY m ORDER BY min(tuple(start_us, trace_id, span_id))
                     LIMIT {MAX_SERIES_MODELS} FORMAT JSONEachRow"
                ))
                .await?;
            let named: BTreeSet<String> = named.into_iter().map(|n| n.m).collect();
            #[derive(Deserialize)]
            struct CountRow {
                b: u64,
                m: String,
                calls: u64,
                errors: u64,
                input_tokens: u64,
                output_tokens: u64,
                cost_pico: Option<u64>,
            }
            let counts: Vec<CountRow> = self
                .select(&format!(
                    "SELECT {bucket} AS b, {model} AS m, count() AS calls,
                        sum(status = 2) AS errors, sum(input_tokens) AS input_tokens,
                        sum(output_tokens) AS output_tokens, sum(cost_pico) AS cost_pico
                     FROM {db}.spans FINAL WHERE {in_series}
                     GROUP BY b, m FORMAT JSONEachRow"
                ))
                .await?;
            for c in counts {
                let name = if named.contains(&c.m) {
                    c.m
                } else {
                    OTHER_MODELS.to_string()
                };
                let (slot, pico) = models
                    .entry(c.b)
                    .or_default()
                    .entry(name.clone())
                    .or_insert_with(|| {
                        let counts = ModelCounts {
                            model: name,
                            ..ModelCounts::default()
                        };
                        (counts, None)
                    });
                slot.calls += c.calls;
                slot.errors += c.errors;
                slot.input_tokens = slot.input_tokens.saturating_add(c.input_tokens);
                slot.output_tokens = slot.output_tokens.saturating_add(c.output_tokens);
                if let Some(p) = c.cost_pico {
                    *pico = Some(pico.unwrap_or(0).saturating_add(p));
                }
            }
        }

        Ok((0..spec.count)
            .map(|i| {
                let start = first.saturating_add(width.saturating_mul(i as u64));
                let models = by_model.then(|| {
                    let mut rows: Vec<ModelCounts> = models
                        .remove(&(i as u64))
                        .map(|m| {
                            m.into_values()
                                .map(|(mut c, pico)| {
                                    c.cost_usd = pico.map(from_pico);
                                    c
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.model.cmp(&b.model)));
                    rows
                });
                SeriesRow {
                    start: Timestamp(start),
                    end: Timestamp(start.saturating_add(width)),
                    stats: buckets.remove(&(i as u64)).unwrap_or_default(),
                    models,
                }
            })
            .collect())
    }

    /// Start times (µs) of the first and the last call in `[since, until)`, `None` when none.
    pub async fn call_bounds(
        &self,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Option<(u64, u64)>, ClickHouseError> {
        let db = &self.db;
        let mut filter = vec!["is_call = 1".to_string()];
        if let Some(s) = since {
            filter.push(format!("start_us >= {}", s.micros()));
        }
        if let Some(u) = until {
            filter.push(format!("start_us < {}", u.micros()));
        }
        #[derive(Deserialize)]
        struct Bounds {
            n: u64,
            lo: u64,
            hi: u64,
        }
        let rows: Vec<Bounds> = self
            .select(&format!(
                "SELECT count() AS n, min(start_us) AS lo, max(start_us) AS hi
                 FROM {db}.spans WHERE {} FORMAT JSONEachRow",
                filter.join(" AND ")
            ))
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .filter(|b| b.n > 0)
            .map(|b| (b.lo, b.hi)))
    }

    /// Runs a `FORMAT JSONEachRow` select and decodes each line.
    pub(crate) async fn select<T: DeserializeOwned>(
        &self,
        statement: &str,
    ) -> Result<Vec<T>, ClickHouseError> {
        let body = self.client.query(statement).await?;
        let mut out = Vec::new();
        for line in body.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push(serde_json::from_slice(line).map_err(|e| {
                let shown: String = String::from_utf8_lossy(line).chars().take(300).collect();
                ClickHouseError::Decode(format!("{e}: {shown}"))
            })?);
        }
        Ok(out)
    }

    async fn select_spans(&self, statement: &str) -> Result<Vec<Span>, ClickHouseError> {
        #[derive(Deserialize)]
        struct SpanJson {
            span: String,
        }
        let rows: Vec<SpanJson> = self.select(statement).await?;
        rows.into_iter()
            .map(|r| {
                serde_json::from_str(&r.span)
                    .map_err(|e| ClickHouseError::Decode(format!("stored span: {e}")))
            })
            .collect()
    }
}

/// The stats columns: counts, tokens, cost and latency / TTFT p50, p95, p99. Exact quantiles
/// are nearest-rank (`rank = ceil(p·n/100)`, 1-based, on the sorted values), as the sled store
/// computes them; otherwise ClickHouse's `quantiles`.
fn stat_columns(exact: bool) -> String {
    let sorted_lat = "arraySort(groupArray(latency_ms))";
    let sorted_ttft = "arraySort(groupArrayIf(ifNull(ttft_ms, 0), isNotNull(ttft_ms)))";
    let nearest = |sorted: &str, n: &str| {
        format!(
            "[{sorted}[intDiv(50 * {n} + 99, 100)], {sorted}[intDiv(95 * {n} + 99, 100)], \
             {sorted}[intDiv(99 * {n} + 99, 100)]]"
        )
    };
    let (lat_q, ttft_q) = if exact {
        (
            nearest(sorted_lat, "count()"),
            nearest(sorted_ttft, "countIf(isNotNull(ttft_ms))"),
        )
    } else {
        (
            "quantiles(0.5, 0.95, 0.99)(latency_ms)".to_string(),
            "quantilesIf(0.5, 0.95, 0.99)(ifNull(ttft_ms, 0), isNotNull(ttft_ms))".to_string(),
        )
    };
    format!(
        "count() AS calls, sum(status = 2) AS errors, sum(input_tokens) AS input_tokens,
         sum(output_tokens) AS output_tokens, sum(cost_pico) AS cost_pico,
         count() AS lat_n, {lat_q} AS lat_q,
         countIf(isNotNull(ttft_ms)) AS ttft_n, {ttft_q} AS ttft_q"
    )
}

#[derive(Debug, Deserialize)]
struct StatRow {
    calls: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_pico: Option<u64>,
    lat_n: u64,
    lat_q: Vec<Option<f64>>,
    ttft_n: u64,
    ttft_q: Vec<Option<f64>>,
}

#[derive(Debug, Deserialize)]
struct ModelStatRow {
    m: String,
    #[serde(flatten)]
    stats: StatRow,
}

impl StatRow {
    fn row(self, model: Option<String>) -> StatsRow {
        StatsRow {
            model,
            calls: self.calls,
            errors: self.errors,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_pico.map(from_pico),
            latency_ms: quantiles(self.lat_n, &self.lat_q),
            ttft_ms: quantiles(self.ttft_n, &self.ttft_q),
        }
    }
}

/// ClickHouse prints NaN (no values) as `null`, hence the `Option`s. Latencies and the proxy's
/// TTFTs are whole microseconds in milliseconds (µs / 1000.0, as the sled store keeps them), and
/// ClickHouse 18.16's float parser can read such a number from the inserted JSON one bit off
/// (4.2620000000000005 for 4.262), so a value that close to a whole microsecond is snapped back
/// to it; others (a TTFT an app sent over OTLP) are left as they are.
fn quantiles(n: u64, q: &[Option<f64>]) -> Quantiles {
    let snap = |v: f64| {
        let us = (v * 1000.0).round();
        if (v * 1000.0 - us).abs() < 1e-6 {
            us / 1000.0
        } else {
            v
        }
    };
    let at = |i: usize| {
        (n > 0)
            .then(|| q.get(i).copied().flatten())
            .flatten()
            .map(snap)
    };
    Quantiles {
        p50: at(0),
        p95: at(1),
        p99: at(2),
    }
}

//! Reads: the trace list (newest first over one index, filters checked on summaries), one trace,
//! one span, and the small lookups they share.

use super::*;

impl Store {
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

    pub(super) fn load_agg(&self, trace_id: &str) -> Result<Option<Agg>, StoreError> {
        let key = summary_key(trace_id);
        match self.tree.get(&key)? {
            Some(value) => Ok(Some(decode_json(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// Where the `i` record says a span lives: (trace id, start µs).
    pub(super) fn locate_span(&self, span_id: &str) -> Result<Option<(String, u64)>, StoreError> {
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
}

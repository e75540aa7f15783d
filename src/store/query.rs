//! Reads: the trace list (newest first over one index, filters checked on summaries), one trace,
//! one span, and the small lookups they share.

use super::*;

impl Store {
    /// Newest first by trace start. Every filter that has an index (full-text terms of `q`,
    /// session, user, tag, model, status) is a newest-first list of trace positions; with one
    /// list it is walked in order, with several they are intersected by leapfrogging (each list
    /// seeks to the furthest position any list has reached, so a rare list skips the common
    /// ones' entries), with none the time index is walked and each trace's row read from its
    /// entry (a store written before rows has empty ones: then from the summary). Every filter
    /// is checked again on the summary. Never reads spans. At most [`MAX_EXAMINED`] index entries (or seeks) per call:
    /// past that the page is returned as it is, with a `next_cursor` to go on from. `limit` is
    /// validated 1..=1000 by the caller (0 is treated as 1).
    pub fn list_traces(&self, q: &TraceQuery) -> Result<TracePage, StoreError> {
        let limit = q.limit.max(1);
        let terms = q.q.as_deref().map(query_terms).unwrap_or_default();
        let mut lists: Vec<Vec<u8>> = terms.iter().map(|t| term_prefix(t)).collect();
        let indexed = [
            (F_SESSION, q.session_id.as_deref()),
            (F_USER, q.user_id.as_deref()),
            (F_TAG, q.tag.as_deref()),
            (F_MODEL, q.model.as_deref()),
            (F_STATUS, q.status.map(Status::as_str)),
        ];
        for (field, value) in indexed {
            if let Some(v) = value {
                lists.push(index_prefix(field, v));
            }
        }
        if lists.is_empty() {
            lists.push(vec![P_TIME]);
        }
        let empty = TracePage {
            traces: Vec::new(),
            next_cursor: None,
        };
        // Position bounds (inv(start) ++ trace_id), the same for every list.
        let Some((lower, upper)) = index_window(&[], q.since, q.until, q.cursor.as_ref()) else {
            return Ok(empty);
        };

        let mut traces = Vec::new();
        let mut more = false;
        let mut last_examined: Option<Cursor> = None;
        let mut examined = 0usize;
        // Looks at one position found in every list; `true` when the page is full. `row`: the
        // `t` record (key, value) when the time index is walked without filters: its value is
        // the trace's list row, unless a store from before rows wrote it empty.
        let mut visit =
            |position: &[u8], row: Option<(&[u8], &[u8])>, traces: &mut Vec<TraceSummary>| {
                let Some((start, trace_id)) = parse_position(position) else {
                    return Err(corrupt(position, "index key has no start and trace id"));
                };
                last_examined = Some(Cursor {
                    start_us: start,
                    trace_id: trace_id.to_string(),
                });
                // The batch keeps indexes, rows and summaries in step; the start checks are guards
                // only. (A row is listed without its summary being read: in a store corrupted so
                // that a `t` entry outlived its summary, the list shows it and `check` reports it.)
                let summary = match row {
                    // No filters here, and since / until are the window's (checked again).
                    Some((key, value)) => {
                        let within = q.since.is_none_or(|t| start >= t.micros())
                            && q.until.is_none_or(|t| start < t.micros());
                        self.time_entry_row(key, value, trace_id)?
                            .filter(|row| row.start_time.micros() == start && within)
                    }
                    None => self
                        .load_read_agg(trace_id, &terms)?
                        .filter(|read| read.agg().start == start && read.matches(q))
                        .map(|read| read.agg().summary()),
                };
                if let Some(summary) = summary {
                    if traces.len() == limit {
                        return Ok(true);
                    }
                    traces.push(summary);
                }
                Ok(false)
            };

        if let [prefix] = lists.as_slice() {
            if prefix.first() == Some(&P_TERM) {
                self.posting_walk(prefix, &lower, &upper, |position| {
                    if visit(position, None, &mut traces)? {
                        more = true;
                        return Ok(true);
                    }
                    examined += 1;
                    if examined >= MAX_EXAMINED {
                        more = true;
                        return Ok(true);
                    }
                    Ok(false)
                })?;
            } else {
                let range = (
                    Bound::Included([prefix.as_slice(), &lower].concat()),
                    Bound::Excluded([prefix.as_slice(), &upper].concat()),
                );
                let rows = prefix.as_slice() == [P_TIME];
                for item in self.tree.range::<Vec<u8>, _>(range) {
                    let (key, value) = item?;
                    let position = key.get(prefix.len()..).unwrap_or_default();
                    let row = rows.then_some((key.as_ref(), value.as_ref()));
                    if visit(position, row, &mut traces)? {
                        more = true;
                        break;
                    }
                    examined += 1;
                    if examined >= MAX_EXAMINED {
                        more = true;
                        break;
                    }
                }
            }
        } else {
            let mut from = lower;
            'walk: loop {
                // Leapfrog: the candidate is confirmed once every list, in turn, has it.
                let mut candidate = from;
                let mut agreed = 0;
                let mut i = 0;
                while agreed < lists.len() {
                    examined += 1;
                    if examined > MAX_EXAMINED {
                        more = true;
                        break 'walk;
                    }
                    let Some(found) = self.seek(&lists[i % lists.len()], &candidate, &upper)?
                    else {
                        break 'walk; // one list has nothing more: neither has the intersection
                    };
                    if found == candidate {
                        agreed += 1;
                    } else {
                        candidate = found;
                        agreed = 1;
                    }
                    i += 1;
                }
                if visit(&candidate, None, &mut traces)? {
                    more = true;
                    break;
                }
                // Strictly after the candidate (no trace id contains 0x00).
                candidate.push(0);
                from = candidate;
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

    /// The first position at or after `from` and before `upper` in the list under `prefix` (a
    /// full-text posting list or an index key range).
    fn seek(
        &self,
        prefix: &[u8],
        from: &[u8],
        upper: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if prefix.first() == Some(&P_TERM) {
            return self.posting_seek(prefix, from, upper);
        }
        let range = (
            Bound::Included([prefix, from].concat()),
            Bound::Excluded([prefix, upper].concat()),
        );
        match self.tree.range::<Vec<u8>, _>(range).next() {
            Some(item) => {
                let (key, _) = item?;
                Ok(key.get(prefix.len()..).map(<[u8]>::to_vec))
            }
            None => Ok(None),
        }
    }

    /// The summary and the spans ordered by start time; `None` for an unknown trace.
    pub fn get_trace(
        &self,
        trace_id: &str,
    ) -> Result<Option<(TraceSummary, Vec<Span>)>, StoreError> {
        if !is_valid_id(trace_id) {
            return Ok(None);
        }
        let Some(read) = self.load_read_agg(trace_id, &[])? else {
            return Ok(None);
        };
        let agg = read.agg();
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

    /// The list row a `t` entry (`key`, `value`) holds for `trace_id`, or, when the value is
    /// empty (a store written before rows), the trace's summary; `None`: no summary either.
    pub(super) fn time_entry_row(
        &self,
        key: &[u8],
        value: &[u8],
        trace_id: &str,
    ) -> Result<Option<TraceSummary>, StoreError> {
        if value.is_empty() {
            return Ok(self
                .load_read_agg(trace_id, &[])?
                .map(|read| read.agg().summary()));
        }
        decode_row(key, value, trace_id).map(Some)
    }

    /// The stored summary, term set included: what a write starts from.
    pub(super) fn load_agg(&self, trace_id: &str) -> Result<Option<Agg>, StoreError> {
        let key = summary_key(trace_id);
        match self.tree.get(&key)? {
            Some(value) => Ok(Some(Agg::decode(&key, &value)?)),
            None => Ok(None),
        }
    }

    /// The stored summary for a query, without its term set: [`ReadAgg::matches`] tells whether
    /// every one of `terms` is in it.
    pub(super) fn load_read_agg(
        &self,
        trace_id: &str,
        terms: &[String],
    ) -> Result<Option<ReadAgg>, StoreError> {
        let key = summary_key(trace_id);
        match self.tree.get(&key)? {
            Some(value) => Ok(Some(ReadAgg::decode(&key, &value, terms)?)),
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

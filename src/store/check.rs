//! `llm-tracer check`: verifies that spans, span-id records, call records, summaries and
//! index entries agree.

use super::*;

impl Store {
    /// Verifies the store's integrity (`llm-tracer check`): every span's `i` record points back
    /// at it, every call span has its `l` record and every `l` record a span, every summary
    /// equals a recomputation from its spans, every `t`/`x` entry belongs to an existing trace's
    /// summary and every trace has all its index entries and postings (`w` blocks well-formed, in
    /// order, each position one of a trace that has the term). Reads only; one pass per key space,
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
                    // After the value: its 0x00 terminator, then the position.
                    key.get(2..)
                        .and_then(|t| t.iter().position(|&b| b == 0).and_then(|p| t.get(p + 1..)))
                };
                let Some((_, trace_id)) = tail.and_then(parse_position) else {
                    r.problem(format!("index key {} is malformed", show_key(&key)));
                    continue;
                };
                let Some(expected) = self.summary_says(trace_id, &mut r, |agg| {
                    agg.index_keys().contains(key.as_ref())
                }) else {
                    continue;
                };
                if !expected {
                    r.problem(format!(
                        "index entry {} names trace {trace_id}, whose summary does not list it",
                        show_key(&key)
                    ));
                }
            }
        }

        // `w`: posting blocks, each keyed by its last position, a term's blocks in order and
        // not overlapping, and every position one of a trace whose summary has the term.
        let mut previous: Option<(Vec<u8>, Vec<u8>)> = None; // (term prefix, last position)
        for item in self.tree.scan_prefix([P_TERM]) {
            let (key, value) = item?;
            let Some(sep) = key.iter().position(|&b| b == 0) else {
                r.problem(format!("posting key {} is malformed", show_key(&key)));
                continue;
            };
            let (prefix, last) = key.split_at(sep + 1);
            let term = std::str::from_utf8(prefix.get(1..sep).unwrap_or_default()).unwrap_or("");
            let entries = match decode_block(&key, &value) {
                Ok(entries) => entries,
                Err(e) => {
                    r.problem(format!(
                        "posting block {} does not decode: {e}",
                        show_key(&key)
                    ));
                    continue;
                }
            };
            if entries.last() != Some(last) {
                r.problem(format!(
                    "posting block {} is not keyed by its last position",
                    show_key(&key)
                ));
            }
            if let (Some((p, prev_last)), Some(first)) = (&previous, entries.first()) {
                if p.as_slice() == prefix && first <= prev_last.as_slice() {
                    r.problem(format!(
                        "posting block {} overlaps the one before it",
                        show_key(&key)
                    ));
                }
            }
            previous = Some((prefix.to_vec(), last.to_vec()));
            for position in entries.iter() {
                r.postings += 1;
                let Some((start, trace_id)) = parse_position(position) else {
                    continue; // decode_block checked it
                };
                let Some(expected) = self.summary_says(trace_id, &mut r, |agg| {
                    agg.start == start && agg.terms.contains(term)
                }) else {
                    continue;
                };
                if !expected {
                    r.problem(format!(
                        "posting of term {term} names trace {trace_id}, whose summary does not list it",
                    ));
                }
            }
        }

        // Anything else is a key this layout never writes.
        for item in self.tree.iter() {
            let (key, _) = item?;
            let known = matches!(
                key.first(),
                Some(&(P_SPAN | P_SPAN_ID | P_SUMMARY | P_TIME | P_INDEX | P_CALL | P_TERM))
            ) || key.as_ref() == SCHEMA_KEY;
            if !known {
                r.problem(format!("unknown key {}", show_key(&key)));
            }
        }
        Ok(r)
    }

    /// Whether `trace_id`'s stored summary satisfies `test` (no summary: false). `None` when it
    /// cannot be read; that is reported in `r`.
    fn summary_says(
        &self,
        trace_id: &str,
        r: &mut CheckReport,
        test: impl FnOnce(&Agg) -> bool,
    ) -> Option<bool> {
        match self.load_agg(trace_id) {
            Ok(agg) => Some(agg.is_some_and(|agg| test(&agg))),
            Err(e) => {
                r.problem(e.to_string());
                None
            }
        }
    }

    /// One trace's summary against `agg`, recomputed from its spans, and its index entries.
    pub(super) fn check_trace(&self, agg: &Agg, r: &mut CheckReport) -> Result<(), StoreError> {
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
        let position = agg.position();
        for term in &agg.terms {
            if !self.has_posting(term, &position)? {
                r.problem(format!("trace {id} lacks its posting for the term {term}"));
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
}

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
    /// Full-text postings (positions in `w` blocks).
    pub postings: u64,
    /// All problems found (`problems` lists the first [`MAX_CHECK_PROBLEMS`]).
    pub problem_count: u64,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }

    pub(super) fn problem(&mut self, message: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_CHECK_PROBLEMS {
            self.problems.push(message);
        }
    }
}

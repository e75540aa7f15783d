//! `llm-tracer check`: verifies that spans, span-id records, call records, summaries, index
//! entries and the list rows in the time index agree.
//!
//! One sequential pass per key space. The spans are read in key order beside the summaries
//! (both sort by trace id), each trace's summary is recomputed from its spans and compared, and
//! every record the spans and summaries imply (`i`, `l`, `t`/`x` keys, `t` rows, postings) is folded into a
//! [`Digest`]: an order-independent sum of 128-bit hashes. Each of those key spaces is then
//! scanned once and folded the same way. Equal digests mean the two multisets are equal (up to a
//! 2^-128 chance); only a key space whose digests differ is searched again, record by record
//! with point lookups, to name the records to blame. A clean store thus costs sequential reads
//! only, where a lookup per span, posting and index key made `check` of a 1M-span store take
//! minutes. (Except for the empty rows of a store written before schema 7: each is read as the
//! row of the summary it names: a lookup per trace not written since the upgrade.)

use std::hash::Hasher;

use super::*;

/// An order-independent digest of a multiset of byte records: the wrapping sum of each
/// record's 128-bit hash (two passes of std's `DefaultHasher`, keyed alike, with different
/// salts; its algorithm may change between Rust releases, which is harmless since both sides of
/// a comparison are hashed by the same process) and their count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digest {
    sum: u128,
    count: u64,
}

impl Digest {
    /// Adds the record made of `parts` (each length-delimited, so `["ab", "c"]` ≠ `["a", "bc"]`).
    fn add(&mut self, parts: &[&[u8]]) {
        let h = Self::hash(parts);
        self.sum = self.sum.wrapping_add(h);
        self.count += 1;
    }

    /// Takes back a record [`Digest::add`] added.
    fn remove(&mut self, parts: &[&[u8]]) {
        let h = Self::hash(parts);
        self.sum = self.sum.wrapping_sub(h);
        self.count = self.count.wrapping_sub(1);
    }

    fn hash(parts: &[&[u8]]) -> u128 {
        let (mut a, mut b) = (
            std::collections::hash_map::DefaultHasher::new(),
            std::collections::hash_map::DefaultHasher::new(),
        );
        b.write_u8(0xA5);
        for part in parts {
            a.write(part);
            a.write_usize(part.len());
            b.write(part);
            b.write_usize(part.len());
        }
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }
}

/// The five relations `check` verifies by digest, as implied by spans and summaries
/// (`expected`) or as stored (`found`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digests {
    /// `i` records: key and value.
    span_ids: Digest,
    /// `l` keys.
    calls: Digest,
    /// `t` and `x` keys.
    index: Digest,
    /// `t` keys with their list rows (an empty row, from a store written before rows, counts
    /// as the row its trace's summary implies: the list reads the summary for it).
    rows: Digest,
    /// Postings: the term's key prefix and the position.
    postings: Digest,
}

/// One trace's spans as the first pass read them.
struct TraceSpans {
    /// The summary recomputed from the spans that decode.
    agg: Agg,
    /// Every span decoded (else `agg` is not the trace's summary and is not compared).
    whole: bool,
}

/// The rows relation's name in the report.
const ROWS: &str = "the list rows of the `t` entries";

/// A span key's parts: (trace id, start µs, span id).
fn parse_span_key(key: &[u8]) -> Option<(&str, u64, &str)> {
    let tail = key.get(1..)?;
    let sep = tail.iter().position(|&b| b == 0)?;
    let trace_id = std::str::from_utf8(tail.get(..sep)?).ok()?;
    let (start, span_id) = parse_start_and_id(tail.get(sep + 1..)?)?;
    Some((trace_id, start, span_id))
}

impl Store {
    /// Verifies the store's integrity (`llm-tracer check`): every span's `i` record points back
    /// at it, every call span has its `l` record and every `l` record a span, every summary
    /// equals a recomputation from its spans, every `t`/`x` entry belongs to an existing trace's
    /// summary, every `t` entry holds its summary's list row (or none, written before schema 7)
    /// and every summary (and every trace with spans) has all its index entries and
    /// postings (`w` blocks well-formed, in order, each position one of a trace that has the
    /// term). Reads only: sequential scans
    /// (see the module's notes), memory bounded by one trace's summary plus the first
    /// [`MAX_CHECK_PROBLEMS`] problems.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut r = CheckReport::default();
        let expected = self.check_spans_and_summaries(&mut r)?;
        let mut found = Digests::default();
        self.digest_records(P_SPAN_ID, true, &mut found.span_ids, &mut r.span_ids)?;
        self.digest_records(P_CALL, false, &mut found.calls, &mut r.calls)?;
        self.digest_time_index(&mut found, &mut r)?;
        self.digest_records(P_INDEX, false, &mut found.index, &mut r.secondary_index)?;
        found.postings = self.check_posting_blocks(&mut r)?;
        self.check_journal(&mut found.postings, &mut r)?;
        self.check_unknown_keys(&mut r)?;

        type Locate = fn(&Store, &mut CheckReport) -> Result<(), StoreError>;
        let relations: [(Digest, Digest, Locate, &str); 5] = [
            (
                expected.span_ids,
                found.span_ids,
                Store::locate_span_id_problems,
                "the `i` records",
            ),
            (
                expected.calls,
                found.calls,
                Store::locate_call_problems,
                "the `l` records",
            ),
            (
                expected.index,
                found.index,
                Store::locate_index_problems,
                "the `t`/`x` index entries",
            ),
            (expected.rows, found.rows, Store::locate_row_problems, ROWS),
            (
                expected.postings,
                found.postings,
                Store::locate_posting_problems,
                "the postings",
            ),
        ];
        // A missing, stray or misplaced `t` entry also changes the rows' digests: the index
        // entries' search names it, and the rows' search then has nothing more to say.
        let index_differs = expected.index != found.index;
        for (want, have, locate, what) in relations {
            if want == have {
                continue;
            }
            let before = r.problem_count;
            locate(self, &mut r)?;
            let explained = index_differs && what == ROWS;
            if r.problem_count == before && !explained {
                // The search found nothing the digests did not already: say so rather than
                // let the report look clean.
                r.problem(format!(
                    "{what} differ from what the spans and summaries imply ({} expected, {} \
                     found), but no single record was found to blame",
                    want.count, have.count
                ));
            }
        }
        Ok(r)
    }

    /// `s` beside `u` (both in trace-id order; a trace's spans are contiguous since their keys
    /// are its id then 0x00): each span decodes and matches its key, each trace's summary equals
    /// a recomputation, each summary has spans. Returns the digests of the `i`, `l`, `t`/`x`
    /// and posting records the spans and stored summaries imply.
    fn check_spans_and_summaries(&self, r: &mut CheckReport) -> Result<Digests, StoreError> {
        let mut expected = Digests::default();
        let mut summaries = self.tree.scan_prefix([P_SUMMARY]).peekable();
        let mut current: Option<TraceSpans> = None;
        let mut spans = self.tree.scan_prefix([P_SPAN]);
        loop {
            let item = spans.next().transpose()?;
            let trace_id = item
                .as_ref()
                .map(|(key, _)| parse_span_key(key).map(|(t, _, _)| t));
            // A trace's spans end where the next trace's (or the key space) begins.
            let ends = match (&current, &trace_id) {
                (Some(t), Some(Some(next))) => t.agg.trace_id != *next,
                (Some(_), None) => true,
                _ => false,
            };
            if ends {
                if let Some(trace) = current.take() {
                    self.check_trace(&trace, &mut summaries, &mut expected, r)?;
                }
            }
            let Some((key, value)) = item else { break };
            r.spans += 1;
            let Some((trace_id, start, span_id)) = parse_span_key(&key) else {
                r.problem(format!("span key {} is malformed", show_key(&key)));
                continue;
            };
            expected
                .span_ids
                .add(&[&span_id_key(span_id), &span_id_value(trace_id, start)]);
            let trace = current.get_or_insert_with(|| TraceSpans {
                agg: Agg::new(trace_id),
                whole: true,
            });
            let span = match decode_json::<Span>(&key, &value) {
                Ok(span) => span,
                Err(e) => {
                    r.problem(format!("span {trace_id}/{span_id} does not decode: {e}"));
                    trace.whole = false;
                    // Whether it is a call is unknown: its `l` record, if any, is not blamed.
                    let call = call_key(start, trace_id, span_id);
                    if self.tree.contains_key(&call)? {
                        expected.calls.add(&[&call]);
                    }
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
            if span.kind.is_call() {
                expected.calls.add(&[&call_key(start, trace_id, span_id)]);
            }
            trace.agg.merge(&span);
        }
        // Summaries after the last trace with spans.
        for item in summaries {
            let (key, value) = item?;
            self.orphan_summary(&key, &value, &mut expected, r);
        }
        Ok(expected)
    }

    /// One trace's summary, recomputed from its spans, against the stored one, which
    /// `summaries` (in trace-id order) holds next unless the trace has none; the summaries
    /// before it have no spans. Where the stored summary is missing, unreadable or stale, the
    /// trace's own index entries and postings are looked up one by one (the digests expect what
    /// the stored summary lists).
    fn check_trace(
        &self,
        trace: &TraceSpans,
        summaries: &mut std::iter::Peekable<sled::Iter>,
        expected: &mut Digests,
        r: &mut CheckReport,
    ) -> Result<(), StoreError> {
        r.traces += 1;
        let id = trace.agg.trace_id.as_bytes();
        let summary_id = |key: &sled::IVec| key.get(1..).unwrap_or_default().to_vec();
        while let Some(item) = summaries.next_if(|item| {
            item.as_ref()
                .map_or(true, |(key, _)| summary_id(key).as_slice() < id)
        }) {
            let (key, value) = item?;
            self.orphan_summary(&key, &value, expected, r);
        }
        let stored = summaries
            .next_if(|item| matches!(item, Ok((key, _)) if summary_id(key).as_slice() == id))
            .transpose()?;
        let agg = &trace.agg;
        let Some((key, value)) = stored else {
            r.problem(format!("trace {} has spans but no summary", agg.trace_id));
            return self.lookup_trace_records(trace, r);
        };
        r.summaries += 1;
        match Agg::decode(&key, &value) {
            Ok(stored) => {
                expect_summary_records(&stored, expected);
                // A trace with an undecodable span cannot be recomputed (already reported).
                if trace.whole && &stored != agg {
                    r.problem(format!(
                        "summary of trace {} differs from a recomputation from its spans",
                        agg.trace_id
                    ));
                    self.lookup_trace_records(trace, r)?;
                }
                Ok(())
            }
            Err(e) => {
                r.problem(e.to_string());
                self.lookup_trace_records(trace, r)
            }
        }
    }

    /// The index entries and postings the spans of `trace` imply, looked up one by one.
    fn lookup_trace_records(
        &self,
        trace: &TraceSpans,
        r: &mut CheckReport,
    ) -> Result<(), StoreError> {
        if !trace.whole {
            return Ok(());
        }
        self.lookup_index_entries(&trace.agg, r)?;
        self.lookup_postings(&trace.agg, r)
    }

    /// Each of `agg`'s `t`/`x` keys, looked up.
    fn lookup_index_entries(&self, agg: &Agg, r: &mut CheckReport) -> Result<(), StoreError> {
        for key in agg.index_keys() {
            if !self.tree.contains_key(&key)? {
                r.problem(format!(
                    "trace {} lacks its index entry {}",
                    agg.trace_id,
                    show_key(&key)
                ));
            }
        }
        Ok(())
    }

    /// Each of `agg`'s terms' posting at its position, looked up.
    fn lookup_postings(&self, agg: &Agg, r: &mut CheckReport) -> Result<(), StoreError> {
        let position = agg.position();
        for term in &agg.terms {
            if !self.has_posting(term, &position)? {
                r.problem(format!(
                    "trace {} lacks its posting for the term {term}",
                    agg.trace_id
                ));
            }
        }
        Ok(())
    }

    /// A summary no span belongs to: reported; its index entries and postings are still
    /// expected (they are not what is wrong).
    fn orphan_summary(
        &self,
        key: &[u8],
        value: &[u8],
        expected: &mut Digests,
        r: &mut CheckReport,
    ) {
        r.summaries += 1;
        let trace_id = String::from_utf8_lossy(key.get(1..).unwrap_or_default());
        r.problem(format!("summary of trace {trace_id} has no spans"));
        match Agg::decode(key, value) {
            Ok(stored) => expect_summary_records(&stored, expected),
            Err(e) => r.problem(e.to_string()),
        }
    }

    /// Folds every record under `prefix` (its key, and its value too when `with_value`) into
    /// `found`, counting them in `count`.
    fn digest_records(
        &self,
        prefix: u8,
        with_value: bool,
        found: &mut Digest,
        count: &mut u64,
    ) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([prefix]) {
            let (key, value) = item?;
            *count += 1;
            if with_value {
                found.add(&[&key, &value]);
            } else {
                found.add(&[&key]);
            }
        }
        Ok(())
    }

    /// `t`: every key into `found.index`, and with its list row into `found.rows` (an empty
    /// row, written before rows existed, as the row of the summary it names, if that exists).
    fn digest_time_index(
        &self,
        found: &mut Digests,
        r: &mut CheckReport,
    ) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_TIME]) {
            let (key, value) = item?;
            r.time_index += 1;
            found.index.add(&[&key]);
            if !value.is_empty() {
                found.rows.add(&[&key, &value]);
                continue;
            }
            let row = match key.get(1..).and_then(parse_position) {
                Some((_, trace_id)) => self.summary_row(trace_id, &key)?,
                None => None, // malformed: reported with the index entries
            };
            found.rows.add(&[&key, row.as_deref().unwrap_or_default()]);
        }
        Ok(())
    }

    /// Each `t` entry's list row is the one its trace's summary implies (an entry no summary
    /// lists is reported with the index entries).
    fn locate_row_problems(&self, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_TIME]) {
            let (key, value) = item?;
            if value.is_empty() {
                continue;
            }
            let Some((_, trace_id)) = key.get(1..).and_then(parse_position) else {
                continue; // reported with the index entries
            };
            // No summary, or one at another position: reported with the index entries.
            let Some(row) = self.summary_row(trace_id, &key)? else {
                continue;
            };
            if row == value.as_ref() {
                continue;
            }
            r.problem(format!(
                "time index entry {} holds a list row that differs from trace {trace_id}'s summary",
                show_key(&key)
            ));
        }
        Ok(())
    }

    /// The list row of `trace_id`'s stored summary when the summary's `t` key is `time_key`;
    /// `None` when there is no summary, it does not decode for a read (the summaries' pass reports
    /// every decode error, a term that is not UTF-8 included) or
    /// it sits elsewhere (reported with the index entries).
    fn summary_row(&self, trace_id: &str, time_key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = summary_key(trace_id);
        let Some(value) = self.tree.get(&key)? else {
            return Ok(None);
        };
        Ok(ReadAgg::decode(&key, &value, &[])
            .ok()
            .filter(|read| read.agg().time_key() == time_key)
            .map(|read| read.agg().row()))
    }

    /// `w`: posting blocks, each keyed by its last position, a term's blocks in order and not
    /// overlapping. Returns the digest of their (term, position) postings.
    fn check_posting_blocks(&self, r: &mut CheckReport) -> Result<Digest, StoreError> {
        let mut found = Digest::default();
        let mut previous: Option<(Vec<u8>, Vec<u8>)> = None; // (term prefix, last position)
        for item in self.tree.scan_prefix([P_TERM]) {
            let (key, value) = item?;
            let Some(sep) = key.iter().position(|&b| b == 0) else {
                r.problem(format!("posting key {} is malformed", show_key(&key)));
                continue;
            };
            let (prefix, last) = key.split_at(sep + 1);
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
                found.add(&[prefix, position]);
            }
        }
        Ok(found)
    }

    /// `j`: every journal record decodes, and its edits, applied to the blocks' postings
    /// (`found`), give the postings readers see: an added position the blocks lack counts, a
    /// removed one they hold is taken back. The edits are the in-memory journal's, which open
    /// read from the same records.
    fn check_journal(&self, found: &mut Digest, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_JOURNAL]) {
            let (key, value) = item?;
            if journal_seq(&key).is_none() {
                r.problem(format!(
                    "posting journal key {} is malformed",
                    show_key(&key)
                ));
            } else if let Err(e) = decode_journal_record(&key, &value) {
                r.problem(format!(
                    "posting journal record {} does not decode: {e}",
                    show_key(&key)
                ));
            }
        }
        let entries = self.journal_snapshot();
        r.journal_edits = entries.len() as u64;
        for (term, position, add) in entries {
            let prefix = term_prefix(&term);
            match (add, self.block_has(&prefix, &position)?) {
                (true, false) => {
                    found.add(&[&prefix, &position]);
                    r.postings += 1;
                }
                (false, true) => {
                    found.remove(&[&prefix, &position]);
                    r.postings = r.postings.saturating_sub(1);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Anything else is a key this layout never writes.
    fn check_unknown_keys(&self, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.iter() {
            let (key, _) = item?;
            let known = matches!(
                key.first(),
                Some(
                    &(P_SPAN
                        | P_SPAN_ID
                        | P_SUMMARY
                        | P_TIME
                        | P_INDEX
                        | P_CALL
                        | P_TERM
                        | P_JOURNAL)
                )
            ) || key.as_ref() == SCHEMA_KEY;
            if !known {
                r.problem(format!("unknown key {}", show_key(&key)));
            }
        }
        Ok(())
    }

    // The searches run only for a relation whose digests differ: a point lookup per record,
    // both ways, naming each record to blame.

    /// Each span's `i` record points back at it; each `i` record names a stored span.
    fn locate_span_id_problems(&self, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_SPAN]) {
            let (key, _) = item?;
            let Some((trace_id, start, span_id)) = parse_span_key(&key) else {
                continue; // reported by the first pass
            };
            match self.locate_span(span_id) {
                Ok(Some((t, s))) if t == trace_id && s == start => {}
                Ok(Some((t, _))) => r.problem(format!(
                    "span {trace_id}/{span_id}: its `i` record points elsewhere (trace {t})"
                )),
                Ok(None) => r.problem(format!("span {trace_id}/{span_id} has no `i` record")),
                Err(e) => r.problem(e.to_string()),
            }
        }
        for item in self.tree.scan_prefix([P_SPAN_ID]) {
            let (key, _) = item?;
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
        Ok(())
    }

    /// Each call span has its `l` record; each `l` record belongs to a stored call span.
    fn locate_call_problems(&self, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_SPAN]) {
            let (key, value) = item?;
            let Some((trace_id, start, span_id)) = parse_span_key(&key) else {
                continue;
            };
            let Ok(span) = decode_json::<Span>(&key, &value) else {
                continue; // reported by the first pass
            };
            if span.kind.is_call() && !self.tree.contains_key(call_key(start, trace_id, span_id))? {
                r.problem(format!("call span {trace_id}/{span_id} has no `l` record"));
            }
        }
        for item in self.tree.scan_prefix([P_CALL]) {
            let (key, _) = item?;
            let parsed = key.get(1..).and_then(|tail| {
                let (start, rest) = parse_start_and_id(tail)?;
                let (trace_id, span_id) = rest.split_once('\0')?;
                Some((start, trace_id.to_string(), span_id.to_string()))
            });
            let Some((start, t, sid)) = parsed else {
                r.problem(format!("call key {} is malformed", show_key(&key)));
                continue;
            };
            let key = span_key(&t, start, &sid);
            match self.tree.get(&key)? {
                None => r.problem(format!("call record {t}/{sid} has no span")),
                Some(value) => match decode_json::<Span>(&key, &value) {
                    Ok(span) if !span.kind.is_call() => r.problem(format!(
                        "call record {t}/{sid} belongs to a span that is not a call"
                    )),
                    _ => {} // an undecodable span is reported by the first pass
                },
            }
        }
        Ok(())
    }

    /// Each summary's `t`/`x` keys exist; each `t`/`x` key is one of its trace's summary's.
    fn locate_index_problems(&self, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_SUMMARY]) {
            let (key, value) = item?;
            let Ok(agg) = Agg::decode(&key, &value) else {
                continue; // reported by the first pass
            };
            self.lookup_index_entries(&agg, r)?;
        }
        for prefix in [P_TIME, P_INDEX] {
            for item in self.tree.scan_prefix([prefix]) {
                let (key, _) = item?;
                let tail = if prefix == P_TIME {
                    key.get(1..)
                } else {
                    // After the value: its 0x00 terminator, then the position.
                    key.get(2..)
                        .and_then(|t| t.iter().position(|&b| b == 0).and_then(|p| t.get(p + 1..)))
                };
                let Some((_, trace_id)) = tail.and_then(parse_position) else {
                    r.problem(format!("index key {} is malformed", show_key(&key)));
                    continue;
                };
                let Some(expected) =
                    self.summary_says(trace_id, r, |agg| agg.index_keys().contains(key.as_ref()))
                else {
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
        Ok(())
    }

    /// Each summary's terms have a posting at its position; each posting is one of a trace
    /// whose summary has the term.
    fn locate_posting_problems(&self, r: &mut CheckReport) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix([P_SUMMARY]) {
            let (key, value) = item?;
            let Ok(agg) = Agg::decode(&key, &value) else {
                continue;
            };
            self.lookup_postings(&agg, r)?;
        }
        for item in self.tree.scan_prefix([P_TERM]) {
            let (key, value) = item?;
            let Some(sep) = key.iter().position(|&b| b == 0) else {
                continue;
            };
            let term = std::str::from_utf8(key.get(1..sep).unwrap_or_default()).unwrap_or("");
            let Ok(entries) = decode_block(&key, &value) else {
                continue;
            };
            for position in entries.iter() {
                // A position the journal removes is not listed (the journal's additions are
                // looked at below).
                if self.journal_says(term, position).is_none() {
                    self.expect_listed(term, position, r);
                }
            }
        }
        for (term, position, add) in self.journal_snapshot() {
            if add {
                self.expect_listed(&term, &position, r);
            }
        }
        Ok(())
    }

    /// The journal's edit of `term` at `position`, if it has one.
    fn journal_says(&self, term: &str, position: &[u8]) -> Option<bool> {
        self.journal
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(term, position)
    }

    /// A listed posting must be of a trace whose summary has the term: reported otherwise.
    fn expect_listed(&self, term: &str, position: &[u8], r: &mut CheckReport) {
        let Some((start, trace_id)) = parse_position(position) else {
            return;
        };
        let Some(expected) = self.summary_says(trace_id, r, |agg| {
            agg.start == start && agg.terms.contains(term)
        }) else {
            return;
        };
        if !expected {
            r.problem(format!(
                "posting of term {term} names trace {trace_id}, whose summary does not list it",
            ));
        }
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
}

/// The `t`/`x` keys, the list row and the postings a stored summary implies.
fn expect_summary_records(agg: &Agg, expected: &mut Digests) {
    for key in agg.index_keys() {
        expected.index.add(&[&key]);
    }
    expected.rows.add(&[&agg.time_key(), &agg.row()]);
    let position = agg.position();
    for term in &agg.terms {
        expected.postings.add(&[&term_prefix(term), &position]);
    }
}

impl Store {
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
    /// Full-text postings (positions in `w` blocks, with the journal's edits applied).
    pub postings: u64,
    /// Posting edits waiting in the journal (see `journal`), not yet folded into the blocks.
    pub journal_edits: u64,
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

#[cfg(test)]
mod digest_tests {
    use super::Digest;

    fn digest(records: &[&[&[u8]]]) -> Digest {
        let mut d = Digest::default();
        for parts in records {
            d.add(parts);
        }
        d
    }

    #[test]
    fn a_digest_ignores_order_but_not_multiplicity_or_boundaries() {
        let ab = digest(&[&[b"a"], &[b"b"]]);
        assert_eq!(ab, digest(&[&[b"b"], &[b"a"]]), "order does not matter");
        assert_ne!(
            ab,
            digest(&[&[b"a"], &[b"b"], &[b"b"]]),
            "a duplicate shows"
        );
        assert_ne!(
            digest(&[&[b"a"], &[b"a"]]).sum,
            digest(&[&[b"b"], &[b"b"]]).sum,
            "equal counts of different records differ"
        );
        assert_ne!(
            digest(&[&[b"ab", b"c"]]),
            digest(&[&[b"a", b"bc"]]),
            "parts are delimited"
        );
    }
}

//! The stored trace summary (`Agg`): merging one span at a time, independent of arrival order,
//! and the index keys a summary implies.

use super::*;

/// What `u` holds: everything the public summary is derived from, kept so that merging one more
/// span is cheap and the result does not depend on the order spans arrive in (every "first"/
/// "latest" pick is by (time, span_id), costs are summed as integers).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Agg {
    pub(super) trace_id: String,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) status: Status,
    pub(super) span_count: u64,
    pub(super) llm_calls: u64,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    /// Sum of the known span costs in picodollars; `None` while no span had a cost.
    pub(super) cost_pico: Option<u64>,
    pub(super) models: BTreeSet<String>,
    pub(super) tags: BTreeSet<String>,
    pub(super) root: Option<Root>,
    /// Earliest error span's message.
    pub(super) first_error: Option<Pick>,
    /// Earliest span with a session / user id.
    pub(super) first_session: Option<Pick>,
    pub(super) first_user: Option<Pick>,
    /// Output preview of the latest-ending LLM span that has an output (`at` = its end).
    pub(super) last_llm_output: Option<Pick>,
    /// Full-text terms of the trace's spans (see `search`): each one has a posting in its `w` list.
    /// A hash set: merging looks up every word of every span, and a B-tree's string
    /// comparisons made that the biggest cost of a merge. Never more than `MAX_TRACE_TERMS`
    /// (the smallest, see `add_span_terms`); sorted when encoded.
    pub(super) terms: TermSet,
    /// Texts already tokenized into `terms` since this value was built (not stored, not
    /// compared): a trace's spans repeat the same system prompt, messages and names, and adding
    /// a text's terms twice changes nothing, so each distinct text is tokenized once.
    pub(super) seen_texts: SeenTexts,
}

/// The trace's root candidate: spans without a parent first, then earliest start, then span id.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Root {
    pub(super) has_parent: bool,
    pub(super) start: u64,
    pub(super) span_id: String,
    pub(super) name: String,
    pub(super) session_id: Option<String>,
    pub(super) user_id: Option<String>,
    pub(super) input_preview: Option<String>,
    pub(super) output_preview: Option<String>,
}

/// A value taken from one span, ranked by (`at`, `span_id`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pick {
    pub(super) at: u64,
    pub(super) span_id: String,
    pub(super) value: String,
}

impl Pick {
    pub(super) fn rank(&self) -> (u64, &str) {
        (self.at, &self.span_id)
    }
}

/// Keeps the pick with the lowest (`earliest`) or highest rank; `value` is only built if it wins.
pub(super) fn pick(
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
    pub(super) fn new(trace_id: &str) -> Agg {
        let mut terms = TermSet::with_capacity_and_hasher(64, Default::default());
        // The trace id is searchable too (its runs of letters and digits).
        each_term(trace_id, |t| {
            terms.insert(t.to_string());
        });
        Agg {
            trace_id: trace_id.to_string(),
            terms,
            ..Agg::default()
        }
    }

    /// Adds one span that is not yet part of the trace. Commutative: any arrival order of the
    /// same spans gives the same `Agg`.
    pub(super) fn merge(&mut self, span: &Span) {
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
        add_span_terms(span, &mut self.terms, &mut self.seen_texts);

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
        // The output preview is built at most once (both picks below may want it).
        let mut out_preview: Option<Option<String>> = None;
        if span.kind == Kind::Llm && !span.output.is_null() {
            pick(&mut self.last_llm_output, false, end, sid, || {
                out_preview
                    .get_or_insert_with(|| output_preview(&span.output))
                    .clone()
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
                output_preview: out_preview.unwrap_or_else(|| output_preview(&span.output)),
            });
        }
    }

    pub(super) fn session_id(&self) -> Option<&str> {
        let root = self.root.as_ref().and_then(|r| r.session_id.as_deref());
        root.or(self.first_session.as_ref().map(|p| p.value.as_str()))
    }

    pub(super) fn user_id(&self) -> Option<&str> {
        let root = self.root.as_ref().and_then(|r| r.user_id.as_deref());
        root.or(self.first_user.as_ref().map(|p| p.value.as_str()))
    }

    pub(super) fn summary(&self) -> TraceSummary {
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

    /// The trace's `t` key (its value is [`encode_row`] of [`Agg::summary`]).
    pub(super) fn time_key(&self) -> Vec<u8> {
        let mut key = vec![P_TIME];
        key.extend_from_slice(&self.position());
        key
    }

    /// The `t` value: the list row.
    pub(super) fn row(&self) -> Vec<u8> {
        encode_row(&self.summary())
    }

    /// The trace's position in every newest-first list: inv(start)(be) ++ trace id.
    pub(super) fn position(&self) -> Vec<u8> {
        let mut position = Vec::with_capacity(8 + self.trace_id.len());
        position.extend_from_slice(&inv(self.start).to_be_bytes());
        position.extend_from_slice(self.trace_id.as_bytes());
        position
    }

    /// Every `t` and `x` key that should exist for this trace (its full-text postings live in
    /// blocks, see `postings`).
    pub(super) fn index_keys(&self) -> BTreeSet<Vec<u8>> {
        let position = self.position();
        let with_position = |mut prefix: Vec<u8>| {
            prefix.extend_from_slice(&position);
            prefix
        };
        let mut keys = BTreeSet::new();
        keys.insert(self.time_key());
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

    /// Every `list_traces` filter but the full-text terms, checked on the summary (the chosen
    /// index already implies one).
    pub(super) fn matches_fields(&self, q: &TraceQuery) -> bool {
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
    }
}

/// A stored summary as the queries read it: everything but the term set. A summary holds up
/// to [`MAX_TRACE_TERMS`] terms, and building that set was most of the cost of reading one
/// (a list page reads 50); queries only ask whether a few terms are in it, which is answered
/// on the encoded, sorted list without building anything. Never written back: writes read the
/// whole [`Agg`] ([`Store::load_agg`]).
pub(super) struct ReadAgg {
    /// `terms` is always empty here.
    agg: Agg,
    /// Whether the terms asked for when it was read are all in the stored set.
    has_terms: bool,
}

impl ReadAgg {
    pub(super) fn agg(&self) -> &Agg {
        &self.agg
    }

    /// All `list_traces` filters, the full-text terms given to [`ReadAgg::decode`] included.
    pub(super) fn matches(&self, q: &TraceQuery) -> bool {
        self.has_terms && self.agg.matches_fields(q)
    }

    /// Reads what [`Agg::encode`] wrote, skipping the term set; `wanted` are the terms checked
    /// for [`ReadAgg::matches`] (a query has at most `MAX_QUERY_TERMS`; a list of 64 or more
    /// never matches).
    pub(super) fn decode(key: &[u8], value: &[u8], wanted: &[String]) -> Result<Self, StoreError> {
        let (agg, has_terms) = decode_agg(key, value, Terms::Check(wanted))?;
        Ok(ReadAgg { agg, has_terms })
    }
}

const _: () = assert!(
    MAX_QUERY_TERMS < 64,
    "ReadAgg checks query terms with a u64 mask"
);

/// What [`decode_agg`] does with the stored term set.
enum Terms<'a> {
    /// Build the set.
    Load,
    /// Only tell whether all of these are in it.
    Check(&'a [String]),
}

/// Adds `value`, keeping only the [`MAX_SUMMARY_VALUES`] smallest: the result is the same
/// whatever order the values arrive in.
pub fn insert_capped(set: &mut BTreeSet<String>, value: &str) {
    if set.len() >= MAX_SUMMARY_VALUES && set.last().is_some_and(|last| value >= last.as_str()) {
        return;
    }
    set.insert(value.to_string());
    while set.len() > MAX_SUMMARY_VALUES {
        set.pop_last();
    }
}

pub fn error_message(span: &Span) -> String {
    match &span.error {
        Some(e) if !e.message.is_empty() => e.message.clone(),
        Some(e) if !e.kind.is_empty() => e.kind.clone(),
        _ => format!("{} failed", span.name),
    }
}

/// Costs are summed as integer picodollars so the sum does not depend on the order of addition.
/// Negative or non-finite costs count as unknown.
pub fn to_pico(usd: f64) -> Option<u64> {
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e12).round() as u64)
}

pub fn from_pico(pico: u64) -> f64 {
    pico as f64 / 1e12
}

/// First byte of an encoded summary, so a later layout can tell its records apart.
const AGG_FORMAT: u8 = 1;

/// First byte of a list row (a `t` value), so a later layout can tell its records apart.
const ROW_FORMAT: u8 = 1;

/// A `t` value: the trace's public summary, as a page of the trace list shows it. The list
/// without filters then reads one range of `t` (a page's rows sit together, newest first)
/// instead of looking up each trace's `u` summary, whose random keys made every row of a
/// page on a large store a page-in of its own (bench/RESULTS.md, session 22). Written with the
/// summary in the same batch, so the two always agree (`check` verifies it). An empty `t`
/// value is a store written before rows existed: the list reads `u` for it. A row is a stored
/// copy of [`Agg::summary`]: a change to how that derives a field leaves every stored row stale
/// until its trace is written again, so it needs a schema version (and an upgrade that rewrites
/// the rows, or empties them).
pub(super) fn encode_row(s: &TraceSummary) -> Vec<u8> {
    let mut e = Enc::with_capacity(256);
    e.u8(ROW_FORMAT);
    e.str(&s.name);
    e.u64(s.start_time.micros());
    e.u64(s.end_time.micros());
    e.u8(status_code(s.status));
    e.opt_str(s.error.as_deref());
    e.u64(s.span_count);
    e.u64(s.llm_calls);
    e.u64(s.input_tokens);
    e.u64(s.output_tokens);
    e.opt_u64(s.cost_usd.map(f64::to_bits));
    e.strs(s.models.iter());
    e.opt_str(s.session_id.as_deref());
    e.opt_str(s.user_id.as_deref());
    e.strs(s.tags.iter());
    e.opt_str(s.input_preview.as_deref());
    e.opt_str(s.output_preview.as_deref());
    e.0
}

/// Reads what [`encode_row`] wrote; the trace id comes from the key.
pub(super) fn decode_row(
    key: &[u8],
    value: &[u8],
    trace_id: &str,
) -> Result<TraceSummary, StoreError> {
    decode_bin(key, value, |d| {
        if d.u8()? != ROW_FORMAT {
            return None;
        }
        let name = d.string()?;
        let start_time = Timestamp(d.u64()?);
        let end_time = Timestamp(d.u64()?);
        Some(TraceSummary {
            trace_id: trace_id.to_string(),
            name,
            start_time,
            end_time,
            duration_ms: start_time.ms_until(end_time),
            status: status_of(d.u8()?)?,
            error: d.opt_string()?,
            span_count: d.u64()?,
            llm_calls: d.u64()?,
            input_tokens: d.u64()?,
            output_tokens: d.u64()?,
            cost_usd: d.opt(Dec::u64)?.map(f64::from_bits),
            models: d.string_list()?,
            session_id: d.opt_string()?,
            user_id: d.opt_string()?,
            tags: d.string_list()?,
            input_preview: d.opt_string()?,
            output_preview: d.opt_string()?,
        })
    })
}

impl Agg {
    /// The `u` value (see [`Enc`]).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(512);
        e.u8(AGG_FORMAT);
        e.str(&self.trace_id);
        e.u64(self.start);
        e.u64(self.end);
        e.u8(status_code(self.status));
        e.u64(self.span_count);
        e.u64(self.llm_calls);
        e.u64(self.input_tokens);
        e.u64(self.output_tokens);
        e.opt_u64(self.cost_pico);
        e.strs(self.models.iter());
        e.strs(self.tags.iter());
        match &self.root {
            None => e.u8(0),
            Some(r) => {
                e.u8(1);
                e.bool(r.has_parent);
                e.u64(r.start);
                e.str(&r.span_id);
                e.str(&r.name);
                e.opt_str(r.session_id.as_deref());
                e.opt_str(r.user_id.as_deref());
                e.opt_str(r.input_preview.as_deref());
                e.opt_str(r.output_preview.as_deref());
            }
        }
        for pick in [
            &self.first_error,
            &self.first_session,
            &self.first_user,
            &self.last_llm_output,
        ] {
            match pick {
                None => e.u8(0),
                Some(p) => {
                    e.u8(1);
                    e.u64(p.at);
                    e.str(&p.span_id);
                    e.str(&p.value);
                }
            }
        }
        let mut terms: Vec<&String> = self.terms.iter().collect();
        terms.sort_unstable();
        e.strs(terms.into_iter());
        e.0
    }

    /// Reads what [`Agg::encode`] wrote.
    pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<Agg, StoreError> {
        decode_agg(key, value, Terms::Load).map(|(agg, _)| agg)
    }
}

/// Reads what [`Agg::encode`] wrote; with [`Terms::Check`] the term set stays empty and the bool
/// says whether every wanted term is in the stored one (with [`Terms::Load`] it is `true`).
fn decode_agg(key: &[u8], value: &[u8], terms: Terms<'_>) -> Result<(Agg, bool), StoreError> {
    decode_bin(key, value, |d| {
        if d.u8()? != AGG_FORMAT {
            return None;
        }
        let pick = |d: &mut Dec<'_>| {
            d.opt(|d| {
                Some(Pick {
                    at: d.u64()?,
                    span_id: d.string()?,
                    value: d.string()?,
                })
            })
        };
        let mut agg = Agg {
            trace_id: d.string()?,
            start: d.u64()?,
            end: d.u64()?,
            status: status_of(d.u8()?)?,
            span_count: d.u64()?,
            llm_calls: d.u64()?,
            input_tokens: d.u64()?,
            output_tokens: d.u64()?,
            cost_pico: d.opt(Dec::u64)?,
            models: d.strs()?,
            tags: d.strs()?,
            root: d.opt(|d| {
                Some(Root {
                    has_parent: d.bool()?,
                    start: d.u64()?,
                    span_id: d.string()?,
                    name: d.string()?,
                    session_id: d.opt_string()?,
                    user_id: d.opt_string()?,
                    input_preview: d.opt_string()?,
                    output_preview: d.opt_string()?,
                })
            })?,
            first_error: pick(d)?,
            first_session: pick(d)?,
            first_user: pick(d)?,
            last_llm_output: pick(d)?,
            terms: TermSet::default(),
            seen_texts: SeenTexts::default(),
        };
        let n = d.count()?;
        let has_terms = match terms {
            Terms::Load => {
                let capacity = usize::try_from(n).ok()?;
                let mut set = TermSet::with_capacity_and_hasher(capacity, Default::default());
                for _ in 0..n {
                    set.insert(d.string()?);
                }
                agg.terms = set;
                true
            }
            Terms::Check(wanted) => {
                // One bit per wanted term still missing. A query has at most `MAX_QUERY_TERMS`
                // (asserted below 64); a longer list would not be a query's, and never matches.
                let checkable = wanted.len() < 64;
                let mut missing: u64 = if checkable {
                    (1 << wanted.len()) - 1
                } else {
                    u64::MAX
                };
                for _ in 0..n {
                    // Compared as bytes: a stored term that is not UTF-8 (which `check` and
                    // the writes' full decode report) simply matches no query term.
                    let term = d.bytes()?;
                    if !checkable {
                        continue;
                    }
                    for (i, w) in wanted.iter().enumerate() {
                        if w.as_bytes() == term {
                            missing &= !(1 << i);
                        }
                    }
                }
                checkable && missing == 0
            }
        };
        Some((agg, has_terms))
    })
}

pub(super) fn status_code(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Error => 1,
        Status::Cancelled => 2,
    }
}

pub(super) fn status_of(code: u8) -> Option<Status> {
    match code {
        0 => Some(Status::Ok),
        1 => Some(Status::Error),
        2 => Some(Status::Cancelled),
        _ => None,
    }
}

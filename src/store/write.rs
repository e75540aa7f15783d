//! Writes: `put_spans` (spans, span-id records, call records, summaries, index keys and a
//! posting journal record in one atomic batch) and `delete_trace`.

use super::*;

impl Store {
    /// Writes a batch of spans and brings every touched trace's summary and indexes up to date,
    /// all in one atomic sled batch. Spans with an invalid trace or span id are skipped with a
    /// warning.
    ///
    /// A span id is globally unique: a span whose `span_id` is already stored replaces it
    /// (upsert). If the stored one belongs to another trace, the span moves: its old `s`/`l` keys
    /// are removed and the old trace's summary and index keys are rebuilt from its remaining
    /// spans, or removed when none is left (the trace disappears).
    pub fn put_spans(&self, spans: &[Span]) -> Result<(), StoreError> {
        // sled clones a node per key written: mimalloc makes that ~40 % faster (src/malloc.rs).
        let _mimalloc = crate::malloc::StoreScope::enter();
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        let mut works: BTreeMap<String, TraceWork<'_>> = BTreeMap::new();
        // Where each span id lives once this batch is applied (overlays the `i` records).
        let mut located: FnvMap<&str, (&str, u64)> = FnvMap::default();

        for span in spans {
            // The capture writer gives way to requests now and then (see `priority`).
            crate::priority::yield_point();
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
                // Only this batch's own writes are consulted: the `i` record is the truth for
                // what is stored (`check` verifies every `s` key has one), so no read here.
                replaced = work.changes.get(&skey).is_some_and(Option::is_some);
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
                batch.insert(ckey, CallRec::of(span).encode());
            }
            work.changes.insert(skey, Some(span));
            located.insert(span_id, (trace_id, start));
        }

        // Each touched trace's summary before and after this batch (`None` after: its last span
        // moved to another trace, so the trace is gone), in position order so that each term's
        // posting edits arrive sorted (sorting them is then one pass).
        let mut done: Vec<Settled> = Vec::with_capacity(works.len());
        for (trace_id, work) in works {
            let agg = if work.recompute {
                self.recompute(&trace_id, &work.changes)?
            } else {
                work.agg
            };
            let after = (agg.span_count > 0).then_some(agg);
            done.push(Settled {
                trace_id,
                before_position: work.before.as_ref().map(Agg::position),
                after_position: after.as_ref().map(Agg::position),
                before: work.before,
                after,
            });
        }
        done.sort_unstable_by(|x, y| x.position().cmp(&y.position()));
        let mut postings = PostingEdits::default();
        for settled in &done {
            crate::priority::yield_point();
            let Settled {
                trace_id,
                before,
                after,
                ..
            } = settled;
            postings.diff(
                before.as_ref().zip(settled.before_position.as_deref()),
                after.as_ref().zip(settled.after_position.as_deref()),
            );
            let ukey = summary_key(trace_id);
            let Some(agg) = after else {
                for gone in before.as_ref().map(Agg::index_keys).unwrap_or_default() {
                    batch.remove(gone);
                }
                batch.remove(ukey);
                continue;
            };
            let after_keys = agg.index_keys();
            match before {
                None => {
                    for new in after_keys {
                        batch.insert(new, &[][..]);
                    }
                }
                Some(before) => {
                    let before_keys = before.index_keys();
                    for gone in before_keys.difference(&after_keys) {
                        batch.remove(gone.as_slice());
                    }
                    for new in after_keys.difference(&before_keys) {
                        batch.insert(new.as_slice(), &[][..]);
                    }
                }
            }
            // The list row, written whenever the summary is (the key may be new or kept).
            batch.insert(agg.time_key(), agg.row());
            batch.insert(ukey, agg.encode());
        }
        let (update, _) = self.write_postings(&mut batch, postings, false)?;
        self.apply_with_journal(batch, update)?;
        Ok(())
    }

    /// Removes the trace's spans, span-id lookups, call records, summary and index entries in one
    /// batch. `true` when the trace existed.
    pub fn delete_trace(&self, trace_id: &str) -> Result<bool, StoreError> {
        Ok(self.delete_trace_measured(trace_id)?.is_some())
    }

    /// [`Store::delete_trace`], returning the bytes (keys + values) it removed when the trace
    /// existed.
    pub(super) fn delete_trace_measured(&self, trace_id: &str) -> Result<Option<u64>, StoreError> {
        if !is_valid_id(trace_id) {
            return Ok(None);
        }
        let mut freed = 0u64;
        let mut posting_freed = 0u64;
        let mut count = |key: &[u8], value_len: usize| {
            freed = freed.saturating_add((key.len() + value_len) as u64);
        };
        let _mimalloc = crate::malloc::StoreScope::enter();
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
        let position = agg.as_ref().map(Agg::position);
        let mut update = JournalUpdate::Nothing;
        if let (Some(agg), Some(position)) = (&agg, &position) {
            for key in agg.index_keys() {
                // `x` values are empty; the `t` value is the list row (empty before schema 7).
                let value_len = if key.first() == Some(&P_TIME) {
                    self.tree.get(&key)?.map_or(0, |row| row.len())
                } else {
                    0
                };
                count(&key, value_len);
                batch.remove(key);
            }
            // Folded, not journalled, and the journal first on its own: retention counts the
            // bytes this delete frees.
            self.fold_journal_locked()?;
            let mut postings = PostingEdits::default();
            postings.diff(Some((agg, position)), None);
            (update, posting_freed) = self.write_postings(&mut batch, postings, true)?;
        }
        let ukey = summary_key(trace_id);
        if let Some(summary) = self.tree.get(&ukey)? {
            count(&ukey, summary.len());
        }
        batch.remove(ukey);
        if existed {
            self.apply_with_journal(batch, update)?;
            Ok(Some(freed.saturating_add(posting_freed)))
        } else {
            Ok(None)
        }
    }

    /// The pending work for `trace_id` in this `put_spans` batch, starting from its stored
    /// summary the first time the trace is touched.
    pub(super) fn work<'w, 'a>(
        &self,
        works: &'w mut BTreeMap<String, TraceWork<'a>>,
        trace_id: &str,
    ) -> Result<&'w mut TraceWork<'a>, StoreError> {
        // Looked up before inserting: most calls find the trace, and need no key copy.
        if !works.contains_key(trace_id) {
            let before = self.load_agg(trace_id)?;
            let agg = before.clone().unwrap_or_else(|| Agg::new(trace_id));
            let work = TraceWork {
                before,
                agg,
                recompute: false,
                changes: BTreeMap::new(),
            };
            works.insert(trace_id.to_string(), work);
        }
        works
            .get_mut(trace_id)
            .ok_or_else(|| corrupt(trace_id.as_bytes(), "trace work vanished"))
    }

    /// Slow path: the trace's summary from all its spans as they will be once `changes` (this
    /// batch's removals and writes of `s` keys) is applied.
    pub(super) fn recompute(
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

/// One trace's pending changes inside a `put_spans` batch.
pub(super) struct TraceWork<'a> {
    /// The summary as stored before this batch (its index keys are what to retract).
    pub(super) before: Option<Agg>,
    /// Fast path: `before` with this batch's new spans merged in.
    pub(super) agg: Agg,
    /// A span was replaced: rebuild the summary from all spans instead.
    pub(super) recompute: bool,
    /// `s` keys this batch removes (`None`) or writes.
    pub(super) changes: BTreeMap<Vec<u8>, Option<&'a Span>>,
}

/// One trace at the end of a `put_spans` batch: its summary and position before and after.
pub(super) struct Settled {
    trace_id: String,
    before: Option<Agg>,
    after: Option<Agg>,
    before_position: Option<Vec<u8>>,
    after_position: Option<Vec<u8>>,
}

impl Settled {
    /// Where the trace ends up (or was, when it is gone).
    fn position(&self) -> Option<&Vec<u8>> {
        self.after_position
            .as_ref()
            .or(self.before_position.as_ref())
    }
}

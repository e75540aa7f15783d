//! The posting journal: each write logs its full-text posting edits as one record, and the
//! records are folded into the `w` blocks (see `postings`) many writes at a time.
//!
//! Rewriting the newest block of every term a write touches cost about 45 % of a write of
//! one-span traces in small batches, the proxy's own shape (each call without trace headers is
//! its own trace, and a lightly loaded writer stores a few at a time): `bench/store_callgrind.sh`
//! counted 595k instructions per span, 331k without postings. So a write adds ONE record,
//!
//! `j` seq(be) → [`JOURNAL_FORMAT`], then per trace side: 1 (added) or 0 (removed), its position
//! (length-prefixed), its terms (each length-prefixed, never empty), an empty term
//!
//! in the same atomic batch as its spans and summaries, and the write that would take the
//! journal past [`JOURNAL_MAX_EDITS`] edits folds it instead: the journal's edits and its own
//! are applied to the blocks and every record is removed, in that write's batch. A common term's
//! block is then rewritten once per fold rather than once per write, and a crash leaves each
//! edit either in a record or in the blocks, never in neither. Deletes fold: the journal first,
//! in a batch of its own, then the delete's own edits in the delete's batch; retention by size
//! folds before it measures the live data; so the bytes a delete frees are counted as it
//! deletes.
//!
//! The journal is kept in memory too (read back at open): per term, each position's last edit.
//! Readers see the blocks with it applied ([`Store::posting_walk`]), so a search finds a trace
//! as soon as its write returns. A write applies its batch and updates the in-memory journal
//! under the journal's write lock; a walk copies the term's entries in its range under the read
//! lock (a seek reads them in place), so a search that starts after a write became visible sees
//! its postings, and one that overlaps a fold sees each position as it was before the write or
//! after it. `check` verifies the records and counts their edits with the blocks'.

use super::*;

/// A write folds the journal when its own edits would take the edits its records hold past
/// this many (about 270 one-span traces of ~30 terms). Bounds the records' bytes (≈ 10 bytes an
/// edit with short terms, so they usually stay below sled's blob threshold of 128 KiB; a term
/// takes up to 128 bytes) and the memory that mirrors them (≈ 100 bytes an edit). A write with
/// more edits than this folds at once (what every write did before).
pub(super) const JOURNAL_MAX_EDITS: usize = 8192;

/// First byte of a journal record: its layout (the only one so far).
const JOURNAL_FORMAT: u8 = 1;

/// The journal in memory: what its records say, term by term.
#[derive(Default)]
pub(super) struct Journal {
    /// Term → position → its last edit (`true` = added, `false` = removed). A position is
    /// shared by the terms of its trace side (one allocation per trace, not per term).
    terms: FnvMap<Box<str>, BTreeMap<Arc<[u8]>, bool>>,
    /// Entries in `terms`.
    edits: usize,
    /// Edits the records hold (a position edited again counts again): what the bound is on.
    logged: usize,
    /// The records' keys and bytes (key + value), each one removed by the next fold (those
    /// that did not decode at open, or whose key is malformed, too).
    records: Vec<(Vec<u8>, u64)>,
    /// The next record's sequence number: above every record's.
    next: u64,
}

impl Journal {
    fn apply(&mut self, term: &str, position: &Arc<[u8]>, add: bool) {
        let list = match self.terms.get_mut(term) {
            Some(list) => list,
            None => self.terms.entry(term.into()).or_default(),
        };
        if list.insert(Arc::clone(position), add).is_none() {
            self.edits += 1;
        }
    }

    /// One trace side's edits: `terms` added at `position` or removed from it.
    fn apply_group<'t>(
        &mut self,
        position: &[u8],
        add: bool,
        terms: impl IntoIterator<Item = &'t str>,
    ) {
        let position: Arc<[u8]> = Arc::from(position);
        for term in terms {
            self.apply(term, &position, add);
            self.logged += 1;
        }
    }

    /// Every entry: (term, position, added).
    pub(super) fn entries(&self) -> impl Iterator<Item = JournalEdit<'_>> {
        self.terms.iter().flat_map(|(term, list)| {
            list.iter()
                .map(move |(position, &add)| (&**term, &**position, add))
        })
    }

    /// The entries for `term` in `[lower, upper)`, ascending: (position, added).
    fn range<'j>(
        &'j self,
        term: &str,
        lower: &[u8],
        upper: &[u8],
    ) -> impl Iterator<Item = (&'j [u8], bool)> + use<'j> {
        // (`BTreeMap::range` panics on bounds in the wrong order.)
        let range =
            self.terms.get(term).filter(|_| lower < upper).map(|list| {
                list.range::<[u8], _>((Bound::Included(lower), Bound::Excluded(upper)))
            });
        range.into_iter().flatten().map(|(p, &add)| (&**p, add))
    }

    /// The entry for `term` at `position`, if any.
    pub(super) fn get(&self, term: &str, position: &[u8]) -> Option<bool> {
        self.terms.get(term)?.get(position).copied()
    }

    /// Brings it in line with a write whose batch was applied.
    fn applied(&mut self, update: JournalUpdate<'_>) {
        match update {
            JournalUpdate::Nothing => {}
            JournalUpdate::Append(seq, bytes, edits) => {
                for (position, add, terms) in edits.groups() {
                    self.apply_group(position, add, terms.iter().copied());
                }
                self.records.push((journal_key(seq), bytes));
                self.next = seq.saturating_add(1);
            }
            JournalUpdate::Folded => *self = Journal::default(),
        }
    }
}

/// What a write does to the in-memory journal once its batch is applied.
pub(super) enum JournalUpdate<'a> {
    /// No posting changed.
    Nothing,
    /// These edits were logged as record `seq`, of this many bytes (key + value).
    Append(u64, u64, PostingEdits<'a>),
    /// The journal was folded into the blocks and its records removed.
    Folded,
}

/// A journal record's value: [`JOURNAL_FORMAT`], then each trace side's group (see the module
/// doc).
fn encode_journal_record(edits: &PostingEdits<'_>) -> Vec<u8> {
    let mut e = Enc::with_capacity(64 + edits.len() * 10);
    e.u8(JOURNAL_FORMAT);
    for (position, add, terms) in edits.groups() {
        e.bool(add);
        e.u64(position.len() as u64);
        e.raw(position);
        for term in terms {
            e.str(term);
        }
        e.str("");
    }
    e.0
}

pub(super) fn journal_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(P_JOURNAL);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number of a journal key; `None` when it is malformed.
pub(super) fn journal_seq(key: &[u8]) -> Option<u64> {
    key.get(1..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}

/// One journal edit: (term, position, added).
pub(super) type JournalEdit<'v> = (&'v str, &'v [u8], bool);

/// One trace side of a record: (position, added, its terms).
pub(super) type JournalGroup<'v> = (&'v [u8], bool, Vec<&'v str>);

/// A record's groups, in the order written. Terms are checked to be non-empty and free of 0x00,
/// positions to be positions.
pub(super) fn decode_journal_record<'v>(
    key: &[u8],
    value: &'v [u8],
) -> Result<Vec<JournalGroup<'v>>, StoreError> {
    decode_bin(key, value, |d| {
        if d.u8()? != JOURNAL_FORMAT {
            return None;
        }
        let mut out = Vec::new();
        while !d.rest().is_empty() {
            let add = d.bool()?;
            let position = d.bytes()?;
            parse_position(position)?;
            let mut terms = Vec::new();
            loop {
                let term = d.str()?;
                if term.is_empty() {
                    break;
                }
                // 0x00 would end the term early in a `w` key. (No length check: a term keeps
                // 32 chars of its text, and lowercasing can make a char two.)
                if term.contains('\0') {
                    return None;
                }
                terms.push(term);
            }
            // A group always has a term (the encoder opens one only for a term).
            if terms.is_empty() {
                return None;
            }
            out.push((position, add, terms));
        }
        Some(out)
    })
}

impl Store {
    /// Reads the journal's records into memory (at open). A record that does not decode is
    /// skipped with a warning (the postings it held are missing until the traces are written
    /// again; `check` reports them) and removed by the next fold, as is a malformed key.
    pub(super) fn load_journal(&self) -> Result<(), StoreError> {
        let mut journal = Journal::default();
        for item in self.tree.scan_prefix([P_JOURNAL]) {
            let (key, value) = item?;
            journal
                .records
                .push((key.to_vec(), (key.len() + value.len()) as u64));
            let Some(seq) = journal_seq(&key) else {
                tracing::warn!(key = %show_key(&key), "store: a posting journal key is malformed");
                continue;
            };
            journal.next = journal.next.max(seq.saturating_add(1));
            match decode_journal_record(&key, &value) {
                Ok(groups) => {
                    for (position, add, terms) in groups {
                        journal.apply_group(position, add, terms);
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "store: a posting journal record does not decode; its postings are missing until the traces are written again"
                ),
            }
        }
        *self.journal.write().unwrap_or_else(PoisonError::into_inner) = journal;
        Ok(())
    }

    /// Calls `visit` with the journal's entries for the term of `prefix` (`w` term 0x00) in
    /// `[lower, upper)`, ascending, holding the journal's read lock meanwhile (so `visit` must
    /// be short: a seek, or a copy).
    pub(super) fn with_journal_range<T>(
        &self,
        prefix: &[u8],
        lower: &[u8],
        upper: &[u8],
        visit: impl FnOnce(&mut dyn Iterator<Item = (&[u8], bool)>) -> T,
    ) -> T {
        let journal = self.journal.read().unwrap_or_else(PoisonError::into_inner);
        let term = prefix
            .get(1..prefix.len().saturating_sub(1))
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or_default();
        let mut entries = journal.range(term, lower, upper);
        visit(&mut entries)
    }

    /// Adds a write's posting edits to its `batch`: as one journal record, or, when `fold` is
    /// asked or they would take the journal past [`JOURNAL_MAX_EDITS`], by folding the journal
    /// and them into the blocks. Returns what to do to the in-memory journal when `batch` is
    /// applied ([`Store::apply_with_journal`]), and how many bytes the blocks and records shrink
    /// by (retention's accounting). The caller holds the writer lock.
    pub(super) fn write_postings<'a>(
        &self,
        batch: &mut sled::Batch,
        edits: PostingEdits<'a>,
        fold: bool,
    ) -> Result<(JournalUpdate<'a>, u64), StoreError> {
        let journal = self.journal.read().unwrap_or_else(PoisonError::into_inner);
        // (A record keyed u64::MAX, which only a foreign writer could leave, leaves no key for
        // the next record: fold, which starts the numbering again.)
        let fold = fold
            || journal.logged.saturating_add(edits.len()) > JOURNAL_MAX_EDITS
            || journal.next == u64::MAX;
        if !fold {
            if edits.len() == 0 {
                return Ok((JournalUpdate::Nothing, 0));
            }
            let seq = journal.next;
            let key = journal_key(seq);
            let value = encode_journal_record(&edits);
            let bytes = (key.len() + value.len()) as u64;
            batch.insert(key, value);
            return Ok((JournalUpdate::Append(seq, bytes, edits), 0));
        }
        let mut record_bytes = 0u64;
        for (key, bytes) in &journal.records {
            record_bytes = record_bytes.saturating_add(*bytes);
            batch.remove(key.as_slice());
        }
        let mut all = PostingEdits::default();
        for (term, position, add) in journal.entries() {
            all.push(term, position, add);
        }
        all.extend(edits);
        let (read, written) = self.apply_postings(batch, all)?;
        let freed = read.saturating_add(record_bytes).saturating_sub(written);
        Ok((JournalUpdate::Folded, freed))
    }

    /// Applies a write's `batch` and brings the in-memory journal in line with it, both under
    /// the journal's write lock, so a search that starts once the write's summaries are visible
    /// (a `GET` found the trace) waits for its journal entries rather than missing them. A
    /// search that copied the journal before the write and reads the blocks after it sees each
    /// position as it was before the write (a fold put the journal's edits into the blocks, so
    /// applying them again changes nothing; only the folding write's own edits look unwritten).
    /// The caller holds the writer lock.
    pub(super) fn apply_with_journal(
        &self,
        batch: sled::Batch,
        update: JournalUpdate<'_>,
    ) -> Result<(), StoreError> {
        let mut journal = self.journal.write().unwrap_or_else(PoisonError::into_inner);
        self.tree.apply_batch(batch)?;
        journal.applied(update);
        Ok(())
    }

    /// Folds the whole journal into the blocks in a batch of its own, when it holds anything.
    /// The caller holds the writer lock.
    pub(super) fn fold_journal_locked(&self) -> Result<bool, StoreError> {
        {
            let journal = self.journal.read().unwrap_or_else(PoisonError::into_inner);
            // (Every entry came from a record, and records go only in a fold.)
            if journal.records.is_empty() {
                return Ok(false);
            }
        }
        let mut batch = sled::Batch::default();
        let (update, _) = self.write_postings(&mut batch, PostingEdits::default(), true)?;
        self.apply_with_journal(batch, update)?;
        Ok(true)
    }

    /// A copy of the journal's entries (for `check`, which reads the store meanwhile).
    pub(super) fn journal_snapshot(&self) -> Vec<(String, Vec<u8>, bool)> {
        let journal = self.journal.read().unwrap_or_else(PoisonError::into_inner);
        journal
            .entries()
            .map(|(t, p, add)| (t.to_string(), p.to_vec(), add))
            .collect()
    }

    /// Folds the posting journal into the blocks now (retention, before it measures the live
    /// data; otherwise a write folds when it is full). `true` when there was anything to fold.
    pub(crate) fn fold_journal(&self) -> Result<bool, StoreError> {
        let _mimalloc = crate::malloc::StoreScope::enter();
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.fold_journal_locked()
    }

    /// Edits waiting in the posting journal (tests).
    #[cfg(test)]
    pub(crate) fn journal_edits(&self) -> usize {
        self.journal
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .edits
    }
}

//! Full-text posting lists in blocks (schema 3). A term's list is the newest-first sequence of
//! positions (inv(trace start) ++ trace id, the same tail as every `t`/`x` key) of the traces
//! that have the term. Schema 2 stored one empty-valued key per (term, trace): about 45 sled
//! inserts per trace, more than everything else a span costs. Schema 3 stores the list in blocks
//! of at most [`BLOCK_POSITIONS`] positions:
//!
//! `w` term 0x00 last-position → the block's positions, ascending (see [`encode_block`]).
//!
//! Keyed by its *last* position, the block holding the first position ≥ `p` is simply the first
//! key ≥ `w term 0x00 p` (the blocks of a term partition its positions in order: each one's first
//! position is above the previous one's last), so a seek is one sled range lookup plus a binary
//! search, and the list is walked in key order. New traces are the newest, so they go into the
//! term's first block; a block over [`BLOCK_POSITIONS`] is cut into full blocks from its old end,
//! which keeps old blocks full and the rewritten one small. A `put_spans` batch rewrites each
//! touched block once, whatever the number of traces it adds, inside the same atomic batch as
//! everything else.

use super::*;

/// Most positions in one posting block: a block is rewritten whenever a trace in it gains or
/// loses the term, so it is kept small (≈ 1.3 KB with 32-char trace ids). Measured with
/// callgrind on `store_bench` (20k spans): 16 → 157k, 32 → 151k, 64 → 153k instructions per span.
pub(super) const BLOCK_POSITIONS: usize = 32;

/// First byte of a block value, so a later layout can tell its records apart.
const BLOCK_FORMAT: u8 = 1;

/// The end (exclusive) of every key under `prefix`, a term prefix ending in 0x00.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    match end.last_mut() {
        Some(last) if *last < u8::MAX => *last += 1,
        _ => end.push(u8::MAX),
    }
    end
}

/// A block's value: format byte, count, then each position length-prefixed, ascending.
pub(super) fn encode_block(positions: &[Vec<u8>]) -> Vec<u8> {
    let mut e = Enc::with_capacity(4 + positions.iter().map(|p| p.len() + 1).sum::<usize>());
    e.u8(BLOCK_FORMAT);
    e.u64(positions.len() as u64);
    for p in positions {
        e.bytes(p);
    }
    e.0
}

/// The positions of a block, ascending; checked to be well-formed (non-empty, each with a start
/// and a trace id, strictly ascending) so readers can rely on the order.
pub(super) fn decode_block<'a>(key: &[u8], value: &'a [u8]) -> Result<Vec<&'a [u8]>, StoreError> {
    decode_bin(key, value, |d| {
        if d.u8()? != BLOCK_FORMAT {
            return None;
        }
        let n = d.u64()?;
        if n == 0 || n > value.len() as u64 {
            return None;
        }
        let mut out: Vec<&[u8]> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let p = d.bytes()?;
            if parse_position(p).is_none() || out.last().is_some_and(|last| *last >= p) {
                return None;
            }
            out.push(p);
        }
        Some(out)
    })
}

/// This batch's changes to posting lists: per term prefix, positions to remove and to add. A
/// position is never both (a trace's positions are diffed once per batch).
#[derive(Default)]
pub(super) struct PostingEdits {
    lists: BTreeMap<Vec<u8>, ListEdits>,
}

/// Positions to remove from, and to add to, one posting list.
type ListEdits = (BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>);

impl PostingEdits {
    pub(super) fn add(&mut self, term: &str, position: &[u8]) {
        let e = self.lists.entry(term_prefix(term)).or_default();
        e.0.remove(position);
        e.1.insert(position.to_vec());
    }

    pub(super) fn remove(&mut self, term: &str, position: &[u8]) {
        let e = self.lists.entry(term_prefix(term)).or_default();
        e.1.remove(position);
        e.0.insert(position.to_vec());
    }

    /// The edits between a trace's postings before and after this batch (either may be absent).
    pub(super) fn diff(&mut self, before: Option<&Agg>, after: Option<&Agg>) {
        let before_pos = before.map(Agg::position);
        let after_pos = after.map(Agg::position);
        if let (Some(b), Some(bp)) = (before, &before_pos) {
            for term in &b.terms {
                let kept =
                    after.is_some_and(|a| after_pos.as_ref() == Some(bp) && a.terms.contains(term));
                if !kept {
                    self.remove(term, bp);
                }
            }
        }
        if let (Some(a), Some(ap)) = (after, &after_pos) {
            for term in &a.terms {
                let had = before
                    .is_some_and(|b| before_pos.as_ref() == Some(ap) && b.terms.contains(term));
                if !had {
                    self.add(term, ap);
                }
            }
        }
    }
}

impl Store {
    /// Adds this batch's posting edits to `batch`: each touched block is read once, edited, and
    /// written back (cut into blocks of at most [`BLOCK_POSITIONS`]), or removed when empty.
    /// Returns how many bytes (keys + values) the posting blocks shrink by (retention's
    /// accounting).
    pub(super) fn apply_postings(
        &self,
        batch: &mut sled::Batch,
        edits: PostingEdits,
    ) -> Result<u64, StoreError> {
        // Bytes (keys + values) of the blocks read, and of the blocks written in their place.
        let (mut before, mut after) = (0u64, 0u64);
        for (prefix, (removes, adds)) in edits.lists {
            let end = prefix_end(&prefix);
            // Blocks touched, by their current key (empty = no block yet: the list is empty).
            let mut blocks: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
            // The positions, ascending: a block found for one covers the next ones up to its key.
            let mut all: Vec<(&Vec<u8>, bool)> = removes
                .iter()
                .map(|p| (p, false))
                .chain(adds.iter().map(|p| (p, true)))
                .collect();
            all.sort_unstable();
            let mut covering: Option<Vec<u8>> = None;
            let mut past_last = false;
            for (position, add) in all {
                let full = [prefix.as_slice(), position].concat();
                let key = match &covering {
                    Some(k) if past_last || full <= *k => k.clone(),
                    _ => {
                        let found = self.tree.range(full.as_slice()..end.as_slice()).next();
                        let found = match found {
                            Some(item) => Some(item?),
                            None => {
                                // Above every block: the last one (if any) takes it.
                                past_last = true;
                                match self
                                    .tree
                                    .range(prefix.as_slice()..end.as_slice())
                                    .next_back()
                                {
                                    Some(item) => Some(item?),
                                    None => None,
                                }
                            }
                        };
                        let key = match found {
                            Some((k, v)) => {
                                let k = k.to_vec();
                                if !blocks.contains_key(&k) {
                                    before = before.saturating_add((k.len() + v.len()) as u64);
                                    let entries = decode_block(&k, &v)?;
                                    blocks.insert(
                                        k.clone(),
                                        entries.into_iter().map(<[u8]>::to_vec).collect(),
                                    );
                                }
                                k
                            }
                            None => Vec::new(),
                        };
                        covering = Some(key.clone());
                        key
                    }
                };
                let entries = blocks.entry(key).or_default();
                if add {
                    entries.insert(position.clone());
                } else {
                    entries.remove(position);
                }
            }
            for (old_key, entries) in blocks {
                if !old_key.is_empty() {
                    batch.remove(old_key);
                }
                let entries: Vec<Vec<u8>> = entries.into_iter().collect();
                let mut rest = entries.as_slice();
                // Full blocks from the old end; the newest remainder is the small one.
                while !rest.is_empty() {
                    let cut = rest.len().saturating_sub(BLOCK_POSITIONS);
                    let (head, piece) = rest.split_at(cut);
                    if let Some(last) = piece.last() {
                        let (key, value) =
                            ([prefix.as_slice(), last].concat(), encode_block(piece));
                        after = after.saturating_add((key.len() + value.len()) as u64);
                        batch.insert(key, value);
                    }
                    rest = head;
                }
            }
        }
        Ok(before.saturating_sub(after))
    }

    /// The first position at or after `from` and before `upper` in the posting list of `prefix`.
    pub(super) fn posting_seek(
        &self,
        prefix: &[u8],
        from: &[u8],
        upper: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let start = [prefix, from].concat();
        let end = prefix_end(prefix);
        // The first block whose last position is ≥ `from` holds the answer (blocks are checked
        // to be ascending, so a corrupt one cannot loop this: at most one more block is read).
        for item in self.tree.range(start.as_slice()..end.as_slice()).take(2) {
            let (key, value) = item?;
            let entries = decode_block(&key, &value)?;
            let i = entries.partition_point(|p| *p < from);
            if let Some(p) = entries.get(i) {
                return Ok((*p < upper).then(|| p.to_vec()));
            }
        }
        Ok(None)
    }

    /// Calls `visit` with each position in `[lower, upper)` of the posting list of `prefix`,
    /// newest first, until it returns `true`.
    pub(super) fn posting_walk(
        &self,
        prefix: &[u8],
        lower: &[u8],
        upper: &[u8],
        mut visit: impl FnMut(&[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let start = [prefix, lower].concat();
        let end = prefix_end(prefix);
        for item in self.tree.range(start.as_slice()..end.as_slice()) {
            let (key, value) = item?;
            for p in decode_block(&key, &value)? {
                if p < lower {
                    continue;
                }
                if p >= upper || visit(p)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether the posting list of `term` holds `position`.
    pub(super) fn has_posting(&self, term: &str, position: &[u8]) -> Result<bool, StoreError> {
        let mut after = position.to_vec();
        after.push(0);
        Ok(self
            .posting_seek(&term_prefix(term), position, &after)?
            .as_deref()
            == Some(position))
    }
}

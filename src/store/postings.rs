//! Full-text posting lists in blocks (schema 3; schema 4 packs them, see [`BLOCK_FORMAT`]). A term's list is the newest-first sequence of
//! positions (inv(trace start) ++ trace id, the same tail as every `t`/`x` key) of the traces
//! that have the term. Schema 2 stored one empty-valued key per (term, trace): about 45 sled
//! inserts per trace, more than everything else a span costs. Schema 3 stores the list in blocks
//! of at most [`BLOCK_POSITIONS`] positions:
//!
//! `w` term 0x00 last-position → the block's positions, ascending (see [`encode_block`]). The key
//! carries the last position as it is (its order is the seek); the value packs the positions.
//!
//! Keyed by its *last* position, the block holding the first position ≥ `p` is simply the first
//! key ≥ `w term 0x00 p` (the blocks of a term partition its positions in order: each one's first
//! position is above the previous one's last), so a seek is one sled range lookup plus a binary
//! search, and the list is walked in key order. New traces are the newest, so they go into the
//! term's first block; a block over [`BLOCK_POSITIONS`] is cut into full blocks from its old end,
//! which keeps old blocks full and the rewritten one small. Writes reach the blocks through the
//! posting journal (see `journal`): a fold rewrites each touched block once, whatever the number
//! of traces and writes it adds, inside the atomic batch of the write that folds.

use super::*;

/// Most positions in one posting block: a block is rewritten by every fold (see `journal`) in
/// which a trace in it gains or loses the term, so it is kept small (≈ 1.3 KB with 32-char trace
/// ids). Measured with callgrind on `store_bench` (20k spans, before the journal, when every
/// write rewrote its blocks): 16 → 157k, 32 → 151k, 64 → 153k instructions per span.
pub(super) const BLOCK_POSITIONS: usize = 32;

/// First byte of a block value: the layout of its positions. Format 1 (length-prefixed positions
/// as they are) is still read, so stores written before format 2 need no migration: a block is
/// rewritten in format 2 the next time a trace in it gains or loses the term.
const BLOCK_FORMAT_PLAIN: u8 = 1;
/// Format 2: each position as the gap from the previous one's start (varint; positions are
/// ascending, so gaps are never negative, and the first one is its inv(start) itself) and its
/// trace id, a lowercase hex id of even length packed two digits to a byte (a W3C or generated
/// id: 16 bytes instead of 32). About 20 bytes per position instead of 41: every fold rewrites
/// the newest block of each term it touches, so the bytes per position are what sled copies and
/// logs.
const BLOCK_FORMAT: u8 = 2;

/// A block's positions, decoded: each is inv(trace start)(be) ++ trace id, as in every `t`/`x`
/// key, stored one after another in one buffer.
#[derive(Default)]
pub(super) struct Positions {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Positions {
    fn with_capacity(n: usize) -> Positions {
        Positions {
            buf: Vec::with_capacity(n.saturating_mul(40)),
            ends: Vec::with_capacity(n),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = i.checked_sub(1).map_or(0, |j| self.ends[j]);
        self.buf.get(start..end)
    }

    pub(super) fn first(&self) -> Option<&[u8]> {
        self.get(0)
    }

    pub(super) fn last(&self) -> Option<&[u8]> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The index of the first position ≥ `p` (`len()` when there is none).
    fn lower_bound(&self, p: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).is_some_and(|m| m < p) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Appends a position, checked to be well-formed and above the last one; `None` otherwise.
    fn push_checked(&mut self, start: &[u8], id: impl Iterator<Item = u8>) -> Option<()> {
        let from = self.buf.len();
        self.buf.extend_from_slice(start);
        self.buf.extend(id);
        let p = self.buf.get(from..)?;
        if parse_position(p).is_none() || self.last().is_some_and(|last| last >= p) {
            return None;
        }
        self.ends.push(self.buf.len());
        Some(())
    }
}

/// The end (exclusive) of every key under `prefix`, a term prefix ending in 0x00.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    match end.last_mut() {
        Some(last) if *last < u8::MAX => *last += 1,
        _ => end.push(u8::MAX),
    }
    end
}

/// A trace id in a format-2 block: twice its length, plus one when it is packed as hex.
fn id_header(id: &[u8]) -> (u64, bool) {
    let hex = !id.is_empty()
        && id.len() % 2 == 0
        && id.iter().all(|&b| HEX_VALUES[usize::from(b)] != NOT_HEX);
    (id.len() as u64 * 2 + u64::from(hex), hex)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
/// [`HEX_VALUES`] of a byte that is not a lowercase hex digit.
const NOT_HEX: u8 = 0xFF;
/// Each byte's value as a lowercase hex digit, or [`NOT_HEX`].
const HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX_DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// `id` packed two lowercase hex digits to a byte into `out` (cleared first); `false` (and `out`
/// unspecified) when `id` is not a non-empty, even-length lowercase hex string.
fn pack_hex(id: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if id.is_empty() || id.len() % 2 == 1 {
        return false;
    }
    for pair in id.chunks_exact(2) {
        let (hi, lo) = (
            HEX_VALUES[usize::from(pair[0])],
            HEX_VALUES[usize::from(pair[1])],
        );
        if hi == NOT_HEX || lo == NOT_HEX {
            return false;
        }
        out.push(hi << 4 | lo);
    }
    true
}

/// A block's value: format byte, count, then each position (see [`BLOCK_FORMAT`]), ascending.
/// Positions are well-formed (`parse_position`) and strictly ascending.
pub(super) fn encode_block<P: AsRef<[u8]>>(positions: &[P]) -> Vec<u8> {
    // Positions are well-formed (they come from summaries or decoded blocks); one that was not
    // would be left out rather than written into a block that never decodes again.
    let whole: Vec<&[u8]> = positions
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| parse_position(p).is_some())
        .collect();
    let mut e = Enc::with_capacity(4 + whole.iter().map(|p| p.len() / 2 + 4).sum::<usize>());
    e.u8(BLOCK_FORMAT);
    e.u64(whole.len() as u64);
    let mut previous = 0u64;
    let mut packed = Vec::with_capacity(32);
    for p in whole {
        let Some((start, id)) = p.split_at_checked(8) else {
            continue; // parse_position checked it
        };
        let start = u64::from_be_bytes(start.try_into().unwrap_or_default());
        e.u64(start.wrapping_sub(previous));
        previous = start;
        if pack_hex(id, &mut packed) {
            e.u64(id.len() as u64 * 2 + 1);
            e.raw(&packed);
        } else {
            e.u64(id.len() as u64 * 2);
            e.raw(id);
        }
    }
    e.0
}

/// The positions of a block, ascending; checked to be well-formed (non-empty, each with a start
/// and a trace id, strictly ascending) so readers can rely on the order.
pub(super) fn decode_block(key: &[u8], value: &[u8]) -> Result<Positions, StoreError> {
    decode_bin(key, value, |d| {
        let format = d.u8()?;
        let n = d.u64()?;
        if n == 0 || n > value.len() as u64 {
            return None;
        }
        let mut out = Positions::with_capacity(n as usize);
        let mut start = 0u64;
        for _ in 0..n {
            match format {
                BLOCK_FORMAT_PLAIN => {
                    let (s, id) = d.bytes()?.split_at_checked(8)?;
                    out.push_checked(s, id.iter().copied())?;
                }
                BLOCK_FORMAT => {
                    start = start.checked_add(d.u64()?)?;
                    let header = usize::try_from(d.u64()?).ok()?;
                    let (len, hex) = (header / 2, header % 2 == 1);
                    let s = start.to_be_bytes();
                    if hex {
                        // Canonical only: the encoder packs even lengths.
                        if len % 2 == 1 {
                            return None;
                        }
                        let packed = d.take(len / 2)?;
                        let digits = packed.iter().flat_map(|b| {
                            [
                                HEX_DIGITS[usize::from(b >> 4)],
                                HEX_DIGITS[usize::from(b & 15)],
                            ]
                        });
                        out.push_checked(&s, digits)?;
                    } else {
                        let id = d.take(len)?;
                        // Canonical only: an id the encoder would have packed is not raw.
                        if id_header(id).1 {
                            return None;
                        }
                        out.push_checked(&s, id.iter().copied())?;
                    }
                }
                _ => return None,
            }
        }
        Some(out)
    })
}

/// A stored block: key, value.
type Block = (sled::IVec, sled::IVec);

/// One posting edit: (position, `true` = add / `false` = remove).
type Edit<'a> = (&'a [u8], bool);

/// This batch's changes to posting lists: per term, the positions to add or remove, borrowed
/// from the summaries being written, so a batch costs no allocation per (term, trace). Within
/// one batch a position is never both added and removed (a trace's positions are diffed once
/// per batch, and positions of different traces differ); across batches (a journal fold, see
/// `journal`) the later edit of a position wins.
#[derive(Default)]
pub(super) struct PostingEdits<'a> {
    lists: FnvMap<&'a str, Vec<Edit<'a>>>,
    /// How many edits `lists` holds.
    count: usize,
    /// The same edits per trace side, for a journal record (see `journal`), encoded only if
    /// the write is journalled: (position, added, the end of its terms in `group_terms`).
    groups: Vec<(&'a [u8], bool, usize)>,
    group_terms: Vec<&'a str>,
}

impl<'a> PostingEdits<'a> {
    /// The edits between a trace's postings before and after this batch (either may be absent),
    /// each given with its position (`Agg::position`).
    pub(super) fn diff(
        &mut self,
        before: Option<(&'a Agg, &'a [u8])>,
        after: Option<(&'a Agg, &'a [u8])>,
    ) {
        // Terms present on both sides at the same position need no edit.
        let same = match (before, after) {
            (Some((b, bp)), Some((a, ap))) if bp == ap => Some((b, a)),
            _ => None,
        };
        if let Some((b, bp)) = before {
            self.side(bp, false, b.terms.iter().map(String::as_str), |term| {
                same.is_some_and(|(_, a)| a.terms.contains(term))
            });
        }
        if let Some((a, ap)) = after {
            self.side(ap, true, a.terms.iter().map(String::as_str), |term| {
                same.is_some_and(|(b, _)| b.terms.contains(term))
            });
        }
    }

    /// One side of a trace's diff: `terms` (but those `unchanged`) added at or removed from
    /// `position`, listed per term and written as one journal group.
    fn side(
        &mut self,
        position: &'a [u8],
        add: bool,
        terms: impl Iterator<Item = &'a str>,
        unchanged: impl Fn(&str) -> bool,
    ) {
        let from = self.group_terms.len();
        for term in terms.filter(|t| !unchanged(t)) {
            self.push(term, position, add);
            self.group_terms.push(term);
        }
        if self.group_terms.len() > from {
            self.groups.push((position, add, self.group_terms.len()));
        }
    }

    /// Adds one edit; edits added later win over it. Not part of [`PostingEdits::groups`]
    /// (`diff` records those): pushed alone, as a fold does with the journal's entries, an edit
    /// is folded, never journalled.
    pub(super) fn push(&mut self, term: &'a str, position: &'a [u8], add: bool) {
        self.lists.entry(term).or_default().push((position, add));
        self.count += 1;
    }

    /// Adds every edit of `later`, which win over these where both edit a position.
    pub(super) fn extend(&mut self, later: PostingEdits<'a>) {
        for (term, list) in later.lists {
            self.count += list.len();
            self.lists.entry(term).or_default().extend(list);
        }
    }

    /// How many edits there are.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// These edits per trace side, for a journal record: (position, added, terms).
    pub(super) fn groups(&self) -> impl Iterator<Item = (&'a [u8], bool, &[&'a str])> + '_ {
        let mut from = 0;
        self.groups.iter().map(move |&(position, add, to)| {
            let terms = self.group_terms.get(from..to).unwrap_or_default();
            from = to;
            (position, add, terms)
        })
    }
}

impl Store {
    /// Adds this batch's posting edits to `batch`: each touched block is read once, edited, and
    /// written back (cut into blocks of at most [`BLOCK_POSITIONS`]), or removed when empty.
    /// Returns the bytes (keys + values) of the blocks read and of those written in their place
    /// (retention's accounting).
    pub(super) fn apply_postings(
        &self,
        batch: &mut sled::Batch,
        edits: PostingEdits<'_>,
    ) -> Result<(u64, u64), StoreError> {
        // Bytes (keys + values) of the blocks read, and of the blocks written in their place.
        let mut sizes = (0u64, 0u64);
        for (term, mut list) in edits.lists {
            crate::priority::yield_point();
            if list.len() > 1 {
                // Stable, so of two edits of one position (a journal entry and a later write's)
                // the later one is kept.
                list.sort_by(|x, y| x.0.cmp(y.0));
                list.dedup_by(|next, kept| {
                    let same = next.0 == kept.0;
                    if same {
                        kept.1 = next.1;
                    }
                    same
                });
            }
            self.apply_list(batch, term, &list, &mut sizes)?;
        }
        Ok(sizes)
    }

    /// One term's edits (ascending positions): the blocks they fall into are read, merged with
    /// them and written back. The block holding position `p` is the first one keyed ≥ `p`, or
    /// the last block when every key is below `p`.
    fn apply_list(
        &self,
        batch: &mut sled::Batch,
        term: &str,
        list: &[Edit<'_>],
        sizes: &mut (u64, u64),
    ) -> Result<(), StoreError> {
        let prefix = term_prefix(term);
        let end = prefix_end(&prefix);
        let mut full = Vec::with_capacity(prefix.len() + 64);
        // Which block each run of edits goes to (`None`: the list is empty, new blocks). One
        // lookup of the list's first block settles the common cases: a new term (no block) and
        // new traces (the newest positions, which the first block covers).
        let first = match self.tree.range(prefix.as_slice()..end.as_slice()).next() {
            Some(item) => Some(item?),
            None => None,
        };
        let mut plan: Vec<(Option<Block>, usize, usize)> = Vec::new();
        let mut i = 0;
        while let Some(&(position, _)) = list.get(i) {
            full.clear();
            full.extend_from_slice(&prefix);
            full.extend_from_slice(position);
            // (block, whether it covers only the positions up to its key)
            let (block, bounded) = match &first {
                None => (None, false),
                Some((key, _)) if full.as_slice() <= key.as_ref() => (first.clone(), true),
                Some(_) => match self.tree.range(full.as_slice()..end.as_slice()).next() {
                    Some(item) => (Some(item?), true),
                    // Above every block: the last one takes the rest.
                    None => match self
                        .tree
                        .range(prefix.as_slice()..full.as_slice())
                        .next_back()
                    {
                        Some(item) => (Some(item?), false),
                        None => (None, false),
                    },
                },
            };
            let n = match (&block, bounded) {
                (Some((key, _)), true) => {
                    let bound = key.get(prefix.len()..).unwrap_or_default();
                    list[i..].iter().take_while(|e| e.0 <= bound).count().max(1)
                }
                _ => list.len() - i,
            };
            match plan.last_mut() {
                // The last block again (it covered earlier positions up to its key too).
                Some((Some((k, _)), _, run_end))
                    if block.as_ref().is_some_and(|(bk, _)| bk == k) =>
                {
                    *run_end = i + n;
                }
                _ => plan.push((block, i, i + n)),
            }
            i += n;
        }
        for (block, from, to) in &plan {
            let entries = match block {
                Some((key, value)) => {
                    sizes.0 = sizes.0.saturating_add((key.len() + value.len()) as u64);
                    batch.remove(key.clone());
                    decode_block(key, value)?
                }
                None => Positions::default(),
            };
            let entries: Vec<&[u8]> = entries.iter().collect();
            let merged = merge_positions(&entries, &list[*from..*to]);
            // Full blocks from the old end; the newest remainder is the small one.
            let mut left = merged.as_slice();
            while !left.is_empty() {
                let cut = left.len().saturating_sub(BLOCK_POSITIONS);
                let (head, piece) = left.split_at(cut);
                if let Some(last_position) = piece.last() {
                    full.clear();
                    full.extend_from_slice(&prefix);
                    full.extend_from_slice(last_position);
                    let value = encode_block(piece);
                    sizes.1 = sizes.1.saturating_add((full.len() + value.len()) as u64);
                    batch.insert(full.as_slice(), value);
                }
                left = head;
            }
        }
        Ok(())
    }

    /// The first position at or after `from` and before `upper` in the posting list of
    /// `prefix` (its blocks with the journal applied). Reads the journal in place: a seek is
    /// short (it stops at the first listed position).
    pub(super) fn posting_seek(
        &self,
        prefix: &[u8],
        from: &[u8],
        upper: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut found = None;
        if from < upper {
            self.with_journal_range(prefix, from, upper, |pending| {
                self.merge_walk(prefix, from, upper, pending, |p| {
                    found = Some(p.to_vec());
                    Ok(true)
                })
            })?;
        }
        Ok(found)
    }

    /// [`Store::posting_seek`] in the blocks alone, without the journal (`check` compares the
    /// two).
    pub(super) fn block_seek(
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
            if let Some(p) = entries.get(entries.lower_bound(from)) {
                return Ok((p < upper).then(|| p.to_vec()));
            }
        }
        Ok(None)
    }

    /// Calls `visit` with each position in `[lower, upper)` of the posting list of `prefix`,
    /// newest first, until it returns `true`: the blocks' positions merged with the journal's
    /// entries for the term (an added position is visited once, a removed one not at all). The
    /// entries are copied first, so no lock is held while `visit` runs.
    pub(super) fn posting_walk(
        &self,
        prefix: &[u8],
        lower: &[u8],
        upper: &[u8],
        visit: impl FnMut(&[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        if lower >= upper {
            return Ok(());
        }
        let pending: Vec<(Vec<u8>, bool)> = self.with_journal_range(prefix, lower, upper, |p| {
            p.map(|(q, add)| (q.to_vec(), add)).collect()
        });
        let mut pending = pending.iter().map(|(q, add)| (q.as_slice(), *add));
        self.merge_walk(prefix, lower, upper, &mut pending, visit)
    }

    /// The walk of [`Store::posting_walk`] with the journal's entries in `[lower, upper)`,
    /// ascending, as `pending`.
    fn merge_walk(
        &self,
        prefix: &[u8],
        lower: &[u8],
        upper: &[u8],
        pending: &mut dyn Iterator<Item = (&[u8], bool)>,
        mut visit: impl FnMut(&[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut pending = pending.peekable();
        let start = [prefix, lower].concat();
        let end = prefix_end(prefix);
        'blocks: for item in self.tree.range(start.as_slice()..end.as_slice()) {
            let (key, value) = item?;
            for p in decode_block(&key, &value)?.iter() {
                if p < lower {
                    continue;
                }
                if p >= upper {
                    break 'blocks;
                }
                // The journal's additions before `p`.
                while let Some((q, add)) = pending.next_if(|&(q, _)| q < p) {
                    if add && visit(q)? {
                        return Ok(());
                    }
                }
                // The journal's edit of `p` itself, if any, says whether it is still listed.
                let listed = pending.next_if(|&(q, _)| q == p).is_none_or(|(_, add)| add);
                if listed && visit(p)? {
                    return Ok(());
                }
            }
        }
        for (q, add) in pending {
            if add && visit(q)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether the posting list of `term` holds `position` (the blocks with the journal
    /// applied).
    pub(super) fn has_posting(&self, term: &str, position: &[u8]) -> Result<bool, StoreError> {
        let prefix = term_prefix(term);
        holds(position, |after| {
            self.posting_seek(&prefix, position, after)
        })
    }

    /// Whether a block of the list under `prefix` holds `position` (without the journal).
    pub(super) fn block_has(&self, prefix: &[u8], position: &[u8]) -> Result<bool, StoreError> {
        holds(position, |after| self.block_seek(prefix, position, after))
    }
}

/// Whether `seek`, given the bound just above `position` (no trace id contains 0x00), finds
/// `position` itself.
fn holds(
    position: &[u8],
    seek: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<bool, StoreError> {
    let mut after = position.to_vec();
    after.push(0);
    Ok(seek(&after)?.as_deref() == Some(position))
}

/// A block's positions (ascending) with `edits` (ascending) applied: added positions merged in,
/// removed ones left out.
fn merge_positions<'p>(entries: &[&'p [u8]], edits: &[Edit<'p>]) -> Vec<&'p [u8]> {
    let mut out = Vec::with_capacity(entries.len() + edits.len());
    let (mut i, mut j) = (0, 0);
    while i < entries.len() || j < edits.len() {
        match (entries.get(i), edits.get(j)) {
            (Some(&e), Some(&(p, add))) => match e.cmp(p) {
                std::cmp::Ordering::Less => {
                    out.push(e);
                    i += 1;
                }
                std::cmp::Ordering::Equal => {
                    if add {
                        out.push(e);
                    }
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Greater => {
                    if add {
                        out.push(p);
                    }
                    j += 1;
                }
            },
            (Some(&e), None) => {
                out.push(e);
                i += 1;
            }
            (None, Some(&(p, add))) => {
                if add {
                    out.push(p);
                }
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

//! Retention: deletes the oldest whole traces by age, then by size.

use super::*;

impl Store {
    /// Retention: deletes whole traces, oldest first (by trace start, from the `t` index), with
    /// [`Store::delete_trace`], so indexes stay consistent. First every trace that started before
    /// `older_than`; then, when sled's size on disk exceeds `max_bytes`, the oldest traces until
    /// the live data (keys + values) is at most 90 % of `max_bytes`. sled reclaims disk space
    /// lazily, so the size on disk follows later; measuring live data keeps this from deleting
    /// everything while it does. Returns how many traces were deleted (also added to
    /// [`Store::retention_deleted`]).
    pub fn enforce_retention(
        &self,
        older_than: Option<Timestamp>,
        max_bytes: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        if let Some(cutoff) = older_than {
            loop {
                let oldest = self.oldest_traces(RETENTION_CHUNK)?;
                let expired: Vec<_> = oldest
                    .into_iter()
                    .filter(|(start, _)| *start < cutoff.micros())
                    .collect();
                let mut progress = false;
                for (_, trace_id) in expired {
                    if self.delete_trace_measured(&trace_id)?.is_some() {
                        progress = true;
                        deleted += 1;
                        self.retention_deleted.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                }
                // Nothing expired, or only index entries without a trace (`check` reports those):
                // stop rather than spin on them.
                if !progress {
                    break;
                }
            }
        }
        if let Some(max) = max_bytes.filter(|&m| self.size_on_disk() > m) {
            let target = max / 10 * 9;
            // Over the target, the journal's postings go into blocks first (a fold changes the
            // live bytes), so each delete below counts what it frees. (sled's files shrink
            // lazily, so most ticks after a pass find the live data under the target already.)
            let mut live = self.live_bytes()?;
            if live > target && self.fold_journal()? {
                live = self.live_bytes()?;
            }
            'outer: while live > target {
                let oldest = self.oldest_traces(RETENTION_CHUNK)?;
                let mut progress = false;
                for (_, trace_id) in oldest {
                    if live <= target {
                        break 'outer;
                    }
                    if let Some(freed) = self.delete_trace_measured(&trace_id)? {
                        progress = true;
                        live = live.saturating_sub(freed);
                        deleted += 1;
                        self.retention_deleted.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                }
                if !progress {
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "retention: deleted the oldest traces");
        }
        Ok(deleted)
    }

    /// Traces deleted by retention since the store was opened.
    pub fn retention_deleted(&self) -> u64 {
        self.retention_deleted.load(AtomicOrdering::Relaxed)
    }

    /// Up to `n` of the oldest traces (start µs, trace id), oldest first, from the `t` index.
    pub(super) fn oldest_traces(&self, n: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([P_TIME]).rev().take(n) {
            let (key, _) = item?;
            let Some((start, trace_id)) = key.get(1..).and_then(parse_position) else {
                return Err(corrupt(&key, "time-index key has no start and trace id"));
            };
            out.push((start, trace_id.to_string()));
        }
        Ok(out)
    }

    /// Keys + values of everything stored: the live data, which `max_store_bytes` bounds (sled's
    /// files are larger). One scan of the whole store.
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for item in self.tree.iter() {
            let (key, value) = item?;
            total = total.saturating_add((key.len() + value.len()) as u64);
        }
        Ok(total)
    }
}

/// Traces read from the `t` index per retention step.
pub(super) const RETENTION_CHUNK: usize = 256;

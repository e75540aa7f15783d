//! Retention by age on ClickHouse: deletes whole traces that started before a cutoff (as the
//! sled store's `enforce_retention(older_than, _)` does), oldest first, in chunks. Retention by
//! size (`max_store_bytes`) is left to ClickHouse itself (TTL, dropping monthly partitions),
//! which knows its disk far better than a client can.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{sql, ClickHouseError, ClickHouseStore};
use crate::span::Timestamp;

/// Traces deleted per mutation.
const CHUNK: usize = 1000;
/// Upper bound on chunks per call (a later call continues).
const MAX_CHUNKS: usize = 1000;

impl ClickHouseStore {
    /// Deletes every trace that started before `older_than`; returns how many.
    pub async fn enforce_retention(&self, older_than: Timestamp) -> Result<u64, ClickHouseError> {
        let db = &self.db;
        let mut deleted = 0u64;
        let mut previous: BTreeSet<String> = BTreeSet::new();
        for _ in 0..MAX_CHUNKS {
            #[derive(Deserialize)]
            struct Id {
                trace_id: String,
            }
            let ids: Vec<Id> = self
                .select(&format!(
                    "SELECT trace_id FROM {db}.trace_times GROUP BY trace_id
                     HAVING min(start_us) < {cutoff}
                     ORDER BY min(start_us), trace_id LIMIT {CHUNK} FORMAT JSONEachRow",
                    cutoff = older_than.micros()
                ))
                .await?;
            let ids: BTreeSet<String> = ids.into_iter().map(|i| i.trace_id).collect();
            // Nothing left, or the last deletes did not take: stop rather than spin.
            if ids.is_empty() || ids == previous {
                break;
            }
            let list = ids
                .iter()
                .map(|id| sql::string(id))
                .collect::<Vec<_>>()
                .join(", ");
            for table in ["spans", "trace_times", "span_locations"] {
                self.client
                    .query(&format!(
                        "ALTER TABLE {db}.{table} DELETE WHERE trace_id IN ({list})"
                    ))
                    .await?;
            }
            self.wait_for_mutations().await?;
            deleted += ids.len() as u64;
            previous = ids;
        }
        if deleted > 0 {
            tracing::info!(deleted, "clickhouse retention: deleted the oldest traces");
        }
        Ok(deleted)
    }
}

//! Copying an existing sled store into ClickHouse (the library half of
//! `llm-tracer migrate --from sled --to clickhouse`; the command and its progress bar come with
//! the wiring). Reads only the sled store's public API: pages of traces, oldest pages last, each
//! trace's spans, inserted in batches. Safe to run again: re-inserted spans replace themselves.

use crate::store::{Cursor, Store, TraceQuery};

use super::{ClickHouseError, ClickHouseStore};

/// Traces read per sled page.
const PAGE: usize = 500;

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub traces: u64,
    pub spans: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the sled store: {0}")]
    Sled(#[from] crate::store::StoreError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("reading the sled store: {0}")]
    Task(String),
}

/// Copies every trace of `from` into `to`, `batch_spans` spans per insert; `progress` is called
/// after each insert with the running totals.
pub async fn copy_from_sled(
    from: &Store,
    to: &ClickHouseStore,
    batch_spans: usize,
    mut progress: impl FnMut(CopyReport),
) -> Result<CopyReport, CopyError> {
    let mut report = CopyReport::default();
    let mut cursor: Option<Cursor> = None;
    let mut pending = Vec::new();
    loop {
        let store = from.clone();
        let query = TraceQuery {
            limit: PAGE,
            cursor: cursor.clone(),
            ..TraceQuery::default()
        };
        // sled blocks: read one page and its spans off the runtime.
        let (page, traces) = tokio::task::spawn_blocking(move || {
            let page = store.list_traces(&query)?;
            let mut traces = Vec::with_capacity(page.traces.len());
            for t in &page.traces {
                if let Some((_, spans)) = store.get_trace(&t.trace_id)? {
                    traces.push(spans);
                }
            }
            Ok::<_, crate::store::StoreError>((page, traces))
        })
        .await
        .map_err(|e| CopyError::Task(e.to_string()))??;
        for spans in traces {
            report.traces += 1;
            report.spans += spans.len() as u64;
            pending.extend(spans);
            if pending.len() >= batch_spans.max(1) {
                to.put_spans(&pending).await?;
                pending.clear();
                progress(report);
            }
        }
        match page.next_cursor.as_deref().and_then(Cursor::decode) {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if !pending.is_empty() {
        to.put_spans(&pending).await?;
    }
    progress(report);
    Ok(report)
}

//! Store: everything sled. Spans keyed by trace, trace summaries kept up to date as spans arrive,
//! a newest-first time index, secondary indexes (status, model, session, user, tag), full-text
//! postings, span → trace
//! lookup, cursor pagination and stats. The only module that imports `sled`.
//!
//! All calls block: callers on the runtime use `spawn_blocking`.
//!
//! Layout: ONE sled tree (`v3`, schema 7; schemas 1 and 2 used `v1` and `v2` and are migrated at
//! open, schemas 3 to 6 are upgraded in place)
//! whose keys carry a one-byte prefix per logical key space, so every
//! write (`put_spans`, `delete_trace`) is a single atomic `apply_batch` and a crash never leaves an
//! index disagreeing with the spans. Keys are built by hand, never with serde, because their byte
//! order is the query plan (`inv(t)` is `u64::MAX - t`, big-endian, so a forward scan is newest-first):
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `m` | `m` `schema_version` | `"7"` |
//! | `s` | `s` trace_id 0x00 start_us(be) span_id | span JSON |
//! | `i` | `i` span_id | trace_id 0x00 start_us(be) (enough to rebuild the `s` key) |
//! | `u` | `u` trace_id | stored summary, binary (`codec::Enc`: public fields' inputs + merge bookkeeping + terms) |
//! | `t` | `t` inv(trace start) trace_id | the trace's list row, binary (its public summary: the list without filters reads no `u`; empty when written before schema 7) |
//! | `x` | `x` field escaped(value) 0x00 inv(trace start) trace_id | empty |
//! | `l` | `l` start_us(be) trace_id 0x00 span_id | call record (stats), binary, only for `Kind::is_call` spans |
//! | `w` | `w` term 0x00 last position | a block of up to 32 positions (inv(trace start) trace_id), ascending, compact (start gaps, hex ids packed): the term's full-text posting list (see `search`, `postings`) |
//! | `j` | `j` seq(be) | one write's posting edits, not yet folded into the `w` blocks (see `journal`) |
//!
//! `x` fields: `s` status, `m` model, `e` session, `u` user, `g` tag. Values come from users, so
//! they are escaped (0x00 → 01 01, 0x01 → 01 02): an escaped value never contains 0x00, which
//! therefore ends it unambiguously. Trace ids are `span::is_valid_id` (no 0x00), so 0x00 is a safe
//! separator after them too; `put_spans` skips spans whose ids are not valid.
//!
//! A span id is globally unique: it belongs to exactly one trace at a time, the one its `i` record
//! names. Every `s` and `l` key carries both the trace id and the span id, so each (trace, span)
//! pair has keys of its own and `delete_trace` only ever removes keys its trace owns. Re-sending a
//! span id under another trace moves the span: the same batch removes its old `s`/`l` keys and
//! rebuilds the old trace's summary and index keys (or deletes them if no span is left).
//!
//! Sessions ([`Store::list_sessions`], [`Store::get_session`]) are read from the `x` session
//! index and the `t` time index; stats time series ([`StatsQuery::series`]) come from the same
//! single `l` scan as the totals. Neither reads spans.
//!
//! A summary keeps at most [`MAX_SUMMARY_VALUES`] models and as many tags (the lexicographically
//! smallest, so the result still does not depend on arrival order); the others are not indexed.
//!
//! Files: `keys` (key layout), `codec` (value encoding), `summary` (the stored trace summary),
//! `postings` (full-text posting blocks), `journal` (posting edits waiting to be folded into them), `preview`, `write` (put / delete), `query` (list / get), `sessions`, `stats`, `retention`,
//! `check`, `compact` (a copy of the live records, for `llm-tracer compact`), `types` (the public
//! query and answer types).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::span::{is_valid_id, Kind, Span, Status, Timestamp};

mod check;
mod codec;
mod compact;
mod journal;
mod keys;
mod postings;
mod preview;
mod query;
mod retention;
mod search;
mod sessions;
mod stats;
mod summary;
#[cfg(test)]
mod tests;
mod types;
mod write;

pub use check::{CheckReport, MAX_CHECK_PROBLEMS};
pub use compact::{compact_paths, CompactPaths, CompactReport, COMPACT_MARKER};
pub use types::*;

use codec::*;
use journal::*;
use keys::*;
use postings::*;
#[cfg(test)]
use preview::*;
use search::*;
pub use search::{query_terms, MAX_QUERY_TERMS, MAX_TERM_CHARS};
// The summary rules, shared with the ClickHouse backend so both give the same answers.
pub use preview::{input_preview, output_preview};
pub use sessions::session_summary;
use summary::*;
pub use summary::{error_message, from_pico, insert_capped, to_pico};
#[allow(unused_imports)] // names the sibling modules share through `use super::*`
use {query::*, retention::*, sessions::*, stats::*, write::*};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data_dir: cannot open the store at {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record under key {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("store: schema version {found} is newer than this binary understands ({supported})")]
    Schema { found: String, supported: u32 },
    #[error(
        "store: tree {tree} was written by a newer llm-tracer (this binary reads tree v3, \
         schema {supported})"
    )]
    NewerTree { tree: String, supported: u32 },
    #[error(
        "data_dir: {dir}: an interrupted `llm-tracer compact` left {left}; run `llm-tracer \
         compact` again to finish it before starting the server"
    )]
    CompactInterrupted { dir: PathBuf, left: PathBuf },
    #[error("compact: the copy of tree {tree} has {written} records, the store {read}")]
    CopyMismatch {
        tree: String,
        read: u64,
        written: u64,
    },
    #[error("compact: {0} exists already")]
    CopyExists(PathBuf),
}

impl StoreError {
    /// An I/O error from sled (a full disk, a failing device). sled keeps failing after one
    /// until the store is reopened.
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Sled(sled::Error::Io(_)))
    }

    /// `err` as sled reports an I/O error (for fault injection).
    pub fn io(err: std::io::Error) -> StoreError {
        StoreError::Sled(sled::Error::Io(err))
    }
}

/// Default sled page cache (`cache_capacity_bytes`): 8 MiB. Bigger only speeds up writes while
/// the store is small enough for the cache to hold the leaves they touch (50k one-span traces in
/// batches of 16: 3,043–3,357 spans/s at 8 MiB against 3,913–4,250 at 64 MiB; 200k: 2,729 against
/// 2,745); list and trace queries on a 1M-span store stay within their targets, and memory after
/// repeated bursts of large calls levels off (`bench/mem_runs.py`; bench/RESULTS.md, session 14).
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache, bytes.
    pub cache_capacity: u64,
    /// sled's background fsync interval; `None` = only on explicit flush.
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity: DEFAULT_CACHE_CAPACITY_BYTES,
            flush_every_ms: Some(500),
        }
    }
}

/// The schema this binary writes and understands. 7: each `t` value holds its trace's list row
/// (see `summary::encode_row`), written with the summary; a schema-6 store is upgraded in place
/// at open (its empty `t` values are read from the summaries until a write rewrites them; the
/// version key keeps an older binary, which would leave rows stale, from opening it).
/// 6: the same records as 5, but sled's log may
/// hold `Link::Batch` fragments (vendor/sled/PATCHED.md), which an older binary's sled cannot read;
/// a schema-5 store is upgraded in place at open, before anything is written. 5: postings are journalled (`j` records, see
/// `journal`) and folded into the blocks many writes at a time; a store of schema 4 or 3 (tree
/// `v3` too) is upgraded in place at open (it simply has no journal yet; the version key keeps
/// an older binary, which would not see the journal's postings, from opening it). 4: posting
/// blocks in the compact format 2 (see `postings`; format-1 blocks are still read, and rewritten
/// in format 2 as they change). 3: full-text postings in blocks (`w`); 2 (tree `v2`): one key
/// per posting; 1 (tree `v1`): JSON summaries and call records, no postings. Schemas 1 and 2
/// are migrated at open.
const SCHEMA_VERSION: u32 = 7;
/// The schemas of tree `v3` before this one: upgraded by rewriting the version key.
const SCHEMAS_IN_PLACE: [u32; 4] = [3, 4, 5, 6];
const SCHEMA_KEY: &[u8] = b"mschema_version";
const TREE: &str = "v3";
/// The layout number of [`TREE`]: a tree `v<N>` with a higher N was written by a newer binary.
const TREE_LAYOUT: u32 = 3;
/// Older layouts' trees and the schema each one holds, newest first.
const OLD_TREES: [(&str, u32); 2] = [("v2", 2), ("v1", 1)];
/// Spans per `put_spans` while migrating.
const MIGRATE_BATCH: usize = 512;

/// Upper bound on the summaries one `list_traces` call examines (filters and `q` are checked on
/// summaries, so a rare match could otherwise walk the whole store). When reached, the page is
/// returned as it is, with a `next_cursor` at the last examined position so the client can go on.
const MAX_EXAMINED: usize = 100_000;

/// Length of `input_preview` / `output_preview`, in chars.
const PREVIEW_CHARS: usize = 200;

/// At most this many models and as many tags per trace summary (each one is an index key that
/// every write to the trace may rewrite). The lexicographically smallest are kept; the others are
/// neither shown in the summary nor indexed, so filtering by them does not find the trace.
pub const MAX_SUMMARY_VALUES: usize = 64;

/// `stats` keeps at most this many latencies (and as many TTFTs) for the overall quantiles …
const STATS_SAMPLE: usize = 1_000_000;
/// … and at most this many per `group_by=model` row.
const GROUP_STATS_SAMPLE: usize = 100_000;

/// Most buckets in one stats series.
pub const MAX_BUCKETS: usize = 1000;
/// Quantile sample per series bucket (so a full series holds at most 2 × 2 M values).
const BUCKET_STATS_SAMPLE: usize = 2_000;
/// A series names at most this many models per bucket; calls of later-seen models are counted
/// under [`OTHER_MODELS`].
pub const MAX_SERIES_MODELS: usize = 20;
pub const OTHER_MODELS: &str = "(other)";
/// A session's totals cover at most this many of its newest traces.
pub const MAX_SESSION_TRACES: usize = 1000;

/// How long [`Store::open`] waits for a directory lock still held by a just-dropped handle.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(20);

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writers (the queue's writer task and `POST /api/spans`): each write reads the
    /// summaries it merges into, so two writers must not interleave. Readers never take it.
    writer: Arc<Mutex<()>>,
    /// The posting journal as its records say (see `journal`); changed only under `writer`.
    journal: Arc<RwLock<Journal>>,
    /// Traces deleted by retention since open (reported by `/healthz`).
    retention_deleted: Arc<AtomicU64>,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// sled releases its directory lock asynchronously: dropping a `Db` signals its background
    /// threads, and the lock file is unlocked only when the last of them lets go of it (sled
    /// issue #1289). Reopening right after a drop (a restart in the same process, a test) can
    /// therefore see "could not acquire lock" for a few milliseconds, so `open` retries on that
    /// error only, every 20 ms for up to 2 s, before reporting it. Other errors fail at once.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        Self::open_waiting(dir, opts, LOCK_WAIT)
    }

    /// Waits (up to [`Store::open`]'s 2 s) until no other handle holds the directory lock that
    /// sled takes on `<dir>/db`, without opening the store; fails as `open` would if it is
    /// still held. Lets start-up report a store in use by another process at once, before a
    /// long recovery starts in the background (`app`).
    pub fn wait_unlocked(dir: &Path) -> Result<(), StoreError> {
        compact::refuse_interrupted_swap(dir)?;
        // Released with the file at the end of this call, before sled takes it.
        Self::hold_lock(dir).map(drop)
    }

    /// Takes the directory lock sled uses (`flock` on `<dir>/db`) as soon as no other handle
    /// holds it (waiting as [`Store::wait_unlocked`] does) and keeps it until the returned file
    /// drops, so no `Store::open` succeeds meanwhile (`llm-tracer compact` holds it while it
    /// moves the store). `None` when there is no store file to lock (a new store, or one sled
    /// will report on itself).
    pub fn hold_lock(dir: &Path) -> Result<Option<std::fs::File>, StoreError> {
        use rustix::fs::{flock, FlockOperation};
        let db = dir.join("db");
        let Ok(file) = std::fs::File::open(&db) else {
            return Ok(None);
        };
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(file)),
                Err(e) if Instant::now() >= deadline => {
                    return Err(StoreError::Open {
                        dir: dir.to_owned(),
                        source: sled::Error::Io(std::io::Error::other(format!(
                            "could not acquire lock on {db:?}: {e} (is another llm-tracer using this data_dir?)"
                        ))),
                    })
                }
                Err(_) => std::thread::sleep(LOCK_RETRY_EVERY),
            }
        }
    }

    /// Closes a store whose writes failed (a full or failing disk), for a reopen: returns
    /// whether it closed within `wait`. sled flushes when its last handle drops, and after
    /// failed log writes that flush can wait for good (sled 0.34 leaves a log buffer that is
    /// never written: seen on a full tmpfs, issue #7), which hung the capture writer. So the
    /// handle drops on its own thread; past `wait` the caller goes on, and a reopen finds the
    /// directory still locked, fails, and is tried again later (the store stays closed, traffic
    /// is unaffected). `store_min_free_bytes` keeps sled from reaching a full disk at all.
    pub fn close_after_failure(self, wait: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("llm-tracer-close".into())
            .spawn(move || {
                drop(self);
                drop(done_tx);
            });
        if let Err(e) = spawned {
            // The closure, and the store in it, was dropped by the failed spawn, on this
            // thread (where the drop could hang: no thread left to run it elsewhere).
            tracing::warn!(error = %e, "store: no thread to close the store on");
            return true;
        }
        !matches!(
            done_rx.recv_timeout(wait),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        )
    }

    /// [`Store::open`] with the lock wait as a parameter.
    fn open_waiting(dir: &Path, opts: &StoreOptions, wait: Duration) -> Result<Store, StoreError> {
        compact::refuse_interrupted_swap(dir)?;
        let open_err = |source| StoreError::Open {
            dir: dir.to_owned(),
            source,
        };
        // A lowered writer yields between the leaf runs of a large batch too (`priority`).
        sled::set_yield_point(crate::priority::yield_point);
        // sled's I/O threads write the log a slice at a time and yield between slices.
        sled::set_io_yield_point(crate::priority::io_yield_point);
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(opts.flush_every_ms);
        let deadline = Instant::now() + wait;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY_EVERY);
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let tree = db.open_tree(TREE).map_err(open_err)?;
        let store = Store {
            db,
            tree,
            writer: Arc::new(Mutex::new(())),
            journal: Arc::new(RwLock::new(Journal::default())),
            retention_deleted: Arc::new(AtomicU64::new(0)),
        };
        match store.tree.get(SCHEMA_KEY)? {
            None => {
                // A new store, an old layout to migrate, or a migration a crash interrupted
                // (the version key is written last, so it is simply done again). A tree of a
                // newer layout (`v4`, …) means a newer binary wrote this store: refused.
                if let Some(newer) = store.newer_tree() {
                    return Err(StoreError::NewerTree {
                        tree: format!("v{newer}"),
                        supported: SCHEMA_VERSION,
                    });
                }
                store.tree.clear()?;
                if let Some((old, version)) = store.migration_source()? {
                    store.migrate_from(old, version)?;
                }
                store
                    .tree
                    .insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
                store.db.flush()?;
            }
            Some(raw)
                if SCHEMAS_IN_PLACE
                    .iter()
                    .any(|&v| expect_version(&raw, v).is_ok()) =>
            {
                tracing::info!(
                    from = %String::from_utf8_lossy(&raw),
                    to = SCHEMA_VERSION,
                    "store: schema upgraded in place (older binaries refuse it from now on)"
                );
                store
                    .tree
                    .insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
                store.db.flush()?;
            }
            Some(raw) => expect_version(&raw, SCHEMA_VERSION)?,
        }
        // A migration that ended after its version key but before dropping the old trees.
        for (old, _) in OLD_TREES {
            if store.has_tree(old) {
                store.db.drop_tree(old)?;
            }
        }
        store.load_journal()?;
        Ok(store)
    }

    /// The highest layout above this binary's tree ([`TREE_LAYOUT`]) that has a tree (`v<N>`)
    /// here.
    fn newer_tree(&self) -> Option<u32> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n.as_ref())
                    .ok()?
                    .strip_prefix('v')?
                    .parse()
                    .ok()
            })
            .filter(|&v: &u32| v > TREE_LAYOUT)
            .max()
    }

    fn has_tree(&self, name: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes())
    }

    /// The old tree to migrate from: the newest one whose layout was complete (it carries its
    /// version key; a tree without one is a migration to it that a crash interrupted, and the
    /// older tree it came from is still there). A version other than the tree's own is refused.
    fn migration_source(&self) -> Result<Option<(&'static str, u32)>, StoreError> {
        for (old, version) in OLD_TREES {
            if !self.has_tree(old) {
                continue;
            }
            match self.db.open_tree(old)?.get(SCHEMA_KEY)? {
                Some(raw) => {
                    expect_version(&raw, version)?;
                    return Ok(Some((old, version)));
                }
                // Schema 1 stores may predate the version key: the oldest tree is taken as is.
                None if version == 1 => return Ok(Some((old, version))),
                None => continue,
            }
        }
        Ok(None)
    }

    /// Rebuilds this layout from an older one (every older layout stores each span as JSON
    /// under the same `s` key): every span is read back and written again through
    /// [`Store::put_spans`], in batches, so summaries and every index (postings included) are
    /// rebuilt by the same code that writes them. Memory is bounded by one batch. The old tree
    /// is dropped once the new one carries its version key.
    fn migrate_from(&self, old_tree: &str, from: u32) -> Result<(), StoreError> {
        let old = self.db.open_tree(old_tree)?;
        let t = Instant::now();
        tracing::info!(
            from,
            to = SCHEMA_VERSION,
            "store: migrating the store to the new layout (rebuilding summaries and indexes from the spans)"
        );
        let mut batch = Vec::with_capacity(MIGRATE_BATCH);
        let mut spans = 0u64;
        let mut skipped = 0u64;
        for item in old.scan_prefix([P_SPAN]) {
            let (key, value) = item?;
            match decode_json::<Span>(&key, &value) {
                Ok(span) => batch.push(span),
                Err(e) => {
                    // One unreadable record must not keep the whole store from opening.
                    skipped += 1;
                    tracing::warn!(error = %e, "store: migration skips a span that does not decode");
                    continue;
                }
            }
            if batch.len() == MIGRATE_BATCH {
                self.put_spans(&batch)?;
                spans += batch.len() as u64;
                batch.clear();
            }
        }
        self.put_spans(&batch)?;
        spans += batch.len() as u64;
        tracing::info!(
            spans,
            skipped,
            took_ms = t.elapsed().as_millis() as u64,
            "store: migration done"
        );
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// A tree's version key `raw` must say `expected`; anything else is refused, naming what it says.
fn expect_version(raw: &[u8], expected: u32) -> Result<(), StoreError> {
    let found = String::from_utf8_lossy(raw).into_owned();
    if found.trim().parse::<u32>().ok() == Some(expected) {
        return Ok(());
    }
    Err(StoreError::Schema {
        found,
        supported: SCHEMA_VERSION,
    })
}

/// sled's "could not acquire lock on …" (an `Io` error wrapping `WouldBlock`): another handle,
/// possibly one just dropped whose threads have not exited yet, still holds the directory lock.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

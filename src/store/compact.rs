//! `llm-tracer compact`: copies the live records into a fresh sled database. sled 0.34 reuses a
//! log segment only once at most half of it is live and truncates its files only at the end, so
//! after retention has turned the store over its files hold 10–15× the live data (bench/RESULTS.md,
//! "Memory and disk under retention"); a copy holds only what is live. The caller swaps the
//! directories (`cli::compact`); this module only copies and verifies.

use super::*;

/// Records per sled batch while copying (bounded memory: one batch of records).
const COPY_BATCH: usize = 2048;

/// What a copy wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Records (keys) copied, every tree included.
    pub records: u64,
    /// Their bytes (keys + values).
    pub bytes: u64,
}

impl Store {
    /// Copies every tree of this store, record by record in key order (sled's cheapest insert:
    /// each batch lands on the right edge of the tree), into a new store at `dest`, which must
    /// not exist yet. Flushes it and checks that each tree has as many records as the source.
    /// `progress` is called with the records copied so far, after each batch. The source is only
    /// read; on an error `dest` is left for the caller to remove.
    pub fn copy_into(
        &self,
        dest: &Path,
        opts: &StoreOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<CompactReport, StoreError> {
        let open_err = |source| StoreError::Open {
            dir: dest.to_owned(),
            source,
        };
        if dest.exists() {
            return Err(open_err(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the compaction target exists already",
            ))));
        }
        let target = sled::Config::new()
            .path(dest)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let mut report = CompactReport::default();
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name)?;
            let to = target.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let (mut in_batch, mut copied) = (0usize, 0u64);
            for item in from.iter() {
                let (key, value) = item?;
                report.bytes = report
                    .bytes
                    .saturating_add((key.len() + value.len()) as u64);
                batch.insert(key, value);
                in_batch += 1;
                if in_batch == COPY_BATCH {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    copied += in_batch as u64;
                    in_batch = 0;
                    progress(report.records + copied);
                }
            }
            to.apply_batch(batch)?;
            copied += in_batch as u64;
            let written = to.len() as u64;
            if written != copied {
                return Err(corrupt(
                    &name,
                    &format!("the copy of this tree has {written} records, not {copied}"),
                ));
            }
            report.records += copied;
            progress(report.records);
        }
        target.flush()?;
        Ok(report)
    }
}

/// Where `llm-tracer compact` puts the copy of the store in `dir` while it is written, and the
/// old store while the copy takes its place: `<dir>.compacting` and `<dir>.pre-compact`, beside
/// `dir` (so the swap is two renames on one file system).
pub fn compact_paths(dir: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut name = dir.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with(".compacting"), with(".pre-compact"))
}

/// `Err` when a compaction stopped between its two renames: the data dir is gone and the old
/// store waits beside it. A server that started now would create an empty store.
pub(super) fn refuse_interrupted_swap(dir: &Path) -> Result<(), StoreError> {
    let (_, previous) = compact_paths(dir);
    if dir.exists() || !previous.exists() {
        return Ok(());
    }
    Err(StoreError::Open {
        dir: dir.to_owned(),
        source: sled::Error::Io(std::io::Error::other(format!(
            "it is missing and {} is there: an `llm-tracer compact` was interrupted; run it again \
             to finish",
            previous.display()
        ))),
    })
}

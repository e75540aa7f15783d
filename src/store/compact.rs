//! `llm-tracer compact`: copies the live records into a fresh sled database. sled 0.34 reuses a
//! log segment only once at most half of it is live and truncates its files only at the end, so
//! after retention has turned the store over its files hold 10–15× the live data (bench/RESULTS.md,
//! "Memory and disk under retention"); a copy holds only what is live. The caller moves the
//! directories (`cli::compact`); this module copies, verifies, and names the paths involved.

use super::*;

/// Records per sled batch while copying, at most …
const COPY_BATCH: usize = 2048;
/// … and at most this many bytes of keys and values (span bodies can be large), so memory stays
/// bounded and the free-space look between batches stays close to the truth.
const COPY_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// The file that marks a copy complete: written into `<dir>.compacting` once the copy is flushed,
/// it travels with it into `<dir>` and is removed last, once the old store is gone.
pub const COMPACT_MARKER: &str = "llm-tracer-compact-complete";

/// What a copy wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Records (keys) copied, every tree included.
    pub records: u64,
    /// Their bytes (keys + values).
    pub bytes: u64,
}

/// The paths of one compaction of `dir`: the copy while it is written (`<dir>.compacting`), the
/// old store while the copy takes its place (`<dir>.pre-compact`), and the lock that keeps two
/// runs apart (`<dir>.compact-lock`), all beside `dir` so each move is a rename on one file
/// system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactPaths {
    /// `dir` made absolute, symlinks resolved (so a symlinked data dir is compacted where it
    /// really is, and "data/" and "./data" name the same siblings).
    pub dir: PathBuf,
    pub copy: PathBuf,
    pub previous: PathBuf,
    pub lock: PathBuf,
}

/// The [`CompactPaths`] of `dir` (which need not exist).
pub fn compact_paths(dir: &Path) -> CompactPaths {
    let dir = real_path(dir);
    let with = |suffix: &str| {
        let mut name = dir.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    CompactPaths {
        copy: with(".compacting"),
        previous: with(".pre-compact"),
        lock: with(".compact-lock"),
        dir,
    }
}

/// `dir` absolute with symlinks resolved; when it does not exist, its parent's real path joined
/// with its name; failing both, `dir` without trailing separators.
fn real_path(dir: &Path) -> PathBuf {
    if let Ok(real) = dir.canonicalize() {
        return real;
    }
    let plain: PathBuf = dir.components().collect();
    let (Some(parent), Some(name)) = (plain.parent(), plain.file_name()) else {
        return plain;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    parent.canonicalize().map(|p| p.join(name)).unwrap_or(plain)
}

/// `Err` while a compaction of `dir` is unfinished past its copy: a copy marked complete waits
/// beside `dir` (the next `compact` puts it in place, so writes made to `dir` now would be lost),
/// or the old store waits beside a `dir` that is missing or not the marked copy. Opening then
/// would write to a store about to be replaced, or create an empty one.
pub(super) fn refuse_interrupted_swap(dir: &Path) -> Result<(), StoreError> {
    let paths = compact_paths(dir);
    let left = if paths.copy.join(COMPACT_MARKER).exists() {
        paths.copy
    } else if paths.previous.exists() && !dir.join(COMPACT_MARKER).exists() {
        paths.previous
    } else {
        return Ok(());
    };
    Err(StoreError::CompactInterrupted {
        dir: dir.to_owned(),
        left,
    })
}

impl Store {
    /// Copies every tree of this store, record by record in key order (sled's cheapest insert:
    /// each batch lands on the right edge of the tree), into a new store at `dest`, which must
    /// not exist yet. Flushes it and checks that each tree of the copy has as many records as
    /// were read. `progress` is called with the records copied so far before each batch is
    /// written; an error from it stops the copy (the caller's way to stop before the disk fills:
    /// sled can hang on a full disk). The source is only read; on an error `dest` is left for
    /// the caller to remove.
    pub fn copy_into(
        &self,
        dest: &Path,
        opts: &StoreOptions,
        mut progress: impl FnMut(u64) -> std::io::Result<()>,
    ) -> Result<CompactReport, StoreError> {
        if dest.exists() {
            return Err(StoreError::CopyExists(dest.to_owned()));
        }
        let target = sled::Config::new()
            .path(dest)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dest.to_owned(),
                source,
            })?;
        let mut report = CompactReport::default();
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name)?;
            let to = target.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let (mut in_batch, mut batch_bytes, mut read) = (0usize, 0usize, 0u64);
            for item in from.iter() {
                let (key, value) = item?;
                let size = key.len() + value.len();
                report.bytes = report.bytes.saturating_add(size as u64);
                batch.insert(key, value);
                in_batch += 1;
                batch_bytes += size;
                if in_batch == COPY_BATCH || batch_bytes >= COPY_BATCH_BYTES {
                    progress(report.records + read).map_err(sled::Error::Io)?;
                    to.apply_batch(std::mem::take(&mut batch))?;
                    read += in_batch as u64;
                    (in_batch, batch_bytes) = (0, 0);
                }
            }
            progress(report.records + read).map_err(sled::Error::Io)?;
            to.apply_batch(batch)?;
            read += in_batch as u64;
            let written = to.len() as u64;
            if written != read {
                return Err(StoreError::CopyMismatch {
                    tree: String::from_utf8_lossy(&name).into_owned(),
                    read,
                    written,
                });
            }
            report.records += read;
        }
        target.flush()?;
        Ok(report)
    }
}

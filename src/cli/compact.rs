//! `llm-tracer compact`: rewrites a sled store with only its live records, so its files come
//! back down to about the size of a fresh store holding that data (after retention has turned a
//! store over, sled's files hold 10–15× the live data; see `store::compact`). Offline: the
//! server must be stopped (sled's lock makes a running one an error).
//!
//! The steps (paths from `store::compact_paths`; each rename followed by an fsync of the parent):
//! 1. copy the records into `<dir>.compacting`, flush it, write the marker file into it;
//! 2. move everything in `<dir>` that is not sled's own (the capture spool) into the copy;
//! 3. rename `<dir>` to `<dir>.pre-compact`;
//! 4. rename the copy to `<dir>` (the marker comes along);
//! 5. remove `<dir>.pre-compact`;
//! 6. remove the marker.
//!
//! A run first finishes what an interrupted one left: an unmarked copy is removed (nothing had
//! moved yet); from a marked copy on, it goes forward (steps 2–6); `<dir>` with the marker means
//! steps 5–6 remain. Whatever does not fit these states (`<dir>` and `<dir>.pre-compact` both
//! there without a marker) is refused, naming both. A server started while `<dir>` is missing
//! refuses to open (`StoreError::CompactInterrupted`) instead of creating an empty store.

use std::{
    fs,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;

use super::{sled_dir, Fatal, SledDir};
use crate::store::{compact_paths, CompactPaths, Store, COMPACT_MARKER};

/// A progress line at most this often while copying.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Args, Clone, Debug)]
pub struct CompactArgs {
    /// TOML config file (its data_dir is compacted). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Store directory (default ./llm-tracer-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
}

pub fn compact(args: &CompactArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Fatal {
    let message = format!("data_dir: cannot {what} {}", path.display());
    move |e| Fatal(format!("{message}: {e}"))
}

fn run(args: &CompactArgs) -> Result<(), Fatal> {
    let SledDir {
        dir,
        opts,
        min_free_bytes,
    } = sled_dir(
        args.config.as_ref(),
        args.data_dir.as_ref(),
        "`compact` rewrites a sled data dir; ClickHouse manages its own storage (OPTIMIZE TABLE). \
         Pass --data-dir to compact a sled store",
    )?;
    let paths = compact_paths(&dir);
    if paths.dir.file_name().is_none() || paths.dir.parent().is_none() {
        return Err(Fatal(format!(
            "data_dir: {} names no directory that can be compacted (it is swapped with a copy \
             beside it)",
            dir.display()
        )));
    }
    if is_mount_point(&paths.dir) {
        // An older binary went ahead and left its copy beside: nothing can have moved into it
        // (renames out of a mount point fail), but a server refuses to start while it is there.
        let left = if paths.copy.exists() {
            format!(
                ". An earlier run's copy waits at {}: nothing can have moved into it from the \
                 mount point, and a server will not start while it is there; remove it",
                paths.copy.display()
            )
        } else {
            String::new()
        };
        return Err(Fatal(format!(
            "data_dir: {} is a mount point (a volume or a bind mount): `compact` writes its copy \
             beside the data dir and swaps the two by renaming, which cannot move a mount point \
             or cross filesystems. Nothing was changed. To compact it, keep the store in a \
             directory inside the volume (e.g. {}) and point data_dir there{left}",
            paths.dir.display(),
            paths.dir.join("store").display()
        )));
    }
    let _lock = lock(&paths)?;
    if resume(&paths)? {
        eprintln!(
            "finished an interrupted compaction: {} is the compacted store",
            paths.dir.display()
        );
        return Ok(());
    }
    if !paths.dir.is_dir() {
        return Err(Fatal(format!(
            "data_dir: {} is not a directory (nothing to compact)",
            dir.display()
        )));
    }

    let started = Instant::now();
    let before = dir_bytes(&paths.dir);
    let store = Store::open(&paths.dir, &opts)
        .map_err(|e| super::locked_or(e, &dir, "Stop the server first: `compact` works offline"))?;
    let mut said = Instant::now();
    let copied = store.copy_into(&paths.copy, &opts, |records| {
        if said.elapsed() >= PROGRESS_EVERY {
            said = Instant::now();
            eprintln!("compacting: {records} records copied");
        }
        match crate::backend::free_bytes(&paths.copy) {
            Some(free) if free < min_free_bytes => Err(std::io::Error::other(format!(
                "stopped: {} MiB free on the filesystem of {}, under store_min_free_bytes; \
                 compact needs about twice the live data free",
                free / (1024 * 1024),
                paths.copy.display()
            ))),
            _ => Ok(()),
        }
    });
    drop(store);
    let report = match copied {
        Ok(report) => report,
        Err(e) => {
            let _ = Store::wait_unlocked(&paths.copy);
            let _ = fs::remove_dir_all(&paths.copy);
            return Err(Fatal(format!(
                "{e} (the copy was removed; the store is as it was)"
            )));
        }
    };
    // The store's lock (sled's own `flock` on `<dir>/db`) is taken over as soon as sled lets go
    // of it and held until the store has moved aside, so no server opens it in between.
    let _held = hold_store_lock(&paths.dir)?;
    Store::wait_unlocked(&paths.copy)?;
    // sled's flush syncs its log only; its blobs and `conf` are synced here, before the mark.
    sync_tree(&paths.copy).map_err(io_err("sync the copy", &paths.copy))?;
    fs::File::create(paths.copy.join(COMPACT_MARKER))
        .and_then(|f| f.sync_all())
        .and_then(|()| sync_dir(&paths.copy))
        .map_err(io_err("mark the copy complete in", &paths.copy))?;
    finish(&paths)?;
    let after = dir_bytes(&paths.dir);
    eprintln!(
        "compacted {}: {} records, {:.1} MiB of keys and values; {:.1} MiB on disk before, {:.1} MiB after ({:.1} s)",
        dir.display(),
        report.records,
        mib(report.bytes),
        mib(before),
        mib(after),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Finishes what an interrupted run left (see the module docs); `true` when that completed a
/// compaction, `false` when there was none to finish (an unfinished copy is removed).
fn resume(p: &CompactPaths) -> Result<bool, Fatal> {
    let marked_copy = p.copy.join(COMPACT_MARKER).is_file();
    if p.copy.exists() && !marked_copy {
        // Step 1 did not end: nothing has moved, the store is whole.
        fs::remove_dir_all(&p.copy).map_err(io_err("remove the unfinished copy", &p.copy))?;
    }
    let (dir, previous) = (p.dir.exists(), p.previous.exists());
    if marked_copy {
        if dir && previous {
            return Err(Fatal(format!(
                "data_dir: {}, {} and the complete copy {} all exist: keep the one holding your \
                 data (`llm-tracer check --data-dir …`), remove or rename the others, and run \
                 compact again",
                p.dir.display(),
                p.previous.display(),
                p.copy.display()
            )));
        }
        let _held = hold_store_lock(&p.dir)?;
        finish(p)?;
        return Ok(true);
    }
    if p.dir.join(COMPACT_MARKER).is_file() {
        // Steps 5–6 remain.
        finish(p)?;
        return Ok(true);
    }
    if previous {
        return Err(if dir {
            both_there(p)
        } else {
            // Never left by this procedure (the old store moves aside only once a copy is
            // complete): the copy is gone, so the old store is the store.
            Fatal(format!(
                "data_dir: {} is missing and {} holds the store from before an interrupted \
                 compaction, without a complete copy: rename it back to {} and run compact again",
                p.dir.display(),
                p.previous.display(),
                p.dir.display()
            ))
        });
    }
    Ok(false)
}

fn both_there(p: &CompactPaths) -> Fatal {
    Fatal(format!(
        "data_dir: both {} and {} exist and neither is marked as a complete copy: an interrupted \
         compaction left the old store beside a directory this command did not make. Keep the one \
         holding your data (`llm-tracer check --data-dir …`), remove or rename the other, and run \
         compact again",
        p.dir.display(),
        p.previous.display()
    ))
}

/// Steps 2–6, from wherever they stopped: each one is done only if it is still to do.
fn finish(p: &CompactPaths) -> Result<(), Fatal> {
    let parent = p.dir.parent().unwrap_or(Path::new("/"));
    if p.copy.exists() {
        if p.dir.exists() {
            // 2: what is not sled's (the capture spool, anything else kept there) comes along.
            for entry in fs::read_dir(&p.dir).map_err(io_err("read", &p.dir))? {
                let entry = entry.map_err(io_err("read", &p.dir))?;
                let name = entry.file_name();
                if !is_sleds(&name.to_string_lossy()) {
                    fs::rename(entry.path(), p.copy.join(&name))
                        .map_err(io_err("move into the copy", &entry.path()))?;
                }
            }
            sync_dir(&p.copy).map_err(io_err("sync", &p.copy))?;
            // 3.
            fs::rename(&p.dir, &p.previous).map_err(io_err("move aside", &p.dir))?;
            sync_dir(parent).map_err(io_err("sync", parent))?;
        }
        // 4.
        fs::rename(&p.copy, &p.dir).map_err(|e| {
            Fatal(format!(
                "data_dir: cannot put the copy {} in place at {}: {e}. The store is complete in \
                 {}; run compact again to finish",
                p.copy.display(),
                p.dir.display(),
                p.copy.display()
            ))
        })?;
        sync_dir(parent).map_err(io_err("sync", parent))?;
    }
    // 5.
    if p.previous.exists() {
        fs::remove_dir_all(&p.previous).map_err(io_err("remove the old store", &p.previous))?;
    }
    // 6.
    fs::remove_file(p.dir.join(COMPACT_MARKER)).map_err(io_err("unmark", &p.dir))?;
    sync_dir(&p.dir).map_err(io_err("sync", &p.dir))
}

/// Whether `dir` is the root of a mount: statx's `MOUNT_ROOT` attribute where the kernel reports
/// it (Linux 5.8+, bind mounts included), else a different device than its parent's.
fn is_mount_point(dir: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    use std::os::unix::fs::MetadataExt;
    if let Ok(st) = statx(CWD, dir, AtFlags::empty(), StatxFlags::BASIC_STATS) {
        if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
            return st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
        }
    }
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(parent))) => d.dev() != parent.dev(),
        _ => false,
    }
}

/// The entries sled 0.34 keeps in its directory.
fn is_sleds(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs" | COMPACT_MARKER) || name.starts_with("snap.")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Every file and directory under `dir`, and `dir`, synced to disk.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// sled's lock on the store in `dir` (`Store::hold_lock`), held until the returned file drops;
/// a running server holds it, which is then the error.
fn hold_store_lock(dir: &Path) -> Result<Option<fs::File>, Fatal> {
    Store::hold_lock(dir)
        .map_err(|e| super::locked_or(e, dir, "Stop the server first: `compact` works offline"))
}

/// An exclusive lock on `<dir>.compact-lock`, held until the returned file drops: a second run
/// waits for nothing, it stops.
fn lock(p: &CompactPaths) -> Result<fs::File, Fatal> {
    use rustix::fs::{flock, FlockOperation};
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p.lock)
        .map_err(io_err("create the lock file", &p.lock))?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        Fatal(format!(
            "data_dir: another `llm-tracer compact` of {} is running (it holds {})",
            p.dir.display(),
            p.lock.display()
        ))
    })?;
    Ok(file)
}

/// Bytes of the files under `dir` (sled's `db`, `conf`, snapshots and blobs, the spool).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

//! `llm-tracer compact`: rewrites a sled store with only its live records, so its files come
//! back down to about the size of a fresh store holding that data (after retention has turned a
//! store over, sled's files hold 10–15× the live data; see `store::compact`). Offline: the
//! server must be stopped (sled's lock makes a running one an error).
//!
//! Steps, each one safe to interrupt: (1) copy into `<dir>.compacting` and mark it complete;
//! (2) rename `<dir>` to `<dir>.pre-compact`; (3) rename the copy to `<dir>`; (4) remove
//! `<dir>.pre-compact`. A run finds what an interrupted one left and goes on from there: an
//! unmarked copy is removed (the store was not touched yet); a marked copy with `<dir>` missing
//! is put in place; a `<dir>.pre-compact` beside a complete `<dir>` is removed. A server started
//! between (2) and (3) refuses to open, naming the interrupted compaction.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;

use super::{sled_dir, Fatal};
use crate::store::{compact_paths, Store};

/// Written into the copy once it is complete and flushed; removed once it is in place.
const COMPLETE: &str = "llm-tracer-compact-complete";
/// A progress line at most this often while copying.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Args, Clone, Debug)]
pub struct CompactArgs {
    /// TOML config file (its data_dir is compacted). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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

fn run(args: &CompactArgs) -> Result<(), Fatal> {
    let (dir, opts) = sled_dir(
        args.config.as_ref(),
        args.data_dir.as_ref(),
        "`compact` rewrites a sled data dir; ClickHouse manages its own storage (OPTIMIZE TABLE). \
         Pass --data-dir to compact a sled store",
    )?;
    let (copy, previous) = compact_paths(&dir);
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Fatal(format!("data_dir: cannot {what} {}: {e}", path.display()))
    };

    // What an interrupted run left.
    if !dir.exists() && previous.is_dir() {
        if copy.join(COMPLETE).is_file() {
            swap_in(&copy, &dir, &previous)?;
            eprintln!(
                "finished an interrupted compaction: {} is the compacted store",
                dir.display()
            );
            return Ok(());
        }
        fs::rename(&previous, &dir).map_err(|e| io("restore", &previous, e))?;
        eprintln!("restored {} from an interrupted compaction", dir.display());
    }
    if !dir.is_dir() {
        return Err(Fatal(format!(
            "data_dir: {} is not a directory (nothing to compact)",
            dir.display()
        )));
    }
    if copy.exists() {
        fs::remove_dir_all(&copy).map_err(|e| io("remove the unfinished copy", &copy, e))?;
    }
    if previous.exists() {
        // `dir` is complete (it was put in place before the old store's removal began).
        fs::remove_dir_all(&previous).map_err(|e| io("remove the old store", &previous, e))?;
    }

    let started = Instant::now();
    let before = dir_bytes(&dir);
    let store = Store::open(&dir, &opts)
        .map_err(|e| super::locked_or(e, &dir, "Stop the server first: `compact` works offline"))?;
    let mut said = Instant::now();
    let copied = store.copy_into(&copy, &opts, |records| {
        if said.elapsed() >= PROGRESS_EVERY {
            said = Instant::now();
            eprintln!("compacting: {records} records copied");
        }
    });
    drop(store);
    let report = match copied {
        Ok(report) => report,
        Err(e) => {
            let _ = Store::wait_unlocked(&copy);
            let _ = fs::remove_dir_all(&copy);
            return Err(Fatal(format!("{e} (the store was not changed)")));
        }
    };
    // Both stores' sled threads let go of their files before anything is renamed.
    Store::wait_unlocked(&dir)?;
    Store::wait_unlocked(&copy)?;
    let marker = copy.join(COMPLETE);
    fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("mark the copy complete in", &copy, e))?;
    fs::rename(&dir, &previous).map_err(|e| io("move aside", &dir, e))?;
    swap_in(&copy, &dir, &previous)?;
    let after = dir_bytes(&dir);
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

/// Steps (3) and (4): the complete copy becomes `dir`, the old store goes.
fn swap_in(copy: &Path, dir: &Path, previous: &Path) -> Result<(), Fatal> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Fatal(format!("data_dir: cannot {what} {}: {e}", path.display()))
    };
    fs::rename(copy, dir).map_err(|e| io("put the copy in place at", dir, e))?;
    fs::remove_file(dir.join(COMPLETE)).map_err(|e| io("unmark", dir, e))?;
    fs::remove_dir_all(previous).map_err(|e| io("remove the old store", previous, e))
}

/// Bytes of the files under `dir` (sled's `db`, `conf`, snapshots and blobs).
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

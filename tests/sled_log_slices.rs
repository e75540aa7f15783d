//! The vendored sled's log writes (`vendor/sled/PATCHED.md`, "Log writes in slices"): a sealed
//! log buffer is written in 64 KiB slices, and the function installed with
//! `sled::set_io_yield_point` runs between slices (on sled's I/O threads), never before the
//! first. In a test binary of its own: the hook and sled's I/O pool are process-wide, and the
//! count must be this test's alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static IO_YIELD_CALLS: AtomicU64 = AtomicU64::new(0);

fn count_io_yield_point() {
    IO_YIELD_CALLS.fetch_add(1, Relaxed);
}

fn value(i: u32) -> Vec<u8> {
    vec![(i % 251) as u8; 1000 + (i % 7) as usize]
}

/// Inserts 2,000 values of about 1 KiB (~2 MiB of log) into a new store with `segment_size`
/// log buffers, flushes and closes it; the I/O yield-point calls meanwhile. Then checks every
/// value after a reopen (a small cache, so pages are read back from the log).
fn write_and_count(dir: &Path, segment_size: usize) -> u64 {
    let config = || {
        sled::Config::new()
            .path(dir)
            .segment_size(segment_size)
            .cache_capacity(256 * 1024)
    };
    let before = IO_YIELD_CALLS.load(Relaxed);
    {
        let db = config().open().expect("open");
        for i in 0u32..2000 {
            db.insert(i.to_be_bytes(), value(i)).expect("insert");
        }
        db.flush().expect("flush");
    }
    let calls = IO_YIELD_CALLS.load(Relaxed) - before;
    // sled's background threads let go of the directory lock a moment after the handle is
    // dropped (`Store::open` retries the same way): retry the reopen on that for up to 5 s.
    let mut tries = 0;
    let db = loop {
        match config().open() {
            Ok(db) => break db,
            Err(e) if e.to_string().contains("could not acquire lock") && tries < 250 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen: {e:?}"),
        }
    };
    assert_eq!(db.len(), 2000);
    for i in 0u32..2000 {
        let got = db.get(i.to_be_bytes()).expect("get");
        assert_eq!(got.as_deref(), Some(&value(i)[..]), "key {i} after reopen");
    }
    calls
}

#[test]
fn log_writes_go_in_slices_with_the_io_yield_point_between_them() {
    sled::set_io_yield_point(count_io_yield_point);
    // 64 KiB buffers: every write is a single slice, so the hook never runs.
    let small = tempfile::tempdir().expect("temp dir");
    assert_eq!(
        write_and_count(small.path(), 64 << 10),
        0,
        "no call before a buffer's only slice"
    );
    // 512 KiB buffers (sled's default, the store's): ~2 MiB makes at least three full buffers,
    // each written in eight slices with seven calls between them.
    let large = tempfile::tempdir().expect("temp dir");
    let calls = write_and_count(large.path(), 512 << 10);
    assert!(
        calls >= 3 * 7,
        "{calls} I/O yield-point calls for ~2 MiB of log"
    );
}

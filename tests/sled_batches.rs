//! The vendored sled's batch path (`vendor/sled/PATCHED.md`, "Batches applied a leaf at a
//! time"): `apply_batch` sorts a batch's writes and links each run of writes that lands in one
//! leaf as a single `Link::Batch` fragment. These tests drive sled directly with batches shaped like the
//! store's (contiguous runs, scattered keys, overwrites, removals that empty leaves, values big
//! enough to be written as blobs) and compare every key with a model, before and after reopening.

use std::collections::BTreeMap;
#[path = "support/sled_small_cache.rs"]
mod sled_small_cache;

use sled_small_cache::{assert_gets, open};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn value(rng: &mut Rng, tag: u64) -> Vec<u8> {
    let len = match rng.below(100) {
        0 => 150_000 + rng.below(20_000) as usize, // over the 128 KiB blob threshold
        1..=20 => 0,
        _ => rng.below(3_000) as usize,
    };
    if len == 0 {
        return Vec::new();
    }
    let mut v = tag.to_be_bytes().to_vec();
    v.resize(len.max(8), (tag % 251) as u8);
    v
}

fn assert_same(db: &sled::Db, model: &Model, when: &str) {
    let mut stored = db.iter();
    for (key, want) in model {
        let (k, v) = match stored.next() {
            Some(Ok(kv)) => kv,
            other => panic!("{when}: sled ended early at {key:?}: {other:?}"),
        };
        assert_eq!(k.as_ref(), key.as_slice(), "{when}: key order differs");
        assert!(
            v.as_ref() == want.as_slice(),
            "{when}: value of {key:?} differs"
        );
    }
    assert!(
        stored.next().is_none(),
        "{when}: sled holds keys the model does not"
    );
    assert_eq!(db.len(), model.len(), "{when}: len");
}

/// One batch: a contiguous run (a trace's spans, a time index), scattered keys (span ids),
/// overwrites and removals of keys already there, and no-op writes.
fn random_batch(rng: &mut Rng, model: &mut Model, round: u64) -> sled::Batch {
    let mut batch = sled::Batch::default();
    let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let run_start = rng.below(4_000);
    for i in 0..rng.below(300) {
        let key = [b"s".as_slice(), &(run_start + i).to_be_bytes()].concat();
        pending.insert(key, Some(value(rng, round * 1_000 + i)));
    }
    for i in 0..rng.below(200) {
        let key = [b"i".as_slice(), &rng.next().to_be_bytes()].concat();
        pending.insert(key, Some(value(rng, round * 1_000 + 500 + i)));
    }
    // Remove a stretch of existing keys (empties leaves, so sled merges them) and scattered ones.
    let existing: Vec<Vec<u8>> = model.keys().cloned().collect();
    if !existing.is_empty() {
        let from = rng.below(existing.len() as u64) as usize;
        for key in existing.iter().skip(from).take(rng.below(120) as usize) {
            pending.insert(key.clone(), None);
        }
        for _ in 0..rng.below(40) {
            let key = &existing[rng.below(existing.len() as u64) as usize];
            match rng.below(3) {
                0 => pending.insert(key.clone(), None),
                // The same value again: a no-op sled skips.
                1 => pending.insert(key.clone(), model.get(key).cloned()),
                _ => pending.insert(key.clone(), Some(value(rng, round))),
            };
        }
    }
    // Removing a key that is not there.
    pending.insert(b"zz-absent".to_vec(), None);
    for (key, write) in pending {
        match write {
            Some(v) => {
                batch.insert(key.as_slice(), v.as_slice());
                model.insert(key, v);
            }
            None => {
                batch.remove(key.as_slice());
                model.remove(&key);
            }
        }
    }
    batch
}

#[test]
fn batches_applied_a_leaf_at_a_time_match_a_model_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model::new();
    {
        let db = open(dir.path());
        for round in 0..120 {
            let batch = random_batch(&mut rng, &mut model, round);
            db.apply_batch(batch)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            // Point reads through the tree after every batch.
            assert_gets(&db, &model, 97, &format!("round {round}"));
            if round % 30 == 29 {
                assert_same(&db, &model, &format!("after round {round}"));
            }
        }
        assert!(model.len() > 1_000, "the batches left {} keys", model.len());
        db.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    }
    let db = open(dir.path());
    assert_same(&db, &model, "after reopening");
}

#[test]
fn a_watched_tree_still_reports_every_write_of_a_batch() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = open(dir.path());
    let mut events = db.watch_prefix(b"k");
    let mut batch = sled::Batch::default();
    for i in 0u32..40 {
        batch.insert(
            [b"k".as_slice(), &i.to_be_bytes()].concat(),
            b"v".as_slice(),
        );
    }
    db.apply_batch(batch)
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let mut seen = 0;
    while seen < 40 {
        match events.next_timeout(std::time::Duration::from_secs(10)) {
            Ok(sled::Event::Insert { value, .. }) => {
                assert_eq!(value.as_ref(), b"v");
                seen += 1;
            }
            other => panic!("event {seen}: {other:?}"),
        }
    }
    assert_eq!(db.len(), 40);
}

thread_local! {
    /// Calls of the yield point the test below installs, on this thread (`cargo test` runs
    /// this file's tests as threads of one process, and the yield point is process-wide).
    static YIELD_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_yield_point() {
    YIELD_CALLS.with(|n| n.set(n.get() + 1));
}

/// `sled::set_yield_point` (PATCHED.md, "Yield points"): sled calls the function once per leaf
/// run of a batch, so a low-priority writer can give the CPU away inside a large batch.
#[test]
fn a_batch_calls_the_yield_point_between_its_leaf_runs() {
    sled::set_yield_point(count_yield_point);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open(dir.path());
    // 2,000 ascending keys: leaves split at 16 entries, so well over a hundred runs.
    let mut batch = sled::Batch::default();
    for i in 0u32..2000 {
        batch.insert(&i.to_be_bytes()[..], &b"v"[..]);
    }
    let before = YIELD_CALLS.with(std::cell::Cell::get);
    db.apply_batch(batch).expect("batch");
    let calls = YIELD_CALLS.with(std::cell::Cell::get) - before;
    // One call per run: at least one per 16 keys (a run never crosses a leaf), at most one per key.
    assert!(
        (2000 / 16..=2000).contains(&calls),
        "{calls} yield-point calls"
    );
    assert_eq!(db.len(), 2000);
}

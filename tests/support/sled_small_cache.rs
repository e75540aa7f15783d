//! Opening a sled store for the vendored sled's tests (`sled_batches`, `sled_splits`), and the
//! point reads they check it with.

use std::collections::BTreeMap;
use std::path::Path;

/// Opens (or creates) a sled store at `dir` with a 256 KiB cache, so nodes written earlier are
/// paged out and read back from the log.
pub fn open(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(256 * 1024)
        .open()
        .unwrap_or_else(|e| panic!("open sled at {}: {e}", dir.display()))
}

/// Reads every `step`-th key of `model` through the tree (`get`) and checks its value.
pub fn assert_gets(db: &sled::Db, model: &BTreeMap<Vec<u8>, Vec<u8>>, step: usize, when: &str) {
    for key in model.keys().step_by(step) {
        let got = db.get(key).unwrap_or_else(|e| panic!("{when}: get: {e}"));
        assert_eq!(
            got.as_deref(),
            model.get(key).map(Vec::as_slice),
            "{when}: get {key:?}"
        );
    }
}

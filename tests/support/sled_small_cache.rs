//! Opening a sled store for the vendored sled's tests (`sled_batches`, `sled_splits`).

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

use super::*;

fn spool(dir: &Path, max: u64) -> (Spool, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let spool = Spool::open(dir, max, metrics.clone()).expect("spool opens");
    (spool, metrics)
}

/// `n` calls whose span ids say which they are.
fn calls(from: usize, n: usize) -> Vec<CallRecord> {
    (from..from + n)
        .map(|i| {
            let mut r = record::tests::record();
            r.ctx.span_id = format!("{i:016x}");
            r
        })
        .collect()
}

fn ids(records: &[CallRecord]) -> Vec<String> {
    records.iter().map(|r| r.ctx.span_id.clone()).collect()
}

fn segments(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

/// The one segment file in `dir`.
fn only_segment(dir: &Path) -> PathBuf {
    let segs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.into_iter().next().unwrap()
}

/// Takes and commits everything, returning the span ids in the order they came out.
fn drain(spool: &Spool, batch: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let Some(taken) = spool.take(batch, usize::MAX).unwrap() else {
            return out;
        };
        let (records, cursor) = taken.into_parts();
        out.extend(ids(&records));
        spool.commit(cursor);
    }
    panic!("the spool never ran dry");
}

#[test]
fn calls_come_out_in_order_and_a_stored_spool_leaves_no_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, metrics) = spool(tmp.path(), 1 << 30);
    assert!(spool.is_empty());
    spool.append(calls(0, 5)).map_err(|(e, _)| e).unwrap();
    spool.append(calls(5, 3)).map_err(|(e, _)| e).unwrap();
    assert!(spool.pending() > 0);
    assert_eq!(metrics.spool_bytes.load(Relaxed), spool.pending());
    assert_eq!(metrics.spooled_calls.load(Relaxed), 8);
    let got = drain(&spool, 3);
    assert_eq!(got, ids(&calls(0, 8)), "oldest first, each once");
    assert!(spool.is_empty());
    assert_eq!(metrics.spool_bytes.load(Relaxed), 0);
    assert_eq!(segments(tmp.path()), 0, "stored segments are deleted");
    // Appends go on after a full drain.
    spool.append(calls(8, 2)).map_err(|(e, _)| e).unwrap();
    assert_eq!(drain(&spool, 10), ids(&calls(8, 2)));
}

#[test]
fn a_restart_resumes_at_the_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (spool, _) = spool(tmp.path(), 1 << 30);
        spool.append(calls(0, 6)).map_err(|(e, _)| e).unwrap();
        let taken = spool.take(4, usize::MAX).unwrap().unwrap();
        assert_eq!(taken.records.len(), 4);
        spool.commit(taken.into_parts().1);
        // Read but not committed: must come back after the restart.
        let _ = spool.take(1, usize::MAX).unwrap().unwrap();
    }
    let (spool, metrics) = spool(tmp.path(), 1 << 30);
    assert!(
        metrics.spool_bytes.load(Relaxed) > 0,
        "pending again at open"
    );
    assert_eq!(drain(&spool, 10), ids(&calls(4, 2)));
    assert!(spool.is_empty());
}

#[test]
fn segments_roll_over_and_each_is_deleted_once_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = spool(tmp.path(), 1 << 30);
    // Each call is ~150 bytes; SEGMENT_BYTES is 64 KiB in tests.
    for i in 0..20 {
        spool.append(calls(i * 50, 50)).map_err(|(e, _)| e).unwrap();
    }
    let files = segments(tmp.path());
    assert!(files >= 2, "appends roll over to new segments: {files}");
    let got = drain(&spool, 64);
    assert_eq!(got, ids(&calls(0, 1000)));
    assert_eq!(segments(tmp.path()), 0);
}

#[test]
fn a_full_spool_refuses_and_gives_the_calls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = spool(tmp.path(), 1);
    spool
        .append(calls(0, 2))
        .map_err(|(e, _)| e)
        .expect("an empty spool takes one batch whatever its size");
    let (err, back) = spool.append(calls(2, 3)).unwrap_err();
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(err.to_string().contains("spool_max_bytes"), "{err}");
    assert_eq!(ids(&back), ids(&calls(2, 3)), "nothing is lost");
    assert_eq!(drain(&spool, 10), ids(&calls(0, 2)));
}

#[test]
fn a_torn_last_frame_is_counted_and_the_calls_before_it_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (spool, _) = spool(tmp.path(), 1 << 30);
        spool.append(calls(0, 3)).map_err(|(e, _)| e).unwrap();
    }
    let seg = only_segment(tmp.path());
    let len = fs::metadata(&seg).unwrap().len();
    let file = OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(len - 5).unwrap(); // a crash cut the last append
    drop(file);
    let (spool, _) = spool(tmp.path(), 1 << 30);
    let taken = spool.take(10, usize::MAX).unwrap().unwrap();
    assert_eq!(ids(&taken.records), ids(&calls(0, 2)));
    assert_eq!(taken.corrupt, 1, "the cut call is counted");
    spool.commit(taken.into_parts().1);
    assert!(spool.is_empty());
    assert!(spool.take(10, usize::MAX).unwrap().is_none());
}

#[test]
fn a_flipped_byte_fails_the_crc() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (spool, _) = spool(tmp.path(), 1 << 30);
        spool.append(calls(0, 1)).map_err(|(e, _)| e).unwrap();
        spool.append(calls(1, 1)).map_err(|(e, _)| e).unwrap();
    }
    let seg = only_segment(tmp.path());
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xFF;
    fs::write(&seg, bytes).unwrap();
    let (spool, _) = spool(tmp.path(), 1 << 30);
    let taken = spool.take(10, usize::MAX).unwrap().unwrap();
    assert_eq!(ids(&taken.records), ids(&calls(0, 1)));
    assert_eq!(taken.corrupt, 1);
}

#[test]
fn a_garbage_cursor_means_from_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (spool, _) = spool(tmp.path(), 1 << 30);
        spool.append(calls(0, 2)).map_err(|(e, _)| e).unwrap();
    }
    fs::write(tmp.path().join("cursor"), b"nonsense").unwrap();
    let (spool, _) = spool(tmp.path(), 1 << 30);
    assert_eq!(drain(&spool, 10), ids(&calls(0, 2)));
}

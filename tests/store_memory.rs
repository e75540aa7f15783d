//! The store's memory is bounded by its page cache (`cache_capacity_bytes`), also for large
//! calls. sled 0.34 as published let it grow with the data written: its LRU took in accesses
//! only in blocks of 64 on each of 256 shards, so up to 16,384 page accesses could wait uncounted,
//! their pages not evictable until more accesses reached the same shard (vendor/sled/PATCHED.md).
//! This writes 160 MiB of span bodies through `Store::put_spans` with an 8 MiB cache and checks
//! that the process did not keep them. The bounds have wide margins (unpatched, the growth is the
//! data written), so they test the mechanism, not the machine. Linux only (/proc/self/status);
//! alone in its test binary, so no other test shares the process (nextest runs each test in its
//! own process anyway).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llm_tracer::span::Span;
use llm_tracer::store::{Store, StoreOptions};
use serde_json::json;

/// Anonymous resident memory of this process, bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("RssAnon in kB");
    kib * 1024
}

/// Span `i` of its own trace, with an output of `body_bytes` (a few words repeated, so the
/// full-text index stays small and the bytes are the span body's).
fn big_span(i: u64, body_bytes: usize) -> Span {
    let words = ["alpha ", "bravo ", "charlie ", "delta "];
    let mut text = String::with_capacity(body_bytes + 8);
    let mut w = 0;
    while text.len() < body_bytes {
        text.push_str(words[w % words.len()]);
        w += 1;
    }
    // Trace ids spread over the key space, as random W3C ids are.
    let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let start = 1_700_000_000_000_000u64 + i * 1_000_000;
    serde_json::from_value(json!({
        "trace_id": format!("{mixed:016x}{i:016x}"),
        "span_id": format!("{:016x}", mixed ^ 0x5eed),
        "name": "chat gpt-4o-mini",
        "kind": "llm",
        "start_time": llm_tracer::span::Timestamp(start).to_rfc3339(),
        "end_time": llm_tracer::span::Timestamp(start + 500_000).to_rfc3339(),
        "input": {"messages": [{"role": "user", "content": "write a long answer"}]},
        "output": {"role": "assistant", "content": text},
    }))
    .expect("a valid span")
}

/// Anonymous RSS after the process handed freed memory back, as the idle proxy does (the
/// store's mimalloc pages, then glibc's arenas).
fn settled_rss_anon() -> u64 {
    llm_tracer::malloc::release_store_memory();
    llm_tracer::malloc::trim();
    rss_anon()
}

#[cfg(target_os = "linux")]
#[test]
fn large_spans_do_not_stay_in_memory_beyond_the_cache() {
    const CACHE: u64 = 8 * 1024 * 1024;
    // 64 KiB bodies: a leaf of them is over 128 KiB, so sled writes it as a blob.
    const BODY: usize = 64 * 1024;
    const SPANS: u64 = 2560; // 160 MiB of bodies, in batches of 8
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = StoreOptions {
        cache_capacity: CACHE,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &opts).expect("a fresh store opens");
    // A first batch so the store's own start-up allocations are in the baseline.
    store.put_spans(&[big_span(0, BODY)]).expect("stored");
    let before = settled_rss_anon();

    let mut halfway = 0;
    for batch in 0..SPANS / 8 {
        let spans: Vec<Span> = (0..8).map(|k| big_span(1 + batch * 8 + k, BODY)).collect();
        store.put_spans(&spans).expect("stored");
        if batch == SPANS / 16 {
            halfway = settled_rss_anon().saturating_sub(before);
        }
    }
    store.flush().expect("flushed");
    let grown = settled_rss_anon().saturating_sub(before);
    eprintln!(
        "store_memory: +{} MiB halfway, +{} MiB after {} MiB written",
        halfway >> 20,
        grown >> 20,
        (SPANS * BODY as u64) >> 20
    );

    // Everything written is there (read back from disk where evicted).
    for i in [1, SPANS / 2, SPANS] {
        let expected = big_span(i, BODY);
        let (_, spans) = store
            .get_trace(&expected.trace_id)
            .expect("readable")
            .expect("the trace is stored");
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].output, expected.output,
            "span {i}'s body comes back whole"
        );
    }

    // Unpatched sled: +133 MiB halfway, +260 MiB at the end (with 80 MiB written, +63 and
    // +128..133). Patched: +45 and +55 MiB (with 80 MiB written, +26..35 MiB throughout).
    let written = SPANS * BODY as u64;
    let mib = |b: u64| b >> 20;
    assert!(
        grown < written * 3 / 4,
        "after writing {} MiB of span bodies with a {} MiB cache, the process holds {} MiB more \
         ({} MiB halfway): it kept what it wrote",
        mib(written),
        mib(CACHE),
        mib(grown),
        mib(halfway)
    );
    assert!(
        grown.saturating_sub(halfway) < written / 4,
        "memory kept growing with the data written: +{} MiB halfway, +{} MiB at the end",
        mib(halfway),
        mib(grown)
    );
}

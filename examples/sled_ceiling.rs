//! What sled 0.34 itself can insert per second on this machine, with the store's settings
//! (`StoreOptions::default()`: its cache, flush every 500 ms) and none of our code: the ceiling under `Store::put_spans`.
//! Issue #7 asks for ≥ 50,000 spans/s of ingest; every stored span needs at least two sled
//! inserts (its body and its span-id lookup), so the first and third shapes below (the cheapest
//! way to store each) estimate what any key layout on sled 0.34 can reach.
//!
//! ```text
//! cargo run --release --example sled_ceiling -- [--inserts 500000] [--batch 2000] [--system-alloc]
//! ```
//!
//! Shapes, each into a fresh store in a temp dir (removed at the end), in batches of `--batch`
//! (one `apply_batch` each), keys of 33 bytes (a prefix byte and 32 hex characters, a trace id's
//! size), spread by multiplying the insert number by odd constants (a bijection on u64):
//! - random keys, 8-byte values (the span-id lookup `i`, index keys);
//! - random keys, 1,000-byte values (a span body keyed by trace, as `s` is);
//! - ascending keys, 1,000-byte values (a span body under a sequence number).
//!
//! Bounded: `--inserts` per shape and `--max-seconds` overall.
#![allow(clippy::print_stdout)] // stdout carries the report

use std::{
    error::Error,
    time::{Duration, Instant},
};

use clap::Parser;
use llm_tracer::store::StoreOptions;

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "sled 0.34 raw insert rate, the ceiling under the store")]
struct Args {
    /// Inserts per shape (at least 1).
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    inserts: u64,
    /// Inserts per `apply_batch`.
    #[arg(long, default_value_t = 2_000)]
    batch: u64,
    /// Stop a shape early (and say so) after this long in total.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Allocate from glibc's malloc, as store writes did before session 12 (default: mimalloc,
    /// as `put_spans` does; see src/malloc.rs).
    #[arg(long)]
    system_alloc: bool,
}

/// One measured shape.
struct Shape {
    name: &'static str,
    value_len: usize,
    ascending: bool,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "random keys, 8 B values",
        value_len: 8,
        ascending: false,
    },
    Shape {
        name: "random keys, 1000 B values",
        value_len: 1000,
        ascending: false,
    },
    Shape {
        name: "ascending keys, 1000 B values",
        value_len: 1000,
        ascending: true,
    },
];

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let batch = args.batch.max(1);
    // The store's own settings, so this stays the ceiling under it if they change.
    let opts = StoreOptions::default();
    let flush = opts
        .flush_every_ms
        .map_or("on demand only".to_string(), |ms| format!("every {ms} ms"));
    println!(
        "sled 0.34 raw inserts, {} per shape, batches of {batch}, cache {} MiB, flush {flush}, {}",
        args.inserts,
        opts.cache_capacity >> 20,
        if args.system_alloc {
            "glibc malloc"
        } else {
            "mimalloc (as store writes)"
        },
    );
    // Inserts per second of each shape that ran to the end (`None`: cut short or empty).
    let mut rates: Vec<Option<f64>> = Vec::with_capacity(SHAPES.len());
    for shape in &SHAPES {
        let dir = tempfile::tempdir()?;
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(opts.flush_every_ms)
            .open()?;
        let tree = db.open_tree("ceiling")?;
        let value = vec![7u8; shape.value_len];
        let started = Instant::now();
        let mut done = 0u64;
        while done < args.inserts && Instant::now() < deadline {
            let _mimalloc = (!args.system_alloc).then(llm_tracer::malloc::StoreScope::enter);
            let mut b = sled::Batch::default();
            for _ in 0..batch.min(args.inserts - done) {
                let n = if shape.ascending {
                    done
                } else {
                    done.wrapping_mul(SPREAD[0])
                };
                let tail = done.wrapping_mul(SPREAD[1]);
                b.insert(format!("s{n:016x}{tail:016x}").as_bytes(), &value[..]);
                done += 1;
            }
            tree.apply_batch(b)?;
        }
        db.flush()?;
        let secs = started.elapsed().as_secs_f64();
        if done < args.inserts {
            println!(
                "{:<32} {done:>9} inserts, cut short by --max-seconds",
                shape.name
            );
            rates.push(None);
            continue;
        }
        let rate = done as f64 / secs.max(1e-9);
        println!(
            "{:<32} {done:>9} inserts in {secs:6.1} s: {rate:>8.0}/s, {:5.1} µs each",
            shape.name,
            1e6 / rate
        );
        rates.push(Some(rate));
    }
    match rates[..] {
        [Some(small), _, Some(body)] => {
            // A span needs its body and its span-id lookup at the very least.
            let ceiling = 1.0 / (1.0 / small + 1.0 / body);
            println!(
                "ceiling for 2 inserts per span (a random 8 B lookup + an ascending 1000 B body): \
                 {ceiling:.0} spans/s, before any trace summary, index key or posting list"
            );
        }
        _ => println!("no ceiling: a shape it needs did not run to the end"),
    }
    Ok(())
}

/// Odd multipliers (bijections on u64) that spread consecutive insert numbers over the key space.
const SPREAD: [u64; 2] = [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9];

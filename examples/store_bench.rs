//! Store at scale (issue 7): load N spans in N/10 traces into a fresh sled store, then measure
//! what users feel: ingest rate, list and filter latency, one-trace latency, server start-up
//! with that store, bytes on disk per span, and full-text `q=` latency; then `llm-tracer check`
//! on the store (its time, and that it is clean and holds every loaded span).
//!
//! ```text
//! cargo run --release --example store_bench -- --spans 1000000 --bin target/release/llm-tracer
//! bench/store.sh [--spans N]      # the same, with a release build first
//! cargo run --release --example store_bench -- --spans 100000 --churn 6 [--max-store-bytes B]
//!                                 # RSS, live data and sled's files while retention turns it over
//! ```
//!
//! Ingest goes through `Store::put_spans` in batches of `--batch` (512, the writer's most), timed
//! without span generation. Queries go through the real binary's admin API over loopback (one
//! keep-alive connection, sequential), so they include HTTP and JSON: the latency a UI sees.
//! Bounded: every phase has a count and the whole run a deadline (`--max-seconds`).
//! A trace is a chain root (the app's span, random id) and LLM calls under it, whose span ids
//! count up as the proxy mints them (`--random-span-ids`: random, as OTLP exporters send).
#![allow(clippy::print_stdout)] // stdout carries the report

use std::{
    error::Error,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use llm_tracer::{
    propagate,
    span::{CaptureInfo, HttpInfo, Kind, LlmInfo, Span, Status, Timestamp},
    store::{Store, StoreOptions},
};
use serde_json::{json, Map, Value};

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "llm-tracer store benchmark")]
struct Args {
    /// Spans to load (traces = spans / --spans-per-trace).
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// 1 is the proxy's shape: each call its own trace, an LLM span without a parent.
    #[arg(long, default_value_t = 10)]
    spans_per_trace: usize,
    /// Spans per `put_spans` call (the writer batches up to 512; a lightly loaded proxy writes
    /// small batches).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Store directory (default: a fresh temp dir, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The llm-tracer binary, for start-up time and the API queries.
    #[arg(long, default_value = "target/release/llm-tracer")]
    bin: PathBuf,
    /// Requests per query kind.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Requests for the full-text `q=` search.
    #[arg(long, default_value_t = 100)]
    q_queries: usize,
    /// Only load the spans (for profiling `put_spans`, e.g. under callgrind): no server, no queries.
    #[arg(long)]
    ingest_only: bool,
    /// Memory and disk under retention: after the ingest, this many rounds of storing `--spans`
    /// newer spans and then running `Store::enforce_retention` (by age: the traces that fall
    /// outside the newest `--spans`; or by size, see `--max-store-bytes`); prints RSS, live data
    /// and sled's file size after each round (no server, no queries).
    #[arg(long, conflicts_with_all = ["open_only", "ingest_only"])]
    churn: Option<usize>,
    /// With `--churn`: retention by size (the `max_store_bytes` setting, > 0) instead of by age.
    #[arg(long, requires = "churn", value_parser = clap::value_parser!(u64).range(1..))]
    max_store_bytes: Option<u64>,
    /// Only time `Store::open` on the existing store in `--dir`, this many times (no ingest).
    #[arg(long)]
    open_only: Option<usize>,
    /// Only the start-up and query phases, on the store `--dir` holds (no ingest): `--spans`
    /// and `--spans-per-trace` must be those it was loaded with. To compare binaries or settings
    /// (`LLM_TRACER_*` variables reach the server) on one loaded store.
    #[arg(long, requires = "dir", conflicts_with_all = ["open_only", "ingest_only", "churn"])]
    queries_only: bool,
    /// Give up on remaining phases after this long.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// sled's page cache for the load (the `cache_capacity_bytes` setting), MiB; default: the
    /// server's default.
    #[arg(long)]
    cache_mib: Option<u64>,
    /// Trace ids as the proxy mints them (the trace's start in milliseconds, then random
    /// digits), instead of fully random ones as apps send (W3C `traceparent`, OTLP).
    #[arg(long, conflicts_with = "queries_only")]
    time_ordered_ids: bool,
    /// Every span id fully random, as OTLP exporters send them, instead of LLM spans' ids as
    /// the proxy mints them (`propagate::new_span_id`: a sequence counting up from a random
    /// start; the default). Chain roots (the app's own spans, with `--spans-per-trace` > 1) have
    /// random ids either way.
    #[arg(long, conflicts_with = "queries_only")]
    random_span_ids: bool,
}

const MODELS: [&str; 5] = [
    "gpt-4o-mini",
    "gpt-4o",
    "claude-3-5-sonnet",
    "llama-3.1-70b",
    "o3-mini-rare",
];

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let mut out = Vec::new();
    out.push(format!(
        "store bench: {} spans in {} traces, dir {}",
        args.spans,
        args.spans / args.spans_per_trace.max(1),
        dir.display()
    ));

    if let Some(n) = args.open_only {
        for _ in 0..n {
            let t = Instant::now();
            let store = Store::open(&dir, &StoreOptions::default())?;
            let took = t.elapsed();
            drop(store);
            println!("Store::open: {:.1} ms", ms(took));
            std::thread::sleep(Duration::from_millis(500)); // sled lets go of its lock asynchronously
        }
        return Ok(());
    }

    let mut loaded = args.spans;
    let mut ids = Vec::new();
    if args.queries_only {
        // The trace ids the ingest would have picked: the first of every twentieth of the load.
        let step = (args.spans / 20).max(1);
        ids.extend(
            (0..args.spans)
                .step_by(step)
                .map(|i| trace_id(i / args.spans_per_trace.max(1))),
        );
    } else {
        loaded = ingest(&args, &dir, deadline, &mut ids, &mut out)?;
        if args.ingest_only || args.churn.is_some() {
            return Ok(());
        }
    }
    let disk = dir_size(&dir);
    out.push(format!(
        "disk: {:.1} MiB, {:.0} bytes per span",
        mib(disk),
        disk as f64 / loaded.max(1) as f64
    ));

    // --- start-up and queries, through the real binary ---
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut startups = Vec::new();
    let mut opens = Vec::new();
    for _ in 0..3 {
        let (server, admin, took, open_took) = start_server(&args.bin, &dir)?;
        startups.push(took);
        opens.push(open_took);
        let last = startups.len() == 3;
        if last {
            let report = rt.block_on(queries(&args, admin, &ids, deadline))?;
            out.extend(report);
        }
        stop(server);
    }
    let runs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let order = (runs(&startups), runs(&opens));
    startups.sort();
    opens.sort();
    out.push(format!(
        "start-up to a /healthz answer (proxy serving): median {:.0} ms (runs: {}) (target ≤ 200)",
        ms(startups[1]),
        order.0
    ));
    out.push(format!(
        "start-up until the store is open (queries answer): median {:.0} ms (runs: {})",
        ms(opens[1]),
        order.1
    ));
    out.push(check(&args.bin, &dir, loaded, deadline)?);
    out.push(format!("(took {:.0} s)", started.elapsed().as_secs_f64()));
    for line in out {
        println!("{line}");
    }
    Ok(())
}

/// Loads `--spans` spans into the store at `dir` (the ingest phase, and `--churn` after it);
/// collects a trace id from every twentieth of the load into `ids`. Returns the spans loaded.
fn ingest(
    args: &Args,
    dir: &Path,
    deadline: Instant,
    ids: &mut Vec<String>,
    out: &mut Vec<String>,
) -> Result<usize, BoxError> {
    let mut opts = StoreOptions::default();
    if let Some(mib) = args.cache_mib {
        opts.cache_capacity = mib * 1024 * 1024;
    }
    let store = Store::open(dir, &opts)?;
    let base_us = now_us().saturating_sub(7 * 86_400 * 1_000_000);
    let batch_size = args.batch.max(1);
    let (loaded, mut put) = load(
        &store,
        args,
        (0, args.spans),
        base_us,
        deadline,
        |loaded, batch| {
            if loaded % (args.spans / 20).max(1) < batch_size {
                ids.extend(batch.first().map(|s| s.trace_id.clone()));
            }
        },
    )?;
    let t = Instant::now();
    store.flush()?;
    put += t.elapsed();
    let rate = loaded as f64 / put.as_secs_f64();
    out.push(format!(
        "ingest: {loaded} spans in {:.1} s of put_spans (batches of {batch_size}): {rate:.0} spans/s (target ≥ 50000)",
        put.as_secs_f64()
    ));
    if let Some(rounds) = args.churn {
        for line in out.drain(..) {
            println!("{line}");
        }
        churn(&store, args, dir, rounds, base_us, deadline)?;
        return Ok(loaded);
    }
    if args.ingest_only {
        for line in out.drain(..) {
            println!("{line}");
        }
    }
    drop(store);
    std::thread::sleep(Duration::from_millis(500)); // sled lets go of its lock asynchronously
    Ok(loaded)
}

// === memory and disk under retention ===

/// `--churn`: each round stores `--spans` newer spans, then retention runs: by age it deletes
/// every trace that started before the first trace of the newest `--spans` spans, so the live
/// data is the same after every round; by size (`--max-store-bytes`) it does what the server's
/// `max_store_bytes` does. RSS is read after freed heap pages went back to the kernel
/// (`malloc::trim`, as the idle server does), so what stays is what the store holds.
fn churn(
    store: &Store,
    args: &Args,
    dir: &Path,
    rounds: usize,
    base_us: u64,
    deadline: Instant,
) -> Result<(), BoxError> {
    let per_trace = args.spans_per_trace.max(1);
    let mut next = args.spans;
    let mut deleted = 0u64;
    for round in 0..=rounds {
        if round > 0 {
            let end = next + args.spans;
            let (reached, _) = load(store, args, (next, end), base_us, deadline, |_, _| {})?;
            next = reached;
            if reached < end {
                println!("churn: stopped by --max-seconds in round {round}");
                break;
            }
            // By age, keep the traces of the newest `--spans` spans: the first kept trace's
            // start is the cutoff (a trace starts with its first span).
            let first_kept = (end - args.spans) / per_trace;
            let cutoff = Timestamp(base_us + first_kept as u64 * TRACE_EVERY_US);
            deleted += match args.max_store_bytes {
                Some(max) => store.enforce_retention(None, Some(max))?,
                None => store.enforce_retention(Some(cutoff), None)?,
            };
            store.flush()?;
        }
        llm_tracer::malloc::trim();
        println!(
            "churn: round {round}: {next} spans stored in all, {deleted} traces deleted in all, \
             RSS {:.1} MiB, live data {:.0} MiB, sled's files {:.0} MiB",
            rss_mib(),
            mib(store.live_bytes()?),
            mib(dir_size(dir))
        );
    }
    Ok(())
}

/// This process's resident set size (`VmRSS` in /proc/self/status), MiB; 0 where there is none.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Stores spans `from..to` (see [`span`]) in batches of `--batch` until done or `deadline`;
/// returns the index reached and the time spent in `put_spans`. `each` sees every batch before
/// it is stored, with the index reached.
fn load(
    store: &Store,
    args: &Args,
    (from, to): (usize, usize),
    base_us: u64,
    deadline: Instant,
    mut each: impl FnMut(usize, &[Span]),
) -> Result<(usize, Duration), BoxError> {
    let batch_size = args.batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    let (mut next, mut put) = (from, Duration::ZERO);
    while next < to && Instant::now() < deadline {
        batch.clear();
        while batch.len() < batch_size && next < to {
            batch.push(span(
                next,
                args.spans_per_trace,
                base_us,
                args.time_ordered_ids,
                !args.random_span_ids,
            ));
            next += 1;
        }
        each(next, &batch);
        let t = Instant::now();
        store.put_spans(&batch)?;
        put += t.elapsed();
    }
    Ok((next, put))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

// === data ===

/// A new trace starts every 6 s.
const TRACE_EVERY_US: u64 = 6_000_000;

fn now_us() -> u64 {
    Timestamp::now().micros()
}

/// The id of trace `t`.
fn trace_id(t: usize) -> String {
    format!("{:016x}{:016x}", mix(t as u64), mix(!(t as u64)))
}

/// The id of trace `t` starting at `start_us`, laid out as the proxy mints ids
/// (`propagate::new_trace_id`: 12 hex digits of milliseconds, then 20 random ones).
fn minted_trace_id(t: usize, start_us: u64) -> String {
    propagate::time_first_trace_id(start_us / 1000, mix(t as u64) as u16, mix(!(t as u64)))
}

/// Span `i`: trace `i / per_trace`; the first span of a trace is its chain root, the rest LLM
/// calls under it (with one span per trace, each is a parentless LLM call, as the proxy records). A few models (one rare), 2% errors, realistic bodies.
/// `time_ordered`: the trace's id is [`minted_trace_id`], else [`trace_id`]. `proxy_span_ids`:
/// an LLM span's id is number `i` of a sequence from a random start, as the proxy mints them.
fn span(
    i: usize,
    per_trace: usize,
    base_us: u64,
    time_ordered: bool,
    proxy_span_ids: bool,
) -> Span {
    let per_trace = per_trace.max(1);
    let (t, k) = (i / per_trace, i % per_trace);
    let trace_start = base_us + t as u64 * TRACE_EVERY_US;
    let trace_id = if time_ordered {
        minted_trace_id(t, trace_start)
    } else {
        trace_id(t)
    };
    let start = trace_start + k as u64 * 150_000;
    let dur = 400_000 + (mix(i as u64) % 2_000_000);
    let model = if t % 100 == 7 {
        MODELS[4]
    } else {
        MODELS[t % 4]
    };
    let error = t % 50 == 3 && k == per_trace - 1;
    let root = k == 0 && per_trace > 1;
    let question = format!(
        "Customer {t} asks about invoice {k}: why was the annual plan charged twice this month?"
    );
    let answer = format!("The second charge for customer {t} is a pending authorization that drops off within 3 business days.");
    Span {
        trace_id,
        span_id: if proxy_span_ids && !root {
            propagate::span_id_from(
                std::num::NonZeroU64::new(mix(0x5eed).wrapping_add(i as u64))
                    .unwrap_or(std::num::NonZeroU64::MIN),
            )
        } else {
            format!("{:016x}", mix(i as u64 ^ 0x5eed))
        },
        parent_span_id: (k != 0).then(|| format!("{:016x}", mix((t * per_trace) as u64 ^ 0x5eed))),
        name: if root {
            "support-answer".into()
        } else {
            format!("chat {model}")
        },
        kind: if root { Kind::Chain } else { Kind::Llm },
        start_time: Timestamp(start),
        end_time: Timestamp(start + dur),
        duration_ms: dur as f64 / 1000.0,
        status: if error { Status::Error } else { Status::Ok },
        error: error.then(|| llm_tracer::span::SpanError {
            kind: "server_error".into(),
            message: "upstream 500".into(),
        }),
        session_id: Some(format!("session-{}", t / 5)),
        user_id: Some(format!("user-{}", t % 1000)),
        tags: vec!["bench".into(), format!("tier-{}", t % 3)],
        metadata: Map::new(),
        http: (!root).then(|| HttpInfo {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(if error { 500 } else { 200 }),
            upstream: "https://api.openai.com".into(),
        }),
        llm: (!root).then(|| LlmInfo {
            provider: Some("openai".into()),
            operation: Some("chat".into()),
            request_model: Some(model.into()),
            response_model: Some(model.into()),
            stream: k % 2 == 0,
            input_tokens: Some(120 + (i % 50) as u64),
            output_tokens: Some(40 + (i % 30) as u64),
            total_tokens: Some(160 + (i % 80) as u64),
            usage_source: Some("reported".into()),
            ttft_ms: Some(180.0),
            finish_reason: Some("stop".into()),
            ..LlmInfo::default()
        }),
        input: if root {
            Value::String(question.clone())
        } else {
            json!({"model": model, "messages": [
                {"role": "system", "content": "You are a concise assistant for a customer-support team."},
                {"role": "user", "content": question}
            ], "temperature": 0.2})
        },
        output: if root {
            Value::String(answer)
        } else {
            json!({"role": "assistant", "content": answer})
        },
        capture: (!root).then_some(CaptureInfo {
            truncated: false,
            bytes_in: 420,
            bytes_out: 610,
            chunks: if k % 2 == 0 { 40 } else { 1 },
        }),
    }
}

/// splitmix64: deterministic, well-spread IDs.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// === server ===

/// Starts the server; returns it with the time to its first `/healthz` answer (listeners up,
/// proxy serving) and to `/healthz` reporting the store open (a large store's recovery runs
/// in the background; queries answer 503 until then).
fn start_server(
    bin: &Path,
    dir: &Path,
) -> Result<(Child, SocketAddr, Duration, Duration), BoxError> {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut admin = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("admin listening on http://") {
            admin = Some(addr.parse::<SocketAddr>()?);
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let Some(admin) = admin else {
        stop(child);
        return Err("the server did not print its admin address".into());
    };
    // Serving = answers GET /healthz; then the store is open when /healthz says so.
    let mut serving = None;
    while t.elapsed() < Duration::from_secs(120) {
        if let Ok(answer) = healthz(admin) {
            let serving = *serving.get_or_insert(t.elapsed());
            if answer.contains("\"state\":\"open\"") {
                return Ok((child, admin, serving, t.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop(child);
    Err("the server never answered /healthz with its store open".into())
}

/// One blocking `GET /healthz` (loopback Host, as the admin listener requires): the answer.
fn healthz(admin: SocketAddr) -> Result<String, BoxError> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(admin)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(answer)
    } else {
        Err("not ready".into())
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `llm-tracer check --json` on the loaded store (stopped): its time, whether it is clean, and
/// whether it holds every loaded span. Killed at `deadline`.
fn check(bin: &Path, dir: &Path, loaded: usize, deadline: Instant) -> Result<String, BoxError> {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["check", "--json", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("check: no stdout")?;
    // Read while it runs: a report with many problems can outgrow the pipe's buffer.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok("check: stopped by --max-seconds".to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    let text = reader.join().map_err(|_| "check: reader panicked")??;
    let report: Value = serde_json::from_str(&text)
        .map_err(|e| format!("check (exit {status}) printed no report: {e}"))?;
    let count = |k: &str| report.get(k).and_then(Value::as_u64).unwrap_or(0);
    let problems = count("problem_count");
    let spans = count("spans");
    Ok(format!(
        "check (`llm-tracer check`): {} in {:.1} s, {spans} spans in {} traces, {} postings; \
         every loaded span in the store: {}",
        if problems == 0 {
            "clean".to_string()
        } else {
            format!("{problems} PROBLEMS")
        },
        took.as_secs_f64(),
        count("traces"),
        count("postings"),
        if spans == loaded as u64 { "yes" } else { "NO" },
    ))
}

// === queries ===

struct Client {
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { addr, sender })
    }

    async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes, Duration), BoxError> {
        let req = Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::new())?;
        let t = Instant::now();
        self.sender.ready().await?;
        let rsp = self.sender.send_request(req).await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok((status, body, t.elapsed()))
    }
}

async fn queries(
    args: &Args,
    admin: SocketAddr,
    ids: &[String],
    deadline: Instant,
) -> Result<Vec<String>, BoxError> {
    let mut c = Client::connect(admin).await?;
    let mut out = Vec::new();
    // Warm-up: the first page, once.
    c.get("/api/traces?limit=50").await?;

    let kinds: Vec<(&str, String, f64)> = vec![
        (
            "GET /api/traces?limit=50 (first pages, following next_cursor)",
            "/api/traces?limit=50".into(),
            5.0,
        ),
        (
            "… &model=gpt-4o-mini (a common model)",
            "/api/traces?limit=50&model=gpt-4o-mini".into(),
            10.0,
        ),
        (
            "… &model=o3-mini-rare (1% of traces)",
            "/api/traces?limit=50&model=o3-mini-rare".into(),
            10.0,
        ),
        (
            "… &status=error (2% of traces)",
            "/api/traces?limit=50&status=error".into(),
            10.0,
        ),
    ];
    for (label, path, target) in kinds {
        let mut times = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        for _ in 0..args.queries {
            if Instant::now() > deadline {
                break;
            }
            let url = match &cursor {
                Some(c) => format!("{path}&cursor={c}"),
                None => path.clone(),
            };
            let (status, body, took) = c.get(&url).await?;
            if status != StatusCode::OK {
                return Err(format!("{url}: {status}").into());
            }
            times.push(took);
            pages += 1;
            let v: Value = serde_json::from_slice(&body)?;
            cursor = v["next_cursor"].as_str().map(str::to_string);
            if pages % 20 == 0 {
                cursor = None; // back to the newest page now and then
            }
        }
        out.push(summary(label, &mut times, Some(target)));
    }

    let mut times = Vec::new();
    for (i, _) in (0..args.queries).enumerate() {
        if Instant::now() > deadline || ids.is_empty() {
            break;
        }
        let id = &ids[i % ids.len()];
        let (status, _, took) = c.get(&format!("/api/traces/{id}")).await?;
        if status != StatusCode::OK {
            return Err(format!("trace {id}: {status}").into());
        }
        times.push(took);
    }
    out.push(summary("GET /api/traces/{id}", &mut times, Some(2.0)));

    let mut times = Vec::new();
    let words = [
        "invoice",
        "pending",
        "customer 4242",
        "no-such-word-anywhere",
        "invoice&model=o3-mini-rare",
    ];
    for i in 0..args.q_queries {
        if Instant::now() > deadline {
            break;
        }
        let q = words[i % words.len()].replace(' ', "%20");
        // (`&model=` in an entry is a filter next to `q`, not part of it.)
        let (_, _, took) = c.get(&format!("/api/traces?limit=50&q={q}")).await?;
        times.push(took);
    }
    out.push(summary(
        "GET /api/traces?limit=50&q=… (full-text index: invoice / pending / customer 4242 / a word found nowhere / invoice + model)",
        &mut times,
        Some(50.0),
    ));
    Ok(out)
}

fn summary(label: &str, times: &mut [Duration], target_ms: Option<f64>) -> String {
    if times.is_empty() {
        return format!("{label}: not measured (deadline)");
    }
    times.sort();
    let q =
        |p: f64| ms(times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1]);
    format!(
        "{label}: n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
        times.len(),
        q(0.5),
        q(0.99),
        ms(times[times.len() - 1]),
        target_ms.map_or(String::new(), |t| format!(" (target p99 ≤ {t})"))
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A temp dir removed on drop (tempfile is only a dev-dependency of the tests, and examples
/// see it too, but a plain dir keeps this file self-contained).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "llm-tracer-store-bench-{}-{}",
            std::process::id(),
            now_us()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

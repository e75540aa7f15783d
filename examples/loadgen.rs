//! Load generator and mock upstream for `bench/run.sh` (issue 7). Not part of the product.
//!
//! ```text
//! loadgen mock                                   # llm_tracer::mock::MockUpstream, prints its URL
//! loadgen rate    --url URL --rate 5000 --connections 32 --duration 10 --body FILE
//! loadgen closed  --url URL --connections 32 --duration 10 --body FILE
//! loadgen streams --url URL --streams 64 --concurrency 16 --words 50 --gap-ms 20
//! ```
//!
//! Every mode prints one JSON object on stdout. Every loop is bounded in count and time.
//!
//! - `rate` is open-loop: connection k of C sends at `t0 + (k + j·C)/R`, whatever the previous
//!   answers did. A request that had to wait for its connection (the previous answer came late) is
//!   timed from its *scheduled* send time, so a stall shows up in the tail instead of hiding
//!   (coordinated omission). A request whose connection was idle is timed from its actual send:
//!   tokio's timer has 1 ms granularity, and its lateness is the load generator's, not the server's.
//! - `closed` is wrk-style: each connection sends the next request as soon as the last one ends.
//! - `streams` opens one connection per stream, timestamps every body frame, and reports
//!   time to first byte, frame and SSE event counts (a frame carrying more than one event means
//!   something coalesced chunks), and the spacing between frames.
//!
//! Latencies go into a log-linear (HDR-style) histogram: 128 sub-buckets per power of two, so
//! every quantile is within 0.8% of the true value, in constant memory.
//!
//! `mock` is an example rather than an `llm-tracer` subcommand so that bench tooling stays out of
//! the product binary; it serves `x-mock-gap-ms` (chunks N ms apart) for the TTFT and
//! no-coalescing checks.
#![allow(clippy::print_stdout)] // stdout carries the JSON result

use std::{
    error::Error,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpStream, task::JoinSet};

type BoxError = Box<dyn Error + Send + Sync>;
type Sender = SendRequest<Full<Bytes>>;

#[derive(Parser)]
#[command(about = "llm-tracer bench load generator and mock upstream")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Start llm_tracer's scripted mock upstream; print `mock listening on URL`; run until killed.
    Mock,
    /// Open-loop load at a fixed rate.
    Rate(RateArgs),
    /// Closed-loop load: as fast as the server answers.
    Closed(Common),
    /// Streamed calls, each frame timestamped.
    Streams(StreamArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Full URL, e.g. http://127.0.0.1:8080/v1/chat/completions
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before the measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Request body file (POST); without it a small chat request is sent.
    #[arg(long)]
    body: Option<String>,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Closed loop only: stop after this many measured requests in all (no warm-up then).
    #[arg(long)]
    requests: Option<u64>,
}

#[derive(Args, Clone)]
struct RateArgs {
    #[command(flatten)]
    common: Common,
    /// Requests per second, over all connections.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
}

#[derive(Args, Clone)]
struct StreamArgs {
    #[arg(long)]
    url: String,
    /// Streams in total.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Streams open at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Words in the user message: the mock answers "Mock reply to: <words>" with one content
    /// chunk per word, plus role, finish and [DONE] chunks (words + 6 chunks).
    #[arg(long, default_value_t = 20)]
    words: usize,
    /// Gap between chunks, sent as `x-mock-gap-ms`.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Give up on the whole run after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    // One thread: the bench pins the load generator to one CPU.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let out = match cli.mode {
            Mode::Mock => return run_mock().await,
            Mode::Rate(a) => run_load(&a.common, Some(a.rate)).await?,
            Mode::Closed(c) => run_load(&c, None).await?,
            Mode::Streams(s) => run_streams(&s).await?,
        };
        println!("{out}");
        Ok(())
    })
}

// === mock ===

async fn run_mock() -> Result<(), BoxError> {
    use std::io::Write as _;
    let mock = llm_tracer::mock::MockUpstream::start().await?;
    println!("mock listening on {}", mock.url());
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(mock);
    Ok(())
}

// === target ===

/// Where requests go: a socket address plus an origin-form request line.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Target {
    fn new(url: &str, headers: &[String], body: Bytes) -> Result<Self, BoxError> {
        let uri: Uri = url.parse()?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: only http:// URLs are supported").into());
        }
        let authority = uri.authority().ok_or("the URL has no host:port")?;
        let addr: SocketAddr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        )
        .parse()
        .map_err(|e| format!("{url}: the host must be an IP address ({e})"))?;
        let path: Uri = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
        let mut parsed = Vec::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?} is not `name: value`"))?;
            parsed.push((
                HeaderName::from_bytes(name.trim().as_bytes())?,
                HeaderValue::from_str(value.trim())?,
            ));
        }
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            path,
            headers: parsed,
            body,
        })
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, BoxError> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.clone();
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in &self.headers {
            h.insert(name.clone(), value.clone());
        }
        Ok(req)
    }

    async fn connect(&self) -> Result<Sender, BoxError> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// A realistic small chat request: a system prompt, a user question, a few parameters.
fn default_body() -> Bytes {
    Bytes::from(
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a concise assistant for a customer-support team."},
                {"role": "user", "content": "Summarise the refund policy for annual plans in two sentences."}
            ],
            "temperature": 0.2,
            "max_tokens": 200
        })
        .to_string(),
    )
}

// === histogram ===

/// Log-linear histogram of nanoseconds: exact below 128 ns, then 128 sub-buckets per power of two.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; (64 - SUB_BITS as usize + 1) * SUB],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) as usize & (SUB - 1);
        ((shift as usize + 1) << SUB_BITS) + sub
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let (group, sub) = (i >> SUB_BITS, (i & (SUB - 1)) as u64);
        if group == 0 {
            return sub;
        }
        let shift = group - 1;
        let low = (SUB as u64 + sub) << shift;
        low + ((1u64 << shift) >> 1)
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::index(ns)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(ns);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Quantile `q` in microseconds (0 when empty).
    fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max) as f64 / 1e3;
            }
        }
        self.max as f64 / 1e3
    }

    fn summary(&self) -> Value {
        json!({
            "p50_us": self.quantile_us(0.50),
            "p90_us": self.quantile_us(0.90),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.max as f64 / 1e3,
        })
    }
}

// === rate / closed ===

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    non_2xx: u64,
    /// Requests that were sent late because their connection was still busy.
    late: u64,
}

async fn run_load(args: &Common, rate: Option<f64>) -> Result<Value, BoxError> {
    let body = match &args.body {
        Some(path) => Bytes::from(std::fs::read(path)?),
        None => default_body(),
    };
    let target = Arc::new(Target::new(&args.url, &args.headers, body)?);
    let conns = args.connections.max(1);
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(target.connect().await?);
    }
    let warmup = match (rate, args.requests) {
        (None, Some(_)) => Duration::ZERO,
        _ => Duration::from_secs_f64(args.warmup.max(0.0)),
    };
    let measure = Duration::from_secs_f64(args.duration.max(0.1));
    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_from = t0 + warmup;
    let end = measure_from + measure;
    let mut tasks = JoinSet::new();
    for (k, sender) in senders.into_iter().enumerate() {
        let target = target.clone();
        // Connection k's schedule: t0 + (k + j·C)/R.
        let schedule = rate.map(|r| {
            let period = Duration::from_secs_f64(conns as f64 / r.max(1.0));
            (t0 + period.mul_f64(k as f64 / conns as f64), period)
        });
        // Closed loop with a count: connection k sends its share of the requests.
        let quota = args
            .requests
            .filter(|_| rate.is_none())
            .map(|n| n / conns as u64 + u64::from((k as u64) < n % conns as u64));
        tasks.spawn(connection_loop(
            target,
            sender,
            schedule,
            quota,
            t0,
            measure_from,
            end,
        ));
    }
    let mut hist = Histogram::new();
    let mut tally = Tally::default();
    // Bounded: every loop stops sending at `end`; a stuck answer is cut 10 s later.
    let deadline = tokio::time::Instant::from_std(end + Duration::from_secs(10));
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok((h, t)))) => {
                hist.merge(&h);
                tally.ok += t.ok;
                tally.errors += t.errors;
                tally.non_2xx += t.non_2xx;
                tally.late += t.late;
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                tally.errors += 1;
                break;
            }
        }
    }
    let secs = measure.as_secs_f64();
    let mut out = json!({
        "mode": if rate.is_some() { "rate" } else { "closed" },
        "connections": conns,
        "duration_s": secs,
        "target_rps": rate,
        "requests": tally.ok,
        "errors": tally.errors,
        "non_2xx": tally.non_2xx,
        "late": tally.late,
        "rps": tally.ok as f64 / secs,
    });
    if let (Some(o), Value::Object(s)) = (out.as_object_mut(), hist.summary()) {
        o.extend(s);
    }
    Ok(out)
}

/// One connection's requests; with a schedule, open-loop, else closed-loop.
async fn connection_loop(
    target: Arc<Target>,
    mut sender: Sender,
    schedule: Option<(Instant, Duration)>,
    quota: Option<u64>,
    t0: Instant,
    measure_from: Instant,
    end: Instant,
) -> (Histogram, Tally) {
    let mut hist = Histogram::new();
    let mut tally = Tally::default();
    let mut next = schedule.map(|(first, _)| first);
    let mut sent = 0u64;
    tokio::time::sleep_until(t0.into()).await;
    loop {
        if quota.is_some_and(|q| sent >= q) {
            break;
        }
        sent += 1;
        let now = Instant::now();
        let from = match (next, schedule) {
            (Some(at), Some((_, period))) => {
                next = Some(at + period);
                if at >= end {
                    break;
                }
                if now < at {
                    tokio::time::sleep_until(at.into()).await;
                    Instant::now() // idle connection: timed from the actual send
                } else {
                    if at >= measure_from {
                        tally.late += u64::from(now > at + Duration::from_millis(1));
                    }
                    at // busy connection: timed from the schedule
                }
            }
            _ => {
                if now >= end {
                    break;
                }
                now
            }
        };
        let Ok(req) = target.request() else {
            tally.errors += 1;
            break;
        };
        let result = async {
            sender.ready().await?;
            let rsp = sender.send_request(req).await?;
            let status = rsp.status();
            rsp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let done = Instant::now();
        let counted = from >= measure_from && from < end;
        match result {
            Ok(status) => {
                if counted {
                    tally.ok += 1;
                    tally.non_2xx += u64::from(!status.is_success());
                    hist.record(done - from);
                }
            }
            Err(_) => {
                tally.errors += u64::from(counted);
                // The connection is gone: open a new one, or stop if the server is gone too.
                match target.connect().await {
                    Ok(s) => sender = s,
                    Err(_) => break,
                }
            }
        }
    }
    (hist, tally)
}

// === streams ===

struct StreamResult {
    ttfb: Option<Duration>,
    total: Duration,
    frames: u64,
    events: u64,
    /// Frames that carried more than one SSE event.
    multi_event_frames: u64,
    gaps: Vec<Duration>,
    ok: bool,
}

async fn run_streams(args: &StreamArgs) -> Result<Value, BoxError> {
    let words: Vec<String> = (0..args.words).map(|i| format!("w{i}")).collect();
    let body = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": words.join(" ")}],
    })
    .to_string();
    let mut headers = args.headers.clone();
    if args.gap_ms > 0 {
        headers.push(format!("x-mock-gap-ms: {}", args.gap_ms));
    }
    let target = Arc::new(Target::new(&args.url, &headers, Bytes::from(body))?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout.max(1.0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut results = Vec::with_capacity(args.streams);
    let mut launched = 0;
    let mut timed_out = false;
    while launched < args.streams || !tasks.is_empty() {
        while launched < args.streams && tasks.len() < args.concurrency.max(1) {
            tasks.spawn(one_stream(target.clone()));
            launched += 1;
        }
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(r))) => results.push(r),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => {}
            Err(_) => {
                tasks.abort_all();
                timed_out = true;
                break;
            }
        }
    }
    let wall = started.elapsed();
    let mut ttfb = Histogram::new();
    let mut gaps = Histogram::new();
    let mut totals = Histogram::new();
    let (mut frames, mut events, mut multi, mut failed) = (0, 0, 0, 0);
    let mut min_gap: Option<Duration> = None;
    for r in &results {
        if !r.ok {
            failed += 1;
            continue;
        }
        if let Some(t) = r.ttfb {
            ttfb.record(t);
        }
        totals.record(r.total);
        frames += r.frames;
        events += r.events;
        multi += r.multi_event_frames;
        for g in &r.gaps {
            gaps.record(*g);
            min_gap = Some(min_gap.map_or(*g, |m| m.min(*g)));
        }
    }
    let ms = |us: f64| us / 1e3;
    Ok(json!({
        "mode": "streams",
        "streams": results.len(),
        "failed": failed,
        "timed_out": timed_out,
        "wall_s": wall.as_secs_f64(),
        "frames": frames,
        "events": events,
        "expected_frames_per_stream": args.words + 6,
        "multi_event_frames": multi,
        "ttfb_p50_ms": ms(ttfb.quantile_us(0.5)),
        "ttfb_p99_ms": ms(ttfb.quantile_us(0.99)),
        "ttfb_max_ms": ttfb.max as f64 / 1e6,
        "gap_p50_ms": ms(gaps.quantile_us(0.5)),
        "gap_p01_ms": ms(gaps.quantile_us(0.01)),
        "gap_min_ms": min_gap.map_or(0.0, |g| g.as_secs_f64() * 1e3),
        "stream_p50_ms": ms(totals.quantile_us(0.5)),
    }))
}

async fn one_stream(target: Arc<Target>) -> StreamResult {
    let mut r = StreamResult {
        ttfb: None,
        total: Duration::ZERO,
        frames: 0,
        events: 0,
        multi_event_frames: 0,
        gaps: Vec::new(),
        ok: false,
    };
    let Ok(mut sender) = target.connect().await else {
        return r;
    };
    let Ok(req) = target.request() else {
        return r;
    };
    let sent = Instant::now();
    let Ok(rsp) = sender.send_request(req).await else {
        return r;
    };
    if !rsp.status().is_success() {
        return r;
    }
    let mut body = rsp.into_body();
    let mut last: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return r;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        match last {
            None => r.ttfb = Some(now - sent),
            Some(prev) => r.gaps.push(now - prev),
        }
        last = Some(now);
        r.frames += 1;
        let n = count_events(data);
        r.events += n;
        r.multi_event_frames += u64::from(n > 1);
    }
    r.total = sent.elapsed();
    r.ok = true;
    r
}

/// SSE events end with a blank line.
fn count_events(data: &[u8]) -> u64 {
    data.windows(2).filter(|w| w == b"\n\n").count() as u64
}

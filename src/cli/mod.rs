//! `llm-tracer export`, `llm-tracer import` and `llm-tracer migrate` (in `migrate`): spans to and from files (jsonl of our spans, or
//! OTLP/JSON lines), either on the store directly or through a running server's admin API.
//!
//! sled holds an exclusive lock on the data dir while `serve` runs. Without `--admin`, both
//! commands open the store themselves and, when it is locked, stop with an error naming the lock
//! and the two ways out (stop the server, or pass `--admin URL`). With `--admin URL` they never
//! touch the data dir: export pages through `GET /api/traces`, import posts `POST /api/spans`.

mod admin;
mod compact;
mod migrate;
mod progress;

use std::{
    io::{BufRead, BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, ValueEnum};
use serde_json::Value;

pub use self::compact::{compact, CompactArgs};
pub use self::migrate::{migrate, MigrateArgs};
use self::{admin::AdminClient, progress::Progress};
use crate::{
    config,
    otlp::{decode, encode, ingest},
    span::{is_valid_id, Span, Timestamp},
    store::{Cursor, Store, StoreError, StoreOptions, TraceQuery},
};

/// Spans per store write / per `POST /api/spans` on import.
const IMPORT_BATCH: usize = 500;
/// Traces per listing page on export.
const PAGE: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One span per line, as the API returns it.
    Jsonl,
    /// One OTLP/JSON ExportTraceServiceRequest per line (one trace each), as the
    /// OpenTelemetry Collector's file exporter writes them.
    OtlpJson,
}

#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// TOML config file (its data_dir is read). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store directory (default ./llm-tracer-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Traces that started at or after this time (RFC 3339 or unix milliseconds).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Traces that started before this time (RFC 3339 or unix milliseconds).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Output file (default: standard output).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Read from a running server's admin API (e.g. http://127.0.0.1:8081) instead of the
    /// data dir.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Bearer token for --admin. Env: LLM_TRACER_ADMIN_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
}

#[derive(Args, Clone, Debug)]
pub struct ImportArgs {
    /// A file written by `export` (jsonl or OTLP/JSON lines; `-` reads standard input).
    pub file: PathBuf,
    /// TOML config file (its data_dir is written). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store directory (default ./llm-tracer-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Write through a running server's admin API (e.g. http://127.0.0.1:8081) instead of the
    /// data dir.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Bearer token for --admin. Env: LLM_TRACER_ADMIN_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
}

/// A fatal problem: printed as `error: …`, exit 2.
struct Fatal(String);

impl From<StoreError> for Fatal {
    fn from(e: StoreError) -> Self {
        Fatal(e.to_string())
    }
}

impl From<std::io::Error> for Fatal {
    fn from(e: std::io::Error) -> Self {
        Fatal(e.to_string())
    }
}

pub async fn export(args: &ExportArgs) -> ExitCode {
    match run_export(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

pub async fn import(args: &ImportArgs) -> ExitCode {
    match run_import(args).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(Fatal(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

// === export ===

async fn run_export(args: &ExportArgs) -> Result<(), Fatal> {
    let since = parse_time("--since", args.since.as_deref())?;
    let until = parse_time("--until", args.until.as_deref())?;
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| Fatal(format!("--out: cannot create {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let mut progress = Progress::new("exported");
    let mut write_trace =
        |spans: Vec<Span>, out: &mut BufWriter<Box<dyn Write>>| -> Result<(), Fatal> {
            match args.format {
                Format::Jsonl => {
                    for span in &spans {
                        serde_json::to_writer(&mut *out, span).map_err(|e| Fatal(e.to_string()))?;
                        out.write_all(b"\n")?;
                    }
                }
                Format::OtlpJson => {
                    let req = encode::request(&spans, crate::otlp::DEFAULT_SERVICE_NAME);
                    serde_json::to_writer(&mut *out, &req).map_err(|e| Fatal(e.to_string()))?;
                    out.write_all(b"\n")?;
                }
            }
            progress.add(spans.len() as u64, 1);
            Ok(())
        };
    match &args.admin {
        Some(url) => {
            let client = AdminClient::new(url, args.admin_token.clone())?;
            let mut cursor: Option<String> = None;
            loop {
                let page = client
                    .list_traces(
                        PAGE,
                        args.since.as_deref(),
                        args.until.as_deref(),
                        cursor.as_deref(),
                    )
                    .await?;
                for id in page.trace_ids {
                    if let Some(spans) = client.get_trace(&id).await? {
                        write_trace(spans, &mut out)?;
                    }
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        None => {
            let store = open_store(args.config.as_ref(), args.data_dir.as_ref(), false)?;
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = store.list_traces(&TraceQuery {
                    limit: PAGE,
                    cursor: cursor.take(),
                    since,
                    until,
                    ..TraceQuery::default()
                })?;
                for t in page.traces {
                    if let Some((_, spans)) = store.get_trace(&t.trace_id)? {
                        write_trace(spans, &mut out)?;
                    }
                }
                match page.next_cursor.as_deref().and_then(Cursor::decode) {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    out.flush()?;
    let target = args
        .out
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    progress.finish(&format!("to {target}"));
    Ok(())
}

// === import ===

/// Returns how many lines or spans were refused.
async fn run_import(args: &ImportArgs) -> Result<u64, Fatal> {
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.file)
            .map_err(|e| Fatal(format!("cannot read {}: {e}", args.file.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let target = match &args.admin {
        Some(url) => Target::Admin(Box::new(AdminClient::new(url, args.admin_token.clone())?)),
        None => Target::Store(open_store(
            args.config.as_ref(),
            args.data_dir.as_ref(),
            true,
        )?),
    };
    let mut progress = Progress::new("imported");
    let mut refused: u64 = 0;
    let mut batch: Vec<Span> = Vec::with_capacity(IMPORT_BATCH);
    let mut traces = std::collections::HashSet::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Fatal(format!("{}: line {n}: {e}", args.file.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok((spans, rejected)) => {
                if rejected > 0 {
                    refused += rejected;
                    eprintln!("line {n}: {rejected} OTLP spans refused (invalid ids or times)");
                }
                batch.extend(spans);
            }
            Err(e) => {
                refused += 1;
                eprintln!("line {n}: {e}");
            }
        }
        if batch.len() >= IMPORT_BATCH {
            flush(&target, &mut batch, &mut traces, &mut progress).await?;
        }
    }
    flush(&target, &mut batch, &mut traces, &mut progress).await?;
    if let Target::Store(store) = &target {
        store.flush()?;
    }
    let from = format!("from {}", args.file.display());
    progress.finish(&if refused > 0 {
        format!("{from}; {refused} refused")
    } else {
        from
    });
    Ok(refused)
}

enum Target {
    Store(Store),
    Admin(Box<AdminClient>),
}

async fn flush(
    target: &Target,
    batch: &mut Vec<Span>,
    traces: &mut std::collections::HashSet<String>,
    progress: &mut Progress,
) -> Result<(), Fatal> {
    if batch.is_empty() {
        return Ok(());
    }
    match target {
        Target::Store(store) => store.put_spans(batch)?,
        Target::Admin(client) => client.post_spans(batch).await?,
    }
    let before = traces.len();
    for s in batch.iter() {
        traces.insert(s.trace_id.clone());
    }
    progress.add(batch.len() as u64, (traces.len() - before) as u64);
    batch.clear();
    Ok(())
}

/// One line: an OTLP/JSON request (detected by `resourceSpans`) or one of our spans.
/// Returns the spans and how many OTLP spans were refused.
fn parse_line(line: &str) -> Result<(Vec<Span>, u64), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("resourceSpans").is_some() {
        let req = ingest::parse_json(line.as_bytes())?;
        let d = decode::request(req);
        return Ok((d.spans, d.rejected));
    }
    let span: Span = serde_json::from_value(value).map_err(|e| format!("not a span: {e}"))?;
    for (field, id) in [
        ("trace_id", Some(&span.trace_id)),
        ("span_id", Some(&span.span_id)),
        ("parent_span_id", span.parent_span_id.as_ref()),
    ] {
        if let Some(id) = id {
            if !is_valid_id(id) {
                return Err(format!(
                    "{field}: must be 1-128 characters of A-Z a-z 0-9 . _ : -"
                ));
            }
        }
    }
    Ok((vec![span], 0))
}

// === shared ===

fn parse_time(flag: &str, v: Option<&str>) -> Result<Option<Timestamp>, Fatal> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Some(Timestamp::from_unix_millis(ms)));
    }
    Timestamp::parse_rfc3339(v).map(Some).ok_or_else(|| {
        Fatal(format!(
            "{flag}: {v:?} is neither RFC 3339 nor unix milliseconds"
        ))
    })
}

/// Opens the store named by `--config`/`--data-dir`. A store in use by a running server is
/// reported as such, with the ways out.
fn open_store(
    file: Option<&PathBuf>,
    data_dir: Option<&String>,
    create: bool,
) -> Result<Store, Fatal> {
    let SledDir { dir, opts, .. } = sled_dir(
        file,
        data_dir,
        "this config uses \"clickhouse\"; without --admin, export and import read and write a \
         sled data dir. Go through a running server with --admin http://ADMIN_ADDR, or pass \
         --data-dir for a sled store",
    )?;
    if !create && !dir.is_dir() {
        return Err(Fatal(format!(
            "data_dir: {} is not a directory (nothing to export)",
            dir.display()
        )));
    }
    Store::open(&dir, &opts).map_err(|e| {
        locked_or(
            e,
            &dir,
            "Stop the server, or go through it with --admin http://ADMIN_ADDR",
        )
    })
}

/// A CLI command's view of the sled store in the config: where it is, how to open it, and how
/// much free space its filesystem must keep (`store_min_free_bytes`).
struct SledDir {
    dir: PathBuf,
    opts: StoreOptions,
    min_free_bytes: u64,
}

/// The sled data dir of the config (`file`, overridden by `data_dir`). A ClickHouse config
/// without `--data-dir` is an error: `clickhouse` says why and what to do instead.
fn sled_dir(
    file: Option<&PathBuf>,
    data_dir: Option<&String>,
    clickhouse: &str,
) -> Result<SledDir, Fatal> {
    let flags = config::Flags {
        data_dir: data_dir.cloned(),
        ..config::Flags::default()
    };
    let config = config::load_for_process(file.map(PathBuf::as_path), &flags)
        .map_err(|e| Fatal(e.to_string()))?;
    if config.store_backend == config::StoreBackend::Clickhouse && data_dir.is_none() {
        return Err(Fatal(format!("store.backend: {clickhouse}")));
    }
    Ok(SledDir {
        opts: StoreOptions {
            cache_capacity: config.cache_capacity_bytes,
            flush_every_ms: None,
        },
        min_free_bytes: config.store_min_free_bytes,
        dir: config.data_dir,
    })
}

/// A store that would not open: a lock held by a running server is named as such, with
/// `way_out`.
fn locked_or(e: StoreError, dir: &std::path::Path, way_out: &str) -> Fatal {
    let text = e.to_string();
    if text.contains("could not acquire lock") {
        Fatal(format!(
            "data_dir: {} is locked: sled holds an exclusive lock on it while `llm-tracer serve` \
             runs. {way_out}",
            dir.display()
        ))
    } else {
        Fatal(text)
    }
}

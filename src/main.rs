//! `llm-tracer serve | demo | check | export | import | migrate | compact`: CLI → config → app. Start-up
//! errors print the key and exit 2. `check` verifies the sled store: exit 0 clean, 1 with
//! problems, 2 when it cannot run (or the config uses ClickHouse, which has nothing to check here).

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use llm_tracer::{app, cli, config, demo, store};

#[derive(Parser)]
#[command(
    name = "llm-tracer",
    version,
    about = "Capturing reverse proxy for OpenAI-compatible LLM endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and the admin API/UI.
    Serve(ServeArgs),
    /// Run the server with a built-in mock upstream and a burst of sample traffic.
    Demo(ServeArgs),
    /// Verify the store's integrity (indexes, spans, summaries); exit 0 clean, 1 problems, 2 error.
    /// The server must be stopped: the store is opened exclusively.
    Check(CheckArgs),
    /// Write stored spans to a file (jsonl of our spans, or OTLP/JSON lines). Reads the store
    /// directly (stop the server first), or a running server's admin API with --admin URL.
    Export(cli::ExportArgs),
    /// Load spans from a file written by `export` (jsonl or OTLP/JSON lines, detected per line).
    /// Writes the store directly (stop the server first), or through --admin URL.
    Import(cli::ImportArgs),
    /// Copy a sled store into ClickHouse: `migrate --from sled --to clickhouse`. Stop the server
    /// that uses the sled store first (sled locks its directory). Safe to run again.
    Migrate(cli::MigrateArgs),
    /// Rewrite the sled store with only its live records, so its files shrink back (they grow
    /// to 10-15x the live data under retention). The server must be stopped.
    Compact(cli::CompactArgs),
}

#[derive(Args, Clone)]
struct CheckArgs {
    /// TOML config file (its data_dir is checked). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Store directory (default ./llm-tracer-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Every config key has a flag; each overrides LLM_TRACER_<KEY> and the config file.
#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML config file (see config/llm-tracer.toml). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Proxy listener address (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listener address: API, UI, metrics (default 127.0.0.1:8081).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Store directory (default ./llm-tracer-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Upstream of the "/" route (default https://api.openai.com).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Extra PEM CA bundle trusted for https upstreams.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
    /// Forward only; record nothing.
    #[arg(long)]
    no_capture: bool,
    /// Most bytes kept per captured body (default 10485760).
    #[arg(long, value_name = "N")]
    max_capture_bytes: Option<String>,
    /// Captured bytes all in-flight calls may hold together (default 33554432).
    #[arg(long, value_name = "N")]
    capture_budget_bytes: Option<String>,
    /// Capture queue capacity (default 10000).
    #[arg(long, value_name = "N")]
    queue_capacity: Option<String>,
    /// Most bytes of captured calls waiting on disk for the writer; 0 = no spool (default 1073741824).
    #[arg(long, value_name = "BYTES")]
    spool_max_bytes: Option<String>,
    /// Spans per store write (default 512).
    #[arg(long, value_name = "N")]
    batch_size: Option<String>,
    /// Longest wait to fill a batch (default 50).
    #[arg(long, value_name = "MS")]
    batch_interval_ms: Option<String>,
    /// Upstream connect timeout (default 10000).
    #[arg(long, value_name = "MS")]
    connect_timeout_ms: Option<String>,
    /// Upstream response-head timeout (default 600000).
    #[arg(long, value_name = "MS")]
    response_header_timeout_ms: Option<String>,
    /// End a response whose upstream sends nothing for this long mid-body; 0 = never
    /// (default 300000).
    #[arg(long, value_name = "MS")]
    idle_stream_timeout_ms: Option<String>,
    /// PEM certificate chain: the proxy listener serves TLS (with --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// PEM certificate chain: the admin listener serves TLS (with --admin-tls-key).
    #[arg(long, value_name = "FILE")]
    admin_tls_cert: Option<String>,
    /// PEM private key for --admin-tls-cert.
    #[arg(long, value_name = "FILE")]
    admin_tls_key: Option<String>,
    /// Connections each listener serves at once; more wait to be accepted (default 4096).
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// A client gets this long to send its request head (default 30000).
    #[arg(long, value_name = "MS")]
    header_read_timeout_ms: Option<String>,
    /// DANGEROUS: accept any certificate from the "/" route's https upstream.
    #[arg(long)]
    insecure_skip_verify: bool,
    /// Grace period for in-flight calls at shutdown (default 30000).
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<String>,
    /// Store fsync interval; 0 = only at shutdown (default 500).
    #[arg(long, value_name = "MS")]
    flush_every_ms: Option<String>,
    /// Store page cache (default 8388608).
    #[arg(long, value_name = "BYTES")]
    cache_capacity_bytes: Option<String>,
    /// Store writes pause below this much free disk for data_dir; 0 = never (default 67108864).
    #[arg(long, value_name = "BYTES")]
    store_min_free_bytes: Option<String>,
    /// Store backend: sled (default, embedded) or clickhouse (shared by many instances).
    #[arg(long, value_name = "NAME")]
    store_backend: Option<String>,
    /// ClickHouse HTTP interface (default http://127.0.0.1:8123). Credentials only from env
    /// LLM_TRACER_CLICKHOUSE_USER / LLM_TRACER_CLICKHOUSE_PASSWORD.
    #[arg(long, value_name = "URL")]
    clickhouse_url: Option<String>,
    /// ClickHouse database, created if missing (default llm_tracer).
    #[arg(long, value_name = "NAME")]
    clickhouse_database: Option<String>,
    /// Spans the ClickHouse writer holds while ClickHouse is down or slow; beyond it new spans
    /// are dropped and counted (default 100000).
    #[arg(long, value_name = "N")]
    clickhouse_buffer_spans: Option<String>,
    /// Keep embedding vectors in spans (default: only their count and dimensions).
    #[arg(long)]
    capture_embeddings: bool,
    /// TOML price list ([pricing."model-pattern"] tables) that extends the built-in one.
    #[arg(long, value_name = "FILE")]
    pricing_file: Option<String>,
    /// Bearer token for the admin API (required when --admin-listen is not loopback). Prefer
    /// LLM_TRACER_ADMIN_TOKEN: a flag is visible to other users in `ps`.
    #[arg(long, value_name = "TOKEN")]
    admin_token: Option<String>,
    /// Delete traces older than this many days; 0 = keep forever (default 0).
    #[arg(long, value_name = "DAYS")]
    retention_days: Option<String>,
    /// Delete the oldest traces to keep the store under this size; 0 = unlimited (default 0).
    #[arg(long, value_name = "BYTES")]
    max_store_bytes: Option<String>,
    /// How often retention runs (default 60000).
    #[arg(long, value_name = "MS")]
    retention_interval_ms: Option<String>,
    /// Extra credential header names, comma-separated (never stored or logged).
    #[arg(long, value_name = "NAMES")]
    redact_headers: Option<String>,
    /// Export every stored span to this OpenTelemetry collector (OTLP/HTTP base URL, e.g.
    /// http://127.0.0.1:4318; spans go to {URL}/v1/traces).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP wire format: http/protobuf (default) or http/json.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
    /// Extra OTLP request headers, `key=value,key2=value2` (prefer LLM_TRACER_OTLP_HEADERS).
    #[arg(long, value_name = "HEADERS")]
    otlp_headers: Option<String>,
    /// Most spans per OTLP request (default 512).
    #[arg(long, value_name = "N")]
    otlp_batch_size: Option<String>,
    /// Longest wait before a partial OTLP batch is sent (default 1000).
    #[arg(long, value_name = "MS")]
    otlp_interval_ms: Option<String>,
    /// Spans buffered while the collector is down; beyond it new spans are dropped and
    /// counted (default 10000).
    #[arg(long, value_name = "N")]
    otlp_max_buffer_spans: Option<String>,
}

impl ServeArgs {
    fn flags(&self) -> config::Flags {
        config::Flags {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            data_dir: self.data_dir.clone(),
            upstream: self.upstream.clone(),
            ca_file: self.ca_file.clone(),
            capture: self.no_capture.then(|| "false".to_string()),
            max_capture_bytes: self.max_capture_bytes.clone(),
            capture_budget_bytes: self.capture_budget_bytes.clone(),
            queue_capacity: self.queue_capacity.clone(),
            spool_max_bytes: self.spool_max_bytes.clone(),
            batch_size: self.batch_size.clone(),
            batch_interval_ms: self.batch_interval_ms.clone(),
            connect_timeout_ms: self.connect_timeout_ms.clone(),
            response_header_timeout_ms: self.response_header_timeout_ms.clone(),
            idle_stream_timeout_ms: self.idle_stream_timeout_ms.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            admin_tls_cert: self.admin_tls_cert.clone(),
            admin_tls_key: self.admin_tls_key.clone(),
            max_connections: self.max_connections.clone(),
            header_read_timeout_ms: self.header_read_timeout_ms.clone(),
            insecure_skip_verify: self.insecure_skip_verify.then(|| "true".to_string()),
            shutdown_timeout_ms: self.shutdown_timeout_ms.clone(),
            flush_every_ms: self.flush_every_ms.clone(),
            cache_capacity_bytes: self.cache_capacity_bytes.clone(),
            store_min_free_bytes: self.store_min_free_bytes.clone(),
            store_backend: self.store_backend.clone(),
            clickhouse_url: self.clickhouse_url.clone(),
            clickhouse_database: self.clickhouse_database.clone(),
            clickhouse_buffer_spans: self.clickhouse_buffer_spans.clone(),
            capture_embeddings: self.capture_embeddings.then(|| "true".to_string()),
            pricing_file: self.pricing_file.clone(),
            admin_token: self.admin_token.clone(),
            retention_days: self.retention_days.clone(),
            max_store_bytes: self.max_store_bytes.clone(),
            retention_interval_ms: self.retention_interval_ms.clone(),
            redact_headers: self.redact_headers.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol.clone(),
            otlp_headers: self.otlp_headers.clone(),
            otlp_batch_size: self.otlp_batch_size.clone(),
            otlp_interval_ms: self.otlp_interval_ms.clone(),
            otlp_max_buffer_spans: self.otlp_max_buffer_spans.clone(),
        }
    }

    fn load(&self) -> Result<config::Config, llm_tracer::error::ConfigError> {
        config::load_for_process(self.config.as_deref(), &self.flags())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        let (args, is_demo) = match &cli.command {
            Command::Serve(a) => (a, false),
            Command::Demo(a) => (a, true),
            Command::Check(a) => return check(a),
            Command::Export(a) => return cli::export(a).await,
            Command::Import(a) => return cli::import(a).await,
            Command::Migrate(a) => return cli::migrate(a).await,
            Command::Compact(a) => return cli::compact(a),
        };
        let env_names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
        if let Err(e) = config::check_env_names(env_names) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        let config = match args.load() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let started = if is_demo {
            demo::start(config).await
        } else {
            app::start(config).await
        };
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        wait_for_signal().await;
        tracing::info!("signal received");
        running.shutdown().await;
        ExitCode::SUCCESS
    });
    // Bounded: a store call stuck in the blocking pool (sled can block for good on a full
    // disk) must not keep the process from exiting; shutdown has already logged what was lost.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// `llm-tracer check`: opens the store (exclusively, so a running server makes it exit 2) and
/// prints what [`llm_tracer::store::Store::check`] found.
fn check(args: &CheckArgs) -> ExitCode {
    use std::io::Write;
    let env_names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    if let Err(e) = config::check_env_names(env_names) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let flags = config::Flags {
        data_dir: args.data_dir.clone(),
        ..config::Flags::default()
    };
    let config = match config::load_for_process(args.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if config.store_backend == config::StoreBackend::Clickhouse && args.data_dir.is_none() {
        eprintln!(
            "error: store.backend: `check` verifies the embedded sled store's indexes; with \
             \"clickhouse\" there are none to verify (trace summaries are computed by SQL at \
             query time). Ask ClickHouse itself (`CHECK TABLE {}.spans`) and GET /healthz; \
             pass --data-dir to check a sled store anyway.",
            config.clickhouse_database
        );
        return ExitCode::from(2);
    }
    if !config.data_dir.is_dir() {
        eprintln!(
            "error: data_dir: {} is not a directory (nothing to check)",
            config.data_dir.display()
        );
        return ExitCode::from(2);
    }
    let opts = store::StoreOptions {
        cache_capacity: config.cache_capacity_bytes,
        flush_every_ms: None,
    };
    let report = match store::Store::open(&config.data_dir, &opts).and_then(|s| s.check()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|j| writeln!(out, "{j}"))
    } else {
        write_report(&mut out, &config.data_dir, &report)
    };
    if let Err(e) = written {
        eprintln!("error: cannot write the report: {e}");
        return ExitCode::from(2);
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn write_report(
    out: &mut impl std::io::Write,
    dir: &std::path::Path,
    r: &store::CheckReport,
) -> std::io::Result<()> {
    writeln!(out, "store {}", dir.display())?;
    writeln!(
        out,
        "  {} traces, {} spans, {} summaries, {} span-id records, {} call records, \
         {} time-index and {} secondary-index entries, {} full-text postings \
         ({} posting edits waiting in the journal)",
        r.traces,
        r.spans,
        r.summaries,
        r.span_ids,
        r.calls,
        r.time_index,
        r.secondary_index,
        r.postings,
        r.journal_edits
    )?;
    for p in &r.problems {
        writeln!(out, "problem: {p}")?;
    }
    if r.is_clean() {
        writeln!(out, "clean: indexes, spans and summaries agree")
    } else {
        let unlisted = r.problem_count.saturating_sub(r.problems.len() as u64);
        if unlisted > 0 {
            writeln!(out, "… and {unlisted} more")?;
        }
        writeln!(out, "{} problems", r.problem_count)
    }
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

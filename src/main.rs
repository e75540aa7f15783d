//! `llm-tracer serve | demo`: CLI → config → app. Start-up errors print the key and exit 2.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use llm_tracer::{app, config, demo};

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
    /// Capture queue capacity (default 10000).
    #[arg(long, value_name = "N")]
    queue_capacity: Option<String>,
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
    /// Grace period for in-flight calls at shutdown (default 30000).
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<String>,
    /// Store fsync interval; 0 = only at shutdown (default 500).
    #[arg(long, value_name = "MS")]
    flush_every_ms: Option<String>,
    /// Store page cache (default 67108864).
    #[arg(long, value_name = "BYTES")]
    cache_capacity_bytes: Option<String>,
    /// Store backend: sled (default).
    #[arg(long, value_name = "NAME")]
    store_backend: Option<String>,
    /// Keep embedding vectors in spans (default: only their count and dimensions).
    #[arg(long)]
    capture_embeddings: bool,
    /// TOML price list ([pricing."model-pattern"] tables) that extends the built-in one.
    #[arg(long, value_name = "FILE")]
    pricing_file: Option<String>,
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
            queue_capacity: self.queue_capacity.clone(),
            batch_size: self.batch_size.clone(),
            batch_interval_ms: self.batch_interval_ms.clone(),
            connect_timeout_ms: self.connect_timeout_ms.clone(),
            response_header_timeout_ms: self.response_header_timeout_ms.clone(),
            shutdown_timeout_ms: self.shutdown_timeout_ms.clone(),
            flush_every_ms: self.flush_every_ms.clone(),
            cache_capacity_bytes: self.cache_capacity_bytes.clone(),
            store_backend: self.store_backend.clone(),
            capture_embeddings: self.capture_embeddings.then(|| "true".to_string()),
            pricing_file: self.pricing_file.clone(),
        }
    }

    fn load(&self) -> Result<config::Config, llm_tracer::error::ConfigError> {
        let file = self
            .config
            .clone()
            .or_else(|| config::process_env("LLM_TRACER_CONFIG").map(PathBuf::from));
        config::load(file.as_deref(), &self.flags(), &config::process_env)
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
    runtime.block_on(async {
        let (args, is_demo) = match &cli.command {
            Command::Serve(a) => (a, false),
            Command::Demo(a) => (a, true),
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
    })
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

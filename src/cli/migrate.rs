//! `llm-tracer migrate --from sled --to clickhouse`: copies every trace of a sled store into
//! ClickHouse with [`copy_from_sled`] (safe to run again: re-inserted spans replace themselves).
//! The sled store is opened exclusively, so a running `serve` on it stops this with a clear
//! error; ClickHouse must be reachable (its schema is created or migrated first).

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, ValueEnum};

use super::{progress::Progress, Fatal};
use crate::{
    clickhouse::{copy_from_sled, ClickHouseOptions, ClickHouseStore},
    config,
    store::{Store, StoreOptions},
};

/// Spans per ClickHouse insert.
const BATCH_SPANS: usize = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum From {
    Sled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum To {
    Clickhouse,
}

#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    /// The store to read (only `sled`).
    #[arg(long, value_enum)]
    pub from: From,
    /// The store to write (only `clickhouse`).
    #[arg(long, value_enum)]
    pub to: To,
    /// TOML config file (its data_dir and [store] clickhouse_* keys). Env: LLM_TRACER_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// sled store directory (default ./llm-tracer-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// ClickHouse HTTP interface (default http://127.0.0.1:8123). Credentials only from env
    /// LLM_TRACER_CLICKHOUSE_USER / LLM_TRACER_CLICKHOUSE_PASSWORD.
    #[arg(long, value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database, created if missing (default llm_tracer).
    #[arg(long, value_name = "NAME")]
    pub clickhouse_database: Option<String>,
}

pub async fn migrate(args: &MigrateArgs) -> ExitCode {
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &MigrateArgs) -> Result<(), Fatal> {
    let (From::Sled, To::Clickhouse) = (args.from, args.to);
    let flags = config::Flags {
        data_dir: args.data_dir.clone(),
        clickhouse_url: args.clickhouse_url.clone(),
        clickhouse_database: args.clickhouse_database.clone(),
        ..config::Flags::default()
    };
    let config = config::load_for_process(args.config.as_deref(), &flags)
        .map_err(|e| Fatal(e.to_string()))?;
    let dir = config.data_dir.clone();
    if !dir.is_dir() {
        return Err(Fatal(format!(
            "data_dir: {} is not a directory (no sled store to migrate)",
            dir.display()
        )));
    }
    let opts = StoreOptions {
        cache_capacity: config.cache_capacity_bytes,
        flush_every_ms: None,
    };
    let open_dir = dir.clone();
    let sled = tokio::task::spawn_blocking(move || Store::open(&open_dir, &opts))
        .await
        .map_err(|e| Fatal(format!("store open task failed: {e}")))?
        .map_err(|e| {
            super::locked_or(
                e,
                &dir,
                "Stop it, then migrate; start it again with [store] backend = \"clickhouse\".",
            )
        })?;
    let ch_opts = ClickHouseOptions::new(&config.clickhouse_url, &config.clickhouse_database);
    let target = ClickHouseStore::open(&ch_opts).await.map_err(|e| {
        Fatal(format!(
            "store.clickhouse_url: {} (database {}): {e}",
            config.clickhouse_url, config.clickhouse_database
        ))
    })?;
    let mut progress = Progress::new("migrated");
    let mut last = (0u64, 0u64);
    let copied = copy_from_sled(&sled, &target, BATCH_SPANS, |r| {
        progress.add(r.spans - last.0, r.traces - last.1);
        last = (r.spans, r.traces);
    })
    .await
    .map_err(|e| Fatal(e.to_string()))?;
    progress.finish(&format!(
        "from {} to {} database {}",
        dir.display(),
        config.clickhouse_url,
        config.clickhouse_database
    ));
    debug_assert_eq!((copied.spans, copied.traces), last);
    Ok(())
}

//! ClickHouse: the shared, scale-out store backend (many llm-tracer instances, one ClickHouse).
//! The only module that speaks to ClickHouse.
//!
//! [`ClickHouseStore`] mirrors the sled [`crate::store::Store`]'s query API and returns the same
//! types, so the admin API can sit on either. Differences: its calls are `async` (network), its
//! errors are [`ClickHouseError`], and it never reads-then-writes: trace summaries are computed
//! at query time from the spans (`GROUP BY trace_id`), so spans of one trace written by several
//! instances, late or out of order, give one correct summary, and a re-sent span replaces
//! itself (ReplacingMergeTree + `FINAL`) instead of counting twice.
//!
//! - `client`: HTTP transport; `sql`: literal escaping (the only way values enter SQL);
//!   `schema`: migrations; `row`: span → row; `query`: the reads; `write`: the buffered,
//!   retrying, fail-open writer; `preview`: the summary's per-span values.
//!
//! The server reaches it through `crate::backend` (one interface over sled and ClickHouse).

mod client;
mod copy;
mod query;
mod retention;
mod row;
mod schema;
mod sessions;
pub mod sql;
mod write;

use std::time::Duration;

use bytes::Bytes;

pub use self::client::{ClickHouseClient, PASSWORD_ENV, USER_ENV};
pub use self::copy::{copy_from_sled, CopyError, CopyReport};
pub use self::schema::SCHEMA_VERSION;
pub use self::write::{ClickHouseWriter, WriterOptions, WriterStats};
use crate::span::{is_valid_id, Span, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("clickhouse: {0}")]
    Config(String),
    #[error("clickhouse: unavailable: {0}")]
    Unavailable(String),
    #[error("clickhouse: server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("clickhouse: cannot decode the answer: {0}")]
    Decode(String),
    #[error(
        "clickhouse: schema version {found} is newer than this binary understands ({supported})"
    )]
    Schema { found: u32, supported: u32 },
}

/// Where and how to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct ClickHouseOptions {
    /// `http://host:8123`.
    pub url: String,
    /// Created if missing; `[A-Za-z0-9_]` only.
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Per request.
    pub timeout: Duration,
}

impl ClickHouseOptions {
    /// `url` and `database`, credentials from the environment, 10 s timeout.
    pub fn new(url: &str, database: &str) -> ClickHouseOptions {
        let (user, password) = ClickHouseClient::credentials_from_env();
        ClickHouseOptions {
            url: url.to_string(),
            database: database.to_string(),
            user,
            password,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Handle to the ClickHouse store; cheap to clone.
#[derive(Clone, Debug)]
pub struct ClickHouseStore {
    client: ClickHouseClient,
    /// The quoted database name.
    db: String,
}

impl ClickHouseStore {
    /// Connects and runs the schema migrations (ClickHouse must be up).
    pub async fn open(opts: &ClickHouseOptions) -> Result<ClickHouseStore, ClickHouseError> {
        let store = Self::connect(opts)?;
        schema::migrate(&store.client, &opts.database).await?;
        Ok(store)
    }

    /// A handle without touching the server (no migrations): for a writer that must start
    /// while ClickHouse is down. Call [`ClickHouseStore::migrate`] once it is up.
    pub fn connect(opts: &ClickHouseOptions) -> Result<ClickHouseStore, ClickHouseError> {
        if !sql::is_identifier(&opts.database) {
            return Err(ClickHouseError::Config(format!(
                "clickhouse_database {:?}: use 1-64 chars of [A-Za-z0-9_], not starting with a digit",
                opts.database
            )));
        }
        let client = ClickHouseClient::new(
            &opts.url,
            opts.user.clone(),
            opts.password.clone(),
            opts.timeout,
        )?;
        Ok(ClickHouseStore {
            client,
            db: sql::ident(&opts.database),
        })
    }

    /// Runs the migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<u32>, ClickHouseError> {
        let name = self.db.trim_matches('`').to_string();
        schema::migrate(&self.client, &name).await
    }

    /// `SELECT 1` answered.
    pub async fn ping(&self) -> bool {
        self.client.query("SELECT 1").await.is_ok()
    }

    /// Bytes of this database's active parts on disk (for `/healthz` and `/metrics`).
    pub async fn size_on_disk(&self) -> Result<u64, ClickHouseError> {
        #[derive(serde::Deserialize)]
        struct Size {
            bytes: u64,
        }
        let name = sql::string(self.db.trim_matches('`'));
        let rows: Vec<Size> = self
            .select(&format!(
                "SELECT toUInt64(sum(bytes)) AS bytes FROM system.parts
                 WHERE database = {name} AND active FORMAT JSONEachRow"
            ))
            .await?;
        Ok(rows.first().map_or(0, |r| r.bytes))
    }

    /// Writes spans now, in one insert (the buffered path is [`ClickHouseWriter`]). Spans with
    /// an invalid trace or span id are skipped with a warning, as the sled store does.
    pub async fn put_spans(&self, spans: &[Span]) -> Result<(), ClickHouseError> {
        let rows = encode_rows(spans, Timestamp::now().micros());
        if rows.is_empty() {
            return Ok(());
        }
        self.insert_encoded(Bytes::from(rows.concat())).await
    }

    /// The JSONEachRow body [`ClickHouseStore::put_spans`] sends (for measuring the encoding
    /// apart from the insert).
    pub fn encode(spans: &[Span]) -> Bytes {
        Bytes::from(encode_rows(spans, Timestamp::now().micros()).concat())
    }

    /// Inserts rows made by [`ClickHouseStore::encode`] / [`encode_rows`].
    pub async fn insert_encoded(&self, rows: Bytes) -> Result<(), ClickHouseError> {
        self.client
            .insert_json_rows(&format!("{}.spans", self.db), rows)
            .await
    }
}

/// One JSONEachRow line (newline included) per valid span.
pub(crate) fn encode_rows(spans: &[Span], version: u64) -> Vec<String> {
    let mut out = Vec::with_capacity(spans.len());
    for span in spans {
        if !is_valid_id(&span.trace_id) || !is_valid_id(&span.span_id) {
            tracing::warn!(
                trace_id = span.trace_id,
                span_id = span.span_id,
                "clickhouse: span skipped, its trace or span id is not valid"
            );
            continue;
        }
        match row::SpanRow::of(span, version).and_then(|r| serde_json::to_string(&r)) {
            Ok(mut line) => {
                line.push('\n');
                out.push(line);
            }
            Err(e) => tracing::warn!(
                span_id = span.span_id,
                error = %e,
                "clickhouse: span skipped, it does not encode"
            ),
        }
    }
    out
}

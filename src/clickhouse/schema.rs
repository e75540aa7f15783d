//! Schema: versioned, idempotent migrations run at start, recorded in `schema_migrations`.
//!
//! Every statement is `CREATE … IF NOT EXISTS`, so two instances starting at once (or a crash
//! between a statement and its record) converge on the same schema. A database whose recorded
//! version is newer than this binary knows is refused rather than written with an old layout.
//!
//! Tables (timestamps are UInt64 microseconds, so old and new servers both work):
//! - `spans`: one row per span, `ReplacingMergeTree(version)` ordered by (trace_id, start_us,
//!   span_id): a trace's spans are one range read, and re-inserting a span (a retry after a
//!   timeout, or the same span through two instances) replaces instead of doubling — queries
//!   read it with `FINAL`. Partitioned by month of start, so retention can drop partitions.
//! - `trace_times` (start_us, trace_id), fed by a materialized view from `spans`: traces by
//!   time. A trace's start is its earliest span's start, and that span's row is here, so a time
//!   window or cursor on traces narrows to a time range of this table first.
//! - `span_locations` (span_id, trace_id), fed the same way: `GET /api/spans/{id}` in one
//!   primary-key read instead of a scan.

use super::{client::ClickHouseClient, sql, ClickHouseError};

/// One schema step: its statements, `{db}` standing for the quoted database.
struct Migration {
    version: u32,
    name: &'static str,
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "spans, trace_times, span_locations",
    statements: &[
        "CREATE TABLE IF NOT EXISTS {db}.spans (
            trace_id String,
            span_id String,
            start_us UInt64,
            end_us UInt64,
            has_parent UInt8,
            name String,
            kind String,
            status UInt8,
            is_call UInt8,
            is_llm UInt8,
            input_tokens UInt64,
            output_tokens UInt64,
            cost_pico Nullable(UInt64),
            model Nullable(String),
            tags Array(String),
            session_id Nullable(String),
            user_id Nullable(String),
            input_preview Nullable(String),
            output_preview Nullable(String),
            error_message Nullable(String),
            llm_output Nullable(String),
            latency_ms Float64,
            ttft_ms Nullable(Float64),
            span String,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(toDateTime(intDiv(start_us, 1000000)))
        ORDER BY (trace_id, start_us, span_id)",
        "CREATE TABLE IF NOT EXISTS {db}.trace_times (
            start_us UInt64,
            trace_id String
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(toDateTime(intDiv(start_us, 1000000)))
        ORDER BY (start_us, trace_id)",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_times_mv TO {db}.trace_times
        AS SELECT start_us, trace_id FROM {db}.spans",
        "CREATE TABLE IF NOT EXISTS {db}.span_locations (
            span_id String,
            trace_id String
        ) ENGINE = ReplacingMergeTree()
        ORDER BY (span_id, trace_id)",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_locations_mv TO {db}.span_locations
        AS SELECT span_id, trace_id FROM {db}.spans",
    ],
}];

/// The newest schema this binary writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Creates the database and brings its schema to [`SCHEMA_VERSION`]; returns the versions it
/// applied (empty when already current).
pub async fn migrate(
    client: &ClickHouseClient,
    database: &str,
) -> Result<Vec<u32>, ClickHouseError> {
    let db = sql::ident(database);
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
                version UInt32,
                name String,
                applied_us UInt64
            ) ENGINE = ReplacingMergeTree() ORDER BY version"
        ))
        .await?;
    let current = applied_version(client, &db).await?;
    if current > SCHEMA_VERSION {
        return Err(ClickHouseError::Schema {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        for statement in m.statements {
            client.query(&statement.replace("{db}", &db)).await?;
        }
        let record = serde_json::json!({
            "version": m.version,
            "name": m.name,
            "applied_us": crate::span::Timestamp::now().micros(),
        });
        client
            .insert_json_rows(
                &format!("{db}.schema_migrations"),
                bytes::Bytes::from(record.to_string()),
            )
            .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "clickhouse: migration applied"
        );
        applied.push(m.version);
    }
    Ok(applied)
}

/// The highest recorded migration, 0 for none.
async fn applied_version(client: &ClickHouseClient, db: &str) -> Result<u32, ClickHouseError> {
    let body = client
        .query(&format!(
            "SELECT max(version) AS v FROM {db}.schema_migrations FORMAT JSONEachRow"
        ))
        .await?;
    #[derive(serde::Deserialize)]
    struct Row {
        v: u32,
    }
    let text = String::from_utf8_lossy(&body);
    match text.lines().find(|l| !l.trim().is_empty()) {
        None => Ok(0),
        Some(line) => serde_json::from_str::<Row>(line)
            .map(|r| r.v)
            .map_err(|e| ClickHouseError::Decode(format!("schema_migrations: {e}: {line}"))),
    }
}

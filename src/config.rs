//! Config: defaults < TOML file < `LLM_TRACER_<KEY>` env vars < command-line flags, validated into
//! one [`Config`]. Unknown keys and bad values stop start-up with an error naming the key and
//! where the value came from. The only module that imports `toml`.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::error::ConfigError;
use crate::span::pricing::{Price, PriceTable};
use crate::span::redact::{JsonPath, Matcher, RedactRule, Redactor, DEFAULT_REPLACEMENT};

/// The built-in price list, compiled in; `pricing_file` and `[pricing."…"]` tables extend and
/// override it.
pub const BUILTIN_PRICING: &str = include_str!("../config/pricing.toml");

/// A validated route: requests whose path starts with `prefix` go to `upstream`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `/` or `/segment[/segment…]`, no trailing slash.
    pub prefix: String,
    pub upstream: http::Uri,
    pub strip_prefix: bool,
    /// Names the provider for spans (e.g. `anthropic`); detected from the path when absent.
    pub provider: Option<String>,
    /// Extra PEM CA bundle trusted for this route's https upstream (besides webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from this route's https upstream. Never the default; warned about
    /// at start-up.
    pub insecure_skip_verify: bool,
}

/// A listener's TLS material (PEM files), checked to exist; parsed by `listener`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The config keys, for start-up errors (`tls_cert` / `admin_tls_cert`, …).
    pub cert_key: &'static str,
    pub key_key: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Sled,
    /// The shared, scale-out store (`crate::clickhouse`, through `crate::backend`).
    Clickhouse,
}

/// Default `[store] clickhouse_url`.
pub const DEFAULT_CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";
/// Default `[store] clickhouse_database`.
pub const DEFAULT_CLICKHOUSE_DATABASE: &str = "llm_tracer";
/// Env vars with the ClickHouse credentials (never in the config file, never in a URL).
pub const CLICKHOUSE_CREDENTIAL_VARS: &[&str] = &[
    "LLM_TRACER_CLICKHOUSE_USER",
    "LLM_TRACER_CLICKHOUSE_PASSWORD",
];

/// Everything the process needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Longest prefix first (the route table relies on this order).
    pub routes: Vec<RouteConfig>,
    pub capture: bool,
    pub max_capture_bytes: usize,
    /// Captured bytes all in-flight calls may hold together (see `metrics::CaptureBudget`).
    pub capture_budget_bytes: usize,
    pub queue_capacity: usize,
    /// Most bytes of captured calls the disk spool holds (`<data_dir>/spool`); 0 = no spool.
    pub spool_max_bytes: u64,
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    /// End a response body whose upstream sends nothing for this long; `None` = never.
    pub idle_stream_timeout: Option<Duration>,
    /// TLS on the proxy listener (`tls_cert`/`tls_key`).
    pub tls: Option<TlsFiles>,
    /// TLS on the admin listener (`admin_tls_cert`/`admin_tls_key`).
    pub admin_tls: Option<TlsFiles>,
    /// Connections each listener serves at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A client gets this long to send its first bytes and each HTTP/1.1 request head
    /// (slow-loris guard; see `listener::first_bytes`).
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub flush_every_ms: Option<u64>,
    pub cache_capacity_bytes: u64,
    /// Store writes pause below this much free disk for `data_dir` (0 = never).
    pub store_min_free_bytes: u64,
    pub store_backend: StoreBackend,
    /// `[store] clickhouse_url`, used when `store_backend` is ClickHouse.
    pub clickhouse_url: String,
    /// `[store] clickhouse_database` (checked: `[A-Za-z0-9_]`, 1-64 chars).
    pub clickhouse_database: String,
    /// `[store] clickhouse_buffer_spans`: the ClickHouse writer's bound; beyond it spans are
    /// dropped and counted while ClickHouse is down or slow.
    pub clickhouse_buffer_spans: usize,
    /// Keep embedding vectors in spans (off: only their count and dimensions).
    pub capture_embeddings: bool,
    /// Model prices: built-in, then `pricing_file`, then the config file's `[pricing."…"]`.
    pub pricing: Arc<PriceTable>,
    /// Bearer token every admin route but `/healthz` and the static UI requires. Required when
    /// `admin_listen` is not a loopback address.
    pub admin_token: Option<AdminToken>,
    /// Delete traces that started longer ago than this; `None` = keep forever.
    pub retention: Option<Duration>,
    /// Keep the store's live data under this many bytes by deleting the oldest traces.
    pub max_store_bytes: Option<u64>,
    /// How often the retention task runs.
    pub retention_interval: Duration,
    /// Extra header names (lowercase) treated as credentials, besides the built-in list.
    /// Headers are not stored today; these are excluded from any header capture and from logs.
    pub redact_headers: Vec<String>,
    /// The `[[redact]]` body rules, applied before anything is stored.
    pub redactor: Arc<Redactor>,
    /// `[otlp]`: export every stored span to an OpenTelemetry collector; `None` = off.
    pub otlp: Option<crate::otlp::OtlpConfig>,
    /// Not a config key: a test hook that makes the first store open take at least this long
    /// (what recovering a large store does), to exercise serving while the store opens.
    pub store_open_delay: Duration,
}

/// The admin bearer token. `Debug` never shows it, so a logged `Config` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Default `store_min_free_bytes`: store writes pause with less than 64 MiB free.
pub const DEFAULT_STORE_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Default `spool_max_bytes`: 1 GiB of captured calls may wait on disk for the writer.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Shortest accepted `admin_token`: a guessable token is no access control.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Values given on the command line (each `None` when the flag was absent).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<String>,
    pub upstream: Option<String>,
    pub ca_file: Option<String>,
    /// `--no-capture` sets `Some("false")`.
    pub capture: Option<String>,
    pub max_capture_bytes: Option<String>,
    pub capture_budget_bytes: Option<String>,
    pub queue_capacity: Option<String>,
    pub spool_max_bytes: Option<String>,
    pub batch_size: Option<String>,
    pub batch_interval_ms: Option<String>,
    pub connect_timeout_ms: Option<String>,
    pub response_header_timeout_ms: Option<String>,
    pub idle_stream_timeout_ms: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub admin_tls_cert: Option<String>,
    pub admin_tls_key: Option<String>,
    pub max_connections: Option<String>,
    pub header_read_timeout_ms: Option<String>,
    /// `--insecure-skip-verify` sets `Some("true")` (the `/` route only).
    pub insecure_skip_verify: Option<String>,
    pub shutdown_timeout_ms: Option<String>,
    pub flush_every_ms: Option<String>,
    pub cache_capacity_bytes: Option<String>,
    pub store_min_free_bytes: Option<String>,
    pub store_backend: Option<String>,
    pub clickhouse_url: Option<String>,
    pub clickhouse_database: Option<String>,
    pub clickhouse_buffer_spans: Option<String>,
    /// `--capture-embeddings` sets `Some("true")`.
    pub capture_embeddings: Option<String>,
    pub pricing_file: Option<String>,
    pub admin_token: Option<String>,
    pub retention_days: Option<String>,
    pub max_store_bytes: Option<String>,
    pub retention_interval_ms: Option<String>,
    /// Comma-separated header names.
    pub redact_headers: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    /// `key=value,key2=value2`.
    pub otlp_headers: Option<String>,
    pub otlp_batch_size: Option<String>,
    pub otlp_interval_ms: Option<String>,
    pub otlp_max_buffer_spans: Option<String>,
}

/// Exactly what may appear in the TOML file. Unknown keys are errors, not silence.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<String>,
    upstream: Option<String>,
    ca_file: Option<String>,
    capture: Option<bool>,
    max_capture_bytes: Option<u64>,
    capture_budget_bytes: Option<u64>,
    queue_capacity: Option<u64>,
    spool_max_bytes: Option<u64>,
    batch_size: Option<u64>,
    batch_interval_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    response_header_timeout_ms: Option<u64>,
    idle_stream_timeout_ms: Option<u64>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    admin_tls_cert: Option<String>,
    admin_tls_key: Option<String>,
    max_connections: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    insecure_skip_verify: Option<bool>,
    shutdown_timeout_ms: Option<u64>,
    flush_every_ms: Option<u64>,
    cache_capacity_bytes: Option<u64>,
    store_min_free_bytes: Option<u64>,
    capture_embeddings: Option<bool>,
    pricing_file: Option<String>,
    admin_token: Option<String>,
    retention_days: Option<u64>,
    max_store_bytes: Option<u64>,
    retention_interval_ms: Option<u64>,
    redact_headers: Option<Vec<String>>,
    #[serde(default, rename = "redact")]
    redact: Vec<RedactFile>,
    /// `[pricing."model-pattern"]` tables.
    #[serde(default)]
    pricing: BTreeMap<String, PriceFile>,
    store: Option<StoreFile>,
    #[serde(default, rename = "route")]
    routes: Vec<RouteFile>,
    otlp: Option<OtlpFile>,
}

/// `[otlp]`: the OpenTelemetry exporter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpFile {
    endpoint: Option<String>,
    protocol: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    batch_size: Option<u64>,
    interval_ms: Option<u64>,
    max_buffer_spans: Option<u64>,
    timeout_ms: Option<u64>,
    service_name: Option<String>,
}

/// A price list (the built-in `config/pricing.toml`, or the user's `pricing_file`): only
/// `[pricing."model-pattern"]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    pricing: BTreeMap<String, PriceFile>,
}

/// One model pattern's prices, USD per 1M tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    cache_write_input: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    backend: Option<String>,
    clickhouse_url: Option<String>,
    clickhouse_database: Option<String>,
    clickhouse_buffer_spans: Option<u64>,
}

/// One `[[redact]]` rule: exactly one of `json_path` and `regex`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactFile {
    json_path: Option<String>,
    regex: Option<String>,
    replacement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    prefix: String,
    upstream: String,
    #[serde(default)]
    strip_prefix: bool,
    provider: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

pub const DEFAULT_UPSTREAM: &str = "https://api.openai.com";

/// Loads and validates the config. `env` looks up a variable (injectable for tests).
pub fn load(
    file: Option<&Path>,
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let raw = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        }
        None => FileConfig::default(),
    };
    let l = Layers {
        env,
        file_name: file.map(|p| p.display().to_string()),
    };

    let listen = l.pick("listen", &flags.listen, raw.listen, parse_addr)?;
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin_listen = l
        .pick(
            "admin_listen",
            &flags.admin_listen,
            raw.admin_listen,
            parse_addr,
        )?
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8081)));
    let data_dir = l
        .pick("data_dir", &flags.data_dir, raw.data_dir, |s| {
            if s.trim().is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(PathBuf::from(s))
            }
        })?
        .unwrap_or_else(|| PathBuf::from("./llm-tracer-data"));
    let upstream = l
        .pick("upstream", &flags.upstream, raw.upstream, parse_upstream)?
        .unwrap_or_else(|| http::Uri::from_static(DEFAULT_UPSTREAM));
    let ca_file = l.pick("ca_file", &flags.ca_file, raw.ca_file, parse_existing_file)?;
    let capture = l
        .pick(
            "capture",
            &flags.capture,
            raw.capture.map(|b| b.to_string()),
            parse_bool,
        )?
        .unwrap_or(true);
    let max_capture_bytes = l
        .pick_num(
            "max_capture_bytes",
            &flags.max_capture_bytes,
            raw.max_capture_bytes,
            0,
            1 << 32,
        )?
        .unwrap_or(10_485_760);
    // At least 64 KiB (a budget that small keeps almost nothing); at most 64 GiB.
    let capture_budget_bytes = l
        .pick_num(
            "capture_budget_bytes",
            &flags.capture_budget_bytes,
            raw.capture_budget_bytes,
            65_536,
            1 << 36,
        )?
        .unwrap_or(crate::metrics::DEFAULT_CAPTURE_BUDGET_BYTES as u64);
    let queue_capacity = l
        .pick_num(
            "queue_capacity",
            &flags.queue_capacity,
            raw.queue_capacity,
            1,
            10_000_000,
        )?
        .unwrap_or(10_000);
    // 0 turns the spool off; otherwise at least 1 MiB, at most 1 PiB.
    let spool_max_bytes = l
        .pick(
            "spool_max_bytes",
            &flags.spool_max_bytes,
            raw.spool_max_bytes.map(|n| n.to_string()),
            |s| {
                let n =
                    u64::from_str(s.trim()).map_err(|_| format!("{s:?} is not a whole number"))?;
                match n {
                    0 | 1_048_576..=1_125_899_906_842_624 => Ok(n),
                    _ => Err(format!(
                        "{n} is out of range: 0 (no spool) or 1048576 (1 MiB) ..= 1 PiB"
                    )),
                }
            },
        )?
        .unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
    let batch_size = l
        .pick_num("batch_size", &flags.batch_size, raw.batch_size, 1, 100_000)?
        .unwrap_or(512);
    let batch_interval_ms = l
        .pick_num(
            "batch_interval_ms",
            &flags.batch_interval_ms,
            raw.batch_interval_ms,
            0,
            60_000,
        )?
        .unwrap_or(50);
    let connect_timeout_ms = l
        .pick_num(
            "connect_timeout_ms",
            &flags.connect_timeout_ms,
            raw.connect_timeout_ms,
            1,
            600_000,
        )?
        .unwrap_or(10_000);
    let response_header_timeout_ms = l
        .pick_num(
            "response_header_timeout_ms",
            &flags.response_header_timeout_ms,
            raw.response_header_timeout_ms,
            1,
            3_600_000,
        )?
        .unwrap_or(600_000);
    let idle_stream_timeout_ms = l
        .pick_num(
            "idle_stream_timeout_ms",
            &flags.idle_stream_timeout_ms,
            raw.idle_stream_timeout_ms,
            0,
            86_400_000,
        )?
        .unwrap_or(300_000);
    let max_connections = l
        .pick_num(
            "max_connections",
            &flags.max_connections,
            raw.max_connections,
            1,
            1_000_000,
        )?
        .unwrap_or(4096);
    let header_read_timeout_ms = l
        .pick_num(
            "header_read_timeout_ms",
            &flags.header_read_timeout_ms,
            raw.header_read_timeout_ms,
            1,
            3_600_000,
        )?
        .unwrap_or(30_000);
    let tls = l.tls_pair(
        ("tls_cert", &flags.tls_cert, raw.tls_cert),
        ("tls_key", &flags.tls_key, raw.tls_key),
    )?;
    let admin_tls = l.tls_pair(
        ("admin_tls_cert", &flags.admin_tls_cert, raw.admin_tls_cert),
        ("admin_tls_key", &flags.admin_tls_key, raw.admin_tls_key),
    )?;
    let insecure_skip_verify = l
        .pick(
            "insecure_skip_verify",
            &flags.insecure_skip_verify,
            raw.insecure_skip_verify.map(|b| b.to_string()),
            parse_bool,
        )?
        .unwrap_or(false);
    let shutdown_timeout_ms = l
        .pick_num(
            "shutdown_timeout_ms",
            &flags.shutdown_timeout_ms,
            raw.shutdown_timeout_ms,
            0,
            3_600_000,
        )?
        .unwrap_or(30_000);
    // 0 = fsync only on explicit flush (batch end / shutdown); see README "Durability".
    let flush_every_ms = l
        .pick_num(
            "flush_every_ms",
            &flags.flush_every_ms,
            raw.flush_every_ms,
            0,
            3_600_000,
        )?
        .unwrap_or(500);
    let store_min_free_bytes = l
        .pick_num(
            "store_min_free_bytes",
            &flags.store_min_free_bytes,
            raw.store_min_free_bytes,
            0,
            1 << 50,
        )?
        .unwrap_or(DEFAULT_STORE_MIN_FREE_BYTES);
    let cache_capacity_bytes = l
        .pick_num(
            "cache_capacity_bytes",
            &flags.cache_capacity_bytes,
            raw.cache_capacity_bytes,
            1 << 20,
            1 << 40,
        )?
        .unwrap_or(crate::store::DEFAULT_CACHE_CAPACITY_BYTES);

    let capture_embeddings = l
        .pick(
            "capture_embeddings",
            &flags.capture_embeddings,
            raw.capture_embeddings.map(|b| b.to_string()),
            parse_bool,
        )?
        .unwrap_or(false);
    let pricing_file = l.pick(
        "pricing_file",
        &flags.pricing_file,
        raw.pricing_file,
        parse_existing_file,
    )?;
    let admin_token = l.pick(
        "admin_token",
        &flags.admin_token,
        raw.admin_token,
        parse_admin_token,
    )?;
    if admin_token.is_none() && !admin_listen.ip().is_loopback() {
        return Err(ConfigError::Invalid {
            key: "admin_token".to_string(),
            source_name: "admin_listen".to_string(),
            message: format!(
                "admin_listen {admin_listen} is not a loopback address, so admin_token is \
                 required (set --admin-token or LLM_TRACER_ADMIN_TOKEN), or bind admin_listen \
                 to 127.0.0.1"
            ),
        });
    }
    let retention_days = l
        .pick_num(
            "retention_days",
            &flags.retention_days,
            raw.retention_days,
            0,
            36_500,
        )?
        .unwrap_or(0);
    let max_store_bytes = l
        .pick_num(
            "max_store_bytes",
            &flags.max_store_bytes,
            raw.max_store_bytes,
            0,
            1 << 50,
        )?
        .unwrap_or(0);
    let retention_interval_ms = l
        .pick_num(
            "retention_interval_ms",
            &flags.retention_interval_ms,
            raw.retention_interval_ms,
            10,
            86_400_000,
        )?
        .unwrap_or(60_000);
    let redact_headers = l
        .pick(
            "redact_headers",
            &flags.redact_headers,
            raw.redact_headers.map(|v| v.join(",")),
            parse_header_names,
        )?
        .unwrap_or_default();
    let mut rules = Vec::new();
    for (i, r) in raw.redact.into_iter().enumerate() {
        let key = |field: &str| format!("redact[{i}].{field}");
        let matcher = match (r.json_path, r.regex) {
            (Some(path), None) => Matcher::Path(
                JsonPath::parse(&path)
                    .map_err(|m| l.invalid(&key("json_path"), "config file", m))?,
            ),
            (None, Some(re)) => Matcher::Regex(
                regex::RegexBuilder::new(&re)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| l.invalid(&key("regex"), "config file", e.to_string()))?,
            ),
            _ => {
                return Err(l.invalid(
                    &format!("redact[{i}]"),
                    "config file",
                    "needs exactly one of `json_path` and `regex`".to_string(),
                ))
            }
        };
        rules.push(RedactRule {
            matcher,
            replacement: r
                .replacement
                .unwrap_or_else(|| DEFAULT_REPLACEMENT.to_string()),
        });
    }
    let mut pricing = builtin_pricing()?;
    if let Some(path) = &pricing_file {
        let source = format!("pricing file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key: "pricing_file".to_string(),
            source_name: source.clone(),
            message: e.to_string(),
        })?;
        let file = toml::from_str::<PricingFile>(&text).map_err(|e| ConfigError::Invalid {
            key: "pricing_file".to_string(),
            source_name: source.clone(),
            message: e.to_string(),
        })?;
        add_prices(&mut pricing, file.pricing, &source)?;
    }
    let file_source = match &l.file_name {
        Some(f) => format!("config file {f}"),
        None => "config file".to_string(),
    };
    add_prices(&mut pricing, raw.pricing, &file_source)?;

    let store = raw.store.unwrap_or_default();
    let backend = l
        .pick(
            "store.backend",
            &flags.store_backend,
            store.backend,
            |s| match s {
                "sled" => Ok(StoreBackend::Sled),
                "clickhouse" => Ok(StoreBackend::Clickhouse),
                other => Err(format!(
                    "unknown backend {other:?}; expected \"sled\" or \"clickhouse\""
                )),
            },
        )?
        .unwrap_or(StoreBackend::Sled);
    let clickhouse_url = l
        .pick(
            "store.clickhouse_url",
            &flags.clickhouse_url,
            store.clickhouse_url,
            |s| {
                parse_upstream(s)?;
                Ok(s.trim().trim_end_matches('/').to_string())
            },
        )?
        .unwrap_or_else(|| DEFAULT_CLICKHOUSE_URL.to_string());
    let clickhouse_database = l
        .pick(
            "store.clickhouse_database",
            &flags.clickhouse_database,
            store.clickhouse_database,
            |s| {
                if crate::clickhouse::sql::is_identifier(s) {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "{s:?} is not a database name: use 1-64 chars of [A-Za-z0-9_], not starting with a digit"
                    ))
                }
            },
        )?
        .unwrap_or_else(|| DEFAULT_CLICKHOUSE_DATABASE.to_string());
    let clickhouse_buffer_spans = l
        .pick_num(
            "store.clickhouse_buffer_spans",
            &flags.clickhouse_buffer_spans,
            store.clickhouse_buffer_spans,
            1,
            10_000_000,
        )?
        .unwrap_or(100_000);
    if backend == StoreBackend::Clickhouse && max_store_bytes > 0 {
        // ClickHouse's disk is the ClickHouse operator's: a client deleting traces to meet a
        // byte budget would fight its merges, TTLs and replicas. Refuse rather than ignore.
        return Err(ConfigError::Invalid {
            key: "max_store_bytes".to_string(),
            source_name: "configuration".to_string(),
            message: "does not apply to [store] backend = \"clickhouse\" (size ClickHouse \
                      itself: TTL or dropping partitions); use retention_days, or leave \
                      max_store_bytes at 0"
                .to_string(),
        });
    }

    let mut routes = vec![RouteConfig {
        prefix: "/".to_string(),
        upstream,
        strip_prefix: false,
        provider: None,
        ca_file: ca_file.clone(),
        insecure_skip_verify,
    }];
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = |field: &str| format!("route[{i}].{field}");
        let prefix =
            parse_prefix(&r.prefix).map_err(|m| l.invalid(&key("prefix"), "config file", m))?;
        if prefix == "/" {
            return Err(l.invalid(
                &key("prefix"),
                "config file",
                "the \"/\" route is set by the top-level `upstream` key".to_string(),
            ));
        }
        if routes.iter().any(|x| x.prefix == prefix) {
            return Err(l.invalid(
                &key("prefix"),
                "config file",
                format!("duplicate prefix {prefix:?}"),
            ));
        }
        let upstream = parse_upstream(&r.upstream)
            .map_err(|m| l.invalid(&key("upstream"), "config file", m))?;
        let route_ca = match r.ca_file {
            Some(p) => Some(
                parse_existing_file(&p)
                    .map_err(|m| l.invalid(&key("ca_file"), "config file", m))?,
            ),
            None => ca_file.clone(),
        };
        if let Some(p) = &r.provider {
            if p.trim().is_empty() {
                return Err(l.invalid(&key("provider"), "config file", "must not be empty".into()));
            }
        }
        routes.push(RouteConfig {
            prefix,
            upstream,
            strip_prefix: r.strip_prefix,
            provider: r.provider,
            ca_file: route_ca,
            insecure_skip_verify: r.insecure_skip_verify,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    let otlp = otlp_config(&l, flags, raw.otlp)?;

    Ok(Config {
        listen,
        admin_listen,
        data_dir,
        routes,
        capture,
        max_capture_bytes: usize::try_from(max_capture_bytes).unwrap_or(usize::MAX),
        capture_budget_bytes: usize::try_from(capture_budget_bytes).unwrap_or(usize::MAX),
        queue_capacity: usize::try_from(queue_capacity).unwrap_or(usize::MAX),
        spool_max_bytes,
        batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
        batch_interval: Duration::from_millis(batch_interval_ms),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        response_header_timeout: Duration::from_millis(response_header_timeout_ms),
        idle_stream_timeout: (idle_stream_timeout_ms > 0)
            .then(|| Duration::from_millis(idle_stream_timeout_ms)),
        tls,
        admin_tls,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        header_read_timeout: Duration::from_millis(header_read_timeout_ms),
        shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
        flush_every_ms: (flush_every_ms > 0).then_some(flush_every_ms),
        cache_capacity_bytes,
        store_min_free_bytes,
        store_backend: backend,
        clickhouse_url,
        clickhouse_database,
        clickhouse_buffer_spans: usize::try_from(clickhouse_buffer_spans).unwrap_or(usize::MAX),
        capture_embeddings,
        pricing: Arc::new(pricing),
        admin_token,
        retention: (retention_days > 0).then(|| Duration::from_secs(retention_days * 86_400)),
        max_store_bytes: (max_store_bytes > 0).then_some(max_store_bytes),
        retention_interval: Duration::from_millis(retention_interval_ms),
        redact_headers,
        redactor: Arc::new(Redactor::new(rules)),
        otlp,
        store_open_delay: Duration::ZERO,
    })
}

/// `[otlp]` (and its `LLM_TRACER_OTLP_*` / `--otlp-*` overrides). Export is on when an endpoint
/// is set; other `otlp.*` keys without one are an error naming `otlp.endpoint`.
fn otlp_config(
    l: &Layers<'_>,
    flags: &Flags,
    raw: Option<OtlpFile>,
) -> Result<Option<crate::otlp::OtlpConfig>, ConfigError> {
    use crate::otlp;
    let present = raw.is_some();
    let raw = raw.unwrap_or_default();
    let Some(traces_url) = l.pick(
        "otlp.endpoint",
        &flags.otlp_endpoint,
        raw.endpoint,
        otlp::traces_url,
    )?
    else {
        if present {
            return Err(l.invalid(
                "otlp.endpoint",
                "config file",
                "required when [otlp] is present (e.g. \"http://127.0.0.1:4318\")".into(),
            ));
        }
        return Ok(None);
    };
    let protocol = l
        .pick(
            "otlp.protocol",
            &flags.otlp_protocol,
            raw.protocol,
            otlp::Protocol::parse,
        )?
        .unwrap_or(otlp::Protocol::Protobuf);
    let headers = match l.pick(
        "otlp.headers",
        &flags.otlp_headers,
        None,
        otlp::parse_headers,
    )? {
        Some(h) => h,
        None => {
            let mut out = Vec::new();
            for (k, v) in &raw.headers {
                out.push(
                    otlp::header_pair(k, v)
                        .map_err(|m| l.invalid(&format!("otlp.headers.{k}"), "config file", m))?,
                );
            }
            out
        }
    };
    let batch_size = l
        .pick_num(
            "otlp.batch_size",
            &flags.otlp_batch_size,
            raw.batch_size,
            1,
            100_000,
        )?
        .unwrap_or(otlp::DEFAULT_BATCH_SIZE as u64);
    let interval_ms = l
        .pick_num(
            "otlp.interval_ms",
            &flags.otlp_interval_ms,
            raw.interval_ms,
            1,
            3_600_000,
        )?
        .unwrap_or(otlp::DEFAULT_INTERVAL_MS);
    let max_buffer_spans = l
        .pick_num(
            "otlp.max_buffer_spans",
            &flags.otlp_max_buffer_spans,
            raw.max_buffer_spans,
            1,
            10_000_000,
        )?
        .unwrap_or(otlp::DEFAULT_MAX_BUFFER_SPANS as u64);
    let timeout_ms = l
        .pick_num("otlp.timeout_ms", &None, raw.timeout_ms, 1, 600_000)?
        .unwrap_or(otlp::DEFAULT_TIMEOUT_MS);
    let service_name = l
        .pick("otlp.service_name", &None, raw.service_name, |s| {
            if s.trim().is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(s.trim().to_string())
            }
        })?
        .unwrap_or_else(|| otlp::DEFAULT_SERVICE_NAME.to_string());
    if max_buffer_spans < batch_size {
        return Err(l.invalid(
            "otlp.max_buffer_spans",
            "config",
            format!("{max_buffer_spans} is smaller than otlp.batch_size {batch_size}"),
        ));
    }
    Ok(Some(otlp::OtlpConfig {
        traces_url,
        protocol,
        headers,
        batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
        interval: Duration::from_millis(interval_ms),
        max_buffer_spans: usize::try_from(max_buffer_spans).unwrap_or(usize::MAX),
        timeout: Duration::from_millis(timeout_ms),
        service_name,
    }))
}

/// The compiled-in price list.
pub fn builtin_pricing() -> Result<PriceTable, ConfigError> {
    let source = "built-in config/pricing.toml";
    let file =
        toml::from_str::<PricingFile>(BUILTIN_PRICING).map_err(|e| ConfigError::Invalid {
            key: "pricing".to_string(),
            source_name: source.to_string(),
            message: e.to_string(),
        })?;
    let mut table = PriceTable::new();
    add_prices(&mut table, file.pricing, source)?;
    Ok(table)
}

/// Validates each entry and adds it to `table` (an entry with the same pattern is replaced).
fn add_prices(
    table: &mut PriceTable,
    entries: BTreeMap<String, PriceFile>,
    source: &str,
) -> Result<(), ConfigError> {
    for (pattern, p) in entries {
        let invalid = |message: String| ConfigError::Invalid {
            key: format!("pricing.{pattern:?}"),
            source_name: source.to_string(),
            message,
        };
        if pattern.trim().is_empty() {
            return Err(invalid("the model pattern must not be empty".to_string()));
        }
        let price = Price {
            input: p.input,
            output: p.output,
            cached_input: p.cached_input,
            cache_write_input: p.cache_write_input,
        };
        price.validate().map_err(invalid)?;
        table.insert(&pattern, price);
    }
    Ok(())
}

/// Every key an `LLM_TRACER_<KEY>` variable may set (plus `LLM_TRACER_CONFIG`, the file).
pub const KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "data_dir",
    "upstream",
    "ca_file",
    "capture",
    "max_capture_bytes",
    "capture_budget_bytes",
    "queue_capacity",
    "spool_max_bytes",
    "batch_size",
    "batch_interval_ms",
    "connect_timeout_ms",
    "response_header_timeout_ms",
    "idle_stream_timeout_ms",
    "tls_cert",
    "tls_key",
    "admin_tls_cert",
    "admin_tls_key",
    "max_connections",
    "header_read_timeout_ms",
    "insecure_skip_verify",
    "shutdown_timeout_ms",
    "flush_every_ms",
    "cache_capacity_bytes",
    "store_min_free_bytes",
    "store.backend",
    "store.clickhouse_url",
    "store.clickhouse_database",
    "store.clickhouse_buffer_spans",
    "capture_embeddings",
    "pricing_file",
    "admin_token",
    "retention_days",
    "max_store_bytes",
    "retention_interval_ms",
    "redact_headers",
    "otlp.endpoint",
    "otlp.protocol",
    "otlp.headers",
    "otlp.batch_size",
    "otlp.interval_ms",
    "otlp.max_buffer_spans",
    "otlp.timeout_ms",
    "otlp.service_name",
];

/// A misspelt `LLM_TRACER_*` variable would be silently ignored: refuse to start instead.
pub fn check_env_names<I: IntoIterator<Item = String>>(names: I) -> Result<(), ConfigError> {
    for name in names {
        let Some(_) = name.strip_prefix("LLM_TRACER_") else {
            continue;
        };
        if name == "LLM_TRACER_CONFIG"
            || CLICKHOUSE_CREDENTIAL_VARS.contains(&name.as_str())
            || KEYS.iter().any(|k| env_name(k) == name)
        {
            continue;
        }
        return Err(ConfigError::Invalid {
            key: name.clone(),
            source_name: "environment".to_string(),
            message: format!(
                "unknown variable; known: LLM_TRACER_CONFIG, {}",
                KEYS.iter()
                    .map(|k| env_name(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(())
}

/// [`load`] for the running process: the file is `--config FILE` (`flag`), else
/// `LLM_TRACER_CONFIG`, else none; variables come from the process environment.
pub fn load_for_process(flag: Option<&Path>, flags: &Flags) -> Result<Config, ConfigError> {
    let file = flag
        .map(Path::to_owned)
        .or_else(|| process_env("LLM_TRACER_CONFIG").map(PathBuf::from));
    load(file.as_deref(), flags, &process_env)
}

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The name of the env var that overrides `key` (`store.backend` → `LLM_TRACER_STORE_BACKEND`).
pub fn env_name(key: &str) -> String {
    format!("LLM_TRACER_{}", key.replace('.', "_").to_ascii_uppercase())
}

struct Layers<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file_name: Option<String>,
}

impl Layers<'_> {
    /// A listener's `*_cert` and `*_key`: both or neither, each an existing file.
    fn tls_pair(
        &self,
        cert: (&'static str, &Option<String>, Option<String>),
        key: (&'static str, &Option<String>, Option<String>),
    ) -> Result<Option<TlsFiles>, ConfigError> {
        let cert_path = self.pick(cert.0, cert.1, cert.2, parse_existing_file)?;
        let key_path = self.pick(key.0, key.1, key.2, parse_existing_file)?;
        match (cert_path, key_path) {
            (Some(c), Some(k)) => Ok(Some(TlsFiles {
                cert: c,
                key: k,
                cert_key: cert.0,
                key_key: key.0,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(self.invalid(
                key.0,
                "configuration",
                format!(
                    "{} is set, so {} (the PEM private key) is required too",
                    cert.0, key.0
                ),
            )),
            (None, Some(_)) => Err(self.invalid(
                cert.0,
                "configuration",
                format!(
                    "{} is set, so {} (the PEM certificate chain) is required too",
                    key.0, cert.0
                ),
            )),
        }
    }

    fn invalid(&self, key: &str, source: &str, message: String) -> ConfigError {
        let source_name = match (source, &self.file_name) {
            ("config file", Some(f)) => format!("config file {f}"),
            _ => source.to_string(),
        };
        ConfigError::Invalid {
            key: key.to_string(),
            source_name,
            message,
        }
    }

    /// Precedence: flag > env > file. Each layer is parsed where it is read, so the error names
    /// the key and the source that was wrong.
    fn pick<T>(
        &self,
        key: &str,
        flag: &Option<String>,
        file: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        // `[store] clickhouse_*` keys have the shorter flags `--clickhouse-*`.
        let flag_name = format!(
            "--{}",
            key.trim_start_matches("store.clickhouse_")
                .replace(['.', '_'], "-")
        );
        let flag_name = if key.starts_with("store.clickhouse_") {
            format!("--clickhouse{}", &flag_name[1..])
        } else {
            flag_name
        };
        if let Some(raw) = flag {
            return parse(raw)
                .map(Some)
                .map_err(|m| self.invalid(key, &flag_name, m));
        }
        let var = env_name(key);
        if let Some(raw) = (self.env)(&var) {
            return parse(&raw)
                .map(Some)
                .map_err(|m| self.invalid(key, &var, m));
        }
        match file {
            Some(raw) => parse(&raw)
                .map(Some)
                .map_err(|m| self.invalid(key, "config file", m)),
            None => Ok(None),
        }
    }

    fn pick_num(
        &self,
        key: &str,
        flag: &Option<String>,
        file: Option<u64>,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
        self.pick(key, flag, file.map(|n| n.to_string()), |s| {
            let n = u64::from_str(s.trim()).map_err(|_| format!("{s:?} is not a whole number"))?;
            if n < min || n > max {
                return Err(format!("{n} is out of range {min}..={max}"));
            }
            Ok(n)
        })
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Allow `localhost:PORT`; other names must resolve (never to more than we can bind).
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(_) => Err(format!("{s:?} is not an address like 127.0.0.1:8080")),
    }
}

fn parse_upstream(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{s:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{s:?} must not have a query string"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Credentials in the URL would end up in logs and error messages; send them as headers.
        return Err(
            "must not contain user:password@; the app's own auth headers are forwarded".to_string(),
        );
    }
    Ok(uri)
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with '/'"));
    }
    if s.contains(['?', '#', ' ']) {
        return Err(format!("{s:?} must be a plain path"));
    }
    let trimmed = s.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// The token travels in an HTTP header, so it must be visible ASCII; never echoed in errors.
fn parse_admin_token(s: &str) -> Result<AdminToken, String> {
    if s.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "must be at least {MIN_ADMIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters without spaces".to_string());
    }
    Ok(AdminToken(s.to_string()))
}

/// `a, x-b` → `["a", "x-b"]`, lowercased; each must be a valid header name.
fn parse_header_names(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let parsed = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        out.push(parsed.as_str().to_string());
    }
    Ok(out)
}

fn parse_existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{s:?} is not a readable file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_str(
        toml_text: &str,
        flags: &Flags,
        env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(Some(&path), flags, &|k| env.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = load(None, &Flags::default(), &|_| None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.data_dir, PathBuf::from("./llm-tracer-data"));
        assert!(c.capture);
        assert_eq!(c.max_capture_bytes, 10_485_760);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].upstream.to_string(), "https://api.openai.com/");
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let text = "listen = \"127.0.0.1:1\"\nmax_capture_bytes = 5\n";
        let c = load_str(text, &Flags::default(), &[]).unwrap();
        assert_eq!(c.listen.port(), 1);
        let c = load_str(
            text,
            &Flags::default(),
            &[("LLM_TRACER_LISTEN", "127.0.0.1:2")],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2, "env overrides the file");
        let flags = Flags {
            listen: Some("127.0.0.1:3".into()),
            ..Flags::default()
        };
        let c = load_str(text, &flags, &[("LLM_TRACER_LISTEN", "127.0.0.1:2")]).unwrap();
        assert_eq!(c.listen.port(), 3, "a flag overrides env and file");
        let flags = Flags {
            capture: Some("false".into()),
            ..Flags::default()
        };
        assert!(!load_str(text, &flags, &[]).unwrap().capture);
    }

    #[test]
    fn capture_budget_bytes_defaults_to_32_mib_and_is_validated() {
        let c = load_str("", &Flags::default(), &[]).unwrap();
        assert_eq!(
            c.capture_budget_bytes,
            32 * 1024 * 1024,
            "the default budget"
        );
        let c = load_str("capture_budget_bytes = 1048576\n", &Flags::default(), &[]).unwrap();
        assert_eq!(c.capture_budget_bytes, 1_048_576, "the file sets it");
        let flags = Flags {
            capture_budget_bytes: Some("2097152".into()),
            ..Flags::default()
        };
        let c = load_str(
            "",
            &flags,
            &[("LLM_TRACER_CAPTURE_BUDGET_BYTES", "4194304")],
        )
        .unwrap();
        assert_eq!(c.capture_budget_bytes, 2_097_152, "the flag wins over env");
        for bad in [
            "capture_budget_bytes = 0\n",
            "capture_budget_bytes = \"lots\"\n",
        ] {
            let e = load_str(bad, &Flags::default(), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("capture_budget_bytes"),
                "a bad budget names its key: {e}"
            );
        }
    }

    #[test]
    fn store_min_free_bytes_defaults_to_64_mib_allows_0_and_is_validated() {
        let c = load_str("", &Flags::default(), &[]).unwrap();
        assert_eq!(c.store_min_free_bytes, 64 * 1024 * 1024, "the default");
        let c = load_str("store_min_free_bytes = 0\n", &Flags::default(), &[]).unwrap();
        assert_eq!(c.store_min_free_bytes, 0, "0 turns the guard off");
        let c = load_str(
            "store_min_free_bytes = 1\n",
            &Flags::default(),
            &[("LLM_TRACER_STORE_MIN_FREE_BYTES", "2048")],
        )
        .unwrap();
        assert_eq!(c.store_min_free_bytes, 2048, "env wins over the file");
        let flags = Flags {
            store_min_free_bytes: Some("4096".into()),
            ..Flags::default()
        };
        let c = load_str("", &flags, &[("LLM_TRACER_STORE_MIN_FREE_BYTES", "2048")]).unwrap();
        assert_eq!(c.store_min_free_bytes, 4096, "the flag wins over env");
        for bad in [
            "store_min_free_bytes = -1\n",
            "store_min_free_bytes = \"lots\"\n",
        ] {
            let e = load_str(bad, &Flags::default(), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("store_min_free_bytes"), "names its key: {e}");
        }
    }

    #[test]
    fn unknown_and_bad_keys_name_the_key() {
        let e = load_str("lissten = \"127.0.0.1:1\"\n", &Flags::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lissten"), "an unknown key is named: {e}");
        let e = load_str("max_capture_bytes = -1\n", &Flags::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_capture_bytes"),
            "a bad value names its key: {e}"
        );
        let e = load_str(
            "",
            &Flags::default(),
            &[("LLM_TRACER_QUEUE_CAPACITY", "lots")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("queue_capacity") && e.contains("LLM_TRACER_QUEUE_CAPACITY"),
            "{e}"
        );
        let e = load_str(
            "[[route]]\nprefix = \"x\"\nupstream = \"http://a\"\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("route[0].prefix"), "{e}");
        let e = load_str("upstream = \"ftp://a\"\n", &Flags::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream"), "{e}");
        let e = load_str("[store]\nbackend = \"mongo\"\n", &Flags::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.backend"), "{e}");
    }

    #[test]
    fn clickhouse_flags_env_and_max_store_bytes() {
        let flags = Flags {
            store_backend: Some("clickhouse".into()),
            clickhouse_url: Some("http://127.0.0.1:18123/".into()),
            clickhouse_database: Some("from_flag".into()),
            clickhouse_buffer_spans: Some("50".into()),
            ..Flags::default()
        };
        let c = load(None, &flags, &|_| None).unwrap();
        assert_eq!(c.store_backend, StoreBackend::Clickhouse);
        assert_eq!(c.clickhouse_url, "http://127.0.0.1:18123");
        assert_eq!(c.clickhouse_database, "from_flag");
        assert_eq!(c.clickhouse_buffer_spans, 50);

        let env = |k: &str| match k {
            "LLM_TRACER_STORE_BACKEND" => Some("clickhouse".to_string()),
            "LLM_TRACER_STORE_CLICKHOUSE_DATABASE" => Some("from_env".to_string()),
            _ => None,
        };
        let c = load(None, &Flags::default(), &env).unwrap();
        assert_eq!(c.clickhouse_database, "from_env");
        assert_eq!(c.clickhouse_buffer_spans, 100_000, "the default bound");

        let bad = Flags {
            clickhouse_database: Some("no-dashes".into()),
            ..Flags::default()
        };
        let e = load(None, &bad, &|_| None).unwrap_err().to_string();
        assert!(
            e.contains("store.clickhouse_database") && e.contains("--clickhouse-database"),
            "the error names the key and the flag: {e}"
        );
        let bad = Flags {
            clickhouse_buffer_spans: Some("0".into()),
            ..Flags::default()
        };
        let e = load(None, &bad, &|_| None).unwrap_err().to_string();
        assert!(e.contains("store.clickhouse_buffer_spans"), "{e}");

        let sized = Flags {
            store_backend: Some("clickhouse".into()),
            max_store_bytes: Some("1000000".into()),
            ..Flags::default()
        };
        let e = load(None, &sized, &|_| None).unwrap_err().to_string();
        assert!(
            e.starts_with("max_store_bytes") && e.contains("retention_days"),
            "max_store_bytes with clickhouse is refused, naming the key and the way out: {e}"
        );
        for name in [
            "LLM_TRACER_STORE_CLICKHOUSE_BUFFER_SPANS",
            "LLM_TRACER_CLICKHOUSE_USER",
            "LLM_TRACER_CLICKHOUSE_PASSWORD",
        ] {
            assert!(
                check_env_names([name.to_string()]).is_ok(),
                "{name} is a known variable"
            );
        }
    }

    #[test]
    fn clickhouse_keys_are_read_and_checked() {
        let c = load_str(
            "[store]\nbackend = \"clickhouse\"\nclickhouse_url = \"http://127.0.0.1:9/\"\nclickhouse_database = \"traces_1\"\n",
            &Flags::default(),
            &[],
        )
        .unwrap();
        assert_eq!(c.store_backend, StoreBackend::Clickhouse);
        assert_eq!(c.clickhouse_url, "http://127.0.0.1:9");
        assert_eq!(c.clickhouse_database, "traces_1");
        let c = load_str("", &Flags::default(), &[]).unwrap();
        assert_eq!(c.clickhouse_url, DEFAULT_CLICKHOUSE_URL);
        assert_eq!(c.clickhouse_database, DEFAULT_CLICKHOUSE_DATABASE);

        let e = load_str(
            "[store]\nclickhouse_database = \"x; DROP\"\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("store.clickhouse_database"),
            "a bad database names its key: {e}"
        );
        let e = load_str(
            "",
            &Flags::default(),
            &[("LLM_TRACER_STORE_CLICKHOUSE_URL", "ftp://x")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("store.clickhouse_url") && e.contains("LLM_TRACER_STORE_CLICKHOUSE_URL"),
            "a bad URL names its key and source: {e}"
        );
        check_env_names([
            "LLM_TRACER_CLICKHOUSE_USER".to_string(),
            "LLM_TRACER_CLICKHOUSE_PASSWORD".to_string(),
            "LLM_TRACER_STORE_CLICKHOUSE_DATABASE".to_string(),
        ])
        .expect("the ClickHouse credential and key variables are known");
    }

    #[test]
    fn unknown_llm_tracer_variables_are_refused() {
        let ok = [
            "PATH",
            "LLM_TRACER_LISTEN",
            "LLM_TRACER_STORE_BACKEND",
            "LLM_TRACER_CONFIG",
        ];
        assert!(check_env_names(ok.iter().map(|s| s.to_string())).is_ok());
        let e = check_env_names(["LLM_TRACER_MAX_CAPTURE_BYTE".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LLM_TRACER_MAX_CAPTURE_BYTE"),
            "the misspelt variable is named: {e}"
        );
    }

    #[test]
    fn upstreams_with_userinfo_are_refused() {
        let e = load_str(
            "upstream = \"https://u:p@api.example\"\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("upstream") && !e.contains("u:p@api"),
            "the key is named and the secret not echoed: {e}"
        );
    }

    #[test]
    fn routes_are_sorted_longest_prefix_first() {
        let text =
            "[[route]]\nprefix = \"/a/\"\nupstream = \"http://127.0.0.1:1\"\nstrip_prefix = true\n\
                    [[route]]\nprefix = \"/a/b\"\nupstream = \"http://127.0.0.1:2\"\n";
        let c = load_str(text, &Flags::default(), &[]).unwrap();
        let prefixes: Vec<&str> = c.routes.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, vec!["/a/b", "/a", "/"]);
        assert!(c.routes[1].strip_prefix);
    }

    #[test]
    fn the_built_in_price_list_parses_and_prices_common_models() {
        let table = builtin_pricing().expect("config/pricing.toml is valid");
        assert!(
            table.len() > 20,
            "the built-in list covers the common models"
        );
        for model in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1",
            "gpt-5",
            "o3-mini",
            "text-embedding-3-small",
            "gpt-3.5-turbo-instruct",
            "claude-sonnet-4-5-20250929",
            "claude-3-5-haiku-latest",
            "claude-opus-4-1-20250805",
        ] {
            assert!(
                table.lookup(model).is_some(),
                "{model} has a built-in price"
            );
        }
        let (pattern, mini) = table.lookup("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(
            pattern, "gpt-4o-mini",
            "a snapshot takes its family's price"
        );
        assert_eq!((mini.input, mini.output), (0.15, 0.60));
        let (_, opus41) = table.lookup("claude-opus-4-1-20250805").unwrap();
        let (_, opus45) = table.lookup("claude-opus-4-5-20251101").unwrap();
        assert!(
            opus41.input > opus45.input,
            "Opus 4.1 keeps the older, higher tier"
        );
        assert!(
            table.lookup("mock-model").is_none(),
            "an unknown model has no price"
        );
    }

    #[test]
    fn pricing_file_and_inline_tables_extend_and_override_the_built_ins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prices.toml");
        std::fs::write(
            &file,
            "[pricing.\"gpt-4o\"]\ninput = 1.0\noutput = 2.0\n\
             [pricing.\"my-llama-*\"]\ninput = 0.5\noutput = 0.5\n",
        )
        .unwrap();
        let text = format!(
            "pricing_file = {:?}\n[pricing.\"my-llama-*\"]\ninput = 0.7\noutput = 0.9\ncached_input = 0.1\n",
            file.display().to_string()
        );
        let c = load_str(&text, &Flags::default(), &[]).unwrap();
        let input = |m: &str| c.pricing.lookup(m).map(|(_, p)| p.input);
        assert_eq!(
            input("gpt-4o"),
            Some(1.0),
            "the pricing file overrides a built-in entry"
        );
        assert_eq!(
            input("my-llama-3-70b"),
            Some(0.7),
            "a [pricing] table in the config file overrides the pricing file"
        );
        assert_eq!(
            input("gpt-4o-mini"),
            Some(0.15),
            "built-in entries that are not overridden stay"
        );

        let flags = Flags {
            pricing_file: Some(file.display().to_string()),
            ..Flags::default()
        };
        let c = load_str("", &flags, &[]).unwrap();
        assert_eq!(c.pricing.lookup("gpt-4o").map(|(_, p)| p.input), Some(1.0));
        let c = load_str(
            "",
            &Flags::default(),
            &[("LLM_TRACER_PRICING_FILE", &file.display().to_string())],
        )
        .unwrap();
        assert_eq!(
            c.pricing.lookup("gpt-4o").map(|(_, p)| p.input),
            Some(1.0),
            "LLM_TRACER_PRICING_FILE names the file too"
        );
    }

    #[test]
    fn bad_prices_are_start_up_errors_naming_the_key() {
        let e = load_str(
            "[pricing.\"gpt-4o\"]\ninptu = 1.0\noutput = 2.0\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("inptu"), "an unknown price field is named: {e}");
        let e = load_str(
            "[pricing.\"gpt-4o\"]\ninput = 1.0\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("output"), "a missing price is named: {e}");
        let e = load_str(
            "[pricing.\"gpt-4o\"]\ninput = -1.0\noutput = 2.0\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pricing.\"gpt-4o\"") && e.contains("input"),
            "a negative price names the pattern and the field: {e}"
        );
        let e = load_str(
            "pricing_file = \"/no/such/prices.toml\"\n",
            &Flags::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pricing_file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[models.\"x\"]\ninput = 1\noutput = 1\n").unwrap();
        let flags = Flags {
            pricing_file: Some(file.display().to_string()),
            ..Flags::default()
        };
        let e = load_str("", &flags, &[]).unwrap_err().to_string();
        assert!(
            e.contains("pricing_file") && e.contains("models"),
            "an unknown table in the pricing file is named: {e}"
        );
    }

    #[test]
    fn capture_embeddings_is_off_by_default_and_set_by_each_layer() {
        assert!(
            !load_str("", &Flags::default(), &[])
                .unwrap()
                .capture_embeddings
        );
        assert!(
            load_str("capture_embeddings = true\n", &Flags::default(), &[])
                .unwrap()
                .capture_embeddings
        );
        assert!(
            load_str(
                "",
                &Flags::default(),
                &[("LLM_TRACER_CAPTURE_EMBEDDINGS", "1")]
            )
            .unwrap()
            .capture_embeddings
        );
        let flags = Flags {
            capture_embeddings: Some("true".into()),
            ..Flags::default()
        };
        assert!(
            load_str("capture_embeddings = false\n", &flags, &[])
                .unwrap()
                .capture_embeddings,
            "--capture-embeddings beats the file"
        );
        let e = load_str(
            "",
            &Flags::default(),
            &[("LLM_TRACER_CAPTURE_EMBEDDINGS", "maybe")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("capture_embeddings"), "{e}");
    }

    #[test]
    fn a_non_loopback_admin_listener_requires_a_token() {
        let flags = Flags {
            admin_listen: Some("0.0.0.0:0".into()),
            ..Flags::default()
        };
        let e = load(None, &flags, &|_| None).unwrap_err().to_string();
        assert!(
            e.contains("admin_listen") && e.contains("admin_token"),
            "the error names both keys: {e}"
        );
        let c = load(None, &flags, &|k| {
            (k == "LLM_TRACER_ADMIN_TOKEN").then(|| "0123456789abcdef-xyz".to_string())
        })
        .unwrap();
        assert!(c.admin_token.is_some(), "the env var sets the token");
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "Debug of the config never shows the token"
        );
        let e = load(
            None,
            &Flags {
                admin_token: Some("short".into()),
                ..Flags::default()
            },
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("admin_token") && !e.contains("short"),
            "a too-short token is refused without echoing it: {e}"
        );
        assert!(
            load(None, &Flags::default(), &|_| None)
                .unwrap()
                .admin_token
                .is_none(),
            "loopback needs no token"
        );
    }

    #[test]
    fn redaction_rules_are_checked_naming_the_rule() {
        let c = load_str(
            "redact_headers = [\"X-Internal-Auth\"]\n[[redact]]\njson_path = \"$.messages[*].content\"\n[[redact]]\nregex = \"\\\\d{16}\"\nreplacement = \"#\"\n",
            &Flags::default(),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.redact_headers,
            ["x-internal-auth"],
            "header names are lowercased"
        );
        assert!(!c.redactor.is_empty(), "both rules are loaded");
        for (text, key) in [
            ("[[redact]]\nregex = \"(\"\n", "redact[0].regex"),
            (
                "[[redact]]\njson_path = \"messages\"\n",
                "redact[0].json_path",
            ),
            ("[[redact]]\nreplacement = \"x\"\n", "redact[0]"),
            (
                "[[redact]]\njson_path = \"$.a\"\nregex = \"b\"\n",
                "redact[0]",
            ),
            ("[[redact]]\njsonpath = \"$.a\"\n", "jsonpath"),
            ("redact_headers = [\"bad header\"]\n", "redact_headers"),
        ] {
            let e = load_str(text, &Flags::default(), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "a bad rule names {key}: {e}");
        }
        let c = load_str(
            "",
            &Flags::default(),
            &[("LLM_TRACER_REDACT_HEADERS", "a, b")],
        )
        .unwrap();
        assert_eq!(
            c.redact_headers,
            ["a", "b"],
            "the env var is comma-separated"
        );
    }

    #[test]
    fn the_documented_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/llm-tracer.toml");
        let c = load(Some(&path), &Flags::default(), &|_| None);
        assert!(
            c.is_ok(),
            "config/llm-tracer.toml must stay valid: {:?}",
            c.err()
        );
    }
}

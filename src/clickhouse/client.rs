//! ClickHouse over its HTTP interface, with our own hyper-util client (no extra crate: the
//! well-known `clickhouse` crate speaks RowBinary and needs a newer server than Debian's 18.16;
//! JSONEachRow over plain HTTP works on every version). Owns the connection pool, credentials
//! and per-request timeout; knows nothing about spans.
//!
//! Every statement goes in the POST body; the URL carries only settings we choose (never user
//! values). Credentials come from `LLM_TRACER_CLICKHOUSE_USER` / `LLM_TRACER_CLICKHOUSE_PASSWORD`
//! and are sent as HTTP basic auth (understood by every ClickHouse version).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::ClickHouseError;

/// Env var holding the ClickHouse user (default: ClickHouse's `default`).
pub const USER_ENV: &str = "LLM_TRACER_CLICKHOUSE_USER";
/// Env var holding the ClickHouse password.
pub const PASSWORD_ENV: &str = "LLM_TRACER_CLICKHOUSE_PASSWORD";

/// Largest answer we read (a page of traces or one trace's spans is far below this).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Settings sent with every query: plain JSON numbers for 64-bit integers, and room for long
/// literals (a hostile or just long `q` must not fail the default 256 KiB parser limit).
const QUERY_SETTINGS: &[(&str, &str)] = &[
    ("output_format_json_quote_64bit_integers", "0"),
    ("max_query_size", "67108864"),
];

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Handle to one ClickHouse server; cheap to clone.
#[derive(Clone)]
pub struct ClickHouseClient {
    http: Client<Connector, Full<Bytes>>,
    /// `scheme://host:port`, no trailing slash.
    base: String,
    authorization: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for ClickHouseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClickHouseClient {
    /// `url` is `http(s)://host:port` (a path is ignored); `user`/`password` as read from the
    /// environment (see [`ClickHouseClient::credentials_from_env`]).
    pub fn new(
        url: &str,
        user: Option<String>,
        password: Option<String>,
        timeout: Duration,
    ) -> Result<ClickHouseClient, ClickHouseError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClickHouseError::Config(format!("clickhouse_url {url:?}: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ClickHouseError::Config(format!(
                "clickhouse_url {url:?}: expected http://host:port"
            )));
        };
        if scheme != "http" && scheme != "https" {
            return Err(ClickHouseError::Config(format!(
                "clickhouse_url {url:?}: the scheme must be http or https"
            )));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClickHouseError::Config(format!("clickhouse_url: TLS: {e}")))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let authorization = match (user, password) {
            (None, None) => None,
            (user, password) => {
                let raw = format!(
                    "{}:{}",
                    user.unwrap_or_else(|| "default".to_string()),
                    password.unwrap_or_default()
                );
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
        };
        Ok(ClickHouseClient {
            http,
            base: format!("{scheme}://{authority}"),
            authorization,
            timeout,
        })
    }

    /// (user, password) from `LLM_TRACER_CLICKHOUSE_USER` / `LLM_TRACER_CLICKHOUSE_PASSWORD`.
    pub fn credentials_from_env() -> (Option<String>, Option<String>) {
        (
            std::env::var(USER_ENV).ok().filter(|s| !s.is_empty()),
            std::env::var(PASSWORD_ENV).ok(),
        )
    }

    /// Runs one statement (SELECT, CREATE, ALTER, …) and returns the answer's body.
    pub async fn query(&self, sql: &str) -> Result<Bytes, ClickHouseError> {
        let url = self.url(None);
        self.post(url, Bytes::from(sql.to_string())).await
    }

    /// `INSERT INTO {table} FORMAT JSONEachRow` with `rows` (one JSON object per line) as data.
    /// `table` is a checked, quoted `db.table`.
    pub async fn insert_json_rows(&self, table: &str, rows: Bytes) -> Result<(), ClickHouseError> {
        let url = self.url(Some(&format!("INSERT INTO {table} FORMAT JSONEachRow")));
        self.post(url, rows).await.map(|_| ())
    }

    fn url(&self, query: Option<&str>) -> String {
        let mut params = form_urlencoded::Serializer::new(String::new());
        for (k, v) in QUERY_SETTINGS {
            params.append_pair(k, v);
        }
        if let Some(q) = query {
            params.append_pair("query", q);
        }
        format!("{}/?{}", self.base, params.finish())
    }

    async fn post(&self, url: String, body: Bytes) -> Result<Bytes, ClickHouseError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClickHouseError::Unavailable(format!("request: {e}")))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClickHouseError::Unavailable(error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ClickHouseError::Unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ClickHouseError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                ClickHouseError::Unavailable(format!("no answer within {:?}", self.timeout))
            })??;
        if status == StatusCode::OK {
            Ok(body)
        } else {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(2000).collect();
            Err(ClickHouseError::Server {
                status: status.as_u16(),
                message: text,
            })
        }
    }
}

/// The error and its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

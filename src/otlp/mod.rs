//! OTLP: OpenTelemetry in and out.
//!
//! - [`export`]: every stored span (proxy LLM spans and ingested app spans) goes to an
//!   OpenTelemetry collector as OTLP/HTTP (protobuf or JSON), in batches, with retry and
//!   exponential backoff, from a bounded buffer. A collector that is down or slow never touches
//!   traffic or the local store: what does not fit is dropped and counted.
//! - [`ingest`]: `POST /v1/traces` on the admin listener accepts spans from apps instrumented
//!   with the OpenTelemetry SDK, OpenLLMetry or OpenInference and stores them through the same
//!   path as `POST /api/spans`, so they join the proxy's LLM spans in one trace.
//! - [`encode`] / [`decode`]: our span ⇄ an OTLP span, mapped to the OpenTelemetry GenAI
//!   semantic conventions ([`semconv`]); [`ids`] maps our free-form ids to OTLP's 16/8 bytes.
//!
//! Nothing here is on the request path: export is fed by the writer after a batch is stored.

pub mod decode;
pub mod encode;
pub mod export;
pub mod ids;
pub mod ingest;
pub mod semconv;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use export::ExportSink;

/// Wire format of the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/x-protobuf`
    Protobuf,
    /// `application/json` (OTLP/JSON: hex ids, lowerCamelCase, enums as integers)
    Json,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "http/protobuf" => Ok(Protocol::Protobuf),
            "http/json" => Ok(Protocol::Json),
            other => Err(format!(
                "{other:?} is not supported; use \"http/protobuf\" or \"http/json\""
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Protobuf => "application/x-protobuf",
            Protocol::Json => "application/json",
        }
    }
}

/// The validated `[otlp]` table.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Where batches are POSTed: `{endpoint}/v1/traces` (the endpoint as given when its path
    /// already ends in `/v1/traces`).
    pub traces_url: http::Uri,
    pub protocol: Protocol,
    /// Extra request headers (e.g. a collector's API key). Never logged.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Most spans per request.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub interval: Duration,
    /// Spans held while the collector is slow or down; beyond it new spans are dropped (counted).
    pub max_buffer_spans: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// `service.name` of the resource the proxy's own spans are exported under.
    pub service_name: String,
}

pub const DEFAULT_BATCH_SIZE: usize = 512;
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_MAX_BUFFER_SPANS: usize = 10_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_SERVICE_NAME: &str = "llm-tracer";

/// Builds `{endpoint}/v1/traces` from the configured endpoint (http or https).
pub fn traces_url(endpoint: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = endpoint
        .trim()
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{endpoint:?} must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{endpoint:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not allowed; use [otlp.headers]".into());
    }
    if uri.query().is_some() {
        return Err(format!("{endpoint:?} must not have a query"));
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{path}/v1/traces")
    };
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        authority,
        path
    )
    .parse()
    .map_err(|e| format!("{endpoint:?}: {e}"))
}

/// Parses `key=value,key2=value2` (the `OTEL_EXPORTER_OTLP_HEADERS` form) into headers.
pub fn parse_headers(s: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        out.push(header_pair(k.trim(), v.trim())?);
    }
    Ok(out)
}

/// One validated header; the value is never echoed in errors (it may be a secret).
pub fn header_pair(k: &str, v: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let name = http::HeaderName::from_bytes(k.as_bytes())
        .map_err(|_| format!("{k:?} is not a valid header name"))?;
    let mut value = http::HeaderValue::from_str(v)
        .map_err(|_| format!("the value of header {k:?} is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// `llm_tracer_otlp_*` counters.
#[derive(Debug, Default)]
pub struct OtlpMetrics {
    pub exported: AtomicU64,
    pub dropped_buffer_full: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_shutdown: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub buffered: AtomicU64,
    pub ingested: AtomicU64,
    pub ingest_rejected: AtomicU64,
}

impl OtlpMetrics {
    pub fn dropped(&self) -> u64 {
        self.dropped_buffer_full.load(Relaxed)
            + self.dropped_rejected.load(Relaxed)
            + self.dropped_shutdown.load(Relaxed)
    }

    /// Appends the Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "llm_tracer_otlp_exported_spans_total",
            "Spans the OTLP collector accepted.",
            self.exported.load(Relaxed),
        );
        counter(
            "llm_tracer_otlp_failed_attempts_total",
            "OTLP export requests that failed (retried with backoff).",
            self.failed_attempts.load(Relaxed),
        );
        counter(
            "llm_tracer_otlp_spans_ingested_total",
            "Spans accepted by POST /v1/traces.",
            self.ingested.load(Relaxed),
        );
        counter(
            "llm_tracer_otlp_spans_ingest_rejected_total",
            "Spans refused by POST /v1/traces (reported as partial_success).",
            self.ingest_rejected.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_otlp_dropped_spans_total Spans not exported; traffic and the local store were unaffected.\n\
             # TYPE llm_tracer_otlp_dropped_spans_total counter\n\
             llm_tracer_otlp_dropped_spans_total{{reason=\"buffer_full\"}} {}\n\
             llm_tracer_otlp_dropped_spans_total{{reason=\"rejected\"}} {}\n\
             llm_tracer_otlp_dropped_spans_total{{reason=\"shutdown\"}} {}\n\
             # HELP llm_tracer_otlp_buffered_spans Spans waiting to be exported.\n\
             # TYPE llm_tracer_otlp_buffered_spans gauge\n\
             llm_tracer_otlp_buffered_spans {}",
            self.dropped_buffer_full.load(Relaxed),
            self.dropped_rejected.load(Relaxed),
            self.dropped_shutdown.load(Relaxed),
            self.buffered.load(Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_built_from_the_endpoint() {
        let cases = [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp", "https://c/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ];
        for (given, want) in cases {
            assert_eq!(traces_url(given).unwrap().to_string(), want, "{given}");
        }
        for bad in ["c:4318", "ftp://c", "http://u:p@c", "http://c/?a=1", ""] {
            assert!(traces_url(bad).is_err(), "{bad:?} is refused");
        }
    }

    fn load(
        toml: &str,
        env: &[(&str, &str)],
        flags: crate::config::Flags,
    ) -> Result<crate::config::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::load(Some(&path), &flags, &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_otlp_table_is_validated_naming_each_key() {
        let c = load("", &[], Default::default()).unwrap();
        assert!(c.otlp.is_none(), "export is off by default");
        let c = load(
            "[otlp]\nendpoint = \"http://127.0.0.1:4318\"\nprotocol = \"http/json\"\nbatch_size = 10\n[otlp.headers]\nx-api-key = \"s3cret\"\n",
            &[],
            Default::default(),
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.traces_url.to_string(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(o.protocol, Protocol::Json);
        assert_eq!(o.batch_size, 10);
        assert_eq!(o.max_buffer_spans, DEFAULT_MAX_BUFFER_SPANS);
        assert_eq!(o.headers[0].0, "x-api-key");

        let c = load(
            "",
            &[
                ("LLM_TRACER_OTLP_ENDPOINT", "https://collector.example:4318"),
                ("LLM_TRACER_OTLP_HEADERS", "a=1,b=2"),
            ],
            crate::config::Flags {
                otlp_protocol: Some("http/protobuf".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(
            o.traces_url.to_string(),
            "https://collector.example:4318/v1/traces"
        );
        assert_eq!(o.headers.len(), 2, "env headers are key=value pairs");

        for (toml, key) in [
            (
                "[otlp]\nprotocol = \"grpc\"\nendpoint = \"http://c\"\n",
                "otlp.protocol",
            ),
            ("[otlp]\nbatch_size = 5\n", "otlp.endpoint"),
            ("[otlp]\nendpoint = \"c:4318\"\n", "otlp.endpoint"),
            (
                "[otlp]\nendpoint = \"http://c\"\nbatch_size = 0\n",
                "otlp.batch_size",
            ),
            (
                "[otlp]\nendpoint = \"http://c\"\nbatch_size = 100\nmax_buffer_spans = 10\n",
                "otlp.max_buffer_spans",
            ),
            (
                "[otlp]\nendpoint = \"http://c\"\nendpiont = 1\n",
                "endpiont",
            ),
            (
                "[otlp]\nendpoint = \"http://c\"\n[otlp.headers]\n\"bad header\" = \"s3cret\"\n",
                "otlp.headers.bad header",
            ),
        ] {
            let e = load(toml, &[], Default::default()).unwrap_err();
            assert!(e.contains(key), "{toml:?}: the error names {key}: {e}");
            assert!(!e.contains("s3cret"), "a header value is never echoed: {e}");
        }
        let e =
            crate::config::check_env_names(["LLM_TRACER_OTLP_ENDPIONT".to_string()]).unwrap_err();
        assert!(e.to_string().contains("LLM_TRACER_OTLP_ENDPIONT"));
        assert!(
            crate::config::check_env_names(["LLM_TRACER_OTLP_MAX_BUFFER_SPANS".to_string()])
                .is_ok()
        );
    }

    #[test]
    fn headers_parse_as_key_value_pairs_and_hide_values_in_errors() {
        let h = parse_headers("x-api-key=s3cret, authorization=Bearer abc").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].1, "Bearer abc");
        let e = parse_headers("bad header=s3cret\n").unwrap_err();
        assert!(!e.contains("s3cret"), "a header value is never echoed: {e}");
        assert!(parse_headers("novalue").is_err());
    }
}

#[cfg(test)]
mod round_trip_tests;

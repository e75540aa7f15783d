//! Errors, classified by who failed, each mapped to its response in exactly one place.
//!
//! - [`ConfigError`] / [`StartError`]: start-up; printed by `main`, exit code 2. Each names its key.
//! - [`ProxyError`]: failures the proxy produced on the proxy listener (OpenAI-shaped JSON, so SDKs
//!   raise a typed error). Upstream 4xx/5xx are not errors here: they pass through untouched.
//! - [`ApiError`]: the admin API (`{"error":{"code","message"}}`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

/// Marks a response the proxy made itself (as opposed to one the upstream sent).
pub const X_TRACER_ERROR: HeaderName = HeaderName::from_static("x-tracer-error");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{key} (from {source_name}): {message}")]
    Invalid {
        key: String,
        source_name: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("store.clickhouse_url: {0}")]
    ClickHouse(#[from] crate::clickhouse::ClickHouseError),
    #[error("{key}: {message}")]
    Tls { key: String, message: String },
    #[error("start-up failed: {0}")]
    Internal(String),
}

/// Failures the proxy produced while handling an app's request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for path {path:?}; configure a [[route]] whose prefix matches")]
    NoRoute { path: String },
    #[error("upstream {upstream} could not be reached: {message}")]
    UpstreamConnect { upstream: String, message: String },
    #[error("upstream {upstream} sent no response head within {after:?}")]
    UpstreamTimeout { upstream: String, after: Duration },
    #[error("could not build the upstream request: {message}")]
    BadRequest { message: String },
}

impl ProxyError {
    /// Stable, low-cardinality code: the `code` field, the metric label and the header value.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::UpstreamConnect { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::BadRequest { .. } => "bad_request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::UpstreamConnect { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The only place a `ProxyError` becomes bytes. OpenAI's shape, so SDKs raise a typed error.
    pub fn to_response(&self) -> Response<Bytes> {
        let kind = if self.status().is_client_error() {
            "invalid_request_error"
        } else {
            "api_error"
        };
        let body = serde_json::json!({
            "error": { "message": self.to_string(), "type": kind, "param": null, "code": self.code() }
        });
        let mut rsp = Response::new(Bytes::from(body.to_string()));
        *rsp.status_mut() = self.status();
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        rsp.headers_mut()
            .insert(X_TRACER_ERROR, HeaderValue::from_static(self.code()));
        rsp
    }
}

/// Admin API failures.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{param}: {message}")]
    BadParam { param: String, message: String },
    #[error("{0}")]
    BadBody(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("query string longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("no such route: {method} {path}")]
    NoSuchRoute { method: String, path: String },
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("host {0:?} is not allowed: the admin listener answers only to loopback names (protects against DNS rebinding)")]
    ForbiddenHost(String),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("store: {0}")]
    Store(#[from] crate::backend::BackendError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::BadParam {
            param: param.to_string(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadParam { .. } => "bad_param",
            Self::BadBody(_) => "bad_body",
            Self::TooLarge { .. } => "too_large",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::NotFound { .. } => "not_found",
            Self::NoSuchRoute { .. } => "no_such_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::ForbiddenHost(_) => "forbidden_host",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized(_) => "unauthorized",
            Self::Store(crate::backend::BackendError::Opening) => "store_opening",
            Self::Store(crate::backend::BackendError::DiskFull { .. }) => "store_disk_full",
            Self::Store(_) => "store_error",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadParam { .. } | Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::NotFound { .. } | Self::NoSuchRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::ForbiddenHost(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Store(crate::backend::BackendError::DiskFull { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The only place an `ApiError` becomes bytes.
    pub fn to_response(&self) -> Response<Bytes> {
        // A store state (still opening, disk nearly full) is reported by /healthz, not an error.
        if self.status().is_server_error() && !matches!(self, Self::Store(e) if e.is_store_state())
        {
            tracing::error!(error = %self, "admin API request failed");
        }
        let body =
            serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut rsp = Response::new(Bytes::from(body.to_string()));
        *rsp.status_mut() = self.status();
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, Self::Unauthorized(_)) {
            rsp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"llm-tracer admin\""),
            );
        }
        rsp
    }
}

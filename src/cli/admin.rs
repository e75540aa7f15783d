//! The export/import CLI's view of a running server: its admin API over HTTP(S).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::Fatal;
use crate::{otlp::export, span::Span};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Largest admin answer read (a trace with its bodies can be large).
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

pub struct AdminClient {
    base: String,
    token: Option<String>,
    client: export::ExportClient,
}

pub struct Page {
    pub trace_ids: Vec<String>,
    pub next_cursor: Option<String>,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> Result<Self, Fatal> {
        let base = base.trim().trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| Fatal(format!("--admin: {base:?} is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(Fatal(format!(
                "--admin: {base:?} must look like http://127.0.0.1:8081"
            )));
        }
        let token = token.or_else(|| std::env::var("LLM_TRACER_ADMIN_TOKEN").ok());
        let client = export::client(TIMEOUT).map_err(Fatal)?;
        Ok(Self {
            base,
            token,
            client,
        })
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Fatal> {
        let url = format!("{}{path_and_query}", self.base);
        let mut req = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = url
            .parse()
            .map_err(|e| Fatal(format!("--admin: bad URL {url}: {e}")))?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if let Some(t) = &self.token {
            let v = header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Fatal("--admin-token: not a valid header value".into()))?;
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let rsp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| {
                Fatal(format!(
                    "--admin: {url}: no answer within {}s",
                    TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| Fatal(format!("--admin: {url}: {e}")))?;
        let status = rsp.status();
        let body = http_body_util::Limited::new(rsp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| Fatal(format!("--admin: {url}: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    fn fail(status: StatusCode, body: &[u8], what: &str) -> Fatal {
        Fatal(format!(
            "--admin: {what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        ))
    }

    pub async fn list_traces(
        &self,
        limit: usize,
        since: Option<&str>,
        until: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Page, Fatal> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("limit", &limit.to_string());
        if let Some(v) = since {
            q.append_pair("since", v);
        }
        if let Some(v) = until {
            q.append_pair("until", v);
        }
        if let Some(v) = cursor {
            q.append_pair("cursor", v);
        }
        let (status, body) = self
            .call(Method::GET, &format!("/api/traces?{}", q.finish()), None)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::fail(status, &body, "GET /api/traces"));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Fatal(format!("--admin: GET /api/traces: {e}")))?;
        let trace_ids = v["traces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["trace_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Page {
            trace_ids,
            next_cursor: v["next_cursor"].as_str().map(str::to_string),
        })
    }

    pub async fn get_trace(&self, id: &str) -> Result<Option<Vec<Span>>, Fatal> {
        let path = format!(
            "/api/traces/{}",
            form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        let (status, body) = self.call(Method::GET, &path, None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None), // deleted meanwhile
            StatusCode::OK => {
                #[derive(serde::Deserialize)]
                struct Trace {
                    spans: Vec<Span>,
                }
                let t: Trace = serde_json::from_slice(&body)
                    .map_err(|e| Fatal(format!("--admin: GET {path}: {e}")))?;
                Ok(Some(t.spans))
            }
            _ => Err(Self::fail(status, &body, &format!("GET {path}"))),
        }
    }

    pub async fn post_spans(&self, spans: &[Span]) -> Result<(), Fatal> {
        let body = serde_json::to_vec(spans).map_err(|e| Fatal(e.to_string()))?;
        let (status, rsp) = self.call(Method::POST, "/api/spans", Some(body)).await?;
        if status != StatusCode::OK {
            return Err(Self::fail(status, &rsp, "POST /api/spans"));
        }
        Ok(())
    }
}

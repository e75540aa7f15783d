//! Route: which upstream serves a request path. Longest prefix wins (matched on whole path
//! segments); `strip_prefix` removes the prefix before forwarding; the upstream's own base path
//! is kept in front. Pure.
//!
//! Everything about a route that does not depend on the request (scheme, authority, base path,
//! the `Host` header value) is parsed once, when the table is built; resolving a request then
//! costs at most one allocation (none when the path is forwarded as it came).

use std::sync::Arc;

use http::{
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue, Uri,
};

use crate::config::RouteConfig;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Index of the route in the table (selects its client and provider).
    pub route: usize,
    /// The full upstream URI, query included.
    pub uri: Uri,
}

/// One route, with its request-independent parts parsed once.
#[derive(Debug, Clone)]
pub struct Route {
    pub config: RouteConfig,
    scheme: Scheme,
    authority: Option<Authority>,
    /// The upstream's base path without a trailing `/` ("" for none).
    base: String,
    /// `Host` as the upstream client would write it (`host[:port]`, port only when not the
    /// scheme's default), so it need not be formatted per request.
    pub host: Option<HeaderValue>,
    /// `scheme://authority[/base]`, as spans show the upstream.
    pub upstream_base: String,
}

impl Route {
    fn new(config: RouteConfig) -> Self {
        let upstream = &config.upstream;
        let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = upstream.authority().cloned();
        let base = upstream.path().trim_end_matches('/').to_string();
        let host = authority.as_ref().and_then(|a| {
            let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
            let value = match a.port_u16() {
                Some(p) if p != default_port => format!("{}:{p}", a.host()),
                _ => a.host().to_string(),
            };
            HeaderValue::from_str(&value).ok()
        });
        let upstream_base = upstream.to_string().trim_end_matches('/').to_string();
        Self {
            config,
            scheme,
            authority,
            base,
            host,
            upstream_base,
        }
    }

    /// The part of `path` forwarded after `strip_prefix` (never empty).
    fn rest<'p>(&self, path: &'p str) -> &'p str {
        if self.config.strip_prefix && self.config.prefix != "/" {
            let rest = path.get(self.config.prefix.len()..).unwrap_or("");
            if rest.is_empty() {
                "/"
            } else {
                rest
            }
        } else {
            path
        }
    }

    /// The forwarded path without query (identifies the operation for the span).
    pub fn upstream_path(&self, path: &str) -> String {
        let rest = self.rest(path);
        let mut out = String::with_capacity(self.base.len() + rest.len());
        out.push_str(&self.base);
        out.push_str(rest);
        out
    }

    /// The upstream URI for an app request's path and query.
    fn uri(&self, pq: Option<&PathAndQuery>) -> Option<Uri> {
        let path = pq.map_or("/", PathAndQuery::path);
        let rest = self.rest(path);
        let forwarded = if self.base.is_empty() && rest.len() == path.len() {
            // The common case: the path goes upstream as it came; share its buffer.
            match pq {
                Some(pq) => pq.clone(),
                None => PathAndQuery::from_static("/"),
            }
        } else {
            let query = pq.and_then(PathAndQuery::query);
            let mut out = String::with_capacity(
                self.base.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
            );
            out.push_str(&self.base);
            out.push_str(rest);
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(out)).ok()?
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone()?);
        parts.path_and_query = Some(forwarded);
        Uri::from_parts(parts).ok()
    }
}

/// The route table, longest prefix first.
#[derive(Debug, Clone)]
pub struct Table {
    routes: Vec<Arc<Route>>,
}

impl Table {
    pub fn new(mut routes: Vec<RouteConfig>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            routes: routes
                .into_iter()
                .map(|r| Arc::new(Route::new(r)))
                .collect(),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The index of the route that serves `path`.
    pub fn find(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| prefix_matches(&r.config.prefix, path))
    }

    /// Resolves an app request's path and query to an upstream URI.
    pub fn resolve_uri(&self, pq: Option<&PathAndQuery>) -> Option<Target> {
        let path = pq.map_or("/", PathAndQuery::path);
        let index = self.find(path)?;
        let uri = self.routes.get(index)?.uri(pq)?;
        Some(Target { route: index, uri })
    }

    /// Resolves `path` and `query` (as the app sent them) to an upstream URI.
    pub fn resolve(&self, path: &str, query: Option<&str>) -> Option<Target> {
        let raw = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let pq = PathAndQuery::from_maybe_shared(bytes::Bytes::from(raw)).ok()?;
        self.resolve_uri(Some(&pq))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, upstream: &str, strip: bool) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            upstream: upstream.parse().unwrap(),
            strip_prefix: strip,
            provider: None,
            ca_file: None,
            insecure_skip_verify: false,
        }
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = Table::new(vec![
            route("/", "https://api.openai.com", false),
            route("/anthropic", "https://api.anthropic.com", true),
            route("/local", "http://127.0.0.1:9000/base/", true),
        ]);
        let cases = [
            (
                "/v1/chat/completions",
                None,
                "https://api.openai.com/v1/chat/completions",
                "/v1/chat/completions",
            ),
            (
                "/anthropic/v1/messages",
                None,
                "https://api.anthropic.com/v1/messages",
                "/v1/messages",
            ),
            (
                "/anthropicx/v1",
                None,
                "https://api.openai.com/anthropicx/v1",
                "/anthropicx/v1",
            ),
            ("/anthropic", None, "https://api.anthropic.com/", "/"),
            (
                "/local/v1/models",
                Some("a=1&b=2"),
                "http://127.0.0.1:9000/base/v1/models?a=1&b=2",
                "/base/v1/models",
            ),
            (
                "/v1/models",
                Some("limit=2"),
                "https://api.openai.com/v1/models?limit=2",
                "/v1/models",
            ),
        ];
        for (path, query, uri, upstream_path) in cases {
            let target = t.resolve(path, query).unwrap();
            assert_eq!(target.uri.to_string(), uri, "{path} routes to {uri}");
            assert_eq!(
                t.routes()[target.route].upstream_path(path),
                upstream_path,
                "{path} is forwarded as {upstream_path}"
            );
        }
    }

    #[test]
    fn without_a_root_route_unmatched_paths_have_no_target() {
        let t = Table::new(vec![route("/a", "http://127.0.0.1:1", false)]);
        assert!(t.resolve("/b", None).is_none());
        assert_eq!(
            t.resolve("/a/x", None).unwrap().uri.to_string(),
            "http://127.0.0.1:1/a/x",
            "without strip_prefix the prefix is forwarded"
        );
    }

    #[test]
    fn the_host_header_is_precomputed_like_the_client_would_write_it() {
        let t = Table::new(vec![
            route("/a", "http://127.0.0.1:9000", false),
            route("/bb", "https://api.openai.com:443/v1", false),
            route("/ccc", "http://localhost", false),
        ]);
        let hosts: Vec<_> = t
            .routes()
            .iter()
            .map(|r| r.host.as_ref().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            hosts,
            ["localhost", "api.openai.com", "127.0.0.1:9000"],
            "the port is written only when it is not the scheme's default"
        );
    }
}

//! Route: which upstream serves a request path. Longest prefix wins (matched on whole path
//! segments); `strip_prefix` removes the prefix before forwarding; the upstream's own base path
//! is kept in front. Pure.

use http::Uri;

use crate::config::RouteConfig;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Index of the route in the table (selects its client and provider).
    pub route: usize,
    /// The full upstream URI, query included.
    pub uri: Uri,
    /// The forwarded path without query (identifies the operation for the span).
    pub upstream_path: String,
}

/// The route table, longest prefix first.
#[derive(Debug, Clone)]
pub struct Table {
    routes: Vec<RouteConfig>,
}

impl Table {
    pub fn new(mut routes: Vec<RouteConfig>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// Resolves `path_and_query` (as the app sent it) to an upstream URI.
    pub fn resolve(&self, path: &str, query: Option<&str>) -> Option<Target> {
        let (index, route) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| prefix_matches(&r.prefix, path))?;
        let rest = if route.strip_prefix && route.prefix != "/" {
            let rest = &path[route.prefix.len()..];
            if rest.is_empty() {
                "/"
            } else {
                rest
            }
        } else {
            path
        };
        let base = route.upstream.path().trim_end_matches('/');
        let upstream_path = format!("{base}{rest}");
        let path_and_query = match query {
            Some(q) => format!("{upstream_path}?{q}"),
            None => upstream_path.clone(),
        };
        let scheme = route.upstream.scheme_str().unwrap_or("http");
        let authority = route.upstream.authority()?.as_str();
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .ok()?;
        Some(Target {
            route: index,
            uri,
            upstream_path,
        })
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
        ];
        for (path, query, uri, upstream_path) in cases {
            let target = t.resolve(path, query).unwrap();
            assert_eq!(target.uri.to_string(), uri, "{path} routes to {uri}");
            assert_eq!(target.upstream_path, upstream_path);
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
}

//! Trace context: which trace and parent a proxied call belongs to, read from the app's headers.
//!
//! Owns the SPEC's propagation rules (`x-tracer-trace-id` > `traceparent` > fresh), the hygiene of
//! `x-tracer-*` headers (never forwarded) and the response ID headers. Pure: no I/O.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub const X_TRACER_PREFIX: &str = "x-tracer-";
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-tracer-trace-id");
pub const SPAN_ID: HeaderName = HeaderName::from_static("x-tracer-span-id");
const PARENT_SPAN_ID: &str = "x-tracer-parent-span-id";
const SPAN_NAME: &str = "x-tracer-span-name";
const SESSION_ID: &str = "x-tracer-session-id";
const USER_ID: &str = "x-tracer-user-id";
const TAGS: &str = "x-tracer-tags";
const META_PREFIX: &str = "x-tracer-meta-";
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest free-text value (name, session, user, tag, metadata) we keep from a header.
const MAX_TEXT: usize = 256;
/// At most this many tags and metadata entries per call.
const MAX_ENTRIES: usize = 64;

/// Where this call sits in its trace, and the labels the app gave it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraceContext {
    pub trace_id: String,
    /// The proxy span's own ID (16 hex), minted per call.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub span_name: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// The incoming W3C context, if valid: (trace-id, flags). Kept to rewrite `traceparent`.
    pub w3c: Option<W3cContext>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct W3cContext {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: String,
}

impl TraceContext {
    /// Reads the app's headers. Invalid values are ignored (never an error to the app).
    pub fn extract(headers: &HeaderMap) -> Self {
        let text = |name: &str| -> Option<String> {
            let v = headers.get(name)?.to_str().ok()?.trim();
            (!v.is_empty()).then(|| truncate(v, MAX_TEXT))
        };
        let w3c = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let explicit = text(TRACE_ID.as_str()).filter(|id| crate::span::is_valid_id(id));
        let explicit_parent = text(PARENT_SPAN_ID).filter(|id| crate::span::is_valid_id(id));

        let (trace_id, parent_span_id) = match (explicit, &w3c) {
            (Some(id), w3c) => {
                // An explicit parent wins; a traceparent's parent only counts when it speaks of the
                // same trace (an app using both with the same hex ID).
                let parent = explicit_parent.or_else(|| {
                    w3c.as_ref()
                        .filter(|w| w.trace_id == id)
                        .map(|w| w.parent_id.clone())
                });
                (id, parent)
            }
            (None, Some(w)) => (
                w.trace_id.clone(),
                explicit_parent.or_else(|| Some(w.parent_id.clone())),
            ),
            (None, None) => (new_trace_id(), explicit_parent),
        };

        let tags = text(TAGS)
            .map(|raw| {
                let mut tags: Vec<String> = Vec::new();
                for tag in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if tags.len() < MAX_ENTRIES && !tags.iter().any(|t| t == tag) {
                        tags.push(tag.to_string());
                    }
                }
                tags
            })
            .unwrap_or_default();

        let mut metadata = Map::new();
        for (name, value) in headers {
            let Some(key) = name.as_str().strip_prefix(META_PREFIX) else {
                continue;
            };
            if key.is_empty() || metadata.len() >= MAX_ENTRIES {
                continue;
            }
            if let Ok(v) = value.to_str() {
                metadata.insert(key.to_string(), Value::String(truncate(v.trim(), MAX_TEXT)));
            }
        }

        Self {
            trace_id,
            span_id: new_span_id(),
            parent_span_id,
            span_name: text(SPAN_NAME),
            session_id: text(SESSION_ID),
            user_id: text(USER_ID),
            tags,
            metadata,
            w3c,
        }
    }

    /// Prepares the headers for the upstream: drops every `x-tracer-*` header and, when the app
    /// sent a valid `traceparent`, rewrites it so the proxy span is the upstream's parent.
    pub fn apply_to_upstream(&self, headers: &mut HeaderMap) {
        strip_tracer_headers(headers);
        if let Some(w) = &self.w3c {
            let value = format!("00-{}-{}-{}", w.trace_id, self.span_id, w.flags);
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(TRACEPARENT, v);
            }
        }
    }

    /// Adds `x-tracer-trace-id` / `x-tracer-span-id` to a response going back to the app.
    pub fn stamp_response(&self, headers: &mut HeaderMap) {
        // Both IDs are validated ASCII, so these conversions cannot fail; skip quietly if they did.
        if let Ok(v) = HeaderValue::from_str(&self.trace_id) {
            headers.insert(TRACE_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.span_id) {
            headers.insert(SPAN_ID, v);
        }
    }
}

/// Removes every `x-tracer-*` header.
pub fn strip_tracer_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(X_TRACER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

/// W3C `traceparent`: `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`, lowercase;
/// all-zero IDs and version `ff` are invalid. Future versions may append fields after the flags.
pub fn parse_traceparent(value: &str) -> Option<W3cContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let extra = parts.next();
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && extra.is_some()) {
        return None;
    }
    if !lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !lower_hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !lower_hex(flags, 2) {
        return None;
    }
    Some(W3cContext {
        trace_id: trace_id.to_string(),
        parent_id: parent_id.to_string(),
        flags: flags.to_string(),
    })
}

/// 32 lowercase hex chars, W3C-compatible.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// 16 lowercase hex chars.
pub fn new_span_id() -> String {
    let id = uuid::Uuid::new_v4();
    hex::encode(&id.as_bytes()[..8])
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_table() {
        assert!(
            parse_traceparent(TP).is_some(),
            "a valid version-00 traceparent parses"
        );
        let cases = [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ];
        for case in cases {
            assert!(
                parse_traceparent(case).is_none(),
                "{case:?} must be rejected"
            );
        }
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
                .is_some(),
            "future versions may carry extra fields"
        );
    }

    #[test]
    fn explicit_trace_id_beats_traceparent_and_fresh_ids_are_minted() {
        let ctx = TraceContext::extract(&headers(&[
            ("x-tracer-trace-id", "run-42"),
            ("traceparent", TP),
        ]));
        assert_eq!(ctx.trace_id, "run-42");
        assert_eq!(
            ctx.parent_span_id, None,
            "a traceparent of another trace is not our parent"
        );

        let ctx = TraceContext::extract(&headers(&[("traceparent", TP)]));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));

        let ctx = TraceContext::extract(&headers(&[("x-tracer-trace-id", "bad id with spaces")]));
        assert_eq!(
            ctx.trace_id.len(),
            32,
            "an invalid trace id is ignored and a fresh one minted"
        );
        assert_eq!(ctx.span_id.len(), 16);
    }

    #[test]
    fn labels_tags_and_metadata_are_read() {
        let ctx = TraceContext::extract(&headers(&[
            ("x-tracer-trace-id", "t1"),
            ("x-tracer-parent-span-id", "p1"),
            ("x-tracer-span-name", "summarise"),
            ("x-tracer-session-id", "s1"),
            ("x-tracer-user-id", "u1"),
            ("x-tracer-tags", "a, b,,a"),
            ("x-tracer-meta-env", "prod"),
        ]));
        assert_eq!(ctx.parent_span_id.as_deref(), Some("p1"));
        assert_eq!(ctx.span_name.as_deref(), Some("summarise"));
        assert_eq!(ctx.session_id.as_deref(), Some("s1"));
        assert_eq!(ctx.user_id.as_deref(), Some("u1"));
        assert_eq!(
            ctx.tags,
            vec!["a", "b"],
            "tags are trimmed, de-duplicated, empties dropped"
        );
        assert_eq!(ctx.metadata.get("env"), Some(&Value::String("prod".into())));
    }

    #[test]
    fn upstream_headers_lose_tracer_headers_and_get_a_rewritten_traceparent() {
        let mut h = headers(&[
            ("x-tracer-trace-id", "t1"),
            ("x-tracer-meta-k", "v"),
            ("traceparent", TP),
            ("authorization", "Bearer sk-test"),
        ]);
        let ctx = TraceContext::extract(&h);
        ctx.apply_to_upstream(&mut h);
        assert!(
            h.keys().all(|k| !k.as_str().starts_with("x-tracer-")),
            "x-tracer-* never reaches upstream"
        );
        let tp = h.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            tp,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", ctx.span_id)
        );
        assert!(h.contains_key("authorization"), "credentials are forwarded");
    }
}

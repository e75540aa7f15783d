//! Trace propagation (`propagate`): `traceparent` and `x-tracer-*` headers from the app are
//! untrusted. Never panics; what goes upstream carries no `x-tracer-*` header; a valid
//! `traceparent` is rewritten to exactly one well-formed value with the proxy span as parent, an
//! invalid one is forwarded untouched; the response gets a trace ID and span ID.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use llm_tracer::propagate::{parse_traceparent, TraceContext, TRACEPARENT};

const NAMES: [&str; 9] = [
    "traceparent",
    "x-tracer-trace-id",
    "x-tracer-parent-span-id",
    "x-tracer-span-name",
    "x-tracer-session-id",
    "x-tracer-user-id",
    "x-tracer-tags",
    "x-tracer-meta-k",
    "tracestate",
];

fuzz_target!(|data: &[u8]| {
    // Lines are header values, assigned to the names in turn (repeats append a second value).
    let mut headers = HeaderMap::new();
    for (i, line) in data.split(|b| *b == b'\n').enumerate().take(64) {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        headers.append(HeaderName::from_static(NAMES[i % NAMES.len()]), value);
    }
    // `name=value` on the first line also becomes `x-tracer-meta-<name>`: arbitrary meta keys.
    if let Some(first) = data.split(|b| *b == b'\n').next() {
        if let Some(eq) = first.iter().position(|b| *b == b'=') {
            let mut name = b"x-tracer-meta-".to_vec();
            name.extend_from_slice(&first[..eq]);
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&name),
                HeaderValue::from_bytes(&first[eq + 1..]),
            ) {
                headers.append(n, v);
            }
        }
    }
    let ctx = TraceContext::extract(&headers);
    let mut upstream = headers.clone();
    ctx.apply_to_upstream(&mut upstream);
    assert!(
        upstream
            .keys()
            .all(|k| !k.as_str().starts_with("x-tracer-")),
        "no x-tracer-* header reaches the upstream"
    );
    let sent: Vec<_> = headers.get_all(TRACEPARENT).iter().cloned().collect();
    let parents: Vec<_> = upstream.get_all(TRACEPARENT).iter().cloned().collect();
    match &ctx.w3c {
        // A valid traceparent from the app is rewritten: one, well-formed, same trace, the proxy
        // span as the parent.
        Some(w3c) => {
            assert_eq!(parents.len(), 1, "exactly one traceparent goes upstream");
            let tp = parents[0]
                .to_str()
                .expect("the traceparent we send is ASCII");
            let parsed = parse_traceparent(tp).expect("the traceparent we send parses");
            assert_eq!(parsed.trace_id, w3c.trace_id, "same trace");
            assert_eq!(
                parsed.parent_id, ctx.span_id,
                "the proxy span is the parent"
            );
        }
        // One the proxy could not read is not its to change: forwarded as the app sent it.
        None => assert_eq!(
            parents, sent,
            "an unreadable traceparent is forwarded untouched"
        ),
    }
    let mut response = HeaderMap::new();
    ctx.stamp_response(&mut response);
    assert!(
        response.contains_key("x-tracer-trace-id") && response.contains_key("x-tracer-span-id")
    );
});

//! Id mapping between our spans and OTLP.
//!
//! OTLP ids are 16 bytes (trace) and 8 bytes (span). Ours are strings: proxy-minted and
//! `traceparent` ids are already lowercase hex of the right length and map directly, so a trace
//! an instrumented app started keeps its id end to end. Any other id (an `x-tracer-trace-id`
//! such as `checkout-42`, or an app's own span ids via `POST /api/spans`) maps deterministically
//! to the first bytes of SHA-256 over a domain tag and the id, and the original is exported in
//! `llm_tracer.trace_id` / `llm_tracer.span_id` / `llm_tracer.parent_span_id`, which ingest and
//! import read back.

/// The OTLP bytes for a trace id, and whether they are the id itself (`true`) or a hash.
pub fn trace_id_bytes(id: &str) -> ([u8; 16], bool) {
    map::<16>(id, b"llm-tracer trace-id\0")
}

/// The OTLP bytes for a span id, and whether they are the id itself (`true`) or a hash.
pub fn span_id_bytes(id: &str) -> ([u8; 8], bool) {
    map::<8>(id, b"llm-tracer span-id\0")
}

fn map<const N: usize>(id: &str, domain: &[u8]) -> ([u8; N], bool) {
    let mut out = [0u8; N];
    if id.len() == 2 * N
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && hex::decode_to_slice(id, &mut out).is_ok()
        && out.iter().any(|b| *b != 0)
    {
        return (out, true);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(domain);
    ctx.update(id.as_bytes());
    let digest = ctx.finish();
    out.copy_from_slice(&digest.as_ref()[..N]);
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1; // all-zero ids are invalid in OTLP
    }
    (out, false)
}

/// Lowercase hex of OTLP id bytes, when they form a valid id of `len` bytes (not all zero).
pub fn hex_id(bytes: &[u8], len: usize) -> Option<String> {
    (bytes.len() == len && bytes.iter().any(|b| *b != 0)).then(|| hex::encode(bytes))
}

/// Picks the id for an ingested span: the original id carried in an `llm_tracer.*` attribute
/// when it maps to exactly these bytes (so it cannot point elsewhere), else the hex of the bytes.
pub fn restore_trace_id(bytes_hex: String, original: Option<&str>) -> String {
    match original {
        Some(o) if crate::span::is_valid_id(o) && hex::encode(trace_id_bytes(o).0) == bytes_hex => {
            o.to_string()
        }
        _ => bytes_hex,
    }
}

/// As [`restore_trace_id`], for span ids.
pub fn restore_span_id(bytes_hex: String, original: Option<&str>) -> String {
    match original {
        Some(o) if crate::span::is_valid_id(o) && hex::encode(span_id_bytes(o).0) == bytes_hex => {
            o.to_string()
        }
        _ => bytes_hex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_map_directly_and_others_hash_deterministically() {
        let (b, direct) = trace_id_bytes("4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(direct, "a 32-hex trace id is used as is");
        assert_eq!(hex::encode(b), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (a1, d1) = trace_id_bytes("checkout-42");
        let (a2, _) = trace_id_bytes("checkout-42");
        assert!(!d1, "a free-form id is hashed");
        assert_eq!(a1, a2, "the hash is deterministic");
        assert_ne!(a1, trace_id_bytes("checkout-43").0);
        assert!(
            !trace_id_bytes("4BF92F3577B34DA6A3CE929D0E0E4736").1,
            "uppercase hex is hashed, so the original string survives a round trip"
        );
        assert!(
            !trace_id_bytes(&"0".repeat(32)).1,
            "all-zero ids are invalid in OTLP"
        );
        let (s, direct) = span_id_bytes("00f067aa0ba902b7");
        assert!(direct);
        assert_eq!(hex::encode(s), "00f067aa0ba902b7");
        assert!(!span_id_bytes("tool-1").1);
    }

    #[test]
    fn originals_are_restored_only_when_they_match_the_bytes() {
        let hexed = hex::encode(trace_id_bytes("checkout-42").0);
        assert_eq!(
            restore_trace_id(hexed.clone(), Some("checkout-42")),
            "checkout-42"
        );
        assert_eq!(
            restore_trace_id(hexed.clone(), Some("another")),
            hexed,
            "an original that does not map to the bytes is ignored"
        );
        let s = hex::encode(span_id_bytes("tool-1").0);
        assert_eq!(restore_span_id(s, Some("tool-1")), "tool-1");
    }
}

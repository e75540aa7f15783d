//! Hop-by-hop headers (RFC 9110 §7.6.1): what a proxy must not forward, on either side.
//!
//! The forwarder strips them from the app's request and from every upstream response; the
//! plain-http upstream client leaves them out of the response heads it parses (it reads the
//! framing ones itself), so for those responses the forwarder's strip finds nothing to do.

use http::{header, HeaderMap, HeaderName};

/// Names a proxy must not forward, built once. `Trailer` is end-to-end and kept: hyper only
/// sends trailer fields that `Trailer` declares.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether a name of this length can be one of [`HOP_BY_HOP`].
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16 | 17 | 19)
}

/// Whether a name as it came off the wire (any case) is one of [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_by_hop_length(name.len())
        && HOP_BY_HOP
            .iter()
            .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers, including any listed in `Connection` itself.
///
/// One scan of the names first: most messages carry none, or only `Connection`, and a scan with
/// cheap name comparisons costs less than seven hashed removals.
pub fn strip(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        // Most names have none of the hop-by-hop lengths: one length test instead of seven
        // comparisons (a standard name's `as_str` is a table lookup).
        if !hop_by_hop_length(name.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Copied out before the map changes; a short list (the usual "keep-alive" or "close")
        // stays on the stack.
        let mut stack = [0u8; 128];
        let mut heap = Vec::new();
        let mut len = 0;
        for value in headers.get_all(header::CONNECTION) {
            let v = value.as_bytes();
            if heap.is_empty() && len + v.len() < stack.len() {
                stack[len..len + v.len()].copy_from_slice(v);
                stack[len + v.len()] = b',';
                len += v.len() + 1;
            } else {
                if heap.is_empty() {
                    heap.extend_from_slice(&stack[..len]);
                }
                heap.extend_from_slice(v);
                heap.push(b',');
            }
        }
        let listed = if heap.is_empty() {
            &stack[..len]
        } else {
            &heap[..]
        };
        for name in listed.split(|b| *b == b',') {
            let name = name.trim_ascii();
            if let Ok(name) = std::str::from_utf8(name) {
                if !name.is_empty() {
                    // `&str` names are looked up without allocating a `HeaderName`.
                    headers.remove(name);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_length_prefilter_admits_every_hop_by_hop_name() {
        for name in &HOP_BY_HOP {
            assert!(
                hop_by_hop_length(name.as_str().len()),
                "{name} must pass the length test or it would be forwarded"
            );
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop(upper.as_bytes()), "{upper} in any case");
        }
        assert!(!is_hop_by_hop(b"content-length") && !is_hop_by_hop(b"te2"));
    }

    #[test]
    fn removes_headers_named_in_connection_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer sk-test"));
        strip(&mut h);
        assert!(
            !h.contains_key("x-secret-hop"),
            "headers listed in Connection are hop-by-hop"
        );
        assert!(!h.contains_key("keep-alive") && !h.contains_key("transfer-encoding"));
        assert!(
            h.contains_key("authorization"),
            "end-to-end credentials are forwarded"
        );
    }
}

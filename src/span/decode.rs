//! Body decoding: undoes a captured body's `Content-Encoding` (gzip, deflate) and turns the
//! bytes into the JSON value a span stores.
//!
//! Never fails and never grows without bound: a coding we cannot undo (br, zstd, unknown) or a
//! corrupt body is kept raw with a note, and inflation stops at a cap (a zip bomb costs at most
//! the cap).

use std::io::Read;

use bytes::Bytes;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use serde_json::Value;

/// A body after decoding.
#[derive(Debug)]
pub(super) struct Decoded {
    pub bytes: Bytes,
    /// `bytes` are the bytes that crossed the wire, so offsets in them map to arrival marks.
    pub wire: bool,
    /// The coding still applied to `bytes`, when it could not be undone.
    pub undecoded: Option<String>,
    /// What went wrong or was cut, for the span's notes.
    pub note: Option<String>,
}

/// Undoes `content_encoding` (a comma-separated list, applied in order) on `raw`.
/// `input_cut`: the capture hit its cap, so a decoder running out of input is expected and what
/// it produced so far is worth keeping.
pub(super) fn decode(
    raw: Bytes,
    content_encoding: Option<&str>,
    input_cut: bool,
    max: usize,
) -> Decoded {
    let codings: Vec<String> = content_encoding
        .unwrap_or_default()
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let as_is = |raw: Bytes, undecoded: Option<String>, note: Option<String>| Decoded {
        bytes: raw,
        wire: true,
        undecoded,
        note,
    };
    if codings.is_empty() || raw.is_empty() {
        return as_is(raw, None, None);
    }
    if let Some(other) = codings
        .iter()
        .find(|c| !matches!(c.as_str(), "gzip" | "x-gzip" | "deflate"))
    {
        let note = format!("content-encoding {other} is not decoded; the body is kept raw");
        return as_is(raw, Some(other.clone()), Some(note));
    }

    let mut bytes = raw.clone();
    let mut notes = Vec::new();
    // The last coding listed was applied last, so it comes off first.
    for coding in codings.iter().rev() {
        let (out, result) = if coding == "deflate" {
            if looks_like_zlib(&bytes) {
                inflate(ZlibDecoder::new(&bytes[..]), max)
            } else {
                // Some servers send raw deflate under this name.
                inflate(DeflateDecoder::new(&bytes[..]), max)
            }
        } else {
            inflate(MultiGzDecoder::new(&bytes[..]), max)
        };
        match result {
            Ok(false) => bytes = Bytes::from(out),
            Ok(true) => {
                notes.push(format!(
                    "decoded body exceeded {max} bytes and was cut there"
                ));
                bytes = Bytes::from(out);
            }
            Err(e) if input_cut && !out.is_empty() => {
                notes.push(format!(
                    "{coding} body was cut by the capture cap; kept the {} bytes decoded before it ({e})",
                    out.len()
                ));
                bytes = Bytes::from(out);
            }
            Err(e) => {
                let note = format!("could not decode the {coding} body ({e}); kept it raw");
                return as_is(raw, Some(coding.clone()), Some(note));
            }
        }
    }
    Decoded {
        bytes,
        wire: false,
        undecoded: None,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// RFC 1950: CM = 8 (deflate) and the header checksum holds.
fn looks_like_zlib(b: &[u8]) -> bool {
    match b {
        [cmf, flg, ..] => cmf & 0x0F == 8 && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Reads `r` to its end or to `max` bytes. Returns what was read and whether the cap cut it; on
/// error, what was read before it.
fn inflate(mut r: impl Read, max: usize) -> (Vec<u8>, std::io::Result<bool>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, Ok(false)),
            Ok(n) => {
                let room = max.saturating_sub(out.len());
                let got = buf.get(..n).unwrap_or_default();
                if n > room {
                    out.extend_from_slice(got.get(..room).unwrap_or_default());
                    return (out, Ok(true));
                }
                out.extend_from_slice(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Err(e)),
        }
    }
}

/// A body as the span stores it: JSON when it parses, else text; empty → `null`.
/// Returns the value and whether it was JSON.
pub(super) fn to_value(bytes: &[u8], undecoded: Option<&str>) -> (Value, bool) {
    if bytes.is_empty() {
        return (Value::Null, false);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return (v, true);
    }
    let text = match (std::str::from_utf8(bytes), undecoded) {
        (Ok(s), _) => s.to_string(),
        // Compressed bytes as text would be noise: say what they are instead.
        (Err(_), Some(coding)) => {
            format!(
                "[{} bytes of {coding}-encoded body, not decoded]",
                bytes.len()
            )
        }
        (Err(_), None) => String::from_utf8_lossy(bytes).into_owned(),
    };
    (Value::String(text), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{
        write::{DeflateEncoder, GzEncoder, ZlibEncoder},
        Compression,
    };
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn identity_and_absent_encodings_pass_through() {
        for enc in [None, Some("identity"), Some(""), Some(" identity ")] {
            let d = decode(Bytes::from_static(b"{}"), enc, false, 1024);
            assert_eq!(&d.bytes[..], b"{}", "{enc:?} leaves the body as is");
            assert!(
                d.wire && d.note.is_none(),
                "{enc:?} is the wire body, with nothing to note"
            );
        }
    }

    #[test]
    fn gzip_and_both_deflate_flavours_decode() {
        let body = b"{\"hello\":\"world\"}";
        let d = decode(gzip(body), Some("GZIP"), false, 1024);
        assert_eq!(&d.bytes[..], body, "gzip is undone, case-insensitively");
        assert!(!d.wire, "a decoded body is not the wire body");

        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(body).unwrap();
        let d = decode(
            Bytes::from(z.finish().unwrap()),
            Some("deflate"),
            false,
            1024,
        );
        assert_eq!(&d.bytes[..], body, "zlib-wrapped deflate is undone");

        let mut r = DeflateEncoder::new(Vec::new(), Compression::default());
        r.write_all(body).unwrap();
        let d = decode(
            Bytes::from(r.finish().unwrap()),
            Some("deflate"),
            false,
            1024,
        );
        assert_eq!(
            &d.bytes[..],
            body,
            "raw deflate sent as `deflate` is undone too"
        );
    }

    #[test]
    fn stacked_codings_come_off_in_reverse() {
        let body = b"plain text";
        let twice = gzip(&gzip(body));
        let d = decode(twice, Some("gzip, gzip"), false, 1024);
        assert_eq!(
            &d.bytes[..],
            body,
            "each listed coding is undone, last first"
        );
    }

    #[test]
    fn unsupported_or_corrupt_bodies_are_kept_raw_with_a_note() {
        let d = decode(Bytes::from_static(b"\x1b\x00\xff"), Some("br"), false, 1024);
        assert_eq!(&d.bytes[..], b"\x1b\x00\xff", "br is kept raw");
        assert_eq!(d.undecoded.as_deref(), Some("br"));
        assert!(d.note.is_some(), "an undecoded body is noted");
        let (v, json) = to_value(&d.bytes, d.undecoded.as_deref());
        assert!(!json);
        assert_eq!(
            v,
            Value::String("[3 bytes of br-encoded body, not decoded]".into())
        );

        let d = decode(
            Bytes::from_static(b"{\"not\":\"gzip\"}"),
            Some("gzip"),
            false,
            1024,
        );
        assert_eq!(
            &d.bytes[..],
            b"{\"not\":\"gzip\"}",
            "a corrupt gzip body is kept raw"
        );
        assert!(d.note.is_some(), "a failed decode is noted");
        assert_eq!(
            to_value(&d.bytes, d.undecoded.as_deref()).0["not"],
            "gzip",
            "a mislabelled JSON body still reads as JSON"
        );
    }

    #[test]
    fn inflation_stops_at_the_cap() {
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        let d = decode(bomb, Some("gzip"), false, 1000);
        assert_eq!(
            d.bytes.len(),
            1000,
            "decoding never produces more than the cap"
        );
        assert!(d.note.is_some(), "hitting the cap is noted");
    }

    #[test]
    fn a_body_cut_by_the_capture_cap_keeps_what_decodes() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| i.to_string().into_bytes())
            .collect();
        let full = gzip(&text);
        let cut = full.slice(..full.len() / 2);
        let d = decode(cut, Some("gzip"), true, 1 << 20);
        assert!(
            !d.bytes.is_empty(),
            "the decodable prefix of a cut body is kept"
        );
        assert!(
            text.starts_with(&d.bytes),
            "what is kept is a true prefix of the body"
        );
        assert!(d.note.is_some(), "the cut is noted");
    }

    #[test]
    fn values_are_json_text_or_null() {
        assert_eq!(
            to_value(b"", None),
            (Value::Null, false),
            "an empty body is null"
        );
        assert_eq!(to_value(b" {\"a\":1} ", None).0["a"], 1, "JSON parses");
        assert_eq!(
            to_value(b"hi", None),
            (Value::String("hi".into()), false),
            "text stays text"
        );
        assert_eq!(
            to_value(b"\xff\xfe", None).0,
            Value::String("\u{FFFD}\u{FFFD}".into()),
            "binary becomes lossy text"
        );
    }
}
